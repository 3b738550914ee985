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
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(dynamic, 1))
        for (int j = 0; j < jobs; j++) FN(build_wT_one)(M, j);
        return;
    }
    for (int j = 0; j < jobs; j++) FN(build_wT_one)(M, j);
}

/* Attention of documents d0 .. d1-1 of the batch, each over its own rows. */
static void FN(attention_docs_forward)(const mg_model *M, const FN(layer_acts_t) *a,
                                       int d0, int d1) {
    const int C = M->cfg.n_embd, NH = M->cfg.n_head, T = M->cfg.block_size;
    for (int d = d0; d < d1; d++) {
        const size_t off = M->doc_offsets[d];
        FN(attention_forward)(a->atty + off * C, a->att + off * NH * T, a->q + off * C,
                              a->k + off * C, a->v + off * C, M->doc_lens[d], 0, C, NH, T);
    }
}

static void FN(attention_docs_backward)(const mg_model *M, const FN(layer_acts_t) *da,
                                        const FN(layer_acts_t) *a, int d0, int d1) {
    const int C = M->cfg.n_embd, NH = M->cfg.n_head, T = M->cfg.block_size;
    for (int d = d0; d < d1; d++) {
        const size_t off = M->doc_offsets[d];
        FN(attention_backward)(da->q + off * C, da->k + off * C, da->v + off * C,
                               da->att + off * NH * T, da->atty + off * C, a->att + off * NH * T,
                               a->q + off * C, a->k + off * C, a->v + off * C, M->doc_lens[d],
                               C, NH, T);
    }
}

/* The transformer blocks on N tokens whose layer input is `x` (N, C).
 * Training (kc == NULL): attention per document with p0 = 0.
 * Inference (kc != NULL, N == 1): k, v are appended to the cache at `pos`
 * and the query attends the cache.  Returns the final block output. */
static REAL *FN(blocks_forward)(mg_model *M, REAL *x, int N, int pos, REAL *kc, REAL *vc,
                                int use_T) {
    const int C = M->cfg.n_embd, NH = M->cfg.n_head, T = M->cfg.block_size;
    for (int l = 0; l < M->cfg.n_layer; l++) {
        FN(layer_params_t) w = FN(layer_params)(M, (REAL *)M->params, l);
        FN(layer_acts_t) a = FN(layer_acts)(M, (REAL *)M->acts, l);
        const int Cp = FN(padT)(C), C4p = FN(padT)(4 * C);
        FN(rmsnorm_forward)(a.ln1, a.ln1s, x, N, C);
        if (!use_T) {
            FN(matmul_forward)(a.q, a.ln1, w.wq, N, C, C);
            FN(matmul_forward)(a.k, a.ln1, w.wk, N, C, C);
            FN(matmul_forward)(a.v, a.ln1, w.wv, N, C, C);
        } else {
            FN(matmul_forward_T)(a.q, a.ln1, FN(wT_layer)(M, l, MG_WQ), N, C, C, Cp);
            FN(matmul_forward_T)(a.k, a.ln1, FN(wT_layer)(M, l, MG_WK), N, C, C, Cp);
            FN(matmul_forward_T)(a.v, a.ln1, FN(wT_layer)(M, l, MG_WV), N, C, C, Cp);
        }
        if (kc != NULL) {
            REAL *kl = kc + (size_t)l * T * C, *vl = vc + (size_t)l * T * C;
            memcpy(kl + (size_t)pos * C, a.k, (size_t)C * sizeof(REAL));
            memcpy(vl + (size_t)pos * C, a.v, (size_t)C * sizeof(REAL));
            FN(attention_forward)(a.atty, a.att, a.q, kl, vl, 1, pos, C, NH, T);
        } else {
            /* documents are independent: one thread per document when the
             * batch is large (each writes only its own rows) */
            const int nd = M->n_docs;
            if (MG_USE_THREADS((size_t)N * T * C, nd)) {
                MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(dynamic, 1))
                for (int d = 0; d < nd; d++) FN(attention_docs_forward)(M, &a, d, d + 1);
            } else {
                FN(attention_docs_forward)(M, &a, 0, nd);
            }
        }
        if (!use_T) FN(matmul_forward)(a.attproj, a.atty, w.wo, N, C, C);
        else FN(matmul_forward_T)(a.attproj, a.atty, FN(wT_layer)(M, l, MG_WO), N, C, C, Cp);
        FN(residual_forward)(a.res2, a.attproj, x, (size_t)N * C);
        FN(rmsnorm_forward)(a.ln2, a.ln2s, a.res2, N, C);
        if (!use_T) FN(matmul_forward)(a.fch, a.ln2, w.fc1, N, C, 4 * C);
        else FN(matmul_forward_T)(a.fch, a.ln2, FN(wT_layer)(M, l, MG_FC1), N, C, 4 * C, C4p);
        FN(relu_forward)(a.fchr, a.fch, (size_t)N * 4 * C);
        if (!use_T) FN(matmul_forward)(a.fcproj, a.fchr, w.fc2, N, 4 * C, C);
        else FN(matmul_forward_T)(a.fcproj, a.fchr, FN(wT_layer)(M, l, MG_FC2), N, 4 * C, C, Cp);
        FN(residual_forward)(a.res3, a.fcproj, a.res2, (size_t)N * C);
        x = a.res3;
    }
    return x;
}

