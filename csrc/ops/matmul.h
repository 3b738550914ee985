/*
 * ops/matmul.h: the products of a linear layer without bias (a template over
 * REAL): forward out = inp @ weight^T, and the backward's two halves
 * (dinp += dout @ weight, dweight += dout^T @ inp, the latter optionally
 * fused with the Adam update of the weight).
 *
 * Every output element is ONE sequential sum over the reduced index, from
 * 0 (forward) or from the accumulated value (backward), in the reference's
 * order, so float64 is exact and every variant below gives the same bits.
 *
 * Variants (MG_MM_*, chosen per batch by FN(matmul_variant)):
 *   token lanes  MG_LANES tokens in a register (a transposed copy of the
 *                inputs), eight outputs at a time: no weight pass, but idle
 *                lanes when N is small;
 *   wT           from a transposed weight wT (C, OCp): lanes over output
 *                channels, full whatever N is; the model keeps wT;
 *   gemm         the packed, cache-blocked GEMM of ops/gemm.h for all three
 *                products (large batches of wide layers): the same sums in
 *                the same order, so the same bits as the other two.
 * The backward kernels below (register tiles over the weight rows) serve the
 * first two; the gemm variant has its own backward (end of this file).
 */
#define MG_STACK_ELEMS 4096

/* (the gemm variant, at the end of this file) */
static void FN(gemm_par)(REAL *Cm, int ldc, const REAL *A, int rsA, int csA, const REAL *B,
                         int rsB, int csB, int M, int N, int K, int acc);
static void FN(matmul_forward_gemm)(REAL *out, const REAL *inp, const REAL *weight, int N, int C,
                                    int OC);
static void FN(matmul_backward_dinp_gemm)(REAL *dinp, const REAL *dout, const REAL *weight,
                                          int N, int C, int OC);


/* One block of nb <= NBV tokens (rows n0 ..) of the token-lane product with
 * vector type VT of NBV lanes; xT (C, NBV) scratch.  Instantiated for full
 * registers and for half registers (a short block, e.g. one 6-token name,
 * fills 6 of 8 half-register lanes instead of 6 of 16: on CPUs that split a
 * 512-bit operation in two 256-bit halves that is twice the throughput).
 * The same IEEE operations per output either way. */
#define MG_DEFINE_MMF_BLOCK(NAME, VT, NBV)                                                      \
MG_HOT static void NAME(REAL *out, const REAL *inp, const REAL *weight, int C, int OC,          \
                        int n0, int nb, REAL *xT) {                                             \
    for (int i = 0; i < C; i++)                                                                 \
        for (int l = 0; l < (NBV); l++)                                                         \
            xT[(size_t)i * (NBV) + l] = l < nb ? inp[(size_t)(n0 + l) * C + i] : (REAL)0;       \
    int oc = 0;                                                                                 \
    for (; oc + 8 <= OC; oc += 8) {  /* eight independent sums hide the add latency */          \
        VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0}, s7 = {0};     \
        const REAL *w0 = weight + (size_t)oc * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;     \
        const REAL *w4 = w3 + C, *w5 = w4 + C, *w6 = w5 + C, *w7 = w6 + C;                      \
        for (int i = 0; i < C; i++) {                                                           \
            const VT x = *(const VT *)(xT + (size_t)i * (NBV));                                 \
            s0 += w0[i] * x; s1 += w1[i] * x; s2 += w2[i] * x; s3 += w3[i] * x;                 \
            s4 += w4[i] * x; s5 += w5[i] * x; s6 += w6[i] * x; s7 += w7[i] * x;                 \
        }                                                                                       \
        for (int l = 0; l < nb; l++) {                                                          \
            REAL *o = out + (size_t)(n0 + l) * OC + oc;                                         \
            o[0] = s0[l]; o[1] = s1[l]; o[2] = s2[l]; o[3] = s3[l];                             \
            o[4] = s4[l]; o[5] = s5[l]; o[6] = s6[l]; o[7] = s7[l];                             \
        }                                                                                       \
    }                                                                                           \
    for (; oc + 4 <= OC; oc += 4) {                                                             \
        VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                              \
        const REAL *w0 = weight + (size_t)oc * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;     \
        for (int i = 0; i < C; i++) {                                                           \
            const VT x = *(const VT *)(xT + (size_t)i * (NBV));                                 \
            s0 += w0[i] * x; s1 += w1[i] * x; s2 += w2[i] * x; s3 += w3[i] * x;                 \
        }                                                                                       \
        for (int l = 0; l < nb; l++) {                                                          \
            REAL *o = out + (size_t)(n0 + l) * OC + oc;                                         \
            o[0] = s0[l]; o[1] = s1[l]; o[2] = s2[l]; o[3] = s3[l];                             \
        }                                                                                       \
    }                                                                                           \
    for (; oc < OC; oc++) {                                                                     \
        VT s0 = {0};                                                                            \
        const REAL *w0 = weight + (size_t)oc * C;                                               \
        for (int i = 0; i < C; i++) s0 += w0[i] * *(const VT *)(xT + (size_t)i * (NBV));        \
        for (int l = 0; l < nb; l++) out[(size_t)(n0 + l) * OC + oc] = s0[l];                   \
    }                                                                                           \
}

