/*
 * ops/rmsnorm.h: RMSNorm without a gain, forward and backward (a template
 * over REAL).  out = x * (mean(x*x) + 1e-5)^-0.5.
 *
 * Exact (float64): each row's sums in the SPEC's order (sequential), so the
 * forward is bit-identical to the reference.  Relaxed (float32), when C is a
 * multiple of the register: the sums as vector partial sums and a butterfly,
 * the row update as whole registers.
 */

MG_HOT static void FN(rmsnorm_forward_rows_exact)(REAL *out, REAL *scale, const REAL *inp,
                                                  int n0, int n1, int C, REAL inv_c) {
    for (int n = n0; n < n1; n++) {
        const REAL *x = inp + (size_t)n * C;
        REAL *o = out + (size_t)n * C;
        REAL ss = 0;
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        REAL s = RSQRT(ss * inv_c + (REAL)1e-5);
        scale[n] = s;
        for (int i = 0; i < C; i++) o[i] = x[i] * s;
    }
}

/* d scale / d ms = -0.5 (ms + eps)^-1.5 = -0.5 s^3 ; d ms / d x_i = 2 x_i / C */
MG_INLINE void FN(rmsnorm_backward_row)(REAL *dx, const REAL *d, const REAL *x, REAL s,
                                        REAL dscale, int C, REAL inv_c) {
    const REAL dms = (REAL)-0.5 * (s * s * s) * dscale;
    const REAL dsq = dms * inv_c;
    for (int i = 0; i < C; i++) dx[i] += d[i] * s + (x[i] * dsq + x[i] * dsq);
}

MG_HOT static void FN(rmsnorm_backward_rows_exact)(REAL *dinp, const REAL *dout, const REAL *inp,
                                                   const REAL *scale, int n0, int n1, int C,
                                                   REAL inv_c) {
    for (int n = n0; n < n1; n++) {
        const REAL *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
        REAL dscale = 0;
        for (int i = 0; i < C; i++) dscale += d[i] * x[i];
        FN(rmsnorm_backward_row)(dinp + (size_t)n * C, d, x, scale[n], dscale, C, inv_c);
    }
}

#if MG_RELAXED
MG_HOT static void FN(rmsnorm_forward_rows_relaxed)(REAL *out, REAL *scale, const REAL *inp,
                                                    int n0, int n1, int C, REAL inv_c) {
    if (C % MG_LANES != 0) {
        FN(rmsnorm_forward_rows_exact)(out, scale, inp, n0, n1, C, inv_c);
        return;
    }
    for (int n = n0; n < n1; n++) {
        const REAL *x = inp + (size_t)n * C;
        REAL *o = out + (size_t)n * C;
        VEC acc = {0};
        for (int i = 0; i < C; i += MG_LANES) {
            const VEC xv = LOADU(x + i);
            acc += xv * xv;
        }
        FN(group_sum_tree)(&acc, MG_LANES);
        const REAL sc = RSQRT(acc[0] * inv_c + (REAL)1e-5);
        scale[n] = sc;
        for (int i = 0; i < C; i += MG_LANES) STOREU(o + i, LOADU(x + i) * sc);
    }
}

MG_HOT static void FN(rmsnorm_backward_rows_relaxed)(REAL *dinp, const REAL *dout,
                                                     const REAL *inp, const REAL *scale,
                                                     int n0, int n1, int C, REAL inv_c) {
    if (C % MG_LANES != 0) {
        FN(rmsnorm_backward_rows_exact)(dinp, dout, inp, scale, n0, n1, C, inv_c);
        return;
    }
    for (int n = n0; n < n1; n++) {
        const REAL *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
        VEC acc = {0};
        for (int i = 0; i < C; i += MG_LANES) acc += LOADU(d + i) * LOADU(x + i);
        FN(group_sum_tree)(&acc, MG_LANES);
        FN(rmsnorm_backward_row)(dinp + (size_t)n * C, d, x, scale[n], acc[0], C, inv_c);
    }
}
#define MG_RMSNORM_POLICY(name) FN(name##_relaxed)
#else
#define MG_RMSNORM_POLICY(name) FN(name##_exact)
#endif

void FN(rmsnorm_forward)(REAL *out,           /* (N, C) */
                         REAL *scale,         /* (N) saved (ms + 1e-5)^-0.5 */
                         const REAL *inp,     /* (N, C) */
                         int N, int C) {
    const REAL inv_c = FN(recip_int)(C);
    /* rows are independent: 32-row chunks across threads when large */
    if (MG_USE_THREADS((size_t)N * C * 8, N / 32)) {
        const int chunks = (N + 31) / 32;
        MG_PAR_FOR(schedule(static),
        for (int c = 0; c < chunks; c++)
            MG_RMSNORM_POLICY(rmsnorm_forward_rows)(out, scale, inp, 32 * c,
                                                    32 * c + 32 < N ? 32 * c + 32 : N, C, inv_c););
        return;
    }
    MG_RMSNORM_POLICY(rmsnorm_forward_rows)(out, scale, inp, 0, N, C, inv_c);
}

void FN(rmsnorm_backward)(REAL *dinp,          /* (N, C) accumulated */
                          const REAL *dout,    /* (N, C) */
                          const REAL *inp,     /* (N, C) */
                          const REAL *scale,   /* (N) */
                          int N, int C) {
    const REAL inv_c = FN(recip_int)(C);
    if (MG_USE_THREADS((size_t)N * C * 8, N / 32)) {
        const int chunks = (N + 31) / 32;
        MG_PAR_FOR(schedule(static),
        for (int c = 0; c < chunks; c++)
            MG_RMSNORM_POLICY(rmsnorm_backward_rows)(dinp, dout, inp, scale, 32 * c,
                                                     32 * c + 32 < N ? 32 * c + 32 : N, C, inv_c););
        return;
    }
    MG_RMSNORM_POLICY(rmsnorm_backward_rows)(dinp, dout, inp, scale, 0, N, C, inv_c);
}
