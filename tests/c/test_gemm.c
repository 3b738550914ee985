/* Tests of csrc/ops/gemm.h: float64 bit-identical to the naive loop
 * (s = acc ? c : +0.0; for k in order: s = s + a*b), float32 bit-identical to
 * the naive loop with fmaf in that order, over many shapes (edges, tiny, up to
 * ~600), the three stride patterns of the model plus a fully strided one, acc 0
 * and 1, padded strides; tile-range calls, 1 vs 2 threads and the fallback
 * without pack buffers give the same bits.
 * Build and run: tests/c/build_gemm.sh && build/c-tests/test_gemm */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "gemm_api.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static int rndint(int n) { return (int)(rnd() % (uint64_t)n); }
/* values in [-1, 1), with exact zeros now and then (signed-zero cases) */
static double rndval(void) {
    if (rndint(16) == 0) return 0.0;
    return (double)(rnd() >> 11) * 0x1p-52 - 1.0;
}

int gemm_test_no_malloc;
static int fma_mode;   /* float32 product-sums are fused (probed) */
static int failures, checks;

typedef struct { int M, N, K, pat, acc, pad; } shape_t;
typedef struct { int rsA, csA, rsB, csB, ldc; size_t nA, nB, nC; } layout_t;

/* pat 0 forward: A (M,K) rows, B = w (N,K)^T; 1 dinp: A rows, B (K,N) rows;
 * 2 dweight: A = dout (K,M)^T, B (K,N) rows; 3 both operands transposed. */
static layout_t layout(shape_t s) {
    layout_t l;
    int M = s.M, N = s.N, K = s.K, p = s.pad;
    switch (s.pat) {
    case 0: l.rsA = K + p; l.csA = 1; l.rsB = 1; l.csB = K + p; break;
    case 1: l.rsA = K + p; l.csA = 1; l.rsB = N + p; l.csB = 1; break;
    case 2: l.rsA = 1; l.csA = M + p; l.rsB = N + p; l.csB = 1; break;
    default: l.rsA = 1; l.csA = M + p; l.rsB = 1; l.csB = K + p; break;
    }
    l.ldc = N + p;
    l.nA = (size_t)(M - 1) * l.rsA + (size_t)(K - 1) * l.csA + 1;
    l.nB = (size_t)(K - 1) * l.rsB + (size_t)(N - 1) * l.csB + 1;
    l.nC = (size_t)M * l.ldc;
    return l;
}

static void naive_f64(double *C, const double *A, const double *B, shape_t s, layout_t l) {
    for (int i = 0; i < s.M; i++)
        for (int j = 0; j < s.N; j++) {
            double acc = s.acc ? C[(size_t)i * l.ldc + j] : 0.0;
            for (int k = 0; k < s.K; k++)
                acc = acc + A[(size_t)i * l.rsA + (size_t)k * l.csA] * B[(size_t)k * l.rsB + (size_t)j * l.csB];
            C[(size_t)i * l.ldc + j] = acc;
        }
}

static void naive_f32(float *C, const float *A, const float *B, shape_t s, layout_t l) {
    for (int i = 0; i < s.M; i++)
        for (int j = 0; j < s.N; j++) {
            float acc = s.acc ? C[(size_t)i * l.ldc + j] : 0.0f;
            for (int k = 0; k < s.K; k++) {
                float a = A[(size_t)i * l.rsA + (size_t)k * l.csA], b = B[(size_t)k * l.rsB + (size_t)j * l.csB];
                acc = fma_mode ? fmaf(a, b, acc) : acc + a * b;
            }
            C[(size_t)i * l.ldc + j] = acc;
        }
}

static void report(const char *what, int dt, shape_t s, const void *got, const void *want, size_t n) {
    checks++;
    size_t esz = dt ? sizeof(float) : sizeof(double);
    if (memcmp(got, want, n * esz) == 0) return;
    size_t at = 0;
    while (memcmp((const char *)got + at * esz, (const char *)want + at * esz, esz) == 0) at++;
    double g = dt ? ((const float *)got)[at] : ((const double *)got)[at];
    double w = dt ? ((const float *)want)[at] : ((const double *)want)[at];
    if (failures++ < 20)
        printf("FAIL %s %s M=%d N=%d K=%d pat=%d acc=%d pad=%d: element %zu got %.17g want %.17g\n",
               what, dt ? "f32" : "f64", s.M, s.N, s.K, s.pat, s.acc, s.pad, at, g, w);
}

