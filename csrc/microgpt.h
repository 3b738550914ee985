/*
 * microgpt_c: the C core.  Plain C11, no Python.
 *
 * A GPT as in SPEC.md: token + position embedding, RMSNorm (no gain), n_layer
 * blocks of causal multi-head attention and a ReLU MLP (no biases), a separate
 * lm_head, softmax cross-entropy, Adam.  Float64 and float32 share one source
 * (kernels_impl.h, model_impl.h), instantiated with the suffixes _f64 / _f32.
 *
 * Dimension names used everywhere:
 *   V  vocab_size          T  block_size (max sequence length)
 *   L  n_layer             C  n_embd          NH  n_head    HS = C / NH
 *   N  tokens in a batch (documents packed back to back, N <= max_tokens)
 *   OC output channels of a matmul
 *
 * Every function returns an mg_status; nothing here calls exit/abort/assert
 * on user input.
 */
#ifndef MICROGPT_H
#define MICROGPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MG_OK = 0,
    MG_ERR_CONFIG = 1,     /* a size is zero/negative or n_embd % n_head != 0 */
    MG_ERR_OVERFLOW = 2,   /* a buffer size would overflow size_t */
    MG_ERR_NOMEM = 3,      /* malloc failed */
    MG_ERR_TOKEN = 4,      /* a token id is outside [0, V) */
    MG_ERR_LENGTH = 5,     /* a sequence/batch length is out of range */
    MG_ERR_STATE = 6,      /* e.g. backward without a forward */
    MG_ERR_DTYPE = 7,      /* unknown dtype */
    MG_ERR_ARG = 8,        /* a NULL pointer or otherwise invalid argument */
    MG_ERR_NONFINITE = 9   /* a loss came out NaN or infinite */
} mg_status;

typedef enum { MG_FLOAT64 = 0, MG_FLOAT32 = 1 } mg_dtype;

typedef struct {
    int vocab_size;  /* V */
    int block_size;  /* T */
    int n_layer;     /* L */
    int n_embd;      /* C */
    int n_head;      /* NH */
} mg_config;

/* Parameter tensors, in the SPEC's order: wte, wpe, lm_head, then per layer
 * attn_wq, attn_wk, attn_wv, attn_wo, mlp_fc1, mlp_fc2. */
enum { MG_WTE = 0, MG_WPE = 1, MG_LM_HEAD = 2, MG_NUM_GLOBAL = 3 };
enum { MG_WQ = 0, MG_WK, MG_WV, MG_WO, MG_FC1, MG_FC2, MG_NUM_PER_LAYER };

/* Offsets (in elements) of the activations of a batch of up to max_tokens
 * tokens.  The activation-gradient buffer uses the same layout. */
typedef struct {
    size_t emb;      /* (N, C)       wte[tok] + wpe[pos]                */
    size_t x0;       /* (N, C)       rmsnorm(emb)                       */
    size_t x0s;      /* (N)          its scale (ms + 1e-5)^-0.5          */
    size_t layers;   /* start of the per-layer blocks                   */
    size_t lstride;  /* size of one layer's block                       */
    /* offsets inside one layer block: */
    size_t ln1, ln1s;        /* (N, C), (N)                              */
    size_t q, k, v;          /* (N, C) each                              */
    size_t att;              /* (N, NH, T) softmax weights; row p uses p+1 */
    size_t atty;             /* (N, C)   concatenated head outputs        */
    size_t attproj;          /* (N, C)   atty @ Wo^T                      */
    size_t res2;             /* (N, C)   attproj + layer input            */
    size_t ln2, ln2s;        /* (N, C), (N)                              */
    size_t fch, fchr;        /* (N, 4C)  fc1 output, relu of it           */
    size_t fcproj;           /* (N, C)   fchr @ fc2^T                     */
    size_t res3;             /* (N, C)   fcproj + res2 = layer output     */
    size_t logits, probs;    /* (N, V)                                   */
    size_t losses;           /* (N)      -log probs[target]               */
    size_t dlosses;          /* (N)      weight of each token in the loss */
    size_t total;
} mg_act_layout;