MG_DEFINE_MMF_BLOCK(FN(mmf_block_full), UVEC, MG_LANES)
MG_DEFINE_MMF_BLOCK(FN(mmf_block_half), HVEC, MG_LANES / 2)
#undef MG_DEFINE_MMF_BLOCK

static void FN(matmul_forward_blocks)(REAL *out, const REAL *inp, const REAL *weight,
                                      int N, int C, int OC, int b0, int b1,
                                      REAL *xT /* (C, MG_LANES) scratch */) {
    for (int b = b0; b < b1; b++) {
        const int n0 = b * MG_LANES, nb = N - n0 < MG_LANES ? N - n0 : MG_LANES;
        if (nb <= MG_LANES / 2) FN(mmf_block_half)(out, inp, weight, C, OC, n0, nb, xT);
        else FN(mmf_block_full)(out, inp, weight, C, OC, n0, nb, xT);
    }
}

static void FN(matmul_forward_range)(REAL *out, const REAL *inp, const REAL *weight,
                                     int N, int C, int OC, int b0, int b1) {
    REAL stack[MG_STACK_ELEMS];
    REAL *xT = stack;
    if ((size_t)C * MG_LANES > MG_STACK_ELEMS) {
        xT = (REAL *)malloc((size_t)C * MG_LANES * sizeof(REAL));
        if (xT == NULL) {  /* no memory for the scratch: plain loops */
            for (int n = b0 * MG_LANES; n < N && n < b1 * MG_LANES; n++)
                for (int oc = 0; oc < OC; oc++) {
                    REAL s = 0;
                    for (int i = 0; i < C; i++) s += weight[(size_t)oc * C + i] * inp[(size_t)n * C + i];
                    out[(size_t)n * OC + oc] = s;
                }
            return;
        }
    }
    FN(matmul_forward_blocks)(out, inp, weight, N, C, OC, b0, b1, xT);
    if (xT != stack) free(xT);
}

void FN(matmul_forward)(REAL *out,            /* (N, OC) */
                        const REAL *inp,      /* (N, C) */
                        const REAL *weight,   /* (OC, C) */
                        int N, int C, int OC) {
    if (mg_forced_variant[MG_OP_MATMUL] == MG_MM_GEMM) {   /* (forced: tests) */
        FN(matmul_forward_gemm)(out, inp, weight, N, C, OC);
        return;
    }
    const int nblocks = (N + MG_LANES - 1) / MG_LANES;
    if (MG_USE_THREADS((size_t)N * C * OC, nblocks)) {
        MG_PAR_FOR(schedule(static),
        for (int b = 0; b < nblocks; b++) FN(matmul_forward_range)(out, inp, weight, N, C, OC, b, b + 1););
        return;
    }
    FN(matmul_forward_range)(out, inp, weight, N, C, OC, 0, nblocks);
}


