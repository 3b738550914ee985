/*
 * microgpt_c: dtype-independent parts of the C core: configuration checks,
 * buffer layout (with overflow checks), allocation, input validation and
 * dispatch to the _f64 / _f32 instantiations.
 */
#include "microgpt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

const char *mg_status_string(int status) {
    switch (status) {
    case MG_OK: return "ok";
    case MG_ERR_CONFIG: return "invalid configuration";
    case MG_ERR_OVERFLOW: return "buffer size overflows size_t";
    case MG_ERR_NOMEM: return "out of memory";
    case MG_ERR_TOKEN: return "token id out of range";
    case MG_ERR_LENGTH: return "sequence length out of range";
    case MG_ERR_STATE: return "invalid model state";
    case MG_ERR_DTYPE: return "unknown dtype";
    case MG_ERR_ARG: return "invalid argument";
    case MG_ERR_NONFINITE: return "loss or gradient is not finite";
    default: return "unknown error";
    }
}

/* ------------------------------------------------------ checked arithmetic */
static int mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static int add_ok(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}

/* *acc += a * b, failing on overflow */
static int mac_ok(size_t *acc, size_t a, size_t b) {
    size_t p;
    return mul_ok(a, b, &p) && add_ok(*acc, p, acc);
}

int mg_config_check(const mg_config *cfg) {
    if (cfg == NULL) return MG_ERR_ARG;
    if (cfg->vocab_size < 1 || cfg->block_size < 1 || cfg->n_layer < 0 ||
        cfg->n_embd < 1 || cfg->n_head < 1)
        return MG_ERR_CONFIG;
    if (cfg->n_embd % cfg->n_head != 0) return MG_ERR_CONFIG;
    /* 4 * C and the (N, NH, T) attention rows are computed in int */
    if (cfg->n_embd > (INT32_MAX / 4)) return MG_ERR_OVERFLOW;
    return MG_OK;
}

static size_t dtype_size(int dtype) {
    return dtype == MG_FLOAT64 ? sizeof(double) : dtype == MG_FLOAT32 ? sizeof(float) : 0;
}

/* Parameter layout; fills the model's offsets when M != NULL. */
static int param_layout(const mg_config *cfg, size_t *num_params, mg_model *M) {
    const size_t V = (size_t)cfg->vocab_size, T = (size_t)cfg->block_size;
    const size_t C = (size_t)cfg->n_embd, L = (size_t)cfg->n_layer;
    size_t off = 0, wte, wpe, lm, layer_start, layer_size = 0;
    wte = off; if (!mac_ok(&off, V, C)) return MG_ERR_OVERFLOW;
    wpe = off; if (!mac_ok(&off, T, C)) return MG_ERR_OVERFLOW;
    lm = off;  if (!mac_ok(&off, V, C)) return MG_ERR_OVERFLOW;
    layer_start = off;
    /* wq, wk, wv, wo (C, C); fc1 (4C, C); fc2 (C, 4C): 12 C^2 */
    if (!mac_ok(&layer_size, 12 * C, C)) return MG_ERR_OVERFLOW;
    if (!mac_ok(&off, L, layer_size)) return MG_ERR_OVERFLOW;
    *num_params = off;
    if (M != NULL) {
        M->param_offset[MG_WTE] = wte;
        M->param_offset[MG_WPE] = wpe;
        M->param_offset[MG_LM_HEAD] = lm;
        M->layer_offset = layer_start;
        M->layer_size = layer_size;
        M->num_params = off;
    }
    return MG_OK;
}

int mg_num_params(const mg_config *cfg, size_t *n) {
    int rc = mg_config_check(cfg);
    if (rc != MG_OK) return rc;
    if (n == NULL) return MG_ERR_ARG;
    return param_layout(cfg, n, NULL);
}

