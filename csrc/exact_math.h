/*
 * exact_math.h: reciprocals, inverse square roots and exp, and the float
 * policy of a dtype (a template over REAL; the dtype's translation unit
 * defines MG_RELAXED before including it).
 *
 *   exact   (MG_RELAXED 0, float64): computed as the reference computes
 *           them, with libm (pow(x, -1), pow(x, -0.5), exp, log) and the
 *           SPEC's sequential sums, so the results are the reference's bits;
 *   relaxed (MG_RELAXED 1, float32): 1/x and 1/sqrt(x), a vector exp, and
 *           fixed-order vector sums (rounding-level agreement only; still
 *           the same bits for any thread count).
 *
 * The ops keep the two policies in separate functions (suffixes _exact and
 * _relaxed) and pick one at their entry, never inside a loop body.
 */

#if MG_RELAXED
#define RECIP(x) ((REAL)1 / (x))
#define RSQRT(x) ((REAL)1 / SQRT(x))
#else
#define RECIP(x) FN(recip_pow)(x)
#define RSQRT(x) FN(rsqrt_pow)(x)
/* pow(x, -1) with the same bits as libm's, mostly without calling it.  The
 * correctly rounded r = 1/x has the exact residual e = 1 - x r (one fma), so
 * the exact 1/x lies |e| * m ulps from r (m: r's 53-bit significand).  glibc's
 * pow is within 0.54 ulp (e_pow.c: its result before the final rounding is
 * within ~0.04 ulp of the exact value), so whenever the exact value is more
 * than 0.05 ulp inside r's rounding interval (|e| m <= 0.45) pow returns r
 * too; otherwise (about 1 call in 10) ask pow.  Checked against pow on 10^8
 * random arguments (tests/c/test_core.c checks it on every run).  Other C
 * libraries: always pow. */
#if defined(__GLIBC__) && !defined(MG_NO_RECIP_FASTPATH)
static inline REAL FN(recip_pow)(REAL x) {
    const REAL r = (REAL)1 / x;
    const REAL e = __builtin_fma(-x, r, (REAL)1);
    uint64_t u;
    memcpy(&u, &r, sizeof u);
    const uint64_t ex = (u >> 52) & 0x7ff;
    if (sizeof(REAL) == 8 && ex > 0 && ex < 0x7fe &&
        __builtin_fabs(e) * (REAL)((u & 0xfffffffffffffull) | (1ull << 52)) <= (REAL)0.45)
        return r;
    return POW(x, (REAL)-1);
}

/* pow(x, -0.5) the same way: r0 = 1/sqrt(x) (two roundings, so often not
 * the nearest double) and one Newton correction r = r0 + r0 d0 / 2, where
 * d = 1 - x r^2 comes from r^2 = hi + lo exactly (fma); the exact x^-0.5 lies
 * |d|/2 * m ulps from r: r is pow's answer when that is <= 0.45 (which also
 * proves r is the nearest double). */
static inline REAL FN(rsqrt_pow)(REAL x) {
    const REAL r0 = (REAL)1 / __builtin_sqrt(x);
    const REAL hi0 = r0 * r0, lo0 = __builtin_fma(r0, r0, -hi0);
    const REAL r = r0 + (r0 * (__builtin_fma(-x, hi0, (REAL)1) - x * lo0)) * (REAL)0.5;
    const REAL hi = r * r, lo = __builtin_fma(r, r, -hi);
    const REAL d = __builtin_fma(-x, hi, (REAL)1) - x * lo;
    uint64_t u;
    memcpy(&u, &r, sizeof u);
    const uint64_t ex = (u >> 52) & 0x7ff;
    if (sizeof(REAL) == 8 && x > 0 && ex > 0 && ex < 0x7fe &&
        __builtin_fabs(d) * (REAL)0.5 * (REAL)((u & 0xfffffffffffffull) | (1ull << 52)) <= (REAL)0.45)
        return r;
    return POW(x, (REAL)-0.5);
}
#else
static inline REAL FN(recip_pow)(REAL x) { return POW(x, (REAL)-1); }
static inline REAL FN(rsqrt_pow)(REAL x) { return POW(x, (REAL)-0.5); }
#endif
#endif

#if MG_RELAXED
/* Float32 only: exp of a vector, 2^n e^r with |r| <= ln2/2 and a degree-7
 * Taylor polynomial (relative error ~1e-7, about an ulp), in plain IEEE
 * multiplies and adds, so every clone gives the same bits.  Arguments are
 * clamped to [-87, 88] (below -87: e^-87 ~ 1.6e-38 instead of a subnormal or
 * 0, which only ever meets sums of order 1 here). */
/* in place (*xp = exp(*xp)): by pointer, so no vector-argument ABI is involved */
MG_INLINE void FN(vexp)(VEC *xp) {
    VEC x = *xp;
    const VEC zero = {0};
    /* (each comparison feeds one select: GCC 12 scalarises a mask used twice) */
    x = MG_SEL(x < (REAL)-87, zero + (REAL)-87, x);
    x = MG_SEL(x > (REAL)88, zero + (REAL)88, x);
    const VEC nf = (x * (REAL)1.44269504088896341 + (REAL)12582912) - (REAL)12582912;
    const VEC r = (x - nf * (REAL)0.693145751953125) - nf * (REAL)1.428606765330187e-06;
    VEC p = zero + (REAL)(1.0 / 5040);
    p = p * r + (REAL)(1.0 / 720);
    p = p * r + (REAL)(1.0 / 120);
    p = p * r + (REAL)(1.0 / 24);
    p = p * r + (REAL)(1.0 / 6);
    p = p * r + (REAL)0.5;
    p = p * r + (REAL)1;
    p = p * r + (REAL)1;
    const IVEC ni = __builtin_convertvector(nf, IVEC);
    const VEC scale = (VEC)((ni + 127) << 23);
    *xp = p * scale;
}
#endif

/* C^-1 and (HS^0.5)^-1 as the kernels compute them, cached per thread (the
 * same value every time; saves libm pow calls in the small-size hot loop) */
static REAL FN(recip_int)(int c) {
    static _Thread_local int last = 0;
    static _Thread_local REAL value = 0;
    if (c != last) { value = RECIP((REAL)c); last = c; }
    return value;
}

static REAL FN(att_scale)(int hs) {
    static _Thread_local int last = 0;
    static _Thread_local REAL value = 0;
    if (hs != last) { value = RECIP(POW((REAL)hs, (REAL)0.5)); last = hs; }
    return value;
}