typedef struct mg_model {
    mg_config cfg;
    mg_dtype dtype;
    size_t elem_size;        /* sizeof(double) or sizeof(float)           */
    size_t num_params;
    size_t param_offset[MG_NUM_GLOBAL]; /* wte, wpe, lm_head              */
    size_t layer_offset;     /* first layer tensor                          */
    size_t layer_size;       /* elements of one layer's tensors             */
    size_t max_tokens;       /* activation capacity                         */
    mg_act_layout acts_layout;
    void *params;            /* (num_params) */
    void *grads;             /* (num_params) */
    void *m_adam, *v_adam;   /* (num_params) each */
    void *acts, *dacts;      /* (acts_layout.total) each */
    void *kcache, *vcache;   /* (L, T, C) each, for token-by-token inference */
    int32_t *inputs;         /* (max_tokens) the saved batch */
    int32_t *targets;        /* (max_tokens) */
    int32_t *positions;      /* (max_tokens) position of each token in its document */
    int32_t *doc_lens;       /* (max_tokens) */
    size_t *doc_offsets;     /* (max_tokens + 1) first token of each document */
    double *doc_loss;        /* (max_tokens) each document's mean token loss */
    double *piece_max;       /* (MG_MAX_PIECES, 2 (1 + 6L) + 1) per-piece maxima of the
                              * backward (the fused Adam's finiteness check) */
    int n_tokens, n_docs;
    int total_docs;          /* the loss is (sum of document losses) / total_docs */
    int have_forward;        /* a training forward is saved for backward */
    int num_threads;         /* 0: OpenMP default */
    /* transposed copies of the matmul weights for the training forward
     * (rebuilt from params by every forward; see model_impl.h) */
    void *wT;
    size_t wT_layer;         /* elements of one layer's transposed weights */
    int wT_valid;            /* wT matches params (set only by a fused training
                              * step inside mg_train_steps, which trusts it for
                              * its next step; every other call clears it) */
} mg_model;

/* A batched step runs its documents in at most this many pieces (a number
 * that depends only on the batch, never on the thread count). */
#ifndef MG_MAX_PIECES
#define MG_MAX_PIECES 8
#endif

/* ---- lifecycle ---------------------------------------------------------- */
const char *mg_status_string(int status);
int mg_config_check(const mg_config *cfg);
/* Bytes a model with this config and capacity needs; MG_ERR_OVERFLOW if it
 * does not fit in size_t. */
int mg_model_bytes(const mg_config *cfg, int dtype, size_t max_tokens, size_t *bytes);
int mg_num_params(const mg_config *cfg, size_t *n);
/* Offset and shape (rows, cols) of tensor `index` (0 .. 3 + 6L - 1). */
int mg_tensor_info(const mg_config *cfg, int index, size_t *offset, size_t *rows, size_t *cols);
int mg_model_create(mg_model **out, const mg_config *cfg, int dtype, size_t max_tokens);
void mg_model_free(mg_model *model);
/* Grow the activation capacity to at least max_tokens tokens. */
int mg_model_reserve(mg_model *model, size_t max_tokens);

/* ---- training ------------------------------------------------------------ */
/* Forward a batch of n_docs documents packed back to back: document d has
 * doc_lens[d] in [1, T] positions; inputs/targets are (N) with N = sum of
 * doc_lens.  *loss = mean over documents of each document's mean token loss. */
int mg_forward(mg_model *model, const int32_t *inputs, const int32_t *targets,
               const int32_t *doc_lens, int n_docs, double *loss);
/* Same, for this process's share of a larger batch (data parallelism): the
 * loss is (sum of these documents' mean token losses) / total_docs, so the
 * shares' losses and gradients add up to the whole batch's. */
int mg_forward_partial(mg_model *model, const int32_t *inputs, const int32_t *targets,
                       const int32_t *doc_lens, int n_docs, int total_docs, double *loss);
/* Accumulate d(loss)/d(params) of the last forward into the gradients. */
int mg_backward(mg_model *model);
int mg_zero_grad(mg_model *model);
/* One Adam update with learning rate lr_t at 1-based step t, then zero grads. */
int mg_adam_step(mg_model *model, double lr_t, double beta1, double beta2,
                 double eps, long t);
/* Train on one document: tokens (n_tokens) = [BOS] + ids + [BOS]; truncated
 * to the block.  forward + backward, the loss in *loss. */
int mg_sequence_forward_backward(mg_model *model, const int32_t *tokens,
                                 int n_tokens, double *loss);

/* Run n_steps training steps of the SPEC's loop entirely in C over a
 * pre-tokenised corpus.  Document d is corpus[doc_starts[d] .. doc_starts[d+1])
 * = [BOS] + ids + [BOS] (at least 2 tokens).  Step s (s = step0 ..
 * step0 + n_steps - 1) uses documents (s * batch + b) % n_docs, b < batch,
 * each truncated to the block; Adam with lr_t = lr * (1 - s / num_steps) at
 * t = s + 1, then zero grads.  losses[i] and lrs[i] (may be NULL) receive step
 * step0 + i's loss and learning rate.  On error *steps_done says how many
 * steps completed (the failing step's update is not applied). */