int mg_tensor_info(const mg_config *cfg, int index, size_t *offset, size_t *rows, size_t *cols) {
    int rc = mg_config_check(cfg);
    if (rc != MG_OK) return rc;
    if (offset == NULL || rows == NULL || cols == NULL) return MG_ERR_ARG;
    mg_model tmp;
    size_t n;
    memset(&tmp, 0, sizeof tmp);
    if ((rc = param_layout(cfg, &n, &tmp)) != MG_OK) return rc;
    const size_t C = (size_t)cfg->n_embd;
    if (index < 0 || (size_t)index >= MG_NUM_GLOBAL + (size_t)MG_NUM_PER_LAYER * cfg->n_layer)
        return MG_ERR_ARG;
    if (index < MG_NUM_GLOBAL) {
        *offset = tmp.param_offset[index];
        *rows = index == MG_WPE ? (size_t)cfg->block_size : (size_t)cfg->vocab_size;
        *cols = C;
        return MG_OK;
    }
    const size_t l = (size_t)(index - MG_NUM_GLOBAL) / MG_NUM_PER_LAYER;
    const int which = (index - MG_NUM_GLOBAL) % MG_NUM_PER_LAYER;
    *offset = tmp.layer_offset + l * tmp.layer_size + (size_t)which * C * C;
    *rows = which == MG_FC1 ? 4 * C : C;
    *cols = which == MG_FC2 ? 4 * C : C;
    if (which == MG_FC2) *offset = tmp.layer_offset + l * tmp.layer_size + 8 * C * C;
    return MG_OK;
}

/* Activation layout for N = max_tokens tokens. */
static int act_layout(const mg_config *cfg, size_t N, mg_act_layout *A) {
    const size_t V = (size_t)cfg->vocab_size, T = (size_t)cfg->block_size;
    const size_t C = (size_t)cfg->n_embd, NH = (size_t)cfg->n_head, L = (size_t)cfg->n_layer;
    size_t off = 0, lo = 0, nht;
    memset(A, 0, sizeof *A);
    if (!mul_ok(NH, T, &nht)) return MG_ERR_OVERFLOW;
#define TAKE(field, a, b) do { A->field = off; if (!mac_ok(&off, (a), (b))) return MG_ERR_OVERFLOW; } while (0)
#define LTAKE(field, a, b) do { A->field = lo; if (!mac_ok(&lo, (a), (b))) return MG_ERR_OVERFLOW; } while (0)
    TAKE(emb, N, C); TAKE(x0, N, C); TAKE(x0s, N, 1);
    TAKE(logits, N, V); TAKE(probs, N, V); TAKE(losses, N, 1); TAKE(dlosses, N, 1);
    LTAKE(ln1, N, C); LTAKE(ln1s, N, 1); LTAKE(q, N, C); LTAKE(k, N, C); LTAKE(v, N, C);
    LTAKE(att, N, nht); LTAKE(atty, N, C); LTAKE(attproj, N, C); LTAKE(res2, N, C);
    LTAKE(ln2, N, C); LTAKE(ln2s, N, 1); LTAKE(fch, N, 4 * C); LTAKE(fchr, N, 4 * C);
    LTAKE(fcproj, N, C); LTAKE(res3, N, C);
#undef TAKE
#undef LTAKE
    A->layers = off;
    A->lstride = lo;
    if (!mac_ok(&off, L, lo)) return MG_ERR_OVERFLOW;
    A->total = off;
    return MG_OK;
}

/* All the sizes of a model, in elements and bytes. */
typedef struct {
    size_t num_params, acts, cache, wT, wT_layer, piece_max, tokens_bytes, bytes;
} sizes_t;

/* Transposed weights (mg_model.wT), rows padded to a multiple of 16:
 * lm_head (C, V'), then per layer wq, wk, wv, wo (C, C'), fc1 (C, 4C'),
 * fc2 (4C, C'); the layout model_impl.h indexes. */
