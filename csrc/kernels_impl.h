/*
 * Kernels: every op as a forward/backward pair, side by side.
 *
 * This file is a template, included once per dtype with
 *   REAL   the element type (double or float)
 *   FN(x)  the suffixed name (x##_f64 or x##_f32)
 *   POW, EXP, LOG, SQRT  the libm functions of that type
 *
 * Conventions (as in llm.c): arguments are outputs, saved buffers, inputs,
 * then sizes; every pointer has its shape in a comment; backward kernels
 * ACCUMULATE (+=) into their gradient outputs and zeroing is separate.
 * Forward kernels follow the SPEC's operations and summation order exactly
 * (sums left to right from 0, divisions as multiplication by pow(x, -1)), so
 * the float64 path reproduces the reference to rounding.  OpenMP is used only
 * when the work is large enough, and each output element is written by one
 * thread with a fixed summation order, so results do not depend on the
 * number of threads.
 */

#ifndef MG_KERNEL_COMMON
#define MG_KERNEL_COMMON
#define MG_STR(x) #x
#define MG_PRAGMA(x) _Pragma(MG_STR(x))
/* Threads only when `work` multiply-adds pay for them and there are at least
 * two pieces; otherwise no parallel region is entered at all. */
#ifndef MG_OMP_MIN_WORK
#define MG_OMP_MIN_WORK 100000
#endif
#ifdef _OPENMP
#include <omp.h>
#define MG_USE_THREADS(work, pieces) \
    ((work) >= MG_OMP_MIN_WORK && (pieces) > 1 && omp_get_max_threads() > 1)
#else
#define MG_USE_THREADS(work, pieces) 0
#endif
/* Hot kernels are compiled for AVX-512, AVX2 and baseline x86-64 and picked
 * at load time (GCC function multiversioning); elsewhere, plain code.  With
 * -ffp-contract=off every clone computes the same IEEE operations, so the
 * results do not depend on the clone. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(MG_NO_CLONES)
#define MG_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MG_HOT
#endif
#endif

/* ------------------------------------------------------------- embedding */
void FN(encoder_forward)(REAL *out,            /* (N, C) */
                         const int32_t *inp,   /* (N) token ids */
                         const int32_t *pos,   /* (N) positions */
                         const REAL *wte,      /* (V, C) */
                         const REAL *wpe,      /* (T, C) */
                         int N, int C) {
    for (int n = 0; n < N; n++) {
        REAL *o = out + (size_t)n * C;
        const REAL *te = wte + (size_t)inp[n] * C;
        const REAL *pe = wpe + (size_t)pos[n] * C;
        for (int i = 0; i < C; i++) o[i] = te[i] + pe[i];
    }
}

void FN(encoder_backward)(REAL *dwte,           /* (V, C) */
                          REAL *dwpe,           /* (T, C) */
                          const REAL *dout,     /* (N, C) */
                          const int32_t *inp,   /* (N) */
                          const int32_t *pos,   /* (N) */
                          int N, int C) {
    /* serial: several tokens may share a row of wte */
    for (int n = 0; n < N; n++) {
        const REAL *d = dout + (size_t)n * C;
        REAL *dte = dwte + (size_t)inp[n] * C;
        REAL *dpe = dwpe + (size_t)pos[n] * C;
        for (int i = 0; i < C; i++) { dte[i] += d[i]; dpe[i] += d[i]; }
    }
}

/* --------------------------------------------------------------- RMSNorm */
/* out = x * (mean(x*x) + 1e-5)^-0.5, no learned gain */
void FN(rmsnorm_forward)(REAL *out,           /* (N, C) */
                         REAL *scale,         /* (N) saved (ms + 1e-5)^-0.5 */
                         const REAL *inp,     /* (N, C) */
                         int N, int C) {
    const REAL inv_c = POW((REAL)C, (REAL)-1);
    for (int n = 0; n < N; n++) {
        const REAL *x = inp + (size_t)n * C;
        REAL *o = out + (size_t)n * C;
        REAL ss = 0;
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        REAL s = POW(ss * inv_c + (REAL)1e-5, (REAL)-0.5);
        scale[n] = s;
        for (int i = 0; i < C; i++) o[i] = x[i] * s;
    }
}

