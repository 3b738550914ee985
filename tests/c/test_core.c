/*
 * tests/c/test_core.c: a driver that exercises the C core (csrc/) directly,
 * without Python, so that it can be built with AddressSanitizer and
 * UndefinedBehaviorSanitizer (see tests/c/build.sh and .ci/sanitize.sh).
 *
 * It creates models of several configurations in both dtypes, runs forward,
 * backward, Adam, mg_train_steps and KV-cache inference on them, and walks
 * every error path of the public API (NULL pointers, bad configurations,
 * overflowing sizes, bad tokens, bad lengths, backward without forward...).
 * Besides "no sanitizer report" it checks the status codes and a few
 * invariants (finite losses, inference logits == training logits, gradients
 * against finite differences in float64).
 *
 * Exit status 0 when every check passed, 1 otherwise.  Usage:
 *   test_core [-v]
 */
#include "model_internal.h"
#include "mg_kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_checks = 0, g_failures = 0, g_verbose = 0;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        g_checks++;                                                                   \
        if (!(cond)) {                                                                \
            g_failures++;                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                             \
    } while (0)

#define EXPECT_RC(expr, want)                                                         \
    do {                                                                              \
        int rc_ = (expr);                                                             \
        g_checks++;                                                                   \
        if (rc_ != (want)) {                                                          \
            g_failures++;                                                             \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d (%s)\n",         \
                    __FILE__, __LINE__, #expr, rc_, mg_status_string(rc_), (int)(want), \
                    mg_status_string(want));                                          \
        }                                                                             \
    } while (0)

/* ------------------------------------------------------------ helpers */
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint64_t rng_next(void) { /* xorshift64* */
    g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
    return g_rng * 2685821657736338717ull;
}

static double rng_uniform(void) { return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0); }

/* approximately N(0, std): sum of 4 uniforms */
static double rng_normal(double std) {
    double s = rng_uniform() + rng_uniform() + rng_uniform() + rng_uniform() - 2.0;
    return s * std * 1.7320508075688772;
}

static double get_param(const mg_model *M, size_t i) {
    return M->dtype == MG_FLOAT64 ? ((const double *)M->params)[i]
                                  : (double)((const float *)M->params)[i];
}

static void set_param(mg_model *M, size_t i, double x) {
    if (M->dtype == MG_FLOAT64) ((double *)M->params)[i] = x;
    else ((float *)M->params)[i] = (float)x;
}

static double get_grad(const mg_model *M, size_t i) {
    return M->dtype == MG_FLOAT64 ? ((const double *)M->grads)[i]
                                  : (double)((const float *)M->grads)[i];
}

static double get_act(const mg_model *M, size_t i) {
    return M->dtype == MG_FLOAT64 ? ((const double *)M->acts)[i]
                                  : (double)((const float *)M->acts)[i];
}

static void init_params(mg_model *M, double std) {
    for (size_t i = 0; i < M->num_params; i++) set_param(M, i, rng_normal(std));
}

static int all_params_finite(const mg_model *M) {
    for (size_t i = 0; i < M->num_params; i++)
        if (!isfinite(get_param(M, i))) return 0;
    return 1;
}

static const char *dtype_name(int dtype) { return dtype == MG_FLOAT64 ? "float64" : "float32"; }

static mg_config make_cfg(int V, int T, int L, int C, int NH) {
    mg_config c;
    c.vocab_size = V; c.block_size = T; c.n_layer = L; c.n_embd = C; c.n_head = NH;
    return c;
}

/* -------------------------------------------------- configuration checks */
static void test_config_and_sizes(void) {
    mg_config ok = make_cfg(27, 16, 1, 16, 4);
    size_t n = 0, bytes = 0, off, rows, cols;

    EXPECT_RC(mg_config_check(NULL), MG_ERR_ARG);
    EXPECT_RC(mg_config_check(&ok), MG_OK);
    mg_config bad[] = {
        make_cfg(0, 16, 1, 16, 4), make_cfg(-1, 16, 1, 16, 4), make_cfg(27, 0, 1, 16, 4),
        make_cfg(27, -5, 1, 16, 4), make_cfg(27, 16, -1, 16, 4), make_cfg(27, 16, 1, 0, 4),
        make_cfg(27, 16, 1, -16, 4), make_cfg(27, 16, 1, 16, 0), make_cfg(27, 16, 1, 16, -4),
        make_cfg(27, 16, 1, 10, 3), make_cfg(27, 16, 1, 16, 32),
    };
    static mg_model poison; /* create must reset *out to NULL on failure */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mg_model *M = &poison;
        EXPECT_RC(mg_config_check(&bad[i]), MG_ERR_CONFIG);
        EXPECT_RC(mg_num_params(&bad[i], &n), MG_ERR_CONFIG);
        EXPECT_RC(mg_model_bytes(&bad[i], MG_FLOAT64, 16, &bytes), MG_ERR_CONFIG);
        EXPECT_RC(mg_model_create(&M, &bad[i], MG_FLOAT64, 16), MG_ERR_CONFIG);
        CHECK(M == NULL);
    }
    /* 4 * n_embd must fit in an int */
    mg_config wide = make_cfg(27, 16, 1, INT32_MAX / 4 + 1, 1);
    EXPECT_RC(mg_config_check(&wide), MG_ERR_OVERFLOW);

    /* parameter count and tensor table */
    EXPECT_RC(mg_num_params(NULL, &n), MG_ERR_ARG);
    EXPECT_RC(mg_num_params(&ok, NULL), MG_ERR_ARG);
    EXPECT_RC(mg_num_params(&ok, &n), MG_OK);
    CHECK(n == 4192);
    for (int L = 0; L <= 3; L++) {
        mg_config c = make_cfg(7, 5, L, 12, 3);
        size_t total = 0, expect_off = 0;
        EXPECT_RC(mg_num_params(&c, &total), MG_OK);
        for (int i = 0; i < MG_NUM_GLOBAL + MG_NUM_PER_LAYER * L; i++) {
            EXPECT_RC(mg_tensor_info(&c, i, &off, &rows, &cols), MG_OK);
            CHECK(off == expect_off);          /* tensors are contiguous, in order */
            expect_off += rows * cols;
        }
        CHECK(expect_off == total);
        EXPECT_RC(mg_tensor_info(&c, MG_NUM_GLOBAL + MG_NUM_PER_LAYER * L, &off, &rows, &cols),
                  MG_ERR_ARG);
        EXPECT_RC(mg_tensor_info(&c, -1, &off, &rows, &cols), MG_ERR_ARG);
    }
    EXPECT_RC(mg_tensor_info(NULL, 0, &off, &rows, &cols), MG_ERR_ARG);
    EXPECT_RC(mg_tensor_info(&ok, 0, NULL, &rows, &cols), MG_ERR_ARG);
    EXPECT_RC(mg_tensor_info(&ok, 0, &off, NULL, &cols), MG_ERR_ARG);
    EXPECT_RC(mg_tensor_info(&ok, 0, &off, &rows, NULL), MG_ERR_ARG);
    EXPECT_RC(mg_tensor_info(&bad[0], 0, &off, &rows, &cols), MG_ERR_CONFIG);

    /* model bytes: argument errors and overflow */
    EXPECT_RC(mg_model_bytes(&ok, MG_FLOAT64, 16, NULL), MG_ERR_ARG);
    EXPECT_RC(mg_model_bytes(NULL, MG_FLOAT64, 16, &bytes), MG_ERR_ARG);
    EXPECT_RC(mg_model_bytes(&ok, 2, 16, &bytes), MG_ERR_DTYPE);
    EXPECT_RC(mg_model_bytes(&ok, -1, 16, &bytes), MG_ERR_DTYPE);
    EXPECT_RC(mg_model_bytes(&ok, MG_FLOAT64, 0, &bytes), MG_ERR_LENGTH);
    EXPECT_RC(mg_model_bytes(&ok, MG_FLOAT64, (size_t)INT32_MAX + 1, &bytes), MG_ERR_LENGTH);
    EXPECT_RC(mg_model_bytes(&ok, MG_FLOAT64, 16, &bytes), MG_OK);
    CHECK(bytes > 4 * 4192 * sizeof(double));
    size_t bytes32 = 0;
    EXPECT_RC(mg_model_bytes(&ok, MG_FLOAT32, 16, &bytes32), MG_OK);
    CHECK(bytes32 < bytes);

    mg_config huge[] = {
        make_cfg(INT32_MAX, 16, 1, 1 << 28, 1),            /* V * C * 8 bytes overflows */
        make_cfg(27, INT32_MAX, INT32_MAX, 1 << 20, 1),    /* L * T * C overflows */
        make_cfg(27, 16, INT32_MAX, INT32_MAX / 4, 1),     /* 12 C^2 L overflows */
        make_cfg(INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX / 4, 1),
    };
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        mg_model *M = &poison;
        EXPECT_RC(mg_model_bytes(&huge[i], MG_FLOAT64, 16, &bytes), MG_ERR_OVERFLOW);
        EXPECT_RC(mg_model_bytes(&huge[i], MG_FLOAT32, INT32_MAX, &bytes), MG_ERR_OVERFLOW);
        EXPECT_RC(mg_model_create(&M, &huge[i], MG_FLOAT64, 16), MG_ERR_OVERFLOW);
        CHECK(M == NULL);
    }
    /* activations overflow for a large capacity even though the parameters fit */
    mg_config wide_att = make_cfg(27, INT32_MAX, 1, 1 << 20, 1 << 20);
    EXPECT_RC(mg_model_bytes(&wide_att, MG_FLOAT64, INT32_MAX, &bytes), MG_ERR_OVERFLOW);

    /* create: argument errors */
    mg_model *M = NULL;
    EXPECT_RC(mg_model_create(NULL, &ok, MG_FLOAT64, 16), MG_ERR_ARG);
    EXPECT_RC(mg_model_create(&M, NULL, MG_FLOAT64, 16), MG_ERR_ARG);
    CHECK(M == NULL);
    EXPECT_RC(mg_model_create(&M, &ok, 7, 16), MG_ERR_DTYPE);
    CHECK(M == NULL);
    EXPECT_RC(mg_model_create(&M, &ok, MG_FLOAT64, 0), MG_ERR_LENGTH);
    CHECK(M == NULL);

    /* does not overflow size_t but cannot be allocated (~8 TiB): MG_ERR_NOMEM,
     * and the partial allocation is cleaned up (LeakSanitizer would see it).
     * With unlimited overcommit the allocation may succeed lazily: then just
     * free it. */
    mg_config big = make_cfg(1 << 20, 16, 1, 1 << 20, 1);
    EXPECT_RC(mg_model_bytes(&big, MG_FLOAT64, 16, &bytes), MG_OK);
    int rc = mg_model_create(&M, &big, MG_FLOAT64, 16);
    CHECK(rc == MG_ERR_NOMEM || rc == MG_OK);
    CHECK((rc == MG_OK) == (M != NULL));
    mg_model_free(M);
    M = NULL;

    mg_model_free(NULL); /* must be a no-op */

    /* every status has a message */
    for (int s = -1; s <= 12; s++) {
        const char *msg = mg_status_string(s);
        CHECK(msg != NULL && strlen(msg) > 0);
    }
}