static int wT_sizes(const mg_config *cfg, size_t *layer, size_t *total) {
    const size_t C = (size_t)cfg->n_embd, V = (size_t)cfg->vocab_size;
    const size_t Cp = (C + 15) / 16 * 16, C4p = (4 * C + 15) / 16 * 16, Vp = (V + 15) / 16 * 16;
    *layer = 0;
    *total = 0;
    if (!mac_ok(layer, 8 * C, Cp) || !mac_ok(layer, C, C4p) || !mac_ok(total, C, Vp) ||
        !mac_ok(total, (size_t)cfg->n_layer, *layer))
        return MG_ERR_OVERFLOW;
    return MG_OK;
}

static int model_sizes(const mg_config *cfg, int dtype, size_t max_tokens, sizes_t *s,
                       mg_act_layout *A) {
    int rc;
    mg_act_layout tmp;
    const size_t es = dtype_size(dtype);
    if (es == 0) return MG_ERR_DTYPE;
    if ((rc = mg_config_check(cfg)) != MG_OK) return rc;
    if (max_tokens < 1 || max_tokens > INT32_MAX) return MG_ERR_LENGTH;
    if ((rc = param_layout(cfg, &s->num_params, NULL)) != MG_OK) return rc;
    if ((rc = act_layout(cfg, max_tokens, A ? A : &tmp)) != MG_OK) return rc;
    s->acts = (A ? A : &tmp)->total;
    if (!mul_ok((size_t)cfg->n_layer, (size_t)cfg->block_size, &s->cache) ||
        !mul_ok(s->cache, (size_t)cfg->n_embd, &s->cache))
        return MG_ERR_OVERFLOW;
    if ((rc = wT_sizes(cfg, &s->wT_layer, &s->wT)) != MG_OK) return rc;
    /* elements: 4 parameter-sized buffers, 2 activation buffers, 2 caches,
     * the transposed weights */
    size_t elems = 0;
    if (!mac_ok(&elems, 4, s->num_params) || !mac_ok(&elems, 2, s->acts) ||
        !mac_ok(&elems, 2, s->cache) || !add_ok(elems, s->wT, &elems))
        return MG_ERR_OVERFLOW;
    if (!mul_ok(elems, es, &s->bytes)) return MG_ERR_OVERFLOW;
    /* inputs, targets, positions, doc_lens (int32), doc_offsets (size_t),
     * doc_loss (double), and the per-piece maxima */
    if (!mul_ok(max_tokens + 1, 4 * sizeof(int32_t) + sizeof(size_t) + sizeof(double),
                &s->tokens_bytes))
        return MG_ERR_OVERFLOW;
    if (!mul_ok((size_t)cfg->n_layer, 2 * MG_NUM_PER_LAYER, &s->piece_max) ||
        !add_ok(s->piece_max, 3, &s->piece_max) ||
        !mul_ok(s->piece_max, MG_MAX_PIECES, &s->piece_max) ||
        !mac_ok(&s->tokens_bytes, s->piece_max, sizeof(double)))
        return MG_ERR_OVERFLOW;
    if (!add_ok(s->bytes, s->tokens_bytes, &s->bytes)) return MG_ERR_OVERFLOW;
    return MG_OK;
}

int mg_model_bytes(const mg_config *cfg, int dtype, size_t max_tokens, size_t *bytes) {
    sizes_t s;
    if (bytes == NULL) return MG_ERR_ARG;
    int rc = model_sizes(cfg, dtype, max_tokens, &s, NULL);
    if (rc == MG_OK) *bytes = s.bytes;
    return rc;
}

static void free_activations(mg_model *M) {
    free(M->acts); free(M->dacts);
    free(M->inputs); free(M->targets); free(M->positions); free(M->doc_lens);
    free(M->doc_offsets); free(M->doc_loss);
    M->acts = M->dacts = NULL;
    M->inputs = M->targets = M->positions = M->doc_lens = NULL;
    M->doc_offsets = NULL;
    M->doc_loss = NULL;
}

void mg_model_free(mg_model *M) {
    if (M == NULL) return;
    free(M->params); free(M->grads); free(M->m_adam); free(M->v_adam);
    free(M->kcache); free(M->vcache); free(M->wT); free(M->piece_max);
    free_activations(M);
    free(M);
}

