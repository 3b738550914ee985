/*
 * Model-level forward, backward and inference, written once over REAL/FN()
 * (see kernels_impl.h).  The generic entry points in microgpt.c validate
 * every input before dispatching here.
 */

/* Named pointers into the flat buffers. */
typedef struct {
    REAL *wte, *wpe, *lm_head;                  /* (V,C), (T,C), (V,C) */
} FN(globals_t);

typedef struct {
    REAL *wq, *wk, *wv, *wo;                    /* (C, C) each */
    REAL *fc1;                                  /* (4C, C) */
    REAL *fc2;                                  /* (C, 4C) */
} FN(layer_params_t);

typedef struct {
    REAL *ln1, *ln1s, *q, *k, *v, *att, *atty, *attproj, *res2;
    REAL *ln2, *ln2s, *fch, *fchr, *fcproj, *res3;
} FN(layer_acts_t);

static FN(globals_t) FN(globals)(const mg_model *M, REAL *base) {
    FN(globals_t) g;
    g.wte = base + M->param_offset[MG_WTE];
    g.wpe = base + M->param_offset[MG_WPE];
    g.lm_head = base + M->param_offset[MG_LM_HEAD];
    return g;
}

static FN(layer_params_t) FN(layer_params)(const mg_model *M, REAL *base, int l) {
    const size_t C = (size_t)M->cfg.n_embd;
    REAL *p = base + M->layer_offset + (size_t)l * M->layer_size;
    FN(layer_params_t) lp;
    lp.wq = p; lp.wk = p + C * C; lp.wv = p + 2 * C * C; lp.wo = p + 3 * C * C;
    lp.fc1 = p + 4 * C * C; lp.fc2 = p + 8 * C * C;
    return lp;
}

static FN(layer_acts_t) FN(layer_acts)(const mg_model *M, REAL *base, int l) {
    const mg_act_layout *A = &M->acts_layout;
    REAL *b = base + A->layers + (size_t)l * A->lstride;
    FN(layer_acts_t) la;
    la.ln1 = b + A->ln1; la.ln1s = b + A->ln1s; la.q = b + A->q; la.k = b + A->k;
    la.v = b + A->v; la.att = b + A->att; la.atty = b + A->atty;
    la.attproj = b + A->attproj; la.res2 = b + A->res2; la.ln2 = b + A->ln2;
    la.ln2s = b + A->ln2s; la.fch = b + A->fch; la.fchr = b + A->fchr;
    la.fcproj = b + A->fcproj; la.res3 = b + A->res3;
    return la;
}

/* Transposed weights (see mg_model.wT): lm_head, then per layer. */
static int FN(padT)(int x) { return (x + 15) / 16 * 16; }

static REAL *FN(wT_lm)(const mg_model *M) { return (REAL *)M->wT; }

/* which: MG_WQ .. MG_FC2 */
static REAL *FN(wT_layer)(const mg_model *M, int l, int which) {
    const size_t C = (size_t)M->cfg.n_embd, Cp = (size_t)FN(padT)(M->cfg.n_embd);
    REAL *b = (REAL *)M->wT + C * (size_t)FN(padT)(M->cfg.vocab_size) + (size_t)l * M->wT_layer;
    return which <= MG_FC1 ? b + (size_t)which * C * Cp : b + 4 * C * Cp + C * (size_t)FN(padT)(4 * M->cfg.n_embd);
}

/* Rebuild every transposed weight from params. */
static void FN(build_wT_one)(mg_model *M, int job) {
    const int C = M->cfg.n_embd, V = M->cfg.vocab_size, Cp = FN(padT)(C), C4p = FN(padT)(4 * C);
    if (job == 0) {
        FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
        FN(transpose_weight)(FN(wT_lm)(M), g.lm_head, V, C, FN(padT)(V));
        return;
    }
    const int l = (job - 1) / MG_NUM_PER_LAYER, which = (job - 1) % MG_NUM_PER_LAYER;
    FN(layer_params_t) w = FN(layer_params)(M, (REAL *)M->params, l);
    REAL *dst = FN(wT_layer)(M, l, which);
    switch (which) {
    case MG_WQ: FN(transpose_weight)(dst, w.wq, C, C, Cp); break;
    case MG_WK: FN(transpose_weight)(dst, w.wk, C, C, Cp); break;
    case MG_WV: FN(transpose_weight)(dst, w.wv, C, C, Cp); break;
    case MG_WO: FN(transpose_weight)(dst, w.wo, C, C, Cp); break;
    case MG_FC1: FN(transpose_weight)(dst, w.fc1, 4 * C, C, C4p); break;
    default: FN(transpose_weight)(dst, w.fc2, C, 4 * C, Cp); break;
    }
}

static void FN(build_wT)(mg_model *M) {
    const int jobs = 1 + MG_NUM_PER_LAYER * M->cfg.n_layer;
    if (MG_USE_THREADS(M->num_params * 4, jobs)) {
        MG_PAR_FOR(schedule(dynamic, 1),
        for (int j = 0; j < jobs; j++) FN(build_wT_one)(M, j););
        return;
    }
    for (int j = 0; j < jobs; j++) FN(build_wT_one)(M, j);
}

/* Attention of documents d0 .. d1-1 of the batch, each over its own rows. */
static void FN(attention_docs_forward)(const mg_model *M, const mg_batch *B,
                                       const FN(layer_acts_t) *a, int d0, int d1) {
    const int C = M->cfg.n_embd, NH = M->cfg.n_head, T = M->cfg.block_size;
    for (int d = d0; d < d1; d++) {
        const size_t off = B->doc_offsets[d];
        FN(attention_forward)(a->atty + off * C, a->att + off * NH * T, a->q + off * C,
                              a->k + off * C, a->v + off * C, B->doc_lens[d], 0, C, NH, T);
    }
}

static void FN(attention_docs_backward)(const mg_model *M, const mg_batch *B,
                                        const FN(layer_acts_t) *da, const FN(layer_acts_t) *a,
                                        int d0, int d1) {
    const int C = M->cfg.n_embd, NH = M->cfg.n_head, T = M->cfg.block_size;
    for (int d = d0; d < d1; d++) {
        const size_t off = B->doc_offsets[d];
        FN(attention_backward)(da->q + off * C, da->k + off * C, da->v + off * C,
                               da->att + off * NH * T, da->atty + off * C, a->att + off * NH * T,
                               a->q + off * C, a->k + off * C, a->v + off * C, B->doc_lens[d],
                               C, NH, T);
    }
}