void FN(rmsnorm_backward)(REAL *dinp,          /* (N, C) */
                          const REAL *dout,    /* (N, C) */
                          const REAL *inp,     /* (N, C) */
                          const REAL *scale,   /* (N) */
                          int N, int C) {
    const REAL inv_c = POW((REAL)C, (REAL)-1);
    for (int n = 0; n < N; n++) {
        const REAL *x = inp + (size_t)n * C;
        const REAL *d = dout + (size_t)n * C;
        REAL *dx = dinp + (size_t)n * C;
        const REAL s = scale[n];
        REAL dscale = 0;
        for (int i = 0; i < C; i++) dscale += d[i] * x[i];
        /* d scale / d ms = -0.5 (ms + eps)^-1.5 = -0.5 s^3 ; d ms / d x_i = 2 x_i / C */
        const REAL dms = (REAL)-0.5 * (s * s * s) * dscale;
        const REAL dsq = dms * inv_c;
        for (int i = 0; i < C; i++) dx[i] += d[i] * s + (x[i] * dsq + x[i] * dsq);
    }
}

/* ---------------------------------------------------------------- matmul */
/* out[n][o] = sum_i weight[o][i] * inp[n][i]   (no bias)
 *
 * Every output is the SPEC's sequential sum (0 + w0 x0 + w1 x1 + ...), so the
 * forward is exact; speed comes from computing MG_LANES tokens at once (one
 * SIMD register of them, from a transposed copy of MG_LANES input rows) and
 * four outputs at a time (independent chains hide the add latency). */
#define MG_LANES ((int)(64 / sizeof(REAL)))   /* 8 doubles or 16 floats */
#define MG_STACK_ELEMS 4096
/* One 64-byte SIMD register of REALs (GCC/Clang vector extension); the
 * unaligned variant is for loads from arbitrary rows. */
typedef REAL FN(vec_t) __attribute__((vector_size(64)));
typedef REAL FN(uvec_t) __attribute__((vector_size(64), aligned(sizeof(REAL))));
#define VEC FN(vec_t)
#define LOADU(p) (*(const FN(uvec_t) *)(p))
#define STOREU(p, x) (*(FN(uvec_t) *)(p) = (x))

MG_HOT static void FN(matmul_forward_blocks)(REAL *out, const REAL *inp, const REAL *weight,
                                             int N, int C, int OC, int b0, int b1,
                                             REAL *xT /* (C, MG_LANES) scratch */) {
    enum { NB = MG_LANES };
    for (int b = b0; b < b1; b++) {
        const int n0 = b * NB, nb = N - n0 < NB ? N - n0 : NB;
        for (int i = 0; i < C; i++)
            for (int l = 0; l < NB; l++)
                xT[(size_t)i * NB + l] = l < nb ? inp[(size_t)(n0 + l) * C + i] : (REAL)0;
        int oc = 0;
        for (; oc + 8 <= OC; oc += 8) {  /* eight independent sums hide the add latency */
            VEC s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0}, s7 = {0};
            const REAL *w0 = weight + (size_t)oc * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
            const REAL *w4 = w3 + C, *w5 = w4 + C, *w6 = w5 + C, *w7 = w6 + C;
            for (int i = 0; i < C; i++) {
                const VEC x = LOADU(xT + (size_t)i * NB);
                s0 += w0[i] * x; s1 += w1[i] * x; s2 += w2[i] * x; s3 += w3[i] * x;
                s4 += w4[i] * x; s5 += w5[i] * x; s6 += w6[i] * x; s7 += w7[i] * x;
            }
            for (int l = 0; l < nb; l++) {
                REAL *o = out + (size_t)(n0 + l) * OC + oc;
                o[0] = s0[l]; o[1] = s1[l]; o[2] = s2[l]; o[3] = s3[l];
                o[4] = s4[l]; o[5] = s5[l]; o[6] = s6[l]; o[7] = s7[l];
            }
        }
        for (; oc + 4 <= OC; oc += 4) {
            VEC s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
            const REAL *w0 = weight + (size_t)oc * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
            for (int i = 0; i < C; i++) {
                const VEC x = LOADU(xT + (size_t)i * NB);
                s0 += w0[i] * x; s1 += w1[i] * x; s2 += w2[i] * x; s3 += w3[i] * x;
            }
            for (int l = 0; l < nb; l++) {
                REAL *o = out + (size_t)(n0 + l) * OC + oc;
                o[0] = s0[l]; o[1] = s1[l]; o[2] = s2[l]; o[3] = s3[l];
            }
        }
        for (; oc < OC; oc++) {
            VEC s0 = {0};
            const REAL *w0 = weight + (size_t)oc * C;
            for (int i = 0; i < C; i++) s0 += w0[i] * LOADU(xT + (size_t)i * NB);
            for (int l = 0; l < nb; l++) out[(size_t)(n0 + l) * OC + oc] = s0[l];
        }
    }
}