/* ---- the same product from a transposed weight, wT (C, OCp): wT[i][o] =
 * weight[o][i], OCp >= OC a multiple of MG_LANES, padding zero.  The lanes
 * now run over output channels (full whatever N is) and each output is still
 * the sequential sum 0 + w0 x0 + w1 x1 + ...; no transposed copies of the
 * inputs, no scalar stores.  The model builds wT once per forward. */

/* wT (C, OCp) from weight (OC, C), NB x NB tiles transposed in registers. */
MG_HOT static void FN(transpose_weight)(REAL *wT, const REAL *weight, int OC, int C, int OCp) {
    enum { NB = MG_LANES };
    int o0 = 0;
    for (; o0 + NB <= OC; o0 += NB) {
        int i0 = 0;
        for (; i0 + NB <= C; i0 += NB) {
#if MG_HAVE_SHUFFLE
            VEC r[NB];
            MG_UNROLL
            for (int j = 0; j < NB; j++) r[j] = LOADU(weight + (size_t)(o0 + j) * C + i0);
            FN(vtranspose)(r);
            MG_UNROLL
            for (int k = 0; k < NB; k++) STOREU(wT + (size_t)(i0 + k) * OCp + o0, r[k]);
#else   /* no vector permutes: plain copies */
            for (int k = 0; k < NB; k++)
                for (int j = 0; j < NB; j++)
                    wT[(size_t)(i0 + k) * OCp + o0 + j] = weight[(size_t)(o0 + j) * C + i0 + k];
#endif
        }
        for (; i0 < C; i0++)
            for (int j = 0; j < NB; j++) wT[(size_t)i0 * OCp + o0 + j] = weight[(size_t)(o0 + j) * C + i0];
    }
    for (; o0 < OC; o0++)
        for (int i = 0; i < C; i++) wT[(size_t)i * OCp + o0] = weight[(size_t)o0 * C + i];
}

/* RT tokens (rows n..) x GV vectors of outputs (o..), constants after inlining. */
MG_INLINE void FN(mmT_tile)(REAL *out, const REAL *inp,
        const REAL *wT, int C, int OC, int OCp, int n, int o, const int RT, const int GV) {
    enum { NB = MG_LANES };
    VEC acc[8][4];   /* RT <= 8, GV <= 4, RT * GV <= 16 */
    for (int r = 0; r < RT; r++)
        for (int g = 0; g < GV; g++) acc[r][g] = (VEC){0};
    const REAL *x = inp + (size_t)n * C;
    const REAL *w = wT + o;
    for (int i = 0; i < C; i++) {
        VEC wv[4];
        for (int g = 0; g < GV; g++) wv[g] = LOADU(w + (size_t)i * OCp + g * NB);
        for (int r = 0; r < RT; r++) {
            const REAL xr = x[(size_t)r * C + i];
            for (int g = 0; g < GV; g++) acc[r][g] += wv[g] * xr;
        }
    }
    for (int r = 0; r < RT; r++)
        for (int g = 0; g < GV; g++) {
            const int oo = o + g * NB;
            REAL *dst = out + (size_t)(n + r) * OC + oo;
            if (oo + NB <= OC) STOREU(dst, acc[r][g]);
            else for (int l = 0; l < OC - oo; l++) dst[l] = acc[r][g][l];
        }
}

/* out (N, OC) = inp (N, C) @ weight^T, from wT; token rows n0 .. n1-1. */
MG_HOT static void FN(matmul_forward_T_rows)(REAL *out, const REAL *inp, const REAL *wT,
                                             int C, int OC, int OCp, int n0, int n1) {
    enum { NB = MG_LANES };
    const int nvec = (OC + NB - 1) / NB;
    for (int v = 0; v < nvec; v += 4) {
        const int gv = nvec - v < 4 ? nvec - v : 4, o = v * NB;
        int n = n0;
        switch (gv) {
        case 4: for (; n + 4 <= n1; n += 4) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 4, 4);
                for (; n < n1; n++) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 1, 4);
                break;
        case 3: for (; n + 4 <= n1; n += 4) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 4, 3);
                for (; n < n1; n++) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 1, 3);
                break;
        case 2: for (; n + 4 <= n1; n += 4) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 4, 2);
                for (; n < n1; n++) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 1, 2);
                break;
        default: for (; n + 8 <= n1; n += 8) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 8, 1);
                for (; n + 4 <= n1; n += 4) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 4, 1);
                for (; n < n1; n++) FN(mmT_tile)(out, inp, wT, C, OC, OCp, n, o, 1, 1);
                break;
        }
    }
}

