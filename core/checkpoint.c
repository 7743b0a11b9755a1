/* checkpoint.c: a model and its training state in one safetensors file (checkpoint.h; the
 * format is written up in docs/FORMAT.md; SPEC.md, "The experiment file and the run directory").
 *
 * Tensors, all in the model's in-memory layout:
 *   NAME        F32   norms, biases, and dense matrices, under their Hugging Face names
 *   index.NAME  U8 [rows, ceil(cols/2)] (4-bit, even column in the low nibble),
 *               U8 [rows, cols] (8-bit) or U16 [rows, cols] (16-bit)
 *   scale.NAME  F32 [rows]
 *   grid.GRID   F32 [size], each distinct grid once
 *   state.KEY   U8 [n], the caller's blobs
 * __metadata__: primal.format = "1", primal.model (config JSON), primal.grids ({tensor: grid}),
 * primal.grid_sha256 ({grid: SHA-256 of its float32 values}), primal.config (INI text), and the
 * writer's data and header checksums.
 * F32 tensors are written first, then U16, then U8, so that in a file of ours every tensor
 * starts at a multiple of its element size. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <primal/safetensors.h>

#include "checkpoint.h"

#define STATE_PREFIX "state."
#define GRID_PREFIX "grid."

typedef struct cgrid {
    const char *name; /* inside meta JSON */
    float *values;
    int size;
    primal_grid_ref ref;
} cgrid;

struct primal_ckpt {
    primal_st *st;
    primal_model_config mc;
    json_t *grids_map; /* {tensor: grid} */
    json_t *grid_sha;  /* {grid: hex} */
    cgrid *g;
    int ng;
    const char *ini;
};

static const char *arch_name(int arch)
{
    return arch == PRIMAL_ARCH_QWEN2 ? "qwen2" : "llama";
}

/* Bytes of one packed index row, as primal_qtensor lays it out. */
static int64_t index_row_bytes(int bits, int64_t cols)
{
    return bits == 4 ? (cols + 1) / 2 : bits == 8 ? cols : 2 * cols;
}

/* ------------------------------------------------------------------------------------------ */
/* Save                                                                                       */

static char *model_json(const primal_model_config *mc)
{
    json_t *o = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:b, s:b}",
                          "arch", arch_name(mc->arch), "vocab", mc->vocab, "dim", mc->dim,
                          "layers", mc->layers, "heads", mc->heads, "kv_heads", mc->kv_heads,
                          "ffn", mc->ffn, "rope_theta", mc->rope_theta, "norm_eps", mc->norm_eps,
                          "tied", mc->tied, "qkv_bias", mc->qkv_bias);
    /* 17 significant digits: the doubles read back bit-identical. */
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    return s;
}

/* Things the writer points at that must outlive the commit. */
typedef struct save_ctx {
    char **names; /* malloc'ed tensor names */
    int nn, capn;
    void **bufs;  /* repacked index copies */
    int nb, capb;
} save_ctx;

static void save_ctx_free(save_ctx *s)
{
    for (int i = 0; i < s->nn; i++)
        free(s->names[i]);
    for (int i = 0; i < s->nb; i++)
        free(s->bufs[i]);
    free(s->names);
    free(s->bufs);
}

static int keep(void ***arr, int *n, int *cap, void *p)
{
    if (p == NULL)
        return 0;
    if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        void **na = realloc(*arr, (size_t)nc * sizeof *na);
        if (na == NULL)
            return 0;
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = p;
    return 1;
}

static const char *prefixed(save_ctx *s, const char *prefix, const char *name)
{
    size_t n = strlen(prefix) + strlen(name) + 1;
    char *p = malloc(n);
    if (p != NULL)
        snprintf(p, n, "%s%s", prefix, name);
    if (!keep((void ***)&s->names, &s->nn, &s->capn, p)) {
        free(p);
        return NULL;
    }
    return p;
}

/* The index rows of p as one contiguous block: the tensor itself when rows are not padded,
 * otherwise a copy kept in s. */
