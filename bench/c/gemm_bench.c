/* Micro-benchmark of csrc/ops/gemm.h on the model's three products:
 *   forward  out (T, OC)  = inp (T, C) @ w (OC, C)^T        acc 0
 *   dinp     dinp (T, C) += dout (T, OC) @ w (OC, C)         acc 1
 *   dweight  dw (OC, C)  += dout (T, OC)^T @ inp (T, C)      acc 1
 * for the layers qkv (C -> C), fc1 (C -> 4C), fc2 (4C -> C) at widths 256
 * (T = 2048 tokens), 64 (T = 1024), 16 (T = 16), float32 and float64.  One JSON
 * line per case with GFLOP/s (best of several timed runs; gflops from wall
 * time, gflops_cpu from CPU time per thread) and the fraction of this core's
 * peak times the team size (float32: the FMA peak; float64: the
 * no-FMA peak, as the float64 file has no fused multiply-adds).
 *
 *   bench/c/build_gemm.sh && OMP_NUM_THREADS=1 bench/c/gemm_bench [options]
 *   --quick               shorter timing
 *   --only NAME           cases whose name contains NAME (e.g. w256_fc1_dinp_f32)
 *   --peak F32 F64        peaks in GFLOP/s (default: measure them, bench/c/peak.c)
 * This one file is compiled three times: -DGEMM_INST_F64 (-ffp-contract=off),
 * -DGEMM_INST_F32 (-ffp-contract=fast) instantiate the header; no macro: main. */
#if defined(GEMM_INST_F64)
#define REAL double
#define FN(name) name##_f64
#include "ops/gemm.h"
#elif defined(GEMM_INST_F32)
#define REAL float
#define FN(name) name##_f32
#include "ops/gemm.h"
#else
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "peak.h"

void gemm_f64(double *Cm, int ldc, const double *A, int rsA, int csA, const double *B, int rsB,
              int csB, int M, int N, int K, int acc);
void gemm_f32(float *Cm, int ldc, const float *A, int rsA, int csA, const float *B, int rsB,
              int csB, int M, int N, int K, int acc);