static void FN(matmul_forward_T)(REAL *out, const REAL *inp, const REAL *wT,
                                 int N, int C, int OC, int OCp) {
    const int chunks = (N + 7) / 8;
    if (MG_USE_THREADS((size_t)N * C * OC, chunks)) {
        MG_PAR_FOR(schedule(static),
        for (int c = 0; c < chunks; c++)
            FN(matmul_forward_T_rows)(out, inp, wT, C, OC, OCp, 8 * c, 8 * c + 8 < N ? 8 * c + 8 : N););
        return;
    }
    FN(matmul_forward_T_rows)(out, inp, wT, C, OC, OCp, 0, N);
}

/* dinp[n][i] += sum_o dout[n][o] * weight[o][i], rows n0..n1, o ascending.
 * Tiles of RT rows x IV registers of columns (constants after inlining):
 * RT * IV independent sums hide the add latency even for a lone row. */
MG_INLINE void FN(dinp_tile)(REAL *dinp, const REAL *dout,
        const REAL *weight, int C, int OC, int n, int i, const int RT, const int IV) {
    enum { NB = MG_LANES };
    VEC acc[8][4];   /* RT <= 8, IV <= 4, RT * IV <= 16 */
    for (int r = 0; r < RT; r++)
        for (int v = 0; v < IV; v++) acc[r][v] = LOADU(dinp + (size_t)(n + r) * C + i + v * NB);
    const REAL *g = dout + (size_t)n * OC;
    for (int o = 0; o < OC; o++) {
        VEC w[4];
        for (int v = 0; v < IV; v++) w[v] = LOADU(weight + (size_t)o * C + i + v * NB);
        for (int r = 0; r < RT; r++) {
            const REAL gr = g[(size_t)r * OC + o];
            for (int v = 0; v < IV; v++) acc[r][v] += gr * w[v];
        }
    }
    for (int r = 0; r < RT; r++)
        for (int v = 0; v < IV; v++) STOREU(dinp + (size_t)(n + r) * C + i + v * NB, acc[r][v]);
}

/* rows n .. n+RT-1, every full register of columns */
MG_INLINE void FN(dinp_rows)(REAL *dinp, const REAL *dout,
        const REAL *weight, int C, int OC, int n, const int RT) {
    enum { NB = MG_LANES };
    int i = 0;
    if (RT == 8) {   /* (only used when the columns are one register) */
        FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 1);
        return;
    }
    if (RT >= 3) {
        for (; i + 2 * NB <= C; i += 2 * NB) FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 2);
    } else {
        for (; i + 4 * NB <= C; i += 4 * NB) FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 4);
        for (; i + 2 * NB <= C; i += 2 * NB) FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 2);
    }
    for (; i + NB <= C; i += NB) FN(dinp_tile)(dinp, dout, weight, C, OC, n, i, RT, 1);
    for (; i < C; i++)   /* columns past the last full register */
        for (int r = 0; r < RT; r++) {
            REAL a = dinp[(size_t)(n + r) * C + i];
            for (int o = 0; o < OC; o++) a += dout[(size_t)(n + r) * OC + o] * weight[(size_t)o * C + i];
            dinp[(size_t)(n + r) * C + i] = a;
        }
}