static const void *packed_index(save_ctx *s, const primal_qtensor *q)
{
    int64_t rb = index_row_bytes(q->bits, q->cols);
    if (q->row_stride == rb)
        return q->index;
    unsigned char *buf = malloc((size_t)(q->rows * rb) + 1);
    if (!keep(&s->bufs, &s->nb, &s->capb, buf)) {
        free(buf);
        return NULL;
    }
    for (int64_t r = 0; r < q->rows; r++)
        memcpy(buf + r * rb, (const unsigned char *)q->index + r * q->row_stride, (size_t)rb);
    return buf;
}

int primal_ckpt_save(const char *path, primal_model *m, const char *config_ini,
                     const primal_ckpt_blob *blobs, int nblobs, primal_err *err)
{
    const primal_model_config *mc = primal_model_cfg(m);
    int np = primal_model_nparams(m);
    save_ctx s = { 0 };
    primal_stw *w = NULL;
    json_t *grids = json_object(), *gsha = json_object();
    char *model = model_json(mc), *grids_txt = NULL, *gsha_txt = NULL;
    int rc;
    if (grids == NULL || gsha == NULL || model == NULL) {
        rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if ((rc = primal_stw_begin(path, &w, err)) != PRIMAL_OK)
        goto out;

#define ADD(name, dt, nd, shape, data)                                                          \
    do {                                                                                       \
        if ((name) == NULL) {                                                                  \
            rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);                   \
            goto out;                                                                          \
        }                                                                                      \
        if ((rc = primal_stw_add(w, (name), (dt), (nd), (shape), (data), err)) != PRIMAL_OK)   \
            goto out;                                                                          \
    } while (0)

    /* Pass 1, F32: vectors, dense matrices, scales, and grids (each name once). */
    for (int i = 0; i < np; i++) {
        primal_param *p = primal_model_param(m, i);
        const primal_grid_ref *g = p->is_matrix ? primal_model_grid(m, i) : NULL;
        if (!p->is_matrix) {
            int64_t sh[1] = { p->n };
            ADD(p->name, PRIMAL_F32, 1, sh, p->vec);
        } else if (g == NULL) {
            int64_t sh[2] = { p->q.rows, p->q.cols };
            ADD(p->name, PRIMAL_F32, 2, sh, p->q.dense);
        } else {
            int64_t sh[1] = { p->q.rows };
            ADD(prefixed(&s, "scale.", p->name), PRIMAL_F32, 1, sh, p->q.scale);
            if (g->name == NULL || g->name[0] == '\0') {
                rc = primal_errf(err, PRIMAL_ERROR, "%s: tensor %s: its grid has no name", path,
                                 p->name);
                goto out;
            }
            if (json_object_set_new(grids, p->name, json_string(g->name)) != 0) {
                rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
                goto out;
            }
            /* One table per name: a second, different table under the same name would make
             * primal.grids ambiguous. */
            int seen = 0;
            for (int j = 0; j < i && !seen; j++) {
                const primal_grid_ref *h = primal_model_grid(m, j);
                if (h == NULL || !primal_model_param(m, j)->is_matrix ||
                    strcmp(h->name, g->name) != 0)
                    continue;
                if (h->size != g->size ||
                    memcmp(h->values, g->values, (size_t)g->size * sizeof(float)) != 0) {
                    rc = primal_errf(err, PRIMAL_ERROR,
                                     "%s: grid name %s stands for two different tables "
                                     "(tensors %s and %s)",
                                     path, g->name, primal_model_param(m, j)->name, p->name);
                    goto out;
                }
                seen = 1;
            }
            if (!seen) {
                char hex[65];
                primal_sha256_hex(g->values, (size_t)g->size * sizeof(float), hex);
                int64_t gs[1] = { g->size };
                ADD(prefixed(&s, GRID_PREFIX, g->name), PRIMAL_F32, 1, gs, g->values);
                if (json_object_set_new(gsha, g->name, json_string(hex)) != 0) {
                    rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
                    goto out;
                }
            }
        }
    }
    /* Pass 2 and 3: 16-bit indices, then 8- and 4-bit ones. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < np; i++) {
            primal_param *p = primal_model_param(m, i);
            if (!p->is_matrix || primal_model_grid(m, i) == NULL)
                continue;
            const primal_qtensor *q = &p->q;
            if ((pass == 0) != (q->bits == 16))
                continue;
            if (q->bits != 4 && q->bits != 8 && q->bits != 16) {
                rc = primal_errf(err, PRIMAL_ERROR, "%s: tensor %s: index width %d bits", path,
                                 p->name, q->bits);
                goto out;
            }
            int64_t sh[2] = { q->rows, index_row_bytes(q->bits, q->cols) };
            if (q->bits == 16)
                sh[1] = q->cols;
            const void *data = packed_index(&s, q);
            if (data == NULL) {
                rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
                goto out;
            }
            ADD(prefixed(&s, "index.", p->name), q->bits == 16 ? PRIMAL_U16 : PRIMAL_U8, 2, sh,
                data);
        }
    for (int i = 0; i < nblobs; i++) {
        if (blobs[i].name == NULL || blobs[i].name[0] == '\0') {
            rc = primal_errf(err, PRIMAL_ERROR, "%s: state blob %d has no name", path, i);
            goto out;
        }
        int64_t sh[1] = { (int64_t)blobs[i].n };
        ADD(prefixed(&s, STATE_PREFIX, blobs[i].name), PRIMAL_U8, 1, sh, blobs[i].data);
    }
#undef ADD

    grids_txt = json_dumps(grids, JSON_COMPACT);
    gsha_txt = json_dumps(gsha, JSON_COMPACT);
    if (grids_txt == NULL || gsha_txt == NULL) {
        rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if ((rc = primal_stw_meta(w, "primal.format", PRIMAL_CKPT_FORMAT, err)) != PRIMAL_OK ||
        (rc = primal_stw_meta(w, "primal.model", model, err)) != PRIMAL_OK ||
        (rc = primal_stw_meta(w, "primal.grids", grids_txt, err)) != PRIMAL_OK ||
        (rc = primal_stw_meta(w, "primal.grid_sha256", gsha_txt, err)) != PRIMAL_OK ||
        (rc = primal_stw_meta(w, "primal.config", config_ini ? config_ini : "", err)) !=
            PRIMAL_OK)
        goto out;
    rc = primal_stw_commit(w, err);
    w = NULL; /* commit frees it */
out:
    primal_stw_abort(w);
    save_ctx_free(&s);
    json_decref(grids);
    json_decref(gsha);
    free(model);
    free(grids_txt);
    free(gsha_txt);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Open                                                                                       */

void primal_ckpt_close(primal_ckpt *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < c->ng; i++)
        free(c->g[i].values);
    free(c->g);
    json_decref(c->grids_map);
    json_decref(c->grid_sha);
    primal_st_close(c->st);
    free(c);
}