/* Every per-token activation row is computed by the same operations whatever
 * rows a kernel call covers (matmul outputs are sequential sums per element,
 * norms and softmaxes per row, attention per document), so running the batch
 * in pieces of documents gives exactly the values of one whole-batch call. */

/* out (n, OC) = inp (n, C) @ weight^T by matmul variant mm (wT: the weight's
 * transposed copy, used by MG_MM_WT only). */
static void FN(linear_forward)(REAL *out, const REAL *inp, const REAL *weight, const REAL *wT,
                               int n, int C, int OC, int mm) {
    switch (mm) {
    case MG_MM_WT: FN(matmul_forward_T)(out, inp, wT, n, C, OC, FN(padT)(OC)); break;
    case MG_MM_GEMM: FN(matmul_forward_gemm)(out, inp, weight, n, C, OC); break;
    default: FN(matmul_forward)(out, inp, weight, n, C, OC); break;
    }
}

/* dinp (n, C) += dout (n, OC) @ weight by matmul variant mm */
static void FN(linear_backward_dinp)(REAL *dinp, const REAL *dout, const REAL *weight, int n,
                                     int C, int OC, int mm) {
    if (mm == MG_MM_GEMM) FN(matmul_backward_dinp_gemm)(dinp, dout, weight, n, C, OC);
    else FN(matmul_backward_dinp_all)(dinp, dout, weight, n, C, OC);
}

/* The transformer blocks on the n token rows r0 .. r0+n-1 (documents
 * d0 .. d1-1) whose layer input is x (the whole (N, C) buffer).
 * Training (kc == NULL): attention per document with p0 = 0.
 * Inference (kc != NULL, n == 1, r0 == 0): k, v are appended to the cache
 * at `pos` and the query attends the cache.  mm: the matmul variant.
 * Returns the final block output (the whole buffer). */
static REAL *FN(blocks_forward)(mg_model *M, const mg_batch *B, REAL *x, size_t r0, int n, int d0,
                                int d1, int pos, REAL *kc, REAL *vc, int mm) {
    const int C = M->cfg.n_embd, NH = M->cfg.n_head, T = M->cfg.block_size;
    const size_t rC = r0 * (size_t)C, r4C = 4 * rC;
    for (int l = 0; l < M->cfg.n_layer; l++) {
        FN(layer_params_t) w = FN(layer_params)(M, (REAL *)M->params, l);
        FN(layer_acts_t) a = FN(layer_acts)(M, (REAL *)M->acts, l);
        FN(rmsnorm_forward)(a.ln1 + rC, a.ln1s + r0, x + rC, n, C);
        FN(linear_forward)(a.q + rC, a.ln1 + rC, w.wq, FN(wT_layer)(M, l, MG_WQ), n, C, C, mm);
        FN(linear_forward)(a.k + rC, a.ln1 + rC, w.wk, FN(wT_layer)(M, l, MG_WK), n, C, C, mm);
        FN(linear_forward)(a.v + rC, a.ln1 + rC, w.wv, FN(wT_layer)(M, l, MG_WV), n, C, C, mm);
        if (kc != NULL) {
            REAL *kl = kc + (size_t)l * T * C, *vl = vc + (size_t)l * T * C;
            memcpy(kl + (size_t)pos * C, a.k, (size_t)C * sizeof(REAL));
            memcpy(vl + (size_t)pos * C, a.v, (size_t)C * sizeof(REAL));
            FN(attention_forward)(a.atty, a.att, a.q, kl, vl, 1, pos, C, NH, T);
        } else {
            /* documents are independent: one thread per document when the
             * batch is large and no team is running (each writes only its
             * own rows) */
            if (MG_USE_THREADS((size_t)n * T * C, d1 - d0)) {
                MG_PAR_FOR(schedule(dynamic, 1),
                for (int d = d0; d < d1; d++) FN(attention_docs_forward)(M, B, &a, d, d + 1););
            } else {
                FN(attention_docs_forward)(M, B, &a, d0, d1);
            }
        }
        FN(linear_forward)(a.attproj + rC, a.atty + rC, w.wo, FN(wT_layer)(M, l, MG_WO), n, C, C, mm);
        FN(residual_forward)(a.res2 + rC, a.attproj + rC, x + rC, (size_t)n * C);
        FN(rmsnorm_forward)(a.ln2 + rC, a.ln2s + r0, a.res2 + rC, n, C);
        FN(linear_forward)(a.fch + r4C, a.ln2 + rC, w.fc1, FN(wT_layer)(M, l, MG_FC1), n, C, 4 * C,
                           mm);
        FN(relu_forward)(a.fchr + r4C, a.fch + r4C, (size_t)n * 4 * C);
        FN(linear_forward)(a.fcproj + rC, a.fchr + r4C, w.fc2, FN(wT_layer)(M, l, MG_FC2), n, 4 * C,
                           C, mm);
        FN(residual_forward)(a.res3 + rC, a.fcproj + rC, a.res2 + rC, (size_t)n * C);
        x = a.res3;
    }
    return x;
}

/* Embedding and first RMSNorm of rows r0 .. r0+n-1 of the saved batch;
 * returns x0 (the whole buffer). */
static REAL *FN(embed_forward)(mg_model *M, const mg_batch *B, size_t r0, int n) {
    const mg_act_layout *A = &M->acts_layout;
    const size_t rC = r0 * (size_t)M->cfg.n_embd;
    REAL *acts = (REAL *)M->acts;
    FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
    FN(encoder_forward)(acts + A->emb + rC, B->inputs + r0, B->positions + r0, g.wte, g.wpe, n,
                        M->cfg.n_embd);
    FN(rmsnorm_forward)(acts + A->x0 + rC, acts + A->x0s + r0, acts + A->emb + rC, n,
                        M->cfg.n_embd);
    return acts + A->x0;
}

/* Forward of documents d0 .. d1-1: their activation rows, per-token losses,
 * the loss weights (dlosses) and each document's mean token loss in
 * doc_loss[d]. */