static int alloc_activations(mg_model *M, size_t max_tokens) {
    sizes_t s;
    mg_act_layout A;
    int rc = model_sizes(&M->cfg, M->dtype, max_tokens, &s, &A);
    if (rc != MG_OK) return rc;
    void *acts = calloc(A.total, M->elem_size), *dacts = calloc(A.total, M->elem_size);
    int32_t *in = calloc(max_tokens, sizeof(int32_t)), *tg = calloc(max_tokens, sizeof(int32_t));
    int32_t *ps = calloc(max_tokens, sizeof(int32_t)), *dl = calloc(max_tokens, sizeof(int32_t));
    size_t *doff = calloc(max_tokens + 1, sizeof(size_t));
    double *dloss = calloc(max_tokens, sizeof(double));
    if (!acts || !dacts || !in || !tg || !ps || !dl || !doff || !dloss) {
        free(acts); free(dacts); free(in); free(tg); free(ps); free(dl); free(doff); free(dloss);
        return MG_ERR_NOMEM;
    }
    free_activations(M);
    M->acts = acts; M->dacts = dacts;
    M->inputs = in; M->targets = tg; M->positions = ps; M->doc_lens = dl;
    M->doc_offsets = doff;
    M->doc_loss = dloss;
    M->acts_layout = A;
    M->max_tokens = max_tokens;
    M->have_forward = 0;
    return MG_OK;
}

int mg_model_create(mg_model **out, const mg_config *cfg, int dtype, size_t max_tokens) {
    sizes_t s;
    int rc;
    if (out == NULL) return MG_ERR_ARG;
    *out = NULL;
    if ((rc = model_sizes(cfg, dtype, max_tokens, &s, NULL)) != MG_OK) return rc;
    mg_model *M = calloc(1, sizeof *M);
    if (M == NULL) return MG_ERR_NOMEM;
    M->cfg = *cfg;
    M->dtype = (mg_dtype)dtype;
    M->elem_size = dtype_size(dtype);
    param_layout(cfg, &M->num_params, M);
    M->params = calloc(M->num_params, M->elem_size);
    M->grads = calloc(M->num_params, M->elem_size);
    M->m_adam = calloc(M->num_params, M->elem_size);
    M->v_adam = calloc(M->num_params, M->elem_size);
    M->wT_layer = s.wT_layer;  /* transposed weights (see wT_sizes) */
    M->wT = calloc(s.wT ? s.wT : 1, M->elem_size);
    M->kcache = calloc(s.cache ? s.cache : 1, M->elem_size);
    M->vcache = calloc(s.cache ? s.cache : 1, M->elem_size);
    M->piece_max = calloc(s.piece_max, sizeof(double));
    if (!M->params || !M->grads || !M->m_adam || !M->v_adam || !M->kcache || !M->vcache || !M->wT ||
        !M->piece_max ||
        (rc = alloc_activations(M, max_tokens)) != MG_OK) {
        mg_model_free(M);
        return rc != MG_OK ? rc : MG_ERR_NOMEM;
    }
    *out = M;
    return MG_OK;
}

int mg_model_reserve(mg_model *M, size_t max_tokens) {
    if (M == NULL) return MG_ERR_ARG;
    if (max_tokens <= M->max_tokens) return MG_OK;
    return alloc_activations(M, max_tokens);
}

/* ----------------------------------------------------------------- training */
/* From M->doc_lens[0 .. n_docs): each document's first token, each token's
 * position in its document, and the batch sizes. */
static void set_batch_layout(mg_model *M, int n_docs, int total_docs) {
    size_t off = 0;
    for (int d = 0; d < n_docs; d++) {
        M->doc_offsets[d] = off;
        for (int t = 0; t < M->doc_lens[d]; t++) M->positions[off + (size_t)t] = t;
        off += (size_t)M->doc_lens[d];
    }
    M->doc_offsets[n_docs] = off;
    M->n_tokens = (int)off;
    M->n_docs = n_docs;
    M->total_docs = total_docs;
}

