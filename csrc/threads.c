/*
 * threads.c: the process-wide thread setting, the per-op forced variants,
 * and what the build and this CPU run (the SIMD variant).
 */
#include "common.h"
#include "microgpt.h"
#include "mg_kernels.h"

int mg_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#ifdef _OPENMP
_Thread_local int mg_serial = 0;
#endif

static int g_num_threads = 0;  /* 0: OpenMP's default */

int mg_team_size(void) {
#ifdef _OPENMP
    const int n = g_num_threads;
    return n > 0 ? n : omp_get_max_threads();
#else
    return 1;
#endif
}

int mg_get_max_threads(void) {
    return mg_team_size();
}

void mg_set_num_threads(int n) {
    if (n > 0) g_num_threads = n;
}

int mg_forced_variant[MG_NUM_OPS] = {MG_VARIANT_AUTO, MG_VARIANT_AUTO, MG_VARIANT_AUTO};

int mg_force_variant(int op, int variant) {
    static const int count[MG_NUM_OPS] = {MG_MM_NUM_VARIANTS, MG_ATT_NUM_VARIANTS,
                                          MG_ADAM_NUM_VARIANTS};
    if (op < 0 || op >= MG_NUM_OPS || variant < MG_VARIANT_AUTO || variant >= count[op])
        return MG_ERR_ARG;
    mg_forced_variant[op] = variant;
    return MG_OK;
}

int mg_adam_quiet_path(void) {
    const int forced = mg_forced_variant[MG_OP_ADAM];
    if (forced != MG_VARIANT_AUTO) return forced == MG_ADAM_QUIET;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static int intel = -1;
    if (intel < 0) {
        __builtin_cpu_init();
        intel = __builtin_cpu_is("intel") ? 1 : 0;
    }
    return intel;
#else
    return 0;
#endif
}

/* The copy of the kernels this process runs (dispatch.c), the clone GCC's
 * resolver picks for MG_HOT functions (the same CPU test), else the
 * compiler's target. */
const char *mg_simd_variant(void) {
#if MG_MULTI_ISA
    const int l = mg_isa_level();
    return l >= 4 ? "x86-64-v4" : l >= 3 ? "x86-64-v3" : "x86-64";
#elif MG_HAVE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4";
    if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3";
    return "x86-64";
#elif defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__)
    return "avx2";
#elif defined(__ARM_NEON)
    return "neon";
#elif defined(__SSE2__)
    return "sse2";
#else
    return "generic";
#endif
}

unsigned long mg_fp_env(void) { return (unsigned long)mg_fp_get(); }

void mg_fp_env_set(unsigned long state) { mg_fp_set((mg_fp_state_t)state); }

int mg_fp_team_envs(unsigned long *out, int n) {
    int size = 1;
#ifdef _OPENMP
    MG_PRAGMA(omp parallel num_threads(mg_team_size()))
    {
        const int me = omp_get_thread_num();
        if (me < n) out[me] = (unsigned long)mg_fp_get();
        MG_PRAGMA(omp master)
        size = omp_get_num_threads();
    }
#else
    if (n > 0) out[0] = (unsigned long)mg_fp_get();
#endif
    return size;
}