/* ---------------------------------------------- a corpus of documents */
typedef struct {
    int32_t *tokens;    /* all documents back to back */
    int64_t *starts;    /* n_docs + 1 */
    int64_t n_docs;
} corpus_t;

/* documents [BOS] + ids + [BOS] of random length 0 .. max_len characters */
static corpus_t make_corpus(int V, int64_t n_docs, int max_len) {
    corpus_t c;
    const int bos = V - 1;
    c.n_docs = n_docs;
    c.starts = malloc((size_t)(n_docs + 1) * sizeof(int64_t));
    c.tokens = malloc((size_t)n_docs * (size_t)(max_len + 2) * sizeof(int32_t));
    int64_t k = 0;
    for (int64_t d = 0; d < n_docs; d++) {
        c.starts[d] = k;
        int len = (int)(rng_next() % (uint64_t)(max_len + 1));
        c.tokens[k++] = bos;
        for (int i = 0; i < len; i++)
            c.tokens[k++] = V > 1 ? (int32_t)(rng_next() % (uint64_t)(V - 1)) : 0;
        c.tokens[k++] = bos;
    }
    c.starts[n_docs] = k;
    return c;
}

static void free_corpus(corpus_t *c) {
    free(c->tokens); free(c->starts);
    c->tokens = NULL; c->starts = NULL;
}

