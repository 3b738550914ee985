/*
 * ops/attention.h: causal multi-head attention, forward and backward (a
 * template over REAL).
 *
 * Query i sits at position p0 + i and attends keys/values at positions
 * 0 .. p0 + i (k and v are indexed by position).  Training uses p0 = 0 on
 * one document; inference uses N = 1, p0 = pos on the KV cache.
 * s_t = (q_h . k_h[t]) * (HS^0.5)^-1, w = softmax(s), out_h = sum_t w_t v_h[t].
 * The weights are saved in att (N, NH, T) for the backward.
 *
 * Variants (MG_ATT_*, chosen by FN(attention_choose), at the end):
 *   rows           scalar loops, any shape, threads over queries / heads;
 *   query lanes    one document (p0 = 0) that fits the stack scratch: lanes
 *                  over MG_LANES consecutive queries;
 *   channel lanes  heads that pack into a register (HS | MG_LANES | C) and
 *                  at most MG_ATT_LANES_MAX_KEYS keys: lanes over channels;
 *   gemm           long documents (p0 = 0): per head, blocks of queries whose
 *                  scores, outputs and every backward product go through the
 *                  packed GEMM (ops/gemm.h), the softmax in place in att.
 * Every forward variant is bit-identical to the reference in float64; the
 * backward variants agree to rounding (each a fixed order).
 */

/* ------------------------------------------------------------ rows */
/* Query rows i0 .. i1-1 of attention_forward. */
MG_HOT static void FN(attention_forward_rows)(REAL *out, REAL *att, const REAL *q, const REAL *k,
                                              const REAL *v, int i0, int i1, int p0, int C,
                                              int NH, int T) {
    const int HS = C / NH;
    const REAL scale = FN(att_scale)(HS);
    for (int i = i0; i < i1; i++) {
        const int p = p0 + i;
        for (int h = 0; h < NH; h++) {
            const REAL *qh = q + (size_t)i * C + (size_t)h * HS;
            REAL *w = att + ((size_t)i * NH + h) * T;
            REAL maxv = 0;
            for (int t = 0; t <= p; t++) {
                const REAL *kh = k + (size_t)t * C + (size_t)h * HS;
                REAL s = 0;
                for (int j = 0; j < HS; j++) s += qh[j] * kh[j];
                s = s * scale;
                w[t] = s;
                if (t == 0 || s > maxv) maxv = s;
            }
            REAL total = 0;
            for (int t = 0; t <= p; t++) { w[t] = EXP(w[t] - maxv); total += w[t]; }
            const REAL inv = RECIP(total);
            for (int t = 0; t <= p; t++) w[t] = w[t] * inv;
            REAL *o = out + (size_t)i * C + (size_t)h * HS;
            for (int j = 0; j < HS; j++) {
                REAL a = 0;
                for (int t = 0; t <= p; t++) a += w[t] * v[(size_t)t * C + (size_t)h * HS + j];
                o[j] = a;
            }
        }
    }
}


/* Heads h0 .. h1-1 of attention_backward. */
MG_HOT static void FN(attention_backward_heads)(REAL *dq, REAL *dk, REAL *dv, REAL *datt,
                                                const REAL *dout, const REAL *att, const REAL *q,
                                                const REAL *k, const REAL *v, int h0, int h1,
                                                int N, int C, int NH, int T) {
    const int HS = C / NH;
    const REAL scale = FN(att_scale)(HS);
    for (int h = h0; h < h1; h++) {
        const size_t hs = (size_t)h * HS;
        for (int i = 0; i < N; i++) {
            const REAL *w = att + ((size_t)i * NH + h) * T;
            REAL *dw = datt + ((size_t)i * NH + h) * T;
            const REAL *d = dout + (size_t)i * C + hs;
            for (int t = 0; t <= i; t++) {
                const REAL *vt = v + (size_t)t * C + hs;
                REAL *dvt = dv + (size_t)t * C + hs;
                REAL g = 0;
                for (int j = 0; j < HS; j++) { g += d[j] * vt[j]; dvt[j] += w[t] * d[j]; }
                dw[t] = g;
            }
            /* softmax: ds_t = w_t (dw_t - sum_u w_u dw_u) */
            REAL dot = 0;
            for (int t = 0; t <= i; t++) dot += w[t] * dw[t];
            const REAL *qi = q + (size_t)i * C + hs;
            REAL *dqi = dq + (size_t)i * C + hs;
            for (int t = 0; t <= i; t++) {
                const REAL ds = w[t] * (dw[t] - dot) * scale;
                const REAL *kt = k + (size_t)t * C + hs;
                REAL *dkt = dk + (size_t)t * C + hs;
                for (int j = 0; j < HS; j++) { dqi[j] += ds * kt[j]; dkt[j] += ds * qi[j]; }
            }
        }
    }
}


/* ------------------------------------------------------ query lanes */
/* attention of one document (p0 = 0), vectorised across queries: lanes
 * are MG_LANES consecutive queries i0 + l, keys/values are broadcast.  Each
 * score, exp, sum and output is the same scalar operation sequence as in
 * attention_forward_rows (lanes of keys t > i are never exponentiated and
 * carry weight 0, which adds exact zeros to the outputs). */
#define MG_ATT_SCRATCH 6144
/* scratch elements needed for a document of n tokens (0: too big for the stack) */
static int FN(att_doc_fits)(int n, int HS) {
    return (size_t)MG_LANES * (2 * (size_t)n + 2 * (size_t)HS) <= MG_ATT_SCRATCH;
}