static void FN(forward_docs)(mg_model *M, mg_batch *B, int d0, int d1, int mm) {
    const int C = M->cfg.n_embd, V = M->cfg.vocab_size;
    const mg_act_layout *A = &M->acts_layout;
    const size_t r0 = B->doc_offsets[d0];
    const int n = (int)(B->doc_offsets[d1] - r0);
    REAL *acts = (REAL *)M->acts;
    FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
    REAL *x = FN(embed_forward)(M, B, r0, n);
    x = FN(blocks_forward)(M, B, x, r0, n, d0, d1, 0, NULL, NULL, mm);
    REAL *losses = acts + A->losses, *dlosses = acts + A->dlosses;
    REAL *logits = acts + A->logits + r0 * V;
    FN(linear_forward)(logits, x + r0 * C, g.lm_head, FN(wT_lm)(M), n, C, V, mm);
    FN(crossentropy_softmax_forward)(losses + r0, acts + A->probs + r0 * V, logits,
                                     B->targets + r0, n, V);
    /* mean over each document's positions (the mean over documents is
     * taken by the caller, in document order) */
    const REAL inv_docs = (REAL)1 / (REAL)B->total_docs;
    for (int d = d0; d < d1; d++) {
        const int nd = B->doc_lens[d];
        const size_t off = B->doc_offsets[d];
        const REAL inv_n = (REAL)1 / (REAL)nd;
        REAL s = 0;
        for (int t = 0; t < nd; t++) s += losses[off + t];
        B->doc_loss[d] = (double)(s * inv_n);  /* exact: a REAL in a double */
        for (int t = 0; t < nd; t++) dlosses[off + t] = inv_n * inv_docs;
    }
}

/* The batch loss from doc_loss, summed in document order. */
static REAL FN(batch_loss)(const mg_batch *B) {
    const REAL inv_docs = (REAL)1 / (REAL)B->total_docs;
    REAL batch = 0;
    for (int d = 0; d < B->n_docs; d++) batch += (REAL)B->doc_loss[d];
    return batch * inv_docs;
}

/* Weight-gradient job j of the saved backward (j = 0: lm_head; 1 + 6l + k:
 * layer l's k-th tensor): dweight (OC, C) = dout (N, OC)^T @ inp (N, C). */
typedef struct { const REAL *dout, *inp; REAL *weight, *dweight; int C, OC; } FN(wjob_t);

static FN(wjob_t) FN(weight_job)(const mg_model *M, int j) {
    const int C = M->cfg.n_embd, V = M->cfg.vocab_size, L = M->cfg.n_layer;
    const mg_act_layout *A = &M->acts_layout;
    REAL *acts = (REAL *)M->acts, *dacts = (REAL *)M->dacts;
    FN(wjob_t) J;
    if (j == 0) {
        FN(globals_t) g = FN(globals)(M, (REAL *)M->params), dg = FN(globals)(M, (REAL *)M->grads);
        J.dout = dacts + A->logits;
        J.inp = L > 0 ? FN(layer_acts)(M, acts, L - 1).res3 : acts + A->x0;
        J.weight = g.lm_head; J.dweight = dg.lm_head; J.C = C; J.OC = V;
        return J;
    }
    const int l = (j - 1) / MG_NUM_PER_LAYER, k = (j - 1) % MG_NUM_PER_LAYER;
    FN(layer_params_t) w = FN(layer_params)(M, (REAL *)M->params, l);
    FN(layer_params_t) dw = FN(layer_params)(M, (REAL *)M->grads, l);
    FN(layer_acts_t) a = FN(layer_acts)(M, acts, l), da = FN(layer_acts)(M, dacts, l);
    J.C = C; J.OC = C;
    switch (k) {
    case MG_WQ: J.dout = da.q; J.inp = a.ln1; J.weight = w.wq; J.dweight = dw.wq; break;
    case MG_WK: J.dout = da.k; J.inp = a.ln1; J.weight = w.wk; J.dweight = dw.wk; break;
    case MG_WV: J.dout = da.v; J.inp = a.ln1; J.weight = w.wv; J.dweight = dw.wv; break;
    case MG_WO: J.dout = da.attproj; J.inp = a.atty; J.weight = w.wo; J.dweight = dw.wo; break;
    case MG_FC1: J.dout = da.fch; J.inp = a.ln2; J.weight = w.fc1; J.dweight = dw.fc1;
                 J.OC = 4 * C; break;
    default: J.dout = da.fcproj; J.inp = a.fchr; J.weight = w.fc2; J.dweight = dw.fc2;
             J.C = 4 * C; break;
    }
    return J;
}

/* Backward of documents d0 .. d1-1 down to the activation gradients of their
 * rows (dacts, zeroed first); no weight gradient (see weight_task).  With
 * maxabs != NULL, the largest |value| of each weight job's dout and inp over
 * these rows goes to maxabs[2j], maxabs[2j + 1], and of d(emb) to
 * maxabs[2 jobs] (+inf where a value is not finite).  mm: the matmul variant. */