void mg_assemble_batch(mg_model *M, const int32_t *corpus, const int64_t *doc_starts,
                       int64_t n_docs, long s, int batch) {
    const int T = M->cfg.block_size;
    size_t N = 0;
    for (int b = 0; b < batch; b++) {
        const int64_t d = (int64_t)(((uint64_t)s * (uint64_t)batch + (uint64_t)b) % (uint64_t)n_docs);
        const int32_t *tok = corpus + doc_starts[d];
        const int64_t len = doc_starts[d + 1] - doc_starts[d];
        const int n = len - 1 < T ? (int)(len - 1) : T;
        memcpy(M->inputs + N, tok, (size_t)n * sizeof(int32_t));
        memcpy(M->targets + N, tok + 1, (size_t)n * sizeof(int32_t));
        M->doc_lens[b] = n;
        N += (size_t)n;
    }
    set_batch_layout(M, batch, batch);
}

int mg_forward(mg_model *M, const int32_t *inputs, const int32_t *targets,
               const int32_t *doc_lens, int n_docs, double *loss) {
    return mg_forward_partial(M, inputs, targets, doc_lens, n_docs, n_docs, loss);
}

int mg_forward_partial(mg_model *M, const int32_t *inputs, const int32_t *targets,
                       const int32_t *doc_lens, int n_docs, int total_docs, double *loss) {
    if (M == NULL || inputs == NULL || targets == NULL || doc_lens == NULL || loss == NULL)
        return MG_ERR_ARG;
    M->have_forward = 0;
    M->wT_valid = 0;  /* params may have been changed since */
    if (n_docs < 1 || total_docs < n_docs) return MG_ERR_LENGTH;
    size_t N = 0;
    for (int d = 0; d < n_docs; d++) {
        if (doc_lens[d] < 1 || doc_lens[d] > M->cfg.block_size) return MG_ERR_LENGTH;
        N += (size_t)doc_lens[d];
        if (N > INT32_MAX) return MG_ERR_LENGTH;
    }
    for (size_t i = 0; i < N; i++) {
        if (inputs[i] < 0 || inputs[i] >= M->cfg.vocab_size) return MG_ERR_TOKEN;
        if (targets[i] < 0 || targets[i] >= M->cfg.vocab_size) return MG_ERR_TOKEN;
    }
    if ((size_t)n_docs > N) return MG_ERR_LENGTH;
    int rc = mg_model_reserve(M, N);
    if (rc != MG_OK) return rc;
    memcpy(M->inputs, inputs, N * sizeof(int32_t));
    memcpy(M->targets, targets, N * sizeof(int32_t));
    memcpy(M->doc_lens, doc_lens, (size_t)n_docs * sizeof(int32_t));
    set_batch_layout(M, n_docs, total_docs);
    return M->dtype == MG_FLOAT64 ? mg_forward_f64(M, loss) : mg_forward_f32(M, loss);
}

int mg_backward(mg_model *M) {
    if (M == NULL) return MG_ERR_ARG;
    M->wT_valid = 0;
    if (!M->have_forward) return MG_ERR_STATE;
    return M->dtype == MG_FLOAT64 ? mg_backward_f64(M) : mg_backward_f32(M);
}

int mg_zero_grad(mg_model *M) {
    if (M == NULL) return MG_ERR_ARG;
    memset(M->grads, 0, M->num_params * M->elem_size);
    return MG_OK;
}

/* 1 if every gradient is finite. */
static int grads_finite(const mg_model *M) {
    return M->dtype == MG_FLOAT64 ? all_finite_f64(M->grads, M->num_params)
                                  : all_finite_f32(M->grads, M->num_params);
}

