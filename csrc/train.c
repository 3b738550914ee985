/*
 * train.c: the SPEC's training loop in C.  One step is: the batch of step s
 * (batch.c), forward and backward, then the Adam update with the schedule's
 * lr_t (fused into the backward when the gradients are certainly finite).
 * mg_train_steps runs it step by step (or in one persistent team of
 * threads, model_impl.h's train_steps_team, the same step threaded); a
 * data-parallel caller runs its share with mg_step_share, sums the shares'
 * gradients and applies mg_step_update.
 *
 * The schedule (mg_schedule, microgpt.h) may add a warmup, a cosine or
 * constant schedule and a floor (mg_schedule_lr, used by the team too), and
 * gradient clipping and decoupled weight decay: a step with either of those
 * runs unfused and outside the team (accumulate, clip_and_decay, then the
 * checked Adam step), never touching the fused kernels.
 */
#include "model_internal.h"

double mg_schedule_lr(const mg_schedule *S, long s) {
    const long W = S->warmup_steps > 0 ? S->warmup_steps : 0;
    if (s < W) return S->lr * (double)(s + 1) / (double)W;
    if (S->kind == MG_SCHED_CONSTANT) return S->lr;
    if (W == 0 && S->min_lr == 0.0 && S->kind == MG_SCHED_LINEAR)
        return S->lr * (1.0 - (double)s / (double)S->num_steps);  /* the SPEC's, bit for bit */
    const double f = (double)(s - W) / (double)(S->num_steps - W);
    if (S->kind == MG_SCHED_COSINE)
        return S->min_lr + 0.5 * (S->lr - S->min_lr) * (1.0 + cos(3.14159265358979323846 * f));
    return S->min_lr + (S->lr - S->min_lr) * (1.0 - f);
}

int mg_schedule_check(const mg_schedule *S) {
    if (S == NULL) return MG_ERR_ARG;
    if (S->num_steps < 1 || S->warmup_steps < 0 || S->warmup_steps >= S->num_steps)
        return MG_ERR_ARG;
    if (S->kind != MG_SCHED_LINEAR && S->kind != MG_SCHED_COSINE && S->kind != MG_SCHED_CONSTANT)
        return MG_ERR_ARG;
    if (!(S->min_lr >= 0.0 && S->min_lr <= S->lr)) return MG_ERR_ARG;
    if (!(S->weight_decay >= 0.0) || !isfinite(S->weight_decay)) return MG_ERR_ARG;
    if (!(S->grad_clip >= 0.0) || !isfinite(S->grad_clip)) return MG_ERR_ARG;
    return MG_OK;
}

/* the step needs the unfused path: clipping or weight decay */
static int sched_unfused(const mg_schedule *S) {
    return S->grad_clip > 0.0 || S->weight_decay > 0.0;
}

int mg_grad_norm(mg_model *M, double *norm) {
    if (M == NULL || norm == NULL) return MG_ERR_ARG;
    double acc = 0.0;
    const size_t n = M->num_params;
    if (M->dtype == MG_FLOAT64) {
        const double *g = (const double *)M->grads;
        for (size_t i = 0; i < n; i++) acc += g[i] * g[i];
    } else {
        const float *g = (const float *)M->grads;
        for (size_t i = 0; i < n; i++) acc += (double)g[i] * (double)g[i];
    }
    *norm = sqrt(acc);
    return MG_OK;
}

/* Before the checked Adam step of lr_t: clip the accumulated gradients to
 * the global norm S->grad_clip, then decay the parameters (AdamW).  A
 * non-finite norm changes nothing (the checked Adam step then refuses the
 * step, so no part of it is applied). */
