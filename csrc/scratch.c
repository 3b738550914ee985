/*
 * scratch.c: per-thread scratch buffers for the kernels (the GEMM's packed
 * panels, the weight-gradient blocks that Adam applies at once).  Each thread
 * keeps, per slot, the largest buffer it has needed: the hot loops then never
 * allocate, and never touch fresh pages (glibc returns large blocks to the
 * system on free, and every new use page-faults them in again: 2-3% of a
 * training step at 256/128x4 before this).  Freed when the thread exits
 * (POSIX threads; elsewhere the buffers live as long as the thread's
 * storage and are freed at process exit).
 */
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define MG_HAVE_PTHREAD 1
#else
#define MG_HAVE_PTHREAD 0
#endif

typedef struct {
    void *raw[MG_SCRATCH_SLOTS];    /* as allocated */
    size_t size[MG_SCRATCH_SLOTS];  /* usable bytes past the 64-byte alignment */
} mg_scratch_t;

static _Thread_local mg_scratch_t *mg_scratch_tls;

static void mg_scratch_release(void *p) {
    mg_scratch_t *s = (mg_scratch_t *)p;
    if (s == NULL) return;
    for (int i = 0; i < MG_SCRATCH_SLOTS; i++) free(s->raw[i]);
    free(s);
}

#if MG_HAVE_PTHREAD
static pthread_key_t mg_scratch_key;
static int mg_scratch_key_ok;
static pthread_once_t mg_scratch_once = PTHREAD_ONCE_INIT;
static void mg_scratch_key_init(void) {
    mg_scratch_key_ok = pthread_key_create(&mg_scratch_key, mg_scratch_release) == 0;
}
#endif

void *mg_scratch(int slot, size_t bytes) {
    if (slot < 0 || slot >= MG_SCRATCH_SLOTS || bytes > SIZE_MAX - 64) return NULL;
    mg_scratch_t *s = mg_scratch_tls;
    if (s == NULL) {
#if MG_HAVE_PTHREAD
        pthread_once(&mg_scratch_once, mg_scratch_key_init);
        if (!mg_scratch_key_ok) return NULL;
#endif
        s = (mg_scratch_t *)calloc(1, sizeof *s);
        if (s == NULL) return NULL;
#if MG_HAVE_PTHREAD
        if (pthread_setspecific(mg_scratch_key, s) != 0) { free(s); return NULL; }
#endif
        mg_scratch_tls = s;
    }
    if (s->size[slot] < bytes) {
        void *raw = malloc(bytes + 64);
        if (raw == NULL) return NULL;   /* (the old, smaller buffer stays) */
        free(s->raw[slot]);
        s->raw[slot] = raw;
        s->size[slot] = bytes;
    }
    char *p = (char *)s->raw[slot];
    return p + (64 - (uintptr_t)p % 64) % 64;
}
