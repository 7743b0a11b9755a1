/* hfconfig.c: a Hugging Face model directory: config.json into primal_model_config, and the
 * weights from model.safetensors or its shards (hfconfig.h; SPEC.md, "Models").
 *
 * Keys read from config.json (transformers' defaults where absent): model_type (llama|qwen2),
 * vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size (all
 * required), num_key_value_heads (= heads), rms_norm_eps (1e-6), rope_theta or
 * rope_parameters.rope_theta (10000), tie_word_embeddings (false), attention_bias (false; llama
 * only, qwen2 always has q/k/v biases).  Anything that would change the computation in a way
 * the engine does not implement is refused rather than ignored: RoPE scaling, an odd head_dim,
 * another activation, MLP biases, sliding-window attention. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "hfconfig.h"

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p != NULL)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    default: return "null";
    }
}

/* A positive integer key; def < 0 means required. */
static int get_pos_int(const char *path, json_t *root, const char *key, int def, int *out,
                       primal_err *err)
{
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        if (def < 0)
            return primal_errf(err, PRIMAL_ECONFIG, "%s: %s: missing", path, key);
        *out = def;
        return PRIMAL_OK;
    }
    if (!json_is_integer(v))
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s: expected a positive integer, got %s",
                           path, key, json_kind(v));
    json_int_t x = json_integer_value(v);
    if (x <= 0 || x > 0x7FFFFFFF)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s: expected a positive integer, got %lld",
                           path, key, (long long)x);
    *out = (int)x;
    return PRIMAL_OK;
}

static int get_bool(const char *path, json_t *root, const char *key, int def, int *out,
                    primal_err *err)
{
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        *out = def;
        return PRIMAL_OK;
    }
    if (!json_is_boolean(v))
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s: expected true or false, got %s", path,
                           key, json_kind(v));
    *out = json_is_true(v);
    return PRIMAL_OK;
}

static int get_pos_real(const char *path, json_t *v, const char *key, double *out,
                        primal_err *err)
{
    if (!json_is_number(v) || !(json_number_value(v) > 0))
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s: expected a positive number, got %s",
                           path, key, json_kind(v));
    *out = json_number_value(v);
    return PRIMAL_OK;
}

/* RoPE variants: only plain RoPE ("default", or no type at all) is implemented. */
static int check_rope_type(const char *path, const char *key, json_t *obj, primal_err *err)
{
    json_t *t = json_object_get(obj, "rope_type");
    if (t == NULL)
        t = json_object_get(obj, "type"); /* transformers 4 spelling */
    if (t == NULL || json_is_null(t))
        return PRIMAL_OK;
    if (json_is_string(t) && strcmp(json_string_value(t), "default") == 0)
        return PRIMAL_OK;
    return primal_errf(err, PRIMAL_ECONFIG,
                       "%s: %s: rope_type \"%s\" is not supported (only default RoPE)", path, key,
                       json_is_string(t) ? json_string_value(t) : json_kind(t));
}