const char *primal_ckpt_path(const primal_ckpt *c) { return primal_st_path(c->st); }

static int meta_json(const char *path, const primal_st *st, const char *key, json_t **out,
                     primal_err *err)
{
    const char *txt = primal_st_meta(st, key);
    if (txt == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: not a PRIMAL checkpoint: no %s in __metadata__",
                           path, key);
    json_error_t je;
    *out = json_loads(txt, JSON_REJECT_DUPLICATES, &je);
    if (*out == NULL || !json_is_object(*out))
        return primal_errf(err, PRIMAL_EIO, "%s: __metadata__ %s: not a JSON object (%s)", path,
                           key, *out == NULL ? je.text : "wrong type");
    return PRIMAL_OK;
}

static int parse_model(const char *path, const primal_st *st, primal_model_config *mc,
                       primal_err *err)
{
    json_t *o = NULL;
    int rc = meta_json(path, st, "primal.model", &o, err);
    if (rc != PRIMAL_OK) {
        json_decref(o);
        return rc;
    }
    const char *arch = NULL;
    json_int_t v[6];
    int tied = 0, bias = 0;
    json_error_t je;
    if (json_unpack_ex(o, &je, 0, "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:F, s:F, s:b, s:b}",
                       "arch", &arch, "vocab", &v[0], "dim", &v[1], "layers", &v[2], "heads",
                       &v[3], "kv_heads", &v[4], "ffn", &v[5], "rope_theta", &mc->rope_theta,
                       "norm_eps", &mc->norm_eps, "tied", &tied, "qkv_bias", &bias) != 0) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: __metadata__ primal.model: %s", path, je.text);
        goto out;
    }
    if (strcmp(arch, "llama") == 0) {
        mc->arch = PRIMAL_ARCH_LLAMA;
    } else if (strcmp(arch, "qwen2") == 0) {
        mc->arch = PRIMAL_ARCH_QWEN2;
    } else {
        rc = primal_errf(err, PRIMAL_EIO, "%s: __metadata__ primal.model: unknown arch \"%s\"",
                         path, arch);
        goto out;
    }
    for (int i = 0; i < 6; i++)
        if (v[i] <= 0 || v[i] > 0x7FFFFFFF) {
            rc = primal_errf(err, PRIMAL_EIO,
                             "%s: __metadata__ primal.model: size %lld out of range", path,
                             (long long)v[i]);
            goto out;
        }
    mc->vocab = (int)v[0];
    mc->dim = (int)v[1];
    mc->layers = (int)v[2];
    mc->heads = (int)v[3];
    mc->kv_heads = (int)v[4];
    mc->ffn = (int)v[5];
    mc->tied = tied;
    mc->qkv_bias = bias;
