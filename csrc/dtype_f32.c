/* The float32 kernels and model: the relaxed policy (exact_math.h). */
#define REAL float
#define IREAL int32_t
#include "isa.h"
/* the copy's suffix (isa.h): _v1 for the baseline copy of a multi-ISA build,
 * _v3 / _v4 from dtype_f32_v3.c / _v4.c; none in a single-copy build */
#ifndef MG_ISA_SUF
#if MG_MULTI_ISA
#define MG_ISA_SUF _v1
#else
#define MG_ISA_SUF
#endif
#endif
#define FN(name) MG_PASTE(name##_f32, MG_ISA_SUF)
#define POW powf
#define EXP expf
#define LOG logf
#define SQRT sqrtf
#define MG_RELAXED 1
#include "dtype_impl.h"
