/*
 * simd.h: the one vector vocabulary of the kernels (a template over REAL:
 * included once per dtype translation unit, after REAL, IREAL and FN).
 *
 * One "register" is MG_VBYTES bytes of REALs (vbytes.h: the target's own
 * register, 64 bytes with AVX-512, 32 with AVX2, 16 with SSE2 or NEON;
 * MG_LANES = MG_VBYTES / sizeof(REAL) lanes), written with the GCC/Clang
 * vector extension.  (A vector wider than the target's registers is split
 * by the compiler, and GCC then keeps it in memory: 25x slower, measured on
 * Zen 3 with 64-byte vectors in the AVX2 clones.)  Everything here is either IEEE arithmetic lane by lane or pure
 * data movement (loads, stores, selects, permutations), so every form below
 * (GCC's __builtin_shuffle, the lane loops used elsewhere) gives the same
 * bits.
 *
 *   VEC, IVEC          a register of REALs / of same-size integers (masks)
 *   HVEC               half a register (short blocks)
 *   LOADU, STOREU      unaligned load / store of a register
 *   MG_SEL(m, a, b)    lanes of a where the mask m is set, else of b
 *   MG_VPERM(x, m)     r[l] = x[m[l]]                  (m: an IVEC of lanes)
 *   MG_VPERM2(x, y, m) r[l] = m[l] < NB ? x[m[l]] : y[m[l] - NB]
 *   group sums         FN(group_sum_seq) (sequential, the reference's order),
 *                      FN(group_sum_tree) (a butterfly), FN(group_bcast)
 */

#include "vbytes.h"
#define MG_LANES ((int)(MG_VBYTES / sizeof(REAL)))
typedef REAL FN(vec_t) __attribute__((vector_size(MG_VBYTES)));
typedef REAL FN(uvec_t) __attribute__((vector_size(MG_VBYTES), aligned(sizeof(REAL))));
typedef REAL FN(hvec_t) __attribute__((vector_size(MG_VBYTES / 2), aligned(sizeof(REAL))));
typedef IREAL FN(ivec_t) __attribute__((vector_size(MG_VBYTES)));
#define VEC FN(vec_t)
#define IVEC FN(ivec_t)
#define UVEC FN(uvec_t)
#define HVEC FN(hvec_t)
#define LOADU(p) (*(const UVEC *)(p))
#define STOREU(p, x) (*(UVEC *)(p) = (x))
#define MG_SEL(m, a, b) ((VEC)(((IVEC)(a) & (m)) | ((IVEC)(b) & ~(m))))

/* Permutations.  The masks are built by unrolled loops over constants, so
 * after inlining each is a constant and every clone picks its own fixed
 * permutation instruction.  (Macros, not functions: no vector-argument ABI
 * is involved.) */
#if defined(__GNUC__) && !defined(__clang__)
#define MG_HAVE_SHUFFLE 1
#define MG_VPERM(x, m) __builtin_shuffle((x), (m))
#define MG_VPERM2(x, y, m) __builtin_shuffle((x), (y), (m))
#define MG_UNROLL MG_PRAGMA(GCC unroll 16)
#else
/* Clang has no __builtin_shuffle with a mask vector: the same lanes by a loop */
#define MG_HAVE_SHUFFLE 0
#define MG_VPERM(x, m) ({ const VEC x_ = (x); const IVEC m_ = (m); VEC r_;               \
    for (int l_ = 0; l_ < MG_LANES; l_++) r_[l_] = x_[m_[l_] & (MG_LANES - 1)]; r_; })
#define MG_VPERM2(x, y, m) ({ const VEC x_ = (x), y_ = (y); const IVEC m_ = (m); VEC r_; \
    for (int l_ = 0; l_ < MG_LANES; l_++) {                                              \
        const int j_ = (int)(m_[l_] & (2 * MG_LANES - 1));                               \
        r_[l_] = j_ < MG_LANES ? x_[j_] : y_[j_ - MG_LANES]; }                           \
    r_; })
#if defined(__clang__)
#define MG_UNROLL MG_PRAGMA(clang loop unroll(full))
#else
#define MG_UNROLL
#endif
#endif

/* *sp += *ap shifted down by j lanes: a[l + j] in lane l (indices modulo NB:
 * the lanes that wrap are never read) */