static void FN(backward_docs)(mg_model *M, const mg_batch *B, int d0, int d1, double *maxabs,
                              int mm) {
    const int C = M->cfg.n_embd, V = M->cfg.vocab_size, L = M->cfg.n_layer;
    const mg_act_layout *A = &M->acts_layout;
    const size_t r0 = B->doc_offsets[d0];
    const int n = (int)(B->doc_offsets[d1] - r0);
    const size_t rC = r0 * (size_t)C, r4C = 4 * rC, nC = (size_t)n * C;
    REAL *acts = (REAL *)M->acts, *dacts = (REAL *)M->dacts;
    FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
    /* zero these rows of every activation gradient that is accumulated */
    FN(zero)(dacts + A->emb + rC, nC);
    FN(zero)(dacts + A->x0 + rC, nC);
    FN(zero)(dacts + A->logits + r0 * V, (size_t)n * V);
    for (int l = 0; l < L; l++) {
        FN(layer_acts_t) da = FN(layer_acts)(M, dacts, l);
        REAL *nc[] = {da.ln1, da.q, da.k, da.v, da.atty, da.attproj, da.res2, da.ln2,
                      da.fcproj, da.res3};
        for (size_t j = 0; j < sizeof nc / sizeof nc[0]; j++) FN(zero)(nc[j] + rC, nC);
        FN(zero)(da.fch + r4C, 4 * nC);
        FN(zero)(da.fchr + r4C, 4 * nC);
    }

    /* input of lm_head: output of the last block, or x0 when L == 0 */
    REAL *dx = L > 0 ? FN(layer_acts)(M, dacts, L - 1).res3 : dacts + A->x0;
    FN(crossentropy_softmax_backward)(dacts + A->logits + r0 * V, acts + A->dlosses + r0,
                                      acts + A->probs + r0 * V, B->targets + r0, n, V);
    FN(linear_backward_dinp)(dx + rC, dacts + A->logits + r0 * V, g.lm_head, n, C, V, mm);

    for (int l = L - 1; l >= 0; l--) {
        FN(layer_params_t) w = FN(layer_params)(M, (REAL *)M->params, l);
        FN(layer_acts_t) a = FN(layer_acts)(M, acts, l);
        FN(layer_acts_t) da = FN(layer_acts)(M, dacts, l);
        REAL *xin = l > 0 ? FN(layer_acts)(M, acts, l - 1).res3 : acts + A->x0;
        REAL *dxin = l > 0 ? FN(layer_acts)(M, dacts, l - 1).res3 : dacts + A->x0;

        FN(residual_backward)(da.fcproj + rC, da.res2 + rC, da.res3 + rC, nC);
        FN(linear_backward_dinp)(da.fchr + r4C, da.fcproj + rC, w.fc2, n, 4 * C, C, mm);
        FN(relu_backward)(da.fch + r4C, da.fchr + r4C, a.fch + r4C, 4 * nC);
        FN(linear_backward_dinp)(da.ln2 + rC, da.fch + r4C, w.fc1, n, C, 4 * C, mm);
        FN(rmsnorm_backward)(da.res2 + rC, da.ln2 + rC, a.res2 + rC, a.ln2s + r0, n, C);
        FN(residual_backward)(da.attproj + rC, dxin + rC, da.res2 + rC, nC);
        FN(linear_backward_dinp)(da.atty + rC, da.attproj + rC, w.wo, n, C, C, mm);
        if (MG_USE_THREADS((size_t)n * M->cfg.block_size * C, d1 - d0)) {
            MG_PAR_FOR(schedule(dynamic, 1),
            for (int d = d0; d < d1; d++) FN(attention_docs_backward)(M, B, &da, &a, d, d + 1););
        } else {
            FN(attention_docs_backward)(M, B, &da, &a, d0, d1);
        }
        FN(linear_backward_dinp)(da.ln1 + rC, da.q + rC, w.wq, n, C, C, mm);
        FN(linear_backward_dinp)(da.ln1 + rC, da.k + rC, w.wk, n, C, C, mm);
        FN(linear_backward_dinp)(da.ln1 + rC, da.v + rC, w.wv, n, C, C, mm);
        FN(rmsnorm_backward)(dxin + rC, da.ln1 + rC, xin + rC, a.ln1s + r0, n, C);
    }
    FN(rmsnorm_backward)(dacts + A->emb + rC, dacts + A->x0 + rC, acts + A->emb + rC,
                         acts + A->x0s + r0, n, C);
    if (maxabs == NULL) return;
    const int jobs = 1 + MG_NUM_PER_LAYER * L;
    for (int j = 0; j < jobs; j++) {
        const FN(wjob_t) J = FN(weight_job)(M, j);
        if (!FN(finite_maxabs)(J.dout + r0 * J.OC, (size_t)n * J.OC, &maxabs[2 * j]))
            maxabs[2 * j] = INFINITY;
        if (!FN(finite_maxabs)(J.inp + r0 * J.C, (size_t)n * J.C, &maxabs[2 * j + 1]))
            maxabs[2 * j + 1] = INFINITY;
    }
    if (!FN(finite_maxabs)(dacts + A->emb + rC, nC, &maxabs[2 * jobs]))
        maxabs[2 * jobs] = INFINITY;
}

/* Whether every weight gradient of the whole batch is certainly finite, from
 * the pieces' maxima (finite inputs with N max|dout| max|inp| far below the
 * overflow threshold; a wte/wpe gradient is a sum of at most N rows of
 * d(emb)).  The same answer in every thread: maxima are exact. */
static int FN(grads_safe)(const mg_model *M, const mg_batch *B, const double *maxabs, int K) {
    const int jobs = 1 + MG_NUM_PER_LAYER * M->cfg.n_layer, stride = 2 * jobs + 1;
    const double big = sizeof(REAL) == 4 ? 3.4e38 : 1.7e308, N = (double)B->n_tokens;
    for (int j = 0; j <= jobs; j++) {
        double md = 0, mx = 0;
        for (int c = 0; c < K; c++) {
            const double *m = maxabs + (size_t)c * stride;
            md = m[2 * j] > md ? m[2 * j] : md;
            if (j < jobs) mx = m[2 * j + 1] > mx ? m[2 * j + 1] : mx;
        }
        if (j < jobs ? !(N * md * mx * 4 <= big) : !(N * md * 4 <= big)) return 0;
    }
    return 1;
}

#ifndef MG_TASK_WORK
#define MG_TASK_WORK 4096   /* weight-gradient elements (rows x C) per task */
#endif

/* Rows o0 .. o1-1 of weight job j's tensor into wT (the same values
 * build_wT_one gives them). */
