/* model_test.c: the CPU model (core/model.c) against Hugging Face transformers: logits, loss and
 * every gradient of tests/fixtures/hf-qwen2-tiny (dense), the prime13 snapping and the snapped
 * model's logits; finite differences of the full model for a tied and an MQA configuration;
 * frozen parameters; recomputation; token and snapping edge cases. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <primal/safetensors.h>

#include "../core/model.h"

#ifndef PRIMAL_TEST_FIXTURES
#error "define PRIMAL_TEST_FIXTURES as the tests/fixtures directory (a string)"
#endif
#define HF PRIMAL_TEST_FIXTURES "/hf-qwen2-tiny/"

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

static const primal_model_config qwen_tiny = {
    .arch = PRIMAL_ARCH_QWEN2, .vocab = 512, .dim = 64, .layers = 2, .heads = 4,
    .kv_heads = 2, .ffn = 176, .rope_theta = 10000.0, .norm_eps = 1e-6, .tied = 0,
    .qkv_bias = 1,
};

static float prime13_values[13];
static const primal_grid_ref prime13 = {"prime13", prime13_values, 13};

static void prime13_init(void)
{
    static const int den[] = {1, 2, 3, 5, 7, 11};
    int k = 0;
    for (int i = 0; i < 6; i++)
        prime13_values[k++] = (float)(-1.0 / den[i]);
    prime13_values[k++] = 0.0f;
    for (int i = 5; i >= 0; i--)
        prime13_values[k++] = (float)(1.0 / den[i]);
}

static const primal_grid_ref *grid_dense(void *user, const char *name)
{
    (void)user;
    (void)name;
    return NULL;
}

static const primal_grid_ref *grid_user(void *user, const char *name)
{
    (void)name;
    return user;
}

static double relerr(const float *a, const float *b, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num) / (sqrt(den) + 1e-30);
}

static primal_st *open_st(const char *path)
{
    primal_st *st;
    primal_err err;
    int rc = primal_st_open(path, &st, &err);
    cr_assert_eq(rc, PRIMAL_OK, "%s", err.msg);
    return st;
}

/* Every parameter of m from HF weights: matrices through set_matrix (snapped or copied). */
static void load_hf(primal_model *m, primal_st *st)
{
    primal_err err;
    for (int i = 0; i < primal_model_nparams(m); i++) {
        primal_param *p = primal_model_param(m, i);
        if (p->is_matrix) {
            int64_t shape[2] = {p->q.rows, p->q.cols};
            float *w = malloc((size_t)p->n * sizeof(float));
            cr_assert_eq(primal_st_read_f32(st, p->name, 2, shape, w, &err), PRIMAL_OK, "%s",
                         err.msg);
            cr_assert_eq(primal_model_set_matrix(m, p, w, &err), PRIMAL_OK, "%s", err.msg);
            free(w);
        } else {
            int64_t shape[1] = {p->n};
            cr_assert_eq(primal_st_read_f32(st, p->name, 1, shape, p->vec, &err), PRIMAL_OK,
                         "%s", err.msg);
        }
    }
}

/* input_ids (I32 [2,16]) of a fixture file. */
static void read_ids(primal_st *st, int32_t ids[2][16])
{
    const primal_st_tensor *t = primal_st_get(st, "input_ids");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, PRIMAL_I32);
    cr_assert_eq(t->numel, 32);
    memcpy(ids, t->data, sizeof(int32_t) * 32);
}

static float read_scalar(primal_st *st, const char *name)
{
    float v;
    int64_t shape[1] = {1};
    primal_err err;
    cr_assert_eq(primal_st_read_f32(st, name, 1, shape, &v, &err), PRIMAL_OK, "%s", err.msg);
    return v;
}

/* The 16 logits positions: rows extended by a dummy target whose position has mask 0. */
static float forward_16(primal_model *m, int32_t ids[2][16], float *logits)
{
    int32_t tok[2][17];
    uint8_t mask[2][16];
    for (int b = 0; b < 2; b++) {
        memcpy(tok[b], ids[b], sizeof ids[b]);
        tok[b][16] = 0;
        for (int t = 0; t < 16; t++)
            mask[b][t] = t < 15;
    }
    float loss;
    primal_err err;
    cr_assert_eq(primal_model_forward(m, &tok[0][0], &mask[0][0], 2, 16, &loss, logits, &err),
                 PRIMAL_OK, "%s", err.msg);
    return loss;
}

/* A hook that keeps a copy of every G it is given, by parameter id, and counts its calls. */
typedef struct keep {
    int np;
    float **G;
    int *calls;
} keep;

static void keep_init(keep *k, primal_model *m)
{
    k->np = primal_model_nparams(m);
    k->G = calloc((size_t)k->np, sizeof *k->G);
    k->calls = calloc((size_t)k->np, sizeof *k->calls);
}