out:
    json_decref(o);
    return rc;
}

static int check_grids(primal_ckpt *c, const char *path, primal_err *err)
{
    const primal_st *st = c->st;
    c->g = calloc(json_object_size(c->grid_sha) + 1, sizeof *c->g);
    if (c->g == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
    const char *k;
    json_t *v;
    json_object_foreach(c->grid_sha, k, v) {
        char tname[300];
        snprintf(tname, sizeof tname, GRID_PREFIX "%s", k);
        const primal_st_tensor *t = primal_st_get(st, tname);
        if (!json_is_string(v))
            return primal_errf(err, PRIMAL_EIO, "%s: primal.grid_sha256: %s: not a string", path,
                               k);
        if (t == NULL || t->dtype != PRIMAL_F32 || t->ndim != 1 || t->shape[0] < 2 ||
            t->shape[0] > 65536)
            return primal_errf(err, PRIMAL_EIO,
                               "%s: grid %s: tensor %s missing or not F32 [2..65536]", path, k,
                               tname);
        char hex[65];
        primal_sha256_hex(t->data, t->nbytes, hex);
        if (strcmp(hex, json_string_value(v)) != 0)
            return primal_errf(err, PRIMAL_EIO,
                               "%s: grid %s: SHA-256 of its values is %s, the header says %s",
                               path, k, hex, json_string_value(v));
        cgrid *g = &c->g[c->ng];
        g->values = malloc(t->nbytes);
        if (g->values == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
        memcpy(g->values, t->data, t->nbytes); /* the mapping need not be aligned */
        g->name = k;
        g->size = (int)t->shape[0];
        c->ng++; /* closed with c from here on */
        /* The hash is unkeyed, so it proves nothing about who wrote the values: a re-signed
         * NaN or unsorted table would reach the matrix products and the flip policies. */
        for (int i = 0; i < g->size; i++) {
            if (!isfinite(g->values[i]))
                return primal_errf(err, PRIMAL_EIO, "%s: %s: value %d is %g, not finite", path,
                                   tname, i, (double)g->values[i]);
            if (i > 0 && !(g->values[i] > g->values[i - 1]))
                return primal_errf(err, PRIMAL_EIO,
                                   "%s: %s: values %d and %d (%.9g, %.9g) are not ascending "
                                   "and distinct",
                                   path, tname, i - 1, i, (double)g->values[i - 1],
                                   (double)g->values[i]);
        }
        g->ref = (primal_grid_ref){ g->name, g->values, g->size };
    }
    json_object_foreach(c->grids_map, k, v) {
        if (!json_is_string(v) || json_object_get(c->grid_sha, json_string_value(v)) == NULL)
            return primal_errf(err, PRIMAL_EIO,
                               "%s: primal.grids: tensor %s: grid %s has no primal.grid_sha256 "
                               "entry",
                               path, k,
                               json_is_string(v) ? json_string_value(v) : "(not a string)");
    }
    /* The reverse: no grid.* tensor without its hash. */
    for (int i = 0; i < primal_st_count(st); i++) {
        const char *n = primal_st_at(st, i)->name;
        if (strncmp(n, GRID_PREFIX, strlen(GRID_PREFIX)) == 0 &&
            json_object_get(c->grid_sha, n + strlen(GRID_PREFIX)) == NULL)
            return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: no primal.grid_sha256 entry",
                               path, n);
    }
    return PRIMAL_OK;
}

static int check_params(primal_ckpt *c, primal_err *err);

int primal_ckpt_open(const char *path, primal_ckpt **out, primal_err *err)
{
    *out = NULL;
    primal_ckpt *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
    int rc = primal_st_open(path, &c->st, err);
    if (rc != PRIMAL_OK)
        goto fail;
    /* Both checksums: our writer always stores the header one, and without it a flipped byte in
     * a metadata string would go unnoticed. */
    if (primal_st_meta(c->st, "primal.header_sha256") == NULL) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: not a PRIMAL checkpoint: no primal.header_sha256",
                         path);
        goto fail;
    }
    if ((rc = primal_st_verify(c->st, err)) != PRIMAL_OK)
        goto fail;
    const char *fmt = primal_st_meta(c->st, "primal.format");
    if (fmt == NULL) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: not a PRIMAL checkpoint: no primal.format", path);
        goto fail;
    }
    if (strcmp(fmt, PRIMAL_CKPT_FORMAT) != 0) {
        rc = primal_errf(err, PRIMAL_EIO,
                         "%s: checkpoint format \"%s\" is not supported (this build reads %s)",
                         path, fmt, PRIMAL_CKPT_FORMAT);
        goto fail;
    }
    if ((rc = parse_model(path, c->st, &c->mc, err)) != PRIMAL_OK ||
        (rc = meta_json(path, c->st, "primal.grids", &c->grids_map, err)) != PRIMAL_OK ||
        (rc = meta_json(path, c->st, "primal.grid_sha256", &c->grid_sha, err)) != PRIMAL_OK ||
        (rc = check_grids(c, path, err)) != PRIMAL_OK || (rc = check_params(c, err)) != PRIMAL_OK)
        goto fail;
    for (int i = 0; i < primal_st_count(c->st); i++) {
        const primal_st_tensor *t = primal_st_at(c->st, i);
        if (strncmp(t->name, STATE_PREFIX, strlen(STATE_PREFIX)) == 0 &&
            (t->dtype != PRIMAL_U8 || t->ndim != 1)) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: tensor %s: state blobs must be U8 lists",
                             path, t->name);
            goto fail;
        }
    }
    c->ini = primal_st_meta(c->st, "primal.config");
    if (c->ini == NULL)
        c->ini = "";
    *out = c;
    return PRIMAL_OK;
