/*
 * microgpt_c: the C core.  Plain C11, no Python.
 *
 * A GPT as in SPEC.md: token + position embedding, RMSNorm (no gain), n_layer
 * blocks of causal multi-head attention and a ReLU MLP (no biases), a separate
 * lm_head, softmax cross-entropy, Adam.  Float64 and float32 share one source
 * (ops/<family>.h, model_impl.h), instantiated with the suffixes _f64 / _f32; see
 * csrc/README.md for the map.  The kernels themselves, exposed for tests,
 * are declared in mg_kernels.h.
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

/* The model: an opaque handle (its state is in model_internal.h). */
typedef struct mg_model mg_model;

/* A pre-tokenised corpus: document d is corpus[doc_starts[d] ..
 * doc_starts[d+1]) = [BOS] + ids + [BOS] (at least 2 tokens). */
typedef struct {
    const int32_t *corpus;
    const int64_t *doc_starts;   /* (n_docs + 1) */
    int64_t n_docs;
} mg_train_data;

/* The optimiser schedule of step s (0-based): Adam at t = s + 1 with lr_t
 * from mg_schedule_lr.  With every field after num_steps zero it is the
 * SPEC's: lr_t = lr * (1 - s / num_steps), plain Adam.  The options (W =
 * warmup_steps, N = num_steps, f = (s - W) / (N - W)):
 *   s < W:     lr_t = lr * (s + 1) / W                  (linear warmup)
 *   linear:    lr_t = min_lr + (lr - min_lr) * (1 - f)
 *   cosine:    lr_t = min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * f))
 *   constant:  lr_t = lr
 * grad_clip > 0: the gradients are scaled by clip / ||g|| when the global L2
 * norm ||g|| (summed in double, parameter order, one thread) exceeds clip;
 * weight_decay > 0: decoupled (AdamW) p -= lr_t * weight_decay * p before the
 * Adam update.  Either one makes a step use the unfused path (accumulate the
 * gradients, clip, decay, then the checked Adam step). */
enum { MG_SCHED_LINEAR = 0, MG_SCHED_COSINE = 1, MG_SCHED_CONSTANT = 2 };
typedef struct {
    double lr, beta1, beta2, eps;
    long num_steps;
    long warmup_steps;     /* 0: none; < num_steps */
    int kind;              /* MG_SCHED_LINEAR, MG_SCHED_COSINE or MG_SCHED_CONSTANT */
    double min_lr;         /* in [0, lr] */
    double weight_decay;   /* >= 0 */
    double grad_clip;      /* 0: off, else > 0 */
} mg_schedule;

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
/* The model's configuration, dtype, size and flat buffers (num_params
 * elements of the dtype each; NULL for a NULL model). */
const mg_config *mg_model_config(const mg_model *model);
int mg_model_dtype(const mg_model *model);
size_t mg_model_num_params(const mg_model *model);
size_t mg_model_max_tokens(const mg_model *model);
void *mg_model_params(mg_model *model);
void *mg_model_grads(mg_model *model);
void *mg_model_adam_m(mg_model *model);
void *mg_model_adam_v(mg_model *model);

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

/* The two halves of one such step, for a caller that combines the shares of
 * a batch itself (data parallelism: each process runs its share, the
 * gradients are summed, every process applies the same update).
 * mg_step_share: forward and backward of documents lo .. hi-1 of step s's
 * batch (0 <= lo < hi <= batch), the gradients ACCUMULATED into the model's;
 * *loss = (sum of their mean token losses) / batch, so the shares' losses
 * and gradients add up to the whole batch's.
 * mg_step_update: the checked Adam step of step s (lr_t of the schedule in
 * *lr_t, may be NULL), then the gradients zeroed; MG_ERR_NONFINITE (nothing
 * applied, gradients zeroed) if a gradient is not finite. */
int mg_step_share(mg_model *model, const int32_t *corpus, const int64_t *doc_starts,
                  int64_t n_docs, long s, int batch, int lo, int hi, double *loss);
int mg_step_update(mg_model *model, long s, long num_steps, double lr, double beta1,
                   double beta2, double eps, double *lr_t);

/* The same with every option of *S (see mg_schedule): mg_train_steps with
 * the schedule S; when S clips or decays, every step is unfused and single
 * team (the same bits for any thread count). */
int mg_schedule_check(const mg_schedule *S);
double mg_schedule_lr(const mg_schedule *S, long s);
int mg_train_steps_sched(mg_model *model, const int32_t *corpus, const int64_t *doc_starts,
                         int64_t n_docs, long step0, long n_steps, int batch,
                         const mg_schedule *S, double *losses, double *lrs, long *steps_done);
int mg_step_update_sched(mg_model *model, long s, const mg_schedule *S, double *lr_t);
/* The global L2 norm of the accumulated gradients (double sum in parameter
 * order, then sqrt); *norm is inf/NaN if a gradient is not finite. */
int mg_grad_norm(mg_model *model, double *norm);

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

/* ---- build ---------------------------------------------------------------- */
/* The SIMD variant the hot kernels run on this CPU ("x86-64-v4" (AVX-512),
 * "x86-64-v3" (AVX2), "x86-64" for the multiversioned GCC build; else the
 * compiler's target, e.g. "generic"). */
const char *mg_simd_variant(void);

#ifdef __cplusplus
}
#endif
#endif /* MICROGPT_H */