MG_HOT static void FN(matmul_backward_dinp)(REAL *dinp, const REAL *dout, const REAL *weight,
                                            int C, int OC, int n0, int n1) {
    int n = n0;
    if (C == MG_LANES)  /* one register of columns: eight rows at a time */
        for (; n + 8 <= n1; n += 8) FN(dinp_rows)(dinp, dout, weight, C, OC, n, 8);
    for (; n + 4 <= n1; n += 4) FN(dinp_rows)(dinp, dout, weight, C, OC, n, 4);
    switch (n1 - n) {
    case 3: FN(dinp_rows)(dinp, dout, weight, C, OC, n, 3); break;
    case 2: FN(dinp_rows)(dinp, dout, weight, C, OC, n, 2); break;
    case 1: FN(dinp_rows)(dinp, dout, weight, C, OC, n, 1); break;
    default: break;
    }
}

/* dweight[o][i] += sum_n dout[n][o] * inp[n][i], rows o0..o1, n ascending.
 * With A != NULL (the fused training step) the gradient is not stored: the
 * gradient of 4 rows x up to MG_DW_CHUNK columns (sums from 0, the values the
 * accumulation into a zeroed dweight gives) goes to a stack buffer and is
 * then applied by Adam to weight, A->m, A->v in one streaming pass (long
 * enough for the square root / division latencies to overlap). */
#define MG_DW_CHUNK 256

/* RT rows (o..) x IV registers of columns (i..) of the weight gradient into
 * dst (row stride ldd), starting from dst's values (init) or from 0. */
MG_INLINE void FN(dw_tile)(REAL *dst, int ldd, int init,
        const REAL *dout, const REAL *inp, int N, int C, int OC, int o, int i,
        const int RT, const int IV) {
    enum { NB = MG_LANES };
    VEC acc[4][4];
    for (int r = 0; r < RT; r++)
        for (int v = 0; v < IV; v++)
            acc[r][v] = init ? LOADU(dst + (size_t)r * ldd + v * NB) : (VEC){0};
    for (int n = 0; n < N; n++) {
        VEC x[4];
        for (int v = 0; v < IV; v++) x[v] = LOADU(inp + (size_t)n * C + i + v * NB);
        const REAL *g = dout + (size_t)n * OC + o;
        for (int r = 0; r < RT; r++) {
            const REAL gr = g[r];
            for (int v = 0; v < IV; v++) acc[r][v] += gr * x[v];
        }
    }
    for (int r = 0; r < RT; r++)
        for (int v = 0; v < IV; v++) STOREU(dst + (size_t)r * ldd + v * NB, acc[r][v]);
}

/* rows o .. o+RT-1, columns c0 .. c0+cl-1 into dst (RT, ldd) */
MG_INLINE void FN(dw_rows)(REAL *dst, int ldd, int init,
        const REAL *dout, const REAL *inp, int N, int C, int OC, int o, int c0, int cl,
        const int RT) {
    enum { NB = MG_LANES };
    int j = 0;   /* column offset inside the chunk */
    if (RT == 4) {
        for (; j + 2 * NB <= cl; j += 2 * NB)
            FN(dw_tile)(dst + j, ldd, init, dout, inp, N, C, OC, o, c0 + j, RT, 2);
    } else {
        for (; j + 4 * NB <= cl; j += 4 * NB)
            FN(dw_tile)(dst + j, ldd, init, dout, inp, N, C, OC, o, c0 + j, RT, 4);
        for (; j + 2 * NB <= cl; j += 2 * NB)
            FN(dw_tile)(dst + j, ldd, init, dout, inp, N, C, OC, o, c0 + j, RT, 2);
    }
    for (; j + NB <= cl; j += NB)
        FN(dw_tile)(dst + j, ldd, init, dout, inp, N, C, OC, o, c0 + j, RT, 1);
    for (; j < cl; j++)   /* columns past the last full register */
        for (int r = 0; r < RT; r++) {
            REAL acc = init ? dst[(size_t)r * ldd + j] : (REAL)0;
            for (int n = 0; n < N; n++)
                acc += dout[(size_t)n * OC + o + r] * inp[(size_t)n * C + c0 + j];
            dst[(size_t)r * ldd + j] = acc;
        }
}