/* The softmax of query lanes i0 .. i0+nb-1 of head h over keys 0 .. nt-1:
 * S (nt, NB) holds the scores and receives the weights (0 for keys past a
 * query and in lanes past nb are set by the caller); att gets each query's
 * weights.  Exact: lane by lane, the scalar operations of
 * attention_forward_rows. */
MG_INLINE void FN(att_doc_softmax_exact)(REAL *S, REAL *att, int i0, int nb, int nt, int h,
                                         int NH, int T) {
    enum { NB = MG_LANES };
    for (int l = 0; l < nb; l++) {
        const int i = i0 + l;
        REAL *w = att + ((size_t)i * NH + h) * T;
        REAL maxv = 0;
        for (int t = 0; t <= i; t++) {
            const REAL sc = S[(size_t)t * NB + l];
            if (t == 0 || sc > maxv) maxv = sc;
        }
        REAL total = 0;
        for (int t = 0; t <= i; t++) {
            const REAL e = EXP(S[(size_t)t * NB + l] - maxv);
            S[(size_t)t * NB + l] = e;
            total += e;
        }
        const REAL inv = RECIP(total);
        for (int t = 0; t <= i; t++) {
            const REAL wt = S[(size_t)t * NB + l] * inv;
            S[(size_t)t * NB + l] = wt;
            w[t] = wt;
        }
        for (int t = i + 1; t < nt; t++) S[(size_t)t * NB + l] = 0;
    }
}

#if MG_RELAXED
/* Relaxed: whole registers, the vector exp, a select for the causal mask. */
MG_INLINE void FN(att_doc_softmax_relaxed)(REAL *S, REAL *att, int i0, int nb, int nt, int h,
                                           int NH, int T) {
    enum { NB = MG_LANES };
    VEC li, M = LOADU(S), total = {0};
    for (int l = 0; l < NB; l++) li[l] = (REAL)(i0 + l);
    const VEC zero = {0};
    /* (one comparison per select: GCC 12 scalarises an & of two masks) */
    for (int t = 1; t < nt; t++) {
        const VEC tv = zero + (REAL)t;
        const VEC st = MG_SEL(tv <= li, LOADU(S + (size_t)t * NB), M);
        M = MG_SEL(st > M, st, M);
    }
    for (int t = 0; t < nt; t++) {
        const VEC tv = zero + (REAL)t;
        VEC e = LOADU(S + (size_t)t * NB) - M;
        FN(vexp)(&e);
        e = MG_SEL(tv <= li, e, zero);
        STOREU(S + (size_t)t * NB, e);
        total += e;
    }
    const VEC inv = (REAL)1 / total;
    for (int t = 0; t < nt; t++) {
        const VEC wv = LOADU(S + (size_t)t * NB) * inv;
        STOREU(S + (size_t)t * NB, wv);
        for (int l = t > i0 ? t - i0 : 0; l < nb; l++)
            att[((size_t)(i0 + l) * NH + h) * T + t] = wv[l];
    }
}
#define MG_ATT_DOC_SOFTMAX FN(att_doc_softmax_relaxed)
#else
#define MG_ATT_DOC_SOFTMAX FN(att_doc_softmax_exact)
#endif

MG_HOT static void FN(attention_forward_doc)(REAL *out, REAL *att, const REAL *q, const REAL *k,
                                             const REAL *v, int n, int C, int NH, int T,
                                             REAL scale) {
    enum { NB = MG_LANES };
    REAL scratch[MG_ATT_SCRATCH];
    const int HS = C / NH;
    REAL *S = scratch;                 /* (n, NB) scores, then weights */
    REAL *qT = S + (size_t)n * NB;     /* (HS, NB) */
    for (int i0 = 0; i0 < n; i0 += NB) {
        const int nb = n - i0 < NB ? n - i0 : NB, nt = i0 + nb;
        for (int h = 0; h < NH; h++) {
            const size_t hs = (size_t)h * HS;
            for (int j = 0; j < HS; j++)
                for (int l = 0; l < NB; l++)
                    qT[(size_t)j * NB + l] = l < nb ? q[(size_t)(i0 + l) * C + hs + j] : (REAL)0;
            /* (four keys, then four channels, at a time: independent sums
             * that hide the add latency; each lane's sums in the same order) */
            int t = 0;
            for (; t + 4 <= nt; t += 4) {
                const REAL *k0 = k + (size_t)t * C + hs, *k1 = k0 + C, *k2 = k1 + C, *k3 = k2 + C;
                VEC s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
                for (int j = 0; j < HS; j++) {
                    const VEC x = LOADU(qT + (size_t)j * NB);
                    s0 += x * k0[j]; s1 += x * k1[j]; s2 += x * k2[j]; s3 += x * k3[j];
                }
                STOREU(S + (size_t)t * NB, s0 * scale);
                STOREU(S + (size_t)(t + 1) * NB, s1 * scale);
                STOREU(S + (size_t)(t + 2) * NB, s2 * scale);
                STOREU(S + (size_t)(t + 3) * NB, s3 * scale);
            }
            for (; t < nt; t++) {
                const REAL *kt = k + (size_t)t * C + hs;
                VEC sv = {0};
                for (int j = 0; j < HS; j++) sv += LOADU(qT + (size_t)j * NB) * kt[j];
                STOREU(S + (size_t)t * NB, sv * scale);
            }
            MG_ATT_DOC_SOFTMAX(S, att, i0, nb, nt, h, NH, T);
            for (int l = nb; l < NB; l++)
                for (t = 0; t < nt; t++) S[(size_t)t * NB + l] = 0;
            int j = 0;
            for (; j + 4 <= HS; j += 4) {
                VEC a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                for (t = 0; t < nt; t++) {
                    const VEC w = LOADU(S + (size_t)t * NB);
                    const REAL *vt = v + (size_t)t * C + hs + j;
                    a0 += w * vt[0]; a1 += w * vt[1]; a2 += w * vt[2]; a3 += w * vt[3];
                }
                for (int l = 0; l < nb; l++) {
                    REAL *o = out + (size_t)(i0 + l) * C + hs + j;
                    o[0] = a0[l]; o[1] = a1[l]; o[2] = a2[l]; o[3] = a3[l];
                }
            }
            for (; j < HS; j++) {
                VEC a = {0};
                for (t = 0; t < nt; t++) a += LOADU(S + (size_t)t * NB) * v[(size_t)t * C + hs + j];
                for (int l = 0; l < nb; l++) out[(size_t)(i0 + l) * C + hs + j] = a[l];
            }
        }
    }
}

