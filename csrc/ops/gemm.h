/* gemm.h: C (M, N) = (acc ? C : 0) + A (M, K) @ B (K, N), packed, register-tiled,
 * cache-blocked (the BLIS design), for one dtype per inclusion.
 *
 * Include once per dtype after defining REAL (double or float) and FN(name)
 * (name##_f64 / name##_f32).  Every output element is ONE sequential sum over
 * k = 0..K-1 starting from c(i,j) (acc) or +0.0: s = s + a(i,k)*b(k,j), a separate
 * multiply and add in a -ffp-contract=off file (float64: bit-identical to the
 * naive loop), a fused multiply-add in a -ffp-contract=fast file (float32: the
 * same bits as fmaf in that order, on an FMA-capable clone).
 *
 * Structure: the output is cut into fixed tiles (gemm_num_tiles); a tile is
 * computed by one thread over all of K, in k blocks of KC that continue each
 * element's sum.  Per k block, the B block (KC x tile width) is packed into
 * NR-wide panels and A either is read in place (row-contiguous A) or packed into
 * MR-tall panels; a micro-kernel keeps an MR x NR tile of C in registers while it
 * walks k.  Results do not depend on the tiling or on the thread count.
 *
 * The float32 fusion needs the compiler's contraction (GCC: -O2 or more) and an
 * FMA target (the x86-64-v3/v4 clones); a target without FMA (the default clone)
 * computes a separate multiply and add. */
#ifndef MG_GEMM_COMMON_H
#define MG_GEMM_COMMON_H
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef MG_HOT
#define MG_HOT
#endif
/* smallest M*N*K that FN(gemm) splits across a team */
#ifndef MG_GEMM_MIN_PAR_WORK
#define MG_GEMM_MIN_PAR_WORK 4000000
#endif
#ifndef MG_GEMM_TEAM_SIZE
#define MG_GEMM_TEAM_SIZE() omp_get_max_threads()
#endif
/* fewest tiles of the gemm_num_tiles grid (so a caller's team of a few threads
 * has work to share; FN(gemm) picks its own grid: the bits do not depend on it) */
#ifndef MG_GEMM_MIN_TILES
#define MG_GEMM_MIN_TILES 4
#endif

/* the pack buffers' allocator (a NULL result: the slow unpacked loop) and
 * its release (the model's build: a per-thread buffer, nothing to free) */
#ifndef MG_GEMM_MALLOC
#define MG_GEMM_MALLOC(n) malloc(n)
#endif
#ifndef MG_GEMM_FREE
#define MG_GEMM_FREE(p) free(p)
#endif
#define MG_GEMM_INLINE static inline __attribute__((always_inline))
/* clang splits 64-byte vectors in two when the target prefers 256-bit ones
 * (-march=x86-64-v4 does) unless the function asks for 512 */
#if defined(__has_attribute)
#if __has_attribute(min_vector_width)
#define MG_GEMM_WIDE __attribute__((min_vector_width(512)))
#endif
#endif
#ifndef MG_GEMM_WIDE
#define MG_GEMM_WIDE
#endif
/* full unrolling of the register-tile loops (constant trip counts) */
#if defined(__clang__)
#define MG_GEMM_UNROLL _Pragma("clang loop unroll(full)")
#else
#define MG_GEMM_UNROLL _Pragma("GCC unroll 16")
#endif
/* Blocking for the current REAL and target.  Register tile MR x NR, NR = NV
 * vectors of MG_VBYTES (vbytes.h).  AVX-512 (32 registers): 6 x 4 vectors in
 * both dtypes (24 accumulators, 4 B vectors, a broadcast and, in float64, the
 * product); aarch64 (32 registers of 16 bytes): float32 14 x 2, float64 6 x 4.
 * 16 registers (AVX2, SSE2; BLIS's Haswell kernels): 6 x 2 vectors (12
 * accumulators, 2 B vectors, a broadcast and, in float64, the product).  KC:
 * the k block (the C tile is loaded and stored once per KC terms; the MR x KC
 * A panel stays in L1, the KC x NR B panel in L1 or L2).  MC: rows of A per
 * block (an MC x KC block of A, packed or not, stays in L2).  Output tiles: at
 * most TILE_M x TILE_N
 * (the thread-sharing unit; the B block KC x tile width is packed once per
 * tile and k block).  None of this changes a bit of the results. */