static void FN(transpose_rows)(mg_model *M, int j, int o0, int o1) {
    const int C = M->cfg.n_embd, V = M->cfg.vocab_size;
    if (j == 0) {
        FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
        FN(transpose_weight)(FN(wT_lm)(M) + o0, g.lm_head + (size_t)o0 * C, o1 - o0, C, FN(padT)(V));
        return;
    }
    const int l = (j - 1) / MG_NUM_PER_LAYER, which = (j - 1) % MG_NUM_PER_LAYER;
    FN(layer_params_t) w = FN(layer_params)(M, (REAL *)M->params, l);
    REAL *dst = FN(wT_layer)(M, l, which) + o0;
    const int Cp = FN(padT)(C), C4p = FN(padT)(4 * C);
    switch (which) {
    case MG_WQ: FN(transpose_weight)(dst, w.wq + (size_t)o0 * C, o1 - o0, C, Cp); break;
    case MG_WK: FN(transpose_weight)(dst, w.wk + (size_t)o0 * C, o1 - o0, C, Cp); break;
    case MG_WV: FN(transpose_weight)(dst, w.wv + (size_t)o0 * C, o1 - o0, C, Cp); break;
    case MG_WO: FN(transpose_weight)(dst, w.wo + (size_t)o0 * C, o1 - o0, C, Cp); break;
    case MG_FC1: FN(transpose_weight)(dst, w.fc1 + (size_t)o0 * C, o1 - o0, C, C4p); break;
    default: FN(transpose_weight)(dst, w.fc2 + (size_t)o0 * 4 * C, o1 - o0, 4 * C, Cp); break;
    }
}

/* The weight-gradient phase as tasks: wte/wpe (encoder backward), then
 * every weight job in pieces of output rows of about the same work.  Each
 * gradient element belongs to exactly one task and is summed over the
 * batch's tokens in order, so the values never depend on which thread runs
 * which task.  Threads take fixed contiguous shares of the task list by
 * work (the same rows every step: the weights, moments and transposed rows
 * a thread updates stay in its cache). */
static int FN(rows_per_task)(int C) {
    const int r = (MG_TASK_WORK / C + 3) / 4 * 4;
    return r < 4 ? 4 : r;
}

/* Rows o0 .. o1-1 of weight job J: accumulate their gradients into grads
 * (A == NULL), or apply them by Adam at once (A != NULL). */
static void FN(weight_rows)(mg_model *M, const mg_batch *B, int j, const FN(wjob_t) *J, int o0,
                            int o1, const FN(adam_ctx_t) *A, int transpose) {
    const int N = B->n_tokens;
    if (A == NULL) {
        FN(matmul_backward_dweight)(J->dweight, J->dout, J->inp, N, J->C, J->OC, o0, o1, J->weight,
                                    NULL);
        return;
    }
    const size_t off = (size_t)(J->weight - (REAL *)M->params);
    FN(adam_ctx_t) Aw = *A;
    Aw.m = (REAL *)M->m_adam + off;
    Aw.v = (REAL *)M->v_adam + off;
    FN(matmul_backward_dweight)(NULL, J->dout, J->inp, N, J->C, J->OC, o0, o1, J->weight, &Aw);
    /* the updated rows into the transposed copy (columns o0 .. o1-1) for
     * the next step's forward */
    if (transpose) FN(transpose_rows)(M, j, o0, o1);
}

/* The gemm variant's block of weight job J: rows o0 .. o1-1, columns c0 ..
 * c1-1, accumulated into grads (A == NULL) or applied by Adam at once. */
static void FN(weight_block)(mg_model *M, const mg_batch *B, const FN(wjob_t) *J, int o0, int o1,
                             int c0, int c1, const FN(adam_ctx_t) *A) {
    const int N = B->n_tokens;
    if (A == NULL) {
        FN(matmul_backward_dweight_gemm)(J->dweight, J->dout, J->inp, N, J->C, J->OC, o0, o1, c0,
                                         c1, J->weight, NULL);
        return;
    }
    const size_t off = (size_t)(J->weight - (REAL *)M->params);
    FN(adam_ctx_t) Aw = *A;
    Aw.m = (REAL *)M->m_adam + off;
    Aw.v = (REAL *)M->v_adam + off;
    FN(matmul_backward_dweight_gemm)(NULL, J->dout, J->inp, N, J->C, J->OC, o0, o1, c0, c1,
                                     J->weight, &Aw);
}

/* wte/wpe: the encoder backward (serial: tokens share rows), then Adam. */
static void FN(embedding_task)(mg_model *M, const mg_batch *B, const FN(adam_ctx_t) *A) {
    const int N = B->n_tokens, C = M->cfg.n_embd, T = M->cfg.block_size;
    const mg_act_layout *AL = &M->acts_layout;
    FN(globals_t) dg = FN(globals)(M, (REAL *)M->grads);
    FN(encoder_backward)(dg.wte, dg.wpe, (REAL *)M->dacts + AL->emb, B->inputs, B->positions, N, C);
    if (A != NULL) {
        const size_t e0 = M->param_offset[MG_WTE], e1 = M->param_offset[MG_WPE] + (size_t)T * C;
        FN(adam_impl)((REAL *)M->params + e0, (REAL *)M->m_adam + e0, (REAL *)M->v_adam + e0,
                      (REAL *)M->grads + e0, (REAL *)M->grads + e0, e1 - e0, A);
    }
}

/* The share of thread `me` of `nt`: a task of cost `cost` starting at
 * `acc` (of `total`) belongs to the thread whose share holds its middle. */
static int FN(owner)(size_t acc, size_t cost, size_t total, int nt) {
    const size_t o = (2 * acc + cost) * (size_t)nt / (2 * total);
    return o < (size_t)nt ? (int)o : nt - 1;
}

