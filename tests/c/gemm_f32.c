/* float32 instantiation of csrc/ops/gemm.h (compiled with -ffp-contract=fast). */
#define REAL float
#define FN(name) name##_f32
#include "ops/gemm.h"