#include "../vbytes.h"
#if MG_VBYTES >= 64 || defined(__aarch64__)
/* 32 registers.  AVX-512, measured on Zen 4 (bench/c/gemm_bench, 256-wide
 * shapes, one thread, interleaved): float32 6 x 4 vectors with KC 256 beat 14
 * x 2 (geomean 93 vs 84 GFLOP/s) and, float64, KC 256 / MC 96 beat KC 128 / MC
 * 192 (37 vs 32): fewer broadcasts per product pair, the B panel streams from
 * L2.  aarch64 (16-byte registers) keeps 14 x 2 float32 and KC 128 float64. */
#ifndef MG_GEMM_MR_F32
#if MG_VBYTES >= 64
#define MG_GEMM_MR_F32 6
#define MG_GEMM_NV_F32 4
#else
#define MG_GEMM_MR_F32 14
#define MG_GEMM_NV_F32 2
#endif
#define MG_GEMM_KC_F32 256
#define MG_GEMM_MC_F32 252
#endif
#ifndef MG_GEMM_MR_F64
#define MG_GEMM_MR_F64 6
#define MG_GEMM_NV_F64 4
#if MG_VBYTES >= 64
#define MG_GEMM_KC_F64 256
#define MG_GEMM_MC_F64 96
#else
#define MG_GEMM_KC_F64 128
#define MG_GEMM_MC_F64 192
#endif
#endif
#else
#ifndef MG_GEMM_MR_F32
#define MG_GEMM_MR_F32 6
#define MG_GEMM_NV_F32 2
#define MG_GEMM_KC_F32 256
#define MG_GEMM_MC_F32 240
#endif
#ifndef MG_GEMM_MR_F64
#define MG_GEMM_MR_F64 6
#define MG_GEMM_NV_F64 2
#define MG_GEMM_KC_F64 256
#define MG_GEMM_MC_F64 120
#endif
#endif
#define MG_GEMM_TILE_M 1024
#define MG_GEMM_TILE_N 1024
#define MG_GEMM_W ((int)(MG_VBYTES / sizeof(REAL)))
#define MG_GEMM_F32 (sizeof(REAL) == 4)
#define MG_GEMM_NV ((int)(MG_GEMM_F32 ? MG_GEMM_NV_F32 : MG_GEMM_NV_F64))
#define MG_GEMM_NR (MG_GEMM_NV * MG_GEMM_W)
#define MG_GEMM_MR ((int)(MG_GEMM_F32 ? MG_GEMM_MR_F32 : MG_GEMM_MR_F64))
#define MG_GEMM_KC ((int)(MG_GEMM_F32 ? MG_GEMM_KC_F32 : MG_GEMM_KC_F64))
#define MG_GEMM_MC ((int)(MG_GEMM_F32 ? MG_GEMM_MC_F32 : MG_GEMM_MC_F64))

/* float64 on AVX-512 (x86-64, GCC or Clang): the micro-kernel's product
 * a(i,k) * b(k,:) is one vmulpd with the scalar as an embedded-broadcast memory
 * operand ({1to8}), not a vbroadcastsd to a register and a register multiply.
 * The same IEEE product (bits unchanged); on Zen 4 a 64-byte register
 * broadcast takes an FP pipe slot beside the multiplies and adds, the embedded
 * one does not (in-L1 6 x 4 probe: 44 -> 52 GFLOP/s, 56 the no-FMA peak).
 * -DMG_GEMM_EMBCAST_F64=0 turns it off. */
#ifndef MG_GEMM_EMBCAST_F64
#if MG_VBYTES == 64 && defined(__AVX512F__) && defined(__x86_64__) && defined(__GNUC__)
#define MG_GEMM_EMBCAST_F64 1
#else
#define MG_GEMM_EMBCAST_F64 0
#endif
#endif
#if MG_GEMM_EMBCAST_F64
#define MG_GEMM_MUL_BCAST_F64(p, bvec, aptr) \
    __asm__("vmulpd %1%{1to8%}, %2, %0" : "=v"(p) : "m"(*(const double *)(aptr)), "v"(bvec))
#endif

static inline int mg_gemm_cdiv(int a, int b) { return (a + b - 1) / b; }
static inline int mg_gemm_min(int a, int b) { return a < b ? a : b; }
#endif /* MG_GEMM_COMMON_H */

