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
 * entered at all.  The threshold: a region costs tens of microseconds when
 * the threads have to be woken, and measured on 2 cores, one document per
 * step at 64/64 (1 or 4 layers) and 128/64 x 2 layers ran slower on 2
 * threads than on 1 with any lower threshold (e.g. 64/64 float32: 98 us vs
 * 66 at 1e5, 73 vs 65 at 1e6, 65 vs 69 at 4e6). */
#ifndef MG_OMP_MIN_WORK
#define MG_OMP_MIN_WORK 4000000
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
#define RECIP(x) FN(recip_pow)(x)
#define RSQRT(x) FN(rsqrt_pow)(x)
/* pow(x, -1) with the same bits as libm's, mostly without calling it.  The
 * correctly rounded r = 1/x has the exact residual e = 1 - x r (one fma), so
 * the exact 1/x lies |e| * m ulps from r (m: r's 53-bit significand).  glibc's
 * pow is within 0.54 ulp (e_pow.c: its result before the final rounding is
 * within ~0.04 ulp of the exact value), so whenever the exact value is more
 * than 0.05 ulp inside r's rounding interval (|e| m <= 0.45) pow returns r
 * too; otherwise (about 1 call in 10) ask pow.  Checked against pow on 10^8
 * random arguments (tests/c/test_core.c checks it on every run).  Other C
 * libraries: always pow. */
#if defined(__GLIBC__) && !defined(MG_NO_RECIP_FASTPATH)
static inline REAL FN(recip_pow)(REAL x) {
    const REAL r = (REAL)1 / x;
    const REAL e = __builtin_fma(-x, r, (REAL)1);
    uint64_t u;
    memcpy(&u, &r, sizeof u);
    const uint64_t ex = (u >> 52) & 0x7ff;
    if (sizeof(REAL) == 8 && ex > 0 && ex < 0x7fe &&
        __builtin_fabs(e) * (REAL)((u & 0xfffffffffffffull) | (1ull << 52)) <= (REAL)0.45)
        return r;
    return POW(x, (REAL)-1);
}

/* pow(x, -0.5) the same way: r0 = 1/sqrt(x) (two roundings, so often not
 * the nearest double) and one Newton correction r = r0 + r0 d0 / 2, where
 * d = 1 - x r^2 comes from r^2 = hi + lo exactly (fma); the exact x^-0.5 lies
 * |d|/2 * m ulps from r: r is pow's answer when that is <= 0.45 (which also
 * proves r is the nearest double). */
