/* float64 instantiation of csrc/ops/gemm.h (compiled with -ffp-contract=off). */
#define REAL double
#define FN(name) name##_f64
#include "ops/gemm.h"
