/* The float64 kernels and model: the exact policy (the reference's bits;
 * compiled with -ffp-contract=off: no fused multiply-add). */
#define REAL double
#define IREAL int64_t
#include "isa.h"   /* MG_ISA_SUF: this copy's suffix */
#define FN(name) MG_PASTE(name##_f64, MG_ISA_SUF)
#define POW pow
#define EXP exp
#define LOG log
#define SQRT sqrt
#define MG_RELAXED 0
#include "dtype_impl.h"

/* The libm-exact reciprocal and inverse square root of the float64 kernels
 * (exact_math.h), for the C tests. */
double FN(mg_recip_pow)(double x) { return FN(recip_pow)(x); }
double FN(mg_rsqrt_pow)(double x) { return FN(rsqrt_pow)(x); }