int mg_adam_step(mg_model *M, double lr_t, double beta1, double beta2, double eps, long t) {
    if (M == NULL) return MG_ERR_ARG;
    M->wT_valid = 0;
    /* never apply a NaN/inf update: the parameters stay as they were */
    if (!grads_finite(M)) {
        mg_zero_grad(M);
        return MG_ERR_NONFINITE;
    }
    if (t < 1 || !isfinite(lr_t) || !isfinite(beta1) || !isfinite(beta2) || !isfinite(eps))
        return MG_ERR_ARG;
    if (M->dtype == MG_FLOAT64)
        adam_update_zero_grad_f64(M->params, M->m_adam, M->v_adam, M->grads, M->num_params,
                                  lr_t, beta1, beta2, eps, t);
    else
        adam_update_zero_grad_f32(M->params, M->m_adam, M->v_adam, M->grads, M->num_params,
                                  lr_t, beta1, beta2, eps, t);
    return MG_OK;
}

int mg_sequence_forward_backward(mg_model *M, const int32_t *tokens, int n_tokens, double *loss) {
    if (M == NULL || tokens == NULL || loss == NULL) return MG_ERR_ARG;
    if (n_tokens < 2) return MG_ERR_LENGTH;
    int32_t n = n_tokens - 1 < M->cfg.block_size ? n_tokens - 1 : M->cfg.block_size;
    int rc = mg_forward(M, tokens, tokens + 1, &n, 1, loss);
    if (rc != MG_OK) return rc;
    return mg_backward(M);
}

int mg_train_steps(mg_model *M, const int32_t *corpus, const int64_t *doc_starts,
                   int64_t n_docs, long step0, long n_steps, long num_steps, int batch,
                   double lr, double beta1, double beta2, double eps,
                   double *losses, double *lrs, long *steps_done) {
    if (steps_done != NULL) *steps_done = 0;
    if (M == NULL || corpus == NULL || doc_starts == NULL || losses == NULL || steps_done == NULL)
        return MG_ERR_ARG;
    if (n_docs < 1 || batch < 1 || step0 < 0 || n_steps < 0 || num_steps < 1) return MG_ERR_ARG;
    const int T = M->cfg.block_size, V = M->cfg.vocab_size;
    /* validate the whole corpus once per call: documents of >= 2 tokens,
     * back to back from 0, then every id in [0, V) (one branch-free pass:
     * a negative id becomes a huge unsigned value) */
    if (doc_starts[0] != 0) return MG_ERR_LENGTH;
    for (int64_t d = 0; d < n_docs; d++)
        if (doc_starts[d + 1] - doc_starts[d] < 2) return MG_ERR_LENGTH;
    int bad = 0;
    for (int64_t i = 0; i < doc_starts[n_docs]; i++) bad |= (uint32_t)corpus[i] >= (uint32_t)V;
    if (bad) return MG_ERR_TOKEN;
    size_t cap;
    if (!mul_ok((size_t)batch, (size_t)T, &cap)) return MG_ERR_OVERFLOW;
    int rc = mg_model_reserve(M, cap);
    if (rc != MG_OK) return rc;
    M->wT_valid = 0;  /* params may have been changed since the last call */
    /* a batched run with a team: every step in one persistent team */
    rc = M->dtype == MG_FLOAT64
             ? mg_train_steps_team_f64(M, corpus, doc_starts, n_docs, step0, n_steps, num_steps, batch,
                                       lr, beta1, beta2, eps, losses, lrs, steps_done)
             : mg_train_steps_team_f32(M, corpus, doc_starts, n_docs, step0, n_steps, num_steps, batch,
                                       lr, beta1, beta2, eps, losses, lrs, steps_done);
    if (rc != -2) return rc;
    for (long i = 0; i < n_steps; i++) {
        const long s = step0 + i;
        mg_assemble_batch(M, corpus, doc_starts, n_docs, s, batch);
        double loss;
        const double lr_t = lr * (1.0 - (double)s / (double)num_steps);
        if (lrs != NULL) lrs[i] = lr_t;
        /* the first step of a call: the gradients may hold something on
         * entry, so they are accumulated and the checked Adam step applies
         * them; after it the previous step left every gradient zero and
         * backward and Adam are fused */
        const int fused = !(i == 0 || !isfinite(lr_t) || !isfinite(beta1) || !isfinite(beta2) ||
                            !isfinite(eps));
        rc = M->dtype == MG_FLOAT64
                 ? mg_forward_backward_f64(M, &loss, fused, lr_t, beta1, beta2, eps, s + 1)
                 : mg_forward_backward_f32(M, &loss, fused, lr_t, beta1, beta2, eps, s + 1);
        losses[i] = loss;
        if (rc == MG_ERR_NONFINITE) return rc;
        /* not fused, or -1: gradients not certainly finite, stored instead:
         * the checked step */
        if (!fused || rc == -1) rc = mg_adam_step(M, lr_t, beta1, beta2, eps, s + 1);
        if (rc != MG_OK) return rc;
        *steps_done = i + 1;
    }
    return MG_OK;
}

