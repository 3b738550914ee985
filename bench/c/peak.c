/* Single-thread floating-point peak of this core, in GFLOP/s: float32/float64
 * with fused multiply-adds (2 flops each) and with separate multiplies and adds
 * (1 flop each, multiplies and adds issued side by side), plus a clock estimate
 * from a chain of dependent integer adds.  Best of several short runs, timed in
 * the thread's CPU time (a busy shared machine steals wall time, not cycles).
 *
 *   bench/c/build_gemm.sh && bench/c/peak
 *   -> {"cpu": ..., "f32_fma_gflops": ..., "f32_nofma_gflops": ..., "f64_fma_gflops": ...,
 *       "f64_nofma_gflops": ..., "isa": "avx512"|"avx2"|"scalar", "ghz": ...}
 * Compiled with -ffp-contract=off (the multiply/add loops stay unfused).
 * Built with -DPEAK_NO_MAIN it is a library for gemm_bench (peak_measure). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include "peak.h"

/* this thread's CPU time: other processes sharing the core do not count */
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static volatile double sink;
static volatile float one_f = 1.0f, tiny_f = 1e-30f;
static volatile double one_d = 1.0, tiny_d = 1e-300;

/* Each kernel runs n iterations of independent vector chains and returns the
 * flop count.  FMA: 16 chains c = c*one + tiny (latency 4 x 2 pipes needs 8+).
 * Mul/add: 12 chains m = m*one and 12 chains a = a + tiny (one multiply and one
 * add per pair of chains; 16 chains in all leave Zen 5's mul and add pipes idle
 * part of the time, 32 spill). */
/* independent chains: enough to cover latency x pipes, few enough to stay in
 * the register file with the two constants (AVX-512: 32 registers, 16 and 24
 * chains; AVX2: 16 registers, 12 and 12: with 16 and 24 GCC spills chains to
 * the stack and the probe measures half of Zen 3's peak) */
#define PEAK_KERNELS(V, T, W, SET1, FMA, MUL, ADD, RED, ATTR, SFX, ONE, TINY, CHAINS, MCHAINS) \
    ATTR static double fma_##SFX(long n) {                                                    \
        V c[CHAINS], m = SET1((T)ONE), t = SET1((T)TINY);                                     \
        for (int i = 0; i < CHAINS; i++) c[i] = SET1((T)(1 + i));                             \
        for (long r = 0; r < n; r++)                                                          \
            for (int i = 0; i < CHAINS; i++) c[i] = FMA(c[i], m, t);                          \
        double s = 0;                                                                         \
        for (int i = 0; i < CHAINS; i++) s += RED(c[i]);                                      \
        sink = s;                                                                             \
        return 2.0 * W * CHAINS * n;                                                          \
    }                                                                                         \
    ATTR static double muladd_##SFX(long n) {                                                 \
        V c[MCHAINS], m = SET1((T)ONE), t = SET1((T)TINY);                                     \
        for (int i = 0; i < MCHAINS; i++) c[i] = SET1((T)(1 + i));                             \
        for (long r = 0; r < n; r++)                                                          \
            for (int i = 0; i < MCHAINS; i += 2) {                                             \
                c[i] = MUL(c[i], m);                                                          \
                c[i + 1] = ADD(c[i + 1], t);                                                  \
            }                                                                                 \
        double s = 0;                                                                         \
        for (int i = 0; i < MCHAINS; i++) s += RED(c[i]);                                      \
        sink = s;                                                                             \
        return 1.0 * W * MCHAINS * n;                                                          \
    }

#if defined(__x86_64__) && defined(__GNUC__)
#define A512 __attribute__((target("avx512f,fma")))
#define A256 __attribute__((target("avx2,fma")))
A512 static inline double red512s(__m512 v) { float x[16]; _mm512_storeu_ps(x, v); return x[0]; }
A512 static inline double red512d(__m512d v) { double x[8]; _mm512_storeu_pd(x, v); return x[0]; }
A256 static inline double red256s(__m256 v) { float x[8]; _mm256_storeu_ps(x, v); return x[0]; }
A256 static inline double red256d(__m256d v) { double x[4]; _mm256_storeu_pd(x, v); return x[0]; }
PEAK_KERNELS(__m512, float, 16, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_add_ps, red512s, A512, s512, one_f, tiny_f, 16, 24)
PEAK_KERNELS(__m512d, double, 8, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_mul_pd, _mm512_add_pd, red512d, A512, d512, one_d, tiny_d, 16, 24)
PEAK_KERNELS(__m256, float, 8, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_add_ps, red256s, A256, s256, one_f, tiny_f, 12, 12)
PEAK_KERNELS(__m256d, double, 4, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_mul_pd, _mm256_add_pd, red256d, A256, d256, one_d, tiny_d, 12, 12)
#endif
/* portable: scalars (fma = a multiply and an add; the compiler may not fuse) */
#define SID(x) (x)
#define SFMA(a, b, c) ((a) * (b) + (c))
#define SMUL(a, b) ((a) * (b))
#define SADD(a, b) ((a) + (b))
PEAK_KERNELS(float, float, 1, SID, SFMA, SMUL, SADD, SID, , s1, one_f, tiny_f, 16, 24)
PEAK_KERNELS(double, double, 1, SID, SFMA, SMUL, SADD, SID, , d1, one_d, tiny_d, 16, 24)

