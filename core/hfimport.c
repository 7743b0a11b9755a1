/* hfimport.c: a Hugging Face directory into a model or a checkpoint (hfimport.h; SPEC.md,
 * "Models", "Snapping a float matrix onto a grid").  No keys; the grid is the caller's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <primal/safetensors.h>

#include "checkpoint.h"
#include "hfconfig.h"
#include "hfimport.h"

/* Tensors a checkpoint may hold that carry nothing the model needs. */
static int ignorable(const primal_model_config *mc, const char *name)
{
    size_t n = strlen(name);
    static const char inv[] = "rotary_emb.inv_freq"; /* a buffer older exports included */
    if (n >= sizeof inv - 1 && strcmp(name + n - (sizeof inv - 1), inv) == 0)
        return 1;
    return mc->tied && strcmp(name, "lm_head.weight") == 0;
}

/* Every value of a tensor just read (n floats, a matrix of cols columns, or a list when cols is
 * 0) is finite: a NaN would otherwise reach the model unnoticed, since snapping maps it onto
 * the grid and a vector is copied as it is. */
static int check_finite(const char *file, const char *name, const float *v, int64_t n,
                        int64_t cols, primal_err *err)
{
    for (int64_t i = 0; i < n; i++) {
        if (isfinite(v[i]))
            continue;
        if (cols > 0)
            return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: value at [%lld][%lld] is %g, "
                               "not finite", file, name, (long long)(i / cols),
                               (long long)(i % cols), (double)v[i]);
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: value at [%lld] is %g, not finite",
                           file, name, (long long)i, (double)v[i]);
    }
    return PRIMAL_OK;
}

typedef struct shape_ctx {
    const char *dir;
    primal_hf_weights *w;
} shape_ctx;

/* One parameter of config.json's model is in the weights with its shape (primal_model_layout),
 * checked before the model is allocated: a config.json naming sizes the weights do not have is
 * refused without allocating them. */
static int check_shape(void *user, const primal_param_desc *d, primal_err *err)
{
    const shape_ctx *sc = user;
    const primal_st *st;
    const primal_st_tensor *t = primal_hf_weight(sc->w, d->name, &st);
    if (t == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: missing from the weights", sc->dir,
                           d->name);
    int nd = d->is_matrix ? 2 : 1;
    if (t->ndim == nd && t->shape[0] == d->rows && (nd == 1 || t->shape[1] == d->cols))
        return PRIMAL_OK;
    char got[160], want[64];
    int k = snprintf(got, sizeof got, "[");
    for (int i = 0; i < t->ndim && k < (int)sizeof got; i++)
        k += snprintf(got + k, sizeof got - (size_t)k, "%s%lld", i ? ", " : "",
                      (long long)t->shape[i]);
    if (k < (int)sizeof got)
        snprintf(got + k, sizeof got - (size_t)k, "]");
    if (nd == 2)
        snprintf(want, sizeof want, "[%lld, %lld]", (long long)d->rows, (long long)d->cols);
    else
        snprintf(want, sizeof want, "[%lld]", (long long)d->rows);
    return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: shape %s, config.json gives %s",
                       primal_st_path(st), d->name, got, want);
}

static int fill(const char *dir, primal_hf_weights *w, primal_model *m, primal_err *err)
{
    int np = primal_model_nparams(m);
    int64_t maxn = 0;
    for (int i = 0; i < np; i++) {
        const primal_param *p = primal_model_param(m, i);
        if (p->is_matrix && p->n > maxn)
            maxn = p->n;
    }
    float *buf = malloc((size_t)(maxn ? maxn : 1) * sizeof(float)); /* one tensor at a time */
    if (buf == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory for a %lld-float tensor",
                           dir, (long long)maxn);
    int rc = PRIMAL_OK;
    for (int i = 0; i < np && rc == PRIMAL_OK; i++) {
        primal_param *p = primal_model_param(m, i);
        const primal_st *st;
        const primal_st_tensor *t = primal_hf_weight(w, p->name, &st);
        if (t == NULL) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: tensor %s: missing from the weights", dir,
                             p->name);
            break;
        }
        int64_t shape[2] = { p->is_matrix ? p->q.rows : p->n, p->q.cols };
        rc = primal_st_read_f32(st, p->name, p->is_matrix ? 2 : 1, shape,
                                p->is_matrix ? buf : p->vec, err);
        if (rc == PRIMAL_OK)
            rc = check_finite(primal_st_path(st), p->name, p->is_matrix ? buf : p->vec, p->n,
                              p->is_matrix ? p->q.cols : 0, err);
        if (rc == PRIMAL_OK && p->is_matrix)
            rc = primal_model_set_matrix(m, p, buf, err);
    }
    free(buf);
    if (rc != PRIMAL_OK)
        return rc;
    const primal_model_config *mc = primal_model_cfg(m);
    for (int i = 0; i < primal_hf_weight_count(w); i++) {
        const char *name = primal_hf_weight_name(w, i);
        if (!ignorable(mc, name) && primal_model_find(m, name) == NULL)
            return primal_errf(err, PRIMAL_ECONFIG,
                               "%s: tensor %s is not part of a %s model of this config "
                               "(an unsupported feature?)",
                               dir, name, mc->arch == PRIMAL_ARCH_QWEN2 ? "qwen2" : "llama");
    }
    return PRIMAL_OK;
}

int primal_hf_load_model(const char *hf_dir, primal_grid_for grid_for, void *user,
                         primal_model **out, primal_err *err)
{
    *out = NULL;
    primal_model_config mc;
    primal_hf_weights *w = NULL;
    primal_model *m = NULL;
    int rc = primal_hfconfig_load(hf_dir, &mc, err);
    if (rc == PRIMAL_OK)
        rc = primal_hf_open_weights(hf_dir, &w, err);
    if (rc == PRIMAL_OK && (rc = primal_model_check_config(&mc, err)) != PRIMAL_OK)
        primal_err_prefix(err, "%s/config.json", hf_dir);
    if (rc == PRIMAL_OK)
        rc = primal_model_layout(&mc, check_shape, &(shape_ctx){ hf_dir, w }, err);
    if (rc == PRIMAL_OK)
        rc = primal_model_create(&mc, grid_for, user, &m, err);
    if (rc == PRIMAL_OK)
        rc = fill(hf_dir, w, m, err);
    primal_hf_close_weights(w);
    if (rc != PRIMAL_OK) {
        primal_model_free(m);
        return rc;
    }
    *out = m;
    return PRIMAL_OK;
}

static const primal_grid_ref *one_grid(void *user, const char *name)
{
    (void)name;
    return user;
}

int primal_hf_import(const char *hf_dir, const primal_grid_ref *grid, const char *out_path,
                     const char *config_ini, primal_err *err)
{
    primal_model *m;
    int rc = primal_hf_load_model(hf_dir, one_grid, (void *)grid, &m, err);
    if (rc != PRIMAL_OK)
        return rc;
    rc = primal_ckpt_save(out_path, m, config_ini, NULL, 0, err);
    primal_model_free(m);
    return rc;
}