/* Embedding and first RMSNorm of the saved batch; returns x0. */
static REAL *FN(embed_forward)(mg_model *M, int N) {
    const mg_act_layout *A = &M->acts_layout;
    REAL *acts = (REAL *)M->acts;
    FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
    FN(encoder_forward)(acts + A->emb, M->inputs, M->positions, g.wte, g.wpe, N, M->cfg.n_embd);
    FN(rmsnorm_forward)(acts + A->x0, acts + A->x0s, acts + A->emb, N, M->cfg.n_embd);
    return acts + A->x0;
}

int FN(mg_forward)(mg_model *M, double *loss) {
    const int N = M->n_tokens, C = M->cfg.n_embd, V = M->cfg.vocab_size;
    const mg_act_layout *A = &M->acts_layout;
    REAL *acts = (REAL *)M->acts;
    FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
    /* Transposed weights (one transposing pass over them per forward) or the
     * token-lane kernel (no weight pass, but MG_LANES - N idle lanes per
     * block and per-call copies): measured, the transposed weights win for
     * batches of more than one register of tokens and for small models;
     * a single short document in a wide model is faster token-lane.
     * Inference (one token at a time) always uses the token-lane kernel. */
    const int use_T = N > MG_LANES || C < 64;
    if (use_T) FN(build_wT)(M);
    REAL *x = FN(embed_forward)(M, N);
    x = FN(blocks_forward)(M, x, N, 0, NULL, NULL, use_T);
    REAL *losses = acts + A->losses, *dlosses = acts + A->dlosses;
    if (use_T) FN(matmul_forward_T)(acts + A->logits, x, FN(wT_lm)(M), N, C, V, FN(padT)(V));
    else FN(matmul_forward)(acts + A->logits, x, g.lm_head, N, C, V);
    FN(crossentropy_softmax_forward)(losses, acts + A->probs, acts + A->logits,
                                     M->targets, N, V);
    /* mean over each document's positions, then mean over the documents */
    const REAL inv_docs = (REAL)1 / (REAL)M->total_docs;
    REAL batch = 0;
    for (int d = 0; d < M->n_docs; d++) {
        const int n = M->doc_lens[d];
        const size_t off = M->doc_offsets[d];
        const REAL inv_n = (REAL)1 / (REAL)n;
        REAL s = 0;
        for (int t = 0; t < n; t++) s += losses[off + t];
        batch += s * inv_n;
        for (int t = 0; t < n; t++) dlosses[off + t] = inv_n * inv_docs;
    }
    const REAL result = batch * inv_docs;
    *loss = (double)result;
    if (!isfinite(result)) { M->have_forward = 0; return MG_ERR_NONFINITE; }
    M->have_forward = 1;
    return MG_OK;
}