MG_INLINE void FN(shift_add)(VEC *sp, const VEC *ap, const int j) {
    IVEC m;
    MG_UNROLL
    for (int l = 0; l < MG_LANES; l++) m[l] = (l + j) & (MG_LANES - 1);
    *sp = *sp + MG_VPERM(*ap, m);
}

/* *sp = the sequential sum over each group of HS lanes of *ap, in the group's
 * first lane: (((0 + a[g]) + a[g + 1]) + a[g + 2]) ..., the reference's order:
 * adds of a shifted by 1, 2, .., HS - 1 lanes, in that order (not a tree) */
MG_INLINE void FN(group_sum_seq)(VEC *sp, const VEC *ap, const int HS) {
    const VEC zero = {0};
    *sp = zero + *ap;
    if (HS > 1) FN(shift_add)(sp, ap, 1);
    if (HS > 2) FN(shift_add)(sp, ap, 2);
    if (HS > 3) FN(shift_add)(sp, ap, 3);
    if (HS > 4) FN(shift_add)(sp, ap, 4);
    if (HS > 5) FN(shift_add)(sp, ap, 5);
    if (HS > 6) FN(shift_add)(sp, ap, 6);
    if (HS > 7) FN(shift_add)(sp, ap, 7);
    if (HS > 8) FN(shift_add)(sp, ap, 8);
    if (HS > 9) FN(shift_add)(sp, ap, 9);
    if (HS > 10) FN(shift_add)(sp, ap, 10);
    if (HS > 11) FN(shift_add)(sp, ap, 11);
    if (HS > 12) FN(shift_add)(sp, ap, 12);
    if (HS > 13) FN(shift_add)(sp, ap, 13);
    if (HS > 14) FN(shift_add)(sp, ap, 14);
    if (HS > 15) FN(shift_add)(sp, ap, 15);
}

/* lane g*HS (the first of its group) copied to every lane of the group */
MG_INLINE void FN(group_bcast)(VEC *xp, const int HS) {
    if (HS == 1) return;
    IVEC m;
    MG_UNROLL
    for (int l = 0; l < MG_LANES; l++) m[l] = l / HS * HS;
    *xp = MG_VPERM(*xp, m);
}

/* *xp += *xp with lanes l and l ^ s swapped */
MG_INLINE void FN(xor_add)(VEC *xp, const int s) {
    IVEC m;
    MG_UNROLL
    for (int l = 0; l < MG_LANES; l++) m[l] = l ^ s;
    *xp = *xp + MG_VPERM(*xp, m);
}

/* the sum over each group of HS lanes in every lane of the group, as a
 * butterfly (a fixed tree; a + b == b + a, so all lanes of a group agree) */
MG_INLINE void FN(group_sum_tree)(VEC *xp, const int HS) {
    if (HS > 1) FN(xor_add)(xp, 1);
    if (HS > 2) FN(xor_add)(xp, 2);
    if (HS > 4) FN(xor_add)(xp, 4);
    if (HS > 8) FN(xor_add)(xp, 8);
}

/* One interleaving stage of the in-register transpose of NB registers
 * (block b): for row pairs (j, j + b), lanes of 2b-blocks: the first halves
 * of both rows, then the second halves. */
MG_INLINE void FN(transpose_stage)(VEC *r, const int b) {
    enum { NB = MG_LANES };
    IVEC lo = {0}, hi = {0};
    MG_UNROLL
    for (int k = 0; k < NB; k++) {
        const int B = k / (2 * b) * (2 * b), w = k % (2 * b);
        lo[k] = w < b ? B + w : NB + B + w - b;
        hi[k] = w < b ? B + b + w : NB + B + w;
    }
    MG_UNROLL
    for (int j = 0; j < NB; j++)
        if ((j & b) == 0) {
            const VEC x = r[j], y = r[j + b];
            r[j] = MG_VPERM2(x, y, lo);
            r[j + b] = MG_VPERM2(x, y, hi);
        }
}

/* r[0 .. NB) transposed in registers (lane k of row j <-> lane j of row k) */
MG_INLINE void FN(vtranspose)(VEC *r) {
    if (MG_LANES >= 16) FN(transpose_stage)(r, 8);
    if (MG_LANES >= 8) FN(transpose_stage)(r, 4);
    if (MG_LANES >= 4) FN(transpose_stage)(r, 2);
    if (MG_LANES >= 2) FN(transpose_stage)(r, 1);
}