static inline REAL FN(rsqrt_pow)(REAL x) {
    const REAL r0 = (REAL)1 / __builtin_sqrt(x);
    const REAL hi0 = r0 * r0, lo0 = __builtin_fma(r0, r0, -hi0);
    const REAL r = r0 + (r0 * (__builtin_fma(-x, hi0, (REAL)1) - x * lo0)) * (REAL)0.5;
    const REAL hi = r * r, lo = __builtin_fma(r, r, -hi);
    const REAL d = __builtin_fma(-x, hi, (REAL)1) - x * lo;
    uint64_t u;
    memcpy(&u, &r, sizeof u);
    const uint64_t ex = (u >> 52) & 0x7ff;
    if (sizeof(REAL) == 8 && x > 0 && ex > 0 && ex < 0x7fe &&
        __builtin_fabs(d) * (REAL)0.5 * (REAL)((u & 0xfffffffffffffull) | (1ull << 52)) <= (REAL)0.45)
        return r;
    return POW(x, (REAL)-0.5);
}
#else
static inline REAL FN(recip_pow)(REAL x) { return POW(x, (REAL)-1); }
static inline REAL FN(rsqrt_pow)(REAL x) { return POW(x, (REAL)-0.5); }
#endif
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
MG_HOT void FN(encoder_forward)(REAL *out,            /* (N, C) */
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

MG_HOT void FN(encoder_backward)(REAL *dwte,           /* (V, C) */
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
MG_HOT static void FN(rmsnorm_forward_rows)(REAL *out, REAL *scale, const REAL *inp, int n0, int n1,
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

MG_HOT static void FN(rmsnorm_backward_rows)(REAL *dinp, const REAL *dout, const REAL *inp,
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

/* (the row loops are below the vector helpers, see rmsnorm_forward_rows) */

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

/* One block of nb <= NBV tokens (rows n0 ..) of the token-lane product with
 * vector type VT of NBV lanes; xT (C, NBV) scratch.  Instantiated for full
 * registers and for half registers (a short block, e.g. one 6-token name,
 * fills 6 of 8 half-register lanes instead of 6 of 16: on CPUs that split a
 * 512-bit operation in two 256-bit halves that is twice the throughput).
 * The same IEEE operations per output either way. */
#define MG_DEFINE_MMF_BLOCK(NAME, VT, NBV)                                                      \
MG_HOT static void NAME(REAL *out, const REAL *inp, const REAL *weight, int C, int OC,          \
                        int n0, int nb, REAL *xT) {                                             \
    for (int i = 0; i < C; i++)                                                                 \
        for (int l = 0; l < (NBV); l++)                                                         \
            xT[(size_t)i * (NBV) + l] = l < nb ? inp[(size_t)(n0 + l) * C + i] : (REAL)0;       \
    int oc = 0;                                                                                 \
    for (; oc + 8 <= OC; oc += 8) {  /* eight independent sums hide the add latency */          \
        VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0}, s7 = {0};     \
        const REAL *w0 = weight + (size_t)oc * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;     \
        const REAL *w4 = w3 + C, *w5 = w4 + C, *w6 = w5 + C, *w7 = w6 + C;                      \
        for (int i = 0; i < C; i++) {                                                           \
            const VT x = *(const VT *)(xT + (size_t)i * (NBV));                                 \
            s0 += w0[i] * x; s1 += w1[i] * x; s2 += w2[i] * x; s3 += w3[i] * x;                 \
            s4 += w4[i] * x; s5 += w5[i] * x; s6 += w6[i] * x; s7 += w7[i] * x;                 \
        }                                                                                       \
        for (int l = 0; l < nb; l++) {                                                          \
            REAL *o = out + (size_t)(n0 + l) * OC + oc;                                         \
            o[0] = s0[l]; o[1] = s1[l]; o[2] = s2[l]; o[3] = s3[l];                             \
            o[4] = s4[l]; o[5] = s5[l]; o[6] = s6[l]; o[7] = s7[l];                             \
        }                                                                                       \
    }                                                                                           \
    for (; oc + 4 <= OC; oc += 4) {                                                             \
        VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                              \
        const REAL *w0 = weight + (size_t)oc * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;     \
        for (int i = 0; i < C; i++) {                                                           \
            const VT x = *(const VT *)(xT + (size_t)i * (NBV));                                 \
            s0 += w0[i] * x; s1 += w1[i] * x; s2 += w2[i] * x; s3 += w3[i] * x;                 \
        }                                                                                       \
        for (int l = 0; l < nb; l++) {                                                          \
            REAL *o = out + (size_t)(n0 + l) * OC + oc;                                         \
            o[0] = s0[l]; o[1] = s1[l]; o[2] = s2[l]; o[3] = s3[l];                             \
        }                                                                                       \
    }                                                                                           \
    for (; oc < OC; oc++) {                                                                     \
        VT s0 = {0};                                                                            \
        const REAL *w0 = weight + (size_t)oc * C;                                               \
        for (int i = 0; i < C; i++) s0 += w0[i] * *(const VT *)(xT + (size_t)i * (NBV));        \
        for (int l = 0; l < nb; l++) out[(size_t)(n0 + l) * OC + oc] = s0[l];                   \
    }                                                                                           \
}

typedef REAL FN(hvec_t) __attribute__((vector_size(32), aligned(sizeof(REAL))));
MG_DEFINE_MMF_BLOCK(FN(mmf_block_full), FN(uvec_t), MG_LANES)
MG_DEFINE_MMF_BLOCK(FN(mmf_block_half), FN(hvec_t), MG_LANES / 2)
#undef MG_DEFINE_MMF_BLOCK

static void FN(matmul_forward_blocks)(REAL *out, const REAL *inp, const REAL *weight,
                                      int N, int C, int OC, int b0, int b1,
                                      REAL *xT /* (C, MG_LANES) scratch */) {
    for (int b = b0; b < b1; b++) {
        const int n0 = b * MG_LANES, nb = N - n0 < MG_LANES ? N - n0 : MG_LANES;
        if (nb <= MG_LANES / 2) FN(mmf_block_half)(out, inp, weight, C, OC, n0, nb, xT);
        else FN(mmf_block_full)(out, inp, weight, C, OC, n0, nb, xT);
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
    VEC acc[8][4];   /* RT <= 8, GV <= 4, RT * GV <= 16 */
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
        default: for (; n + 8 <= n1; n += 8) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 8, 1);
                for (; n + 4 <= n1; n += 4) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 4, 1);
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
 * Tiles of RT rows x IV registers of columns (constants after inlining):
 * RT * IV independent sums hide the add latency even for a lone row. */
static inline __attribute__((always_inline)) void FN(dinp_tile)(REAL *dinp, const REAL *dout,
        const REAL *weight, int C, int OC, int n, int i, const int RT, const int IV) {
    enum { NB = MG_LANES };
    VEC acc[8][4];   /* RT <= 8, IV <= 4, RT * IV <= 16 */
    for (int r = 0; r < RT; r++)
        for (int v = 0; v < IV; v++) acc[r][v] = LOADU(dinp + (size_t)(n + r) * C + i + v * NB);
    const REAL *g = dout + (size_t)n * OC;
    for (int o = 0; o < OC; o++) {
        VEC w[4];
        for (int v = 0; v < IV; v++) w[v] = LOADU(weight + (size_t)o * C + i + v * NB);
        for (int r = 0; r < RT; r++) {
            const REAL gr = g[(size_t)r * OC + o];
            for (int v = 0; v < IV; v++) acc[r][v] += gr * w[v];
        }
    }
    for (int r = 0; r < RT; r++)
        for (int v = 0; v < IV; v++) STOREU(dinp + (size_t)(n + r) * C + i + v * NB, acc[r][v]);
}

/* rows n .. n+RT-1, every full register of columns */
static inline __attribute__((always_inline)) void FN(dinp_rows)(REAL *dinp, const REAL *dout,
        const REAL *weight, int C, int OC, int n, const int RT) {
    enum { NB = MG_LANES };
    int i = 0;
    if (RT == 8) {   /* (only used when the columns are one register) */
        FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 1);
        return;
    }
    if (RT >= 3) {
        for (; i + 2 * NB <= C; i += 2 * NB) FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 2);
    } else {
        for (; i + 4 * NB <= C; i += 4 * NB) FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 4);
        for (; i + 2 * NB <= C; i += 2 * NB) FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 2);
    }
    for (; i + NB <= C; i += NB) FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 1);
    for (; i < C; i++)   /* columns past the last full register */
        for (int r = 0; r < RT; r++) {
            REAL a = dinp[(size_t)(n + r) * C + i];
            for (int o = 0; o < OC; o++) a += dout[(size_t)(n + r) * OC + o] * weight[(size_t)o * C + i];
            dinp[(size_t)(n + r) * C + i] = a;
        }
}