/* ----------------------------------------------- error paths of a model */
static void test_model_errors(mg_model *M) {
    const int V = M->cfg.vocab_size, T = M->cfg.block_size;
    int32_t in[4] = {0, 0, 0, 0}, tg[4] = {0, 0, 0, 0}, len1 = 1, len0 = 0, lenT1 = T + 1;
    double loss = 0, logits_buf[64];
    double *logits = V <= 64 ? logits_buf : malloc((size_t)V * sizeof(double));

    /* backward without any forward */
    EXPECT_RC(mg_backward(M), MG_ERR_STATE);
    EXPECT_RC(mg_backward(NULL), MG_ERR_ARG);
    EXPECT_RC(mg_zero_grad(NULL), MG_ERR_ARG);

    /* forward: NULL pointers */
    EXPECT_RC(mg_forward(NULL, in, tg, &len1, 1, &loss), MG_ERR_ARG);
    EXPECT_RC(mg_forward(M, NULL, tg, &len1, 1, &loss), MG_ERR_ARG);
    EXPECT_RC(mg_forward(M, in, NULL, &len1, 1, &loss), MG_ERR_ARG);
    EXPECT_RC(mg_forward(M, in, tg, NULL, 1, &loss), MG_ERR_ARG);
    EXPECT_RC(mg_forward(M, in, tg, &len1, 1, NULL), MG_ERR_ARG);
    /* lengths */
    EXPECT_RC(mg_forward(M, in, tg, &len1, 0, &loss), MG_ERR_LENGTH);
    EXPECT_RC(mg_forward(M, in, tg, &len1, -3, &loss), MG_ERR_LENGTH);
    EXPECT_RC(mg_forward(M, in, tg, &len0, 1, &loss), MG_ERR_LENGTH);
    EXPECT_RC(mg_forward_partial(M, in, tg, &len1, 1, 0, &loss), MG_ERR_LENGTH);
    if (T < 4) {
        /* a document longer than the block (the buffers hold 4 tokens) */
        EXPECT_RC(mg_forward(M, in, tg, &lenT1, 1, &loss), MG_ERR_LENGTH);
    }
    /* tokens */
    in[0] = -1;
    EXPECT_RC(mg_forward(M, in, tg, &len1, 1, &loss), MG_ERR_TOKEN);
    in[0] = V;
    EXPECT_RC(mg_forward(M, in, tg, &len1, 1, &loss), MG_ERR_TOKEN);
    in[0] = INT32_MIN;
    EXPECT_RC(mg_forward(M, in, tg, &len1, 1, &loss), MG_ERR_TOKEN);
    in[0] = 0; tg[0] = V;
    EXPECT_RC(mg_forward(M, in, tg, &len1, 1, &loss), MG_ERR_TOKEN);
    tg[0] = -7;
    EXPECT_RC(mg_forward(M, in, tg, &len1, 1, &loss), MG_ERR_TOKEN);
    tg[0] = 0;
    /* a failed forward leaves no saved forward behind */
    EXPECT_RC(mg_backward(M), MG_ERR_STATE);

    /* a good forward, then inference discards it */
    EXPECT_RC(mg_forward(M, in, tg, &len1, 1, &loss), MG_OK);
    CHECK(isfinite(loss));
    EXPECT_RC(mg_infer_logits(M, 0, 0, logits), MG_OK);
    EXPECT_RC(mg_backward(M), MG_ERR_STATE);

    /* sequence_forward_backward */
    EXPECT_RC(mg_sequence_forward_backward(NULL, in, 2, &loss), MG_ERR_ARG);
    EXPECT_RC(mg_sequence_forward_backward(M, NULL, 2, &loss), MG_ERR_ARG);
    EXPECT_RC(mg_sequence_forward_backward(M, in, 2, NULL), MG_ERR_ARG);
    EXPECT_RC(mg_sequence_forward_backward(M, in, 1, &loss), MG_ERR_LENGTH);
    EXPECT_RC(mg_sequence_forward_backward(M, in, 0, &loss), MG_ERR_LENGTH);
    EXPECT_RC(mg_sequence_forward_backward(M, in, -2, &loss), MG_ERR_LENGTH);
    in[1] = V;
    EXPECT_RC(mg_sequence_forward_backward(M, in, 2, &loss), MG_ERR_TOKEN);
    in[1] = 0;

    /* adam */
    EXPECT_RC(mg_adam_step(NULL, 0.01, 0.85, 0.99, 1e-8, 1), MG_ERR_ARG);
    EXPECT_RC(mg_adam_step(M, 0.01, 0.85, 0.99, 1e-8, 0), MG_ERR_ARG);
    EXPECT_RC(mg_adam_step(M, 0.01, 0.85, 0.99, 1e-8, -1), MG_ERR_ARG);
    EXPECT_RC(mg_adam_step(M, NAN, 0.85, 0.99, 1e-8, 1), MG_ERR_ARG);
    EXPECT_RC(mg_adam_step(M, INFINITY, 0.85, 0.99, 1e-8, 1), MG_ERR_ARG);
    EXPECT_RC(mg_adam_step(M, 0.01, NAN, 0.99, 1e-8, 1), MG_ERR_ARG);
    EXPECT_RC(mg_adam_step(M, 0.01, 0.85, -INFINITY, 1e-8, 1), MG_ERR_ARG);
    EXPECT_RC(mg_adam_step(M, 0.01, 0.85, 0.99, NAN, 1), MG_ERR_ARG);

    /* inference */
    EXPECT_RC(mg_infer_logits(NULL, 0, 0, logits), MG_ERR_ARG);
    EXPECT_RC(mg_infer_logits(M, 0, 0, NULL), MG_ERR_ARG);
    EXPECT_RC(mg_infer_logits(M, -1, 0, logits), MG_ERR_TOKEN);
    EXPECT_RC(mg_infer_logits(M, V, 0, logits), MG_ERR_TOKEN);
    EXPECT_RC(mg_infer_logits(M, 0, -1, logits), MG_ERR_LENGTH);
    EXPECT_RC(mg_infer_logits(M, 0, T, logits), MG_ERR_LENGTH);
    EXPECT_RC(mg_infer_logits(M, 0, INT32_MAX, logits), MG_ERR_LENGTH);

    /* reserve */
    EXPECT_RC(mg_model_reserve(NULL, 4), MG_ERR_ARG);
    EXPECT_RC(mg_model_reserve(M, 0), MG_OK);              /* smaller: no-op */
    EXPECT_RC(mg_model_reserve(M, (size_t)INT32_MAX + 1), MG_ERR_LENGTH);

    /* train_steps argument errors */
    corpus_t c = make_corpus(V, 3, 3);
    double losses[4], lrs[4];
    long done = 77;
    EXPECT_RC(mg_train_steps(NULL, c.tokens, c.starts, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_ARG);
    CHECK(done == 0);
    EXPECT_RC(mg_train_steps(M, NULL, c.starts, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99, 1e-8,
                             losses, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, NULL, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99, 1e-8,
                             losses, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, NULL, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, NULL), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, 0, 0, 1, 10, 1, 0.01, 0.85, 0.99, 1e-8,
                             losses, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, -1, 0, 1, 10, 1, 0.01, 0.85, 0.99, 1e-8,
                             losses, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, -1, 1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, -1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 0, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, 0, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, -2, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_ARG);
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, 1, NAN, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_ARG);
    /* batch * T tokens would exceed the int32 capacity (for T == 1 it is
     * exactly INT32_MAX tokens: a slow, doomed allocation, so not tried) */
    if (T > 1) {
        EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, INT32_MAX, 0.01,
                                 0.85, 0.99, 1e-8, losses, lrs, &done), MG_ERR_LENGTH);
        CHECK(done == 0);
    }
    /* a bad token anywhere in the corpus */
    int32_t saved = c.tokens[c.starts[2]];
    c.tokens[c.starts[2]] = V;
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_TOKEN);
    c.tokens[c.starts[2]] = -1;
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_TOKEN);
    c.tokens[c.starts[2]] = saved;
    /* a document with fewer than 2 tokens, or decreasing offsets */
    int64_t s1 = c.starts[1];
    c.starts[1] = c.starts[0] + 1;
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_LENGTH);
    c.starts[1] = c.starts[0] - 1;
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_LENGTH);
    c.starts[1] = s1;
    int64_t s0 = c.starts[0];
    c.starts[0] = -4;
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 1, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, lrs, &done), MG_ERR_LENGTH);
    c.starts[0] = s0;
    /* zero steps: nothing happens */
    done = 5;
    EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 0, 10, 1, 0.01, 0.85, 0.99,
                             1e-8, losses, NULL, &done), MG_OK);
    CHECK(done == 0);
    free_corpus(&c);
    if (logits != logits_buf) free(logits);
}

