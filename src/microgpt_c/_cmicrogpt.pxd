# Declarations of the C core (csrc/microgpt.h, csrc/mg_kernels.h) for Cython.
from libc.stdint cimport int32_t, int64_t, uint32_t

cdef extern from "microgpt.h" nogil:
    ctypedef enum mg_status:
        MG_OK
        MG_ERR_CONFIG
        MG_ERR_OVERFLOW
        MG_ERR_NOMEM
        MG_ERR_TOKEN
        MG_ERR_LENGTH
        MG_ERR_STATE
        MG_ERR_DTYPE
        MG_ERR_ARG
        MG_ERR_NONFINITE

    ctypedef enum mg_dtype:
        MG_FLOAT64
        MG_FLOAT32

    ctypedef struct mg_config:
        int vocab_size
        int block_size
        int n_layer
        int n_embd
        int n_head

    ctypedef struct mg_model:
        pass

    const char *mg_status_string(int status)
    int mg_config_check(const mg_config *cfg)
    int mg_model_bytes(const mg_config *cfg, int dtype, size_t max_tokens, size_t *nbytes)
    int mg_num_params(const mg_config *cfg, size_t *n)
    int mg_tensor_info(const mg_config *cfg, int index, size_t *offset, size_t *rows, size_t *cols)
    int mg_model_create(mg_model **out, const mg_config *cfg, int dtype, size_t max_tokens)
    void mg_model_free(mg_model *model)
    int mg_model_reserve(mg_model *model, size_t max_tokens)
    const mg_config *mg_model_config(const mg_model *model)
    int mg_model_dtype(const mg_model *model)
    size_t mg_model_num_params(const mg_model *model)
    size_t mg_model_max_tokens(const mg_model *model)
    void *mg_model_params(mg_model *model)
    void *mg_model_grads(mg_model *model)
    void *mg_model_adam_m(mg_model *model)
    void *mg_model_adam_v(mg_model *model)

    int mg_forward(mg_model *model, const int32_t *inputs, const int32_t *targets,
                   const int32_t *doc_lens, int n_docs, double *loss)
    int mg_forward_partial(mg_model *model, const int32_t *inputs, const int32_t *targets,
                           const int32_t *doc_lens, int n_docs, int total_docs, double *loss)
    int mg_backward(mg_model *model)
    int mg_zero_grad(mg_model *model)
    int mg_adam_step(mg_model *model, double lr_t, double beta1, double beta2,
                     double eps, long t)
    int mg_sequence_forward_backward(mg_model *model, const int32_t *tokens,
                                     int n_tokens, double *loss)
    int mg_train_steps(mg_model *model, const int32_t *corpus, const int64_t *doc_starts,
                       int64_t n_docs, long step0, long n_steps, long num_steps, int batch,
                       double lr, double beta1, double beta2, double eps,
                       double *losses, double *lrs, long *steps_done)
    int mg_step_share(mg_model *model, const int32_t *corpus, const int64_t *doc_starts,
                      int64_t n_docs, long s, int batch, int lo, int hi, double *loss)
    int mg_step_update(mg_model *model, long s, long num_steps, double lr, double beta1,
                       double beta2, double eps, double *lr_t)
    enum:
        MG_SCHED_LINEAR
        MG_SCHED_COSINE
        MG_SCHED_CONSTANT
    ctypedef struct mg_schedule:
        double lr, beta1, beta2, eps
        long num_steps
        long warmup_steps
        int kind
        double min_lr
        double weight_decay
        double grad_clip
    int mg_schedule_check(const mg_schedule *S)
    double mg_schedule_lr(const mg_schedule *S, long s)
    int mg_train_steps_sched(mg_model *model, const int32_t *corpus, const int64_t *doc_starts,
                             int64_t n_docs, long step0, long n_steps, int batch,
                             const mg_schedule *S, double *losses, double *lrs,
                             long *steps_done)
    int mg_step_update_sched(mg_model *model, long s, const mg_schedule *S, double *lr_t)
    int mg_grad_norm(mg_model *model, double *norm)
    int mg_infer_logits(mg_model *model, int token, int pos, double *logits)
    int mg_softmax_temperature(double *probs, const double *logits, int V, double temperature)
    ctypedef struct mg_mt19937:
        uint32_t mt[624]
        int index
    double mg_mt_random(mg_mt19937 *rng)
    int mg_sample(mg_model *model, mg_mt19937 *rng, double temperature, int top_k,
                  const int32_t *prefix, int n_prefix, int bos, int num_samples,
                  int32_t *tokens, int32_t *lens, int *done)

    int mg_openmp_enabled()
    int mg_get_max_threads()
    void mg_set_num_threads(int n)
    const char *mg_simd_variant()