typedef REAL FN(gemm_v) __attribute__((vector_size(MG_VBYTES)));
typedef REAL FN(gemm_vu) __attribute__((vector_size(MG_VBYTES), aligned(sizeof(REAL))));

/* Tile grid: rows per tile *tm (a multiple of MR), columns per tile *tn (a
 * multiple of NR), *nrb x *ncb tiles numbered row by row.  Below min_tiles
 * tiles, the longer side of the tile is halved (a row split packs B's columns
 * once more, a column split A's rows: the smaller of the two). */
static void FN(gemm_grid)(int M, int N, int min_tiles, int *tm, int *tn, int *nrb, int *ncb) {
    int rb = mg_gemm_cdiv(M, MG_GEMM_TILE_M), cb = mg_gemm_cdiv(N, MG_GEMM_TILE_N);
    while (rb * cb < min_tiles) {
        int rows = M / rb, cols = N / cb;
        int can_r = rows >= 2 * 4 * MG_GEMM_MR, can_c = cols >= 2 * 2 * MG_GEMM_NR;
        if (can_r && (rows >= cols || !can_c)) rb *= 2;
        else if (can_c) cb *= 2;
        else break;
    }
    *tm = mg_gemm_cdiv(mg_gemm_cdiv(M, rb), MG_GEMM_MR) * MG_GEMM_MR;
    *tn = mg_gemm_cdiv(mg_gemm_cdiv(N, cb), MG_GEMM_NR) * MG_GEMM_NR;
    *nrb = mg_gemm_cdiv(M, *tm);
    *ncb = mg_gemm_cdiv(N, *tn);
}

int FN(gemm_num_tiles)(int M, int N) {
    if (M <= 0 || N <= 0) return 0;
    int tm, tn, nrb, ncb;
    FN(gemm_grid)(M, N, MG_GEMM_MIN_TILES, &tm, &tn, &nrb, &ncb);
    return nrb * ncb;
}

/* The micro-kernel: c (mr, NR) (row stride ldc) continues (load) or starts from
 * +0.0 with the kc terms a(i,k)*b(k,:), k in order.  a is a packed panel
 * a(i,k) = a[k*MR + i] (packed) or rows a(i,k) = a[i*rsa + k]; b is a packed
 * (kc, NR) panel, 64-byte aligned.  mr, packed: constants after inlining. */
MG_GEMM_INLINE void FN(gemm_ukr)(REAL *c, int ldc, const REAL *a, int rsa, const REAL *b,
                                 int kc, const int mr, const int packed, int load) {
    FN(gemm_v) acc[MG_GEMM_F32 ? MG_GEMM_MR_F32 : MG_GEMM_MR_F64][MG_GEMM_F32 ? MG_GEMM_NV_F32 : MG_GEMM_NV_F64];
    if (load) {
MG_GEMM_UNROLL
        for (int i = 0; i < mr; i++)
MG_GEMM_UNROLL
            for (int j = 0; j < MG_GEMM_NV; j++)
                acc[i][j] = *(const FN(gemm_vu) *)(c + (size_t)i * ldc + j * MG_GEMM_W);
    } else {
MG_GEMM_UNROLL
        for (int i = 0; i < mr; i++)
MG_GEMM_UNROLL
            for (int j = 0; j < MG_GEMM_NV; j++) acc[i][j] = (FN(gemm_v)){0};
    }
    for (int k = 0; k < kc; k++) {
        const FN(gemm_v) *bk = (const FN(gemm_v) *)(b + (size_t)k * MG_GEMM_NR);
        FN(gemm_v) bv[MG_GEMM_NV];
MG_GEMM_UNROLL
        for (int j = 0; j < MG_GEMM_NV; j++) bv[j] = bk[j];
MG_GEMM_UNROLL
        for (int i = 0; i < mr; i++) {
            const REAL *aik = packed ? a + k * MG_GEMM_MR + i : a + (size_t)i * rsa + k;
#if MG_GEMM_EMBCAST_F64
            if (!MG_GEMM_F32) {
MG_GEMM_UNROLL
                for (int j = 0; j < MG_GEMM_NV; j++) {
                    FN(gemm_v) p;
                    MG_GEMM_MUL_BCAST_F64(p, bv[j], aik);
                    acc[i][j] = acc[i][j] + p;
                }
                continue;
            }
#endif
            REAL ai = *aik;
MG_GEMM_UNROLL
            for (int j = 0; j < MG_GEMM_NV; j++) acc[i][j] = acc[i][j] + ai * bv[j];
        }
    }
MG_GEMM_UNROLL
    for (int i = 0; i < mr; i++)
MG_GEMM_UNROLL
        for (int j = 0; j < MG_GEMM_NV; j++)
            *(FN(gemm_vu) *)(c + (size_t)i * ldc + j * MG_GEMM_W) = acc[i][j];
}