/* Backward of attention_forward_doc (any fixed order: rounding-level). */
MG_HOT static void FN(attention_backward_doc)(REAL *dq, REAL *dk, REAL *dv, const REAL *dout,
                                              const REAL *att, const REAL *q, const REAL *k,
                                              const REAL *v, int n, int C, int NH, int T,
                                              REAL scale) {
    enum { NB = MG_LANES };
    REAL scratch[MG_ATT_SCRATCH];
    const int HS = C / NH;
    REAL *W = scratch;                 /* (n, NB) weights */
    REAL *D = W + (size_t)n * NB;      /* (n, NB) dweights, then dscores */
    REAL *dT = D + (size_t)n * NB;     /* (HS, NB) dout */
    REAL *gT = dT + (size_t)HS * NB;   /* (HS, NB) dq */
    for (int i0 = 0; i0 < n; i0 += NB) {
        const int nb = n - i0 < NB ? n - i0 : NB, nt = i0 + nb;
        for (int h = 0; h < NH; h++) {
            const size_t hs = (size_t)h * HS;
            for (int t = 0; t < nt; t++)
                for (int l = 0; l < NB; l++)
                    W[(size_t)t * NB + l] = l < nb && t <= i0 + l
                        ? att[((size_t)(i0 + l) * NH + h) * T + t] : (REAL)0;
            for (int j = 0; j < HS; j++)
                for (int l = 0; l < NB; l++)
                    dT[(size_t)j * NB + l] = l < nb ? dout[(size_t)(i0 + l) * C + hs + j] : (REAL)0;
            VEC dot = {0};
            int t = 0;
            for (; t + 4 <= nt; t += 4) {   /* (four keys at a time; dot in key order) */
                const REAL *v0 = v + (size_t)t * C + hs, *v1 = v0 + C, *v2 = v1 + C, *v3 = v2 + C;
                VEC g0 = {0}, g1 = {0}, g2 = {0}, g3 = {0};
                for (int j = 0; j < HS; j++) {
                    const VEC x = LOADU(dT + (size_t)j * NB);
                    g0 += x * v0[j]; g1 += x * v1[j]; g2 += x * v2[j]; g3 += x * v3[j];
                }
                STOREU(D + (size_t)t * NB, g0);
                STOREU(D + (size_t)(t + 1) * NB, g1);
                STOREU(D + (size_t)(t + 2) * NB, g2);
                STOREU(D + (size_t)(t + 3) * NB, g3);
                dot += LOADU(W + (size_t)t * NB) * g0;
                dot += LOADU(W + (size_t)(t + 1) * NB) * g1;
                dot += LOADU(W + (size_t)(t + 2) * NB) * g2;
                dot += LOADU(W + (size_t)(t + 3) * NB) * g3;
            }
            for (; t < nt; t++) {
                const REAL *vt = v + (size_t)t * C + hs;
                VEC g = {0};
                for (int j = 0; j < HS; j++) g += LOADU(dT + (size_t)j * NB) * vt[j];
                STOREU(D + (size_t)t * NB, g);
                dot += LOADU(W + (size_t)t * NB) * g;
            }
            for (t = 0; t < nt; t++) {
                const VEC wv = LOADU(W + (size_t)t * NB);
                STOREU(D + (size_t)t * NB, wv * (LOADU(D + (size_t)t * NB) - dot) * scale);
            }
            /* dq (lanes = queries), four channels at a time */
            int j = 0;
            for (; j + 4 <= HS; j += 4) {
                VEC a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                for (t = 0; t < nt; t++) {
                    const VEC d = LOADU(D + (size_t)t * NB);
                    const REAL *kt = k + (size_t)t * C + hs + j;
                    a0 += d * kt[0]; a1 += d * kt[1]; a2 += d * kt[2]; a3 += d * kt[3];
                }
                STOREU(gT + (size_t)j * NB, a0);
                STOREU(gT + (size_t)(j + 1) * NB, a1);
                STOREU(gT + (size_t)(j + 2) * NB, a2);
                STOREU(gT + (size_t)(j + 3) * NB, a3);
            }
            for (; j < HS; j++) {
                VEC a = {0};
                for (t = 0; t < nt; t++) a += LOADU(D + (size_t)t * NB) * k[(size_t)t * C + hs + j];
                STOREU(gT + (size_t)j * NB, a);
            }
            for (int l = 0; l < nb; l++) {
                REAL *dqi = dq + (size_t)(i0 + l) * C + hs;
                for (int j = 0; j < HS; j++) dqi[j] += gT[(size_t)j * NB + l];
            }
            /* dk, dv: key by key, the block's queries i0 + l >= t added in
             * query order (the sums of rank-1 updates per (query, key) in
             * that order, the same operations), kept in registers */
            for (int t = 0; t < nt; t++) {
                const int l0 = t > i0 ? t - i0 : 0;
                REAL *dkt = dk + (size_t)t * C + hs, *dvt = dv + (size_t)t * C + hs;
                const REAL *qb = q + (size_t)i0 * C + hs, *db = dout + (size_t)i0 * C + hs;
                int j = 0;
                for (; j + NB <= HS; j += NB) {
                    VEC ak = LOADU(dkt + j), av = LOADU(dvt + j);
                    for (int l = l0; l < nb; l++) {
                        ak += D[(size_t)t * NB + l] * LOADU(qb + (size_t)l * C + j);
                        av += W[(size_t)t * NB + l] * LOADU(db + (size_t)l * C + j);
                    }
                    STOREU(dkt + j, ak);
                    STOREU(dvt + j, av);
                }
                for (; j < HS; j++) {
                    REAL ak = dkt[j], av = dvt[j];
                    for (int l = l0; l < nb; l++) {
                        ak += D[(size_t)t * NB + l] * qb[(size_t)l * C + j];
                        av += W[(size_t)t * NB + l] * db[(size_t)l * C + j];
                    }
                    dkt[j] = ak;
                    dvt[j] = av;
                }
            }
        }
    }
}