fail:
    primal_ckpt_close(c);
    return rc;
}

int primal_ckpt_model_config(const primal_ckpt *c, primal_model_config *out, primal_err *err)
{
    (void)err;
    *out = c->mc;
    return PRIMAL_OK;
}

const char *primal_ckpt_grid_name(const primal_ckpt *c, const char *tensor)
{
    return json_string_value(json_object_get(c->grids_map, tensor));
}

static const cgrid *find_grid(const primal_ckpt *c, const char *name)
{
    for (int i = 0; name != NULL && i < c->ng; i++)
        if (strcmp(c->g[i].name, name) == 0)
            return &c->g[i];
    return NULL;
}

int primal_ckpt_grid(const primal_ckpt *c, const char *grid_name, const float **values, int *n,
                     primal_err *err)
{
    const cgrid *g = find_grid(c, grid_name);
    if (g == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: no grid named %s", primal_ckpt_path(c),
                           grid_name);
    *values = g->values;
    *n = g->size;
    return PRIMAL_OK;
}

const primal_grid_ref *primal_ckpt_grid_for(void *ckpt, const char *tensor_name)
{
    const primal_ckpt *c = ckpt;
    const cgrid *g = find_grid(c, primal_ckpt_grid_name(c, tensor_name));
    return g ? &g->ref : NULL;
}