MG_HOT static void FN(matmul_backward_dinp)(REAL *dinp, const REAL *dout, const REAL *weight,
                                            int C, int OC, int n0, int n1) {
    int n = n0;
    if (C == MG_LANES)  /* one register of columns: eight rows at a time */
        for (; n + 8 <= n1; n += 8) FN(dinp_rows)(dinp, dout, weight, C, OC, n, 8);
    for (; n + 4 <= n1; n += 4) FN(dinp_rows)(dinp, dout, weight, C, OC, n, 4);
    switch (n1 - n) {
    case 3: FN(dinp_rows)(dinp, dout, weight, C, OC, n, 3); break;
    case 2: FN(dinp_rows)(dinp, dout, weight, C, OC, n, 2); break;
    case 1: FN(dinp_rows)(dinp, dout, weight, C, OC, n, 1); break;
    default: break;
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
 * With A != NULL (the fused training step) the gradient is not stored: the
 * gradient of 4 rows x up to MG_DW_CHUNK columns (sums from 0, the values the
 * accumulation into a zeroed dweight gives) goes to a stack buffer and is
 * then applied by Adam to weight, A->m, A->v in one streaming pass (long
 * enough for the square root / division latencies to overlap). */
#define MG_DW_CHUNK 256

/* RT rows (o..) x IV registers of columns (i..) of the weight gradient into
 * dst (row stride ldd), starting from dst's values (init) or from 0. */
static inline __attribute__((always_inline)) void FN(dw_tile)(REAL *dst, int ldd, int init,
        const REAL *dout, const REAL *inp, int N, int C, int OC, int o, int i,
        const int RT, const int IV) {
    enum { NB = MG_LANES };
    VEC acc[4][4];
    for (int r = 0; r < RT; r++)
        for (int v = 0; v < IV; v++)
            acc[r][v] = init ? LOADU(dst + (size_t)r * ldd + v * NB) : (VEC){0};
    for (int n = 0; n < N; n++) {
        VEC x[4];
        for (int v = 0; v < IV; v++) x[v] = LOADU(inp + (size_t)n * C + i + v * NB);
        const REAL *g = dout + (size_t)n * OC + o;
        for (int r = 0; r < RT; r++) {
            const REAL gr = g[r];
            for (int v = 0; v < IV; v++) acc[r][v] += gr * x[v];
        }
    }
    for (int r = 0; r < RT; r++)
        for (int v = 0; v < IV; v++) STOREU(dst + (size_t)r * ldd + v * NB, acc[r][v]);
}

/* rows o .. o+RT-1, columns c0 .. c0+cl-1 into dst (RT, ldd) */
static inline __attribute__((always_inline)) void FN(dw_rows)(REAL *dst, int ldd, int init,
        const REAL *dout, const REAL *inp, int N, int C, int OC, int o, int c0, int cl,
        const int RT) {
    enum { NB = MG_LANES };
    int j = 0;   /* column offset inside the chunk */
    if (RT == 4) {
        for (; j + 2 * NB <= cl; j += 2 * NB)
            FN(dw_tile)(dst + j, ldd, init, dout, inp, N, C, OC, o, c0 + j, RT, 2);
    } else {
        for (; j + 4 * NB <= cl; j += 4 * NB)
            FN(dw_tile)(dst + j, ldd, init, dout, inp, N, C, OC, o, c0 + j, RT, 4);
        for (; j + 2 * NB <= cl; j += 2 * NB)
            FN(dw_tile)(dst + j, ldd, init, dout, inp, N, C, OC, o, c0 + j, RT, 2);
    }
    for (; j + NB <= cl; j += NB)
        FN(dw_tile)(dst + j, ldd, init, dout, inp, N, C, OC, o, c0 + j, RT, 1);
    for (; j < cl; j++)   /* columns past the last full register */
        for (int r = 0; r < RT; r++) {
            REAL acc = init ? dst[(size_t)r * ldd + j] : (REAL)0;
            for (int n = 0; n < N; n++)
                acc += dout[(size_t)n * OC + o + r] * inp[(size_t)n * C + c0 + j];
            dst[(size_t)r * ldd + j] = acc;
        }
}

MG_HOT static void FN(matmul_backward_dweight)(REAL *dweight, const REAL *dout, const REAL *inp,
                                               int N, int C, int OC, int o0, int o1,
                                               REAL *weight, const FN(adam_ctx_t) *A) {
    REAL gbuf[4 * MG_DW_CHUNK];
    /* a local copy: the constants cannot alias the moments being stored */
    FN(adam_ctx_t) Aloc;
    if (A != NULL) { Aloc = *A; A = &Aloc; }
    for (int o = o0; o < o1; o += 4) {
        const int R = o1 - o < 4 ? o1 - o : 4;
        for (int c0 = 0; c0 < C; c0 += MG_DW_CHUNK) {
            const int cl = C - c0 < MG_DW_CHUNK ? C - c0 : MG_DW_CHUNK;
            REAL *dst = A != NULL ? gbuf : dweight + (size_t)o * C + c0;
            const int ldd = A != NULL ? cl : C, init = A == NULL;
            switch (R) {
            case 4: FN(dw_rows)(dst, ldd, init, dout, inp, N, C, OC, o, c0, cl, 4); break;
            case 3: FN(dw_rows)(dst, ldd, init, dout, inp, N, C, OC, o, c0, cl, 3); break;
            case 2: FN(dw_rows)(dst, ldd, init, dout, inp, N, C, OC, o, c0, cl, 2); break;
            default: FN(dw_rows)(dst, ldd, init, dout, inp, N, C, OC, o, c0, cl, 1); break;
            }
            if (A == NULL) continue;
            if (cl == C) {  /* the R rows are contiguous in the parameters, as in gbuf */
                const size_t at = (size_t)o * C;
                FN(adam_span)(weight + at, A->m + at, A->v + at, gbuf, R * C, A);
            } else {
                for (int r = 0; r < R; r++) {
                    const size_t at = (size_t)(o + r) * C + c0;
                    FN(adam_span)(weight + at, A->m + at, A->v + at, gbuf + (size_t)r * cl, cl, A);
                }
            }
        }
    }
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

/* ---- attention with lanes over channels: for a query row i and key t, one
 * product q[i][c0 : c0 + NB] * k[t][c0 : c0 + NB] holds the terms of NB / HS
 * heads at once (heads never straddle a register: HS divides NB, NB divides
 * C), and sums within each group of HS lanes give all their scores.  Every
 * register of channels is an independent attention problem over its heads.
 * This fills the lanes for short documents and small heads, where the
 * query-lane kernels above leave most lanes idle and pay a per-head setup.
 *
 * Exactness of the forward (float64 bit-identical to attention_forward_rows):
 * - score: the reference's sequential ((0 + a0) + a1) + ... + a_{HS-1}, done
 *   as HS - 1 shifted adds in order (lane g*HS of ((0 + a) + a<<1) + a<<2 ...
 *   is the head's sum; not a tree), then broadcast over the head's lanes, so
 *   every lane of a group carries its head's score, and multiplied by scale;
 * - max, sum of exps and the output sums run over t from 0 in order, lane by
 *   lane, the same scalar operations as the reference (a select for the max);
 * - float64: exp and the reciprocal are the libm EXP / RECIP, once per head
 *   (not per lane); float32 uses the vector exp (any order is allowed there).
 */
#define MG_ATT_LANES_MAX_KEYS 64   /* scratch (keys, NB) on the stack */
#define MG_ATT_SEL(m, a, b) ((VEC)(((FN(ivec_t))(a) & (m)) | ((FN(ivec_t))(b) & ~(m))))

/* 1 if the lanes-over-channels kernels cover this shape with nk keys. */
static int FN(att_lanes_ok)(int C, int NH, int nk) {
    const int HS = C / NH;
    return HS >= 1 && MG_LANES % HS == 0 && C % MG_LANES == 0 && nk <= MG_ATT_LANES_MAX_KEYS;
}

/* (helpers in place, by pointer, so no vector-argument ABI is involved; the
 * shifts are literal constants at every call, so after inlining each mask is
 * a constant and every clone picks its own fixed permutation) */
/* *sp += a shifted down by j lanes: x[l + j] in lane l (indices modulo NB: the
 * lanes that wrap are never read) */
static inline __attribute__((always_inline)) void FN(shift_add)(VEC *sp, const VEC *ap,
                                                                const int j) {
    enum { NB = MG_LANES };
    FN(ivec_t) m;
#pragma GCC unroll 16
    for (int l = 0; l < NB; l++) m[l] = (l + j) & (NB - 1);
    *sp = *sp + __builtin_shuffle(*ap, m);
}

/* *sp = the sequential sum over each group of HS lanes of *ap, in the group's
 * first lane: (((0 + a[g]) + a[g + 1]) + a[g + 2]) ..., the reference's order:
 * adds of a shifted by 1, 2, .., HS - 1 lanes, in that order (not a tree) */
static inline __attribute__((always_inline)) void FN(group_sum_seq)(VEC *sp, const VEC *ap,
                                                                    const int HS) {
    const VEC zero = {0};
    *sp = zero + *ap;
    if (HS > 1) FN(shift_add)(sp, ap, 1);
    if (HS > 2) FN(shift_add)(sp, ap, 2);
    if (HS > 3) FN(shift_add)(sp, ap, 3);
    if (HS > 4) FN(shift_add)(sp, ap, 4);
    if (HS > 5) FN(shift_add)(sp, ap, 5);
    if (HS > 6) FN(shift_add)(sp, ap, 6);
    if (HS > 7) FN(shift_add)(sp, ap, 7);
    if (HS > 8) FN(shift_add)(sp, ap, 8);
    if (HS > 9) FN(shift_add)(sp, ap, 9);
    if (HS > 10) FN(shift_add)(sp, ap, 10);
    if (HS > 11) FN(shift_add)(sp, ap, 11);
    if (HS > 12) FN(shift_add)(sp, ap, 12);
    if (HS > 13) FN(shift_add)(sp, ap, 13);
    if (HS > 14) FN(shift_add)(sp, ap, 14);
    if (HS > 15) FN(shift_add)(sp, ap, 15);
}

/* lane g*HS (the first of its group) copied to every lane of the group */
static inline __attribute__((always_inline)) void FN(group_bcast)(VEC *xp, const int HS) {
    enum { NB = MG_LANES };
    if (HS == 1) return;
    FN(ivec_t) m;
#pragma GCC unroll 16
    for (int l = 0; l < NB; l++) m[l] = l / HS * HS;
    *xp = __builtin_shuffle(*xp, m);
}

/* *xp += *xp with lanes l and l ^ s swapped */
static inline __attribute__((always_inline)) void FN(xor_add)(VEC *xp, const int s) {
    enum { NB = MG_LANES };
    FN(ivec_t) m;
#pragma GCC unroll 16
    for (int l = 0; l < NB; l++) m[l] = l ^ s;
    *xp = *xp + __builtin_shuffle(*xp, m);
}

/* the sum over each group of HS lanes in every lane of the group, as a
 * butterfly (a fixed tree; a + b == b + a, so all lanes of a group agree) */
static inline __attribute__((always_inline)) void FN(group_sum_tree)(VEC *xp, const int HS) {
    if (HS > 1) FN(xor_add)(xp, 1);
    if (HS > 2) FN(xor_add)(xp, 2);
    if (HS > 4) FN(xor_add)(xp, 4);
    if (HS > 8) FN(xor_add)(xp, 8);
}

/* ------------------------------------------------- RMSNorm row loops */
/* Float64: each row's sums in the SPEC's order (sequential), so the forward
 * is bit-identical to the reference.  Float32 (no bit-parity requirement),
 * when C is a multiple of the register: the sums as vector partial sums and
 * a butterfly, the row update as whole registers. */
MG_HOT static void FN(rmsnorm_forward_rows)(REAL *out, REAL *scale, const REAL *inp, int n0, int n1,
                                    int C, REAL inv_c) {
#ifdef MG_FAST_RECIP
    if (C % MG_LANES == 0) {
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
        return;
    }
#endif
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

MG_HOT static void FN(rmsnorm_backward_rows)(REAL *dinp, const REAL *dout, const REAL *inp,
                                     const REAL *scale, int n0, int n1, int C, REAL inv_c) {
    for (int n = n0; n < n1; n++) {
        const REAL *x = inp + (size_t)n * C;
        const REAL *d = dout + (size_t)n * C;
        REAL *dx = dinp + (size_t)n * C;
        const REAL s = scale[n];
        REAL dscale = 0;
#ifdef MG_FAST_RECIP
        if (C % MG_LANES == 0) {
            VEC acc = {0};
            for (int i = 0; i < C; i += MG_LANES) acc += LOADU(d + i) * LOADU(x + i);
            FN(group_sum_tree)(&acc, MG_LANES);
            dscale = acc[0];
        } else
#endif
        for (int i = 0; i < C; i++) dscale += d[i] * x[i];
        /* d scale / d ms = -0.5 (ms + eps)^-1.5 = -0.5 s^3 ; d ms / d x_i = 2 x_i / C */
        const REAL dms = (REAL)-0.5 * (s * s * s) * dscale;
        const REAL dsq = dms * inv_c;
        for (int i = 0; i < C; i++) dx[i] += d[i] * s + (x[i] * dsq + x[i] * dsq);
    }
}

/* Query rows 0 .. N-1 at positions p0 + i, keys 0 .. p0 + i; HS a constant. */
static inline __attribute__((always_inline)) void FN(att_fwd_lanes_body)(
        REAL *out, REAL *att, const REAL *q, const REAL *k, const REAL *v, int N, int p0,
        int C, int NH, int T, REAL scale, REAL *S /* (p0 + N, NB) scratch */, const int HS) {
    enum { NB = MG_LANES };
    const int G = NB / HS;   /* heads per register */
    const VEC zero = {0};
    for (int i = 0; i < N; i++) {
        const int nk = p0 + i + 1;
        for (int c0 = 0; c0 < C; c0 += NB) {
            const int h0 = c0 / HS;
            const VEC qv = LOADU(q + (size_t)i * C + c0);
            VEC M = zero;
            for (int t = 0; t < nk; t++) {
                const VEC a = qv * LOADU(k + (size_t)t * C + c0);
                VEC s;
                FN(group_sum_seq)(&s, &a, HS);
                FN(group_bcast)(&s, HS);
                s = s * scale;
                STOREU(S + (size_t)t * NB, s);
                /* (one comparison per select: GCC 12 scalarises reused masks) */
                M = t == 0 ? s : MG_ATT_SEL(s > M, s, M);
            }
            VEC total = zero;
#ifdef MG_FAST_RECIP
            if (HS > 1) {
                /* a register holds each head's score HS times: exponentiate HS
                 * keys' scores in one register (lane j of each head group from
                 * key t0 + j), then spread them back; vexp is lane-wise, so
                 * every weight has the bits it had one key per register */
                FN(ivec_t) lane;
                for (int l = 0; l < NB; l++) lane[l] = l;
                for (int t0 = 0; t0 < nk; t0 += HS) {
                    VEC pk = LOADU(S + (size_t)t0 * NB);
                    for (int j = 1; j < HS; j++) {
                        const VEC sj = t0 + j < nk ? LOADU(S + (size_t)(t0 + j) * NB) : M;
                        pk = MG_ATT_SEL(lane % HS == j, sj, pk);
                    }
                    pk = pk - M;
                    FN(vexp)(&pk);
                    for (int j = 0; j < HS && t0 + j < nk; j++) {
                        FN(ivec_t) idx;
                        for (int l = 0; l < NB; l++) idx[l] = l / HS * HS + j;
                        const VEC e = __builtin_shuffle(pk, idx);
                        STOREU(S + (size_t)(t0 + j) * NB, e);
                        total = total + e;
                    }
                }
            } else
#endif
            for (int t = 0; t < nk; t++) {
                VEC e = LOADU(S + (size_t)t * NB) - M;
#ifdef MG_FAST_RECIP
                FN(vexp)(&e);
#else
                REAL eb[NB];
                STOREU(eb, e);
                for (int g = 0; g < G; g++) {
                    const REAL x = EXP(eb[g * HS]);
                    for (int j = 0; j < HS; j++) eb[g * HS + j] = x;
                }
                e = LOADU(eb);
#endif
                STOREU(S + (size_t)t * NB, e);
                total = total + e;
            }
            VEC inv;
#ifdef MG_FAST_RECIP
            inv = (REAL)1 / total;
#else
            {
                REAL ib[NB] = {0};   /* (every lane is set below; this quiets -Wmaybe-uninitialized) */
                for (int g = 0; g < G; g++) {
                    const REAL x = RECIP(total[g * HS]);
                    for (int j = 0; j < HS; j++) ib[g * HS + j] = x;
                }
                inv = LOADU(ib);
            }
#endif
            VEC o = zero;
            REAL *w = att + ((size_t)i * NH + h0) * T;
            for (int t = 0; t < nk; t++) {
                const VEC wv = LOADU(S + (size_t)t * NB) * inv;
                for (int g = 0; g < G; g++) w[(size_t)g * T + t] = wv[g * HS];
                o = o + wv * LOADU(v + (size_t)t * C + c0);
            }
            STOREU(out + (size_t)i * C + c0, o);
        }
    }
}

MG_HOT static void FN(attention_forward_lanes)(REAL *out, REAL *att, const REAL *q,
                                               const REAL *k, const REAL *v, int N, int p0,
                                               int C, int NH, int T, REAL scale) {
    REAL S[(size_t)MG_ATT_LANES_MAX_KEYS * MG_LANES];
    switch (C / NH) {
    case 1: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 1); break;
    case 2: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 2); break;
    case 4: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 4); break;
    case 8: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 8); break;
    default: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 16); break;
    }
}

