/*
 * ops/adam.h: the SPEC's Adam update (a template over REAL).
 *
 * Bias-corrected Adam at 1-based step t with the step's learning rate lr_t:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p = p - lr_t (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * with the divisions by (1 - b^t) as multiplications by their reciprocals:
 * one division and one square root per element.  The update of an element
 * is written once (MG_ADAM_ELEM); the loops below apply it to spans, the
 * fused weight-gradient kernel (ops/matmul.h) to a gradient block it has
 * just computed.
 */

/* Adam constants of one step, and (for the fused update) the moments of the
 * tensor being updated, indexed like it. */
typedef struct {
    REAL b1, b2, c1, c2, ibc1, ibc2, lr, e;
    REAL *m, *v;
} FN(adam_ctx_t);

static FN(adam_ctx_t) FN(adam_ctx)(double lr_t, double beta1, double beta2, double eps, long t) {
    FN(adam_ctx_t) A;
    A.b1 = (REAL)beta1; A.b2 = (REAL)beta2;
    A.c1 = (REAL)(1.0 - beta1); A.c2 = (REAL)(1.0 - beta2);
    A.ibc1 = (REAL)(1.0 / (1.0 - pow(beta1, (double)t)));
    A.ibc2 = (REAL)(1.0 / (1.0 - pow(beta2, (double)t)));
    A.lr = (REAL)lr_t; A.e = (REAL)eps;
    A.m = A.v = NULL;
    return A;
}

/* The update of element i from gradient value gi (locals b1 .. e in scope) */
#define MG_ADAM_ELEM(p, m, v, i, gi)                                        \
    do {                                                                    \
        const REAL g_ = (gi);                                               \
        const REAL mi_ = b1 * (m)[i] + c1 * g_;                             \
        const REAL vi_ = b2 * (v)[i] + c2 * (g_ * g_);                      \
        (m)[i] = mi_;                                                       \
        (v)[i] = vi_;                                                       \
        (p)[i] = (p)[i] - lr * (mi_ * ibc1) / (SQRT(vi_ * ibc2) + e);      \
    } while (0)
#define MG_ADAM_LOCALS(A)                                                                \
    const REAL b1 = (A)->b1, b2 = (A)->b2, c1 = (A)->c1, c2 = (A)->c2, ibc1 = (A)->ibc1, \
               ibc2 = (A)->ibc2, lr = (A)->lr, e = (A)->e

/* The update of `len` consecutive parameters from a gradient block g that
 * aliases none of them (the fused weight-gradient step). */
MG_INLINE void FN(adam_span)(REAL *restrict p, REAL *restrict m, REAL *restrict v,
                             const REAL *restrict g, int len, const FN(adam_ctx_t) *A) {
    MG_ADAM_LOCALS(A);
    for (int i = 0; i < len; i++) MG_ADAM_ELEM(p, m, v, i, g[i]);
}

/* The update of n parameters from grads; if `clear` is not NULL (it is
 * `grads`), each gradient is zeroed once read, saving a separate pass. */
MG_HOT static void FN(adam_impl)(REAL *params, REAL *m, REAL *v, const REAL *grads, REAL *clear,
                                 size_t n, const FN(adam_ctx_t) *A) {
    MG_ADAM_LOCALS(A);
    if (clear != NULL) {
        for (size_t i = 0; i < n; i++) {
            MG_ADAM_ELEM(params, m, v, i, grads[i]);
            clear[i] = 0;
        }
        return;
    }
    for (size_t i = 0; i < n; i++) MG_ADAM_ELEM(params, m, v, i, grads[i]);
}

/* Elementwise, so split into fixed chunks across threads when large; every
 * element is computed the same way whatever the thread count. */
static void FN(adam_run)(REAL *params, REAL *m, REAL *v, const REAL *grads, REAL *clear,
                         size_t n, const FN(adam_ctx_t) *A) {
    enum { CHUNK = 4096 };
    const size_t chunks = (n + CHUNK - 1) / CHUNK;
    if (MG_USE_THREADS(n * 16, chunks)) {
        MG_PAR_FOR(schedule(static),
        for (size_t c = 0; c < chunks; c++) {
            const size_t i0 = c * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
            FN(adam_impl)(params + i0, m + i0, v + i0, grads + i0, clear ? clear + i0 : NULL,
                          len, A);
        });
        return;
    }
    FN(adam_impl)(params, m, v, grads, clear, n, A);
}

void FN(adam_update)(REAL *params,       /* (n) */
                     REAL *m,            /* (n) first moments */
                     REAL *v,            /* (n) second moments */
                     const REAL *grads,  /* (n) */
                     size_t n, double lr_t, double beta1, double beta2, double eps, long t) {
    const FN(adam_ctx_t) A = FN(adam_ctx)(lr_t, beta1, beta2, eps, t);
    FN(adam_run)(params, m, v, grads, NULL, n, &A);
}

/* Adam, then the gradients zeroed (the training loop's step). */
void FN(adam_update_zero_grad)(REAL *params, REAL *m, REAL *v, REAL *grads, size_t n,
                               double lr_t, double beta1, double beta2, double eps, long t) {
    const FN(adam_ctx_t) A = FN(adam_ctx)(lr_t, beta1, beta2, eps, t);
    FN(adam_run)(params, m, v, grads, grads, n, &A);
}
