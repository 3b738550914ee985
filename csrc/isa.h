/*
 * isa.h: which instruction sets the kernels are built for.
 *
 * With GCC on x86-64 Linux (the package's usual build) the dtype kernels are
 * compiled three times, each for its own target (ggml-cpu's way, not one
 * binary with a fixed vector width): dtype_f64.c / dtype_f32.c for baseline
 * x86-64 (SSE2), dtype_*_v3.c for x86-64-v3 (AVX2 + FMA) and dtype_*_v4.c for
 * x86-64-v4 (AVX-512), each with registers of its own width (simd.h:
 * MG_VBYTES) and register tiles sized for its register file (gemm.h).
 * dispatch.c picks one copy per process (the best the CPU supports, or a
 * lower one named by MICROGPT_C_ISA) and mg_simd_variant() reports it.
 * Every copy computes each output element with the same IEEE operations in
 * the same order, so float64 gives the same bits in every copy; float32 uses
 * fused multiply-adds where the target has them (v3, v4), so its baseline
 * copy differs from the others (README, "What is bit-identical").
 *
 * Elsewhere (Clang, other CPUs, other systems, or -DMG_NO_MULTI_ISA) one copy
 * is built for the compiler's target.
 */
#ifndef MG_ISA_H
#define MG_ISA_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(MG_NO_MULTI_ISA)
#define MG_MULTI_ISA 1
#else
#define MG_MULTI_ISA 0
#endif

/* the suffix of this copy's names: set by dtype_*_v3.c / _v4.c before they
 * include this; _v1 for the baseline copy of a multi-ISA build; none in a
 * single-copy build */
#ifndef MG_ISA_SUF
#if MG_MULTI_ISA
#define MG_ISA_SUF _v1
#else
#define MG_ISA_SUF
#endif
#endif

/* token pasting through one level of expansion (MG_ISA_SUF may be empty) */
#define MG_PASTE_(a, b) a##b
#define MG_PASTE(a, b) MG_PASTE_(a, b)

/* The ISA level the process runs (dispatch.c): 4 = x86-64-v4, 3 = x86-64-v3,
 * 1 = baseline x86-64; 0 in a single-copy build. */
int mg_isa_level(void);

#endif /* MG_ISA_H */
