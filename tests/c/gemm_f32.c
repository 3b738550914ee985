/* float32 instantiation of csrc/ops/gemm.h (compiled with -ffp-contract=fast). */
#include <stdlib.h>
#include "gemm_api.h"
#define MG_GEMM_MALLOC(n) (gemm_test_no_malloc ? NULL : malloc(n))
#define REAL float
#define FN(name) name##_f32
#include "ops/gemm.h"
