/* The float64 kernels and model: the exact policy (the reference's bits;
 * compiled with -ffp-contract=off: no fused multiply-add). */
#define REAL double
#define IREAL int64_t
#define FN(name) name##_f64
#define POW pow
#define EXP exp
#define LOG log
#define SQRT sqrt
#define MG_RELAXED 0
#include "dtype_impl.h"

/* The libm-exact reciprocal and inverse square root of the float64 kernels
 * (exact_math.h), for the C tests. */
double mg_recip_pow_f64(double x) { return recip_pow_f64(x); }
double mg_rsqrt_pow_f64(double x) { return rsqrt_pow_f64(x); }