/* one shape, one dtype (dt 0 = f64, 1 = f32): whole call, tile ranges, threads */
static void run_case(int dt, shape_t s, int splits, int threads) {
    layout_t l = layout(s);
    size_t esz = dt ? sizeof(float) : sizeof(double);
    void *A = malloc(l.nA * esz), *B = malloc(l.nB * esz);
    void *C0 = malloc(l.nC * esz), *Cw = malloc(l.nC * esz), *Cg = malloc(l.nC * esz);
    for (size_t i = 0; i < l.nA; i++) { double v = rndval(); if (dt) ((float *)A)[i] = (float)v; else ((double *)A)[i] = v; }
    for (size_t i = 0; i < l.nB; i++) { double v = rndval(); if (dt) ((float *)B)[i] = (float)v; else ((double *)B)[i] = v; }
    for (size_t i = 0; i < l.nC; i++) {
        double v = s.acc ? rndval() : NAN;   /* not read when !acc */
        if (i % l.ldc >= (size_t)s.N) v = -INFINITY;   /* padding: never touched */
        if (dt) ((float *)C0)[i] = (float)v; else ((double *)C0)[i] = v;
    }
    memcpy(Cw, C0, l.nC * esz);
    if (dt) naive_f32(Cw, A, B, s, l); else naive_f64(Cw, A, B, s, l);

    memcpy(Cg, C0, l.nC * esz);
    if (dt) gemm_f32(Cg, l.ldc, A, l.rsA, l.csA, B, l.rsB, l.csB, s.M, s.N, s.K, s.acc);
    else gemm_f64(Cg, l.ldc, A, l.rsA, l.csA, B, l.rsB, l.csB, s.M, s.N, s.K, s.acc);
    report("gemm", dt, s, Cg, Cw, l.nC);

    if (splits) {   /* tile ranges of random lengths */
        int nt = dt ? gemm_num_tiles_f32(s.M, s.N) : gemm_num_tiles_f64(s.M, s.N);
        memcpy(Cg, C0, l.nC * esz);
        for (int t = 0; t < nt;) {
            int t1 = t + 1 + rndint(3);
            if (t1 > nt) t1 = nt;
            if (dt) gemm_tiles_f32(Cg, l.ldc, A, l.rsA, l.csA, B, l.rsB, l.csB, s.M, s.N, s.K, s.acc, t, t1);
            else gemm_tiles_f64(Cg, l.ldc, A, l.rsA, l.csA, B, l.rsB, l.csB, s.M, s.N, s.K, s.acc, t, t1);
            t = t1;
        }
        report("tiles", dt, s, Cg, Cw, l.nC);
    }
#ifdef _OPENMP
    if (threads) {   /* a team of 2 through gemm, and a caller's team through gemm_tiles */
        omp_set_num_threads(2);
        memcpy(Cg, C0, l.nC * esz);
        if (dt) gemm_f32(Cg, l.ldc, A, l.rsA, l.csA, B, l.rsB, l.csB, s.M, s.N, s.K, s.acc);
        else gemm_f64(Cg, l.ldc, A, l.rsA, l.csA, B, l.rsB, l.csB, s.M, s.N, s.K, s.acc);
        report("2 threads", dt, s, Cg, Cw, l.nC);
        int nt = dt ? gemm_num_tiles_f32(s.M, s.N) : gemm_num_tiles_f64(s.M, s.N);
        memcpy(Cg, C0, l.nC * esz);
#pragma omp parallel num_threads(2)
        {
            int id = omp_get_thread_num(), n = omp_get_num_threads();
            int t0 = nt * id / n, t1 = nt * (id + 1) / n;
            if (dt) gemm_tiles_f32(Cg, l.ldc, A, l.rsA, l.csA, B, l.rsB, l.csB, s.M, s.N, s.K, s.acc, t0, t1);
            else gemm_tiles_f64(Cg, l.ldc, A, l.rsA, l.csA, B, l.rsB, l.csB, s.M, s.N, s.K, s.acc, t0, t1);
        }
        report("team tiles", dt, s, Cg, Cw, l.nC);
        omp_set_num_threads(1);
    }
#else
    (void)threads;
#endif
    free(A); free(B); free(C0); free(Cw); free(Cg);
}

/* float32: does the kernel fuse?  c + a*b with a = b = 1 + 2^-12, c = -(1 + 2^-11):
 * fused 2^-24, unfused 0. */
static int probe_fma(void) {
    float a = 1.0f + 0x1p-12f, c = -(1.0f + 0x1p-11f);
    gemm_f32(&c, 1, &a, 1, 1, &a, 1, 1, 1, 1, 1, 1);
    return c != 0.0f;
}