static void FN(matmul_forward_range)(REAL *out, const REAL *inp, const REAL *weight,
                                     int N, int C, int OC, int b0, int b1) {
    REAL stack[MG_STACK_ELEMS];
    REAL *xT = stack;
    if ((size_t)C * MG_LANES > MG_STACK_ELEMS) {
        xT = (REAL *)malloc((size_t)C * MG_LANES * sizeof(REAL));
        if (xT == NULL) {  /* no memory for the scratch: plain loops */
            for (int n = b0 * MG_LANES; n < N && n < b1 * MG_LANES; n++)
                for (int oc = 0; oc < OC; oc++) {
                    REAL s = 0;
                    for (int i = 0; i < C; i++) s += weight[(size_t)oc * C + i] * inp[(size_t)n * C + i];
                    out[(size_t)n * OC + oc] = s;
                }
            return;
        }
    }
    FN(matmul_forward_blocks)(out, inp, weight, N, C, OC, b0, b1, xT);
    if (xT != stack) free(xT);
}

void FN(matmul_forward)(REAL *out,            /* (N, OC) */
                        const REAL *inp,      /* (N, C) */
                        const REAL *weight,   /* (OC, C) */
                        int N, int C, int OC) {
    const int nblocks = (N + MG_LANES - 1) / MG_LANES;
    if (MG_USE_THREADS((size_t)N * C * OC, nblocks)) {
        MG_PRAGMA(omp parallel for schedule(static))
        for (int b = 0; b < nblocks; b++) FN(matmul_forward_range)(out, inp, weight, N, C, OC, b, b + 1);
        return;
    }
    FN(matmul_forward_range)(out, inp, weight, N, C, OC, 0, nblocks);
}

/* dinp[n][i] += sum_o dout[n][o] * weight[o][i], rows n0..n1, o ascending.
 * Four rows at a time, MG_LANES columns per register. */
MG_HOT static void FN(matmul_backward_dinp)(REAL *dinp, const REAL *dout, const REAL *weight,
                                            int C, int OC, int n0, int n1) {
    enum { NB = MG_LANES };
    int n = n0;
    for (; n + 4 <= n1; n += 4) {
        REAL *d0 = dinp + (size_t)n * C, *d1 = d0 + C, *d2 = d1 + C, *d3 = d2 + C;
        const REAL *g0 = dout + (size_t)n * OC, *g1 = g0 + OC, *g2 = g1 + OC, *g3 = g2 + OC;
        int i = 0;
        for (; i + NB <= C; i += NB) {
            VEC a0 = LOADU(d0 + i), a1 = LOADU(d1 + i), a2 = LOADU(d2 + i), a3 = LOADU(d3 + i);
            for (int o = 0; o < OC; o++) {
                const VEC w = LOADU(weight + (size_t)o * C + i);
                a0 += g0[o] * w; a1 += g1[o] * w; a2 += g2[o] * w; a3 += g3[o] * w;
            }
            STOREU(d0 + i, a0); STOREU(d1 + i, a1); STOREU(d2 + i, a2); STOREU(d3 + i, a3);
        }
        for (; i < C; i++)
            for (int o = 0; o < OC; o++) {
                const REAL w = weight[(size_t)o * C + i];
                d0[i] += g0[o] * w; d1[i] += g1[o] * w; d2[i] += g2[o] * w; d3[i] += g3[o] * w;
            }
    }
    for (; n < n1; n++) {
        REAL *d0 = dinp + (size_t)n * C;
        const REAL *g0 = dout + (size_t)n * OC;
        int i = 0;
        for (; i + NB <= C; i += NB) {
            VEC a0 = LOADU(d0 + i);
            for (int o = 0; o < OC; o++) a0 += g0[o] * LOADU(weight + (size_t)o * C + i);
            STOREU(d0 + i, a0);
        }
        for (; i < C; i++)
            for (int o = 0; o < OC; o++) d0[i] += g0[o] * weight[(size_t)o * C + i];
    }
}