cdef extern from "mg_kernels.h" nogil:
    int mg_force_variant(int op, int variant)
    int attention_variant_f64(int N, int p0, int C, int NH)
    unsigned long mg_fp_env()
    void mg_fp_env_set(unsigned long state)
    int mg_fp_team_envs(unsigned long *out, int n)

    # kernels (float64 and float32 instantiations)
    void encoder_forward_f64(double *out, const int32_t *inp, const int32_t *pos, const double *wte, const double *wpe, int N, int C)
    void encoder_forward_f32(float *out, const int32_t *inp, const int32_t *pos, const float *wte, const float *wpe, int N, int C)
    void encoder_backward_f64(double *dwte, double *dwpe, const double *dout, const int32_t *inp, const int32_t *pos, int N, int C)
    void encoder_backward_f32(float *dwte, float *dwpe, const float *dout, const int32_t *inp, const int32_t *pos, int N, int C)
    void rmsnorm_forward_f64(double *out, double *scale, const double *inp, int N, int C)
    void rmsnorm_forward_f32(float *out, float *scale, const float *inp, int N, int C)
    void rmsnorm_backward_f64(double *dinp, const double *dout, const double *inp, const double *scale, int N, int C)
    void rmsnorm_backward_f32(float *dinp, const float *dout, const float *inp, const float *scale, int N, int C)
    void matmul_forward_f64(double *out, const double *inp, const double *weight, int N, int C, int OC)
    void matmul_forward_f32(float *out, const float *inp, const float *weight, int N, int C, int OC)
    void matmul_backward_f64(double *dinp, double *dweight, const double *dout, const double *inp, const double *weight, int N, int C, int OC)
    void matmul_backward_f32(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, int N, int C, int OC)
    void attention_forward_f64(double *out, double *att, const double *q, const double *k, const double *v, int N, int p0, int C, int NH, int T)
    void attention_forward_f32(float *out, float *att, const float *q, const float *k, const float *v, int N, int p0, int C, int NH, int T)
    void attention_backward_f64(double *dq, double *dk, double *dv, double *datt, const double *dout, const double *att, const double *q, const double *k, const double *v, int N, int C, int NH, int T)
    void attention_backward_f32(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *att, const float *q, const float *k, const float *v, int N, int C, int NH, int T)
    void relu_forward_f64(double *out, const double *inp, size_t n)
    void relu_forward_f32(float *out, const float *inp, size_t n)
    void relu_backward_f64(double *dinp, const double *dout, const double *inp, size_t n)
    void relu_backward_f32(float *dinp, const float *dout, const float *inp, size_t n)
    void residual_forward_f64(double *out, const double *inp1, const double *inp2, size_t n)
    void residual_forward_f32(float *out, const float *inp1, const float *inp2, size_t n)
    void residual_backward_f64(double *dinp1, double *dinp2, const double *dout, size_t n)
    void residual_backward_f32(float *dinp1, float *dinp2, const float *dout, size_t n)
    void crossentropy_softmax_forward_f64(double *losses, double *probs, const double *logits, const int32_t *targets, int N, int V)
    void crossentropy_softmax_forward_f32(float *losses, float *probs, const float *logits, const int32_t *targets, int N, int V)
    void crossentropy_softmax_backward_f64(double *dlogits, const double *dlosses, const double *probs, const int32_t *targets, int N, int V)
    void crossentropy_softmax_backward_f32(float *dlogits, const float *dlosses, const float *probs, const int32_t *targets, int N, int V)
    void adam_update_f64(double *params, double *m, double *v, const double *grads, size_t n, double lr_t, double beta1, double beta2, double eps, long t)
    void adam_update_f32(float *params, float *m, float *v, const float *grads, size_t n, double lr_t, double beta1, double beta2, double eps, long t)