/* -------------------------------------------- normal use of one model */
static double finite_difference(mg_model *M, size_t i, const int32_t *tok, int n) {
    const double h = 1e-5, x = get_param(M, i);
    double lp = 0, lm = 0;
    set_param(M, i, x + h);
    int32_t len = n - 1 < M->cfg.block_size ? n - 1 : M->cfg.block_size;
    EXPECT_RC(mg_forward(M, tok, tok + 1, &len, 1, &lp), MG_OK);
    set_param(M, i, x - h);
    EXPECT_RC(mg_forward(M, tok, tok + 1, &len, 1, &lm), MG_OK);
    set_param(M, i, x);
    return (lp - lm) / (2 * h);
}

static void test_model_use(const mg_config *cfg, int dtype, int batch) {
    const int V = cfg->vocab_size, T = cfg->block_size, NH = cfg->n_head;
    mg_model *M = NULL;
    if (g_verbose)
        fprintf(stderr, "  model V=%d T=%d L=%d C=%d NH=%d %s batch=%d\n", V, T, cfg->n_layer,
                cfg->n_embd, NH, dtype_name(dtype), batch);
    /* capacity of a single token: every larger batch must grow it */
    EXPECT_RC(mg_model_create(&M, cfg, dtype, 1), MG_OK);
    if (M == NULL) return;
    CHECK(M->max_tokens == 1);
    init_params(M, 0.08);
    test_model_errors(M);
    init_params(M, 0.08);

    /* one document longer than the block: truncated to T positions */
    const int n = T + 3;
    int32_t *tok = malloc((size_t)n * sizeof(int32_t));
    tok[0] = V - 1;
    for (int i = 1; i < n - 1; i++) tok[i] = (int32_t)(rng_next() % (uint64_t)V);
    tok[n - 1] = V - 1;
    double loss = 0, loss2 = 0;
    EXPECT_RC(mg_zero_grad(M), MG_OK);
    EXPECT_RC(mg_sequence_forward_backward(M, tok, n, &loss), MG_OK);
    CHECK(isfinite(loss) && loss > 0);
    /* close to log(V) for small random weights */
    CHECK(fabs(loss - log((double)V)) < 1.0);
    CHECK(M->batch.n_tokens == T);

    /* gradients against central differences (float64 only) */
    if (dtype == MG_FLOAT64) {
        for (int k = 0; k < 6; k++) {
            size_t i = (size_t)(rng_next() % M->num_params);
            double g = get_grad(M, i);
            double fd = finite_difference(M, i, tok, n);
            CHECK(fabs(g - fd) <= 1e-6 + 1e-4 * fabs(fd));
            if (fabs(g - fd) > 1e-6 + 1e-4 * fabs(fd))
                fprintf(stderr, "    grad[%zu] = %.10g, finite difference %.10g\n", i, g, fd);
        }
    }

    /* training logits == inference logits at every position */
    {
        int32_t len = T;
        EXPECT_RC(mg_forward(M, tok, tok + 1, &len, 1, &loss2), MG_OK);
        CHECK(loss2 == loss);
        double *train_logits = malloc((size_t)T * (size_t)V * sizeof(double));
        double *logits = malloc((size_t)V * sizeof(double));
        for (size_t i = 0; i < (size_t)T * (size_t)V; i++)
            train_logits[i] = get_act(M, M->acts_layout.logits + i);
        double worst = 0;
        for (int p = 0; p < T; p++) {
            EXPECT_RC(mg_infer_logits(M, tok[p], p, logits), MG_OK);
            for (int i = 0; i < V; i++) {
                double d = fabs(logits[i] - train_logits[(size_t)p * V + i]);
                if (d > worst) worst = d;
            }
        }
        CHECK(worst <= (dtype == MG_FLOAT64 ? 1e-12 : 1e-4));
        if (worst > (dtype == MG_FLOAT64 ? 1e-12 : 1e-4))
            fprintf(stderr, "    inference vs training logits differ by %g\n", worst);
        /* a new sample restarts at position 0 */
        EXPECT_RC(mg_infer_logits(M, V - 1, 0, logits), MG_OK);
        for (int i = 0; i < V; i++) CHECK(isfinite(logits[i]));
        double *probs = malloc((size_t)V * sizeof(double));
        EXPECT_RC(mg_softmax_temperature(probs, logits, V, 0.5), MG_OK);
        double total = 0;
        for (int i = 0; i < V; i++) total += probs[i];
        CHECK(fabs(total - 1) < 1e-12);
        free(probs);
        free(logits);
        free(train_logits);
    }

    /* a multi-document batch through forward_partial; shares add up */
    {
        const int nd = 3;
        int32_t lens[3] = {1, T, T > 2 ? T - 1 : 1};
        size_t N = (size_t)lens[0] + lens[1] + lens[2];
        int32_t *in = malloc(N * sizeof(int32_t)), *tg = malloc(N * sizeof(int32_t));
        for (size_t i = 0; i < N; i++) {
            in[i] = (int32_t)(rng_next() % (uint64_t)V);
            tg[i] = (int32_t)(rng_next() % (uint64_t)V);
        }
        double whole = 0, a = 0, b = 0;
        EXPECT_RC(mg_forward(M, in, tg, lens, nd, &whole), MG_OK);
        EXPECT_RC(mg_backward(M), MG_OK);
        EXPECT_RC(mg_forward_partial(M, in, tg, lens, 1, nd, &a), MG_OK);
        EXPECT_RC(mg_backward(M), MG_OK);
        EXPECT_RC(mg_forward_partial(M, in + lens[0], tg + lens[0], lens + 1, 2, nd, &b),
                  MG_OK);
        EXPECT_RC(mg_backward(M), MG_OK);
        CHECK(fabs(whole - (a + b)) <= (dtype == MG_FLOAT64 ? 1e-12 : 1e-5) * fabs(whole));
        /* backward twice on one forward is allowed (gradients accumulate) */
        EXPECT_RC(mg_backward(M), MG_OK);
        CHECK(M->max_tokens >= N);
        free(in); free(tg);
    }

    /* Adam */
    EXPECT_RC(mg_adam_step(M, 0.01, 0.85, 0.99, 1e-8, 1), MG_OK);
    CHECK(all_params_finite(M));
    for (size_t i = 0; i < M->num_params; i++) {
        if (get_grad(M, i) != 0) { CHECK(get_grad(M, i) == 0); break; }
    }
    /* a non-finite gradient is never applied */
    {
        const size_t bytes = M->num_params * M->elem_size;
        void *saved = malloc(bytes);
        memcpy(saved, M->params, bytes);
        if (M->dtype == MG_FLOAT64) ((double *)M->grads)[M->num_params - 1] = NAN;
        else ((float *)M->grads)[M->num_params - 1] = INFINITY;
        EXPECT_RC(mg_adam_step(M, 0.01, 0.85, 0.99, 1e-8, 2), MG_ERR_NONFINITE);
        CHECK(memcmp(saved, M->params, bytes) == 0);
        EXPECT_RC(mg_zero_grad(M), MG_OK);
        free(saved);
    }

    /* the whole training loop in C, with documents longer than the block */
    {
        corpus_t c = make_corpus(V, 7, T + 4);
        const long steps = 6;
        double losses[6], lrs[6];
        long done = -1;
        EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, steps, steps, batch, 0.01,
                                 0.85, 0.99, 1e-8, losses, lrs, &done), MG_OK);
        CHECK(done == steps);
        for (long i = 0; i < steps; i++) {
            CHECK(isfinite(losses[i]));
            CHECK(fabs(lrs[i] - 0.01 * (1.0 - (double)i / (double)steps)) < 1e-15);
        }
        CHECK(M->max_tokens >= (size_t)batch * (size_t)T);
        /* resumed at a later step, without lrs */
        EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 3, 2, 10, batch, 0.01, 0.85,
                                 0.99, 1e-8, losses, NULL, &done), MG_OK);
        CHECK(done == 2);
        CHECK(all_params_finite(M));

        /* a NaN parameter: the first step fails, nothing is applied */
        set_param(M, 0, NAN);
        set_param(M, M->param_offset[MG_LM_HEAD], NAN);
        done = -1;
        losses[0] = 0;
        EXPECT_RC(mg_train_steps(M, c.tokens, c.starts, c.n_docs, 0, 3, 3, batch, 0.01, 0.85,
                                 0.99, 1e-8, losses, lrs, &done), MG_ERR_NONFINITE);
        CHECK(done == 0);
        CHECK(!isfinite(losses[0]));
        EXPECT_RC(mg_backward(M), MG_ERR_STATE);
        /* an infinite one, through forward */
        init_params(M, 0.08);
        set_param(M, M->param_offset[MG_WPE], INFINITY);
        int32_t len = 1;
        EXPECT_RC(mg_forward(M, c.tokens, c.tokens + 1, &len, 1, &loss), MG_ERR_NONFINITE);
        CHECK(!isfinite(loss));
        EXPECT_RC(mg_backward(M), MG_ERR_STATE);
        free_corpus(&c);
    }
    free(tok);
    mg_model_free(M);
}