int primal_ckpt_get_blob(const primal_ckpt *c, const char *name, const void **data,
                         size_t *n)
{
    char tname[512];
    if (snprintf(tname, sizeof tname, STATE_PREFIX "%s", name) >= (int)sizeof tname)
        return PRIMAL_ERROR;
    const primal_st_tensor *t = primal_st_get(c->st, tname);
    if (t == NULL)
        return PRIMAL_ERROR;
    *data = t->data;
    *n = t->nbytes;
    return PRIMAL_OK;
}

const char *primal_ckpt_config_ini(const primal_ckpt *c) { return c->ini; }

/* ------------------------------------------------------------------------------------------ */
/* Load                                                                                       */

static int same_config(const char *path, const primal_model_config *a,
                       const primal_model_config *b, primal_err *err)
{
#define CMP(f, fmt)                                                                             \
    if (a->f != b->f)                                                                          \
        return primal_errf(err, PRIMAL_ECONFIG,                                                \
                           "%s: model " #f " is " fmt " here, " fmt " in the checkpoint", path, \
                           a->f, b->f);
    CMP(arch, "%d")
    CMP(vocab, "%d")
    CMP(dim, "%d")
    CMP(layers, "%d")
    CMP(heads, "%d")
    CMP(kv_heads, "%d")
    CMP(ffn, "%d")
    CMP(rope_theta, "%.17g")
    CMP(norm_eps, "%.17g")
    CMP(tied, "%d")
    CMP(qkv_bias, "%d")
#undef CMP
    return PRIMAL_OK;
}

/* The tensor name, checked against dtype and shape; marks it used (used may be NULL). */
static int want(const primal_ckpt *c, unsigned char *used, const char *name, primal_dtype dt,
                int ndim, int64_t d0, int64_t d1, const primal_st_tensor **out, primal_err *err)
{
    const char *path = primal_ckpt_path(c);
    const primal_st_tensor *t = primal_st_get(c->st, name);
    if (t == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: missing", path, name);
    int64_t sh[2] = { d0, d1 };
    int ok = t->dtype == dt && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == sh[i];
    if (!ok) {
        char want_s[64], got_s[200];
        snprintf(want_s, sizeof want_s, ndim == 1 ? "[%lld]" : "[%lld,%lld]", (long long)d0,
                 (long long)d1);
        int k = snprintf(got_s, sizeof got_s, "[");
        for (int i = 0; i < t->ndim && k < (int)sizeof got_s; i++)
            k += snprintf(got_s + k, sizeof got_s - (size_t)k, "%s%lld", i ? "," : "",
                          (long long)t->shape[i]);
        if (k < (int)sizeof got_s)
            snprintf(got_s + k, sizeof got_s - (size_t)k, "]");
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: %s %s, expected %s %s", path, name,
                           primal_dtype_name(t->dtype), got_s, primal_dtype_name(dt), want_s);
    }
    if (used != NULL)
        used[t - primal_st_at(c->st, 0)] = 1;
    *out = t;
    return PRIMAL_OK;
}

