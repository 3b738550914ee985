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
/* Threads only when `work` multiply-adds pay for them, there are at least
 * two pieces and no team is already running (a kernel called inside the
 * model's parallel region runs serially); otherwise no parallel region is
 * entered at all. */
#ifndef MG_OMP_MIN_WORK
#define MG_OMP_MIN_WORK 100000
#endif
#ifdef _OPENMP
#include <omp.h>
#define MG_USE_THREADS(work, pieces) \
    ((work) >= MG_OMP_MIN_WORK && (pieces) > 1 && !mg_serial && mg_team_size() > 1 && \
     !omp_in_parallel())
/* set by the model around a batched step too small for a team (serial) */
static _Thread_local int mg_serial = 0;
static inline int mg_thread_num(void) { return omp_get_thread_num(); }
static inline int mg_num_threads(void) { return omp_get_num_threads(); }
#else
#define MG_USE_THREADS(work, pieces) 0
static inline int mg_thread_num(void) { return 0; }
static inline int mg_num_threads(void) { return 1; }
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

/* Reciprocals and inverse square roots.  Float64 (the reference's dtype)
 * computes them as the reference does, with libm pow; float32 (no bit-parity
 * requirement, only rounding-level agreement) may define MG_FAST_RECIP to use
 * a division and a square root instead (within an ulp or two of powf). */
#undef RECIP
#undef RSQRT
#ifdef MG_FAST_RECIP
#define RECIP(x) ((REAL)1 / (x))
#define RSQRT(x) ((REAL)1 / SQRT(x))
#else
#define RECIP(x) POW((x), (REAL)-1)
#define RSQRT(x) POW((x), (REAL)-0.5)
#endif

/* C^-1 and (HS^0.5)^-1 as the kernels compute them, cached per thread (the
 * same value every time; saves libm pow calls in the small-size hot loop) */
static REAL FN(recip_int)(int c) {
    static _Thread_local int last = 0;
    static _Thread_local REAL value = 0;
    if (c != last) { value = RECIP((REAL)c); last = c; }
    return value;
}

static REAL FN(att_scale)(int hs) {
    static _Thread_local int last = 0;
    static _Thread_local REAL value = 0;
    if (hs != last) { value = RECIP(POW((REAL)hs, (REAL)0.5)); last = hs; }
    return value;
}

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
static void FN(rmsnorm_forward_rows)(REAL *out, REAL *scale, const REAL *inp, int n0, int n1,
                                    int C, REAL inv_c);

void FN(rmsnorm_forward)(REAL *out,           /* (N, C) */
                         REAL *scale,         /* (N) saved (ms + 1e-5)^-0.5 */
                         const REAL *inp,     /* (N, C) */
                         int N, int C) {
    const REAL inv_c = FN(recip_int)(C);
    /* rows are independent: 32-row chunks across threads when large */
    if (MG_USE_THREADS((size_t)N * C * 8, N / 32)) {
        const int chunks = (N + 31) / 32;
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
        for (int c = 0; c < chunks; c++)
            FN(rmsnorm_forward_rows)(out, scale, inp, 32 * c, 32 * c + 32 < N ? 32 * c + 32 : N, C, inv_c);
        return;
    }
    FN(rmsnorm_forward_rows)(out, scale, inp, 0, N, C, inv_c);
}