/* ---------------------------------------------------------------- inference */
int mg_infer_logits(mg_model *M, int token, int pos, double *logits) {
    if (M == NULL || logits == NULL) return MG_ERR_ARG;
    if (token < 0 || token >= M->cfg.vocab_size) return MG_ERR_TOKEN;
    if (pos < 0 || pos >= M->cfg.block_size) return MG_ERR_LENGTH;
    return M->dtype == MG_FLOAT64 ? mg_infer_logits_f64(M, token, pos, logits)
                                  : mg_infer_logits_f32(M, token, pos, logits);
}

int mg_softmax_temperature(double *probs, const double *logits, int V, double temperature) {
    if (probs == NULL || logits == NULL || V < 1) return MG_ERR_ARG;
    if (!(temperature > 0) || !isfinite(temperature)) return MG_ERR_ARG;
    const double inv_t = pow(temperature, -1.0);
    if (!isfinite(inv_t)) return MG_ERR_ARG;
    double maxv = logits[0] * inv_t;
    for (int i = 0; i < V; i++) {
        probs[i] = logits[i] * inv_t;
        if (probs[i] > maxv) maxv = probs[i];
    }
    double total = 0;
    for (int i = 0; i < V; i++) { probs[i] = exp(probs[i] - maxv); total += probs[i]; }
    const double inv = pow(total, -1.0);
    for (int i = 0; i < V; i++) probs[i] = probs[i] * inv;
    return isfinite(total) ? MG_OK : MG_ERR_NONFINITE;
}