/* GFLOP/s of kernel f: best of 9 runs of about 20 ms each */
static double best(double (*f)(long)) {
    long n = 1000;
    for (;;) {   /* calibrate */
        double t0 = now(), fl = f(n), dt = now() - t0;
        (void)fl;
        if (dt > 0.005) { n = (long)(n * 0.02 / dt) + 1; break; }
        n *= 4;
    }
    double g = 0;
    for (int r = 0; r < 9; r++) {
        double t0 = now(), fl = f(n), dt = now() - t0;
        if (fl / dt / 1e9 > g) g = fl / dt / 1e9;
    }
    return g;
}

/* clock estimate: 100 dependent 1-cycle integer adds per iteration */
static double ghz(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    double g = 0;
    for (int r = 0; r < 7; r++) {
        long n = 200000, x = 0;
        double t0 = now();
        for (long i = 0; i < n; i++)
            __asm__ volatile(".rept 100\n\tadd $1, %0\n\t.endr" : "+r"(x));
        double dt = now() - t0;
        if (100.0 * n / dt / 1e9 > g) g = 100.0 * n / dt / 1e9;
        sink = (double)x;
    }
    return g;
#else
    return 0;
#endif
}

/* "model name (family F model M)" from /proc/cpuinfo */
static void cpu_name(char *buf, size_t n) {
    char name[128] = "unknown", fam[16] = "?", mod[16] = "?", line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        while (fgets(line, sizeof line, f)) {
            char *p = strchr(line, ':');
            if (!p || p[1] == 0) continue;
            p += 1 + (p[1] == ' ');
            p[strcspn(p, "\n")] = 0;
            if (strncmp(line, "model name", 10) == 0) snprintf(name, sizeof name, "%s", p);
            else if (strncmp(line, "cpu family", 10) == 0) snprintf(fam, sizeof fam, "%s", p);
            else if (strncmp(line, "model\t", 6) == 0) snprintf(mod, sizeof mod, "%s", p);
            else if (line[0] == '\n') break;   /* end of the first processor */
        }
        fclose(f);
    }
    snprintf(buf, n, "%s (family %s model %s)", name, fam, mod);
}

void peak_measure_cpu_name(peak_t *p) {
    memset(p, 0, sizeof *p);
    cpu_name(p->cpu, sizeof p->cpu);
}

void peak_measure(peak_t *p) {
    peak_measure_cpu_name(p);
    snprintf(p->isa, sizeof p->isa, "scalar");
    double (*k[4])(long) = {fma_s1, muladd_s1, fma_d1, muladd_d1};
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
        snprintf(p->isa, sizeof p->isa, "avx512");
        k[0] = fma_s512; k[1] = muladd_s512; k[2] = fma_d512; k[3] = muladd_d512;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        snprintf(p->isa, sizeof p->isa, "avx2");
        k[0] = fma_s256; k[1] = muladd_s256; k[2] = fma_d256; k[3] = muladd_d256;
    }
#endif
    p->f32_fma = best(k[0]);
    p->f32_nofma = best(k[1]);
    p->f64_fma = best(k[2]);
    p->f64_nofma = best(k[3]);
    p->ghz = ghz();
}

void peak_json(const peak_t *p, char *buf, size_t n) {
    snprintf(buf, n,
             "{\"cpu\": \"%s\", \"f32_fma_gflops\": %.1f, \"f32_nofma_gflops\": %.1f, "
             "\"f64_fma_gflops\": %.1f, \"f64_nofma_gflops\": %.1f, \"isa\": \"%s\", \"ghz\": %.2f}",
             p->cpu, p->f32_fma, p->f32_nofma, p->f64_fma, p->f64_nofma, p->isa, p->ghz);
}

#ifndef PEAK_NO_MAIN
int main(void) {
    peak_t p;
    char buf[512];
    peak_measure(&p);
    peak_json(&p, buf, sizeof buf);
    printf("%s\n", buf);
    return 0;
}
#endif
