/* float64 instantiation of csrc/ops/gemm.h (compiled with -ffp-contract=off). */
#include <stdlib.h>
#include "gemm_api.h"
#define MG_GEMM_MALLOC(n) (gemm_test_no_malloc ? NULL : malloc(n))
#define REAL double
#define FN(name) name##_f64
#include "ops/gemm.h"