/* --------------------------------------------------- softmax_temperature */
static void test_softmax(void) {
    double z[4] = {1e4, -1e4, 0, 1e300}, p[4];
    EXPECT_RC(mg_softmax_temperature(NULL, z, 4, 1.0), MG_ERR_ARG);
    EXPECT_RC(mg_softmax_temperature(p, NULL, 4, 1.0), MG_ERR_ARG);
    EXPECT_RC(mg_softmax_temperature(p, z, 0, 1.0), MG_ERR_ARG);
    EXPECT_RC(mg_softmax_temperature(p, z, -1, 1.0), MG_ERR_ARG);
    EXPECT_RC(mg_softmax_temperature(p, z, 4, 0.0), MG_ERR_ARG);
    EXPECT_RC(mg_softmax_temperature(p, z, 4, -1.0), MG_ERR_ARG);
    EXPECT_RC(mg_softmax_temperature(p, z, 4, NAN), MG_ERR_ARG);
    EXPECT_RC(mg_softmax_temperature(p, z, 4, INFINITY), MG_ERR_ARG);
    EXPECT_RC(mg_softmax_temperature(p, z, 4, 1.0), MG_OK);
    CHECK(p[3] == 1.0 && p[0] == 0.0 && p[1] == 0.0 && p[2] == 0.0);
    EXPECT_RC(mg_softmax_temperature(p, z, 3, 0.5), MG_OK);
    CHECK(p[0] == 1.0 && p[1] == 0.0 && p[2] == 0.0);
    double zeros[5] = {0, 0, 0, 0, 0}, q[5];
    EXPECT_RC(mg_softmax_temperature(q, zeros, 5, 0.5), MG_OK);
    for (int i = 0; i < 5; i++) CHECK(fabs(q[i] - 0.2) < 1e-15);
    double one = 3.0, r;
    EXPECT_RC(mg_softmax_temperature(&r, &one, 1, 1.0), MG_OK);
    CHECK(r == 1.0);
    double bad[3] = {0, NAN, 1};
    EXPECT_RC(mg_softmax_temperature(p, bad, 3, 1.0), MG_ERR_NONFINITE);
    double inf[2] = {INFINITY, 0};
    EXPECT_RC(mg_softmax_temperature(p, inf, 2, 1.0), MG_ERR_NONFINITE);
}