/* matmul_backward of a weight tensor of the model: into the gradients, or
 * (adam != NULL) only dinp now; the weight's update is applied after the
 * whole backward (see weight_job). */
static void FN(model_matmul_backward)(mg_model *M, REAL *dinp, REAL *dweight, const REAL *dout,
                                      const REAL *inp, REAL *weight, int N, int C, int OC,
                                      const FN(adam_ctx_t) *adam) {
    (void)M;
    FN(matmul_backward_dinp_all)(dinp, dout, weight, N, C, OC);
    if (adam == NULL) FN(matmul_backward_dweight_all)(dweight, dout, inp, weight, N, C, OC, NULL);
}

/* Weight-gradient job j of the saved backward (j = 0: lm_head; 1 + 6l + k:
 * layer l's k-th tensor): dweight (OC, C) = dout (N, OC)^T @ inp (N, C). */
typedef struct { const REAL *dout, *inp; REAL *weight, *dweight; int C, OC; } FN(wjob_t);

static FN(wjob_t) FN(weight_job)(mg_model *M, int j) {
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

static int FN(backward_impl)(mg_model *M, const FN(adam_ctx_t) *adam);

int FN(mg_backward)(mg_model *M) { return FN(backward_impl)(M, NULL); }

/* Backward fused with the Adam step (the training loop, with all gradients
 * zero on entry).  The activation gradients first; then, if every weight
 * gradient is certainly finite (finite inputs with N max|dout| max|inp| far
 * below the overflow threshold), each weight matrix's gradient goes straight
 * into its Adam update without being stored (wte and wpe go through the
 * gradient buffer, zeroed again): the same values as mg_backward +
 * mg_adam_step.  Otherwise the gradients are accumulated into grads, nothing
 * is updated, and -1 is returned: the caller runs mg_adam_step, which
 * decides (and refuses a non-finite gradient). */
int FN(mg_backward_adam)(mg_model *M, double lr_t, double beta1, double beta2, double eps,
                         long t) {
    const FN(adam_ctx_t) A = FN(adam_ctx)(lr_t, beta1, beta2, eps, t, NULL);
    int rc = FN(backward_impl)(M, &A);
    if (rc != MG_OK) return rc;
    const int N = M->n_tokens, C = M->cfg.n_embd, T = M->cfg.block_size;
    const int jobs = 1 + MG_NUM_PER_LAYER * M->cfg.n_layer;
    const double big = sizeof(REAL) == 4 ? 3.4e38 : 1.7e308;
    const size_t e0 = M->param_offset[MG_WTE], e1 = M->param_offset[MG_WPE] + (size_t)T * C;
    double unused;
    int safe = FN(finite_maxabs)((REAL *)M->grads + e0, e1 - e0, &unused);
    for (int j = 0; j < jobs && safe; j++) {
        const FN(wjob_t) J = FN(weight_job)(M, j);
        double md, mx;
        safe = FN(finite_maxabs)(J.dout, (size_t)N * J.OC, &md) &&
               FN(finite_maxabs)(J.inp, (size_t)N * J.C, &mx) &&
               (double)N * md * mx * 4 <= big;
    }
    for (int j = 0; j < jobs; j++) {
        const FN(wjob_t) J = FN(weight_job)(M, j);
        if (!safe) {
            FN(matmul_backward_dweight_all)(J.dweight, J.dout, J.inp, J.weight, N, J.C, J.OC, NULL);
            continue;
        }
        const size_t off = (size_t)(J.weight - (REAL *)M->params);
        FN(adam_ctx_t) Aw = A;
        Aw.m = (REAL *)M->m_adam + off;
        Aw.v = (REAL *)M->v_adam + off;
        FN(matmul_backward_dweight_all)(NULL, J.dout, J.inp, J.weight, N, J.C, J.OC, &Aw);
    }
    if (!safe) return -1;
    FN(adam_run)((REAL *)M->params + e0, (REAL *)M->m_adam + e0, (REAL *)M->v_adam + e0,
                 (REAL *)M->grads + e0, (REAL *)M->grads + e0, e1 - e0, &A);
    return MG_OK;
}

static int FN(backward_impl)(mg_model *M, const FN(adam_ctx_t) *adam) {
    const int N = M->n_tokens, C = M->cfg.n_embd, V = M->cfg.vocab_size;
    const int T = M->cfg.block_size, L = M->cfg.n_layer;
    const mg_act_layout *A = &M->acts_layout;
    REAL *acts = (REAL *)M->acts, *dacts = (REAL *)M->dacts;
    FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
    FN(globals_t) dg = FN(globals)(M, (REAL *)M->grads);
    /* zero the first N rows of every activation gradient that is accumulated */
    const size_t NC = (size_t)N * C;
    FN(zero)(dacts + A->emb, NC);
    FN(zero)(dacts + A->x0, NC);
    FN(zero)(dacts + A->logits, (size_t)N * V);
    /* per layer: 10 buffers of N*C and 2 of 4*N*C, zeroed in 18 pieces of N*C
     * (across threads when large: plain stores, no order question) */
    const int pieces = 18 * L;
    if (MG_USE_THREADS(NC * (size_t)pieces, pieces)) {
        MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(static))
        for (int j = 0; j < pieces; j++) {
            FN(layer_acts_t) da = FN(layer_acts)(M, dacts, j / 18);
            REAL *nc[] = {da.ln1, da.q, da.k, da.v, da.atty, da.attproj, da.res2, da.ln2,
                          da.fcproj, da.res3};
            const int r = j % 18;
            if (r < 10) FN(zero)(nc[r], NC);
            else if (r < 14) FN(zero)(da.fch + (size_t)(r - 10) * NC, NC);
            else FN(zero)(da.fchr + (size_t)(r - 14) * NC, NC);
        }
    } else {
        for (int l = 0; l < L; l++) {
            FN(layer_acts_t) da = FN(layer_acts)(M, dacts, l);
            REAL *nc[] = {da.ln1, da.q, da.k, da.v, da.atty, da.attproj, da.res2, da.ln2,
                          da.fcproj, da.res3};
            for (size_t j = 0; j < sizeof nc / sizeof nc[0]; j++) FN(zero)(nc[j], NC);
            FN(zero)(da.fch, 4 * NC);
            FN(zero)(da.fchr, 4 * NC);
        }
    }

    /* input of lm_head: output of the last block, or x0 when L == 0 */
    REAL *x = L > 0 ? FN(layer_acts)(M, acts, L - 1).res3 : acts + A->x0;
    REAL *dx = L > 0 ? FN(layer_acts)(M, dacts, L - 1).res3 : dacts + A->x0;
    FN(crossentropy_softmax_backward)(dacts + A->logits, acts + A->dlosses, acts + A->probs,
                                      M->targets, N, V);
    FN(model_matmul_backward)(M, dx, dg.lm_head, dacts + A->logits, x, g.lm_head, N, C, V, adam);

    for (int l = L - 1; l >= 0; l--) {
        FN(layer_params_t) w = FN(layer_params)(M, (REAL *)M->params, l);
        FN(layer_params_t) dw = FN(layer_params)(M, (REAL *)M->grads, l);
        FN(layer_acts_t) a = FN(layer_acts)(M, acts, l);
        FN(layer_acts_t) da = FN(layer_acts)(M, dacts, l);
        REAL *xin = l > 0 ? FN(layer_acts)(M, acts, l - 1).res3 : acts + A->x0;
        REAL *dxin = l > 0 ? FN(layer_acts)(M, dacts, l - 1).res3 : dacts + A->x0;

        FN(residual_backward)(da.fcproj, da.res2, da.res3, (size_t)N * C);
        FN(model_matmul_backward)(M, da.fchr, dw.fc2, da.fcproj, a.fchr, w.fc2, N, 4 * C, C, adam);
        FN(relu_backward)(da.fch, da.fchr, a.fch, (size_t)N * 4 * C);
        FN(model_matmul_backward)(M, da.ln2, dw.fc1, da.fch, a.ln2, w.fc1, N, C, 4 * C, adam);
        FN(rmsnorm_backward)(da.res2, da.ln2, a.res2, a.ln2s, N, C);
        FN(residual_backward)(da.attproj, dxin, da.res2, (size_t)N * C);
        FN(model_matmul_backward)(M, da.atty, dw.wo, da.attproj, a.atty, w.wo, N, C, C, adam);
        const int nd = M->n_docs;
        if (MG_USE_THREADS((size_t)N * T * C, nd)) {
            MG_PRAGMA(omp parallel for num_threads(mg_team_size()) schedule(dynamic, 1))
            for (int d = 0; d < nd; d++) FN(attention_docs_backward)(M, &da, &a, d, d + 1);
        } else {
            FN(attention_docs_backward)(M, &da, &a, 0, nd);
        }
        FN(model_matmul_backward)(M, da.ln1, dw.wq, da.q, a.ln1, w.wq, N, C, C, adam);
        FN(model_matmul_backward)(M, da.ln1, dw.wk, da.k, a.ln1, w.wk, N, C, C, adam);
        FN(model_matmul_backward)(M, da.ln1, dw.wv, da.v, a.ln1, w.wv, N, C, C, adam);
        FN(rmsnorm_backward)(dxin, da.ln1, xin, a.ln1s, N, C);
    }
    FN(rmsnorm_backward)(dacts + A->emb, dacts + A->x0, acts + A->emb, acts + A->x0s, N, C);
    FN(encoder_backward)(dg.wte, dg.wpe, dacts + A->emb, M->inputs, M->positions, N, C);
    return MG_OK;
}