/* Backward of attention_forward_lanes with p0 = 0 (any fixed order:
 * rounding-level; the per-head sums over channels are butterflies). */
static inline __attribute__((always_inline)) void FN(att_bwd_lanes_body)(
        REAL *dq, REAL *dk, REAL *dv, const REAL *dout, const REAL *att, const REAL *q,
        const REAL *k, const REAL *v, int N, int C, int NH, int T, REAL scale,
        REAL *W /* (N, NB) weights */, REAL *D /* (N, NB) dweights */, const int HS) {
    enum { NB = MG_LANES };
    const int G = NB / HS;
    const VEC zero = {0};
    FN(ivec_t) glane;
    for (int l = 0; l < NB; l++) glane[l] = l;
    for (int i = 0; i < N; i++) {
        for (int c0 = 0; c0 < C; c0 += NB) {
            const int h0 = c0 / HS;
            const REAL *w = att + ((size_t)i * NH + h0) * T;
            const VEC dov = LOADU(dout + (size_t)i * C + c0);
            const VEC qv = LOADU(q + (size_t)i * C + c0);
            VEC dot = zero;
            for (int t = 0; t <= i; t++) {
                /* the weights, each head's over its lanes (broadcasts and
                 * selects: no scalar stores read back as a vector) */
                VEC wv = zero + w[t];
                for (int g = 1; g < G; g++)
                    wv = MG_ATT_SEL(glane >= g * HS, zero + w[(size_t)g * T + t], wv);
                STOREU(W + (size_t)t * NB, wv);
                VEC g = dov * LOADU(v + (size_t)t * C + c0);
                FN(group_sum_tree)(&g, HS);
                STOREU(D + (size_t)t * NB, g);
                dot = dot + wv * g;
                REAL *dvt = dv + (size_t)t * C + c0;
                STOREU(dvt, LOADU(dvt) + wv * dov);
            }
            /* softmax: ds_t = w_t (dw_t - sum_u w_u dw_u) */
            VEC gq = zero;
            for (int t = 0; t <= i; t++) {
                const VEC ds = LOADU(W + (size_t)t * NB) * (LOADU(D + (size_t)t * NB) - dot) * scale;
                gq = gq + ds * LOADU(k + (size_t)t * C + c0);
                REAL *dkt = dk + (size_t)t * C + c0;
                STOREU(dkt, LOADU(dkt) + ds * qv);
            }
            REAL *dqi = dq + (size_t)i * C + c0;
            STOREU(dqi, LOADU(dqi) + gq);
        }
    }
}