static void FN(rmsnorm_forward_rows)(REAL *out, REAL *scale, const REAL *inp, int n0, int n1,
                                    int C, REAL inv_c) {
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

static void FN(rmsnorm_backward_rows)(REAL *dinp, const REAL *dout, const REAL *inp,
                                     const REAL *scale, int n0, int n1, int C, REAL inv_c);

void FN(rmsnorm_backward)(REAL *dinp,          /* (N, C) */
                          const REAL *dout,    /* (N, C) */
                          const REAL *inp,     /* (N, C) */
                          const REAL *scale,   /* (N) */
                          int N, int C) {
    const REAL inv_c = FN(recip_int)(C);
    if (MG_USE_THREADS((size_t)N * C * 8, N / 32)) {
        const int chunks = (N + 31) / 32;
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
        for (int c = 0; c < chunks; c++)
            FN(rmsnorm_backward_rows)(dinp, dout, inp, scale, 32 * c,
                                      32 * c + 32 < N ? 32 * c + 32 : N, C, inv_c);
        return;
    }
    FN(rmsnorm_backward_rows)(dinp, dout, inp, scale, 0, N, C, inv_c);
}

static void FN(rmsnorm_backward_rows)(REAL *dinp, const REAL *dout, const REAL *inp,
                                     const REAL *scale, int n0, int n1, int C, REAL inv_c) {
    for (int n = n0; n < n1; n++) {
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
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
        for (int b = 0; b < nblocks; b++) FN(matmul_forward_range)(out, inp, weight, N, C, OC, b, b + 1);
        return;
    }
    FN(matmul_forward_range)(out, inp, weight, N, C, OC, 0, nblocks);
}

/* ---- the same product from a transposed weight, wT (C, OCp): wT[i][o] =
 * weight[o][i], OCp >= OC a multiple of MG_LANES, padding zero.  The lanes
 * now run over output channels (full whatever N is) and each output is still
 * the sequential sum 0 + w0 x0 + w1 x1 + ...; no transposed copies of the
 * inputs, no scalar stores.  The model builds wT once per forward. */
typedef IREAL FN(ivec_t) __attribute__((vector_size(64)));

#if defined(__GNUC__) && !defined(__clang__)
/* One interleaving stage of the in-register transpose (block b): for row
 * pairs (j, j + b), lanes of 2b-blocks: the first halves of both rows, then
 * the second halves.  Fully unrolled, the masks are constants. */
static inline __attribute__((always_inline)) void FN(transpose_stage)(FN(vec_t) *r, const int b) {
    enum { NB = MG_LANES };
    FN(ivec_t) lo, hi;
#pragma GCC unroll 16
    for (int k = 0; k < NB; k++) {
        const int B = k / (2 * b) * (2 * b), w = k % (2 * b);
        lo[k] = w < b ? B + w : NB + B + w - b;
        hi[k] = w < b ? B + b + w : NB + B + w;
    }
#pragma GCC unroll 16
    for (int j = 0; j < NB; j++)
        if ((j & b) == 0) {
            const FN(vec_t) x = r[j], y = r[j + b];
            r[j] = __builtin_shuffle(x, y, lo);
            r[j + b] = __builtin_shuffle(x, y, hi);
        }
}
#endif

#ifdef MG_FAST_RECIP
/* Float32 only: exp of a vector, 2^n e^r with |r| <= ln2/2 and a degree-7
 * Taylor polynomial (relative error ~1e-7, about an ulp), in plain IEEE
 * multiplies and adds, so every clone gives the same bits.  Arguments are
 * clamped to [-87, 88] (below -87: e^-87 ~ 1.6e-38 instead of a subnormal or
 * 0, which only ever meets sums of order 1 here). */
#define MG_VSEL(m, a, b) ((VEC)(((FN(ivec_t))(a) & (m)) | ((FN(ivec_t))(b) & ~(m))))
/* in place (*xp = exp(*xp)): by pointer, so no vector-argument ABI is involved */
static inline __attribute__((always_inline)) void FN(vexp)(VEC *xp) {
    VEC x = *xp;
    const VEC zero = {0};
    /* (each comparison feeds one select: GCC 12 scalarises a mask used twice) */
    x = MG_VSEL(x < (REAL)-87, zero + (REAL)-87, x);
    x = MG_VSEL(x > (REAL)88, zero + (REAL)88, x);
    const VEC nf = (x * (REAL)1.44269504088896341 + (REAL)12582912) - (REAL)12582912;
    const VEC r = (x - nf * (REAL)0.693145751953125) - nf * (REAL)1.428606765330187e-06;
    VEC p = zero + (REAL)(1.0 / 5040);
    p = p * r + (REAL)(1.0 / 720);
    p = p * r + (REAL)(1.0 / 120);
    p = p * r + (REAL)(1.0 / 24);
    p = p * r + (REAL)(1.0 / 6);
    p = p * r + (REAL)0.5;
    p = p * r + (REAL)1;
    p = p * r + (REAL)1;
    const FN(ivec_t) ni = __builtin_convertvector(nf, FN(ivec_t));
    const VEC scale = (VEC)((ni + 127) << 23);
    *xp = p * scale;
}
#endif

/* wT (C, OCp) from weight (OC, C), NB x NB tiles transposed in registers. */
MG_HOT static void FN(transpose_weight)(REAL *wT, const REAL *weight, int OC, int C, int OCp) {
    enum { NB = MG_LANES };
    int o0 = 0;
    for (; o0 + NB <= OC; o0 += NB) {
        int i0 = 0;
        for (; i0 + NB <= C; i0 += NB) {
#if defined(__GNUC__) && !defined(__clang__)
            VEC r[NB];
#pragma GCC unroll 16
            for (int j = 0; j < NB; j++) r[j] = LOADU(weight + (size_t)(o0 + j) * C + i0);
            if (NB == 16) FN(transpose_stage)(r, 8);
            FN(transpose_stage)(r, 4);
            FN(transpose_stage)(r, 2);
            FN(transpose_stage)(r, 1);
#pragma GCC unroll 16
            for (int k = 0; k < NB; k++) STOREU(wT + (size_t)(i0 + k) * OCp + o0, r[k]);
#else   /* no __builtin_shuffle: plain copies */
            for (int k = 0; k < NB; k++)
                for (int j = 0; j < NB; j++)
                    wT[(size_t)(i0 + k) * OCp + o0 + j] = weight[(size_t)(o0 + j) * C + i0 + k];
#endif
        }
        for (; i0 < C; i0++)
            for (int j = 0; j < NB; j++) wT[(size_t)i0 * OCp + o0 + j] = weight[(size_t)(o0 + j) * C + i0];
    }
    for (; o0 < OC; o0++)
        for (int i = 0; i < C; i++) wT[(size_t)i * OCp + o0] = weight[(size_t)o0 * C + i];
}

/* RT tokens (rows n..) x GV vectors of outputs (o..), constants after inlining. */
static inline __attribute__((always_inline)) void FN(mmT_tile)(REAL *out, const REAL *inp,
        const REAL *wT, int C, int OC, int OCp, int n, int o, const int RT, const int GV) {
    enum { NB = MG_LANES };
    VEC acc[4][4];
    for (int r = 0; r < RT; r++)
        for (int g = 0; g < GV; g++) acc[r][g] = (VEC){0};
    const REAL *x = inp + (size_t)n * C;
    const REAL *w = wT + o;
    for (int i = 0; i < C; i++) {
        VEC wv[4];
        for (int g = 0; g < GV; g++) wv[g] = LOADU(w + (size_t)i * OCp + g * NB);
        for (int r = 0; r < RT; r++) {
            const REAL xr = x[(size_t)r * C + i];
            for (int g = 0; g < GV; g++) acc[r][g] += wv[g] * xr;
        }
    }
    for (int r = 0; r < RT; r++)
        for (int g = 0; g < GV; g++) {
            const int oo = o + g * NB;
            REAL *dst = out + (size_t)(n + r) * OC + oo;
            if (oo + NB <= OC) STOREU(dst, acc[r][g]);
            else for (int l = 0; l < OC - oo; l++) dst[l] = acc[r][g][l];
        }
}

/* out (N, OC) = inp (N, C) @ weight^T, from wT; token rows n0 .. n1-1. */
MG_HOT static void FN(matmul_forward_T_rows)(REAL *out, const REAL *inp, const REAL *wT,
                                             int C, int OC, int OCp, int n0, int n1) {
    enum { NB = MG_LANES };
    const int nvec = (OC + NB - 1) / NB;
    for (int v = 0; v < nvec; v += 4) {
        const int gv = nvec - v < 4 ? nvec - v : 4, o = v * NB;
        int n = n0;
        switch (gv) {
        case 4: for (; n + 4 <= n1; n += 4) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 4, 4);
                for (; n < n1; n++) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 1, 4);
                break;
        case 3: for (; n + 4 <= n1; n += 4) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 4, 3);
                for (; n < n1; n++) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 1, 3);
                break;
        case 2: for (; n + 4 <= n1; n += 4) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 4, 2);
                for (; n < n1; n++) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 1, 2);
                break;
        default: for (; n + 4 <= n1; n += 4) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 4, 1);
                for (; n < n1; n++) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 1, 1);
                break;
        }
    }
}

