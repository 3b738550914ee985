/*
 * common.h: what every part of the C core shares (not a template).
 *
 * Dimension names, used everywhere:
 *   V  vocab_size          T  block_size (max sequence length)
 *   L  n_layer             C  n_embd          NH  n_head    HS = C / NH
 *   N  tokens in a batch (documents packed back to back)
 *   OC output channels of a matmul
 *
 * The threading rule: a kernel opens an OpenMP region only when its work
 * pays for one (MG_USE_THREADS); each output element is written by one
 * thread with a fixed summation order, so results never depend on the
 * number of threads.  Status codes are in microgpt.h; nothing in the core
 * calls exit/abort/assert on user input.
 */
#ifndef MG_COMMON_H
#define MG_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MG_STR(x) #x
#define MG_PRAGMA(x) _Pragma(MG_STR(x))
#define MG_INLINE static inline __attribute__((always_inline))

#include "isa.h"

/* Where one copy of the kernels serves every x86-64 CPU (a single-copy GCC
 * build on x86-64 Linux with MG_NO_MULTI_ISA), hot kernels are cloned for
 * AVX-512, AVX2 and baseline x86-64 and picked at load time (GCC function
 * multiversioning; the vector width is the baseline's).  A multi-ISA build
 * (isa.h) compiles whole copies instead; elsewhere, plain code for the
 * compiler's target.  Each form computes the same IEEE operations in the
 * same order (see simd.h for what may differ). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !MG_MULTI_ISA && !defined(MG_NO_CLONES)
#define MG_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define MG_HAVE_CLONES 1
#else
#define MG_HOT
#define MG_HAVE_CLONES 0
#endif

/* Threads a parallel region uses: the mg_set_num_threads value, else
 * OpenMP's default (threads.c). */
int mg_team_size(void);

/* A kernel goes parallel only from this many multiply-adds: a region costs
 * tens of microseconds when the threads have to be woken, and measured on 2
 * cores, one document per step at 64/64 (1 or 4 layers) and 128/64 x 2
 * layers ran slower on 2 threads than on 1 with any lower threshold (e.g.
 * 64/64 float32: 98 us vs 66 at 1e5, 73 vs 65 at 1e6, 65 vs 69 at 4e6). */
#ifndef MG_OMP_MIN_WORK
#define MG_OMP_MIN_WORK 4000000
#endif

#ifdef _OPENMP
#include <omp.h>
/* set by the model around a batched step too small for a team (serial) */
extern _Thread_local int mg_serial;
/* Threads only when `work` multiply-adds pay for them, there are at least
 * two pieces and no team is already running (a kernel called inside the
 * model's parallel region runs serially). */
#define MG_USE_THREADS(work, pieces) \
    ((work) >= MG_OMP_MIN_WORK && (pieces) > 1 && !mg_serial && mg_team_size() > 1 && \
     !omp_in_parallel())
static inline int mg_thread_num(void) { return omp_get_thread_num(); }
static inline int mg_num_threads(void) { return omp_get_num_threads(); }
#else
#define MG_USE_THREADS(work, pieces) 0
static inline int mg_thread_num(void) { return 0; }
static inline int mg_num_threads(void) { return 1; }
#endif

/* The floating-point environment of our work.  Each dtype sets its own on
 * every thread that runs it, for the length of a call, and restores the
 * caller's on return: float32 flushes subnormals to zero (FTZ and DAZ:
 * subnormal arithmetic takes a slow microcode path on many cores, and the
 * Adam moments of parameters whose gradient is zero decay into that range);
 * float64 runs with both off and rounding to nearest, the IEEE default the
 * reference's bits need, whatever the caller set.  mg_fp_state_t is the
 * MXCSR (x86-64) or FPCR (aarch64); elsewhere nothing is changed. */
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
typedef unsigned int mg_fp_state_t;
#define MG_FP_FLUSH 0x8040u        /* FTZ (bit 15) | DAZ (bit 6) */
#define MG_FP_MODE_BITS 0xe040u    /* FTZ, rounding control (13-14), DAZ */
static inline mg_fp_state_t mg_fp_get(void) { return _mm_getcsr(); }
static inline void mg_fp_set(mg_fp_state_t s) { _mm_setcsr(s); }
#elif defined(__aarch64__)
typedef unsigned long mg_fp_state_t;
#define MG_FP_FLUSH (1ul << 24)                 /* FZ */
#define MG_FP_MODE_BITS ((1ul << 24) | (3ul << 22))   /* FZ, RMode */
static inline mg_fp_state_t mg_fp_get(void) {
    mg_fp_state_t s;
    __asm__ volatile("mrs %0, fpcr" : "=r"(s));
    return s;
}
static inline void mg_fp_set(mg_fp_state_t s) { __asm__ volatile("msr fpcr, %0" : : "r"(s)); }
#else
typedef unsigned int mg_fp_state_t;
#define MG_FP_FLUSH 0u
#define MG_FP_MODE_BITS 0u
static inline mg_fp_state_t mg_fp_get(void) { return 0; }
static inline void mg_fp_set(mg_fp_state_t s) { (void)s; }
#endif