static void keep_free(keep *k)
{
    for (int i = 0; i < k->np; i++)
        free(k->G[i]);
    free(k->G);
    free(k->calls);
}

static int keep_hook(void *user, primal_param *p, const float *G, int64_t r0, int64_t nrows,
                     primal_err *err)
{
    (void)err;
    keep *k = user;
    int id = p->q.id;
    if (k->G[id] == NULL)
        k->G[id] = calloc((size_t)p->n, sizeof(float));
    memcpy(k->G[id] + r0 * p->q.cols, G, (size_t)(nrows * p->q.cols) * sizeof(float));
    k->calls[id]++;
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Hugging Face parity                                                                        */

Test(model_hf, dense_loss_and_every_gradient_match_transformers)
{
    primal_err err;
    primal_model *m;
    cr_assert_eq(primal_model_create(&qwen_tiny, grid_dense, NULL, &m, &err), PRIMAL_OK, "%s",
                 err.msg);
    primal_st *w = open_st(HF "model.safetensors"), *ex = open_st(HF "expected.safetensors");
    load_hf(m, w);
    int32_t ids[2][16];
    read_ids(ex, ids);

    float loss;
    cr_assert_eq(primal_model_forward(m, &ids[0][0], NULL, 2, 15, &loss, NULL, &err), PRIMAL_OK,
                 "%s", err.msg);
    float want = read_scalar(ex, "loss");
    cr_assert_lt(fabs(loss - want) / fabs(want), 1e-4, "loss %.7g, transformers %.7g", loss,
                 want);

    keep k;
    keep_init(&k, m);
    cr_assert_eq(primal_model_backward(m, 1.0f, keep_hook, &k, &err), PRIMAL_OK, "%s", err.msg);
    int checked = 0;
    for (int i = 0; i < primal_model_nparams(m); i++) {
        primal_param *p = primal_model_param(m, i);
        char name[128];
        snprintf(name, sizeof name, "grad.%s", p->name);
        const primal_st_tensor *t = primal_st_get(ex, name);
        cr_assert_not_null(t, "%s missing from the fixture", name);
        float *g = malloc((size_t)p->n * sizeof(float));
        cr_assert_eq(primal_st_to_f32(ex, t, g, &err), PRIMAL_OK, "%s", err.msg);
        cr_assert_eq(t->numel, p->n, "%s: %lld elements, model has %lld", name,
                     (long long)t->numel, (long long)p->n);
        const float *mine = p->is_matrix ? k.G[i] : p->dvec;
        if (p->is_matrix)
            cr_assert_eq(k.calls[i], 1, "%s: hook called %d times", p->name, k.calls[i]);
        cr_assert_not_null(mine, "%s: no gradient", p->name);
        double e = relerr(mine, g, p->n);
        cr_assert_lt(e, 1e-3, "%s: gradient relative error %.3g", p->name, e);
        free(g);
        checked++;
    }
    cr_assert_eq(checked, 27); /* every tensor of the fixture */
    keep_free(&k);
    primal_st_close(w);
    primal_st_close(ex);
    primal_model_free(m);
}

Test(model_hf, dense_logits_of_all_16_positions_match_transformers)
{
    primal_err err;
    primal_model *m;
    cr_assert_eq(primal_model_create(&qwen_tiny, grid_dense, NULL, &m, &err), PRIMAL_OK, "%s",
                 err.msg);
    primal_st *w = open_st(HF "model.safetensors"), *ex = open_st(HF "expected.safetensors");
    load_hf(m, w);
    int32_t ids[2][16];
    read_ids(ex, ids);
    float *logits = malloc(2 * 16 * 512 * sizeof(float));
    float *want = malloc(2 * 16 * 512 * sizeof(float));
    float loss = forward_16(m, ids, logits);
    int64_t shape[3] = {2, 16, 512};
    cr_assert_eq(primal_st_read_f32(ex, "logits", 3, shape, want, &err), PRIMAL_OK, "%s",
                 err.msg);
    double e = relerr(logits, want, 2 * 16 * 512);
    cr_assert_lt(e, 1e-4, "logits relative error %.3g", e);
    /* the masked-out dummy positions do not count: the loss is still that of 2x15 */
    float wl = read_scalar(ex, "loss");
    cr_assert_lt(fabs(loss - wl) / fabs(wl), 1e-4, "masked loss %.7g, transformers %.7g", loss,
                 wl);
    free(logits);
    free(want);
    primal_st_close(w);
    primal_st_close(ex);
    primal_model_free(m);
}

Test(model_hf, prime13_snapping_matches_the_fixture_bit_for_bit, .init = prime13_init)
{
    primal_err err;
    primal_model *m;
    cr_assert_eq(primal_model_create(&qwen_tiny, grid_user, (void *)&prime13, &m, &err),
                 PRIMAL_OK, "%s", err.msg);
    primal_st *w = open_st(HF "model.safetensors"), *sn = open_st(HF "snapped13.safetensors");
    float grid[13];
    int64_t gshape[1] = {13};
    cr_assert_eq(primal_st_read_f32(sn, "grid", 1, gshape, grid, &err), PRIMAL_OK, "%s",
                 err.msg);
    for (int i = 0; i < 13; i++)
        cr_assert_eq(grid[i], prime13_values[i], "grid[%d]", i);
    load_hf(m, w);

    int matrices = 0;
    for (int i = 0; i < primal_model_nparams(m); i++) {
        primal_param *p = primal_model_param(m, i);
        if (!p->is_matrix)
            continue;
        matrices++;
        cr_assert_eq(p->q.bits, 4, "%s: 13 values are stored in 4 bits", p->name);
        char name[128];
        snprintf(name, sizeof name, "index.%s", p->name);
        const primal_st_tensor *t = primal_st_get(sn, name);
        cr_assert_not_null(t, "%s", name);
        cr_assert_eq(t->dtype, PRIMAL_U8);
        const uint8_t *idx = t->data;
        for (int64_t r = 0; r < p->q.rows; r++)
            for (int64_t c = 0; c < p->q.cols; c++)
                cr_assert_eq(primal_index_get(&p->q, r, c), idx[r * p->q.cols + c],
                             "%s[%lld][%lld]: index %u, fixture %u", p->name, (long long)r,
                             (long long)c, primal_index_get(&p->q, r, c),
                             idx[r * p->q.cols + c]);
        snprintf(name, sizeof name, "scale.%s", p->name);
        float *s = malloc((size_t)p->q.rows * sizeof(float));
        int64_t shape[1] = {p->q.rows};
        cr_assert_eq(primal_st_read_f32(sn, name, 1, shape, s, &err), PRIMAL_OK, "%s", err.msg);
        for (int64_t r = 0; r < p->q.rows; r++)
            cr_assert_leq(fabsf(p->q.scale[r] - s[r]), 1e-6f * fmaxf(1.0f, fabsf(s[r])),
                          "%s: scale[%lld] %g, fixture %g", p->name, (long long)r,
                          p->q.scale[r], s[r]);
        free(s);
    }
    cr_assert_eq(matrices, 16);

    int32_t ids[2][16];
    read_ids(sn, ids);
    float *logits = malloc(2 * 16 * 512 * sizeof(float));
    float *want = malloc(2 * 16 * 512 * sizeof(float));
    float loss16 = forward_16(m, ids, logits);
    int64_t shape[3] = {2, 16, 512};
    cr_assert_eq(primal_st_read_f32(sn, "logits", 3, shape, want, &err), PRIMAL_OK, "%s",
                 err.msg);
    double e = relerr(logits, want, 2 * 16 * 512);
    cr_assert_lt(e, 1e-4, "snapped logits relative error %.3g", e);
    float wl = read_scalar(sn, "loss"), loss;
    cr_assert_lt(fabs(loss16 - wl) / fabs(wl), 1e-4);
    cr_assert_eq(primal_model_forward(m, &ids[0][0], NULL, 2, 15, &loss, NULL, &err), PRIMAL_OK,
                 "%s", err.msg);
    cr_assert_lt(fabs(loss - wl) / fabs(wl), 1e-4, "snapped loss %.7g, fixture %.7g", loss, wl);
    free(logits);
    free(want);
    primal_st_close(w);
    primal_st_close(sn);
    primal_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* Finite differences of the whole model                                                      */

#define FD_B 2
#define FD_T 6

static void random_tokens(int32_t *tok, int n, int vocab, uint64_t seed)
{
    for (int i = 0; i < n; i++)
        tok[i] = (int32_t)(primal_rng_u64(seed, 99, (uint64_t)i) % (uint64_t)vocab);
}

static double fd_loss(primal_model *m, const int32_t *tok)
{
    float loss;
    primal_err err;
    cr_assert_eq(primal_model_forward(m, tok, NULL, FD_B, FD_T, &loss, NULL, &err), PRIMAL_OK,
                 "%s", err.msg);
    return loss;
}

/* Central difference of the float32 loss for one weight; h large enough that float rounding of
 * the loss (~1e-7 relative) stays well below the tolerance. */
static double fd_at(primal_model *m, const int32_t *tok, float *x)
{
    const float h = 1e-2f;
    float x0 = *x;
    *x = x0 + h;
    double lp = fd_loss(m, tok);
    *x = x0 - h;
    double lm = fd_loss(m, tok);
    *x = x0;
    return (lp - lm) / (2.0 * h);
}

static void check_fd(const primal_model_config *mc)
{
    primal_err err;
    primal_model *m;
    cr_assert_eq(primal_model_create(mc, grid_dense, NULL, &m, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_model_init_random(m, 5, 0.3f, &err), PRIMAL_OK, "%s", err.msg);
    /* norms and biases away from their 1 / 0 defaults, so that their gradients are generic */
    for (int i = 0; i < primal_model_nparams(m); i++) {
        primal_param *p = primal_model_param(m, i);
        if (!p->is_matrix)
            for (int64_t j = 0; j < p->n; j++)
                p->vec[j] += 0.3f * (primal_rng_u01(3, (uint64_t)i, (uint64_t)j) - 0.5f);
    }
    int32_t tok[FD_B * (FD_T + 1)];
    random_tokens(tok, FD_B * (FD_T + 1), mc->vocab, 11);
    fd_loss(m, tok);
    keep k;
    keep_init(&k, m);
    cr_assert_eq(primal_model_backward(m, 1.0f, keep_hook, &k, &err), PRIMAL_OK, "%s", err.msg);

    int checked = 0;
    for (int i = 0; i < primal_model_nparams(m); i++) {
        primal_param *p = primal_model_param(m, i);
        const float *an = p->is_matrix ? k.G[i] : p->dvec;
        cr_assert_not_null(an, "%s: no gradient", p->name);
        /* three random elements of every tensor */
        for (int s = 0; s < 3; s++) {
            int64_t j = (int64_t)(primal_rng_u64(17, (uint64_t)i, (uint64_t)s) % (uint64_t)p->n);
            if (p->layer == PRIMAL_LAYER_EMBED) /* a row the tokens use, else G is 0 */
                j = (int64_t)tok[s] * p->q.cols + j % p->q.cols;
            float *x = p->is_matrix ? &p->q.dense[j] : &p->vec[j];
            double fd = fd_at(m, tok, x);
            double e = fabs(fd - an[j]);
            cr_assert_leq(e, 1e-2 * fabs(an[j]) + 1e-4,
                          "%s[%lld]: backward %.6g, finite diff %.6g", p->name, (long long)j,
                          an[j], fd);
            checked++;
        }
    }
    cr_assert_gt(checked, 30);
    keep_free(&k);
    primal_model_free(m);
}

Test(model_fd, tied_model_gradients_match_finite_differences)
{
    primal_model_config mc = {.arch = PRIMAL_ARCH_LLAMA, .vocab = 23, .dim = 16, .layers = 2,
                              .heads = 4, .kv_heads = 2, .ffn = 24, .rope_theta = 500.0,
                              .norm_eps = 1e-5, .tied = 1, .qkv_bias = 1};
    check_fd(&mc);
}

Test(model_fd, mqa_model_gradients_match_finite_differences)
{
    primal_model_config mc = {.arch = PRIMAL_ARCH_LLAMA, .vocab = 19, .dim = 16, .layers = 2,
                              .heads = 4, .kv_heads = 1, .ffn = 20, .rope_theta = 10000.0,
                              .norm_eps = 1e-5, .tied = 0, .qkv_bias = 0};
    check_fd(&mc);
}

Test(model_fd, scale_gradients_of_an_indexed_model_match_finite_differences,
     .init = prime13_init)
{
    primal_model_config mc = {.arch = PRIMAL_ARCH_QWEN2, .vocab = 21, .dim = 16, .layers = 2,
                              .heads = 4, .kv_heads = 2, .ffn = 24, .rope_theta = 10000.0,
                              .norm_eps = 1e-5, .tied = 1, .qkv_bias = 1};
    primal_err err;
    primal_model *m;
    cr_assert_eq(primal_model_create(&mc, grid_user, (void *)&prime13, &m, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_init_random(m, 8, 0.3f, &err), PRIMAL_OK);
    int32_t tok[FD_B * (FD_T + 1)];
    random_tokens(tok, FD_B * (FD_T + 1), mc.vocab, 12);
    fd_loss(m, tok);
    primal_model_zero_grad(m);
    cr_assert_eq(primal_model_backward(m, 1.0f, NULL, NULL, &err), PRIMAL_OK, "%s", err.msg);
    int checked = 0;
    for (int i = 0; i < primal_model_nparams(m); i++) {
        primal_param *p = primal_model_param(m, i);
        if (!p->is_matrix)
            continue;
        cr_assert_not_null(p->dscale, "%s", p->name);
        for (int s = 0; s < 2; s++) {
            int64_t r = (int64_t)(primal_rng_u64(23, (uint64_t)i, (uint64_t)s) %
                                  (uint64_t)p->q.rows);
            if (p->layer == PRIMAL_LAYER_EMBED)
                r = tok[s];
            /* the scale is about 0.6 here: a step of 1e-2 keeps the loss's rounding small */
            double fd = fd_at(m, tok, &p->q.scale[r]);
            cr_assert_leq(fabs(fd - p->dscale[r]), 1e-2 * fabs(p->dscale[r]) + 1e-4,
                          "%s: dscale[%lld] %.6g, finite diff %.6g", p->name, (long long)r,
                          p->dscale[r], fd);
            checked++;
        }
    }
    cr_assert_eq(checked, 2 * (1 + 2 * 7));
    primal_model_free(m);
}

Test(model_fd, tied_model_has_no_head_and_one_hook_call_for_the_embedding)
{
    primal_model_config mc = {.arch = PRIMAL_ARCH_LLAMA, .vocab = 23, .dim = 16, .layers = 1,
                              .heads = 2, .kv_heads = 2, .ffn = 24, .rope_theta = 500.0,
                              .norm_eps = 1e-5, .tied = 1};
    primal_err err;
    primal_model *m;
    cr_assert_eq(primal_model_create(&mc, grid_dense, NULL, &m, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_null(primal_model_find(m, "lm_head.weight"));
    cr_assert_eq(primal_model_nparams(m), 1 + 9 + 1);
    primal_model_init_random(m, 1, 0.5f, &err);
    int32_t tok[2 * 5];
    random_tokens(tok, 10, 23, 4);
    float loss;
    cr_assert_eq(primal_model_forward(m, tok, NULL, 2, 4, &loss, NULL, &err), PRIMAL_OK);
    keep k;
    keep_init(&k, m);
    cr_assert_eq(primal_model_backward(m, 1.0f, keep_hook, &k, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(k.calls[0], 1);
    /* rows of tokens that never appear as inputs still get the head's part of the gradient */
    int seen[23] = {0};
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < 4; t++)
            seen[tok[b * 5 + t]] = 1;
    int r = 0;
    while (seen[r])
        r++;
    double s = 0.0;
    for (int c = 0; c < 16; c++)
        s += fabs(k.G[0][r * 16 + c]);
    cr_assert_gt(s, 0.0, "row %d of the tied embedding got no head gradient", r);
    keep_free(&k);
    primal_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* Frozen parameters, recomputation                                                           */

static primal_model *small_indexed(int layers, int recompute)
{
    primal_model_config mc = {.arch = PRIMAL_ARCH_QWEN2, .vocab = 40, .dim = 32, .layers = layers,
                              .heads = 4, .kv_heads = 2, .ffn = 48, .rope_theta = 10000.0,
                              .norm_eps = 1e-6, .tied = 0, .qkv_bias = 1};
    primal_err err;
    primal_model *m;
    cr_assert_eq(primal_model_create(&mc, grid_user, (void *)&prime13, &m, &err), PRIMAL_OK,
                 "%s", err.msg);
    cr_assert_eq(primal_model_init_random(m, 9, 0.1f, &err), PRIMAL_OK, "%s", err.msg);
    primal_model_opts o = {.threads = 0, .recompute = recompute};
    primal_model_set_opts(m, &o);
    return m;
}

Test(model_frozen, only_the_last_block_and_head_get_hooks_and_buffers, .init = prime13_init)
{
    primal_err err;
    primal_model *full = small_indexed(3, 0), *m = small_indexed(3, 0);
    int np = primal_model_nparams(m);
    int32_t tok[3 * 9];
    random_tokens(tok, 27, 40, 8);
    float loss;

    keep kf, k;
    keep_init(&kf, full);
    cr_assert_eq(primal_model_forward(full, tok, NULL, 3, 8, &loss, NULL, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_backward(full, 1.0f, keep_hook, &kf, &err), PRIMAL_OK);

    uint8_t *tr = calloc((size_t)np, 1);
    for (int i = 0; i < np; i++) {
        primal_param *p = primal_model_param(m, i);
        tr[i] = p->layer == 2 || p->layer == PRIMAL_LAYER_HEAD;
    }
    primal_model_mem before, after;
    primal_model_memory(m, &before);
    cr_assert_eq(primal_model_set_trainable(m, tr, &err), PRIMAL_OK, "%s", err.msg);
    primal_model_memory(m, &after);
    cr_assert_lt(after.grads, before.grads);
    keep_init(&k, m);
    cr_assert_eq(primal_model_forward(m, tok, NULL, 3, 8, &loss, NULL, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_backward(m, 1.0f, keep_hook, &k, &err), PRIMAL_OK, "%s", err.msg);
    int hooked = 0;
    for (int i = 0; i < np; i++) {
        primal_param *p = primal_model_param(m, i);
        primal_param *pf = primal_model_param(full, i);
        if (!tr[i]) {
            cr_assert_eq(k.calls[i], 0, "%s is frozen but its hook was called", p->name);
            cr_assert_null(p->dvec, "%s is frozen but has a gradient buffer", p->name);
            cr_assert_null(p->dscale, "%s is frozen but has a scale gradient", p->name);
            continue;
        }
        if (p->is_matrix) {
            hooked++;
            cr_assert_eq(k.calls[i], 1, "%s", p->name);
            cr_assert_lt(relerr(k.G[i], kf.G[i], p->n), 1e-5, "%s", p->name);
            cr_assert_lt(relerr(p->dscale, pf->dscale, p->q.rows), 1e-5, "%s", p->name);
        } else {
            cr_assert_not_null(p->dvec, "%s", p->name);
            cr_assert_lt(relerr(p->dvec, pf->dvec, p->n), 1e-5, "%s", p->name);
        }
    }
    cr_assert_eq(hooked, 7 + 1, "the last block's 7 matrices and the head");
    free(tr);
    keep_free(&k);
    keep_free(&kf);
    primal_model_free(m);
    primal_model_free(full);
}

Test(model_frozen, any_single_trainable_parameter_gets_the_gradient_of_a_full_backward,
     .init = prime13_init)
{
    /* Backward skips the stages that lead to no trainable parameter; each single-parameter
     * set must still get exactly the gradient that a fully trainable backward computes. */
    primal_err err;
    primal_model *full = small_indexed(3, 0), *m = small_indexed(3, 0);
    int np = primal_model_nparams(m);
    int32_t tok[2 * 8];
    random_tokens(tok, 16, 40, 6);
    float loss;
    keep kf;
    keep_init(&kf, full);
    cr_assert_eq(primal_model_forward(full, tok, NULL, 2, 7, &loss, NULL, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_backward(full, 1.0f, keep_hook, &kf, &err), PRIMAL_OK);
    uint8_t *tr = calloc((size_t)np, 1);
    for (int i = 0; i < np; i++) {
        primal_param *p = primal_model_param(m, i);
        if (p->layer == 0 || p->layer == 2)
            continue; /* block 1 (between two frozen blocks), embedding, final norm, head */
        memset(tr, 0, (size_t)np);
        tr[i] = 1;
        cr_assert_eq(primal_model_set_trainable(m, tr, &err), PRIMAL_OK);
        primal_model_zero_grad(m);
        keep k;
        keep_init(&k, m);
        cr_assert_eq(primal_model_forward(m, tok, NULL, 2, 7, &loss, NULL, &err), PRIMAL_OK);
        cr_assert_eq(primal_model_backward(m, 1.0f, keep_hook, &k, &err), PRIMAL_OK);
        primal_param *pf = primal_model_param(full, i);
        if (p->is_matrix) {
            cr_assert_eq(k.calls[i], 1, "%s", p->name);
            cr_assert_lt(relerr(k.G[i], kf.G[i], p->n), 1e-5, "%s alone", p->name);
            cr_assert_lt(relerr(p->dscale, pf->dscale, p->q.rows), 1e-5, "%s alone", p->name);
        } else {
            cr_assert_lt(relerr(p->dvec, pf->dvec, p->n), 1e-5, "%s alone", p->name);
        }
        for (int j = 0; j < np; j++)
            cr_assert(j == i || k.calls[j] == 0);
        keep_free(&k);
    }
    free(tr);
    keep_free(&kf);
    primal_model_free(m);
    primal_model_free(full);
}

Test(model_frozen, recomputation_gives_the_same_gradients, .init = prime13_init)
{
    primal_err err;
    primal_model *a = small_indexed(2, 0), *b = small_indexed(2, 1);
    int32_t tok[2 * 11];
    random_tokens(tok, 22, 40, 2);
    float la, lb;
    keep ka, kb;
    keep_init(&ka, a);
    keep_init(&kb, b);
    cr_assert_eq(primal_model_forward(a, tok, NULL, 2, 10, &la, NULL, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_backward(a, 0.5f, keep_hook, &ka, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_forward(b, tok, NULL, 2, 10, &lb, NULL, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_backward(b, 0.5f, keep_hook, &kb, &err), PRIMAL_OK);
    cr_assert_float_eq(la, lb, 1e-6);
    primal_model_mem ma, mb;
    primal_model_memory(a, &ma);
    primal_model_memory(b, &mb);
    cr_assert_lt(mb.activations, ma.activations);
    for (int i = 0; i < primal_model_nparams(a); i++) {
        primal_param *pa = primal_model_param(a, i), *pb = primal_model_param(b, i);
        if (pa->is_matrix) {
            cr_assert_lt(relerr(kb.G[i], ka.G[i], pa->n), 1e-6, "%s", pa->name);
            cr_assert_lt(relerr(pb->dscale, pa->dscale, pa->q.rows), 1e-6, "%s", pa->name);
        } else {
            cr_assert_lt(relerr(pb->dvec, pa->dvec, pa->n), 1e-6, "%s", pa->name);
        }
    }
    keep_free(&ka);
    keep_free(&kb);
    primal_model_free(a);
    primal_model_free(b);
}

Test(model_frozen, two_threads_give_the_gradients_of_one, .init = prime13_init)
{
    /* Large enough that every product and loop is split among the threads. */
    primal_model_config mc = {.arch = PRIMAL_ARCH_QWEN2, .vocab = 300, .dim = 128, .layers = 2,
                              .heads = 4, .kv_heads = 2, .ffn = 256, .rope_theta = 10000.0,
                              .norm_eps = 1e-6, .tied = 1, .qkv_bias = 1};
    primal_err err;
    primal_model *m;
    cr_assert_eq(primal_model_create(&mc, grid_user, (void *)&prime13, &m, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_init_random(m, 2, 0.05f, &err), PRIMAL_OK);
    int32_t tok[4 * 65];
    random_tokens(tok, 4 * 65, 300, 5);
    float loss[2];
    keep k[2];
    for (int run = 0; run < 2; run++) {
        primal_model_opts o = {.threads = run + 1};
        primal_model_set_opts(m, &o);
        primal_model_zero_grad(m);
        keep_init(&k[run], m);
        cr_assert_eq(primal_model_forward(m, tok, NULL, 4, 64, &loss[run], NULL, &err),
                     PRIMAL_OK);
        cr_assert_eq(primal_model_backward(m, 1.0f, keep_hook, &k[run], &err), PRIMAL_OK);
    }
    cr_assert_float_eq(loss[0], loss[1], 1e-5);
    for (int i = 0; i < primal_model_nparams(m); i++) {
        primal_param *p = primal_model_param(m, i);
        if (p->is_matrix)
            cr_assert_lt(relerr(k[1].G[i], k[0].G[i], p->n), 1e-5, "%s", p->name);
    }
    keep_free(&k[0]);
    keep_free(&k[1]);
    primal_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* Edge cases                                                                                 */

Test(model_edges, a_token_outside_the_vocabulary_is_refused_with_row_position_and_value,
     .init = prime13_init)
{
    primal_model *m = small_indexed(1, 0);
    int32_t tok[2 * 5];
    random_tokens(tok, 10, 40, 1);
    tok[5 + 3] = 40;
    float loss;
    primal_err err;
    int rc = primal_model_forward(m, tok, NULL, 2, 4, &loss, NULL, &err);
    cr_assert_neq(rc, PRIMAL_OK);
    cr_assert(strstr(err.msg, "row 1") && strstr(err.msg, "position 3") &&
                  strstr(err.msg, "40"),
              "message: %s", err.msg);
    tok[5 + 3] = -2;
    rc = primal_model_forward(m, tok, NULL, 2, 4, &loss, NULL, &err);
    cr_assert_neq(rc, PRIMAL_OK);
    cr_assert(strstr(err.msg, "-2"), "message: %s", err.msg);
    cr_assert_neq(primal_model_backward(m, 1.0f, NULL, NULL, &err), PRIMAL_OK,
                  "backward after a refused forward");
    primal_model_free(m);
}

Test(model_edges, snapping_ties_go_to_the_lower_index_and_zero_rows_get_scale_1)
{
    static const float g4[4] = {-1.0f, 0.0f, 0.5f, 1.0f};
    primal_grid_ref gr = {"g4", g4, 4};
    primal_model_config mc = {.arch = PRIMAL_ARCH_LLAMA, .vocab = 3, .dim = 4, .layers = 1,
                              .heads = 1, .kv_heads = 1, .ffn = 4, .rope_theta = 10000.0,
                              .norm_eps = 1e-6, .tied = 1};
    primal_err err;
    primal_model *m;
    cr_assert_eq(primal_model_create(&mc, grid_user, &gr, &m, &err), PRIMAL_OK, "%s", err.msg);
    primal_param *e = primal_model_find(m, "model.embed_tokens.weight");
    /* row 0: scale 2, w/scale = 1, 0.25 (tie 0 | 0.5), 0.75 (tie 0.5 | 1), -0.5 (tie -1 | 0)
     * row 1: all zero; row 2: scale 4, w/scale = -1, -0.2 (nearer 0), 0.3 (nearer 0.5), 0 */
    const float w[12] = {2.0f, 0.5f, 1.5f, -1.0f, 0, 0, 0, 0, -4.0f, -0.8f, 1.2f, 0.0f};
    cr_assert_eq(primal_model_set_matrix(m, e, w, &err), PRIMAL_OK, "%s", err.msg);
    const uint32_t want[12] = {3, 1, 2, 0, 1, 1, 1, 1, 0, 1, 2, 1};
    for (int i = 0; i < 12; i++)
        cr_assert_eq(primal_index_get(&e->q, i / 4, i % 4), want[i], "element %d", i);
    cr_assert_eq(e->q.scale[0], 2.0f);
    cr_assert_eq(e->q.scale[1], 1.0f);
    cr_assert_eq(e->q.scale[2], 4.0f);
    float rows[12];
    primal_model_get_rows(m, e, 0, 3, rows);
    cr_assert_eq(rows[1], 0.0f);
    cr_assert_eq(rows[2], 1.0f);
    cr_assert_eq(rows[11], 0.0f);
    cr_assert_eq(rows[10], 2.0f);
    float bad[12] = {0};
    bad[5] = NAN;
    cr_assert_neq(primal_model_set_matrix(m, e, bad, &err), PRIMAL_OK);
    cr_assert(strstr(err.msg, "[1][1]"), "message: %s", err.msg);
    primal_model_free(m);
}

Test(model_edges, random_init_is_reproducible_normal_and_snapped_per_row, .init = prime13_init)
{
    primal_model_config mc = {.arch = PRIMAL_ARCH_LLAMA, .vocab = 300, .dim = 64, .layers = 1,
                              .heads = 4, .kv_heads = 4, .ffn = 96, .rope_theta = 10000.0,
                              .norm_eps = 1e-6};
    primal_err err;
    primal_model *d, *a, *b;
    cr_assert_eq(primal_model_create(&mc, grid_dense, NULL, &d, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_create(&mc, grid_user, (void *)&prime13, &a, &err), PRIMAL_OK);
    cr_assert_eq(primal_model_create(&mc, grid_user, (void *)&prime13, &b, &err), PRIMAL_OK);
    primal_model_init_random(d, 3, 0.02f, &err);
    primal_model_init_random(a, 3, 0.02f, &err);
    primal_model_init_random(b, 3, 0.02f, &err);
    /* dense: N(0, 0.02) over 300*64 draws */
    primal_param *pd = primal_model_find(d, "model.embed_tokens.weight");
    double s1 = 0, s2 = 0;
    for (int64_t i = 0; i < pd->n; i++) {
        s1 += pd->q.dense[i];
        s2 += (double)pd->q.dense[i] * pd->q.dense[i];
    }
    double mean = s1 / pd->n, sd = sqrt(s2 / pd->n - mean * mean);
    cr_assert_lt(fabs(mean), 0.02 * 4 / sqrt((double)pd->n));
    cr_assert_lt(fabs(sd - 0.02), 0.02 * 0.03);
    /* indexed: same seed, same indices; every row reaches ±1 (its absmax element); the scale
     * is that row's absmax of the dense draw */
    for (int i = 0; i < primal_model_nparams(a); i++) {
        primal_param *p = primal_model_param(a, i), *q = primal_model_param(b, i);
        primal_param *r = primal_model_param(d, i);
        if (!p->is_matrix) {
            cr_assert_eq(p->vec[0], strstr(p->name, "norm") ? 1.0f : 0.0f);
            continue;
        }
        cr_assert_eq(memcmp(p->q.index, q->q.index, (size_t)(p->q.rows * p->q.row_stride)), 0);
        for (int64_t row = 0; row < p->q.rows; row++) {
            int ends = 0;
            float mx = 0;
            for (int64_t c = 0; c < p->q.cols; c++) {
                uint32_t v = primal_index_get(&p->q, row, c);
                ends += v == 0 || v == 12;
                mx = fmaxf(mx, fabsf(r->q.dense[row * p->q.cols + c]));
            }
            cr_assert_geq(ends, 1, "%s row %lld", p->name, (long long)row);
            cr_assert_eq(p->q.scale[row], mx, "%s row %lld", p->name, (long long)row);
        }
    }
    primal_model_init_random(b, 4, 0.02f, &err);
    primal_param *pa = primal_model_param(a, 0), *pb = primal_model_param(b, 0);
    cr_assert_neq(memcmp(pa->q.index, pb->q.index, (size_t)(pa->q.rows * pa->q.row_stride)), 0);
    primal_model_free(d);
    primal_model_free(a);
    primal_model_free(b);
}

Test(model_edges, memory_counts_packed_indices_scales_and_vectors, .init = prime13_init)
{
    primal_model *m = small_indexed(2, 0);
    primal_model_mem mm;
    primal_model_memory(m, &mm);
    /* dim 32, ffn 48, kv 16, vocab 40, 2 layers, qkv bias, untied; 4-bit: cols/2 bytes a row */
    size_t layer = (32 * 16 + 16 * 16 * 2 + 32 * 16 + 48 * 16 * 2 + 32 * 24) /* indices */
                   + 4 * (32 + 16 + 16 + 32 + 48 + 48 + 32)                   /* scales */
                   + 4 * (32 + 16 + 16)                                       /* biases */
                   + 4 * (32 + 32);                                           /* norms */
    size_t want = 2 * (40 * 16 + 4 * 40) + 2 * layer + 4 * 32;
    cr_assert_eq(mm.weights, want, "weights %zu, expected %zu", mm.weights, want);
    size_t grads = 2 * 4 * 40 + 2 * 4 * (32 + 16 + 16 + 32 + 48 + 48 + 32 + 32 + 16 + 16 + 64) +
                   4 * 32;
    cr_assert_eq(mm.grads, grads, "grads %zu, expected %zu", mm.grads, grads);
    cr_assert_eq(mm.activations, 0);
    int32_t tok[9];
    random_tokens(tok, 9, 40, 1);
    float loss;
    primal_err err;
    cr_assert_eq(primal_model_forward(m, tok, NULL, 1, 8, &loss, NULL, &err), PRIMAL_OK);
    primal_model_memory(m, &mm);
    cr_assert_gt(mm.activations, (size_t)3 * 8 * 32 * 4);
    primal_model_free(m);
}
