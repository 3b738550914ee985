/* Prototypes of the two instantiations of csrc/ops/gemm.h (tests/c/gemm_f*.c). */
#ifndef GEMM_API_H
#define GEMM_API_H
#define GEMM_DECL(REAL, S)                                                                  \
    void gemm_##S(REAL *Cm, int ldc, const REAL *A, int rsA, int csA, const REAL *B,        \
                  int rsB, int csB, int M, int N, int K, int acc);                          \
    int gemm_num_tiles_##S(int M, int N);                                                   \
    void gemm_tiles_##S(REAL *Cm, int ldc, const REAL *A, int rsA, int csA, const REAL *B,  \
                        int rsB, int csB, int M, int N, int K, int acc, int tile0, int tile1);
GEMM_DECL(double, f64)
GEMM_DECL(float, f32)
#undef GEMM_DECL
/* set: the pack buffers cannot be allocated (the unpacked fallback runs) */
extern int gemm_test_no_malloc;
#endif