/* ------------------------------------------------------------- gemm */
/* One document (p0 = 0) of n tokens, head by head, in blocks of MG_ATT_QB
 * queries: block [i0, i1) needs the keys 0 .. i1-1 only, so the causal mask
 * wastes at most the diagonal block.  The scores of a block are a GEMM
 * written straight into its rows of att (row (i, h) has T entries, T >= n),
 * softmaxed in place (weights of keys i < t < i1 set to 0), and the outputs
 * the GEMM of those weights with v.
 *
 * Exactness of the forward (float64 bit-identical to attention_forward_rows):
 * each score is the gemm's sequential sum 0 + q0 k0 + q1 k1 + ... then times
 * scale; the max, exps, sum and reciprocal are the same scalar operations in
 * the same order; each output is 0 + w_0 v_0 + w_1 v_1 + ... in key order,
 * plus exact zeros (w_t = 0) for the masked keys of the block.  float32 takes
 * the vector exp and FMAs (no bit promise with the reference there).
 *
 * Backward (its own fixed order, rounding-level vs the other variants), per
 * head, with the blocks aligned with the forward's (so every weight and
 * d-score read is one written this step): dW = dout v^T into datt's rows,
 * dS = W (dW - rowdot(W, dW)) scale in place, then dq += dS k (per query
 * block), dk += dS^T q and dv += W^T dout (per key block, over the queries
 * from the block on: W and dS are 0 above the diagonal). */
#ifndef MG_ATT_QB
#define MG_ATT_QB 64
#endif
/* The gemm variant pays for documents of >= 48 tokens with heads of >= 32
 * channels, of >= 128 tokens with heads of 16 (measured, Zen 5, float32
 * training steps at B = 16: 128/128 (HS 32) 13.1 ms vs 14.6 with query lanes;
 * 256/128x4 (HS 64) 223 vs 260 ms; 64/64 (HS 16) 2.65 vs 2.53; 32/128 (HS 8)
 * 4.31 vs 3.82): its score product has only HS terms per element and its
 * output product only HS columns, short for the register tile below that. */
static int FN(att_gemm_pays)(int N, int HS) {
    return (HS >= 32 && N >= 48) || (HS >= 16 && N >= 128);
}

/* c (m, n) (+)= a (m, k) @ b (k, n), one thread (any strides; see gemm.h) */
#define MG_ATT_GEMM(Cm, ldc, A, rsA, csA, B, rsB, csB, m, n, k, acc) \
    FN(gemm_run)(Cm, ldc, A, rsA, csA, B, rsB, csB, m, n, k, acc, 1, 0, INT32_MAX)

/* The softmax of query i's nk scores w (scaled in place first), keys
 * 0 .. i valid; keys i < t < nk get weight 0. */
MG_INLINE void FN(att_gemm_softmax_row)(REAL *w, int i, int nk, REAL scale) {
#if MG_RELAXED
    enum { NB = MG_LANES };
    const int nv = i + 1;
    REAL maxv = w[0] * scale;
    for (int t = 0; t < nv; t++) {
        const REAL s = w[t] * scale;
        w[t] = s;
        maxv = s > maxv ? s : maxv;
    }
    VEC tot = {0};
    int t = 0;
    for (; t + NB <= nv; t += NB) {
        VEC e = LOADU(w + t) - maxv;
        FN(vexp)(&e);
        STOREU(w + t, e);
        tot += e;
    }
    REAL total = 0;
    for (int l = 0; l < NB; l++) total += tot[l];
    if (t < nv) {   /* the last partial register: the vector exp on a padded copy */
        VEC e = {0};
        for (int l = 0; l < nv - t; l++) e[l] = w[t + l] - maxv;
        FN(vexp)(&e);
        for (int l = 0; l < nv - t; l++) { w[t + l] = e[l]; total += e[l]; }
    }
    const REAL inv = RECIP(total);
    for (t = 0; t < nv; t++) w[t] = w[t] * inv;
#else
    REAL maxv = 0;
    for (int t = 0; t <= i; t++) {
        const REAL s = w[t] * scale;
        w[t] = s;
        if (t == 0 || s > maxv) maxv = s;
    }
    REAL total = 0;
    for (int t = 0; t <= i; t++) { w[t] = EXP(w[t] - maxv); total += w[t]; }
    const REAL inv = RECIP(total);
    for (int t = 0; t <= i; t++) w[t] = w[t] * inv;
#endif
    for (int t = i + 1; t < nk; t++) w[t] = 0;
}