MG_HOT static void FN(matmul_backward_dweight)(REAL *dweight, const REAL *dout, const REAL *inp,
                                               int N, int C, int OC, int o0, int o1,
                                               REAL *weight, const FN(adam_ctx_t) *A) {
    REAL gbuf[4 * MG_DW_CHUNK];
    /* a local copy: the constants cannot alias the moments being stored */
    FN(adam_ctx_t) Aloc;
    if (A != NULL) { Aloc = *A; A = &Aloc; }
    for (int o = o0; o < o1; o += 4) {
        const int R = o1 - o < 4 ? o1 - o : 4;
        for (int c0 = 0; c0 < C; c0 += MG_DW_CHUNK) {
            const int cl = C - c0 < MG_DW_CHUNK ? C - c0 : MG_DW_CHUNK;
            REAL *dst = A != NULL ? gbuf : dweight + (size_t)o * C + c0;
            const int ldd = A != NULL ? cl : C, init = A == NULL;
            switch (R) {
            case 4: FN(dw_rows)(dst, ldd, init, dout, inp, N, C, OC, o, c0, cl, 4); break;
            case 3: FN(dw_rows)(dst, ldd, init, dout, inp, N, C, OC, o, c0, cl, 3); break;
            case 2: FN(dw_rows)(dst, ldd, init, dout, inp, N, C, OC, o, c0, cl, 2); break;
            default: FN(dw_rows)(dst, ldd, init, dout, inp, N, C, OC, o, c0, cl, 1); break;
            }
            if (A == NULL) continue;
            if (cl == C) {  /* the R rows are contiguous in the parameters, as in gbuf */
                const size_t at = (size_t)o * C;
                FN(adam_span)(weight + at, A->m + at, A->v + at, gbuf, R * C, A);
            } else {
                for (int r = 0; r < R; r++) {
                    const size_t at = (size_t)(o + r) * C + c0;
                    FN(adam_span)(weight + at, A->m + at, A->v + at, gbuf + (size_t)r * cl, cl, A);
                }
            }
        }
    }
}

/* The two halves of matmul_backward.  dinp first (from the weight before
 * any update); dweight: with A != NULL the weight gradient goes straight
 * into an Adam update of weight (dweight is not touched). */
static void FN(matmul_backward_dinp_all)(REAL *dinp, const REAL *dout, const REAL *weight,
                                         int N, int C, int OC) {
    const size_t work = (size_t)N * C * OC;
    (void)work;  /* unused without OpenMP */
    /* each row n belongs to one thread */
    if (MG_USE_THREADS(work, N / 4)) {
        const int chunks = (N + 3) / 4;
        MG_PAR_FOR(schedule(static),
        for (int c = 0; c < chunks; c++)
            FN(matmul_backward_dinp)(dinp, dout, weight, C, OC, 4 * c, 4 * c + 4 < N ? 4 * c + 4 : N););
    } else {
        FN(matmul_backward_dinp)(dinp, dout, weight, C, OC, 0, N);
    }
}

static void FN(matmul_backward_dweight_all)(REAL *dweight, const REAL *dout, const REAL *inp,
                                            REAL *weight, int N, int C, int OC,
                                            const FN(adam_ctx_t) *A) {
    const size_t work = (size_t)N * C * OC;
    (void)work;
    /* each row oc belongs to one thread, summed over n in order */
    if (MG_USE_THREADS(work, OC / 4)) {
        const int chunks = (OC + 3) / 4;
        MG_PAR_FOR(schedule(static),
        for (int c = 0; c < chunks; c++)
            FN(matmul_backward_dweight)(dweight, dout, inp, N, C, OC, 4 * c,
                                        4 * c + 4 < OC ? 4 * c + 4 : OC, weight, A););
    } else {
        FN(matmul_backward_dweight)(dweight, dout, inp, N, C, OC, 0, OC, weight, A);
    }
}