/* ----------------------------------------------------------------- sampling */
/* MT19937 as CPython's _randommodule.c runs it (genrand_uint32). */
static uint32_t mt_next(mg_mt19937 *r) {
    enum { NW = 624, MW = 397 };
    static const uint32_t mag01[2] = {0x0u, 0x9908b0dfu};
    uint32_t y, *mt = r->mt;
    if (r->index >= NW) {
        int kk;
        for (kk = 0; kk < NW - MW; kk++) {
            y = (mt[kk] & 0x80000000u) | (mt[kk + 1] & 0x7fffffffu);
            mt[kk] = mt[kk + MW] ^ (y >> 1) ^ mag01[y & 0x1u];
        }
        for (; kk < NW - 1; kk++) {
            y = (mt[kk] & 0x80000000u) | (mt[kk + 1] & 0x7fffffffu);
            mt[kk] = mt[kk + (MW - NW)] ^ (y >> 1) ^ mag01[y & 0x1u];
        }
        y = (mt[NW - 1] & 0x80000000u) | (mt[0] & 0x7fffffffu);
        mt[NW - 1] = mt[MW - 1] ^ (y >> 1) ^ mag01[y & 0x1u];
        r->index = 0;
    }
    y = mt[r->index++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
}

double mg_mt_random(mg_mt19937 *r) {   /* random_random(): genrand_res53 */
    const uint32_t a = mt_next(r) >> 5, b = mt_next(r) >> 6;
    return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

/* Zero all but the k largest of logits' probabilities: a token survives if
 * fewer than k tokens rank before it (larger logit, or equal and lower id),
 * as a stable descending argsort's first k. */
static void top_k_mask(double *probs, const double *logits, int V, int k) {
    for (int i = 0; i < V; i++) {
        int before = 0;
        for (int j = 0; j < V && before < k; j++)
            before += logits[j] > logits[i] || (logits[j] == logits[i] && j < i);
        if (before >= k) probs[i] = 0.0;
    }
}

int mg_sample(mg_model *M, mg_mt19937 *rng, double temperature, int top_k,
              const int32_t *prefix, int n_prefix, int bos, int num_samples,
              int32_t *tokens, int32_t *lens, int *done) {
    if (done != NULL) *done = 0;
    if (M == NULL || rng == NULL || tokens == NULL || lens == NULL || done == NULL)
        return MG_ERR_ARG;
    const int V = M->cfg.vocab_size, T = M->cfg.block_size;
    if (rng->index < 0 || rng->index > 624 || num_samples < 0 || top_k < 0) return MG_ERR_ARG;
    if (n_prefix < 0 || n_prefix > T || (n_prefix > 0 && prefix == NULL)) return MG_ERR_LENGTH;
    if (bos < 0 || bos >= V) return MG_ERR_TOKEN;
    for (int i = 0; i < n_prefix; i++)
        if (prefix[i] < 0 || prefix[i] >= V) return MG_ERR_TOKEN;
    double *buf = malloc(3 * (size_t)V * sizeof(double));
    if (buf == NULL) return MG_ERR_NOMEM;
    double *logits = buf, *probs = buf + V, *cum = buf + 2 * (size_t)V;
    int rc = MG_OK;
    /* the parameters do not change while sampling: transposed weights once */
    int (*infer)(mg_model *, int, int, double *) = mg_infer_logits_T_f32;
    if (M->dtype == MG_FLOAT64) { mg_infer_prepare_f64(M); infer = mg_infer_logits_T_f64; }
    else mg_infer_prepare_f32(M);
    for (int s = 0; s < num_samples && rc == MG_OK; s++) {
        int token = bos, n = 0;
        for (int pos = 0; pos < n_prefix && rc == MG_OK; pos++) {
            rc = infer(M, token, pos, logits);   /* fills the KV cache */
            token = prefix[pos];
        }
        for (int pos = n_prefix; pos < T && rc == MG_OK; pos++) {
            rc = infer(M, token, pos, logits);
            if (rc == MG_OK) rc = mg_softmax_temperature(probs, logits, V, temperature);
            if (rc != MG_OK) break;
            if (top_k > 0 && top_k < V) top_k_mask(probs, logits, V, top_k);
            /* rng.choices: cum_weights = accumulate(weights), total = cum[-1] + 0.0 */
            double acc = probs[0];
            cum[0] = acc;
            for (int i = 1; i < V; i++) { acc = acc + probs[i]; cum[i] = acc; }
            const double total = cum[V - 1] + 0.0;
            if (!(total > 0.0) || !isfinite(total)) { rc = MG_ERR_NONFINITE; break; }
            const double x = mg_mt_random(rng) * total;
            int lo = 0, hi = V - 1;             /* bisect_right(cum, x, 0, V - 1) */
            while (lo < hi) {
                const int mid = (lo + hi) / 2;
                if (x < cum[mid]) hi = mid; else lo = mid + 1;
            }
            token = lo;
            if (token == bos) break;
            tokens[(size_t)s * T + n++] = token;
        }
        if (rc == MG_OK) {
            lens[s] = n;
            *done = s + 1;
        }
    }
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ threads */
int mg_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static int g_num_threads = 0;  /* 0: OpenMP's default */

int mg_team_size(void) {
#ifdef _OPENMP
    const int n = g_num_threads;
    return n > 0 ? n : omp_get_max_threads();
#else
    return 1;
#endif
}

int mg_get_max_threads(void) {
    return mg_team_size();
}

void mg_set_num_threads(int n) {
    if (n > 0) g_num_threads = n;
}
