/* A small floating-point peak probe, the fallback of bench/c/peak (used by
 * bench/peak.py when bench/c/peak.c is absent).  One thread; prints one JSON line
 *   {"cpu":..., "f32_fma_gflops":..., "f32_nofma_gflops":..., "f64_fma_gflops":...,
 *    "f64_nofma_gflops":..., "isa":..., "probe":"peak_probe"}
 * Each figure: NACC independent chains of acc = acc * a + b on the widest vectors
 * the compiler targets (build with -O2 -march=native), as fused multiply-adds
 * (2 flops per instruction) and as a separate multiply and add (fp-contract off);
 * best of 5 timings of ~0.1 s.
 *   cc -O2 -march=native bench/c/peak_probe.c -o bench/c/peak_probe
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <string.h>
#include <time.h>

#if defined(__AVX512F__)
#define VBYTES 64
#define ISA "avx512f"
#elif defined(__AVX__)
#define VBYTES 32
#define ISA "avx2"
#elif defined(__ARM_NEON) || defined(__SSE2__)
#define VBYTES 16
#define ISA "128-bit"
#else
#define VBYTES 16
#define ISA "generic"
#endif
#define NACC 16

typedef float vf __attribute__((vector_size(VBYTES)));
typedef double vd __attribute__((vector_size(VBYTES)));

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define KERNEL(NAME, VT, ATTR)                                                 \
    ATTR static double NAME(long iters, double *sink) {                        \
        VT acc[NACC], a, b;                                                    \
        for (int j = 0; j < (int)(VBYTES / sizeof(acc[0][0])); j++) {          \
            a[j] = 0.999999; b[j] = 1e-6;                                      \
        }                                                                      \
        for (int i = 0; i < NACC; i++) acc[i] = b * (VT){0} + (float)(i + 1); \
        __asm__ volatile("" : "+x"(a), "+x"(b));                               \
        for (long it = 0; it < iters; it++) {                                  \
            _Pragma("GCC unroll 16")                                           \
            for (int i = 0; i < NACC; i++) acc[i] = acc[i] * a + b;            \
        }                                                                      \
        double s = 0;                                                          \
        for (int i = 0; i < NACC; i++) s += acc[i][0];                         \
        *sink += s;                                                            \
        return (double)iters * NACC * (VBYTES / sizeof(acc[0][0])) * 2;        \
    }

#define FMA_ATTR __attribute__((optimize("fp-contract=fast"), noinline))
#define NOFMA_ATTR __attribute__((optimize("fp-contract=off"), noinline))
KERNEL(f32_fma, vf, FMA_ATTR)
KERNEL(f32_nofma, vf, NOFMA_ATTR)
KERNEL(f64_fma, vd, FMA_ATTR)
KERNEL(f64_nofma, vd, NOFMA_ATTR)

static double gflops(double (*k)(long, double *), double *sink) {
    long iters = 1000;
    for (;;) {
        double t0 = now(), f = k(iters, sink), t = now() - t0;
        if (t > 0.05) break;
        (void)f;
        iters *= 2;
    }
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = now(), f = k(iters, sink), t = now() - t0;
        if (f / t > best) best = f / t;
    }
    return best * 1e-9;
}

int main(void) {
    char cpu[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "model name", 10)) {
                char *p = strchr(line, ':');
                if (p) {
                    p += 1 + (p[1] == ' ');
                    p[strcspn(p, "\n\"\\")] = 0;
                    snprintf(cpu, sizeof cpu, "%s", p);
                }
                break;
            }
        }
        fclose(f);
    }
    double sink = 0;
    double a = gflops(f32_fma, &sink), b = gflops(f32_nofma, &sink);
    double c = gflops(f64_fma, &sink), d = gflops(f64_nofma, &sink);
    printf("{\"cpu\": \"%s\", \"f32_fma_gflops\": %.2f, \"f32_nofma_gflops\": %.2f, "
           "\"f64_fma_gflops\": %.2f, \"f64_nofma_gflops\": %.2f, \"isa\": \"%s\", "
           "\"probe\": \"peak_probe\", \"threads\": 1, \"sink\": %g}\n",
           cpu, a, b, c, d, ISA, sink > 0 ? 0.0 : 1.0);
    return 0;
}