/* Head h of a document's forward. */
MG_HOT static void FN(attention_forward_gemm_head)(REAL *out, REAL *att, const REAL *q,
                                                   const REAL *k, const REAL *v, int n, int C,
                                                   int NH, int T, int h, REAL scale) {
    const int HS = C / NH, ra = NH * T;
    const size_t hs = (size_t)h * HS;
    for (int i0 = 0; i0 < n; i0 += MG_ATT_QB) {
        const int i1 = i0 + MG_ATT_QB < n ? i0 + MG_ATT_QB : n, mb = i1 - i0;
        REAL *S = att + ((size_t)i0 * NH + h) * T;   /* row i: S + (i - i0) * ra */
        /* S (mb, i1) = q[i0:i1, h] @ k[0:i1, h]^T */
        MG_ATT_GEMM(S, ra, q + (size_t)i0 * C + hs, C, 1, k + hs, 1, C, mb, i1, HS, 0);
        for (int i = i0; i < i1; i++) FN(att_gemm_softmax_row)(S + (size_t)(i - i0) * ra, i, i1, scale);
        /* out[i0:i1, h] = S @ v[0:i1, h] */
        MG_ATT_GEMM(out + (size_t)i0 * C + hs, C, S, ra, 1, v + hs, C, 1, mb, HS, i1, 0);
    }
}

/* Head h of a document's backward (p0 = 0); datt (n, NH, T) scratch. */
MG_HOT static void FN(attention_backward_gemm_head)(REAL *dq, REAL *dk, REAL *dv, REAL *datt,
                                                    const REAL *dout, const REAL *att,
                                                    const REAL *q, const REAL *k, const REAL *v,
                                                    int n, int C, int NH, int T, int h, REAL scale) {
    const int HS = C / NH, ra = NH * T;
    const size_t hs = (size_t)h * HS;
    for (int i0 = 0; i0 < n; i0 += MG_ATT_QB) {
        const int i1 = i0 + MG_ATT_QB < n ? i0 + MG_ATT_QB : n, mb = i1 - i0;
        REAL *D = datt + ((size_t)i0 * NH + h) * T;
        const REAL *W = att + ((size_t)i0 * NH + h) * T;
        /* dW (mb, i1) = dout[i0:i1, h] @ v[0:i1, h]^T */
        MG_ATT_GEMM(D, ra, dout + (size_t)i0 * C + hs, C, 1, v + hs, 1, C, mb, i1, HS, 0);
        for (int r = 0; r < mb; r++) {
            REAL *d = D + (size_t)r * ra;
            const REAL *w = W + (size_t)r * ra;
            const int nv = i0 + r + 1;
            REAL dot = 0;
            for (int t = 0; t < nv; t++) dot += w[t] * d[t];
            for (int t = 0; t < nv; t++) d[t] = w[t] * (d[t] - dot) * scale;
            for (int t = nv; t < i1; t++) d[t] = 0;
        }
        /* dq[i0:i1, h] += dS @ k[0:i1, h] */
        MG_ATT_GEMM(dq + (size_t)i0 * C + hs, C, D, ra, 1, k + hs, C, 1, mb, HS, i1, 1);
    }
    for (int t0 = 0; t0 < n; t0 += MG_ATT_QB) {
        const int t1 = t0 + MG_ATT_QB < n ? t0 + MG_ATT_QB : n;
        const size_t at = ((size_t)t0 * NH + h) * T + t0;   /* (query t0, key t0) */
        /* dk[t0:t1, h] += dS[t0:n, t0:t1]^T @ q[t0:n, h];  dv likewise with W, dout */
        MG_ATT_GEMM(dk + (size_t)t0 * C + hs, C, datt + at, 1, ra, q + (size_t)t0 * C + hs, C, 1,
                    t1 - t0, HS, n - t0, 1);
        MG_ATT_GEMM(dv + (size_t)t0 * C + hs, C, att + at, 1, ra, dout + (size_t)t0 * C + hs, C, 1,
                    t1 - t0, HS, n - t0, 1);
    }
}

static void FN(attention_forward_gemm)(REAL *out, REAL *att, const REAL *q, const REAL *k,
                                       const REAL *v, int n, int C, int NH, int T) {
    const REAL scale = FN(att_scale)(C / NH);
    /* heads write disjoint columns of out and rows of att */
    if (MG_USE_THREADS((size_t)n * n * C, NH)) {
        MG_PAR_FOR(schedule(static),
        for (int h = 0; h < NH; h++)
            FN(attention_forward_gemm_head)(out, att, q, k, v, n, C, NH, T, h, scale););
        return;
    }
    for (int h = 0; h < NH; h++) FN(attention_forward_gemm_head)(out, att, q, k, v, n, C, NH, T, h, scale);
}