static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
static double cpu_now(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

typedef struct {
    int f32, M, N, K, acc, rsA, csA, rsB, csB, ldc;
    void *C, *A, *B;
} call_t;

static void run(const call_t *c) {
    if (c->f32) gemm_f32(c->C, c->ldc, c->A, c->rsA, c->csA, c->B, c->rsB, c->csB, c->M, c->N, c->K, c->acc);
    else gemm_f64(c->C, c->ldc, c->A, c->rsA, c->csA, c->B, c->rsB, c->csB, c->M, c->N, c->K, c->acc);
}

static void *rand_buf(size_t n, int f32) {
    void *p = malloc(n * (f32 ? 4 : 8));
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (size_t i = 0; i < n; i++) {
        double v = (double)rand() / RAND_MAX - 0.5;
        if (f32) ((float *)p)[i] = (float)v; else ((double *)p)[i] = v;
    }
    return p;
}

/* seconds per call, best of 9 runs each repeating the call for >= target s:
 * wall time, and the process's CPU time divided by the team size (what the
 * call costs while it has the cores: a busy shared machine steals wall time) */
static void time_call(const call_t *c, double target, int threads, double *wall, double *cpu) {
    run(c);   /* warm up */
    int reps = 1;
    for (;;) {
        double t0 = now();
        for (int r = 0; r < reps; r++) run(c);
        double dt = now() - t0;
        if (dt >= target / 4 || reps > (1 << 24)) { reps = (int)(reps * target / dt) + 1; break; }
        reps *= 4;
    }
    *wall = *cpu = 1e30;
    for (int i = 0; i < 9; i++) {
        double t0 = now(), c0 = cpu_now();
        for (int r = 0; r < reps; r++) run(c);
        double dt = (now() - t0) / reps, dc = (cpu_now() - c0) / reps / threads;
        if (dt < *wall) *wall = dt;
        if (dc < *cpu) *cpu = dc;
    }
}

int main(int argc, char **argv) {
    int quick = 0;
    const char *only = NULL;
    double pk32 = 0, pk64 = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--peak") && i + 2 < argc) { pk32 = atof(argv[i + 1]); pk64 = atof(argv[i + 2]); i += 2; }
        else { fprintf(stderr, "usage: %s [--quick] [--only NAME] [--peak F32 F64]\n", argv[0]); return 2; }
    }
    peak_t p;
    char cpu[160];
    if (pk32 <= 0 || pk64 <= 0) {
        peak_measure(&p);
        pk32 = p.f32_fma;
        pk64 = p.f64_nofma;
        char buf[512];
        peak_json(&p, buf, sizeof buf);
        printf("%s\n", buf);
    } else {
        peak_measure_cpu_name(&p);
    }
    snprintf(cpu, sizeof cpu, "%s", p.cpu);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    static const int widths[][2] = {{256, 2048}, {64, 1024}, {16, 16}};
    static const char *layers[] = {"qkv", "fc1", "fc2"};
    static const char *prods[] = {"forward", "dinp", "dweight"};
    for (int w = 0; w < 3; w++)
        for (int l = 0; l < 3; l++)
            for (int pr = 0; pr < 3; pr++)
                for (int f32 = 1; f32 >= 0; f32--) {
                    int C = widths[w][0], T = widths[w][1];
                    int in = l == 2 ? 4 * C : C, out = l == 1 ? 4 * C : l == 2 ? C : C;
                    char name[96];
                    snprintf(name, sizeof name, "w%d_%s_%s_%s", C, layers[l], prods[pr], f32 ? "f32" : "f64");
                    if (only && !strstr(name, only)) continue;
                    /* inp (T, in), w (out, in), dout (T, out) */
                    call_t c = {.f32 = f32};
                    void *inp = rand_buf((size_t)T * in, f32), *wt = rand_buf((size_t)out * in, f32);
                    void *dout = rand_buf((size_t)T * out, f32), *dst;
                    if (pr == 0) {
                        dst = rand_buf((size_t)T * out, f32);
                        c = (call_t){f32, T, out, in, 0, in, 1, 1, in, out, dst, inp, wt};
                    } else if (pr == 1) {
                        dst = rand_buf((size_t)T * in, f32);
                        c = (call_t){f32, T, in, out, 1, out, 1, in, 1, in, dst, dout, wt};
                    } else {
                        dst = rand_buf((size_t)out * in, f32);
                        c = (call_t){f32, out, in, T, 1, 1, out, in, 1, in, dst, dout, inp};
                    }
                    double s, sc;
                    time_call(&c, quick ? 0.02 : 0.1, threads, &s, &sc);
                    double fl = 2.0 * c.M * c.N * c.K, pk = (f32 ? pk32 : pk64) * threads;
                    printf("{\"case\": \"%s\", \"width\": %d, \"tokens\": %d, \"layer\": \"%s\", \"product\": \"%s\", "
                           "\"dtype\": \"%s\", \"M\": %d, \"N\": %d, \"K\": %d, \"threads\": %d, \"ms\": %.4f, "
                           "\"gflops\": %.2f, \"gflops_cpu\": %.2f, \"peak_gflops\": %.1f, \"frac_peak\": %.3f, "
                           "\"frac_peak_cpu\": %.3f, \"cpu\": \"%s\"}\n",
                           name, C, T, layers[l], prods[pr], f32 ? "f32" : "f64", c.M, c.N, c.K, threads,
                           s * 1e3, fl / s / 1e9, fl / sc / 1e9, pk, fl / s / 1e9 / pk, fl / sc / 1e9 / pk, cpu);
                    fflush(stdout);
                    free(inp); free(wt); free(dout); free(dst);
                }
    return 0;
}
#endif
