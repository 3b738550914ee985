/*
 * Kernels: every op as a forward/backward pair, side by side.
 *
 * This file is a template, included once per dtype with
 *   REAL   the element type (double or float)
 *   FN(x)  the suffixed name (x##_f64 or x##_f32)
 *   POW, EXP, LOG, SQRT  the libm functions of that type
 *
 * Conventions (as in llm.c): arguments are outputs, saved buffers, inputs,
 * then sizes; every pointer has its shape in a comment; backward kernels
 * ACCUMULATE (+=) into their gradient outputs and zeroing is separate.
 * Forward kernels follow the SPEC's operations and summation order exactly
 * (sums left to right from 0, divisions as multiplication by pow(x, -1)), so
 * the float64 path reproduces the reference to rounding.  OpenMP is used only
 * when the work is large enough, and each output element is written by one
 * thread with a fixed summation order, so results do not depend on the
 * number of threads.
 */

#define MG_STR(x) #x
#define MG_PRAGMA(x) _Pragma(MG_STR(x))
/* parallel for over an outer loop, only when `work` multiply-adds pay for it */
#define MG_PARALLEL_FOR_IF(work) MG_PRAGMA(omp parallel for schedule(static) if((work) >= MG_OMP_MIN_WORK))
#ifndef MG_OMP_MIN_WORK
#define MG_OMP_MIN_WORK 200000
#endif