/* One token of inference; use_T: with the transposed weights (which must be
 * current: mg_infer_prepare), the lanes over output channels are all busy
 * for a single token; the same sums either way. */
static int FN(infer_logits)(mg_model *M, int token, int pos, double *logits, int use_T) {
    const int C = M->cfg.n_embd, V = M->cfg.vocab_size;
    const mg_act_layout *A = &M->acts_layout;
    REAL *acts = (REAL *)M->acts;
    FN(globals_t) g = FN(globals)(M, (REAL *)M->params);
    M->have_forward = 0;
    M->inputs[0] = token;
    M->positions[0] = pos;
    REAL *x = FN(embed_forward)(M, 1);
    x = FN(blocks_forward)(M, x, 1, pos, (REAL *)M->kcache, (REAL *)M->vcache, use_T);
    REAL *z = acts + A->logits;
    if (use_T) FN(matmul_forward_T)(z, x, FN(wT_lm)(M), 1, C, V, FN(padT)(V));
    else FN(matmul_forward)(z, x, g.lm_head, 1, C, V);
    for (int i = 0; i < V; i++) logits[i] = (double)z[i];
    return MG_OK;
}

int FN(mg_infer_logits)(mg_model *M, int token, int pos, double *logits) {
    return FN(infer_logits)(M, token, pos, logits, 0);
}

/* Build the transposed weights for a run of mg_infer_logits_T calls (the
 * parameters must not change in between). */
void FN(mg_infer_prepare)(mg_model *M) { FN(build_wT)(M); }

int FN(mg_infer_logits_T)(mg_model *M, int token, int pos, double *logits) {
    return FN(infer_logits)(M, token, pos, logits, 1);
}