/* Rows 0..mr-1 (any mr >= 1) of one micro-tile, in pieces of MR, 8, 4, 2, 1 rows. */
MG_HOT MG_GEMM_WIDE static void FN(gemm_ukr_rows)(REAL *c, int ldc, const REAL *a, int rsa, const REAL *b,
                                     int kc, int mr, int packed, int load) {
    while (mr > 0) {
        int p = mr >= MG_GEMM_MR ? MG_GEMM_MR : mr >= 8 ? 8 : mr >= 4 ? 4 : mr >= 2 ? 2 : 1;
        if (packed) {
            if (p == MG_GEMM_MR) FN(gemm_ukr)(c, ldc, a, rsa, b, kc, MG_GEMM_MR, 1, load);
            else if (p == 8) FN(gemm_ukr)(c, ldc, a, rsa, b, kc, 8, 1, load);
            else if (p == 4) FN(gemm_ukr)(c, ldc, a, rsa, b, kc, 4, 1, load);
            else if (p == 2) FN(gemm_ukr)(c, ldc, a, rsa, b, kc, 2, 1, load);
            else FN(gemm_ukr)(c, ldc, a, rsa, b, kc, 1, 1, load);
            a += p;
        } else {
            if (p == MG_GEMM_MR) FN(gemm_ukr)(c, ldc, a, rsa, b, kc, MG_GEMM_MR, 0, load);
            else if (p == 8) FN(gemm_ukr)(c, ldc, a, rsa, b, kc, 8, 0, load);
            else if (p == 4) FN(gemm_ukr)(c, ldc, a, rsa, b, kc, 4, 0, load);
            else if (p == 2) FN(gemm_ukr)(c, ldc, a, rsa, b, kc, 2, 0, load);
            else FN(gemm_ukr)(c, ldc, a, rsa, b, kc, 1, 0, load);
            a += (size_t)p * rsa;
        }
        c += (size_t)p * ldc;
        mr -= p;
    }
}

/* Pack b(k, j), k < kc, j < n into NR-wide panels bp[j/NR][k][j%NR], zero-padded.
 * Rows of B (csB == 1) are read row by row, columns (rsB == 1) column by column,
 * one stream at a time with the next one prefetched. */