/* Every weight-gradient task of thread me's share. */
static void FN(weight_tasks)(mg_model *M, const mg_batch *B, const FN(adam_ctx_t) *A, int transpose,
                             int mm, int me, int nt) {
    const int jobs = 1 + MG_NUM_PER_LAYER * M->cfg.n_layer;
    const size_t N = (size_t)B->n_tokens, C = (size_t)M->cfg.n_embd;
    /* costs in multiply-adds per token: rows x inputs; the embedding's sums
     * and its Adam update */
    const size_t emb = 2 * C + 8 * (size_t)(M->cfg.vocab_size + M->cfg.block_size) * C / N;
    size_t total = emb, acc = 0;
    for (int j = 0; j < jobs; j++) {
        const FN(wjob_t) J = FN(weight_job)(M, j);
        total += (size_t)J.OC * (size_t)J.C;
    }
    if (FN(owner)(0, emb, total, nt) == me) FN(embedding_task)(M, B, A);
    acc = emb;
    for (int j = 0; j < jobs; j++) {
        const FN(wjob_t) J = FN(weight_job)(M, j);
        if (mm == MG_MM_GEMM) {   /* blocks of rows x columns (see weight_block) */
            for (int c0 = 0; c0 < J.C; c0 += MG_GEMM_TASK_COLS)
                for (int o0 = 0; o0 < J.OC; o0 += MG_GEMM_TASK_ROWS) {
                    const int c1 = c0 + MG_GEMM_TASK_COLS < J.C ? c0 + MG_GEMM_TASK_COLS : J.C;
                    const int o1 = o0 + MG_GEMM_TASK_ROWS < J.OC ? o0 + MG_GEMM_TASK_ROWS : J.OC;
                    const size_t cost = (size_t)(o1 - o0) * (size_t)(c1 - c0);
                    if (FN(owner)(acc, cost, total, nt) == me)
                        FN(weight_block)(M, B, &J, o0, o1, c0, c1, A);
                    acc += cost;
                }
            continue;
        }
        const int r = FN(rows_per_task)(J.C);
        for (int o0 = 0; o0 < J.OC; o0 += r) {
            const int o1 = o0 + r < J.OC ? o0 + r : J.OC;
            const size_t cost = (size_t)(o1 - o0) * (size_t)J.C;
            if (FN(owner)(acc, cost, total, nt) == me) FN(weight_rows)(M, B, j, &J, o0, o1, A, transpose);
            acc += cost;
        }
    }
}

/* Split the batch's documents into K contiguous pieces of about equal token
 * counts; K depends only on the batch (never on the thread count). */
static int FN(doc_pieces)(const mg_batch *B, int *bounds) {
    const int nd = B->n_docs;
    const int K = nd < MG_MAX_PIECES ? nd : MG_MAX_PIECES;
    const size_t N = (size_t)B->n_tokens;
    bounds[0] = 0;
    for (int c = 1; c < K; c++) {
        const size_t target = N * (size_t)c / (size_t)K;
        int d = bounds[c - 1] + 1;
        while (d < nd - (K - c) && B->doc_offsets[d] < target) d++;
        bounds[c] = d;
    }
    bounds[K] = nd;
    return K;
}

/* A batched step goes to the team only above this many multiply-adds
 * (about 12 C^2 L + V C per token): below, the two or three
 * synchronisations per step (tens of microseconds with sleeping threads)
 * cost more than the second thread saves (measured, f32, passive: 32/32/1
 * B=32, 2.9M, 363 us on 1 thread, 383 on 2), and the step runs serially. */
#ifndef MG_TEAM_MIN_WORK
#define MG_TEAM_MIN_WORK 4000000
#endif

/* The training forward and/or backward of batch B.
 *
 * With a team of threads and enough work, in ONE parallel region: the
 * transposed weights (jobs across threads), then the documents in K fixed
 * pieces (forward, loss weights and activation-gradient backward of a piece
 * by one thread, the kernels serial inside it), then the weight gradients as
 * fixed tasks (each gradient element written by one task, summed over the
 * tokens in order; fused with Adam when adam != NULL).  Otherwise the same
 * computations on the whole batch at once, the kernels free to use threads
 * themselves.  Both give the same bits (see above), whatever the thread
 * count.
 *
 * Returns MG_OK; MG_ERR_NONFINITE if the forward's loss is not finite (then
 * no backward); MG_NOT_FUSED with adam != NULL if the gradients could not be
 * guaranteed finite (then they were accumulated into grads, nothing updated:
 * the caller runs the checked adam_step). */
static int FN(run_batch_env)(mg_model *M, mg_batch *B, int what, const mg_adam_args *adam,
                             double *loss) {
    int bounds[MG_MAX_PIECES + 1];
    const int N = B->n_tokens, C = M->cfg.n_embd, L = M->cfg.n_layer;
    const int mm = FN(matmul_variant)(N, C), use_T = mm == MG_MM_WT;
    const int fwd = (what & MG_RUN_FORWARD) != 0, bwd = (what & MG_RUN_BACKWARD) != 0;
    FN(adam_ctx_t) Actx;
    const FN(adam_ctx_t) *A = NULL;
    if (adam != NULL) {
        Actx = FN(adam_ctx)(adam->lr_t, adam->beta1, adam->beta2, adam->eps, adam->t);
        A = &Actx;
    }
    /* work of a step: about 12 C^2 + V C multiply-adds per token and layer */
    const size_t work = (size_t)N * (size_t)C * (12 * (size_t)C * (size_t)(L > 0 ? L : 1) +
                                                 (size_t)M->cfg.vocab_size);
    const int par = B->n_docs > 1 && work >= MG_TEAM_MIN_WORK && MG_USE_THREADS(work, 2);
    const int K = par ? FN(doc_pieces)(B, bounds) : 1;
    const int jobs = 1 + MG_NUM_PER_LAYER * L, stride = 2 * jobs + 1;
    (void)stride; (void)K;  /* unused without OpenMP */
    int status = MG_OK;
    /* wT: rebuilt unless the previous fused step of this mg_train_steps call
     * left it up to date; a fused step that uses it keeps it up to date */
    const int build = fwd && use_T && !M->wT_valid;
    const int retranspose = bwd && A != NULL && use_T;
    M->wT_valid = 0;
    if (!par) {
        /* the same steps, serial; a batch too small for the team is too
         * small for per-kernel regions too (measured: slower than one
         * thread), a single document keeps the kernels' own threading */
#ifdef _OPENMP
        const int was_serial = mg_serial;
        if (B->n_docs > 1) mg_serial = 1;
#endif
        if (build) FN(build_wT)(M);
        if (fwd) FN(forward_docs)(M, B, 0, B->n_docs, mm);
        if (bwd) FN(backward_docs)(M, B, 0, B->n_docs, A != NULL ? M->piece_max : NULL, mm);
        const int ok = !fwd || isfinite(FN(batch_loss)(B));
        const int safe = A == NULL || FN(grads_safe)(M, B, M->piece_max, 1);
        if (bwd && ok) FN(weight_tasks)(M, B, safe ? A : NULL, retranspose, mm, 0, 1);
        if (!ok) status = MG_ERR_NONFINITE;
        else if (bwd && !safe) status = MG_NOT_FUSED;
#ifdef _OPENMP
        mg_serial = was_serial;
#endif
    } else {
        const mg_fp_state_t fp_caller = mg_fp_get();
        MG_PRAGMA(omp parallel num_threads(mg_team_size()))
        {
            const mg_fp_state_t fp_own = mg_fp_enter_state(fp_caller);
            if (build) {
                MG_PRAGMA(omp for schedule(dynamic, 1))
                for (int j = 0; j < jobs; j++) FN(build_wT_one)(M, j);
            }
            const int me = mg_thread_num(), nt = mg_num_threads();
            /* fixed contiguous shares of the pieces by tokens (the same rows
             * on the same thread every step) */
            for (int c = 0; c < K; c++) {
                const size_t t0 = B->doc_offsets[bounds[c]], t1 = B->doc_offsets[bounds[c + 1]];
                if (FN(owner)(t0, t1 - t0, (size_t)N, nt) != me) continue;
                if (fwd) FN(forward_docs)(M, B, bounds[c], bounds[c + 1], mm);
                if (bwd) FN(backward_docs)(M, B, bounds[c], bounds[c + 1],
                                           A != NULL ? M->piece_max + (size_t)c * stride : NULL, mm);
            }
            MG_PRAGMA(omp barrier)
            /* (after the barrier above every piece is done; each thread
             * takes the same decisions) */
            const int ok = !fwd || isfinite(FN(batch_loss)(B));
            const int safe = A == NULL || FN(grads_safe)(M, B, M->piece_max, K);
            if (bwd && ok) FN(weight_tasks)(M, B, safe ? A : NULL, retranspose, mm, me, nt);
            MG_PRAGMA(omp master)
            { if (!ok) status = MG_ERR_NONFINITE; else if (bwd && !safe) status = MG_NOT_FUSED; }
            mg_fp_set(fp_own);
        }
    }
    if (status == MG_OK && retranspose) M->wT_valid = 1;
    if (fwd) {
        const REAL result = FN(batch_loss)(B);
        *loss = (double)result;
        M->have_forward = isfinite(result) ? 1 : 0;
    }
    return status;
}

