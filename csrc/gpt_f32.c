/* Float32 instantiation of the kernels and the model. */
#include "microgpt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REAL float
#define FN(name) name##_f32
#define POW powf
#define EXP expf
#define LOG logf
#define IREAL int32_t   /* integer of the size of REAL (shuffle masks) */
#define SQRT sqrtf
#define MG_FAST_RECIP 1   /* float32: 1/x and 1/sqrt(x) instead of powf */
#include "kernels_impl.h"
#include "model_impl.h"
