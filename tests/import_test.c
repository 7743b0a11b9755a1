/* import_test.c: core/hfimport.c and core/evaluate.c against the Hugging Face reference in
 * tests/fixtures/hf-qwen2-tiny (README there): snapped13.safetensors holds the prime13 indices
 * and scales that transformers-side snapping gives, and the snapped model's logits and loss;
 * expected.safetensors holds the float model's logits, loss and every parameter's gradient
 * (float64, stored as float32).  Tolerances are the README's: 1e-4 relative for logits and
 * loss, 1e-3 for gradients (norm of the difference over the norm of the reference). */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include <primal/safetensors.h>

#include "checkpoint.h"
#include "evaluate.h"
#include "hfimport.h"
#include "model.h"

#define TINY_DIR PRIMAL_TEST_FIXTURES "/hf-qwen2-tiny"

static char tmpdir[256];
static float prime13[13];
static primal_grid_ref g13 = { "prime13", prime13, 13 };

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/primal_import_test.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    /* SPEC.md, "Grids": -1, -1/2, -1/3, -1/5, -1/7, -1/11, 0, 1/11, ..., 1 */
    static const int den[] = { 1, 2, 3, 5, 7, 11 };
    int k = 0;
    for (int i = 0; i < 6; i++)
        prime13[k++] = (float)(-1.0 / den[i]);
    prime13[k++] = 0.0f;
    for (int i = 5; i >= 0; i--)
        prime13[k++] = (float)(1.0 / den[i]);
}