/* dweight[o][i] += sum_n dout[n][o] * inp[n][i], rows o0..o1, n ascending. */
MG_HOT static void FN(matmul_backward_dweight)(REAL *dweight, const REAL *dout, const REAL *inp,
                                               int N, int C, int OC, int o0, int o1) {
    enum { NB = MG_LANES };
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        REAL *w0 = dweight + (size_t)o * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
        int i = 0;
        for (; i + NB <= C; i += NB) {
            VEC a0 = LOADU(w0 + i), a1 = LOADU(w1 + i), a2 = LOADU(w2 + i), a3 = LOADU(w3 + i);
            for (int n = 0; n < N; n++) {
                const VEC x = LOADU(inp + (size_t)n * C + i);
                const REAL *g = dout + (size_t)n * OC + o;
                a0 += g[0] * x; a1 += g[1] * x; a2 += g[2] * x; a3 += g[3] * x;
            }
            STOREU(w0 + i, a0); STOREU(w1 + i, a1); STOREU(w2 + i, a2); STOREU(w3 + i, a3);
        }
        for (; i < C; i++)
            for (int n = 0; n < N; n++) {
                const REAL x = inp[(size_t)n * C + i];
                const REAL *g = dout + (size_t)n * OC + o;
                w0[i] += g[0] * x; w1[i] += g[1] * x; w2[i] += g[2] * x; w3[i] += g[3] * x;
            }
    }
    for (; o < o1; o++) {
        REAL *dw = dweight + (size_t)o * C;
        int i = 0;
        for (; i + NB <= C; i += NB) {
            VEC a0 = LOADU(dw + i);
            for (int n = 0; n < N; n++) a0 += dout[(size_t)n * OC + o] * LOADU(inp + (size_t)n * C + i);
            STOREU(dw + i, a0);
        }
        for (; i < C; i++)
            for (int n = 0; n < N; n++) dw[i] += dout[(size_t)n * OC + o] * inp[(size_t)n * C + i];
    }
}

void FN(matmul_backward)(REAL *dinp,           /* (N, C) */
                         REAL *dweight,        /* (OC, C) */
                         const REAL *dout,     /* (N, OC) */
                         const REAL *inp,      /* (N, C) */
                         const REAL *weight,   /* (OC, C) */
                         int N, int C, int OC) {
    const size_t work = (size_t)N * C * OC;
    /* dinp nest: each row n belongs to one thread */
    if (MG_USE_THREADS(work, N / 4)) {
        const int chunks = (N + 3) / 4;
        MG_PRAGMA(omp parallel for schedule(static))
        for (int c = 0; c < chunks; c++)
            FN(matmul_backward_dinp)(dinp, dout, weight, C, OC, 4 * c, 4 * c + 4 < N ? 4 * c + 4 : N);
    } else {
        FN(matmul_backward_dinp)(dinp, dout, weight, C, OC, 0, N);
    }
    /* dweight nest: each row oc belongs to one thread, summed over n in order */
    if (MG_USE_THREADS(work, OC / 4)) {
        const int chunks = (OC + 3) / 4;
        MG_PRAGMA(omp parallel for schedule(static))
        for (int c = 0; c < chunks; c++)
            FN(matmul_backward_dweight)(dweight, dout, inp, N, C, OC, 4 * c, 4 * c + 4 < OC ? 4 * c + 4 : OC);
    } else {
        FN(matmul_backward_dweight)(dweight, dout, inp, N, C, OC, 0, OC);
    }
}

