/*
 * dtype_impl.h: one dtype's kernels and model functions.  Included once by
 * dtype_f64.c and once by dtype_f32.c, which first define
 *   REAL, IREAL   the element type and the integer of its size
 *   FN(x)         the suffixed name (x##_f64 / x##_f32)
 *   POW, EXP, LOG, SQRT   the libm functions of that type
 *   MG_RELAXED    the float policy (exact_math.h)
 * Order matters only as "helpers before users"; each op family is one file.
 */
#include "model_internal.h"
#include "mg_kernels.h"

#include "simd.h"
#include "exact_math.h"
#include "ops/encoder.h"
#include "ops/rmsnorm.h"
#include "ops/elementwise.h"
#include "ops/adam.h"
/* the GEMM's pack buffers: this thread's scratch (scratch.c) */
#define MG_GEMM_MALLOC(n) mg_scratch(MG_SCRATCH_GEMM, (n))
#define MG_GEMM_FREE(p) ((void)(p))
#include "ops/gemm.h"
#include "ops/matmul.h"
#include "ops/attention.h"
#include "ops/crossentropy.h"
#include "model_impl.h"

int FN(attention_variant)(int N, int p0, int C, int NH);
int FN(attention_variant)(int N, int p0, int C, int NH) {
    return FN(attention_choose)(N, p0, C, NH);
}
