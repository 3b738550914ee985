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
#define SQRT sqrtf
#include "kernels_impl.h"
#include "model_impl.h"