int mg_train_steps(mg_model *model, const int32_t *corpus, const int64_t *doc_starts,
                   int64_t n_docs, long step0, long n_steps, long num_steps, int batch,
                   double lr, double beta1, double beta2, double eps,
                   double *losses, double *lrs, long *steps_done);

/* ---- inference ----------------------------------------------------------- */
/* Logits (V) for `token` at position `pos`, using and extending the KV cache
 * (positions 0 .. pos-1 must have been fed before).  Invalidates a saved
 * training forward. */
int mg_infer_logits(mg_model *model, int token, int pos, double *logits);
/* probs = softmax(logits * temperature^-1), computed as the SPEC does. */
int mg_softmax_temperature(double *probs, const double *logits, int V, double temperature);

/* The state of a Mersenne Twister MT19937, laid out as CPython's
 * random.Random keeps it (getstate()[1]: 624 words, then the index). */
typedef struct {
    uint32_t mt[624];
    int index;       /* 0 .. 624; 624: the next draw regenerates the words */
} mg_mt19937;

/* random.Random.random() of that state: 53 random bits in [0, 1). */
double mg_mt_random(mg_mt19937 *rng);

/* The SPEC's sampling loop (section 6) in C, with CPython's random stream:
 * for each of num_samples samples, an empty KV cache and token = bos; the
 * n_prefix tokens of prefix (may be NULL if 0) are fed first without draws;
 * then for each remaining position, probs = softmax(logits * temperature^-1)
 * (mg_softmax_temperature), all but the top_k largest logits' probabilities
 * zeroed if 0 < top_k < V (ties: lower token id first), and the token drawn
 * as rng.choices(range(V), weights=probs)[0] draws it (cumulative sums left
 * to right, bisect_right(cum, random() * total) over [0, V-1)); stop at bos.
 * tokens (num_samples, T) receives each sample's drawn tokens (the prefix
 * not included), lens (num_samples) their counts.  The state advances exactly
 * as CPython's would.  MG_ERR_NONFINITE: a total of weights was not finite
 * or not > 0 (where Python raises ValueError); *done says how many samples
 * completed. */
int mg_sample(mg_model *model, mg_mt19937 *rng, double temperature, int top_k,
              const int32_t *prefix, int n_prefix, int bos, int num_samples,
              int32_t *tokens, int32_t *lens, int *done);

/* ---- threads ------------------------------------------------------------- */
int mg_openmp_enabled(void);
int mg_get_max_threads(void);
/* Process-wide: applies to calls from every thread (not only the caller). */
void mg_set_num_threads(int n);
/* Threads a parallel region uses: the mg_set_num_threads value, else
 * OpenMP's default (OMP_NUM_THREADS or all cores). */
int mg_team_size(void);

/* ---- kernels, exposed for testing: see kernels_impl.h --------------------- */
#define MG_DECLARE_KERNELS(REAL, SUF)                                                   \
    void encoder_forward_##SUF(REAL *out, const int32_t *inp, const int32_t *pos,       \
                               const REAL *wte, const REAL *wpe, int N, int C);          \
    void encoder_backward_##SUF(REAL *dwte, REAL *dwpe, const REAL *dout,               \
                                const int32_t *inp, const int32_t *pos, int N, int C);  \
    void rmsnorm_forward_##SUF(REAL *out, REAL *scale, const REAL *inp, int N, int C);  \
    void rmsnorm_backward_##SUF(REAL *dinp, const REAL *dout, const REAL *inp,          \
                                const REAL *scale, int N, int C);                       \
    void matmul_forward_##SUF(REAL *out, const REAL *inp, const REAL *weight,           \
                              int N, int C, int OC);                                    \
    void matmul_backward_##SUF(REAL *dinp, REAL *dweight, const REAL *dout,             \
                               const REAL *inp, const REAL *weight, int N, int C, int OC); \
    void attention_forward_##SUF(REAL *out, REAL *att, const REAL *q, const REAL *k,    \
                                 const REAL *v, int N, int p0, int C, int NH, int T);   \
    void attention_backward_##SUF(REAL *dq, REAL *dk, REAL *dv, REAL *datt,             \
                                  const REAL *dout, const REAL *att, const REAL *q,     \
                                  const REAL *k, const REAL *v, int N, int C, int NH, int T); \
    void relu_forward_##SUF(REAL *out, const REAL *inp, size_t n);                      \
    void relu_backward_##SUF(REAL *dinp, const REAL *dout, const REAL *inp, size_t n);   \
    void residual_forward_##SUF(REAL *out, const REAL *inp1, const REAL *inp2, size_t n); \
    void residual_backward_##SUF(REAL *dinp1, REAL *dinp2, const REAL *dout, size_t n);   \
    void crossentropy_softmax_forward_##SUF(REAL *losses, REAL *probs, const REAL *logits, \
                                            const int32_t *targets, int N, int V);       \
    void crossentropy_softmax_backward_##SUF(REAL *dlogits, const REAL *dlosses,         \
                                             const REAL *probs, const int32_t *targets,  \
                                             int N, int V);                              \
    void adam_update_##SUF(REAL *params, REAL *m, REAL *v, const REAL *grads, size_t n,  \
                           double lr_t, double beta1, double beta2, double eps, long t); \
    void adam_update_zero_grad_##SUF(REAL *params, REAL *m, REAL *v, REAL *grads, size_t n, \
                                     double lr_t, double beta1, double beta2, double eps, long t); \
    int all_finite_##SUF(const REAL *a, size_t n);                                      \
    void zero_##SUF(REAL *buf, size_t n);