static void FN(matmul_forward_T)(REAL *out, const REAL *inp, const REAL *wT,
                                 int N, int C, int OC, int OCp) {
    const int chunks = (N + 7) / 8;
    if (MG_USE_THREADS((size_t)N * C * OC, chunks)) {
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
        for (int c = 0; c < chunks; c++)
            FN(matmul_forward_T_rows)(out, inp, wT, C, OC, OCp, 8 * c, 8 * c + 8 < N ? 8 * c + 8 : N);
        return;
    }
    FN(matmul_forward_T_rows)(out, inp, wT, C, OC, OCp, 0, N);
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

/* Adam constants of one step, and (for the fused update) the moments of the
 * tensor being updated, indexed like it. */
typedef struct {
    REAL b1, b2, c1, c2, ibc1, ibc2, lr, e;
    REAL *m, *v;
} FN(adam_ctx_t);

static FN(adam_ctx_t) FN(adam_ctx)(double lr_t, double beta1, double beta2, double eps, long t,
                                   const void *unused) {
    FN(adam_ctx_t) A;
    (void)unused;
    A.b1 = (REAL)beta1; A.b2 = (REAL)beta2;
    A.c1 = (REAL)(1.0 - beta1); A.c2 = (REAL)(1.0 - beta2);
    A.ibc1 = (REAL)(1.0 / (1.0 - pow(beta1, (double)t)));
    A.ibc2 = (REAL)(1.0 / (1.0 - pow(beta2, (double)t)));
    A.lr = (REAL)lr_t; A.e = (REAL)eps;
    A.m = A.v = NULL;
    return A;
}

/* The Adam update of `len` consecutive parameters from their gradients g
 * (the same operations as adam_impl). */
static inline void FN(adam_span)(REAL *restrict p, REAL *restrict m, REAL *restrict v,
                                 const REAL *restrict g, int len, const FN(adam_ctx_t) *A) {
    const REAL b1 = A->b1, b2 = A->b2, c1 = A->c1, c2 = A->c2, ibc1 = A->ibc1, ibc2 = A->ibc2;
    const REAL lr = A->lr, e = A->e;
    for (int i = 0; i < len; i++) {
        const REAL gi = g[i];
        const REAL mi = b1 * m[i] + c1 * gi;
        const REAL vi = b2 * v[i] + c2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] - lr * (mi * ibc1) / (SQRT(vi * ibc2) + e);
    }
}