static void FN(attention_backward_gemm)(REAL *dq, REAL *dk, REAL *dv, REAL *datt, const REAL *dout,
                                        const REAL *att, const REAL *q, const REAL *k,
                                        const REAL *v, int n, int C, int NH, int T) {
    const REAL scale = FN(att_scale)(C / NH);
    if (MG_USE_THREADS((size_t)n * n * C, NH)) {
        MG_PAR_FOR(schedule(static),
        for (int h = 0; h < NH; h++)
            FN(attention_backward_gemm_head)(dq, dk, dv, datt, dout, att, q, k, v, n, C, NH, T, h,
                                             scale););
        return;
    }
    for (int h = 0; h < NH; h++)
        FN(attention_backward_gemm_head)(dq, dk, dv, datt, dout, att, q, k, v, n, C, NH, T, h, scale);
}


/* ---------------------------------------------------- channel lanes */
/* attention with lanes over channels: for a query row i and key t, one
 * product q[i][c0 : c0 + NB] * k[t][c0 : c0 + NB] holds the terms of NB / HS
 * heads at once (heads never straddle a register: HS divides NB, NB divides
 * C), and sums within each group of HS lanes give all their scores.  Every
 * register of channels is an independent attention problem over its heads.
 * This fills the lanes for short documents and small heads, where the
 * query-lane kernels above leave most lanes idle and pay a per-head setup.
 *
 * Exactness of the forward (float64 bit-identical to attention_forward_rows):
 * - score: the reference's sequential ((0 + a0) + a1) + ... + a_{HS-1}, done
 *   as HS - 1 shifted adds in order (lane g*HS of ((0 + a) + a<<1) + a<<2 ...
 *   is the head's sum; not a tree), then broadcast over the head's lanes, so
 *   every lane of a group carries its head's score, and multiplied by scale;
 * - max, sum of exps and the output sums run over t from 0 in order, lane by
 *   lane, the same scalar operations as the reference (a select for the max);
 * - float64: exp and the reciprocal are the libm EXP / RECIP, once per head
 *   (not per lane); float32 uses the vector exp (any order is allowed there).
 */
#define MG_ATT_LANES_MAX_KEYS 64   /* scratch (keys, NB) on the stack */

/* 1 if the lanes-over-channels kernels cover this shape with nk keys. */
static int FN(att_lanes_ok)(int C, int NH, int nk) {
    const int HS = C / NH;
    return HS >= 1 && MG_LANES % HS == 0 && C % MG_LANES == 0 && nk <= MG_ATT_LANES_MAX_KEYS;
}
/* The exps of the scores S (nk, NB) less each head's max *M, in place, and
 * their sum over the keys in *total, key by key from t = 0.  Exact: libm's
 * exp once per head (not per lane), copied over the head's lanes. */
MG_INLINE void FN(att_lanes_exp_exact)(REAL *S, const VEC *M, VEC *total, int nk, const int HS) {
    enum { NB = MG_LANES };
    const int G = NB / HS;
    *total = (VEC){0};
    for (int t = 0; t < nk; t++) {
        VEC e = LOADU(S + (size_t)t * NB) - *M;
        REAL eb[NB];
        STOREU(eb, e);
        for (int g = 0; g < G; g++) {
            const REAL x = EXP(eb[g * HS]);
            for (int j = 0; j < HS; j++) eb[g * HS + j] = x;
        }
        e = LOADU(eb);
        STOREU(S + (size_t)t * NB, e);
        *total = *total + e;
    }
}

/* 1 / total per head (the libm-exact reciprocal once per head) */
MG_INLINE void FN(att_lanes_inv_exact)(VEC *inv, const VEC *total, const int HS) {
    enum { NB = MG_LANES };
    const int G = NB / HS;
    REAL ib[NB] = {0};   /* (every lane is set below; this quiets -Wmaybe-uninitialized) */
    for (int g = 0; g < G; g++) {
        const REAL x = RECIP((*total)[g * HS]);
        for (int j = 0; j < HS; j++) ib[g * HS + j] = x;
    }
    *inv = LOADU(ib);
}

#if MG_RELAXED
/* Relaxed: the vector exp.  A register holds each head's score HS times, so
 * HS keys' scores are exponentiated in one register (lane j of each head
 * group from key t0 + j), then spread back; vexp is lane-wise, so every
 * weight has the bits it would have one key per register. */
MG_INLINE void FN(att_lanes_exp_relaxed)(REAL *S, const VEC *M, VEC *total, int nk,
                                         const int HS) {
    enum { NB = MG_LANES };
    *total = (VEC){0};
    if (HS == 1) {
        for (int t = 0; t < nk; t++) {
            VEC e = LOADU(S + (size_t)t * NB) - *M;
            FN(vexp)(&e);
            STOREU(S + (size_t)t * NB, e);
            *total = *total + e;
        }
        return;
    }
    IVEC lane;
    for (int l = 0; l < NB; l++) lane[l] = l;
    for (int t0 = 0; t0 < nk; t0 += HS) {
        VEC pk = LOADU(S + (size_t)t0 * NB);
        for (int j = 1; j < HS; j++) {
            const VEC sj = t0 + j < nk ? LOADU(S + (size_t)(t0 + j) * NB) : *M;
            pk = MG_SEL(lane % HS == j, sj, pk);
        }
        pk = pk - *M;
        FN(vexp)(&pk);
        for (int j = 0; j < HS && t0 + j < nk; j++) {
            IVEC idx;
            for (int l = 0; l < NB; l++) idx[l] = l / HS * HS + j;
            const VEC e = MG_VPERM(pk, idx);
            STOREU(S + (size_t)(t0 + j) * NB, e);
            *total = *total + e;
        }
    }
}

