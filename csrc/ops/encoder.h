/*
 * ops/encoder.h: token + position embedding, forward and backward
 * (a template over REAL, see dtype_f64.c).
 */

MG_HOT void FN(encoder_forward)(REAL *out,            /* (N, C) */
                         const int32_t *inp,   /* (N) token ids */
                         const int32_t *pos,   /* (N) positions */
                         const REAL *wte,      /* (V, C) */
                         const REAL *wpe,      /* (T, C) */
                         int N, int C) {
    for (int n = 0; n < N; n++) {
        REAL *o = out + (size_t)n * C;
        const REAL *te = wte + (size_t)inp[n] * C;
        const REAL *pe = wpe + (size_t)pos[n] * C;
        for (int i = 0; i < C; i++) o[i] = te[i] + pe[i];
    }
}

MG_HOT void FN(encoder_backward)(REAL *dwte,           /* (V, C) */
                          REAL *dwpe,           /* (T, C) */
                          const REAL *dout,     /* (N, C) */
                          const int32_t *inp,   /* (N) */
                          const int32_t *pos,   /* (N) */
                          int N, int C) {
    /* serial: several tokens may share a row of wte */
    for (int n = 0; n < N; n++) {
        const REAL *d = dout + (size_t)n * C;
        REAL *dte = dwte + (size_t)inp[n] * C;
        REAL *dpe = dwpe + (size_t)pos[n] * C;
        for (int i = 0; i < C; i++) { dte[i] += d[i]; dpe[i] += d[i]; }
    }
}
