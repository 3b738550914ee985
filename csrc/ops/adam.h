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
    int quiet_ok;        /* exact policy: the quiet path below may be taken */
    REAL quiet_p_min;    /* |p| above this: a quiet element's update rounds away */
} FN(adam_ctx_t);

static FN(adam_ctx_t) FN(adam_ctx)(double lr_t, double beta1, double beta2, double eps, long t) {
    FN(adam_ctx_t) A;
    A.b1 = (REAL)beta1; A.b2 = (REAL)beta2;
    A.c1 = (REAL)(1.0 - beta1); A.c2 = (REAL)(1.0 - beta2);
    A.ibc1 = (REAL)(1.0 / (1.0 - pow(beta1, (double)t)));
    A.ibc2 = (REAL)(1.0 / (1.0 - pow(beta2, (double)t)));
    A.lr = (REAL)lr_t; A.e = (REAL)eps;
    A.m = A.v = NULL;
    /* (see FN(adam_quiet_elem): |update| <= |lr| ibc1 2^-958 / e + 2^-1000,
     * which changes no |p| > 2^55 times that) */
    A.quiet_ok = !MG_RELAXED && mg_adam_quiet_path() && A.e > 0 && isfinite(A.e) &&
                 isfinite(A.lr) && isfinite(A.ibc1) && isfinite(A.ibc2) &&
                 A.b1 >= 0x1p-1022 && A.b1 < 1 && A.b2 >= 0x1p-1022 && A.b2 < 1;
    A.quiet_p_min = 0;
    if (A.quiet_ok)
        A.quiet_p_min = (REAL)((fabs(lr_t) * (double)A.ibc1 * 0x1p-958 / eps + 0x1p-1000) * 0x1p55);
    if (!isfinite(A.quiet_p_min)) A.quiet_ok = 0;
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

#if !MG_RELAXED
/* ---- the exact policy's quiet path (float64).  The moments of a parameter
 * whose gradient is exactly zero decay by beta1 (m) and beta2 (v) every
 * step into the subnormal range, where every operation on them takes a
 * slow microcode path on many cores (Intel: 8-11x slower steps).  For such
 * an element (g = +-0 and 0 < |m| < 2^-960) the same IEEE results are
 * computed without touching a subnormal in floating point:
 *   m' = b1 m exactly rounded by integer arithmetic (mg_mul_tiny), plus
 *        c1 g (a signed zero: only a zero m' changes, by IEEE's zero sums);
 *   v' = b2 v the same way when v is tiny too, else in floating point;
 *   p' = p when |p| > quiet_p_min: the update lr (m' ibc1) / (sqrt(v'
 *        ibc2) + e) is then below a quarter ulp of p (its magnitude is at
 *        most |lr| ibc1 2^-958 / e + 2^-1000, counting every rounding), so
 *        p - update rounds to p; with m' = +-0 the update is the signed zero
 *        lr (m' ibc1) (0 / den keeps the numerator's sign, den >= e > 0);
 *        otherwise (tiny p) the formula in floating point, exact anyway.
 * It is a variant (MG_OP_ADAM): taken where subnormal arithmetic is slow
 * (mg_adam_quiet_path), with the same bits as the plain update;
 * tests/test_fpenv.py checks both against NumPy's IEEE arithmetic and
 * against each other over a long run. */
#define MG_ABS_BITS 0x7fffffffffffffffull
#define MG_TINY_BITS 0x03f0000000000000ull   /* 2^-960 */

/* b * x correctly rounded (to nearest, ties to even, subnormal results
 * included), for b a normal number and 0 < |x| < 2^-960. */
static inline double mg_mul_tiny(double b, double x) {
    uint64_t bb, xb;
    memcpy(&bb, &b, sizeof bb);
    memcpy(&xb, &x, sizeof xb);
    const uint64_t sign = (bb ^ xb) & ~MG_ABS_BITS, frac = (1ull << 52) - 1;
    const int eb = (int)((bb >> 52) & 0x7ff), ex = (int)((xb >> 52) & 0x7ff);
    const uint64_t mb = (bb & frac) | (1ull << 52);
    const uint64_t mx = ex == 0 ? (xb & frac) : ((xb & frac) | (1ull << 52));
    const int q = (eb - 1075) + (ex == 0 ? -1074 : ex - 1075);   /* b x = P 2^q */
    const unsigned __int128 P = (unsigned __int128)mb * mx;
    const uint64_t hi = (uint64_t)(P >> 64), lo = (uint64_t)P;
    const int L = hi ? 128 - __builtin_clzll(hi) : 64 - __builtin_clzll(lo);
    int shift = L - 53;                          /* keep 53 bits ... */
    if (q + shift < -1074) shift = -1074 - q;    /* ... or the subnormal grid */
    uint64_t R;
    if (shift <= 0) {
        R = (uint64_t)(P << -shift);
    } else if (shift >= 128) {
        R = 0;
    } else {
        const unsigned __int128 one = 1, rem = P & ((one << shift) - 1), half = one << (shift - 1);
        R = (uint64_t)(P >> shift);
        if (rem > half || (rem == half && (R & 1))) R++;
    }
    int qr = q + shift;
    if (R >> 53) { R >>= 1; qr++; }             /* a carry out of the rounding */
    if (R == 0) qr = -1074;
    const uint64_t bits = sign | (((uint64_t)(qr + 1074) << 52) + R);
    double r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* 1 if element (g, m) takes the quiet path: g = +-0 and 0 < |m| < 2^-960 */
MG_INLINE int FN(adam_is_quiet)(REAL g, REAL m) {
    uint64_t gb, mb;
    memcpy(&gb, &g, sizeof gb);
    memcpy(&mb, &m, sizeof mb);
    return (gb & MG_ABS_BITS) == 0 && (mb & MG_ABS_BITS) - 1 < MG_TINY_BITS - 1;
}

__attribute__((noinline)) static void FN(adam_quiet_elem)(REAL *p, REAL *m, REAL *v, REAL g,
                                                          const FN(adam_ctx_t) *A) {
    MG_ADAM_LOCALS(A);
    REAL mi = mg_mul_tiny(b1, *m);
    if (mi == 0) mi = mi + c1 * g;
    REAL vi;
    uint64_t vb;
    memcpy(&vb, v, sizeof vb);
    if ((vb & MG_ABS_BITS) - 1 < MG_TINY_BITS - 1) {
        vi = mg_mul_tiny(b2, *v);
        if (vi == 0) vi = vi + c2 * (g * g);
    } else {
        vi = b2 * *v + c2 * (g * g);
    }
    *m = mi;
    *v = vi;
    if (mi == 0) *p = *p - lr * (mi * ibc1);
    else if (!(fabs(*p) > A->quiet_p_min)) *p = *p - lr * (mi * ibc1) / (SQRT(vi * ibc2) + e);
}

/* n elements from gradients g, in chunks: a chunk with no quiet element is
 * the plain (vectorised) loop; otherwise the quiet elements are set aside
 * (their moments zeroed, so the plain loop meets no subnormal and leaves
 * them as they were), the plain loop runs, and they get the quiet path. */
MG_INLINE void FN(adam_exact_loop)(REAL *restrict p, REAL *restrict m, REAL *restrict v,
                                   const REAL *g, REAL *clear, size_t n,
                                   const FN(adam_ctx_t) *A) {
    MG_ADAM_LOCALS(A);
    enum { CH = 256 };
    for (size_t c0 = 0; c0 < n; c0 += CH) {
        const int len = n - c0 < CH ? (int)(n - c0) : CH;
        REAL *restrict pc = p + c0, *restrict mc = m + c0, *restrict vc = v + c0;
        const REAL *gc = g + c0;
        int nq = 0;
        if (A->quiet_ok)
            for (int i = 0; i < len; i++) nq += FN(adam_is_quiet)(gc[i], mc[i]);
        int idx[CH];
        REAL sp[CH], sm[CH], sv[CH];
        if (nq > 0) {
            int k = 0;
            for (int i = 0; i < len; i++)
                if (FN(adam_is_quiet)(gc[i], mc[i])) {
                    idx[k] = i; sp[k] = pc[i]; sm[k] = mc[i]; sv[k] = vc[i];
                    mc[i] = 0; vc[i] = 0;
                    k++;
                }
        }
        for (int i = 0; i < len; i++) MG_ADAM_ELEM(pc, mc, vc, i, gc[i]);
        for (int k = 0; k < nq; k++) {
            const int i = idx[k];
            pc[i] = sp[k]; mc[i] = sm[k]; vc[i] = sv[k];
            FN(adam_quiet_elem)(pc + i, mc + i, vc + i, gc[i], A);
        }
        if (clear != NULL)
            for (int i = 0; i < len; i++) clear[c0 + i] = 0;
    }
}
#endif

/* The update of `len` consecutive parameters from a gradient block g that
 * aliases none of them (the fused weight-gradient step). */
MG_INLINE void FN(adam_span)(REAL *restrict p, REAL *restrict m, REAL *restrict v,
                             const REAL *restrict g, int len, const FN(adam_ctx_t) *A) {
#if MG_RELAXED
    MG_ADAM_LOCALS(A);
    for (int i = 0; i < len; i++) MG_ADAM_ELEM(p, m, v, i, g[i]);
#else
    FN(adam_exact_loop)(p, m, v, g, NULL, (size_t)len, A);
#endif
}

/* The update of n parameters from grads; if `clear` is not NULL (it is
 * `grads`), each gradient is zeroed once read, saving a separate pass. */
MG_HOT static void FN(adam_impl)(REAL *params, REAL *m, REAL *v, const REAL *grads, REAL *clear,
                                 size_t n, const FN(adam_ctx_t) *A) {
#if !MG_RELAXED
    FN(adam_exact_loop)(params, m, v, grads, clear, n, A);
    return;
#endif
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
