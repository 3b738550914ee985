/*
 * model_internal.h: the model's state, known only inside the C core (the
 * public header microgpt.h declares an opaque handle).
 *
 * Parameters, gradients and the two Adam moments are each one flat buffer
 * of num_params elements in the SPEC's order (wte, wpe, lm_head, then per
 * layer wq, wk, wv, wo, fc1, fc2), so Adam is one loop; the activations and
 * their gradients are each one flat buffer carved by mg_act_layout.
 */
#ifndef MG_MODEL_INTERNAL_H
#define MG_MODEL_INTERNAL_H

#include "common.h"
#include "microgpt.h"

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

/* A batch: n_docs documents packed back to back (document d is tokens
 * doc_offsets[d] .. doc_offsets[d+1]-1), capacity cap tokens. */
typedef struct {
    int32_t *inputs;         /* (cap) token ids */
    int32_t *targets;        /* (cap) next-token ids */
    int32_t *positions;      /* (cap) position of each token in its document */
    int32_t *doc_lens;       /* (cap) */
    size_t *doc_offsets;     /* (cap + 1) first token of each document */
    double *doc_loss;        /* (cap) each document's mean token loss */
    int n_tokens, n_docs;
    int total_docs;          /* the loss is (sum of document losses) / total_docs */
    size_t cap;
} mg_batch;

/* A step's Adam settings (validated by the caller). */
typedef struct { double lr_t, beta1, beta2, eps; long t; } mg_adam_args;

/* What run_batch does with the saved batch. */
enum { MG_RUN_FORWARD = 1, MG_RUN_BACKWARD = 2 };
/* run_batch's answer when the gradients could not be guaranteed finite
 * for a fused update (they were accumulated instead, nothing updated) */
#define MG_NOT_FUSED (-1)
/* train_steps_team's answer when the steps do not suit one team */
#define MG_NO_TEAM (-2)

/* The per-dtype functions (model_impl.h), chosen once, at creation. */
typedef struct mg_dtype_ops {
    /* forward and/or backward of batch B; with adam != NULL the backward is
     * fused with the Adam step (gradients zero on entry) or MG_NOT_FUSED */
    int (*run_batch)(mg_model *M, mg_batch *B, int what, const mg_adam_args *adam,
                     double *loss);
    /* the checked Adam step of the accumulated gradients, then zero them */
    int (*adam_step)(mg_model *M, const mg_adam_args *adam);
    /* steps step0 .. step0+n_steps-1 in one persistent team, or MG_NO_TEAM */
    int (*train_steps_team)(mg_model *M, const mg_train_data *D, const mg_schedule *S,
                            long step0, long n_steps, int batch, double *losses, double *lrs,
                            long *steps_done);
    /* one token of inference (use_T: from weights transposed by infer_prepare) */
    int (*infer_logits)(mg_model *M, int token, int pos, double *logits, int use_T);
    void (*infer_prepare)(mg_model *M);
} mg_dtype_ops;

extern const mg_dtype_ops mg_ops_f64, mg_ops_f32;   /* (single-copy builds) */
/* the table of float64 (f64 != 0) or float32 that this process runs (dispatch.c) */
const mg_dtype_ops *mg_dtype_ops_for(int f64);

struct mg_model {
    mg_config cfg;
    mg_dtype dtype;
    const mg_dtype_ops *ops;
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
    mg_batch batch;          /* the saved batch (capacity max_tokens) */
    double *piece_max;       /* (MG_MAX_PIECES, 2 (1 + 6L) + 1) per-piece maxima of the
                              * backward (the fused Adam's finiteness check) */
    int have_forward;        /* a training forward of `batch` is saved for backward */
    /* transposed copies of the matmul weights for the training forward and
     * sampling (see model_impl.h) */
    void *wT;
    size_t wT_layer;         /* elements of one layer's transposed weights */
    int wT_valid;            /* wT matches params (set only by a fused training
                              * step inside mg_train_steps, which trusts it for
                              * its next step; every other call clears it) */
};

/* A batched step runs its documents in at most this many pieces (a number
 * that depends only on the batch, never on the thread count). */
#ifndef MG_MAX_PIECES
#define MG_MAX_PIECES 8
#endif

/* ------------------------------------------------------ checked arithmetic */
static inline int mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static inline int add_ok(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}

/* *acc += a * b, failing on overflow */
static inline int mac_ok(size_t *acc, size_t a, size_t b) {
    size_t p;
    return mul_ok(a, b, &p) && add_ok(*acc, p, acc);
}

/* batch.c: the batch of training step s (documents (s * batch + b) % n_docs
 * for b in lo .. hi-1, each truncated to the block) into B; the data are
 * valid and B's capacity suffices. */
void mg_batch_assemble(mg_batch *B, int T, const mg_train_data *D, long s, int batch, int lo,
                       int hi);
/* B's positions, offsets and sizes from B->doc_lens[0 .. n_docs) */
void mg_batch_layout(mg_batch *B, int n_docs, int total_docs);
int mg_batch_alloc(mg_batch *B, size_t cap);
void mg_batch_free(mg_batch *B);
/* copy src's contents into dst (dst->cap >= src->n_tokens) */
void mg_batch_copy(mg_batch *dst, const mg_batch *src);

/* train.c: lr_t of step s (declared in microgpt.h) */

#endif /* MG_MODEL_INTERNAL_H */