MG_HOT MG_GEMM_WIDE static void FN(gemm_pack_b)(REAL *bp,        /* (cdiv(n, NR), kc, NR) */
                                   const REAL *B,   /* b(k,j) = B[k*rsB + j*csB] */
                                   int rsB, int csB, int kc, int n) {
    int nfull = n / MG_GEMM_NR * MG_GEMM_NR, nr = n - nfull;
    REAL *edge = bp + (size_t)nfull * kc;   /* the last, partial panel */
    if (nr) memset(edge, 0, sizeof(REAL) * kc * MG_GEMM_NR);
    if (csB == 1) {
        for (int k = 0; k < kc; k++) {
            const REAL *bk = B + (size_t)k * rsB;
            if (k + 2 < kc)
                for (int j = 0; j < n; j += MG_GEMM_W) __builtin_prefetch(bk + 2 * (size_t)rsB + j);
            for (int j0 = 0; j0 < nfull; j0 += MG_GEMM_NR)
MG_GEMM_UNROLL
                for (int j = 0; j < MG_GEMM_NV; j++)
                    ((FN(gemm_v) *)(bp + (size_t)j0 * kc + (size_t)k * MG_GEMM_NR))[j] =
                        ((const FN(gemm_vu) *)(bk + j0))[j];
            if (nr) memcpy(edge + (size_t)k * MG_GEMM_NR, bk + nfull, sizeof(REAL) * nr);
        }
    } else {
        int j = 0;
#if defined(MG_HAVE_SHUFFLE) && MG_HAVE_SHUFFLE
        /* (the model's build, GCC: simd.h's in-register transpose) columns
         * contiguous in k: W x W blocks, W loads, a transpose, W stores */
        if (rsB == 1 && MG_LANES == MG_GEMM_W) {
            const int kfull = kc / MG_GEMM_W * MG_GEMM_W;
            for (; j + MG_GEMM_W <= n; j += MG_GEMM_W) {
                REAL *dst = bp + (size_t)(j / MG_GEMM_NR) * MG_GEMM_NR * kc + j % MG_GEMM_NR;
                const REAL *bj = B + (size_t)j * csB;
                for (int k0 = 0; k0 < kfull; k0 += MG_GEMM_W) {
                    VEC r[MG_LANES];
                    MG_UNROLL
                    for (int l = 0; l < MG_LANES; l++) r[l] = LOADU(bj + (size_t)l * csB + k0);
                    FN(vtranspose)(r);
                    MG_UNROLL
                    for (int l = 0; l < MG_LANES; l++) STOREU(dst + (size_t)(k0 + l) * MG_GEMM_NR, r[l]);
                }
                for (int l = 0; l < MG_GEMM_W; l++)
                    for (int k = kfull; k < kc; k++)
                        dst[(size_t)k * MG_GEMM_NR + l] = bj[(size_t)l * csB + k];
            }
        }
#endif
        for (; j < n; j++) {
            const REAL *bj = B + (size_t)j * csB;
            REAL *dst = bp + (size_t)(j / MG_GEMM_NR) * MG_GEMM_NR * kc + j % MG_GEMM_NR;
            if (rsB == 1 && j + 1 < n)
                for (int k = 0; k < kc; k += MG_GEMM_W) __builtin_prefetch(bj + csB + k);
            for (int k = 0; k < kc; k++) dst[(size_t)k * MG_GEMM_NR] = bj[(size_t)k * rsB];
        }
    }
}

/* Pack a(i, k), i < m, k < kc into MR-tall panels ap[i/MR][k][i%MR], the same
 * way (k by k for rsA == 1, row by row otherwise). */
MG_HOT MG_GEMM_WIDE static void FN(gemm_pack_a)(REAL *ap,        /* (cdiv(m, MR), kc, MR) */
                                   const REAL *A,   /* a(i,k) = A[i*rsA + k*csA] */
                                   int rsA, int csA, int m, int kc) {
    int mfull = m / MG_GEMM_MR * MG_GEMM_MR;
    if (rsA == 1) {
        for (int k = 0; k < kc; k++) {
            const REAL *ak = A + (size_t)k * csA;
            if (k + 2 < kc)
                for (int i = 0; i < m; i += MG_GEMM_W) __builtin_prefetch(ak + 2 * (size_t)csA + i);
            for (int i0 = 0; i0 < mfull; i0 += MG_GEMM_MR)
                memcpy(ap + (size_t)i0 * kc + (size_t)k * MG_GEMM_MR, ak + i0, sizeof(REAL) * MG_GEMM_MR);
            for (int i = mfull; i < m; i++)
                ap[(size_t)mfull * kc + (size_t)k * MG_GEMM_MR + i - mfull] = ak[i];
        }
    } else {
        for (int i = 0; i < m; i++) {
            const REAL *ai = A + (size_t)i * rsA;
            REAL *dst = ap + (size_t)(i / MG_GEMM_MR) * MG_GEMM_MR * kc + i % MG_GEMM_MR;
            if (csA == 1 && i + 1 < m)
                for (int k = 0; k < kc; k += MG_GEMM_W) __builtin_prefetch(ai + rsA + k);
            for (int k = 0; k < kc; k++) dst[(size_t)k * MG_GEMM_MR] = ai[(size_t)k * csA];
        }
    }
}

/* The unpacked loop, for when a pack buffer cannot be had: rows i0..i1-1,
 * columns j0..j1-1, each element's sum in k order (slow, correct).  k runs
 * outside j, so a vectorized j loop multiply-adds element by element, fused
 * exactly when the kernel's are (MG_HOT: the same clones); a reduction over k
 * could be vectorized with rounded products. */