/* The checked Adam step: never a NaN/inf update (the parameters stay as
 * they were, the gradients are zeroed, MG_ERR_NONFINITE); settings that are
 * not finite or t < 1: MG_ERR_ARG (nothing changed); else the update and
 * the gradients zeroed. */
static int FN(adam_step_env)(mg_model *M, const mg_adam_args *a) {
    M->wT_valid = 0;
    if (!FN(all_finite)((const REAL *)M->grads, M->num_params)) {
        FN(zero)((REAL *)M->grads, M->num_params);
        return MG_ERR_NONFINITE;
    }
    if (a->t < 1 || !isfinite(a->lr_t) || !isfinite(a->beta1) || !isfinite(a->beta2) ||
        !isfinite(a->eps))
        return MG_ERR_ARG;
    FN(adam_update_zero_grad)((REAL *)M->params, (REAL *)M->m_adam, (REAL *)M->v_adam,
                              (REAL *)M->grads, M->num_params, a->lr_t, a->beta1, a->beta2,
                              a->eps, a->t);
    return MG_OK;
}

/* One token of inference; use_T: with the transposed weights (which must be
 * current: infer_prepare), the lanes over output channels are all busy for
 * a single token; the same sums either way.  Uses the model's batch buffers
 * for the token (invalidating a saved training forward). */
static int FN(infer_logits_env)(mg_model *M, int token, int pos, double *logits, int use_T) {
    const int C = M->cfg.n_embd, V = M->cfg.vocab_size;
    const mg_act_layout *A = &M->acts_layout;
    mg_batch *B = &M->batch;
    REAL *acts = (REAL *)M->acts;
    FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
    M->have_forward = 0;
    B->inputs[0] = token;
    B->positions[0] = pos;
    REAL *x = FN(embed_forward)(M, B, 0, 1);
    x = FN(blocks_forward)(M, B, x, 0, 1, 0, 0, pos, (REAL *)M->kcache, (REAL *)M->vcache,
                           use_T ? MG_MM_WT : MG_MM_TOKEN_LANES);
    REAL *z = acts + A->logits;
    if (use_T) FN(matmul_forward_T)(z, x, FN(wT_lm)(M), 1, C, V, FN(padT)(V));
    else FN(matmul_forward)(z, x, g.lm_head, 1, C, V);
    for (int i = 0; i < V; i++) logits[i] = (double)z[i];
    return MG_OK;
}

/* Build the transposed weights for a run of infer_logits(use_T) calls (the
 * parameters must not change in between). */
static void FN(infer_prepare_env)(mg_model *M) { FN(build_wT)(M); }

/* mg_train_steps with one team for the whole call (a batched run with
 * enough work): the same steps as run_batch's region, but the threads stay
 * in the team between steps and a step has two synchronisations, not three
 * (no fork per step): after the pieces, and at the end of the step, by
 * which the master has also assembled the next step's batch into the other
 * of two batches, so nobody waits for it.  Same values as the step-by-step
 * loop (train.c), which this mirrors: the first step of a call accumulates
 * the gradients and takes the checked Adam step, the others fuse. */