static int parse_config(const char *path, json_t *root, primal_model_config *mc, primal_err *err)
{
    int rc;
    memset(mc, 0, sizeof *mc);
    if (!json_is_object(root))
        return primal_errf(err, PRIMAL_ECONFIG, "%s: not a JSON object", path);

    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt))
        return primal_errf(err, PRIMAL_ECONFIG, "%s: model_type: missing or not a string", path);
    const char *type = json_string_value(mt);
    if (strcmp(type, "llama") == 0)
        mc->arch = PRIMAL_ARCH_LLAMA;
    else if (strcmp(type, "qwen2") == 0)
        mc->arch = PRIMAL_ARCH_QWEN2;
    else
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: model_type \"%s\" is not supported (llama, qwen2)", path, type);

    if ((rc = get_pos_int(path, root, "vocab_size", -1, &mc->vocab, err)) != PRIMAL_OK ||
        (rc = get_pos_int(path, root, "hidden_size", -1, &mc->dim, err)) != PRIMAL_OK ||
        (rc = get_pos_int(path, root, "num_hidden_layers", -1, &mc->layers, err)) != PRIMAL_OK ||
        (rc = get_pos_int(path, root, "num_attention_heads", -1, &mc->heads, err)) !=
            PRIMAL_OK ||
        (rc = get_pos_int(path, root, "num_key_value_heads", mc->heads, &mc->kv_heads, err)) !=
            PRIMAL_OK ||
        (rc = get_pos_int(path, root, "intermediate_size", -1, &mc->ffn, err)) != PRIMAL_OK ||
        (rc = get_bool(path, root, "tie_word_embeddings", 0, &mc->tied, err)) != PRIMAL_OK)
        return rc;
    if (mc->dim % mc->heads != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: hidden_size %d is not a multiple of num_attention_heads %d", path,
                           mc->dim, mc->heads);
    if (mc->heads % mc->kv_heads != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: num_attention_heads %d is not a multiple of num_key_value_heads "
                           "%d",
                           path, mc->heads, mc->kv_heads);
    if (mc->arch == PRIMAL_ARCH_QWEN2) {
        mc->qkv_bias = 1;
    } else if ((rc = get_bool(path, root, "attention_bias", 0, &mc->qkv_bias, err)) !=
               PRIMAL_OK) {
        return rc;
    }

    json_t *v = json_object_get(root, "rms_norm_eps");
    mc->norm_eps = 1e-6;
    if (v != NULL && !json_is_null(v) &&
        (rc = get_pos_real(path, v, "rms_norm_eps", &mc->norm_eps, err)) != PRIMAL_OK)
        return rc;

    /* rope_theta: transformers 4 writes it top-level, transformers 5 under rope_parameters. */
    mc->rope_theta = 10000.0;
    json_t *top = json_object_get(root, "rope_theta");
    json_t *rp = json_object_get(root, "rope_parameters");
    json_t *nested = NULL;
    if (rp != NULL && !json_is_null(rp)) {
        if (!json_is_object(rp))
            return primal_errf(err, PRIMAL_ECONFIG, "%s: rope_parameters: expected an object, "
                               "got %s", path, json_kind(rp));
        if ((rc = check_rope_type(path, "rope_parameters", rp, err)) != PRIMAL_OK)
            return rc;
        nested = json_object_get(rp, "rope_theta");
    }
    if (top != NULL && !json_is_null(top) &&
        (rc = get_pos_real(path, top, "rope_theta", &mc->rope_theta, err)) != PRIMAL_OK)
        return rc;
    if (nested != NULL && !json_is_null(nested)) {
        double t;
        if ((rc = get_pos_real(path, nested, "rope_parameters.rope_theta", &t, err)) != PRIMAL_OK)
            return rc;
        if (top != NULL && !json_is_null(top) && t != mc->rope_theta)
            return primal_errf(err, PRIMAL_ECONFIG,
                               "%s: rope_theta %g and rope_parameters.rope_theta %g disagree",
                               path, mc->rope_theta, t);
        mc->rope_theta = t;
    }
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rs != NULL && !json_is_null(rs)) {
        if (!json_is_object(rs))
            return primal_errf(err, PRIMAL_ECONFIG, "%s: rope_scaling: expected an object or "
                               "null, got %s", path, json_kind(rs));
        if ((rc = check_rope_type(path, "rope_scaling", rs, err)) != PRIMAL_OK)
            return rc;
    }

    json_t *hd = json_object_get(root, "head_dim");
    if (hd != NULL && !json_is_null(hd) &&
        (!json_is_integer(hd) || json_integer_value(hd) != mc->dim / mc->heads))
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: head_dim %s%lld is not hidden_size / num_attention_heads = %d "
                           "(not supported)",
                           path, json_is_integer(hd) ? "" : "(not an integer) ",
                           json_is_integer(hd) ? (long long)json_integer_value(hd) : 0LL,
                           mc->dim / mc->heads);
    json_t *act = json_object_get(root, "hidden_act");
    if (act != NULL && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0))
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: hidden_act \"%s\" is not supported (silu)", path,
                           json_is_string(act) ? json_string_value(act) : json_kind(act));
    if (json_is_true(json_object_get(root, "mlp_bias")))
        return primal_errf(err, PRIMAL_ECONFIG, "%s: mlp_bias true is not supported", path);
    if (json_is_true(json_object_get(root, "use_sliding_window")))
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: use_sliding_window true is not supported (full attention only)",
                           path);
    return PRIMAL_OK;
}