/* ------------------------------------------------------------- attention */
/* Causal multi-head attention.  Query i sits at position p0 + i and attends
 * keys/values at positions 0 .. p0 + i (k and v are indexed by position).
 * Training uses p0 = 0 on one document; inference uses N = 1, p0 = pos on the
 * KV cache.  s_t = (q_h . k_h[t]) * (HS^0.5)^-1, w = softmax(s),
 * out_h = sum_t w_t v_h[t]. */
MG_HOT static void FN(attention_forward_rows)(REAL *out, REAL *att, const REAL *q, const REAL *k,
                                              const REAL *v, int i0, int i1, int p0, int C,
                                              int NH, int T);

void FN(attention_forward)(REAL *out,         /* (N, C) */
                           REAL *att,         /* (N, NH, T) saved softmax weights */
                           const REAL *q,     /* (N, C) */
                           const REAL *k,     /* (p0 + N, C) */
                           const REAL *v,     /* (p0 + N, C) */
                           int N, int p0, int C, int NH, int T) {
    if (MG_USE_THREADS((size_t)N * (p0 + N) * C, N)) {
        MG_PRAGMA(omp parallel for schedule(dynamic, 1))
        for (int i = 0; i < N; i++) FN(attention_forward_rows)(out, att, q, k, v, i, i + 1, p0, C, NH, T);
        return;
    }
    FN(attention_forward_rows)(out, att, q, k, v, 0, N, p0, C, NH, T);
}

/* Query rows i0 .. i1-1 of attention_forward. */
MG_HOT static void FN(attention_forward_rows)(REAL *out, REAL *att, const REAL *q, const REAL *k,
                                              const REAL *v, int i0, int i1, int p0, int C,
                                              int NH, int T) {
    const int HS = C / NH;
    const REAL scale = POW(POW((REAL)HS, (REAL)0.5), (REAL)-1);
    for (int i = i0; i < i1; i++) {
        const int p = p0 + i;
        for (int h = 0; h < NH; h++) {
            const REAL *qh = q + (size_t)i * C + (size_t)h * HS;
            REAL *w = att + ((size_t)i * NH + h) * T;
            REAL maxv = 0;
            for (int t = 0; t <= p; t++) {
                const REAL *kh = k + (size_t)t * C + (size_t)h * HS;
                REAL s = 0;
                for (int j = 0; j < HS; j++) s += qh[j] * kh[j];
                s = s * scale;
                w[t] = s;
                if (t == 0 || s > maxv) maxv = s;
            }
            REAL total = 0;
            for (int t = 0; t <= p; t++) { w[t] = EXP(w[t] - maxv); total += w[t]; }
            const REAL inv = POW(total, (REAL)-1);
            for (int t = 0; t <= p; t++) w[t] = w[t] * inv;
            REAL *o = out + (size_t)i * C + (size_t)h * HS;
            for (int j = 0; j < HS; j++) {
                REAL a = 0;
                for (int t = 0; t <= p; t++) a += w[t] * v[(size_t)t * C + (size_t)h * HS + j];
                o[j] = a;
            }
        }
    }
}

MG_HOT static void FN(attention_backward_heads)(REAL *dq, REAL *dk, REAL *dv, REAL *datt,
                                                const REAL *dout, const REAL *att, const REAL *q,
                                                const REAL *k, const REAL *v, int h0, int h1,
                                                int N, int C, int NH, int T);