MG_INLINE void FN(att_lanes_inv_relaxed)(VEC *inv, const VEC *total, const int HS) {
    (void)HS;
    *inv = (REAL)1 / *total;
}
#define MG_ATT_LANES_EXP FN(att_lanes_exp_relaxed)
#define MG_ATT_LANES_INV FN(att_lanes_inv_relaxed)
#else
#define MG_ATT_LANES_EXP FN(att_lanes_exp_exact)
#define MG_ATT_LANES_INV FN(att_lanes_inv_exact)
#endif

/* Query rows 0 .. N-1 at positions p0 + i, keys 0 .. p0 + i; HS a constant. */
MG_INLINE void FN(att_fwd_lanes_body)(
        REAL *out, REAL *att, const REAL *q, const REAL *k, const REAL *v, int N, int p0,
        int C, int NH, int T, REAL scale, REAL *S /* (p0 + N, NB) scratch */, const int HS) {
    enum { NB = MG_LANES };
    const int G = NB / HS;   /* heads per register */
    const VEC zero = {0};
    for (int i = 0; i < N; i++) {
        const int nk = p0 + i + 1;
        for (int c0 = 0; c0 < C; c0 += NB) {
            const int h0 = c0 / HS;
            const VEC qv = LOADU(q + (size_t)i * C + c0);
            VEC M = zero;
            for (int t = 0; t < nk; t++) {
                const VEC a = qv * LOADU(k + (size_t)t * C + c0);
                VEC s;
                FN(group_sum_seq)(&s, &a, HS);
                FN(group_bcast)(&s, HS);
                s = s * scale;
                STOREU(S + (size_t)t * NB, s);
                /* (one comparison per select: GCC 12 scalarises reused masks) */
                M = t == 0 ? s : MG_SEL(s > M, s, M);
            }
            VEC total, inv;
            MG_ATT_LANES_EXP(S, &M, &total, nk, HS);
            MG_ATT_LANES_INV(&inv, &total, HS);
            VEC o = zero;
            REAL *w = att + ((size_t)i * NH + h0) * T;
            for (int t = 0; t < nk; t++) {
                const VEC wv = LOADU(S + (size_t)t * NB) * inv;
                for (int g = 0; g < G; g++) w[(size_t)g * T + t] = wv[g * HS];
                o = o + wv * LOADU(v + (size_t)t * C + c0);
            }
            STOREU(out + (size_t)i * C + c0, o);
        }
    }
}

MG_HOT static void FN(attention_forward_lanes)(REAL *out, REAL *att, const REAL *q,
                                               const REAL *k, const REAL *v, int N, int p0,
                                               int C, int NH, int T, REAL scale) {
    REAL S[(size_t)MG_ATT_LANES_MAX_KEYS * MG_LANES];
    switch (C / NH) {
    case 1: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 1); break;
    case 2: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 2); break;
    case 4: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 4); break;
    case 8: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 8); break;
    default: FN(att_fwd_lanes_body)(out, att, q, k, v, N, p0, C, NH, T, scale, S, 16); break;
    }
}

/* Backward of attention_forward_lanes with p0 = 0.  The per-head sums over
 * channels run in channel order from 0 (group_sum_seq, as the other
 * variants do), not as butterflies: the variant runs only where a head
 * divides the register width, which differs between ISAs (isa.h), so any
 * other order would make the results depend on the CPU. */
MG_INLINE void FN(att_bwd_lanes_body)(
        REAL *dq, REAL *dk, REAL *dv, const REAL *dout, const REAL *att, const REAL *q,
        const REAL *k, const REAL *v, int N, int C, int NH, int T, REAL scale,
        REAL *W /* (N, NB) weights */, REAL *D /* (N, NB) dweights */, const int HS) {
    enum { NB = MG_LANES };
    const int G = NB / HS;
    const VEC zero = {0};
    IVEC glane;
    for (int l = 0; l < NB; l++) glane[l] = l;
    for (int i = 0; i < N; i++) {
        for (int c0 = 0; c0 < C; c0 += NB) {
            const int h0 = c0 / HS;
            const REAL *w = att + ((size_t)i * NH + h0) * T;
            const VEC dov = LOADU(dout + (size_t)i * C + c0);
            const VEC qv = LOADU(q + (size_t)i * C + c0);
            VEC dot = zero;
            for (int t = 0; t <= i; t++) {
                /* the weights, each head's over its lanes (broadcasts and
                 * selects: no scalar stores read back as a vector) */
                VEC wv = zero + w[t];
                for (int g = 1; g < G; g++)
                    wv = MG_SEL(glane >= g * HS, zero + w[(size_t)g * T + t], wv);
                STOREU(W + (size_t)t * NB, wv);
                const VEC gv = dov * LOADU(v + (size_t)t * C + c0);
                VEC g;
                FN(group_sum_seq)(&g, &gv, HS);
                FN(group_bcast)(&g, HS);
                STOREU(D + (size_t)t * NB, g);
                dot = dot + wv * g;
                REAL *dvt = dv + (size_t)t * C + c0;
                STOREU(dvt, LOADU(dvt) + wv * dov);
            }
            /* softmax: ds_t = w_t (dw_t - sum_u w_u dw_u) */
            VEC gq = zero;
            for (int t = 0; t <= i; t++) {
                const VEC ds = LOADU(W + (size_t)t * NB) * (LOADU(D + (size_t)t * NB) - dot) * scale;
                gq = gq + ds * LOADU(k + (size_t)t * C + c0);
                REAL *dkt = dk + (size_t)t * C + c0;
                STOREU(dkt, LOADU(dkt) + ds * qv);
            }
            REAL *dqi = dq + (size_t)i * C + c0;
            STOREU(dqi, LOADU(dqi) + gq);
        }
    }
}