int primal_hfconfig_load(const char *dir_or_config_json, primal_model_config *out,
                         primal_err *err)
{
    char *path = is_dir(dir_or_config_json) ? join(dir_or_config_json, "config.json")
                                            : strdup(dir_or_config_json);
    if (path == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", dir_or_config_json);
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    int rc;
    if (root == NULL)
        rc = primal_errf(err, PRIMAL_EIO, "%s: %s (line %d)", path, je.text, je.line);
    else
        rc = parse_config(path, root, out, err);
    json_decref(root);
    free(path);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Weights                                                                                    */

typedef struct entry {
    const char *name; /* points into the tensor's own header or the index's JSON */
    int shard;
    const primal_st_tensor *t;
} entry;

struct primal_hf_weights {
    primal_st **shards;
    int nshards;
    entry *e; /* (n) sorted by name */
    int n;
    json_t *index; /* keeps weight_map names alive */
};

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

void primal_hf_close_weights(primal_hf_weights *w)
{
    if (w == NULL)
        return;
    for (int i = 0; i < w->nshards; i++)
        primal_st_close(w->shards[i]);
    free(w->shards);
    free(w->e);
    json_decref(w->index);
    free(w);
}

static int open_single(primal_hf_weights *w, const char *path, primal_err *err)
{
    w->shards = calloc(1, sizeof *w->shards);
    if (w->shards == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
    int rc = primal_st_open(path, &w->shards[0], err);
    if (rc != PRIMAL_OK)
        return rc;
    w->nshards = 1;
    int n = primal_st_count(w->shards[0]);
    w->e = calloc((size_t)(n ? n : 1), sizeof *w->e);
    if (w->e == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) {
        const primal_st_tensor *t = primal_st_at(w->shards[0], i);
        w->e[i] = (entry){ t->name, 0, t };
    }
    w->n = n;
    return PRIMAL_OK;
}

static int open_sharded(primal_hf_weights *w, const char *dir, const char *ipath,
                        primal_err *err)
{
    json_error_t je;
    w->index = json_load_file(ipath, JSON_REJECT_DUPLICATES, &je);
    if (w->index == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: %s (line %d)", ipath, je.text, je.line);
    json_t *map = json_object_get(w->index, "weight_map");
    if (!json_is_object(map))
        return primal_errf(err, PRIMAL_EIO, "%s: weight_map: missing or not an object", ipath);
    size_t n = json_object_size(map);
    w->e = calloc(n ? n : 1, sizeof *w->e);
    w->shards = calloc(n ? n : 1, sizeof *w->shards); /* at most one shard per tensor */
    const char **names = calloc(n ? n : 1, sizeof *names);
    if (w->e == NULL || w->shards == NULL || names == NULL) {
        free(names);
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", ipath);
    }
    int rc = PRIMAL_OK;
    const char *k;
    json_t *v;
    json_object_foreach(map, k, v) {
        if (!json_is_string(v)) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: weight_map: %s: file name is not a string",
                             ipath, k);
            break;
        }
        const char *file = json_string_value(v);
        /* Shards live beside the index; a path out of the directory is not a shard. */
        if (file[0] == '\0' || file[0] == '/' || strstr(file, "..") != NULL) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: weight_map: %s: bad file name \"%s\"", ipath,
                             k, file);
            break;
        }
        int s = 0;
        while (s < w->nshards && strcmp(names[s], file) != 0)
            s++;
        if (s == w->nshards) {
            char *p = join(dir, file);
            if (p == NULL) {
                rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", ipath);
                break;
            }
            rc = primal_st_open(p, &w->shards[s], err);
            free(p);
            if (rc != PRIMAL_OK) {
                primal_err_prefix(err, "%s", ipath);
                break;
            }
            names[s] = file;
            w->nshards++;
        }
        const primal_st_tensor *t = primal_st_get(w->shards[s], k);
        if (t == NULL) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: weight_map: tensor %s: not in %s", ipath, k,
                             primal_st_path(w->shards[s]));
            break;
        }
        w->e[w->n++] = (entry){ k, s, t };
    }
    free(names);
    return rc;
}

int primal_hf_open_weights(const char *dir, primal_hf_weights **out, primal_err *err)
{
    *out = NULL;
    primal_hf_weights *w = calloc(1, sizeof *w);
    char *ipath = join(dir, "model.safetensors.index.json");
    char *spath = join(dir, "model.safetensors");
    int rc;
    if (w == NULL || ipath == NULL || spath == NULL) {
        rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", dir);
        goto out;
    }
    struct stat sb;
    if (stat(ipath, &sb) == 0)
        rc = open_sharded(w, dir, ipath, err);
    else if (stat(spath, &sb) == 0)
        rc = open_single(w, spath, err);
    else
        rc = primal_errf(err, PRIMAL_EIO,
                         "%s: neither model.safetensors nor model.safetensors.index.json found",
                         dir);
    if (rc == PRIMAL_OK)
        qsort(w->e, (size_t)w->n, sizeof *w->e, cmp_entry);
out:
    free(ipath);
    free(spath);
    if (rc != PRIMAL_OK)
        primal_hf_close_weights(w);
    else
        *out = w;
    return rc;
}

const primal_st_tensor *primal_hf_weight(primal_hf_weights *w, const char *name,
                                         const primal_st **st)
{
    entry key = { name, 0, NULL };
    const entry *e = bsearch(&key, w->e, (size_t)w->n, sizeof *w->e, cmp_entry);
    if (e == NULL)
        return NULL;
    if (st != NULL)
        *st = w->shards[e->shard];
    return e->t;
}

int primal_hf_weight_count(const primal_hf_weights *w) { return w->n; }

const char *primal_hf_weight_name(const primal_hf_weights *w, int i)
{
    return i >= 0 && i < w->n ? w->e[i].name : NULL;
}