void FN(matmul_backward)(REAL *dinp,           /* (N, C) */
                         REAL *dweight,        /* (OC, C) */
                         const REAL *dout,     /* (N, OC) */
                         const REAL *inp,      /* (N, C) */
                         const REAL *weight,   /* (OC, C) */
                         int N, int C, int OC) {
    if (mg_forced_variant[MG_OP_MATMUL] == MG_MM_GEMM) {   /* (forced: tests) */
        FN(matmul_backward_dinp_gemm)(dinp, dout, weight, N, C, OC);
        FN(gemm_par)(dweight, C, dout, 1, OC, inp, C, 1, OC, C, N, 1);
        return;
    }
    FN(matmul_backward_dinp_all)(dinp, dout, weight, N, C, OC);
    FN(matmul_backward_dweight_all)(dweight, dout, inp, (REAL *)weight, N, C, OC, NULL);
}


/* ---- MG_MM_GEMM: the three products through ops/gemm.h.  Each output
 * element is the gemm's one sequential sum over the reduced index from 0
 * (forward, fused weight gradient) or from the stored value (dinp, dweight),
 * in ascending order: the same operations as the loops above. */

/* Cm (M, N) (+)= A (M, K) @ B (K, N) (strides as in FN(gemm)); the tiles of
 * the fixed grid FN(gemm_num_tiles) shared by the threads of a team when no
 * team is running and the product is large (the bits never depend on it). */
static void FN(gemm_par)(REAL *Cm, int ldc, const REAL *A, int rsA, int csA, const REAL *B,
                         int rsB, int csB, int M, int N, int K, int acc) {
    const int tiles = FN(gemm_num_tiles)(M, N);
    if (MG_USE_THREADS((size_t)M * N * K, tiles)) {
        MG_PAR_FOR(schedule(static),
        for (int t = 0; t < tiles; t++)
            FN(gemm_tiles)(Cm, ldc, A, rsA, csA, B, rsB, csB, M, N, K, acc, t, t + 1););
        return;
    }
    FN(gemm_run)(Cm, ldc, A, rsA, csA, B, rsB, csB, M, N, K, acc, 1, 0, INT32_MAX);
}

/* out (N, OC) = inp (N, C) @ weight^T: b(i, o) = weight[o][i] */
static void FN(matmul_forward_gemm)(REAL *out,            /* (N, OC) */
                                    const REAL *inp,      /* (N, C) */
                                    const REAL *weight,   /* (OC, C) */
                                    int N, int C, int OC) {
    FN(gemm_par)(out, OC, inp, C, 1, weight, 1, C, N, OC, C, 0);
}

/* dinp (N, C) += dout (N, OC) @ weight (OC, C) */
static void FN(matmul_backward_dinp_gemm)(REAL *dinp,           /* (N, C) */
                                          const REAL *dout,     /* (N, OC) */
                                          const REAL *weight,   /* (OC, C) */
                                          int N, int C, int OC) {
    FN(gemm_par)(dinp, C, dout, OC, 1, weight, C, 1, N, C, OC, 1);
}

/* One gemm-variant weight-gradient task: rows o0 .. o1-1, columns c0 ..
 * c1-1 of the weight: dweight[o][c] += the sum over the N tokens of
 * dout[n][o] inp[n][c] (A == NULL), or that gradient (from 0) applied at once
 * by Adam to weight, A->m, A->v through a scratch block (dweight not
 * touched).  a(o, n) = dout[n][o] is packed by the gemm; b = inp's columns
 * c0 .. c1-1, packed once per task (so tasks span many rows: the packing of
 * the N x (c1 - c0) block is amortised over them).  One thread. */