/* Enter a dtype's environment (flush: float32) on this thread; returns the
 * state to restore with mg_fp_set. */
static inline mg_fp_state_t mg_fp_enter(int flush) {
    const mg_fp_state_t saved = mg_fp_get();
    const mg_fp_state_t want = (saved & ~(mg_fp_state_t)MG_FP_MODE_BITS) |
                               (flush ? (mg_fp_state_t)MG_FP_FLUSH : 0);
    if (want != saved) mg_fp_set(want);
    return saved;
}

/* A team thread takes the caller's environment; returns its own. */
static inline mg_fp_state_t mg_fp_enter_state(mg_fp_state_t caller) {
    const mg_fp_state_t own = mg_fp_get();
    if (own != caller) mg_fp_set(caller);
    return own;
}

/* An OpenMP parallel loop whose threads run in the calling thread's
 * floating-point environment (and return to their own after it):
 *   MG_PAR_FOR(schedule(static), for (...) body;) */
#define MG_PAR_FOR(SCHED, ...)                                                  \
    do {                                                                        \
        const mg_fp_state_t mg_fp_caller_ = mg_fp_get();                        \
        MG_PRAGMA(omp parallel num_threads(mg_team_size()))                     \
        {                                                                       \
            const mg_fp_state_t mg_fp_own_ = mg_fp_enter_state(mg_fp_caller_);  \
            MG_PRAGMA(omp for SCHED)                                            \
            __VA_ARGS__                                                         \
            mg_fp_set(mg_fp_own_);                                              \
        }                                                                       \
    } while (0)

/* A per-thread scratch buffer of at least `bytes` bytes, 64-byte aligned,
 * reused by later calls of the same thread with the same slot (its contents
 * are not kept across calls of other code using the slot); NULL if memory is
 * short (callers then take a path without it).  scratch.c. */
enum { MG_SCRATCH_GEMM = 0, MG_SCRATCH_DWEIGHT = 1, MG_SCRATCH_SLOTS = 2 };
void *mg_scratch(int slot, size_t bytes);

/* Named variants of the ops (each can be forced for tests and benchmarks;
 * the rule that picks one lives next to the op). */
enum { MG_OP_MATMUL = 0, MG_OP_ATTENTION = 1, MG_OP_ADAM = 2, MG_NUM_OPS = 3 };
enum { MG_VARIANT_AUTO = -1 };
/* matmul: token lanes (copies of the inputs, lanes over tokens), a
 * transposed weight (lanes over output channels), or the packed GEMM
 * (ops/gemm.h: large products, forward and both backward halves) */
enum { MG_MM_TOKEN_LANES = 0, MG_MM_WT = 1, MG_MM_GEMM = 2, MG_MM_NUM_VARIANTS = 3 };
/* attention: rows (scalar, any shape), query lanes (one document, lanes
 * over queries), channel lanes (small heads, lanes over channels), gemm
 * (long documents: query blocks through the packed GEMM) */
enum { MG_ATT_ROWS = 0, MG_ATT_QUERY_LANES = 1, MG_ATT_CHANNEL_LANES = 2, MG_ATT_GEMM = 3,
       MG_ATT_NUM_VARIANTS = 4 };
/* float64 Adam: the plain update, or the quiet path for zero-gradient
 * elements with tiny moments (ops/adam.h); the same bits either way */
enum { MG_ADAM_PLAIN = 0, MG_ADAM_QUIET = 1, MG_ADAM_NUM_VARIANTS = 2 };
/* 1 where the quiet path pays: cores whose subnormal arithmetic takes a slow
 * microcode path (Intel); elsewhere (measured on AMD Zen 5: the hardware
 * handles subnormals at nearly full speed, the integer path costs more) 0.
 * A forced MG_OP_ADAM variant overrides it (threads.c). */
int mg_adam_quiet_path(void);
/* the forced variant of each op, or MG_VARIANT_AUTO (threads.c) */
extern int mg_forced_variant[MG_NUM_OPS];

#endif /* MG_COMMON_H */