MG_HOT static void FN(attention_backward_lanes)(REAL *dq, REAL *dk, REAL *dv, const REAL *dout,
                                                const REAL *att, const REAL *q, const REAL *k,
                                                const REAL *v, int N, int C, int NH, int T,
                                                REAL scale) {
    REAL W[(size_t)MG_ATT_LANES_MAX_KEYS * MG_LANES], D[(size_t)MG_ATT_LANES_MAX_KEYS * MG_LANES];
    switch (C / NH) {
    case 1: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 1); break;
    case 2: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 2); break;
    case 4: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 4); break;
    case 8: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 8); break;
    default: FN(att_bwd_lanes_body)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T, scale, W, D, 16); break;
    }
}


/* ------------------------------------------------- the variant rule */
/* Which variant runs for N queries at positions p0 .. (the backward: p0 = 0):
 * channel lanes where they apply (they fill the lanes for small heads and
 * short documents, where the query lanes leave most idle and pay a per-head
 * setup), else query lanes for a document that fits, else rows.  A forced
 * variant (mg_forced_variant) is taken where it applies. */
static int FN(attention_choose)(int N, int p0, int C, int NH) {
    const int lanes = FN(att_lanes_ok)(C, NH, p0 + N);
    const int doc = p0 == 0 && FN(att_doc_fits)(N, C / NH);
    const int forced = mg_forced_variant[MG_OP_ATTENTION];
    if (forced == MG_ATT_ROWS || (forced == MG_ATT_QUERY_LANES && doc) ||
        (forced == MG_ATT_CHANNEL_LANES && lanes) || (forced == MG_ATT_GEMM && p0 == 0))
        return forced;
    if (p0 == 0 && FN(att_gemm_pays)(N, C / NH)) return MG_ATT_GEMM;
    /* channel lanes fill the registers for small heads and short documents;
     * from 32 queries with heads of 16 the query lanes are full too and
     * cheaper (measured, Zen 5, float32 steps at B = 16: 64/64 4.3 ms vs 5.2,
     * 64/32 1.40 vs 1.55; heads of 8, 32/64: 1.63 vs 1.46) */
    if (lanes && doc && N >= 32 && C / NH >= 16) return MG_ATT_QUERY_LANES;
    return lanes ? MG_ATT_CHANNEL_LANES : doc ? MG_ATT_QUERY_LANES : MG_ATT_ROWS;
}

void FN(attention_forward)(REAL *out,         /* (N, C) */
                           REAL *att,         /* (N, NH, T) saved softmax weights */
                           const REAL *q,     /* (N, C) */
                           const REAL *k,     /* (p0 + N, C) */
                           const REAL *v,     /* (p0 + N, C) */
                           int N, int p0, int C, int NH, int T) {
    switch (FN(attention_choose)(N, p0, C, NH)) {
    case MG_ATT_CHANNEL_LANES:
        FN(attention_forward_lanes)(out, att, q, k, v, N, p0, C, NH, T, FN(att_scale)(C / NH));
        return;
    case MG_ATT_QUERY_LANES:
        FN(attention_forward_doc)(out, att, q, k, v, N, C, NH, T, FN(att_scale)(C / NH));
        return;
    case MG_ATT_GEMM:
        FN(attention_forward_gemm)(out, att, q, k, v, N, C, NH, T);
        return;
    default:
        break;
    }
    if (MG_USE_THREADS((size_t)N * (p0 + N) * C, N)) {
        MG_PAR_FOR(schedule(dynamic, 1),
        for (int i = 0; i < N; i++) FN(attention_forward_rows)(out, att, q, k, v, i, i + 1, p0, C, NH, T););
        return;
    }
    FN(attention_forward_rows)(out, att, q, k, v, 0, N, p0, C, NH, T);
}

/* Backward of attention_forward with p0 = 0 (training on one document);
 * the gradients are accumulated (+=). */
void FN(attention_backward)(REAL *dq,          /* (N, C) */
                            REAL *dk,          /* (N, C) */
                            REAL *dv,          /* (N, C) */
                            REAL *datt,        /* (N, NH, T) scratch (rows variant) */
                            const REAL *dout,  /* (N, C) */
                            const REAL *att,   /* (N, NH, T) */
                            const REAL *q,     /* (N, C) */
                            const REAL *k,     /* (N, C) */
                            const REAL *v,     /* (N, C) */
                            int N, int C, int NH, int T) {
    switch (FN(attention_choose)(N, 0, C, NH)) {
    case MG_ATT_CHANNEL_LANES:
        FN(attention_backward_lanes)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T,
                                     FN(att_scale)(C / NH));
        return;
    case MG_ATT_QUERY_LANES:
        FN(attention_backward_doc)(dq, dk, dv, dout, att, q, k, v, N, C, NH, T,
                                   FN(att_scale)(C / NH));
        return;
    case MG_ATT_GEMM:
        FN(attention_backward_gemm)(dq, dk, dv, datt, dout, att, q, k, v, N, C, NH, T);
        return;
    default:
        break;
    }
    /* one head per thread: the head's slices of dq, dk, dv are its own */
    if (MG_USE_THREADS((size_t)N * N * C, NH)) {
        MG_PAR_FOR(schedule(static),
        for (int h = 0; h < NH; h++)
            FN(attention_backward_heads)(dq, dk, dv, datt, dout, att, q, k, v, h, h + 1, N, C, NH, T););
        return;
    }
    FN(attention_backward_heads)(dq, dk, dv, datt, dout, att, q, k, v, 0, NH, N, C, NH, T);
}
