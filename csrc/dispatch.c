/*
 * dispatch.c: the public names of the dtype kernels and tables, bound to the
 * copy of the kernels this process runs (isa.h).
 *
 * In a multi-ISA build each dtype file is compiled three times, with the
 * suffixes _v1 (baseline x86-64), _v3 (x86-64-v3) and _v4 (x86-64-v4); the
 * functions here forward each public name (mg_kernels.h) to the copy of
 * mg_isa_level(), chosen once per process: the best level the CPU supports,
 * or a lower one named by the environment variable MICROGPT_C_ISA
 * ("x86-64-v4", "x86-64-v3", "x86-64"; a level the CPU lacks, or an unknown
 * name, is not taken: mg_simd_variant() reports what runs).  In a
 * single-copy build the dtype files define the public names themselves and
 * only the tables are chosen here.
 */
#include <stdlib.h>
#include <string.h>

#include "mg_kernels.h"
#include "model_internal.h"

#if MG_MULTI_ISA

MG_DECLARE_KERNELS(double, f64_v1)
MG_DECLARE_KERNELS(double, f64_v3)
MG_DECLARE_KERNELS(double, f64_v4)
MG_DECLARE_KERNELS(float, f32_v1)
MG_DECLARE_KERNELS(float, f32_v3)
MG_DECLARE_KERNELS(float, f32_v4)
extern const mg_dtype_ops mg_ops_f64_v1, mg_ops_f64_v3, mg_ops_f64_v4;
extern const mg_dtype_ops mg_ops_f32_v1, mg_ops_f32_v3, mg_ops_f32_v4;
double mg_recip_pow_f64_v1(double x), mg_recip_pow_f64_v3(double x), mg_recip_pow_f64_v4(double x);
double mg_rsqrt_pow_f64_v1(double x), mg_rsqrt_pow_f64_v3(double x), mg_rsqrt_pow_f64_v4(double x);

static int isa_level_of(const char *name) {
    if (strcmp(name, "x86-64-v4") == 0) return 4;
    if (strcmp(name, "x86-64-v3") == 0) return 3;
    if (strcmp(name, "x86-64") == 0) return 1;
    return 0;
}

int mg_isa_level(void) {
    static int level = 0;   /* 0: not chosen yet (every thread chooses the same) */
    int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (l != 0) return l;
    __builtin_cpu_init();
    l = __builtin_cpu_supports("x86-64-v4") ? 4 : __builtin_cpu_supports("x86-64-v3") ? 3 : 1;
    const char *want = getenv("MICROGPT_C_ISA");
    if (want != NULL && *want != '\0') {
        const int w = isa_level_of(want);
        if (w != 0 && w < l) l = w;
    }
    __atomic_store_n(&level, l, __ATOMIC_RELAXED);
    return l;
}

/* the copy of `name` (a function of one dtype) this process runs */
#define PICK(name) (mg_isa_level() >= 4 ? name##_v4 : mg_isa_level() >= 3 ? name##_v3 : name##_v1)

const mg_dtype_ops *mg_dtype_ops_for(int f64) {
    if (f64) return mg_isa_level() >= 4 ? &mg_ops_f64_v4 : mg_isa_level() >= 3 ? &mg_ops_f64_v3 : &mg_ops_f64_v1;
    return mg_isa_level() >= 4 ? &mg_ops_f32_v4 : mg_isa_level() >= 3 ? &mg_ops_f32_v3 : &mg_ops_f32_v1;
}

double mg_recip_pow_f64(double x) { return PICK(mg_recip_pow_f64)(x); }
double mg_rsqrt_pow_f64(double x) { return PICK(mg_rsqrt_pow_f64)(x); }