/* Check (copy == 0) or copy (copy == 1) every parameter. */
static int load_pass(const primal_ckpt *c, primal_model *m, unsigned char *used, int copy,
                     primal_err *err)
{
    const char *path = primal_ckpt_path(c);
    int np = primal_model_nparams(m), rc;
    char name[160];
    for (int i = 0; i < np; i++) {
        primal_param *p = primal_model_param(m, i);
        const primal_st_tensor *t, *ts;
        if (!p->is_matrix) {
            if ((rc = want(c, used, p->name, PRIMAL_F32, 1, p->n, 0, &t, err)) != PRIMAL_OK)
                return rc;
            if (copy)
                memcpy(p->vec, t->data, t->nbytes);
            continue;
        }
        const primal_qtensor *q = &p->q;
        const primal_grid_ref *g = primal_model_grid(m, i);
        const char *cg = primal_ckpt_grid_name(c, p->name);
        if (g == NULL) {
            if (cg != NULL)
                return primal_errf(err, PRIMAL_ECONFIG,
                                   "%s: tensor %s: dense here, over grid %s in the checkpoint",
                                   path, p->name, cg);
            if ((rc = want(c, used, p->name, PRIMAL_F32, 2, q->rows, q->cols, &t, err)) !=
                PRIMAL_OK)
                return rc;
            if (copy)
                memcpy(q->dense, t->data, t->nbytes);
            continue;
        }
        if (cg == NULL)
            return primal_errf(err, PRIMAL_ECONFIG,
                               "%s: tensor %s: over grid %s here, dense in the checkpoint", path,
                               p->name, g->name);
        const cgrid *fg = find_grid(c, cg);
        if (strcmp(cg, g->name) != 0 || fg == NULL || fg->size != g->size ||
            memcmp(fg->values, g->values, (size_t)g->size * sizeof(float)) != 0)
            return primal_errf(err, PRIMAL_ECONFIG,
                               "%s: tensor %s: grid %s (%d values) here, %s (%d values) in the "
                               "checkpoint%s",
                               path, p->name, g->name, g->size, cg, fg ? fg->size : 0,
                               strcmp(cg, g->name) == 0 ? ", with other values" : "");
        int64_t rb = index_row_bytes(q->bits, q->cols);
        snprintf(name, sizeof name, "index.%s", p->name);
        if ((rc = want(c, used, name, q->bits == 16 ? PRIMAL_U16 : PRIMAL_U8, 2, q->rows,
                       q->bits == 16 ? q->cols : rb, &t, err)) != PRIMAL_OK)
            return rc;
        snprintf(name, sizeof name, "scale.%s", p->name);
        if ((rc = want(c, used, name, PRIMAL_F32, 1, q->rows, 0, &ts, err)) != PRIMAL_OK)
            return rc;
        if (copy) {
            for (int64_t r = 0; r < q->rows; r++)
                memcpy((unsigned char *)q->index + r * q->row_stride,
                       (const unsigned char *)t->data + r * rb, (size_t)rb);
            memcpy(q->scale, ts->data, ts->nbytes);
        }
    }
    return PRIMAL_OK;
}