MG_HOT static void FN(gemm_naive)(REAL *Cm, int ldc, const REAL *A, int rsA, int csA,
                                  const REAL *B, int rsB, int csB, int K, int acc,
                                  int i0, int i1, int j0, int j1) {
    for (int i = i0; i < i1; i++) {
        REAL *c = Cm + (size_t)i * ldc;
        if (!acc)
            for (int j = j0; j < j1; j++) c[j] = 0;
        for (int k = 0; k < K; k++) {
            REAL a = A[(size_t)i * rsA + (size_t)k * csA];
            const REAL *b = B + (size_t)k * rsB;
            for (int j = j0; j < j1; j++) c[j] = c[j] + a * b[(size_t)j * csB];
        }
    }
}

/* Row-contiguous A (csA == 1) is read in place unless its rows would crowd a
 * few cache sets: the MR rows the micro-kernel reads at once in L1 (64 sets of
 * 64-byte lines, 4 KiB a way, 12 ways assumed: more than 6 of the MR rows on
 * one set, with B's panel and C's rows competing, thrash it; e.g. rows 4 KiB
 * apart, the fc2 forward and fc1 dinp at width 256, ran at 45% of peak read
 * in place), or its MC rows in L2 (rows a multiple of 4 KiB apart fall on
 * 64 KiB / 2^t set offsets; a 16-way L2 with 64 KiB ways assumed). */
static int FN(gemm_pack_a_needed)(int rsA, int csA, int mc) {
    if (csA != 1) return 1;
    const size_t stride = (size_t)rsA * sizeof(REAL);
    if (stride % 64 == 0) {
        size_t lines = (stride / 64) % 64, sets = 64;
        if (lines != 0) { size_t a = 64, b = lines; while (b) { size_t t = a % b; a = b; b = t; } sets = 64 / a; }
        else sets = 1;
        if ((size_t)(MG_GEMM_MR + sets - 1) / sets > 6) return 1;
    }
    size_t g = 65536;
    while (stride % g) g /= 2;
    return mc > 16 * (int)(65536 / g);
}

/* Computes tiles tile0..tile1-1 of the grid of FN(gemm_grid)(M, N, min_tiles). */
static void FN(gemm_run)(REAL *Cm,                           /* (M, N), row stride ldc */
                         int ldc,
                         const REAL *A, int rsA, int csA,    /* (M, K) a(i,k) = A[i*rsA + k*csA] */
                         const REAL *B, int rsB, int csB,    /* (K, N) b(k,j) = B[k*rsB + j*csB] */
                         int M, int N, int K, int acc, int min_tiles, int tile0, int tile1) {
    if (M <= 0 || N <= 0 || tile0 >= tile1) return;
    int tm, tn, nrb, ncb;
    FN(gemm_grid)(M, N, min_tiles, &tm, &tn, &nrb, &ncb);
    if (tile1 > nrb * ncb) tile1 = nrb * ncb;
    int kcmax = mg_gemm_min(MG_GEMM_KC, K > 0 ? K : 1), mcmax = mg_gemm_min(MG_GEMM_MC, tm);
    int packa = FN(gemm_pack_a_needed)(rsA, csA, mcmax);
    size_t nb = (size_t)kcmax * tn, na = packa ? (size_t)kcmax * mcmax : 0;
    /* one allocation: B panels (64-byte aligned) then A panels */
    char *mem = (char *)MG_GEMM_MALLOC(sizeof(REAL) * (nb + na) + 64);
    REAL *bp = mem ? (REAL *)(mem + (64 - (uintptr_t)mem % 64) % 64) : NULL;
    REAL *ap = bp ? bp + nb : NULL;
    for (int t = tile0; t < tile1; t++) {
        int i0 = (t / ncb) * tm, j0 = (t % ncb) * tn;
        int mt = mg_gemm_min(tm, M - i0), nt = mg_gemm_min(tn, N - j0);
        if (!bp || K <= 0) {
            FN(gemm_naive)(Cm, ldc, A, rsA, csA, B, rsB, csB, K, acc, i0, i0 + mt, j0, j0 + nt);
            continue;
        }
        for (int pc = 0; pc < K; pc += MG_GEMM_KC) {
            int kc = mg_gemm_min(MG_GEMM_KC, K - pc), load = acc || pc > 0;
            FN(gemm_pack_b)(bp, B + (size_t)pc * rsB + (size_t)j0 * csB, rsB, csB, kc, nt);
            for (int ic = i0; ic < i0 + mt; ic += MG_GEMM_MC) {
                int mc = mg_gemm_min(MG_GEMM_MC, i0 + mt - ic);
                if (packa) FN(gemm_pack_a)(ap, A + (size_t)ic * rsA + (size_t)pc * csA, rsA, csA, mc, kc);
                for (int jr = 0; jr < nt; jr += MG_GEMM_NR) {
                    int nr = mg_gemm_min(MG_GEMM_NR, nt - jr);
                    const REAL *b = bp + (size_t)jr * kc;
                    for (int ir = 0; ir < mc; ir += MG_GEMM_MR) {
                        int mr = mg_gemm_min(MG_GEMM_MR, mc - ir);
                        const REAL *a = packa ? ap + (size_t)ir * kc : A + (size_t)(ic + ir) * rsA + pc;
                        REAL *c = Cm + (size_t)(ic + ir) * ldc + j0 + jr;
                        if (nr == MG_GEMM_NR) {
                            FN(gemm_ukr_rows)(c, ldc, a, rsA, b, kc, mr, packa, load);
                            continue;
                        }
                        /* right edge: through a full-width scratch tile */
                        REAL tmp[MG_GEMM_MR * MG_GEMM_NR];
                        for (int i = 0; i < mr; i++)
                            for (int j = 0; j < MG_GEMM_NR; j++)
                                tmp[i * MG_GEMM_NR + j] = load && j < nr ? c[(size_t)i * ldc + j] : (REAL)0;
                        FN(gemm_ukr_rows)(tmp, MG_GEMM_NR, a, rsA, b, kc, mr, packa, 1);
                        for (int i = 0; i < mr; i++)
                            memcpy(c + (size_t)i * ldc, tmp + i * MG_GEMM_NR, sizeof(REAL) * nr);
                    }
                }
            }
        }
    }
    MG_GEMM_FREE(mem);
}