/* dweight[o][i] += sum_n dout[n][o] * inp[n][i], rows o0..o1, n ascending.
 * With A != NULL (the fused training step) the gradient is not stored:
 * each finished tile (sum from 0, the same value the accumulation into a
 * zeroed dweight gives) is applied at once by Adam to weight, A->m, A->v. */
MG_HOT static void FN(matmul_backward_dweight)(REAL *dweight, const REAL *dout, const REAL *inp,
                                               int N, int C, int OC, int o0, int o1,
                                               REAL *weight, const FN(adam_ctx_t) *A) {
    enum { NB = MG_LANES };
    REAL tile[4][NB];
    /* a local copy: the constants cannot alias the moments being stored */
    FN(adam_ctx_t) Aloc;
    if (A != NULL) { Aloc = *A; A = &Aloc; }
#define MG_DW_EMIT(r, oo, ii, vec, len)                                                    \
    do {                                                                                    \
        const size_t at_ = (size_t)(oo) * C + (ii);                                         \
        if (A != NULL) {                                                                    \
            STOREU(tile[r], vec);                                                           \
            FN(adam_span)(weight + at_, A->m + at_, A->v + at_, tile[r], (len), A);         \
        } else {                                                                            \
            STOREU(dweight + at_, vec);                                                     \
        }                                                                                   \
    } while (0)
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        REAL *w0 = dweight + (size_t)o * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
        int i = 0;
        for (; i + NB <= C; i += NB) {
            VEC a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            if (A == NULL) { a0 = LOADU(w0 + i); a1 = LOADU(w1 + i); a2 = LOADU(w2 + i); a3 = LOADU(w3 + i); }
            for (int n = 0; n < N; n++) {
                const VEC x = LOADU(inp + (size_t)n * C + i);
                const REAL *g = dout + (size_t)n * OC + o;
                a0 += g[0] * x; a1 += g[1] * x; a2 += g[2] * x; a3 += g[3] * x;
            }
            MG_DW_EMIT(0, o, i, a0, NB); MG_DW_EMIT(1, o + 1, i, a1, NB);
            MG_DW_EMIT(2, o + 2, i, a2, NB); MG_DW_EMIT(3, o + 3, i, a3, NB);
        }
        if (i < C) {
            const int rem = C - i;
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < rem; j++) {
                    REAL acc = A == NULL ? dweight[(size_t)(o + r) * C + i + j] : (REAL)0;
                    for (int n = 0; n < N; n++)
                        acc += dout[(size_t)n * OC + o + r] * inp[(size_t)n * C + i + j];
                    tile[r][j] = acc;
                }
            for (int r = 0; r < 4; r++) {
                const size_t at = (size_t)(o + r) * C + i;
                if (A != NULL) FN(adam_span)(weight + at, A->m + at, A->v + at, tile[r], rem, A);
                else memcpy(dweight + at, tile[r], (size_t)rem * sizeof(REAL));
            }
        }
    }
    for (; o < o1; o++) {
        REAL *dw = dweight + (size_t)o * C;
        int i = 0;
        for (; i + NB <= C; i += NB) {
            VEC a0 = {0};
            if (A == NULL) a0 = LOADU(dw + i);
            for (int n = 0; n < N; n++) a0 += dout[(size_t)n * OC + o] * LOADU(inp + (size_t)n * C + i);
            MG_DW_EMIT(0, o, i, a0, NB);
        }
        if (i < C) {
            const int rem = C - i;
            for (int j = 0; j < rem; j++) {
                REAL acc = A == NULL ? dw[i + j] : (REAL)0;
                for (int n = 0; n < N; n++) acc += dout[(size_t)n * OC + o] * inp[(size_t)n * C + i + j];
                tile[0][j] = acc;
            }
            const size_t at = (size_t)o * C + i;
            if (A != NULL) FN(adam_span)(weight + at, A->m + at, A->v + at, tile[0], rem, A);
            else memcpy(dw + i, tile[0], (size_t)rem * sizeof(REAL));
        }
    }
#undef MG_DW_EMIT
}

/* The two halves of matmul_backward.  dinp first (from the weight before
 * any update); dweight: with A != NULL the weight gradient goes straight
 * into an Adam update of weight (dweight is not touched). */
