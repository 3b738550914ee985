/* The float32 kernels and model: the relaxed policy (exact_math.h). */
#define REAL float
#define IREAL int32_t
#include "isa.h"   /* MG_ISA_SUF: this copy's suffix */
#define FN(name) MG_PASTE(name##_f32, MG_ISA_SUF)
#define POW powf
#define EXP expf
#define LOG logf
#define SQRT sqrtf
#define MG_RELAXED 1
#include "dtype_impl.h"
