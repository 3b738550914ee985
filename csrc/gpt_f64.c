/* Float64 instantiation of the kernels and the model (compile with
 * -ffp-contract=off so results match the reference to rounding). */
#include "microgpt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REAL double
#define FN(name) name##_f64
#define POW pow
#define EXP exp
#define LOG log
#define IREAL int64_t   /* integer of the size of REAL (shuffle masks) */
#define SQRT sqrt
#include "kernels_impl.h"
#include "model_impl.h"

/* The libm-exact reciprocal and inverse square root of the float64 kernels
 * (see recip_pow in kernels_impl.h), exposed for the C tests. */
double mg_recip_pow_f64(double x) { return recip_pow_f64(x); }
double mg_rsqrt_pow_f64(double x) { return rsqrt_pow_f64(x); }