#ifndef MG_GEMM_TASK_ROWS
#define MG_GEMM_TASK_ROWS 512
#endif
#define MG_GEMM_TASK_COLS MG_DW_CHUNK
MG_HOT static void FN(matmul_backward_dweight_gemm)(REAL *dweight,        /* (OC, C) */
                                                    const REAL *dout,     /* (N, OC) */
                                                    const REAL *inp,      /* (N, C) */
                                                    int N, int C, int OC, int o0, int o1,
                                                    int c0, int c1,
                                                    REAL *weight,         /* (OC, C) */
                                                    const FN(adam_ctx_t) *A) {
    const int R = o1 - o0, cl = c1 - c0;
    if (A == NULL) {
        FN(gemm_run)(dweight + (size_t)o0 * C + c0, C, dout + o0, 1, OC, inp + c0, C, 1, R, cl, N,
                     1, 1, 0, INT32_MAX);
        return;
    }
    FN(adam_ctx_t) Aloc = *A;   /* a local copy: no aliasing with the moments */
    REAL *g = (REAL *)mg_scratch(MG_SCRATCH_DWEIGHT, sizeof(REAL) * (size_t)R * (size_t)cl);
    if (g == NULL) {   /* no scratch: row by row through a stack buffer (the same sums) */
        REAL gb[MG_DW_CHUNK];
        for (int o = o0; o < o1; o++)
            for (int cc = c0; cc < c1; cc += MG_DW_CHUNK) {
                const int w = c1 - cc < MG_DW_CHUNK ? c1 - cc : MG_DW_CHUNK;
                for (int c = 0; c < w; c++) {
                    REAL acc = 0;
                    for (int n = 0; n < N; n++)
                        acc += dout[(size_t)n * OC + o] * inp[(size_t)n * C + cc + c];
                    gb[c] = acc;
                }
                const size_t at = (size_t)o * C + cc;
                FN(adam_span)(weight + at, Aloc.m + at, Aloc.v + at, gb, w, &Aloc);
            }
        return;
    }
    FN(gemm_run)(g, cl, dout + o0, 1, OC, inp + c0, C, 1, R, cl, N, 0, 1, 0, INT32_MAX);
    if (cl == C) {   /* whole rows: contiguous in the parameters, as in g */
        const size_t at = (size_t)o0 * C;
        FN(adam_span)(weight + at, Aloc.m + at, Aloc.v + at, g, R * C, &Aloc);
        return;
    }
    for (int r = 0; r < R; r++) {
        const size_t at = (size_t)(o0 + r) * C + c0;
        FN(adam_span)(weight + at, Aloc.m + at, Aloc.v + at, g + (size_t)r * cl, cl, &Aloc);
    }
}


/* The variant for a training batch of N tokens through layers of width C
 * (decided per batch, never per piece of it or per thread count; inference,
 * one token at a time, takes the token lanes or the weights transposed once
 * per sampling run).  The transposed weights cost one transposing pass per
 * forward, the token lanes MG_LANES - N idle lanes per block and per-call
 * copies: measured, wT wins for batches of more than one register of tokens
 * and for small models; a single short document in a wide model is faster
 * with token lanes.  The gemm pays once its packing is amortised: for
 * more than one register of tokens at width >= MG_MM_GEMM_WIDE_C, from
 * MG_MM_GEMM_MIN_TOKENS tokens at width >= 32 (measured on Zen 5, float32,
 * whole training steps: C = 128, 64 tokens 0.66 ms vs 0.89 (wT); C = 256,
 * 32 tokens 1.67 vs 3.45; C = 32, 256 tokens 0.28 vs 0.40; C = 64, 128
 * tokens 0.61 vs 0.58; C = 16, 256 tokens 0.19 vs 0.11). */
#ifndef MG_MM_GEMM_MIN_TOKENS
#define MG_MM_GEMM_MIN_TOKENS 256
#endif
#ifndef MG_MM_GEMM_WIDE_C
#define MG_MM_GEMM_WIDE_C 96
#endif
static int FN(matmul_variant)(int N, int C) {
    const int forced = mg_forced_variant[MG_OP_MATMUL];
    if (forced >= 0 && forced < MG_MM_NUM_VARIANTS) return forced;
    if (N <= MG_LANES && C >= 64) return MG_MM_TOKEN_LANES;
    if ((N > MG_LANES && C >= MG_MM_GEMM_WIDE_C) || (N >= MG_MM_GEMM_MIN_TOKENS && C >= 32))
        return MG_MM_GEMM;
    return MG_MM_WT;
}