static void clip_and_decay(mg_model *M, const mg_schedule *S, double lr_t) {
    const size_t n = M->num_params;
    double norm;
    mg_grad_norm(M, &norm);
    if (!isfinite(norm)) return;  /* the checked Adam step refuses the step: change nothing */
    if (S->grad_clip > 0.0) {
        if (norm > S->grad_clip) {
            const double scale = S->grad_clip / norm;
            if (M->dtype == MG_FLOAT64) {
                double *g = (double *)M->grads;
                for (size_t i = 0; i < n; i++) g[i] = g[i] * scale;
            } else {
                float *g = (float *)M->grads;
                for (size_t i = 0; i < n; i++) g[i] = (float)((double)g[i] * scale);
            }
        }
    }
    if (S->weight_decay > 0.0) {
        const double k = lr_t * S->weight_decay;
        if (M->dtype == MG_FLOAT64) {
            double *p = (double *)M->params;
            for (size_t i = 0; i < n; i++) p[i] = p[i] - k * p[i];
        } else {
            float *p = (float *)M->params;
            for (size_t i = 0; i < n; i++) p[i] = (float)((double)p[i] - k * (double)p[i]);
        }
    }
}

static mg_adam_args step_args(const mg_schedule *S, long s) {
    const mg_adam_args a = {mg_schedule_lr(S, s), S->beta1, S->beta2, S->eps, s + 1};
    return a;
}

/* Documents of >= 2 tokens, back to back from 0, every id in [0, V) (one
 * branch-free pass: a negative id becomes a huge unsigned value); documents
 * d0 .. d1-1 only. */
static int check_docs(const mg_train_data *D, int V, int64_t d0, int64_t d1) {
    if (D->doc_starts[0] != 0) return MG_ERR_LENGTH;
    for (int64_t d = d0; d < d1; d++)
        if (D->doc_starts[d + 1] - D->doc_starts[d] < 2) return MG_ERR_LENGTH;
    int bad = 0;
    for (int64_t i = D->doc_starts[d0]; i < D->doc_starts[d1]; i++)
        bad |= (uint32_t)D->corpus[i] >= (uint32_t)V;
    return bad ? MG_ERR_TOKEN : MG_OK;
}

int mg_train_steps(mg_model *M, const int32_t *corpus, const int64_t *doc_starts,
                   int64_t n_docs, long step0, long n_steps, long num_steps, int batch,
                   double lr, double beta1, double beta2, double eps,
                   double *losses, double *lrs, long *steps_done) {
    if (steps_done != NULL) *steps_done = 0;
    if (num_steps < 1) return MG_ERR_ARG;
    const mg_schedule S = {lr, beta1, beta2, eps, num_steps, 0, MG_SCHED_LINEAR, 0.0, 0.0, 0.0};
    return mg_train_steps_sched(M, corpus, doc_starts, n_docs, step0, n_steps, batch, &S,
                                losses, lrs, steps_done);
}