MG_DECLARE_KERNELS(double, f64)
MG_DECLARE_KERNELS(float, f32)

/* pow(x, -1) and pow(x, -0.5) with libm's bits, as the float64 kernels
 * compute them (fast path + libm fallback), for the C tests. */
double mg_recip_pow_f64(double x);
double mg_rsqrt_pow_f64(double x);

/* Model-level functions per dtype (dispatched to by the generic ones). */
int mg_forward_f64(mg_model *model, double *loss);
int mg_forward_f32(mg_model *model, double *loss);
int mg_backward_f64(mg_model *model);
int mg_backward_f32(mg_model *model);
/* Backward fused with mg_adam_step (gradients must be zero on entry; they are
 * zero again on return): the same result as mg_backward + mg_adam_step.
 * Returns -1 (no update applied, the gradients left in grads) when the
 * gradients cannot be guaranteed finite: then call mg_adam_step. */
int mg_backward_adam_f64(mg_model *model, double lr_t, double beta1, double beta2,
                         double eps, long t);
int mg_backward_adam_f32(mg_model *model, double lr_t, double beta1, double beta2,
                         double eps, long t);
/* Forward and backward of the saved batch in one pass (one parallel region):
 * with adam != 0 as mg_forward + mg_backward_adam (same returns), else as
 * mg_forward + mg_backward.  MG_ERR_NONFINITE: the loss is not finite (no
 * backward done). */
int mg_forward_backward_f64(mg_model *model, double *loss, int adam, double lr_t, double beta1,
                            double beta2, double eps, long t);
int mg_forward_backward_f32(mg_model *model, double *loss, int adam, double lr_t, double beta1,
                            double beta2, double eps, long t);
/* mg_train_steps' batch of step s into model's batch buffers (inputs,
 * targets, doc_lens, positions, doc_offsets, sizes); the corpus is valid. */
void mg_assemble_batch(mg_model *model, const int32_t *corpus, const int64_t *doc_starts,
                       int64_t n_docs, long s, int batch);
/* mg_train_steps in one persistent team of threads (a batched run with
 * enough work and a team), else -2 (nothing done: run the steps one by
 * one).  Arguments validated by mg_train_steps. */
int mg_train_steps_team_f64(mg_model *model, const int32_t *corpus, const int64_t *doc_starts,
                            int64_t n_docs, long step0, long n_steps, long num_steps, int batch,
                            double lr, double beta1, double beta2, double eps,
                            double *losses, double *lrs, long *steps_done);
int mg_train_steps_team_f32(mg_model *model, const int32_t *corpus, const int64_t *doc_starts,
                            int64_t n_docs, long step0, long n_steps, long num_steps, int batch,
                            double lr, double beta1, double beta2, double eps,
                            double *losses, double *lrs, long *steps_done);
int mg_infer_logits_f64(mg_model *model, int token, int pos, double *logits);
int mg_infer_logits_f32(mg_model *model, int token, int pos, double *logits);
/* The same from transposed weights built once by mg_infer_prepare_* (for a
 * sampling run: the parameters must not change in between); same results. */
void mg_infer_prepare_f64(mg_model *model);
void mg_infer_prepare_f32(mg_model *model);
int mg_infer_logits_T_f64(mg_model *model, int token, int pos, double *logits);
int mg_infer_logits_T_f32(mg_model *model, int token, int pos, double *logits);

#ifdef __cplusplus
}
#endif
#endif /* MICROGPT_H */