/* --------------------------------------------------------------- threads */
static void test_threads_api(void) {
    const int before = mg_get_max_threads();
    CHECK(before >= 1);
    mg_set_num_threads(0);   /* ignored */
    mg_set_num_threads(-3);  /* ignored */
    CHECK(mg_get_max_threads() == before);
    mg_set_num_threads(2);
    CHECK(mg_get_max_threads() == (mg_openmp_enabled() ? 2 : 1));
    mg_set_num_threads(before);
}

/* Two models with identical inputs give bit-identical results whatever the
 * number of threads (each output element is computed by one thread). */
static void test_thread_count_invariance(int dtype) {
    mg_config cfg = make_cfg(29, 64, 1, 128, 4);
    mg_model *A = NULL, *B = NULL;
    EXPECT_RC(mg_model_create(&A, &cfg, dtype, 64), MG_OK);
    EXPECT_RC(mg_model_create(&B, &cfg, dtype, 64), MG_OK);
    if (A == NULL || B == NULL) { mg_model_free(A); mg_model_free(B); return; }
    init_params(A, 0.08);
    memcpy(B->params, A->params, A->num_params * A->elem_size);
    corpus_t c = make_corpus(29, 16, 70);
    double la[2], lb[2];
    long done = 0;
    const int before = mg_get_max_threads();
    mg_set_num_threads(1);
    EXPECT_RC(mg_train_steps(A, c.tokens, c.starts, c.n_docs, 0, 2, 10, 8, 0.01, 0.85, 0.99,
                             1e-8, la, NULL, &done), MG_OK);
    mg_set_num_threads(2);
    EXPECT_RC(mg_train_steps(B, c.tokens, c.starts, c.n_docs, 0, 2, 10, 8, 0.01, 0.85, 0.99,
                             1e-8, lb, NULL, &done), MG_OK);
    mg_set_num_threads(before);
    CHECK(la[0] == lb[0] && la[1] == lb[1]);
    CHECK(memcmp(A->params, B->params, A->num_params * A->elem_size) == 0);
    free_corpus(&c);
    mg_model_free(A);
    mg_model_free(B);
}

