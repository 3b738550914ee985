/* The float32 kernels and model for x86-64-v3 (AVX2 + FMA), where the build
 * compiles one copy per ISA (isa.h); empty elsewhere. */
#define MG_ISA_SUF _v3   /* (before isa.h, which gives the baseline copy _v1) */
#include "isa.h"
#if MG_MULTI_ISA
#pragma GCC target("arch=x86-64-v3")
#include "dtype_f32.c"
#else
typedef int mg_dtype_f32_v3_unused;   /* (a translation unit is never empty) */
#endif
