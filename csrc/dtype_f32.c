/* The float32 kernels and model: the relaxed policy (exact_math.h). */
#define REAL float
#define IREAL int32_t
#define FN(name) name##_f32
#define POW powf
#define EXP expf
#define LOG logf
#define SQRT sqrtf
#define MG_RELAXED 1
#include "dtype_impl.h"
