/*
 * batch.c: batches of documents packed back to back (mg_batch,
 * model_internal.h): allocation, layout, and the SPEC's batch of a step.
 */
#include "model_internal.h"

int mg_batch_alloc(mg_batch *B, size_t cap) {
    memset(B, 0, sizeof *B);
    B->inputs = calloc(cap, sizeof(int32_t));
    B->targets = calloc(cap, sizeof(int32_t));
    B->positions = calloc(cap, sizeof(int32_t));
    B->doc_lens = calloc(cap, sizeof(int32_t));
    B->doc_offsets = calloc(cap + 1, sizeof(size_t));
    B->doc_loss = calloc(cap, sizeof(double));
    if (!B->inputs || !B->targets || !B->positions || !B->doc_lens || !B->doc_offsets ||
        !B->doc_loss) {
        mg_batch_free(B);
        return MG_ERR_NOMEM;
    }
    B->cap = cap;
    return MG_OK;
}

void mg_batch_free(mg_batch *B) {
    free(B->inputs); free(B->targets); free(B->positions); free(B->doc_lens);
    free(B->doc_offsets); free(B->doc_loss);
    memset(B, 0, sizeof *B);
}

void mg_batch_copy(mg_batch *dst, const mg_batch *src) {
    const size_t n = (size_t)src->n_tokens, nd = (size_t)src->n_docs;
    memcpy(dst->inputs, src->inputs, n * sizeof(int32_t));
    memcpy(dst->targets, src->targets, n * sizeof(int32_t));
    memcpy(dst->positions, src->positions, n * sizeof(int32_t));
    memcpy(dst->doc_lens, src->doc_lens, nd * sizeof(int32_t));
    memcpy(dst->doc_offsets, src->doc_offsets, (nd + 1) * sizeof(size_t));
    memcpy(dst->doc_loss, src->doc_loss, nd * sizeof(double));
    dst->n_tokens = src->n_tokens; dst->n_docs = src->n_docs;
    dst->total_docs = src->total_docs;
}

/* From B->doc_lens[0 .. n_docs): each document's first token, each token's
 * position in its document, and the batch sizes. */
void mg_batch_layout(mg_batch *B, int n_docs, int total_docs) {
    size_t off = 0;
    for (int d = 0; d < n_docs; d++) {
        B->doc_offsets[d] = off;
        for (int t = 0; t < B->doc_lens[d]; t++) B->positions[off + (size_t)t] = t;
        off += (size_t)B->doc_lens[d];
    }
    B->doc_offsets[n_docs] = off;
    B->n_tokens = (int)off;
    B->n_docs = n_docs;
    B->total_docs = total_docs;
}

void mg_batch_assemble(mg_batch *B, int T, const mg_train_data *D, long s, int batch, int lo,
                       int hi) {
    size_t N = 0;
    for (int b = lo; b < hi; b++) {
        const int64_t d = (int64_t)(((uint64_t)s * (uint64_t)batch + (uint64_t)b) %
                                    (uint64_t)D->n_docs);
        const int32_t *tok = D->corpus + D->doc_starts[d];
        const int64_t len = D->doc_starts[d + 1] - D->doc_starts[d];
        const int n = len - 1 < T ? (int)(len - 1) : T;
        memcpy(B->inputs + N, tok, (size_t)n * sizeof(int32_t));
        memcpy(B->targets + N, tok + 1, (size_t)n * sizeof(int32_t));
        B->doc_lens[b - lo] = n;
        N += (size_t)n;
    }
    mg_batch_layout(B, hi - lo, batch);
}
