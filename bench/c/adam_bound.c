/* What bounds a training step on this CPU:
 *  - the package's own Adam kernel (adam_update_f64 / adam_update_f32, one
 *    IEEE square root and one division per parameter) vs a loop with the same
 *    memory traffic and multiply-adds but no square root or division, at the
 *    parameter counts of the benchmark models;
 *  - the peak rate of separate multiplies and adds (the package compiles with
 *    -ffp-contract=off) on 512-bit vectors, from registers, no memory.
 *   bench/c/build.sh adam_bound && OMP_NUM_THREADS=1 bench/c/adam_bound [n_params ...]
 * (default: 4192 56704 204160, the 16/16, 64/64 1-layer and 4-layer models).
 * Prints microseconds per update (best of many) and the same in cycles per
 * parameter at the clock measured by a dependent integer-add chain. */
#include "microgpt.h"
#include "mg_kernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* GHz from a chain of dependent adds (one per cycle) */
static double clock_ghz(void) {
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        long n = 200000000, x = 0;
        const double t = now();
        __asm__ volatile("1: add $1, %0\n add $1, %0\n add $1, %0\n add $1, %0\n sub $4, %1\n jnz 1b"
                         : "+r"(x), "+r"(n));
        const double dt = now() - t;
        if (dt < best) best = dt;
    }
    return 0.2 / best;
}

#define TRAFFIC(REAL, NAME)                                                                 \
    __attribute__((noinline, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) \
    static void NAME(REAL *restrict p, REAL *restrict m,           \
                                               REAL *restrict v, const REAL *restrict g,     \
                                               size_t n) {                                   \
        for (size_t i = 0; i < n; i++) {                                                     \
            const REAL mi = (REAL)0.85 * m[i] + (REAL)0.15 * g[i];                           \
            const REAL vi = (REAL)0.99 * v[i] + (REAL)0.01 * (g[i] * g[i]);                  \
            m[i] = mi;                                                                       \
            v[i] = vi;                                                                       \
            p[i] = p[i] - (REAL)0.01 * (mi * (REAL)1.1) * (vi * (REAL)1.2 + (REAL)1e-8);   \
        }                                                                                    \
    }
TRAFFIC(double, traffic_f64)
TRAFFIC(float, traffic_f32)

/* Peak multiply-add rate: 16 independent accumulators of 64-byte vectors,
 * acc = acc * b + c (a multiply and an add each), from registers. */
#define PEAK(REAL, NAME)                                                                    \
    __attribute__((noinline, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) \
    static double NAME(long iters) {                                                         \
        typedef REAL vec __attribute__((vector_size(64)));                                  \
        volatile REAL bv = (REAL)0.999999, cv = (REAL)1e-7;  /* unknown to the compiler */  \
        vec a[16], b = (vec){0} + bv, c = (vec){0} + cv;                                     \
        for (int k = 0; k < 16; k++) a[k] = (vec){0} + (REAL)k;                             \
        for (long it = 0; it < iters; it++)                                                  \
            for (int k = 0; k < 16; k++) a[k] = a[k] * b + c;                                \
        REAL sum = 0;                                                                        \
        for (int k = 0; k < 16; k++) for (size_t l = 0; l < 64 / sizeof(REAL); l++) sum += a[k][l]; \
        return (double)sum;                                                                  \
    }
PEAK(double, peak_f64)
PEAK(float, peak_f32)

int main(int argc, char **argv) {
    const double ghz = clock_ghz();
    size_t sizes[16] = {4192, 56704, 204160};  /* 16/16, 64/64 1 layer, 64/64 4 layers */
    size_t nsizes = 3;
    if (argc > 1) {
        nsizes = 0;
        for (int a = 1; a < argc && nsizes < 16; a++) {
            const long n = atol(argv[a]);
            if (n < 1) { fprintf(stderr, "bad parameter count: %s\n", argv[a]); return 2; }
            sizes[nsizes++] = (size_t)n;
        }
    }
    printf("clock %.2f GHz (dependent add chain)\n", ghz);
    for (int dt = 0; dt < 2; dt++) {
        const long iters = 20000000;
        double best = 1e30, sink = 0;
        for (int r = 0; r < 3; r++) {
            const double t = now();
            sink += dt == 0 ? peak_f64(iters) : peak_f32(iters);
            const double dtm = now() - t;
            if (dtm < best) best = dtm;
        }
        const double macs = (double)iters * 16 * (dt == 0 ? 8 : 16);
        printf("peak %s multiply+add: %.1f per cycle (%.1f G/s)%s\n", dt == 0 ? "float64" : "float32",
               macs / best / (ghz * 1e9), macs / best / 1e9, sink == 1.2345 ? " " : "");
    }
    printf("%-8s %8s %14s %14s %12s\n", "dtype", "params", "Adam us", "no sqrt/div us", "Adam cyc/param");
    for (int dt = 0; dt < 2; dt++) {
        for (size_t k = 0; k < nsizes; k++) {
            const size_t n = sizes[k], es = dt == 0 ? sizeof(double) : sizeof(float);
            void *p = calloc(n, es), *m = calloc(n, es), *v = calloc(n, es), *g = calloc(n, es);
            if (!p || !m || !v || !g) return 1;
            for (size_t i = 0; i < n; i++) {
                const double gi = 1e-3 * (double)(i % 7 + 1);
                if (dt == 0) { ((double *)g)[i] = gi; ((double *)p)[i] = 0.1; }
                else { ((float *)g)[i] = (float)gi; ((float *)p)[i] = 0.1f; }
            }
            double best_a = 1e30, best_t = 1e30;
            const int reps = n > 100000 ? 300 : 2000;
            for (int r = 0; r < reps; r++) {
                double t = now();
                if (dt == 0) adam_update_f64(p, m, v, g, n, 0.01, 0.85, 0.99, 1e-8, 10);
                else adam_update_f32(p, m, v, g, n, 0.01, 0.85, 0.99, 1e-8, 10);
                t = now() - t;
                if (t < best_a) best_a = t;
                t = now();
                if (dt == 0) traffic_f64(p, m, v, g, n);
                else traffic_f32(p, m, v, g, n);
                t = now() - t;
                if (t < best_t) best_t = t;
            }
            printf("%-8s %8zu %14.2f %14.2f %12.2f\n", dt == 0 ? "float64" : "float32", n,
                   best_a * 1e6, best_t * 1e6, best_a * ghz * 1e9 / (double)n);
            free(p); free(m); free(v); free(g);
        }
    }
    return 0;
}