int main(int argc, char **argv) {
    int nrandom = argc > 1 ? atoi(argv[1]) : 300;
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    fma_mode = probe_fma();
    printf("float32 kernel: %s\n", fma_mode ? "fused multiply-add" : "separate multiply and add");
#ifdef TEST_EXPECT_FMA
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("fma") && !fma_mode) {
        printf("FAIL: this CPU has FMA but the float32 kernel does not fuse\n");
        failures++;
    }
#endif
#endif
    /* signed zero: products -0.0 onto +0.0 give +0.0 (acc 0); -0.0 + -0.0 stays -0.0 (acc 1) */
    {
        double a[2] = {-1.0, -1.0}, b[2] = {0.0, 0.0}, c = 5.0;
        gemm_f64(&c, 1, a, 2, 1, b, 1, 1, 1, 1, 2, 0);
        checks++;
        if (c != 0.0 || signbit(c)) { printf("FAIL signed zero acc=0: %g\n", c); failures++; }
        c = -0.0;
        gemm_f64(&c, 1, a, 2, 1, b, 1, 1, 1, 1, 2, 1);
        checks++;
        if (c != 0.0 || !signbit(c)) { printf("FAIL signed zero acc=1: %g\n", c); failures++; }
    }
    /* edges: every combination of small sizes around the register tile */
    static const int edge[] = {1, 2, 3, 7, 8, 13, 14, 15, 16, 17, 27, 31, 32, 33, 47, 65};
    int ne = (int)(sizeof edge / sizeof edge[0]);
    for (int dt = 0; dt < 2; dt++)
        for (int a = 0; a < ne; a++)
            for (int b = 0; b < ne; b++) {
                shape_t s = {edge[a], edge[b], edge[rndint(ne)], rndint(4), rndint(2), rndint(2) * 3};
                run_case(dt, s, 1, 0);
            }
    /* K spanning several k blocks */
    for (int dt = 0; dt < 2; dt++)
        for (int pat = 0; pat < 4; pat++)
            for (int acc = 0; acc < 2; acc++) {
                shape_t s = {37, 45, 777, pat, acc, 2};
                run_case(dt, s, 1, 0);
            }
    for (int dt = 0; dt < 2; dt++)
        for (int acc = 0; acc < 2; acc++) {   /* K = 0: C = acc ? C : 0 */
            double c64[6] = {1, 2, 3, 4, 5, 6}, one = 1;
            float c32[6] = {1, 2, 3, 4, 5, 6}, onef = 1;
            if (dt) gemm_f32(c32, 3, &onef, 1, 1, &onef, 1, 1, 2, 3, 0, acc);
            else gemm_f64(c64, 3, &one, 1, 1, &one, 1, 1, 2, 3, 0, acc);
            for (int i = 0; i < 6; i++) {
                double v = dt ? c32[i] : c64[i];
                checks++;
                if (v != (acc ? i + 1 : 0)) { printf("FAIL K=0 acc=%d\n", acc); failures++; break; }
            }
        }
    /* no pack buffer: the unpacked fallback, same bits */
    gemm_test_no_malloc = 1;
    for (int dt = 0; dt < 2; dt++)
        for (int pat = 0; pat < 4; pat++) {
            shape_t s = {29 + pat, 70, 300, pat, pat & 1, 1};
            run_case(dt, s, 1, 1);
        }
    gemm_test_no_malloc = 0;
    /* random shapes up to ~600 */
    for (int r = 0; r < nrandom; r++) {
        int big = rndint(2);
        shape_t s = {1 + rndint(big ? 600 : 48), 1 + rndint(big ? 600 : 48), 1 + rndint(big ? 600 : 48),
                     rndint(4), rndint(2), rndint(3) == 0 ? 1 + rndint(5) : 0};
        if ((double)s.M * s.N * s.K > 3e7) { r--; continue; }
        run_case(rndint(2), s, rndint(4) == 0, 0);
    }
    /* threads: big enough for the team (M*N*K >= MG_GEMM_MIN_PAR_WORK) */
    static const int tshape[][3] = {{512, 256, 256}, {256, 256, 512}, {301, 517, 99}, {1000, 64, 128}};
    for (int dt = 0; dt < 2; dt++)
        for (int t = 0; t < 4; t++)
            for (int pat = 0; pat < 3; pat++) {
                shape_t s = {tshape[t][0], tshape[t][1], tshape[t][2], pat, t & 1, 0};
                run_case(dt, s, 1, 1);
            }
    printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "OK", checks, failures);
    return failures != 0;
}