/* Computes tiles tile0..tile1-1 of the grid of FN(gemm_num_tiles)(M, N); any
 * split of the tiles among threads gives the bits of one FN(gemm) call. */
void FN(gemm_tiles)(REAL *Cm,                           /* (M, N), row stride ldc */
                    int ldc,
                    const REAL *A, int rsA, int csA,    /* (M, K) a(i,k) = A[i*rsA + k*csA] */
                    const REAL *B, int rsB, int csB,    /* (K, N) b(k,j) = B[k*rsB + j*csB] */
                    int M, int N, int K, int acc, int tile0, int tile1) {
    FN(gemm_run)(Cm, ldc, A, rsA, csA, B, rsB, csB, M, N, K, acc, MG_GEMM_MIN_TILES, tile0, tile1);
}

/* Cm (M, N) = (acc ? Cm : 0) + A (M, K) @ B (K, N), one sequential sum per element
 * over k in order; a team of MG_GEMM_TEAM_SIZE() threads shares a grid of at
 * least that many tiles when the work is large enough and the caller is not
 * already in a parallel region; otherwise one thread, fewest tiles. */
void FN(gemm)(REAL *Cm,                           /* (M, N), row stride ldc */
              int ldc,
              const REAL *A, int rsA, int csA,    /* (M, K) a(i,k) = A[i*rsA + k*csA] */
              const REAL *B, int rsB, int csB,    /* (K, N) b(k,j) = B[k*rsB + j*csB] */
              int M, int N, int K, int acc) {
    if (M <= 0 || N <= 0) return;
#ifdef _OPENMP
    int team = !omp_in_parallel() && (double)M * N * K >= MG_GEMM_MIN_PAR_WORK ? MG_GEMM_TEAM_SIZE() : 1;
    if (team > 1) {
        int tm, tn, nrb, ncb, min_tiles = team;   /* a grid of at least team tiles */
        FN(gemm_grid)(M, N, min_tiles, &tm, &tn, &nrb, &ncb);
        int nt = nrb * ncb;
        if (team > nt) team = nt;
        if (team > 1) {
#pragma omp parallel num_threads(team)
            {
                int id = omp_get_thread_num(), nth = omp_get_num_threads();
                FN(gemm_run)(Cm, ldc, A, rsA, csA, B, rsB, csB, M, N, K, acc, min_tiles,
                             (int)((long long)nt * id / nth), (int)((long long)nt * (id + 1) / nth));
            }
            return;
        }
    }
#endif
    FN(gemm_run)(Cm, ldc, A, rsA, csA, B, rsB, csB, M, N, K, acc, 1, 0, INT32_MAX);
}