/* the public kernels of one dtype (the list of MG_DECLARE_KERNELS) */
#define MG_DEFINE_DISPATCH(REAL, SUF)                                                   \
    void encoder_forward_##SUF(REAL *out, const int32_t *inp, const int32_t *pos,       \
                               const REAL *wte, const REAL *wpe, int N, int C) {         \
        PICK(encoder_forward_##SUF)(out, inp, pos, wte, wpe, N, C); }                    \
    void encoder_backward_##SUF(REAL *dwte, REAL *dwpe, const REAL *dout,               \
                                const int32_t *inp, const int32_t *pos, int N, int C) { \
        PICK(encoder_backward_##SUF)(dwte, dwpe, dout, inp, pos, N, C); }                \
    void rmsnorm_forward_##SUF(REAL *out, REAL *scale, const REAL *inp, int N, int C) { \
        PICK(rmsnorm_forward_##SUF)(out, scale, inp, N, C); }                            \
    void rmsnorm_backward_##SUF(REAL *dinp, const REAL *dout, const REAL *inp,          \
                                const REAL *scale, int N, int C) {                      \
        PICK(rmsnorm_backward_##SUF)(dinp, dout, inp, scale, N, C); }                    \
    void matmul_forward_##SUF(REAL *out, const REAL *inp, const REAL *weight,           \
                              int N, int C, int OC) {                                   \
        PICK(matmul_forward_##SUF)(out, inp, weight, N, C, OC); }                        \
    void matmul_backward_##SUF(REAL *dinp, REAL *dweight, const REAL *dout,             \
                               const REAL *inp, const REAL *weight, int N, int C, int OC) { \
        PICK(matmul_backward_##SUF)(dinp, dweight, dout, inp, weight, N, C, OC); }       \
    void attention_forward_##SUF(REAL *out, REAL *att, const REAL *q, const REAL *k,    \
                                 const REAL *v, int N, int p0, int C, int NH, int T) {  \
        PICK(attention_forward_##SUF)(out, att, q, k, v, N, p0, C, NH, T); }             \
    void attention_backward_##SUF(REAL *dq, REAL *dk, REAL *dv, REAL *datt,             \
                                  const REAL *dout, const REAL *att, const REAL *q,     \
                                  const REAL *k, const REAL *v, int N, int C, int NH, int T) { \
        PICK(attention_backward_##SUF)(dq, dk, dv, datt, dout, att, q, k, v, N, C, NH, T); } \
    void relu_forward_##SUF(REAL *out, const REAL *inp, size_t n) {                     \
        PICK(relu_forward_##SUF)(out, inp, n); }                                         \
    void relu_backward_##SUF(REAL *dinp, const REAL *dout, const REAL *inp, size_t n) {  \
        PICK(relu_backward_##SUF)(dinp, dout, inp, n); }                                 \
    void residual_forward_##SUF(REAL *out, const REAL *inp1, const REAL *inp2, size_t n) { \
        PICK(residual_forward_##SUF)(out, inp1, inp2, n); }                              \
    void residual_backward_##SUF(REAL *dinp1, REAL *dinp2, const REAL *dout, size_t n) { \
        PICK(residual_backward_##SUF)(dinp1, dinp2, dout, n); }                          \
    void crossentropy_softmax_forward_##SUF(REAL *losses, REAL *probs, const REAL *logits, \
                                            const int32_t *targets, int N, int V) {     \
        PICK(crossentropy_softmax_forward_##SUF)(losses, probs, logits, targets, N, V); } \
    void crossentropy_softmax_backward_##SUF(REAL *dlogits, const REAL *dlosses,         \
                                             const REAL *probs, const int32_t *targets,  \
                                             int N, int V) {                             \
        PICK(crossentropy_softmax_backward_##SUF)(dlogits, dlosses, probs, targets, N, V); } \
    void adam_update_##SUF(REAL *params, REAL *m, REAL *v, const REAL *grads, size_t n,  \
                           double lr_t, double beta1, double beta2, double eps, long t) { \
        PICK(adam_update_##SUF)(params, m, v, grads, n, lr_t, beta1, beta2, eps, t); }   \
    void adam_update_zero_grad_##SUF(REAL *params, REAL *m, REAL *v, REAL *grads, size_t n, \
                                     double lr_t, double beta1, double beta2, double eps, long t) { \
        PICK(adam_update_zero_grad_##SUF)(params, m, v, grads, n, lr_t, beta1, beta2, eps, t); } \
    int all_finite_##SUF(const REAL *a, size_t n) { return PICK(all_finite_##SUF)(a, n); } \
    void zero_##SUF(REAL *buf, size_t n) { PICK(zero_##SUF)(buf, n); }                  \
    int attention_variant_##SUF(int N, int p0, int C, int NH) {                          \
        return PICK(attention_variant_##SUF)(N, p0, C, NH); }

MG_DEFINE_DISPATCH(double, f64)
MG_DEFINE_DISPATCH(float, f32)

#else /* one copy */

int mg_isa_level(void) { return 0; }

const mg_dtype_ops *mg_dtype_ops_for(int f64) { return f64 ? &mg_ops_f64 : &mg_ops_f32; }

#endif