/* Backward of attention_forward with p0 = 0 (training on one document). */
void FN(attention_backward)(REAL *dq,          /* (N, C) */
                            REAL *dk,          /* (N, C) */
                            REAL *dv,          /* (N, C) */
                            REAL *datt,        /* (N, NH, T) scratch */
                            const REAL *dout,  /* (N, C) */
                            const REAL *att,   /* (N, NH, T) */
                            const REAL *q,     /* (N, C) */
                            const REAL *k,     /* (N, C) */
                            const REAL *v,     /* (N, C) */
                            int N, int C, int NH, int T) {
    /* one head per thread: the head's slices of dq, dk, dv are its own */
    if (MG_USE_THREADS((size_t)N * N * C, NH)) {
        MG_PRAGMA(omp parallel for schedule(static))
        for (int h = 0; h < NH; h++)
            FN(attention_backward_heads)(dq, dk, dv, datt, dout, att, q, k, v, h, h + 1, N, C, NH, T);
        return;
    }
    FN(attention_backward_heads)(dq, dk, dv, datt, dout, att, q, k, v, 0, NH, N, C, NH, T);
}

/* Heads h0 .. h1-1 of attention_backward. */
MG_HOT static void FN(attention_backward_heads)(REAL *dq, REAL *dk, REAL *dv, REAL *datt,
                                                const REAL *dout, const REAL *att, const REAL *q,
                                                const REAL *k, const REAL *v, int h0, int h1,
                                                int N, int C, int NH, int T) {
    const int HS = C / NH;
    const REAL scale = POW(POW((REAL)HS, (REAL)0.5), (REAL)-1);
    for (int h = h0; h < h1; h++) {
        const size_t hs = (size_t)h * HS;
        for (int i = 0; i < N; i++) {
            const REAL *w = att + ((size_t)i * NH + h) * T;
            REAL *dw = datt + ((size_t)i * NH + h) * T;
            const REAL *d = dout + (size_t)i * C + hs;
            for (int t = 0; t <= i; t++) {
                const REAL *vt = v + (size_t)t * C + hs;
                REAL *dvt = dv + (size_t)t * C + hs;
                REAL g = 0;
                for (int j = 0; j < HS; j++) { g += d[j] * vt[j]; dvt[j] += w[t] * d[j]; }
                dw[t] = g;
            }
            /* softmax: ds_t = w_t (dw_t - sum_u w_u dw_u) */
            REAL dot = 0;
            for (int t = 0; t <= i; t++) dot += w[t] * dw[t];
            const REAL *qi = q + (size_t)i * C + hs;
            REAL *dqi = dq + (size_t)i * C + hs;
            for (int t = 0; t <= i; t++) {
                const REAL ds = w[t] * (dw[t] - dot) * scale;
                const REAL *kt = k + (size_t)t * C + hs;
                REAL *dkt = dk + (size_t)t * C + hs;
                for (int j = 0; j < HS; j++) { dqi[j] += ds * kt[j]; dkt[j] += ds * qi[j]; }
            }
        }
    }
}

/* ------------------------------------------------------------------ ReLU */
void FN(relu_forward)(REAL *out, const REAL *inp, size_t n) {      /* (n), (n) */
    for (size_t i = 0; i < n; i++) out[i] = inp[i] > 0 ? inp[i] : (REAL)0;
}

void FN(relu_backward)(REAL *dinp, const REAL *dout, const REAL *inp, size_t n) {
    for (size_t i = 0; i < n; i++) if (inp[i] > 0) dinp[i] += dout[i];
}

/* -------------------------------------------------------------- residual */
void FN(residual_forward)(REAL *out, const REAL *inp1, const REAL *inp2, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = inp1[i] + inp2[i];
}

void FN(residual_backward)(REAL *dinp1, REAL *dinp2, const REAL *dout, size_t n) {
    for (size_t i = 0; i < n; i++) { dinp1[i] += dout[i]; dinp2[i] += dout[i]; }
}