static void FN(matmul_backward_dinp_all)(REAL *dinp, const REAL *dout, const REAL *weight,
                                         int N, int C, int OC) {
    const size_t work = (size_t)N * C * OC;
    (void)work;  /* unused without OpenMP */
    /* each row n belongs to one thread */
    if (MG_USE_THREADS(work, N / 4)) {
        const int chunks = (N + 3) / 4;
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
        for (int c = 0; c < chunks; c++)
            FN(matmul_backward_dinp)(dinp, dout, weight, C, OC, 4 * c, 4 * c + 4 < N ? 4 * c + 4 : N);
    } else {
        FN(matmul_backward_dinp)(dinp, dout, weight, C, OC, 0, N);
    }
}

static void FN(matmul_backward_dweight_all)(REAL *dweight, const REAL *dout, const REAL *inp,
                                            REAL *weight, int N, int C, int OC,
                                            const FN(adam_ctx_t) *A) {
    const size_t work = (size_t)N * C * OC;
    (void)work;
    /* each row oc belongs to one thread, summed over n in order */
    if (MG_USE_THREADS(work, OC / 4)) {
        const int chunks = (OC + 3) / 4;
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
        for (int c = 0; c < chunks; c++)
            FN(matmul_backward_dweight)(dweight, dout, inp, N, C, OC, 4 * c,
                                        4 * c + 4 < OC ? 4 * c + 4 : OC, weight, A);
    } else {
        FN(matmul_backward_dweight)(dweight, dout, inp, N, C, OC, 0, OC, weight, A);
    }
}

/* 0 if a[0..n) holds a NaN or an infinity; else 1 and *maxabs = max |a_i|.
 * On the bit patterns: |x| is the pattern without the sign bit, ordered
 * like the value for non-negative floats; NaN and inf have the top
 * (all-ones) exponent.  An integer max reduction, which vectorises. */
MG_HOT static int FN(finite_maxabs)(const REAL *a, size_t n, double *maxabs) {
    if (sizeof(REAL) == 4) {
        uint32_t m = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t b;
            memcpy(&b, &a[i], sizeof b);
            b &= 0x7fffffffu;
            m = b > m ? b : m;
        }
        if (m >= 0x7f800000u) return 0;
        float f;
        memcpy(&f, &m, sizeof f);
        *maxabs = (double)f;
    } else {
        uint64_t m = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t b;
            memcpy(&b, &a[i], sizeof b);
            b &= 0x7fffffffffffffffull;
            m = b > m ? b : m;
        }
        if (m >= 0x7ff0000000000000ull) return 0;
        double d;
        memcpy(&d, &m, sizeof d);
        *maxabs = d;
    }
    return 1;
}

/* 1 if every a[i] is finite (no NaN, no infinity). */
int FN(all_finite)(const REAL *a, size_t n) {
    double unused;
    return FN(finite_maxabs)(a, n, &unused);
}

void FN(matmul_backward)(REAL *dinp,           /* (N, C) */
                         REAL *dweight,        /* (OC, C) */
                         const REAL *dout,     /* (N, OC) */
                         const REAL *inp,      /* (N, C) */
                         const REAL *weight,   /* (OC, C) */
                         int N, int C, int OC) {
    FN(matmul_backward_dinp_all)(dinp, dout, weight, N, C, OC);
    FN(matmul_backward_dweight_all)(dweight, dout, inp, (REAL *)weight, N, C, OC, NULL);
}

/* ------------------------------------------------------------- attention */
/* ---- attention of one document (p0 = 0), vectorised across queries: lanes
 * are MG_LANES consecutive queries i0 + l, keys/values are broadcast.  Each
 * score, exp, sum and output is the same scalar operation sequence as in
 * attention_forward_rows (lanes of keys t > i are never exponentiated and
 * carry weight 0, which adds exact zeros to the outputs). */
#define MG_ATT_SCRATCH 6144
/* scratch elements needed for a document of n tokens (0: too big for the stack) */
static int FN(att_doc_fits)(int n, int HS) {
    return (size_t)MG_LANES * (2 * (size_t)n + 2 * (size_t)HS) <= MG_ATT_SCRATCH;
}

