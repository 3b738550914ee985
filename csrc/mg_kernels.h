/*
 * mg_kernels.h: the kernels of the C core, exposed for tests and benchmarks
 * (microgpt_c._kernels, tests/c/test_core.c).  Each op is a forward/backward
 * pair; the definitions are in ops/<family>.h (see csrc/README.md).
 * Conventions (as in llm.c): outputs, saved buffers, inputs, then sizes;
 * backward kernels ACCUMULATE (+=) into their gradient outputs.
 */
#ifndef MG_KERNELS_H
#define MG_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

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
    void zero_##SUF(REAL *buf, size_t n);                                               \
    int attention_variant_##SUF(int N, int p0, int C, int NH);

MG_DECLARE_KERNELS(double, f64)
MG_DECLARE_KERNELS(float, f32)

/* Force a variant of an op (MG_OP_MATMUL, MG_OP_ATTENTION in common.h) for
 * tests and benchmarks, where it applies; -1 restores the automatic rule.
 * Process-wide; not for use while another thread runs the model.
 * Returns MG_ERR_ARG (microgpt.h) for an unknown op or variant. */
int mg_force_variant(int op, int variant);

/* The calling thread's floating-point control state (MXCSR / FPCR; 0 where
 * unknown), setting it, and each OpenMP team thread's state seen from a
 * plain parallel region (into out[0 .. n), returns the team size): for the
 * tests that our calls leave every thread's environment as they found it. */
unsigned long mg_fp_env(void);
void mg_fp_env_set(unsigned long state);
int mg_fp_team_envs(unsigned long *out, int n);

/* pow(x, -1) and pow(x, -0.5) with libm's bits, as the float64 kernels
 * compute them (fast path + libm fallback), for the C tests. */
double mg_recip_pow_f64(double x);
double mg_rsqrt_pow_f64(double x);

#ifdef __cplusplus
}
#endif
#endif /* MG_KERNELS_H */