MG_HOT static void FN(attention_backward_lanes)(REAL *dq, REAL *dk, REAL *dv, const REAL *dout,
                                                const REAL *att, const REAL *q, const REAL *k,
                                                const REAL *v, int N, int C, int NH, int T,
                                                REAL scale) {
    REAL W[(size_t)MG_ATT_LANES_MAX_KEYS * MG_LANES], D[(size_t)MG_ATT_LANES_MAX_KEYS * MG_LANES];
    switch (C / NH) {
    case 1: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 1); break;
    case 2: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 2); break;
    case 4: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 4); break;
    case 8: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 8); break;
    default: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 16); break;
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
    if (FN(att_lanes_ok)(C, NH, p0 + N)) {
        FN(attention_forward_lanes)(out, att, q, k, v, N, p0, C, NH, T, FN(att_scale)(C / NH));
        return;
    }
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
    if (FN(att_lanes_ok)(C, NH, N)) {
        FN(attention_backward_lanes)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T,
                                     FN(att_scale)(C / NH));
        return;
    }
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
MG_HOT void FN(relu_forward)(REAL *out, const REAL *inp, size_t n) {      /* (n), (n) */
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
MG_HOT void FN(residual_forward)(REAL *out, const REAL *inp1, const REAL *inp2, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = inp1[i] + inp2[i];
}

MG_HOT void FN(residual_backward)(REAL *dinp1, REAL *dinp2, const REAL *dout, size_t n) {
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
            VEC tot = {0};
            for (; i + NB <= V; i += NB) {
                VEC e = LOADU(z + i) - maxv;
                FN(vexp)(&e);
                STOREU(p + i, e);
                tot += e;
            }
            if (i < V && V >= NB) {
                /* the tail: the last full register of the row (overlapping the
                 * previous one; the overlapped lanes are recomputed with the
                 * same bits and left out of the sum), no scalar stores read
                 * back as a vector */
                VEC e = LOADU(z + V - NB) - maxv;
                FN(vexp)(&e);
                STOREU(p + V - NB, e);
                FN(ivec_t) lane;
                for (int l = 0; l < NB; l++) lane[l] = l;
                const FN(ivec_t) fresh = lane >= (NB - (V - i));
                tot += MG_VSEL(fresh, e, (VEC){0});
            } else if (i < V) {
                for (int l = 0; l < NB; l++) buf[l] = i + l < V ? z[i + l] - maxv : (REAL)-100;
                VEC e = LOADU(buf);
                FN(vexp)(&e);
                STOREU(buf, e);
                for (int l = 0; i + l < V; l++) p[i + l] = buf[l];
                for (int l = 0; i + l < V; l++) total += buf[l];
            }
            for (int l = 0; l < NB; l++) total += tot[l];
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

MG_HOT void FN(crossentropy_softmax_backward)(REAL *dlogits,          /* (N, V) */
                                       const REAL *dlosses,    /* (N) */
                                       const REAL *probs,      /* (N, V) */
                                       const int32_t *targets, /* (N) */
                                       int N, int V) {
    for (int n = 0; n < N; n++) {
        REAL *dz = dlogits + (size_t)n * V;
        const REAL *p = probs + (size_t)n * V;
        const REAL dl = dlosses[n];
        const int t = targets[n];
        /* (a select on the index, not a branch: vectorises) */
        for (int i = 0; i < V; i++) {
            const REAL onehot = i == t ? (REAL)1 : (REAL)0;
            dz[i] += dl * (p[i] - onehot);
        }
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
