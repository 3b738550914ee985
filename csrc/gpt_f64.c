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