/* The float64 kernels' pow(x, -1) and pow(x, -0.5) fast paths give libm's
 * bits: random arguments over many binades, the reciprocals of softmax sums
 * known to differ from a division, and the special values. */
static void test_pow_fast_paths(void) {
    volatile double minus_one = -1.0, minus_half = -0.5;  /* keep pow a libm call */
    int bad_recip = 0, bad_rsqrt = 0;
    uint64_t s = 0x2545F4914F6CDD1Dull;  /* own stream: the model tests' draws stay as they were */
    for (int i = 0; i < 2000000; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        double x = 1.0 + (double)(s >> 11) * (15.0 / 9007199254740992.0);
        if (i & 1) x = ldexp(x, (int)(s % 400) - 200);
        const double a = mg_recip_pow_f64(x), b = pow(x, minus_one);
        const double c = mg_rsqrt_pow_f64(x), d = pow(x, minus_half);
        bad_recip += memcmp(&a, &b, sizeof a) != 0;
        bad_rsqrt += memcmp(&c, &d, sizeof c) != 0;
    }
    CHECK(bad_recip == 0);
    CHECK(bad_rsqrt == 0);
    static const double zs[] = {-1.246, -1.584, -3.65};
    for (size_t i = 0; i < sizeof zs / sizeof zs[0]; i++) {
        const double t = 0.0 + 1.0 + exp(zs[i]);
        CHECK(mg_recip_pow_f64(t) == pow(t, minus_one));
    }
    static const double special[] = {0.0, -0.0, 1.0, 4.0, 1e-310, 1e308, -2.0, INFINITY};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
        const double x = special[i];
        const double a = mg_recip_pow_f64(x), b = pow(x, minus_one);
        CHECK(memcmp(&a, &b, sizeof a) == 0);
        const double c = mg_rsqrt_pow_f64(x), d = pow(x, minus_half);
        CHECK(memcmp(&c, &d, sizeof c) == 0 || (isnan(c) && isnan(d)));
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) g_verbose = 1;
    fprintf(stderr, "test_core: OpenMP %s, max threads %d\n",
            mg_openmp_enabled() ? "on" : "off", mg_get_max_threads());

    test_config_and_sizes();
    test_softmax();
    test_pow_fast_paths();
    test_threads_api();

    /* V, T, L, C, NH and the batch of mg_train_steps */
    static const int configs[][6] = {
        {2, 1, 1, 1, 1, 1},      /* the smallest model */
        {27, 16, 1, 16, 4, 1},   /* the SPEC's default */
        {5, 3, 0, 4, 2, 2},      /* no transformer blocks (C allows L = 0) */
        {13, 7, 2, 12, 3, 3},
        {40, 24, 3, 48, 6, 2},
        {3, 2, 1, 8, 8, 4},      /* head_dim 1 */
        {31, 64, 1, 128, 4, 8},  /* big enough for the OpenMP paths */
    };
    for (int dtype = MG_FLOAT64; dtype <= MG_FLOAT32; dtype++) {
        for (size_t k = 0; k < sizeof configs / sizeof configs[0]; k++) {
            const int *c = configs[k];
            mg_config cfg = make_cfg(c[0], c[1], c[2], c[3], c[4]);
            test_model_use(&cfg, dtype, c[5]);
        }
        test_thread_count_invariance(dtype);
    }

    fprintf(stderr, "test_core: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
