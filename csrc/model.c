/*
 * model.c: the top layer of the C core: configuration checks, buffer layout
 * (with overflow checks), allocation, input validation, and dispatch to the
 * model's per-dtype functions (M->ops, chosen at creation).  The training
 * loop is in train.c, sampling in sample.c.
 */
#include "model_internal.h"

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
    M->acts = M->dacts = NULL;
    mg_batch_free(&M->batch);
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
    mg_batch batch;
    int rc = model_sizes(&M->cfg, M->dtype, max_tokens, &s, &A);
    if (rc != MG_OK) return rc;
    void *acts = calloc(A.total, M->elem_size), *dacts = calloc(A.total, M->elem_size);
    if (!acts || !dacts || mg_batch_alloc(&batch, max_tokens) != MG_OK) {
        free(acts); free(dacts);
        return MG_ERR_NOMEM;
    }
    free_activations(M);
    M->acts = acts; M->dacts = dacts;
    M->batch = batch;
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
    M->ops = mg_dtype_ops_for(dtype == MG_FLOAT64);
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

const mg_config *mg_model_config(const mg_model *M) { return M ? &M->cfg : NULL; }
int mg_model_dtype(const mg_model *M) { return M ? (int)M->dtype : -1; }
size_t mg_model_num_params(const mg_model *M) { return M ? M->num_params : 0; }
size_t mg_model_max_tokens(const mg_model *M) { return M ? M->max_tokens : 0; }
void *mg_model_params(mg_model *M) { return M ? M->params : NULL; }
void *mg_model_grads(mg_model *M) { return M ? M->grads : NULL; }
void *mg_model_adam_m(mg_model *M) { return M ? M->m_adam : NULL; }
void *mg_model_adam_v(mg_model *M) { return M ? M->v_adam : NULL; }

/* ----------------------------------------------------------------- training */
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
    mg_batch *B = &M->batch;
    memcpy(B->inputs, inputs, N * sizeof(int32_t));
    memcpy(B->targets, targets, N * sizeof(int32_t));
    memcpy(B->doc_lens, doc_lens, (size_t)n_docs * sizeof(int32_t));
    mg_batch_layout(B, n_docs, total_docs);
    return M->ops->run_batch(M, B, MG_RUN_FORWARD, NULL, loss);
}

int mg_backward(mg_model *M) {
    if (M == NULL) return MG_ERR_ARG;
    M->wT_valid = 0;
    if (!M->have_forward) return MG_ERR_STATE;
    return M->ops->run_batch(M, &M->batch, MG_RUN_BACKWARD, NULL, NULL);
}

int mg_zero_grad(mg_model *M) {
    if (M == NULL) return MG_ERR_ARG;
    memset(M->grads, 0, M->num_params * M->elem_size);
    return MG_OK;
}

int mg_adam_step(mg_model *M, double lr_t, double beta1, double beta2, double eps, long t) {
    if (M == NULL) return MG_ERR_ARG;
    const mg_adam_args args = {lr_t, beta1, beta2, eps, t};
    return M->ops->adam_step(M, &args);
}

int mg_sequence_forward_backward(mg_model *M, const int32_t *tokens, int n_tokens, double *loss) {
    if (M == NULL || tokens == NULL || loss == NULL) return MG_ERR_ARG;
    if (n_tokens < 2) return MG_ERR_LENGTH;
    int32_t n = n_tokens - 1 < M->cfg.block_size ? n_tokens - 1 : M->cfg.block_size;
    int rc = mg_forward(M, tokens, tokens + 1, &n, 1, loss);
    if (rc != MG_OK) return rc;
    return mg_backward(M);
}

/* ---------------------------------------------------------------- inference */
int mg_infer_logits(mg_model *M, int token, int pos, double *logits) {
    if (M == NULL || logits == NULL) return MG_ERR_ARG;
    if (token < 0 || token >= M->cfg.vocab_size) return MG_ERR_TOKEN;
    if (pos < 0 || pos >= M->cfg.block_size) return MG_ERR_LENGTH;
    return M->ops->infer_logits(M, token, pos, logits, 0);
}

