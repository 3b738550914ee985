/*
 * ops/crossentropy.h: softmax cross-entropy, forward and backward (a
 * template over REAL).  probs = softmax(logits) computed as the SPEC does
 * (max subtracted, exp, sum, times the reciprocal of the sum);
 * losses = -log probs[target].
 */

/* the largest of z[0 .. V) (the softmax's shift) */
MG_INLINE REAL FN(row_max)(const REAL *z, int V) {
    REAL maxv = z[0];
    for (int i = 1; i < V; i++) if (z[i] > maxv) maxv = z[i];
    return maxv;
}

#if !MG_RELAXED
/* Exact (float64): the SPEC's sequential sum and -log p.  If p underflowed
 * to 0 (a logit gap beyond ~745), the equal log-sum-exp form stays finite. */
MG_HOT static void FN(crossentropy_rows_exact)(REAL *losses, REAL *probs, const REAL *logits,
                                               const int32_t *targets, int n0, int n1, int V) {
    for (int n = n0; n < n1; n++) {
        const REAL *z = logits + (size_t)n * V;
        REAL *p = probs + (size_t)n * V;
        const REAL maxv = FN(row_max)(z, V);
        REAL total = 0;
        for (int i = 0; i < V; i++) { p[i] = EXP(z[i] - maxv); total += p[i]; }
        const REAL inv = RECIP(total);
        for (int i = 0; i < V; i++) p[i] = p[i] * inv;
        const REAL pt = p[targets[n]];
        losses[n] = pt > 0 ? -LOG(pt) : LOG(total) + (maxv - z[targets[n]]);
    }
}
#define MG_CE_ROWS FN(crossentropy_rows_exact)
#else
/* Relaxed (float32): the vector exp, a vector sum, and the log-sum-exp form
 * of the loss, exact for any logit gap (the vector exp clamps its argument,
 * so -log p would saturate near 87). */
MG_HOT static void FN(crossentropy_rows_relaxed)(REAL *losses, REAL *probs, const REAL *logits,
                                                 const int32_t *targets, int n0, int n1,
                                                 int V) {
    enum { NB = MG_LANES };
    for (int n = n0; n < n1; n++) {
        const REAL *z = logits + (size_t)n * V;
        REAL *p = probs + (size_t)n * V;
        const REAL maxv = FN(row_max)(z, V);
        REAL total = 0;
        REAL buf[NB];
        int i = 0;
        VEC tot = {0};
        for (; i + NB <= V; i += NB) {
            VEC e = LOADU(z + i) - maxv;
            FN(vexp)(&e);
            STOREU(p + i, e);
            tot += e;
        }
        if (i < V && V >= NB) {
            /* the tail: the last full register of the row (overlapping the
             * previous one; the overlapped lanes are recomputed with the
             * same bits and left out of the sum), no scalar stores read
             * back as a vector */
            VEC e = LOADU(z + V - NB) - maxv;
            FN(vexp)(&e);
            STOREU(p + V - NB, e);
            IVEC lane;
            for (int l = 0; l < NB; l++) lane[l] = l;
            const IVEC fresh = lane >= (NB - (V - i));
            tot += MG_SEL(fresh, e, (VEC){0});
        } else if (i < V) {
            for (int l = 0; l < NB; l++) buf[l] = i + l < V ? z[i + l] - maxv : (REAL)-100;
            VEC e = LOADU(buf);
            FN(vexp)(&e);
            STOREU(buf, e);
            for (int l = 0; i + l < V; l++) p[i + l] = buf[l];
            for (int l = 0; i + l < V; l++) total += buf[l];
        }
        for (int l = 0; l < NB; l++) total += tot[l];
        const REAL inv = RECIP(total);
        for (int k = 0; k < V; k++) p[k] = p[k] * inv;
        losses[n] = LOG(total) + (maxv - z[targets[n]]);
    }
}
#define MG_CE_ROWS FN(crossentropy_rows_relaxed)
#endif

void FN(crossentropy_softmax_forward)(REAL *losses,          /* (N) */
                                      REAL *probs,           /* (N, V) */
                                      const REAL *logits,    /* (N, V) */
                                      const int32_t *targets,/* (N) */
                                      int N, int V) {
    if (MG_USE_THREADS((size_t)N * V * 16, N / 16)) {
        const int chunks = (N + 15) / 16;
        MG_PAR_FOR(schedule(static),
        for (int c = 0; c < chunks; c++)
            MG_CE_ROWS(losses, probs, logits, targets, 16 * c, 16 * c + 16 < N ? 16 * c + 16 : N, V););
        return;
    }
    MG_CE_ROWS(losses, probs, logits, targets, 0, N, V);
}

MG_HOT void FN(crossentropy_softmax_backward)(REAL *dlogits,          /* (N, V) */
                                       const REAL *dlosses,    /* (N) */
                                       const REAL *probs,      /* (N, V) */
                                       const int32_t *targets, /* (N) */
                                       int N, int V) {
    for (int n = 0; n < N; n++) {
        REAL *dz = dlogits + (size_t)n * V;
        const REAL *p = probs + (size_t)n * V;
        const REAL dl = dlosses[n];
        const int t = targets[n];
        /* (a select on the index, not a branch: vectorises) */
        for (int i = 0; i < V; i++) {
            const REAL onehot = i == t ? (REAL)1 : (REAL)0;
            dz[i] += dl * (p[i] - onehot);
        }
    }
}