/* ------------------------------------------------ softmax cross-entropy */
/* probs = softmax(logits) computed as the SPEC does; losses = -log probs[target] */
void FN(crossentropy_softmax_forward)(REAL *losses,          /* (N) */
                                      REAL *probs,           /* (N, V) */
                                      const REAL *logits,    /* (N, V) */
                                      const int32_t *targets,/* (N) */
                                      int N, int V) {
    for (int n = 0; n < N; n++) {
        const REAL *z = logits + (size_t)n * V;
        REAL *p = probs + (size_t)n * V;
        REAL maxv = z[0];
        for (int i = 1; i < V; i++) if (z[i] > maxv) maxv = z[i];
        REAL total = 0;
        for (int i = 0; i < V; i++) { p[i] = EXP(z[i] - maxv); total += p[i]; }
        const REAL inv = POW(total, (REAL)-1);
        for (int i = 0; i < V; i++) p[i] = p[i] * inv;
        /* -log p as the SPEC computes it; if p underflowed to 0 (a logit gap
         * beyond ~88 in float32), the equal log-sum-exp form stays finite */
        const REAL pt = p[targets[n]];
        losses[n] = pt > 0 ? -LOG(pt) : LOG(total) + (maxv - z[targets[n]]);
    }
}

void FN(crossentropy_softmax_backward)(REAL *dlogits,          /* (N, V) */
                                       const REAL *dlosses,    /* (N) */
                                       const REAL *probs,      /* (N, V) */
                                       const int32_t *targets, /* (N) */
                                       int N, int V) {
    for (int n = 0; n < N; n++) {
        REAL *dz = dlogits + (size_t)n * V;
        const REAL *p = probs + (size_t)n * V;
        const REAL dl = dlosses[n];
        for (int i = 0; i < V; i++) dz[i] += dl * (p[i] - (i == targets[n] ? (REAL)1 : (REAL)0));
    }
}

/* ------------------------------------------------------------------ Adam */
/* Bias-corrected Adam at 1-based step t with the step's learning rate lr_t.
 * m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t) are computed as
 * multiplications by the reciprocals: one division and one square root per
 * element.  If `clear` is not NULL (it is `grads`), each gradient is zeroed
 * once read, saving a separate pass. */
MG_HOT static void FN(adam_impl)(REAL *params, REAL *m, REAL *v, const REAL *grads, REAL *clear,
                                 size_t n, double lr_t, double beta1, double beta2, double eps,
                                 long t) {
    const REAL b1 = (REAL)beta1, b2 = (REAL)beta2;
    const REAL c1 = (REAL)(1.0 - beta1), c2 = (REAL)(1.0 - beta2);
    const REAL ibc1 = (REAL)(1.0 / (1.0 - pow(beta1, (double)t)));
    const REAL ibc2 = (REAL)(1.0 / (1.0 - pow(beta2, (double)t)));
    const REAL lr = (REAL)lr_t, e = (REAL)eps;
    for (size_t i = 0; i < n; i++) {
        const REAL g = grads[i];
        const REAL mi = b1 * m[i] + c1 * g;
        const REAL vi = b2 * v[i] + c2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] - lr * (mi * ibc1) / (SQRT(vi * ibc2) + e);
        if (clear != NULL) clear[i] = 0;
    }
}

void FN(adam_update)(REAL *params,       /* (n) */
                     REAL *m,            /* (n) first moments */
                     REAL *v,            /* (n) second moments */
                     const REAL *grads,  /* (n) */
                     size_t n, double lr_t, double beta1, double beta2, double eps, long t) {
    FN(adam_impl)(params, m, v, grads, NULL, n, lr_t, beta1, beta2, eps, t);
}

/* Adam, then the gradients zeroed (the training loop's step). */
void FN(adam_update_zero_grad)(REAL *params, REAL *m, REAL *v, REAL *grads, size_t n,
                               double lr_t, double beta1, double beta2, double eps, long t) {
    FN(adam_impl)(params, m, v, grads, grads, n, lr_t, beta1, beta2, eps, t);
}

void FN(zero)(REAL *buf, size_t n) {
    memset(buf, 0, n * sizeof(REAL));  /* all-bits-zero is +0.0 in IEEE 754 */
}