static int FN(train_steps_team_env)(mg_model *M, const mg_train_data *D, const mg_schedule *S,
                                    long step0, long n_steps, int batch, double *losses,
                                    double *lrs, long *steps_done) {
    const int T = M->cfg.block_size, C = M->cfg.n_embd, L = M->cfg.n_layer;
    /* tokens per step, estimated from the corpus's mean document */
    const int64_t mean = (D->doc_starts[D->n_docs] - D->n_docs) / D->n_docs;
    const size_t N_est = (size_t)batch * (size_t)(mean < T ? (mean > 1 ? mean : 1) : T);
    const size_t work = N_est * (size_t)C * (12 * (size_t)C * (size_t)(L > 0 ? L : 1) +
                                             (size_t)M->cfg.vocab_size);
    if (batch < 2 || n_steps < 1 || work < MG_TEAM_MIN_WORK || !MG_USE_THREADS(work, 2))
        return MG_NO_TEAM;
    mg_batch spare;
    if (mg_batch_alloc(&spare, M->max_tokens) != MG_OK) return MG_ERR_NOMEM;
    mg_batch *bat[2] = {&M->batch, &spare};
    int bounds[2][MG_MAX_PIECES + 1], K[2];
    const int jobs = 1 + MG_NUM_PER_LAYER * L, stride = 2 * jobs + 1;
    int status = MG_OK, wT_valid = 0, last = 0, loss_bad = 0;
    long done = 0;
    mg_batch_assemble(bat[0], T, D, step0, batch, 0, batch);
    K[0] = FN(doc_pieces)(bat[0], bounds[0]);
    M->wT_valid = 0;
    const mg_fp_state_t fp_caller = mg_fp_get();
    MG_PRAGMA(omp parallel num_threads(mg_team_size()))
    {
        const mg_fp_state_t fp_own = mg_fp_enter_state(fp_caller);
        const int me = mg_thread_num(), nt = mg_num_threads();
        for (long i = 0; i < n_steps; i++) {
            mg_batch *B = bat[i & 1];
            const int *bd = bounds[i & 1], k = K[i & 1];
            const long s = step0 + i;
            const mg_adam_args args = {mg_schedule_lr(S, s), S->beta1, S->beta2, S->eps, s + 1};
            const int fused = i > 0 && isfinite(args.lr_t) && isfinite(args.beta1) &&
                              isfinite(args.beta2) && isfinite(args.eps);
            const FN(adam_ctx_t) A = FN(adam_ctx)(args.lr_t, args.beta1, args.beta2, args.eps,
                                                  args.t);
            const int mm = FN(matmul_variant)(B->n_tokens, C), use_T = mm == MG_MM_WT;
            if (use_T && !wT_valid) {
                MG_PRAGMA(omp for schedule(static))
                for (int j = 0; j < jobs; j++) FN(build_wT_one)(M, j);
            }
            const size_t N = (size_t)B->n_tokens;
            for (int c = 0; c < k; c++) {
                const size_t t0 = B->doc_offsets[bd[c]], t1 = B->doc_offsets[bd[c + 1]];
                if (FN(owner)(t0, t1 - t0, N, nt) != me) continue;
                FN(forward_docs)(M, B, bd[c], bd[c + 1], mm);
                FN(backward_docs)(M, B, bd[c], bd[c + 1],
                                  fused ? M->piece_max + (size_t)c * stride : NULL, mm);
            }
            MG_PRAGMA(omp barrier)
            /* every piece done; each thread takes the same decisions */
            const REAL loss = FN(batch_loss)(B);
            if (!isfinite(loss)) {
                MG_PRAGMA(omp master)
                { losses[i] = (double)loss; if (lrs != NULL) lrs[i] = args.lr_t;
                  status = MG_ERR_NONFINITE; loss_bad = 1; last = (int)(i & 1); }
                break;  /* all threads: no update, the team ends */
            }
            const int apply = fused && FN(grads_safe)(M, B, M->piece_max, k);
            FN(weight_tasks)(M, B, apply ? &A : NULL, apply && use_T, mm, me, nt);
            if (!apply) {
                /* the gradients were accumulated: the checked Adam step */
                MG_PRAGMA(omp barrier)
                MG_PRAGMA(omp master)
                {
                    const int rc = FN(adam_step_env)(M, &args);
                    if (rc != MG_OK) status = rc;
                }
            }
            MG_PRAGMA(omp master)
            {
                losses[i] = (double)loss;
                if (lrs != NULL) lrs[i] = args.lr_t;
                last = (int)(i & 1);
                wT_valid = apply && use_T;
                if (status == MG_OK) {
                    done = i + 1;
                    /* the next batch into the other buffers (no one reads them now) */
                    if (i + 1 < n_steps) {
                        mg_batch *W = bat[(i + 1) & 1];
                        mg_batch_assemble(W, T, D, s + 1, batch, 0, batch);
                        K[(i + 1) & 1] = FN(doc_pieces)(W, bounds[(i + 1) & 1]);
                    }
                }
            }
            MG_PRAGMA(omp barrier)
            if (status != MG_OK) break;
        }
        mg_fp_set(fp_own);
    }
    /* the model's batch is the last step's (as after the step-by-step loop) */
    if (last == 1) mg_batch_copy(&M->batch, &spare);
    M->have_forward = !loss_bad;
    M->wT_valid = 0;
    mg_batch_free(&spare);
    *steps_done = done;
    return status;
}

/* The table's functions: each runs its work in the dtype's floating-point
 * environment (common.h; MG_RELAXED flushes subnormals) and restores the
 * caller's on return; the parallel regions inside pass it to their threads. */
static int FN(run_batch)(mg_model *M, mg_batch *B, int what, const mg_adam_args *adam,
                         double *loss) {
    const mg_fp_state_t fp = mg_fp_enter(MG_RELAXED);
    const int rc = FN(run_batch_env)(M, B, what, adam, loss);
    mg_fp_set(fp);
    return rc;
}

static int FN(adam_step)(mg_model *M, const mg_adam_args *a) {
    const mg_fp_state_t fp = mg_fp_enter(MG_RELAXED);
    const int rc = FN(adam_step_env)(M, a);
    mg_fp_set(fp);
    return rc;
}

static int FN(train_steps_team)(mg_model *M, const mg_train_data *D, const mg_schedule *S,
                                long step0, long n_steps, int batch, double *losses,
                                double *lrs, long *steps_done) {
    const mg_fp_state_t fp = mg_fp_enter(MG_RELAXED);
    const int rc = FN(train_steps_team_env)(M, D, S, step0, n_steps, batch, losses, lrs,
                                            steps_done);
    mg_fp_set(fp);
    return rc;
}

static int FN(infer_logits)(mg_model *M, int token, int pos, double *logits, int use_T) {
    const mg_fp_state_t fp = mg_fp_enter(MG_RELAXED);
    const int rc = FN(infer_logits_env)(M, token, pos, logits, use_T);
    mg_fp_set(fp);
    return rc;
}

static void FN(infer_prepare)(mg_model *M) {
    const mg_fp_state_t fp = mg_fp_enter(MG_RELAXED);
    FN(infer_prepare_env)(M);
    mg_fp_set(fp);
}

const mg_dtype_ops FN(mg_ops) = {FN(run_batch), FN(adam_step), FN(train_steps_team),
                                 FN(infer_logits), FN(infer_prepare)};
