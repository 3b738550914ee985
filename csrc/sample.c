/*
 * sample.c: inference helpers and the SPEC's sampling loop (section 6) in
 * C, with CPython's random stream (MT19937 stepped exactly as
 * random.Random, rng.choices' cumulative sums and bisect).
 */
#include "model_internal.h"

int mg_softmax_temperature(double *probs, const double *logits, int V, double temperature) {
    if (probs == NULL || logits == NULL || V < 1) return MG_ERR_ARG;
    if (!(temperature > 0) || !isfinite(temperature)) return MG_ERR_ARG;
    const double inv_t = pow(temperature, -1.0);
    if (!isfinite(inv_t)) return MG_ERR_ARG;
    double maxv = logits[0] * inv_t;
    for (int i = 0; i < V; i++) {
        probs[i] = logits[i] * inv_t;
        if (probs[i] > maxv) maxv = probs[i];
    }
    double total = 0;
    for (int i = 0; i < V; i++) { probs[i] = exp(probs[i] - maxv); total += probs[i]; }
    const double inv = pow(total, -1.0);
    for (int i = 0; i < V; i++) probs[i] = probs[i] * inv;
    return isfinite(total) ? MG_OK : MG_ERR_NONFINITE;
}


/* MT19937 as CPython's _randommodule.c runs it (genrand_uint32). */
static uint32_t mt_next(mg_mt19937 *r) {
    enum { NW = 624, MW = 397 };
    static const uint32_t mag01[2] = {0x0u, 0x9908b0dfu};
    uint32_t y, *mt = r->mt;
    if (r->index >= NW) {
        int kk;
        for (kk = 0; kk < NW - MW; kk++) {
            y = (mt[kk] & 0x80000000u) | (mt[kk + 1] & 0x7fffffffu);
            mt[kk] = mt[kk + MW] ^ (y >> 1) ^ mag01[y & 0x1u];
        }
        for (; kk < NW - 1; kk++) {
            y = (mt[kk] & 0x80000000u) | (mt[kk + 1] & 0x7fffffffu);
            mt[kk] = mt[kk + (MW - NW)] ^ (y >> 1) ^ mag01[y & 0x1u];
        }
        y = (mt[NW - 1] & 0x80000000u) | (mt[0] & 0x7fffffffu);
        mt[NW - 1] = mt[MW - 1] ^ (y >> 1) ^ mag01[y & 0x1u];
        r->index = 0;
    }
    y = mt[r->index++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
}

double mg_mt_random(mg_mt19937 *r) {   /* random_random(): genrand_res53 */
    const uint32_t a = mt_next(r) >> 5, b = mt_next(r) >> 6;
    return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

/* Zero all but the k largest of logits' probabilities: a token survives if
 * fewer than k tokens rank before it (larger logit, or equal and lower id),
 * as a stable descending argsort's first k. */
static void top_k_mask(double *probs, const double *logits, int V, int k) {
    for (int i = 0; i < V; i++) {
        int before = 0;
        for (int j = 0; j < V && before < k; j++)
            before += logits[j] > logits[i] || (logits[j] == logits[i] && j < i);
        if (before >= k) probs[i] = 0.0;
    }
}

int mg_sample(mg_model *M, mg_mt19937 *rng, double temperature, int top_k,
              const int32_t *prefix, int n_prefix, int bos, int num_samples,
              int32_t *tokens, int32_t *lens, int *done) {
    if (done != NULL) *done = 0;
    if (M == NULL || rng == NULL || tokens == NULL || lens == NULL || done == NULL)
        return MG_ERR_ARG;
    const int V = M->cfg.vocab_size, T = M->cfg.block_size;
    if (rng->index < 0 || rng->index > 624 || num_samples < 0 || top_k < 0) return MG_ERR_ARG;
    if (n_prefix < 0 || n_prefix > T || (n_prefix > 0 && prefix == NULL)) return MG_ERR_LENGTH;
    if (bos < 0 || bos >= V) return MG_ERR_TOKEN;
    for (int i = 0; i < n_prefix; i++)
        if (prefix[i] < 0 || prefix[i] >= V) return MG_ERR_TOKEN;
    double *buf = malloc(3 * (size_t)V * sizeof(double));
    if (buf == NULL) return MG_ERR_NOMEM;
    double *logits = buf, *probs = buf + V, *cum = buf + 2 * (size_t)V;
    int rc = MG_OK;
    /* the parameters do not change while sampling: transposed weights once */
    M->ops->infer_prepare(M);
    int (*infer)(mg_model *, int, int, double *, int) = M->ops->infer_logits;
    for (int s = 0; s < num_samples && rc == MG_OK; s++) {
        int token = bos, n = 0;
        for (int pos = 0; pos < n_prefix && rc == MG_OK; pos++) {
            rc = infer(M, token, pos, logits, 1);   /* fills the KV cache */
            token = prefix[pos];
        }
        for (int pos = n_prefix; pos < T && rc == MG_OK; pos++) {
            rc = infer(M, token, pos, logits, 1);
            if (rc == MG_OK) rc = mg_softmax_temperature(probs, logits, V, temperature);
            if (rc != MG_OK) break;
            if (top_k > 0 && top_k < V) top_k_mask(probs, logits, V, top_k);
            /* rng.choices: cum_weights = accumulate(weights), total = cum[-1] + 0.0 */
            double acc = probs[0];
            cum[0] = acc;
            for (int i = 1; i < V; i++) { acc = acc + probs[i]; cum[i] = acc; }
            const double total = cum[V - 1] + 0.0;
            if (!(total > 0.0) || !isfinite(total)) { rc = MG_ERR_NONFINITE; break; }
            const double x = mg_mt_random(rng) * total;
            int lo = 0, hi = V - 1;             /* bisect_right(cum, x, 0, V - 1) */
            while (lo < hi) {
                const int mid = (lo + hi) / 2;
                if (x < cum[mid]) hi = mid; else lo = mid + 1;
            }
            token = lo;
            if (token == bos) break;
            tokens[(size_t)s * T + n++] = token;
        }
        if (rc == MG_OK) {
            lens[s] = n;
            *done = s + 1;
        }
    }
    free(buf);
    return rc;
}