MG_HOT static void FN(attention_forward_doc)(REAL *out, REAL *att, const REAL *q, const REAL *k,
                                             const REAL *v, int n, int C, int NH, int T,
                                             REAL scale) {
    enum { NB = MG_LANES };
    REAL scratch[MG_ATT_SCRATCH];
    const int HS = C / NH;
    REAL *S = scratch;                 /* (n, NB) scores, then weights */
    REAL *qT = S + (size_t)n * NB;     /* (HS, NB) */
    for (int i0 = 0; i0 < n; i0 += NB) {
        const int nb = n - i0 < NB ? n - i0 : NB, nt = i0 + nb;
        for (int h = 0; h < NH; h++) {
            const size_t hs = (size_t)h * HS;
            for (int j = 0; j < HS; j++)
                for (int l = 0; l < NB; l++)
                    qT[(size_t)j * NB + l] = l < nb ? q[(size_t)(i0 + l) * C + hs + j] : (REAL)0;
            for (int t = 0; t < nt; t++) {
                const REAL *kt = k + (size_t)t * C + hs;
                VEC sv = {0};
                for (int j = 0; j < HS; j++) sv += LOADU(qT + (size_t)j * NB) * kt[j];
                STOREU(S + (size_t)t * NB, sv * scale);
            }
#ifdef MG_FAST_RECIP
            {
                VEC li, M = LOADU(S), total = {0};
                for (int l = 0; l < NB; l++) li[l] = (REAL)(i0 + l);
                const VEC zero = {0};
                /* (one comparison per select: GCC 12 scalarises an & of two masks) */
                for (int t = 1; t < nt; t++) {
                    const VEC tv = zero + (REAL)t;
                    const VEC st = MG_VSEL(tv <= li, LOADU(S + (size_t)t * NB), M);
                    M = MG_VSEL(st > M, st, M);
                }
                for (int t = 0; t < nt; t++) {
                    const VEC tv = zero + (REAL)t;
                    VEC e = LOADU(S + (size_t)t * NB) - M;
                    FN(vexp)(&e);
                    e = MG_VSEL(tv <= li, e, zero);
                    STOREU(S + (size_t)t * NB, e);
                    total += e;
                }
                const VEC inv = (REAL)1 / total;
                for (int t = 0; t < nt; t++) {
                    const VEC wv = LOADU(S + (size_t)t * NB) * inv;
                    STOREU(S + (size_t)t * NB, wv);
                    for (int l = t > i0 ? t - i0 : 0; l < nb; l++)
                        att[((size_t)(i0 + l) * NH + h) * T + t] = wv[l];
                }
            }
            if (0)
#endif
            for (int l = 0; l < nb; l++) {
                const int i = i0 + l;
                REAL *w = att + ((size_t)i * NH + h) * T;
                REAL maxv = 0;
                for (int t = 0; t <= i; t++) {
                    const REAL sc = S[(size_t)t * NB + l];
                    if (t == 0 || sc > maxv) maxv = sc;
                }
                REAL total = 0;
                for (int t = 0; t <= i; t++) {
                    const REAL e = EXP(S[(size_t)t * NB + l] - maxv);
                    S[(size_t)t * NB + l] = e;
                    total += e;
                }
                const REAL inv = RECIP(total);
                for (int t = 0; t <= i; t++) {
                    const REAL wt = S[(size_t)t * NB + l] * inv;
                    S[(size_t)t * NB + l] = wt;
                    w[t] = wt;
                }
                for (int t = i + 1; t < nt; t++) S[(size_t)t * NB + l] = 0;
            }
            for (int l = nb; l < NB; l++)
                for (int t = 0; t < nt; t++) S[(size_t)t * NB + l] = 0;
            for (int j = 0; j < HS; j++) {
                VEC a = {0};
                for (int t = 0; t < nt; t++) a += LOADU(S + (size_t)t * NB) * v[(size_t)t * C + hs + j];
                for (int l = 0; l < nb; l++) out[(size_t)(i0 + l) * C + hs + j] = a[l];
            }
        }
    }
}