/* ------------------------------------------------------------- embedding */
void FN(encoder_forward)(REAL *out,            /* (N, C) */
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

void FN(encoder_backward)(REAL *dwte,           /* (V, C) */
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

/* --------------------------------------------------------------- RMSNorm */
/* out = x * (mean(x*x) + 1e-5)^-0.5, no learned gain */
void FN(rmsnorm_forward)(REAL *out,           /* (N, C) */
                         REAL *scale,         /* (N) saved (ms + 1e-5)^-0.5 */
                         const REAL *inp,     /* (N, C) */
                         int N, int C) {
    const REAL inv_c = POW((REAL)C, (REAL)-1);
    for (int n = 0; n < N; n++) {
        const REAL *x = inp + (size_t)n * C;
        REAL *o = out + (size_t)n * C;
        REAL ss = 0;
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        REAL s = POW(ss * inv_c + (REAL)1e-5, (REAL)-0.5);
        scale[n] = s;
        for (int i = 0; i < C; i++) o[i] = x[i] * s;
    }
}

void FN(rmsnorm_backward)(REAL *dinp,          /* (N, C) */
                          const REAL *dout,    /* (N, C) */
                          const REAL *inp,     /* (N, C) */
                          const REAL *scale,   /* (N) */
                          int N, int C) {
    const REAL inv_c = POW((REAL)C, (REAL)-1);
    for (int n = 0; n < N; n++) {
        const REAL *x = inp + (size_t)n * C;
        const REAL *d = dout + (size_t)n * C;
        REAL *dx = dinp + (size_t)n * C;
        REAL ss = 0, dscale = 0;
        for (int i = 0; i < C; i++) { ss += x[i] * x[i]; dscale += d[i] * x[i]; }
        /* d scale / d ms = -0.5 (ms + eps)^-1.5 ; d ms / d x_i = 2 x_i / C */
        REAL dms = (REAL)-0.5 * POW(ss * inv_c + (REAL)1e-5, (REAL)-1.5) * dscale;
        REAL dsq = dms * inv_c;
        REAL s = scale[n];
        for (int i = 0; i < C; i++) dx[i] += d[i] * s + (x[i] * dsq + x[i] * dsq);
    }
}

/* ---------------------------------------------------------------- matmul */
/* out[n][o] = sum_i weight[o][i] * inp[n][i]   (no bias) */
void FN(matmul_forward)(REAL *out,            /* (N, OC) */
                        const REAL *inp,      /* (N, C) */
                        const REAL *weight,   /* (OC, C) */
                        int N, int C, int OC) {
    MG_PARALLEL_FOR_IF((size_t)N * C * OC)
    for (int n = 0; n < N; n++) {
        const REAL *x = inp + (size_t)n * C;
        REAL *o = out + (size_t)n * OC;
        for (int oc = 0; oc < OC; oc++) {
            const REAL *w = weight + (size_t)oc * C;
            REAL s = 0;
            for (int i = 0; i < C; i++) s += w[i] * x[i];
            o[oc] = s;
        }
    }
}

void FN(matmul_backward)(REAL *dinp,           /* (N, C) */
                         REAL *dweight,        /* (OC, C) */
                         const REAL *dout,     /* (N, OC) */
                         const REAL *inp,      /* (N, C) */
                         const REAL *weight,   /* (OC, C) */
                         int N, int C, int OC) {
    /* dinp nest: each row n belongs to one thread */
    MG_PARALLEL_FOR_IF((size_t)N * C * OC)
    for (int n = 0; n < N; n++) {
        REAL *dx = dinp + (size_t)n * C;
        const REAL *d = dout + (size_t)n * OC;
        for (int oc = 0; oc < OC; oc++) {
            const REAL *w = weight + (size_t)oc * C;
            const REAL g = d[oc];
            for (int i = 0; i < C; i++) dx[i] += g * w[i];
        }
    }
    /* dweight nest: each row oc belongs to one thread, summed over n in order */
    MG_PARALLEL_FOR_IF((size_t)N * C * OC)
    for (int oc = 0; oc < OC; oc++) {
        REAL *dw = dweight + (size_t)oc * C;
        for (int n = 0; n < N; n++) {
            const REAL g = dout[(size_t)n * OC + oc];
            const REAL *x = inp + (size_t)n * C;
            for (int i = 0; i < C; i++) dw[i] += g * x[i];
        }
    }
}

/* ------------------------------------------------------------- attention */
/* Causal multi-head attention.  Query i sits at position p0 + i and attends
 * keys/values at positions 0 .. p0 + i (k and v are indexed by position).
 * Training uses p0 = 0 on one document; inference uses N = 1, p0 = pos on the
 * KV cache.  s_t = (q_h . k_h[t]) * (HS^0.5)^-1, w = softmax(s),
 * out_h = sum_t w_t v_h[t]. */
void FN(attention_forward)(REAL *out,         /* (N, C) */
                           REAL *att,         /* (N, NH, T) saved softmax weights */
                           const REAL *q,     /* (N, C) */
                           const REAL *k,     /* (p0 + N, C) */
                           const REAL *v,     /* (p0 + N, C) */
                           int N, int p0, int C, int NH, int T) {
    const int HS = C / NH;
    const REAL scale = POW(POW((REAL)HS, (REAL)0.5), (REAL)-1);
    MG_PARALLEL_FOR_IF((size_t)N * N * C)
    for (int i = 0; i < N; i++) {
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
            const REAL inv = POW(total, (REAL)-1);
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

/* Backward of attention_forward with p0 = 0 (training on one document). */
void FN(attention_backward)(REAL *dq,          /* (N, C) */
                            REAL *dk,          /* (N, C) */
                            REAL *dv,          /* (N, C) */
                            REAL *datt,        /* (N, NH, T) scratch */
                            const REAL *dout,  /* (N, C) */
                            const REAL *att,   /* (N, NH, T) */
                            const REAL *q,     /* (N, C) */
                            const REAL *k,     /* (N, C) */
                            const REAL *v,     /* (N, C) */
                            int N, int C, int NH, int T) {
    const int HS = C / NH;
    const REAL scale = POW(POW((REAL)HS, (REAL)0.5), (REAL)-1);
    /* one head per thread: the head's slices of dq, dk, dv are its own */
    MG_PARALLEL_FOR_IF((size_t)N * N * C)
    for (int h = 0; h < NH; h++) {
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

/* ------------------------------------------------------------------ ReLU */
void FN(relu_forward)(REAL *out, const REAL *inp, size_t n) {      /* (n), (n) */
    for (size_t i = 0; i < n; i++) out[i] = inp[i] > 0 ? inp[i] : (REAL)0;
}

void FN(relu_backward)(REAL *dinp, const REAL *dout, const REAL *inp, size_t n) {
    for (size_t i = 0; i < n; i++) if (inp[i] > 0) dinp[i] += dout[i];
}

/* -------------------------------------------------------------- residual */
void FN(residual_forward)(REAL *out, const REAL *inp1, const REAL *inp2, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = inp1[i] + inp2[i];
}

void FN(residual_backward)(REAL *dinp1, REAL *dinp2, const REAL *dout, size_t n) {
    for (size_t i = 0; i < n; i++) { dinp1[i] += dout[i]; dinp2[i] += dout[i]; }
}

/* ------------------------------------------------ softmax cross-entropy */
/* probs = softmax(logits) computed as the SPEC does; losses = -log probs[target] */
void FN(crossentropy_softmax_forward)(REAL *losses,          /* (N) */
                                      REAL *probs,           /* (N, V) */
                                      const REAL *logits,    /* (N, V) */
                                      const int32_t *targets,/* (N) */
                                      int N, int V) {
    for (int n = 0; n < N; n++) {
        const REAL *z = logits + (size_t)n * V;
        REAL *p = probs + (size_t)n * V;
        REAL maxv = z[0];
        for (int i = 1; i < V; i++) if (z[i] > maxv) maxv = z[i];
        REAL total = 0;
        for (int i = 0; i < V; i++) { p[i] = EXP(z[i] - maxv); total += p[i]; }
        const REAL inv = POW(total, (REAL)-1);
        for (int i = 0; i < V; i++) p[i] = p[i] * inv;
        losses[n] = -LOG(p[targets[n]]);
    }
}

void FN(crossentropy_softmax_backward)(REAL *dlogits,          /* (N, V) */
                                       const REAL *dlosses,    /* (N) */
                                       const REAL *probs,      /* (N, V) */
                                       const int32_t *targets, /* (N) */
                                       int N, int V) {
    for (int n = 0; n < N; n++) {
        REAL *dz = dlogits + (size_t)n * V;
        const REAL *p = probs + (size_t)n * V;
        const REAL dl = dlosses[n];
        for (int i = 0; i < V; i++) dz[i] += dl * (p[i] - (i == targets[n] ? (REAL)1 : (REAL)0));
    }
}

/* ------------------------------------------------------------------ Adam */
/* Bias-corrected Adam at 1-based step t with the step's learning rate lr_t. */
void FN(adam_update)(REAL *params,       /* (n) */
                     REAL *m,            /* (n) first moments */
                     REAL *v,            /* (n) second moments */
                     const REAL *grads,  /* (n) */
                     size_t n, double lr_t, double beta1, double beta2, double eps,
                     long t) {
    const REAL b1 = (REAL)beta1, b2 = (REAL)beta2;
    const REAL c1 = (REAL)(1.0 - beta1), c2 = (REAL)(1.0 - beta2);
    const REAL bc1 = (REAL)(1.0 - pow(beta1, (double)t));
    const REAL bc2 = (REAL)(1.0 - pow(beta2, (double)t));
    const REAL lr = (REAL)lr_t, e = (REAL)eps;
    for (size_t i = 0; i < n; i++) {
        const REAL g = grads[i];
        m[i] = b1 * m[i] + c1 * g;
        v[i] = b2 * v[i] + c2 * (g * g);
        const REAL m_hat = m[i] / bc1;
        const REAL v_hat = v[i] / bc2;
        params[i] = params[i] - lr * m_hat / (SQRT(v_hat) + e);
    }
}

void FN(zero)(REAL *buf, size_t n) {
    for (size_t i = 0; i < n; i++) buf[i] = 0;
}