int mg_train_steps_sched(mg_model *M, const int32_t *corpus, const int64_t *doc_starts,
                         int64_t n_docs, long step0, long n_steps, int batch,
                         const mg_schedule *Sp, double *losses, double *lrs,
                         long *steps_done) {
    if (steps_done != NULL) *steps_done = 0;
    if (M == NULL || corpus == NULL || doc_starts == NULL || losses == NULL || steps_done == NULL)
        return MG_ERR_ARG;
    if (mg_schedule_check(Sp) != MG_OK) return MG_ERR_ARG;
    if (n_docs < 1 || batch < 1 || step0 < 0 || n_steps < 0) return MG_ERR_ARG;
    const mg_train_data D = {corpus, doc_starts, n_docs};
    const mg_schedule S = *Sp;
    const double beta1 = S.beta1, beta2 = S.beta2, eps = S.eps;
    const int unfused = sched_unfused(&S);
    const int T = M->cfg.block_size;
    /* the whole corpus, once per call */
    int rc = check_docs(&D, M->cfg.vocab_size, 0, n_docs);
    if (rc != MG_OK) return rc;
    size_t cap;
    if (!mul_ok((size_t)batch, (size_t)T, &cap)) return MG_ERR_OVERFLOW;
    if ((rc = mg_model_reserve(M, cap)) != MG_OK) return rc;
    M->wT_valid = 0;  /* params may have been changed since the last call */
    /* a batched run with a team: every step in one persistent team */
    if (!unfused) {
        rc = M->ops->train_steps_team(M, &D, &S, step0, n_steps, batch, losses, lrs, steps_done);
        if (rc != MG_NO_TEAM) return rc;
    }
    for (long i = 0; i < n_steps; i++) {
        const long s = step0 + i;
        const mg_adam_args args = step_args(&S, s);
        mg_batch_assemble(&M->batch, T, &D, s, batch, 0, batch);
        double loss;
        if (lrs != NULL) lrs[i] = args.lr_t;
        /* the first step of a call: the gradients may hold something on
         * entry, so they are accumulated and the checked Adam step applies
         * them; after it the previous step left every gradient zero and
         * backward and Adam are fused */
        const int fused = !unfused && i > 0 && isfinite(args.lr_t) && isfinite(beta1) && isfinite(beta2) &&
                          isfinite(eps);
        rc = M->ops->run_batch(M, &M->batch, MG_RUN_FORWARD | MG_RUN_BACKWARD,
                               fused ? &args : NULL, &loss);
        losses[i] = loss;
        if (rc == MG_ERR_NONFINITE) return rc;
        /* not fused, or gradients not certainly finite (stored instead):
         * the checked step */
        if (!fused || rc == MG_NOT_FUSED) {
            if (unfused) clip_and_decay(M, &S, args.lr_t);
            rc = M->ops->adam_step(M, &args);
        }
        if (rc != MG_OK) return rc;
        *steps_done = i + 1;
    }
    return MG_OK;
}

int mg_step_share(mg_model *M, const int32_t *corpus, const int64_t *doc_starts,
                  int64_t n_docs, long s, int batch, int lo, int hi, double *loss) {
    if (M == NULL || corpus == NULL || doc_starts == NULL || loss == NULL) return MG_ERR_ARG;
    if (n_docs < 1 || batch < 1 || s < 0 || lo < 0 || hi <= lo || hi > batch)
        return MG_ERR_ARG;
    const mg_train_data D = {corpus, doc_starts, n_docs};
    const int T = M->cfg.block_size;
    M->have_forward = 0;
    M->wT_valid = 0;
    /* the share's documents only (they may wrap around the corpus) */
    for (int b = lo; b < hi; b++) {
        const int64_t d = (int64_t)(((uint64_t)s * (uint64_t)batch + (uint64_t)b) %
                                    (uint64_t)n_docs);
        const int rc = check_docs(&D, M->cfg.vocab_size, d, d + 1);
        if (rc != MG_OK) return rc;
    }
    size_t cap;
    if (!mul_ok((size_t)(hi - lo), (size_t)T, &cap)) return MG_ERR_OVERFLOW;
    int rc = mg_model_reserve(M, cap);
    if (rc != MG_OK) return rc;
    mg_batch_assemble(&M->batch, T, &D, s, batch, lo, hi);
    rc = M->ops->run_batch(M, &M->batch, MG_RUN_FORWARD | MG_RUN_BACKWARD, NULL, loss);
    M->wT_valid = 0;
    return rc;
}

int mg_step_update(mg_model *M, long s, long num_steps, double lr, double beta1, double beta2,
                   double eps, double *lr_t) {
    if (M == NULL || s < 0 || num_steps < 1) return MG_ERR_ARG;
    const mg_schedule S = {lr, beta1, beta2, eps, num_steps, 0, MG_SCHED_LINEAR, 0.0, 0.0, 0.0};
    return mg_step_update_sched(M, s, &S, lr_t);
}

int mg_step_update_sched(mg_model *M, long s, const mg_schedule *S, double *lr_t) {
    if (M == NULL || s < 0 || mg_schedule_check(S) != MG_OK) return MG_ERR_ARG;
    const mg_adam_args args = step_args(S, s);
    if (lr_t != NULL) *lr_t = args.lr_t;
    if (sched_unfused(S)) clip_and_decay(M, S, args.lr_t);
    return M->ops->adam_step(M, &args);
}