/* Backward of attention_forward_doc (any fixed order: rounding-level). */
MG_HOT static void FN(attention_backward_doc)(REAL *dq, REAL *dk, REAL *dv, const REAL *dout,
                                              const REAL *att, const REAL *q, const REAL *k,
                                              const REAL *v, int n, int C, int NH, int T,
                                              REAL scale) {
    enum { NB = MG_LANES };
    REAL scratch[MG_ATT_SCRATCH];
    const int HS = C / NH;
    REAL *W = scratch;                 /* (n, NB) weights */
    REAL *D = W + (size_t)n * NB;      /* (n, NB) dweights, then dscores */
    REAL *dT = D + (size_t)n * NB;     /* (HS, NB) dout */
    REAL *gT = dT + (size_t)HS * NB;   /* (HS, NB) dq */
    for (int i0 = 0; i0 < n; i0 += NB) {
        const int nb = n - i0 < NB ? n - i0 : NB, nt = i0 + nb;
        for (int h = 0; h < NH; h++) {
            const size_t hs = (size_t)h * HS;
            for (int t = 0; t < nt; t++)
                for (int l = 0; l < NB; l++)
                    W[(size_t)t * NB + l] = l < nb && t <= i0 + l
                        ? att[((size_t)(i0 + l) * NH + h) * T + t] : (REAL)0;
            for (int j = 0; j < HS; j++)
                for (int l = 0; l < NB; l++)
                    dT[(size_t)j * NB + l] = l < nb ? dout[(size_t)(i0 + l) * C + hs + j] : (REAL)0;
            VEC dot = {0};
            for (int t = 0; t < nt; t++) {
                const REAL *vt = v + (size_t)t * C + hs;
                VEC g = {0};
                for (int j = 0; j < HS; j++) g += LOADU(dT + (size_t)j * NB) * vt[j];
                STOREU(D + (size_t)t * NB, g);
                dot += LOADU(W + (size_t)t * NB) * g;
            }
            for (int t = 0; t < nt; t++) {
                const VEC wv = LOADU(W + (size_t)t * NB);
                STOREU(D + (size_t)t * NB, wv * (LOADU(D + (size_t)t * NB) - dot) * scale);
            }
            /* dq (lanes = queries) */
            for (int j = 0; j < HS; j++) {
                VEC a = {0};
                for (int t = 0; t < nt; t++) a += LOADU(D + (size_t)t * NB) * k[(size_t)t * C + hs + j];
                STOREU(gT + (size_t)j * NB, a);
            }
            for (int l = 0; l < nb; l++) {
                REAL *dqi = dq + (size_t)(i0 + l) * C + hs;
                for (int j = 0; j < HS; j++) dqi[j] += gT[(size_t)j * NB + l];
            }
            /* dk, dv: rank-1 updates per (query, key) */
            for (int l = 0; l < nb; l++) {
                const int i = i0 + l;
                const REAL *qi = q + (size_t)i * C + hs, *di = dout + (size_t)i * C + hs;
                for (int t = 0; t <= i; t++) {
                    const REAL ds = D[(size_t)t * NB + l], wt = W[(size_t)t * NB + l];
                    REAL *dkt = dk + (size_t)t * C + hs, *dvt = dv + (size_t)t * C + hs;
                    for (int j = 0; j < HS; j++) { dkt[j] += ds * qi[j]; dvt[j] += wt * di[j]; }
                }
            }
        }
    }
}


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
    if (p0 == 0 && FN(att_doc_fits)(N, C / NH)) {
        FN(attention_forward_doc)(out, att, q, k, v, N, C, NH, T,
                                  FN(att_scale)(C / NH));
        return;
    }
    if (MG_USE_THREADS((size_t)N * (p0 + N) * C, N)) {
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(dynamic, 1))
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
    const REAL scale = FN(att_scale)(HS);
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
            const REAL inv = RECIP(total);
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
    if (FN(att_doc_fits)(N, C / NH)) {
        (void)datt;
        FN(attention_backward_doc)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T,
                                   FN(att_scale)(C / NH));
        return;
    }
    /* one head per thread: the head's slices of dq, dk, dv are its own */
    if (MG_USE_THREADS((size_t)N * N * C, NH)) {
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
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
    const REAL scale = FN(att_scale)(HS);
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

MG_HOT static void FN(relu_backward_impl)(REAL *restrict dinp, const REAL *restrict dout,
                                          const REAL *restrict inp, size_t n) {
    /* a select, not a branch: vectorises (and -0 stays -0 where inp <= 0) */
    for (size_t i = 0; i < n; i++) dinp[i] = inp[i] > 0 ? dinp[i] + dout[i] : dinp[i];
}

void FN(relu_backward)(REAL *dinp, const REAL *dout, const REAL *inp, size_t n) {
    if (dinp == dout || dinp == inp) {  /* in place: plain loop */
        for (size_t i = 0; i < n; i++) if (inp[i] > 0) dinp[i] += dout[i];
        return;
    }
    FN(relu_backward_impl)(dinp, dout, inp, n);
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
MG_HOT static void FN(crossentropy_rows)(REAL *losses, REAL *probs, const REAL *logits,
                                         const int32_t *targets, int n0, int n1, int V);

void FN(crossentropy_softmax_forward)(REAL *losses,          /* (N) */
                                      REAL *probs,           /* (N, V) */
                                      const REAL *logits,    /* (N, V) */
                                      const int32_t *targets,/* (N) */
                                      int N, int V) {
    if (MG_USE_THREADS((size_t)N * V * 16, N / 16)) {
        const int chunks = (N + 15) / 16;
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
        for (int c = 0; c < chunks; c++)
            FN(crossentropy_rows)(losses, probs, logits, targets, 16 * c,
                                  16 * c + 16 < N ? 16 * c + 16 : N, V);
        return;
    }
    FN(crossentropy_rows)(losses, probs, logits, targets, 0, N, V);
}

MG_HOT static void FN(crossentropy_rows)(REAL *losses, REAL *probs, const REAL *logits,
                                         const int32_t *targets, int n0, int n1, int V) {
    for (int n = n0; n < n1; n++) {
        const REAL *z = logits + (size_t)n * V;
        REAL *p = probs + (size_t)n * V;
        REAL maxv = z[0];
        for (int i = 1; i < V; i++) if (z[i] > maxv) maxv = z[i];
        REAL total = 0;
#ifdef MG_FAST_RECIP
        {
            enum { NB = MG_LANES };
            REAL buf[NB];
            int i = 0;
            for (; i + NB <= V; i += NB) {
                VEC e = LOADU(z + i) - maxv;
                FN(vexp)(&e);
                STOREU(p + i, e);
            }
            if (i < V) {
                for (int l = 0; l < NB; l++) buf[l] = i + l < V ? z[i + l] - maxv : (REAL)-100;
                VEC e = LOADU(buf);
                FN(vexp)(&e);
                STOREU(buf, e);
                for (int l = 0; i + l < V; l++) p[i + l] = buf[l];
            }
            for (i = 0; i < V; i++) total += p[i];
        }
#else
        for (int i = 0; i < V; i++) { p[i] = EXP(z[i] - maxv); total += p[i]; }
#endif
        const REAL inv = RECIP(total);
        for (int i = 0; i < V; i++) p[i] = p[i] * inv;
#ifdef MG_FAST_RECIP
        /* float32: the log-sum-exp form, exact for any logit gap (the fast exp
         * clamps its argument, so -log p would saturate near 87) */
        losses[n] = LOG(total) + (maxv - z[targets[n]]);
#else
        /* -log p as the SPEC computes it; if p underflowed to 0 (a logit gap
         * beyond ~745), the equal log-sum-exp form stays finite */
        const REAL pt = p[targets[n]];
        losses[n] = pt > 0 ? -LOG(pt) : LOG(total) + (maxv - z[targets[n]]);
#endif
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
 * once read, saving a separate pass.  (FN(adam_ctx_t) is defined above, next
 * to the matmul backward, which can apply the same update in place.) */
MG_HOT static void FN(adam_impl)(REAL *params, REAL *m, REAL *v, const REAL *grads, REAL *clear,
                                 size_t n, const FN(adam_ctx_t) *A) {
    const REAL b1 = A->b1, b2 = A->b2, c1 = A->c1, c2 = A->c2, ibc1 = A->ibc1, ibc2 = A->ibc2;
    const REAL lr = A->lr, e = A->e;
    if (clear != NULL) {
        for (size_t i = 0; i < n; i++) {
            const REAL g = grads[i];
            const REAL mi = b1 * m[i] + c1 * g;
            const REAL vi = b2 * v[i] + c2 * (g * g);
            m[i] = mi;
            v[i] = vi;
            params[i] = params[i] - lr * (mi * ibc1) / (SQRT(vi * ibc2) + e);
            clear[i] = 0;
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const REAL g = grads[i];
        const REAL mi = b1 * m[i] + c1 * g;
        const REAL vi = b2 * v[i] + c2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] - lr * (mi * ibc1) / (SQRT(vi * ibc2) + e);
    }
}

/* Elementwise, so split into fixed chunks across threads when large; every
 * element is computed the same way whatever the thread count. */
static void FN(adam_run)(REAL *params, REAL *m, REAL *v, const REAL *grads, REAL *clear,
                         size_t n, const FN(adam_ctx_t) *A) {
    enum { CHUNK = 4096 };
    const size_t chunks = (n + CHUNK - 1) / CHUNK;
    if (MG_USE_THREADS(n * 16, chunks)) {
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
        for (size_t c = 0; c < chunks; c++) {
            const size_t i0 = c * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
            FN(adam_impl)(params + i0, m + i0, v + i0, grads + i0, clear ? clear + i0 : NULL,
                          len, A);
        }
        return;
    }
    FN(adam_impl)(params, m, v, grads, clear, n, A);
}

void FN(adam_update)(REAL *params,       /* (n) */
                     REAL *m,            /* (n) first moments */
                     REAL *v,            /* (n) second moments */
                     const REAL *grads,  /* (n) */
                     size_t n, double lr_t, double beta1, double beta2, double eps, long t) {
    const FN(adam_ctx_t) A = FN(adam_ctx)(lr_t, beta1, beta2, eps, t, NULL);
    FN(adam_run)(params, m, v, grads, NULL, n, &A);
}

/* Adam, then the gradients zeroed (the training loop's step). */
void FN(adam_update_zero_grad)(REAL *params, REAL *m, REAL *v, REAL *grads, size_t n,
                               double lr_t, double beta1, double beta2, double eps, long t) {
    const FN(adam_ctx_t) A = FN(adam_ctx)(lr_t, beta1, beta2, eps, t, NULL);
    FN(adam_run)(params, m, v, grads, grads, n, &A);
}

void FN(zero)(REAL *buf, size_t n) {
    memset(buf, 0, n * sizeof(REAL));  /* all-bits-zero is +0.0 in IEEE 754 */
}