int primal_ckpt_load_model(const primal_ckpt *c, primal_model *m, primal_err *err)
{
    const char *path = primal_ckpt_path(c);
    int rc = same_config(path, primal_model_cfg(m), &c->mc, err);
    if (rc != PRIMAL_OK)
        return rc;
    int nt = primal_st_count(c->st);
    unsigned char *used = calloc((size_t)nt + 1, 1);
    if (used == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
    rc = load_pass(c, m, used, 0, err);
    for (int i = 0; rc == PRIMAL_OK && i < nt; i++) {
        const char *n = primal_st_at(c->st, i)->name;
        if (!used[i] && strncmp(n, STATE_PREFIX, strlen(STATE_PREFIX)) != 0 &&
            strncmp(n, GRID_PREFIX, strlen(GRID_PREFIX)) != 0)
            rc = primal_errf(err, PRIMAL_EIO, "%s: tensor %s: not a parameter of the model", path,
                             n);
    }
    if (rc == PRIMAL_OK)
        rc = load_pass(c, m, used, 1, err);
    free(used);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* What open checks in the tensors                                                            */

/* Bits per index over a grid of n values, as primal_model_create chooses them. */
static int grid_bits(int n)
{
    return n <= 16 ? 4 : n <= 256 ? 8 : 16;
}

/* Every float of an F32 tensor of (rows, cols) (cols 0: a list) is finite. */
static int check_finite(const char *path, const primal_st_tensor *t, int64_t cols,
                        primal_err *err)
{
    const unsigned char *d = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        float v;
        memcpy(&v, d + 4 * i, 4); /* a foreign file need not be aligned */
        if (isfinite(v))
            continue;
        if (cols > 0)
            return primal_errf(err, PRIMAL_EIO, "%s: %s: value at [%lld][%lld] is %g, not finite",
                               path, t->name, (long long)(i / cols), (long long)(i % cols),
                               (double)v);
        return primal_errf(err, PRIMAL_EIO, "%s: %s: value at [%lld] is %g, not finite", path,
                           t->name, (long long)i, (double)v);
    }
    return PRIMAL_OK;
}

/* Every index of t ((rows, cols) packed by bits, in the format's layout) is below size. */
static int check_indices(const char *path, const primal_st_tensor *t, int bits, int64_t rows,
                         int64_t cols, const cgrid *g, primal_err *err)
{
    if (g->size == 1 << bits)
        return PRIMAL_OK; /* every value the width holds is an entry */
    const unsigned char *d = t->data;
    int64_t rb = index_row_bytes(bits, cols);
    for (int64_t r = 0; r < rows; r++) {
        const unsigned char *row = d + r * rb;
        for (int64_t col = 0; col < cols; col++) {
            uint32_t v;
            if (bits == 4) {
                v = (row[col / 2] >> (4 * (col & 1))) & 0xFu;
            } else if (bits == 8) {
                v = row[col];
            } else {
                uint16_t h;
                memcpy(&h, row + 2 * col, 2);
                v = h;
            }
            if (v >= (uint32_t)g->size)
                return primal_errf(err, PRIMAL_EIO,
                                   "%s: %s: index %u at [%lld][%lld] is outside the %d-entry "
                                   "grid %s",
                                   path, t->name, v, (long long)r, (long long)col, g->size,
                                   g->name);
        }
    }
    return PRIMAL_OK;
}

/* One parameter of the checkpoint's own config (primal_model_layout): present with the dtype and
 * shape that config and its grid give, every float finite, every index inside its grid. */
static int check_param(void *user, const primal_param_desc *d, primal_err *err)
{
    const primal_ckpt *c = user;
    const char *path = primal_ckpt_path(c);
    const primal_st_tensor *t, *ts;
    char name[160];
    int rc;
    if (!d->is_matrix) {
        if ((rc = want(c, NULL, d->name, PRIMAL_F32, 1, d->rows, 0, &t, err)) != PRIMAL_OK)
            return rc;
        return check_finite(path, t, 0, err);
    }
    const char *gn = primal_ckpt_grid_name(c, d->name);
    if (gn == NULL) {
        if ((rc = want(c, NULL, d->name, PRIMAL_F32, 2, d->rows, d->cols, &t, err)) !=
            PRIMAL_OK)
            return rc;
        return check_finite(path, t, d->cols, err);
    }
    const cgrid *g = find_grid(c, gn); /* check_grids found every grid primal.grids names */
    int bits = grid_bits(g->size);
    snprintf(name, sizeof name, "index.%s", d->name);
    if ((rc = want(c, NULL, name, bits == 16 ? PRIMAL_U16 : PRIMAL_U8, 2, d->rows,
                   bits == 16 ? d->cols : index_row_bytes(bits, d->cols), &t, err)) !=
        PRIMAL_OK)
        return rc;
    snprintf(name, sizeof name, "scale.%s", d->name);
    if ((rc = want(c, NULL, name, PRIMAL_F32, 1, d->rows, 0, &ts, err)) != PRIMAL_OK)
        return rc;
    if ((rc = check_finite(path, ts, 0, err)) != PRIMAL_OK)
        return rc;
    return check_indices(path, t, bits, d->rows, d->cols, g, err);
}

/* The tensors against primal.model, before anyone allocates a model of that config: its sizes
 * within the limits of primal_model_check_config, and every parameter present as check_param
 * wants it.  Every tensor lies inside the file, so a config whose sizes the file cannot hold is
 * refused here. */
static int check_params(primal_ckpt *c, primal_err *err)
{
    const char *path = primal_ckpt_path(c);
    int rc = primal_model_check_config(&c->mc, err);
    if (rc != PRIMAL_OK) {
        primal_err_prefix(err, "%s: __metadata__ primal.model", path);
        if (err != NULL)
            err->code = PRIMAL_EIO; /* a bad file, like every refusal of open */
        return PRIMAL_EIO;
    }
    return primal_model_layout(&c->mc, check_param, c, err);
}