static void teardown(void)
{
    DIR *d = opendir(tmpdir);
    if (d == NULL)
        return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

TestSuite(import, .init = setup, .fini = teardown);

static double rel_err(const float *a, const float *ref, int64_t n)
{
    double d = 0.0, r = 0.0;
    for (int64_t i = 0; i < n; i++) {
        d += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

static float *read_all(const primal_st *st, const char *name, int64_t *n)
{
    const primal_st_tensor *t = primal_st_get(st, name);
    cr_assert_not_null(t, "%s: no tensor %s", primal_st_path(st), name);
    float *v = malloc((size_t)t->numel * sizeof *v);
    primal_err err = { 0 };
    cr_assert_eq(primal_st_to_f32(st, t, v, &err), PRIMAL_OK, "%s", err.msg);
    *n = t->numel;
    return v;
}

static int32_t *input_ids(const primal_st *st, int *B, int *T)
{
    const primal_st_tensor *t = primal_st_get(st, "input_ids");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, PRIMAL_I32);
    cr_assert_eq(t->ndim, 2);
    *B = (int)t->shape[0];
    *T = (int)t->shape[1];
    int32_t *ids = malloc(t->nbytes);
    memcpy(ids, t->data, t->nbytes);
    return ids;
}

Test(import, the_fixture_grid_is_the_spec_prime13)
{
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(TINY_DIR "/snapped13.safetensors", &st, &err), PRIMAL_OK);
    int64_t n;
    float *g = read_all(st, "grid", &n);
    cr_assert_eq(n, 13);
    cr_assert_eq(memcmp(g, prime13, sizeof prime13), 0);
    free(g);
    primal_st_close(st);
}

Test(import, prime13_import_matches_the_reference_snapping)
{
    const char *out = "/prime13.safetensors";
    char path[512];
    snprintf(path, sizeof path, "%s%s", tmpdir, out);
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_import(TINY_DIR, &g13, path, "[grid]\nplugin = prime13\n", &err),
                 PRIMAL_OK, "%s", err.msg);

    primal_ckpt *c;
    cr_assert_eq(primal_ckpt_open(path, &c, &err), PRIMAL_OK, "%s", err.msg);
    primal_model_config mc;
    primal_ckpt_model_config(c, &mc, &err);
    primal_model *m;
    cr_assert_eq(primal_model_create(&mc, primal_ckpt_grid_for, c, &m, &err), PRIMAL_OK);
    cr_assert_eq(primal_ckpt_load_model(c, m, &err), PRIMAL_OK, "%s", err.msg);

    primal_st *ref, *hf;
    cr_assert_eq(primal_st_open(TINY_DIR "/snapped13.safetensors", &ref, &err), PRIMAL_OK);
    cr_assert_eq(primal_st_open(TINY_DIR "/model.safetensors", &hf, &err), PRIMAL_OK);
    int matrices = 0;
    for (int i = 0; i < primal_model_nparams(m); i++) {
        primal_param *p = primal_model_param(m, i);
        char name[160];
        if (!p->is_matrix) {
            /* 1-D tensors unchanged, bit for bit. */
            const primal_st_tensor *t = primal_st_get(hf, p->name);
            cr_assert_eq(memcmp(p->vec, t->data, t->nbytes), 0, "%s", p->name);
            continue;
        }
        matrices++;
        cr_assert_eq(p->q.bits, 4);
        snprintf(name, sizeof name, "index.%s", p->name);
        const primal_st_tensor *ti = primal_st_get(ref, name);
        cr_assert_not_null(ti, "%s", name);
        cr_assert_eq(ti->dtype, PRIMAL_U8);
        const uint8_t *want = ti->data;
        for (int64_t r = 0; r < p->q.rows; r++)
            for (int64_t col = 0; col < p->q.cols; col++)
                cr_assert_eq(primal_index_get(&p->q, r, col), want[r * p->q.cols + col],
                             "%s [%lld][%lld]", p->name, (long long)r, (long long)col);
        snprintf(name, sizeof name, "scale.%s", p->name);
        int64_t n;
        float *s = read_all(ref, name, &n);
        cr_assert_eq(n, p->q.rows);
        for (int64_t r = 0; r < n; r++)
            cr_assert(fabsf(p->q.scale[r] - s[r]) <= 1e-6f * fabsf(s[r]), "%s [%lld]: %g vs %g",
                      p->name, (long long)r, p->q.scale[r], s[r]);
        free(s);
    }
    cr_assert_eq(matrices, 2 + 2 * 7);

    /* The snapped model computes what the reference's snapped model computes. */
    primal_st *ref_st;
    cr_assert_eq(primal_st_open(TINY_DIR "/expected.safetensors", &ref_st, &err), PRIMAL_OK);
    int B, T;
    int32_t *ids = input_ids(ref_st, &B, &T);
    int64_t nl, n1;
    float *want_logits = read_all(ref, "logits", &nl), *want_loss = read_all(ref, "loss", &n1);
    cr_assert_eq(nl, (int64_t)B * T * mc.vocab);
    float *logits = malloc((size_t)nl * sizeof *logits), loss;
    cr_assert_eq(primal_eval_batch(m, ids, B, T, logits, &loss, NULL, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_lt(rel_err(logits, want_logits, nl), 1e-4, "logits: %g",
                 rel_err(logits, want_logits, nl));
    cr_assert_lt(fabsf(loss - want_loss[0]), 1e-4f * want_loss[0], "loss %g vs %g", loss,
                 want_loss[0]);
    cr_assert_str_eq(primal_ckpt_config_ini(c), "[grid]\nplugin = prime13\n");
    free(ids);
    free(logits);
    free(want_logits);
    free(want_loss);
    primal_st_close(ref_st);
    primal_st_close(ref);
    primal_st_close(hf);
    primal_model_free(m);
    primal_ckpt_close(c);
}

Test(import, dense_model_matches_reference_logits_loss_and_gradients)
{
    primal_model *m;
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_load_model(TINY_DIR, NULL, NULL, &m, &err), PRIMAL_OK, "%s",
                 err.msg);
    primal_st *ref_st;
    cr_assert_eq(primal_st_open(TINY_DIR "/expected.safetensors", &ref_st, &err), PRIMAL_OK);
    int B, T;
    int32_t *ids = input_ids(ref_st, &B, &T);
    int64_t nl, n1;
    float *want_logits = read_all(ref_st, "logits", &nl), *want_loss = read_all(ref_st, "loss", &n1);
    int np = primal_model_nparams(m);
    float **grad = calloc((size_t)np, sizeof *grad);
    for (int i = 0; i < np; i++)
        grad[i] = calloc((size_t)primal_model_param(m, i)->n, sizeof(float));
    primal_eval_grads g = { grad, NULL };
    float *logits = malloc((size_t)nl * sizeof *logits), loss;
    cr_assert_eq(primal_eval_batch(m, ids, B, T, logits, &loss, &g, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_lt(rel_err(logits, want_logits, nl), 1e-4, "logits: %g",
                 rel_err(logits, want_logits, nl));
    cr_assert_lt(fabsf(loss - want_loss[0]), 1e-4f * want_loss[0], "loss %g vs %g", loss,
                 want_loss[0]);
    for (int i = 0; i < np; i++) {
        primal_param *p = primal_model_param(m, i);
        char name[160];
        snprintf(name, sizeof name, "grad.%s", p->name);
        int64_t n;
        float *want = read_all(ref_st, name, &n);
        cr_assert_eq(n, p->n);
        double e = rel_err(grad[i], want, n);
        cr_assert_lt(e, 1e-3, "%s: relative error %g", name, e);
        free(want);
        free(grad[i]);
    }
    free(grad);
    free(ids);
    free(logits);
    free(want_logits);
    free(want_loss);
    primal_st_close(ref_st);
    primal_model_free(m);
}

/* A copy of the tiny model in tmpdir, with config.json text cfg, leaving out the tensor skip
 * and adding a tensor extra (each may be NULL); tensors converted to dtype (F32, F16, BF16). */
static void copy_model(const char *cfg, const char *skip, const char *extra, primal_dtype dt)
{
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    FILE *f = fopen(path, "w");
    fputs(cfg, f);
    fclose(f);
    primal_st *st;
    primal_stw *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(TINY_DIR "/model.safetensors", &st, &err), PRIMAL_OK);
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    cr_assert_eq(primal_stw_begin(path, &w, &err), PRIMAL_OK);
    void **keep = calloc((size_t)primal_st_count(st), sizeof *keep);
    for (int i = 0; i < primal_st_count(st); i++) {
        const primal_st_tensor *t = primal_st_at(st, i);
        if (skip != NULL && strcmp(t->name, skip) == 0)
            continue;
        const void *data = t->data;
        if (dt != PRIMAL_F32) {
            /* BF16: round the float to nearest even on its top 16 bits; F16: the compiler's
             * conversion. */
            uint16_t *h = malloc((size_t)t->numel * 2);
            for (int64_t k = 0; k < t->numel; k++) {
                float x;
                memcpy(&x, (const char *)t->data + 4 * k, 4);
                if (dt == PRIMAL_BF16) {
                    uint32_t u;
                    memcpy(&u, &x, 4);
                    h[k] = (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
                } else {
                    _Float16 y = (_Float16)x;
                    memcpy(&h[k], &y, 2);
                }
            }
            keep[i] = h;
            data = h;
        }
        cr_assert_eq(primal_stw_add(w, t->name, dt, t->ndim, t->shape, data, &err), PRIMAL_OK);
    }
    static const float one[4] = { 1, 1, 1, 1 };
    if (extra != NULL)
        cr_assert_eq(primal_stw_add(w, extra, PRIMAL_F32, 1, (int64_t[]){ 4 }, one, &err),
                     PRIMAL_OK);
    cr_assert_eq(primal_stw_commit(w, &err), PRIMAL_OK, "%s", err.msg);
    for (int i = 0; i < primal_st_count(st); i++)
        free(keep[i]);
    free(keep);
    primal_st_close(st);
}

static char *tiny_config(const char *from, const char *to)
{
    FILE *f = fopen(TINY_DIR "/config.json", "r");
    static char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (from != NULL) {
        char *at = strstr(buf, from);
        cr_assert_not_null(at);
        static char out[4096];
        snprintf(out, sizeof out, "%.*s%s%s", (int)(at - buf), buf, to, at + strlen(from));
        return out;
    }
    return buf;
}

Test(import, refuses_a_tensor_the_architecture_does_not_have)
{
    copy_model(tiny_config(NULL, NULL), NULL, "model.layers.0.self_attn.q_norm.weight",
               PRIMAL_F32);
    primal_model *m;
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_load_model(tmpdir, NULL, NULL, &m, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "tensor model.layers.0.self_attn.q_norm.weight is not part of")
                  != NULL,
              "%s", err.msg);
}

Test(import, refuses_a_missing_tensor)
{
    copy_model(tiny_config(NULL, NULL), "model.layers.1.input_layernorm.weight", NULL,
               PRIMAL_F32);
    primal_model *m;
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_load_model(tmpdir, NULL, NULL, &m, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "tensor model.layers.1.input_layernorm.weight: missing") != NULL,
              "%s", err.msg);
}

Test(import, a_tied_model_needs_no_lm_head)
{
    copy_model(tiny_config("\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true"),
               "lm_head.weight", NULL, PRIMAL_F32);
    primal_model *m;
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_load_model(tmpdir, NULL, NULL, &m, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert(primal_model_cfg(m)->tied);
    cr_assert_null(primal_model_find(m, "lm_head.weight"));
    primal_model_free(m);
}

Test(import, reads_bf16_and_f16_weights)
{
    /* 1-D tensors survive the round trip through the narrow type as the narrow value. */
    for (int pass = 0; pass < 2; pass++) {
        primal_dtype dt = pass ? PRIMAL_F16 : PRIMAL_BF16;
        copy_model(tiny_config(NULL, NULL), NULL, NULL, dt);
        primal_model *m;
        primal_err err = { 0 };
        cr_assert_eq(primal_hf_load_model(tmpdir, NULL, NULL, &m, &err), PRIMAL_OK, "%s",
                     err.msg);
        primal_st *hf;
        cr_assert_eq(primal_st_open(TINY_DIR "/model.safetensors", &hf, &err), PRIMAL_OK);
        primal_param *p = primal_model_find(m, "model.norm.weight");
        const float *ref = primal_st_get(hf, "model.norm.weight")->data;
        for (int64_t k = 0; k < p->n; k++) {
            float want;
            if (dt == PRIMAL_BF16) {
                uint32_t u;
                memcpy(&u, &ref[k], 4);
                u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u;
                memcpy(&want, &u, 4);
            } else {
                want = (float)(_Float16)ref[k];
            }
            cr_assert_eq(p->vec[k], want, "%s [%lld]", primal_dtype_name(dt), (long long)k);
        }
        cr_assert_neq(memcmp(p->vec, ref, 4 * (size_t)p->n), 0); /* it did narrow */
        primal_st_close(hf);
        primal_model_free(m);
    }
}

Test(import, stream_loss_matches_the_reference_cross_entropy_of_one_row)
{
    primal_model *m;
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_load_model(TINY_DIR, NULL, NULL, &m, &err), PRIMAL_OK, "%s",
                 err.msg);
    primal_st *ref_st;
    cr_assert_eq(primal_st_open(TINY_DIR "/expected.safetensors", &ref_st, &err), PRIMAL_OK);
    int B, T;
    int32_t *ids = input_ids(ref_st, &B, &T);
    int64_t nl;
    float *logits = read_all(ref_st, "logits", &nl);
    int V = primal_model_cfg(m)->vocab;
    /* Row 0's mean next-token cross-entropy from the reference logits, in double. */
    double want = 0.0;
    for (int t = 0; t + 1 < T; t++) {
        const float *z = logits + (int64_t)t * V;
        double mx = z[0], s = 0.0;
        for (int v = 1; v < V; v++)
            mx = z[v] > mx ? z[v] : mx;
        for (int v = 0; v < V; v++)
            s += exp((double)z[v] - mx);
        want += mx + log(s) - z[ids[t + 1]];
    }
    want /= T - 1;
    /* seq_len T-1: one full row; seq_len 40: the remainder path. */
    int lens[2] = { T - 1, 40 };
    for (int k = 0; k < 2; k++) {
        double loss;
        size_t count;
        cr_assert_eq(primal_eval_stream(m, ids, (size_t)T, lens[k], 3, &loss, &count, &err),
                     PRIMAL_OK, "%s", err.msg);
        cr_assert_eq(count, (size_t)T - 1);
        cr_assert_lt(fabs(loss - want), 1e-4 * want, "seq_len %d: %g vs %g", lens[k], loss,
                     want);
    }
    /* Batching does not change the mean: 2 x 16 ids in rows of 4, batch 1 or 3. */
    double l1, l3;
    size_t c1, c3;
    cr_assert_eq(primal_eval_stream(m, ids, (size_t)(B * T), 4, 1, &l1, &c1, &err), PRIMAL_OK);
    cr_assert_eq(primal_eval_stream(m, ids, (size_t)(B * T), 4, 3, &l3, &c3, &err), PRIMAL_OK);
    cr_assert_eq(c1, (size_t)(B * T - 1));
    cr_assert_eq(c3, c1);
    cr_assert_lt(fabs(l1 - l3), 1e-5 * l1, "%g vs %g", l1, l3);
    free(ids);
    free(logits);
    primal_st_close(ref_st);
    primal_model_free(m);
}
