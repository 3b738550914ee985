/* C-only benchmark of the training loop (mg_train_steps) on the names data,
 * no Python: bench/c/build.sh, then OMP_NUM_THREADS=1 bench/c/cbench 16 16 1 0 1 5000
 * (n_embd block layers dtype batch steps [names.txt]).  With "random" for the
 * file: the scale sweep's data instead (bench/scale.py: documents of BOS + T
 * random characters, V = 64), and any number of steps. */
#include "microgpt.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s C T L dtype(0=f64,1=f32) B steps [names.txt]\n", argv[0]);
        return 2;
    }
    const int random_docs = argc > 7 && strcmp(argv[7], "random") == 0;
    if (atol(argv[6]) < (random_docs ? 1 : 100)) { fprintf(stderr, "steps must be >= 100\n"); return 2; }
    int C = atoi(argv[1]), T = atoi(argv[2]), L = atoi(argv[3]), dt = atoi(argv[4]), B = atoi(argv[5]); long steps = atol(argv[6]);
    /* corpus from names.txt */
    int32_t *corpus; int64_t *starts, nd = 0, n = 0; int V = 27;
    if (random_docs) {
        V = 64; nd = 256; corpus = malloc((size_t)nd * (T + 1) * 4); starts = malloc((nd + 1) * 8); srand(7);
        for (int64_t d = 0; d < nd; d++) { starts[d] = n; corpus[n++] = 63; for (int t = 0; t < T; t++) corpus[n++] = rand() % 63; }
    } else {
    FILE *f = fopen(argc > 7 ? argv[7] : "../shared/data/names.txt", "r");
    if (f == NULL) { perror("names.txt"); return 2; } char line[256];
    corpus = malloc(400000 * 4); starts = malloc(40000 * 8);
    while (fgets(line, sizeof line, f)) { size_t len = strcspn(line, "\r\n"); if (!len) continue; starts[nd++] = n; corpus[n++] = 26; for (size_t i = 0; i < len; i++) corpus[n++] = line[i] - 'a'; corpus[n++] = 26; }
    }
    starts[nd] = n;
    mg_config cfg = {V, T, L, C, 4}; mg_model *M; int rc = mg_model_create(&M, &cfg, dt, (size_t)T * B);
    if (rc) { printf("create %d\n", rc); return 1; }
    size_t np = mg_model_num_params(M); void *P = mg_model_params(M); srand(1);
    for (size_t i = 0; i < np; i++) { double r = ((double)rand() / RAND_MAX - 0.5) * 0.16; if (dt == 0) ((double*)P)[i] = r; else ((float*)P)[i] = (float)r; }
    double *losses = malloc(steps * 8); long done;
    struct timespec a, b, wa, wb; double bestw = 1e30;
    mg_train_steps(M, corpus, starts, nd, 0, random_docs ? 1 : 100, steps, B, 0.01, 0.85, 0.99, 1e-8, losses, NULL, &done);
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a); clock_gettime(CLOCK_MONOTONIC, &wa);
        rc = mg_train_steps(M, corpus, starts, nd, 0, steps, steps, B, 0.01, 0.85, 0.99, 1e-8, losses, NULL, &done);
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b); clock_gettime(CLOCK_MONOTONIC, &wb);
        double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / steps; if (us < best) best = us; double uw = ((wb.tv_sec - wa.tv_sec) * 1e9 + (wb.tv_nsec - wa.tv_nsec)) / 1e3 / steps; if (uw < bestw) bestw = uw;
    }
    unsigned long long hsh = 1469598103934665603ULL; const unsigned char *pp = P; for (size_t i = 0; i < np * (dt ? 4 : 8); i++) { hsh ^= pp[i]; hsh *= 1099511628211ULL; }
    printf("wall %.2f us/step | ", bestw); printf("C=%d T=%d L=%d %s B=%d: %.2f us/step  %.2f us/name  loss %.17g rc=%d hash %016llx\n", C, T, L, dt ? "f32" : "f64", B, best, best / B, losses[steps - 1], rc, hsh);
    mg_model_free(M); return 0;
}
