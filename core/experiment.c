/* experiment.c: loading and resolving an experiment file, and checking it as a run would
 * (experiment.h). */
#include <errno.h>
#include <fnmatch.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <primal/policy_cuda.h>
#include <primal/tokenizer.h>

#include "checkpoint.h"
#include "experiment.h"
#include "hfconfig.h"
#include "model_cuda.h"

/* Key names are an interface (SPEC.md): examples, sweeps and users' files depend on them. */
const primal_key primal_run_keys[] = {
    {"out", PRIMAL_KEY_STRING, "",
     "run directory; a relative one is relative to the experiment file's directory (given with "
     "--set: to the current directory); default: runs/<experiment file name> in the current "
     "directory", NULL},
    {"steps", PRIMAL_KEY_INT, "1000", "optimizer steps", "[0,1000000000]"},
    {"batch", PRIMAL_KEY_INT, "8", "rows per micro-batch", "[1,65536]"},
    {"seq_len", PRIMAL_KEY_INT, "256", "tokens per row (schedulers may change it)", "[1,1048576]"},
    {"grad_accum", PRIMAL_KEY_INT, "1", "micro-batches per optimizer step", "[1,65536]"},
    {"seed", PRIMAL_KEY_INT, "0", "seed of every random draw of the run", "[0,inf)"},
    {"ckpt_every", PRIMAL_KEY_INT, "0", "steps between checkpoints (0: only the final one)",
     "[0,inf)"},
    {"keep_checkpoints", PRIMAL_KEY_INT, "0", "checkpoints kept, the newest (0: all)", "[0,inf)"},
    {"eval_every", PRIMAL_KEY_INT, "100", "steps between evaluations (0: only at the end)",
     "[0,inf)"},
    {"eval_batches", PRIMAL_KEY_INT, "0", "validation batches per evaluation (0: all)",
     "[0,inf)"},
    {"log_every", PRIMAL_KEY_INT, "10", "steps between log lines", "[1,inf)"},
    {"device", PRIMAL_KEY_ENUM, "cpu", "where the step runs", "cpu|cuda"},
    {"threads", PRIMAL_KEY_INT, "0", "CPU threads (0: all cores)", "[0,4096]"},
    {"recompute", PRIMAL_KEY_ENUM, "false",
     "activations made again in backward instead of kept: none, whole blocks (from each block's "
     "input), or the MLP's gate|up (CUDA only)", "false|true|mlp"},
    {"recompute_blocks", PRIMAL_KEY_INT, "0",
     "with recompute = mlp: the first this many blocks make gate|up again, the others keep it "
     "(0: every block); trades memory for speed a block at a time", "[0,1024]"},
    {"recompute_residual", PRIMAL_KEY_BOOL, "false",
     "CUDA: each block's float32 residual after attention is made again in backward (one o_proj "
     "GEMM a block) instead of kept: 4 bytes x tokens x dim a block", NULL},
    {"norm_input", PRIMAL_KEY_ENUM, "fp32",
     "CUDA: the blocks' RMSNorms read the float32 residual stream as it is, or rounded to "
     "bfloat16 (forward and backward alike), so that backward keeps that half-size copy instead "
     "of the float32 stream: 4 bytes x tokens x dim a block less; the stream itself is still "
     "added in float32", "fp32|bf16"},
    {"head_ahead", PRIMAL_KEY_ENUM, "auto",
     "CUDA: the training forward also runs the LM head's backward (logits made once, the head's "
     "whole G kept until backward): where it fits the logits budget (auto), always, or never "
     "(off: less memory, the logits made twice)", "auto|on|off"},
    {"logits", PRIMAL_KEY_ENUM, "fp32",
     "CUDA: the training forward's logits (the LM head's GEMM output) in float32, or rounded to "
     "bfloat16 as PyTorch's autocast does, so the cross-entropy reads half the bytes; "
     "evaluation keeps float32", "fp32|bf16"},
    {"gemm", PRIMAL_KEY_ENUM, "heuristic",
     "CUDA: each matrix-product shape's algorithm: cuBLAS's heuristic choice (the same bits run "
     "to run), or the fastest of its candidates, timed on the shape's first call (faster; the "
     "choice, and so the bits, may differ between runs; checkpoints keep it for --resume)",
     "heuristic|timed"},
    {"grad_stream", PRIMAL_KEY_BOOL, "true",
     "CUDA: scale gradients and the policy's accumulate run on a second stream, beside the next "
     "matrices' GEMMs; false runs them in line (for comparisons: the same bits either way)",
     NULL},
    {"reduce", PRIMAL_KEY_ENUM, "grad",
     "data parallelism: all-reduce gradients, or the votes of sum-type policies", "grad|votes"},
    {"sample_tokens", PRIMAL_KEY_INT, "200", "tokens of text sampled at the end (0: none)",
     "[0,100000]"},
    {"sample_prompt", PRIMAL_KEY_STRING, "And God said", "prompt of the final sample", NULL},
    {0},
};

const primal_key primal_model_keys[] = {
    {"init", PRIMAL_KEY_STRING, "random",
     "random, a checkpoint (.safetensors) or a Hugging Face model directory (a relative path: "
     "as [run] out)", NULL},
    {"init_std", PRIMAL_KEY_FLOAT, "0.02", "std of the random normal initialisation",
     "(0,10]"},
    {"arch", PRIMAL_KEY_ENUM, "llama", "model family", "llama|qwen2"},
    {"vocab", PRIMAL_KEY_INT, "0", "vocabulary size (0: the tokenizer's)", "[0,16777216]"},
    {"dim", PRIMAL_KEY_INT, "256", "hidden size", "[1,65536]"},
    {"layers", PRIMAL_KEY_INT, "4", "transformer blocks", "[1,1024]"},
    {"heads", PRIMAL_KEY_INT, "4", "attention heads", "[1,1024]"},
    {"kv_heads", PRIMAL_KEY_INT, "0", "key/value heads (0: same as heads)", "[0,1024]"},
    {"ffn", PRIMAL_KEY_INT, "688", "SwiGLU hidden size", "[1,1048576]"},
    {"rope_theta", PRIMAL_KEY_FLOAT, "10000", "RoPE base", "(0,inf)"},
    {"norm_eps", PRIMAL_KEY_FLOAT, "1e-5", "RMSNorm epsilon", "(0,1)"},
    {"tied", PRIMAL_KEY_BOOL, "false", "LM head shares the embedding matrix", NULL},
    {"qkv_bias", PRIMAL_KEY_BOOL, "false", "q/k/v projections have biases (Qwen2)", NULL},
    {0},
};

const primal_key primal_optim_keys[] = {
    {"lr", PRIMAL_KEY_FLOAT, "3e-3", "AdamW learning rate of the float parameters (scales, "
                                     "norms, biases)", "[0,10]"},
    {"betas", PRIMAL_KEY_STRING, "0.9, 0.95", "AdamW beta1, beta2", NULL},
    {"eps", PRIMAL_KEY_FLOAT, "1e-8", "AdamW epsilon", "(0,1)"},
    {"weight_decay", PRIMAL_KEY_FLOAT, "0", "AdamW decoupled weight decay", "[0,10]"},
    {"warmup", PRIMAL_KEY_INT, "100", "linear warmup steps", "[0,inf)"},
    {"schedule", PRIMAL_KEY_ENUM, "cosine", "learning-rate decay after warmup",
     "constant|cosine|linear"},
    {"min_lr", PRIMAL_KEY_FLOAT, "3e-4", "learning rate at the last step (cosine, linear)",
     "[0,10]"},
    {"clip", PRIMAL_KEY_FLOAT, "1.0", "gradient-norm clipping (0: off)", "[0,inf)"},
    {0},
};

const primal_key primal_data_keys[] = {
    {"plugin", PRIMAL_KEY_STRING, "text", "data loader plugin", NULL},
    {"tokenizer", PRIMAL_KEY_STRING, "bytes",
     "bytes, or the path of a Hugging Face tokenizer.json (a relative path: as [run] out)",
     NULL},
    {0},
};

/* [grid] and [flip]: the core reads only plugin (load_grids, primal_grid_from_ini and
 * primal_experiment_load); the plugin declares the rest.  For --describe.  [grid]'s table,
 * primal_grid_core_keys, is grid.c's (primal_grid_from_ini takes its default from it).
 *
 * adam_carry is the default: below one epoch of the Linux C corpus it learns closest to QAT of
 * the shadowless policies (docs/RESULTS.md) */
const primal_key primal_flip_core_keys[] = {
    {"plugin", PRIMAL_KEY_STRING, "adam_carry",
     "flip policy plugin: a name, or the path of a .so (relative: as [run] out)", NULL},
    {0},
};

const primal_key primal_scheduler_keys[] = {
    {"plugins", PRIMAL_KEY_STRING, "", "scheduler plugins applied in order, comma-separated",
     NULL},
    {0},
};

static int bind_core(primal_ini *ini, const char *section, const primal_key *keys,
                     const char *const *ignore, primal_config **out, primal_err *err)
{
    return primal_config_bind(ini, section, keys, "the core", ignore, out, err);
}

/* A plugin value with a '/' is the path of a .so: relative to the experiment file's directory
 * when the file gave it (line > 0), as every other path in the file, and to the current
 * directory when --set did (line 0).  Set before each load. */
static int plugin_paths_from(primal_experiment *e, int line, primal_err *err)
{
    return primal_search_relative_to(&e->search, line > 0 ? primal_ini_path(e->ini) : NULL, err);
}

/* The keys of a plugin section, minus "plugin"; the loaded plugin declares the rest. */
static int load_plugin_section(primal_experiment *e, const char *section, const char *name,
                               int line, primal_kind kind, const char *const *ignore,
                               primal_loaded **pl, primal_config **cfg, primal_err *err)
{
    int rc = plugin_paths_from(e, line, err);
    if (rc == PRIMAL_OK)
        rc = primal_plugin_load(&e->search, name, kind, pl, err);
    if (rc != PRIMAL_OK) {
        if (line > 0)
            return primal_err_prefix(err, "%s:%d: [%s] plugin", primal_ini_path(e->ini), line,
                                     section);
        return primal_err_prefix(err, "[%s] plugin", section);
    }
    return primal_config_bind(e->ini, section, (*pl)->desc->keys, (*pl)->desc->name, ignore,
                              cfg, err);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/* The one rule for a path that the experiment names (README, "Paths"): a relative path that the
 * experiment file gives (line > 0) is relative to the file's directory; one that --set gives
 * (line < 0), or a default (line 0), is relative to the current directory and so is kept as it
 * is.  malloc'ed; NULL when out of memory. */
static char *resolve_path(const primal_experiment *e, const char *value, int line)
{
    if (line <= 0 || value[0] == '/' || value[0] == '\0')
        return strdup(value);
    char *p;
    return asprintf(&p, "%s/%s", primal_cfg_dir(e->run_c), value) < 0 ? NULL : p;
}

/* [data] KEY (path, val_path: the loaders' comma-separated paths or globs, primal/datafiles.h)
 * given with --set: the loader joins a relative item onto the experiment file's directory
 * (primal_cfg_dir), so each relative item is made absolute here, against the current
 * directory, and the run's config.ini records it so. */
static int data_paths_from_cwd(primal_experiment *e, const char *key, primal_err *err)
{
    int line = 0;
    const char *v = primal_ini_get(e->ini, "data", key, &line);
    if (v == NULL || line >= 0)
        return PRIMAL_OK;
    char *cwd = getcwd(NULL, 0);
    if (cwd == NULL)
        return primal_errf(err, PRIMAL_EIO, "--set data.%s: the current directory: %s", key,
                           strerror(errno));
    size_t cap = strlen("data.") + strlen(key) + 2 + strlen(v) * (strlen(cwd) + 2) + 1;
    char *set = malloc(cap), *list = strdup(v);
    if (set == NULL || list == NULL) {
        free(cwd);
        free(set);
        free(list);
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    }
    size_t n = (size_t)snprintf(set, cap, "data.%s=", key);
    char *save = NULL;
    for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        item = trim(item);
        if (*item == '\0')
            continue;
        n += (size_t)snprintf(set + n, cap - n, "%s%s%s%s", set[n - 1] == '=' ? "" : ",",
                              item[0] == '/' ? "" : cwd, item[0] == '/' ? "" : "/", item);
    }
    /* primal_ini_set reads the value as a file's line would: the current directory could make
     * it one that reads otherwise (a " ;" in a directory's name) */
    const char *value = strchr(set, '=') + 1;
    const char *why = primal_ini_value_problem(value);
    int most = PRIMAL_INI_MAX_LINE - (int)strlen(key) - 3, rc;
    if (why != NULL)
        rc = primal_errf(err, PRIMAL_ECONFIG, "--set: [data] %s: once made absolute, \"%s\" "
                         "%s: the resolved configuration (config.ini) would not read it back",
                         key, value, why);
    else if (strlen(value) > (size_t)most)
        rc = primal_errf(err, PRIMAL_ECONFIG,
                         "--set: [data] %s: paths longer than %d characters once made absolute "
                         "(%zu: %.40s...), more than a line of the resolved configuration "
                         "(config.ini) holds (%d)",
                         key, most, strlen(value), value, PRIMAL_INI_MAX_LINE);
    else
        rc = primal_ini_set(e->ini, set, err);
    free(cwd);
    free(set);
    free(list);
    return rc;
}

static int resolve_run(primal_experiment *e, primal_err *err)
{
    primal_config *c = e->run_c;
    primal_run_cfg *r = &e->run;
    /* the run directory, as the resolved configuration then shows it: out by the rule of
     * paths, or runs/<experiment file name> in the current directory */
    const char *out = primal_cfg_str(c, "out");
    char *dir = NULL;
    if (out[0] != '\0') {
        int line = 0;
        primal_ini_get(e->ini, "run", "out", &line);
        dir = resolve_path(e, out, line);
    } else {
        const char *path = primal_ini_path(e->ini);
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        const char *dot = strrchr(base, '.');
        int len = dot != NULL && dot != base ? (int)(dot - base) : (int)strlen(base);
        if (asprintf(&dir, "runs/%.*s", len, base) < 0)
            dir = NULL;
    }
    if (dir == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int rc = primal_config_set_str(c, "out", dir, err);
    free(dir);
    if (rc != PRIMAL_OK)
        return rc;
    r->out = primal_cfg_str(c, "out");
    r->steps = primal_cfg_int(c, "steps");
    r->batch = (int)primal_cfg_int(c, "batch");
    r->seq_len = (int)primal_cfg_int(c, "seq_len");
    r->grad_accum = (int)primal_cfg_int(c, "grad_accum");
    r->seed = (uint64_t)primal_cfg_int(c, "seed");
    r->ckpt_every = primal_cfg_int(c, "ckpt_every");
    r->eval_every = primal_cfg_int(c, "eval_every");
    r->eval_batches = (int)primal_cfg_int(c, "eval_batches");
    r->log_every = primal_cfg_int(c, "log_every");
    r->device = strcmp(primal_cfg_str(c, "device"), "cuda") == 0 ? PRIMAL_DEVICE_CUDA
                                                                  : PRIMAL_DEVICE_CPU;
    r->threads = (int)primal_cfg_int(c, "threads");
    const char *rec = primal_cfg_str(c, "recompute");
    r->recompute = strcmp(rec, "true") == 0  ? PRIMAL_RECOMPUTE_BLOCK
                   : strcmp(rec, "mlp") == 0 ? PRIMAL_RECOMPUTE_MLP
                                             : PRIMAL_RECOMPUTE_NONE;
    if (r->recompute == PRIMAL_RECOMPUTE_MLP && r->device != PRIMAL_DEVICE_CUDA)
        return primal_cfg_errf(c, "recompute", err, PRIMAL_ECONFIG,
                               "mlp needs device = cuda; the CPU engine recomputes whole blocks "
                               "(recompute = true)");
    const char *ha = primal_cfg_str(c, "head_ahead");
    r->head_ahead = strcmp(ha, "on") == 0 ? 1 : strcmp(ha, "off") == 0 ? -1 : 0;
    if (r->head_ahead != 0 && r->device != PRIMAL_DEVICE_CUDA)
        return primal_cfg_errf(c, "head_ahead", err, PRIMAL_ECONFIG,
                               "%s needs device = cuda (the CPU engine has no head-ahead pass)",
                               ha);
    r->logits_bf16 = strcmp(primal_cfg_str(c, "logits"), "bf16") == 0;
    if (r->logits_bf16 && r->device != PRIMAL_DEVICE_CUDA)
        return primal_cfg_errf(c, "logits", err, PRIMAL_ECONFIG,
                               "bf16 needs device = cuda (the CPU engine computes in float32)");
    r->gemm_timed = strcmp(primal_cfg_str(c, "gemm"), "timed") == 0;
    if (r->gemm_timed && r->device != PRIMAL_DEVICE_CUDA)
        return primal_cfg_errf(c, "gemm", err, PRIMAL_ECONFIG,
                               "timed needs device = cuda (the CPU engine's GEMMs are OpenBLAS's)");
    r->grad_stream = primal_cfg_bool(c, "grad_stream");
    if (!r->grad_stream && r->device != PRIMAL_DEVICE_CUDA)
        return primal_cfg_errf(c, "grad_stream", err, PRIMAL_ECONFIG,
                               "false needs device = cuda (the CPU engine has one stream)");
    r->recompute_blocks = (int)primal_cfg_int(c, "recompute_blocks");
    if (r->recompute_blocks > 0 && r->recompute != PRIMAL_RECOMPUTE_MLP)
        return primal_cfg_errf(c, "recompute_blocks", err, PRIMAL_ECONFIG,
                               "%d blocks, but only recompute = mlp takes a count of blocks "
                               "(recompute = %s)", r->recompute_blocks, rec);
    r->recompute_residual = primal_cfg_bool(c, "recompute_residual");
    if (r->recompute_residual && r->device != PRIMAL_DEVICE_CUDA)
        return primal_cfg_errf(c, "recompute_residual", err, PRIMAL_ECONFIG,
                               "true needs device = cuda; the CPU engine recomputes whole blocks "
                               "(recompute = true)");
    if (r->recompute_residual && r->recompute == PRIMAL_RECOMPUTE_BLOCK)
        return primal_cfg_errf(c, "recompute_residual", err, PRIMAL_ECONFIG,
                               "true with recompute = true: whole blocks are made again anyway");
    r->norm_bf16 = strcmp(primal_cfg_str(c, "norm_input"), "bf16") == 0;
    if (r->norm_bf16 && r->device != PRIMAL_DEVICE_CUDA)
        return primal_cfg_errf(c, "norm_input", err, PRIMAL_ECONFIG,
                               "bf16 needs device = cuda (the CPU engine computes in float32)");
    if (r->norm_bf16 && (r->recompute == PRIMAL_RECOMPUTE_BLOCK || r->recompute_residual))
        return primal_cfg_errf(c, "norm_input", err, PRIMAL_ECONFIG,
                               "bf16 with %s: that rebuilds the blocks from the float32 residual "
                               "stream, which bf16 norm inputs do not keep",
                               r->recompute_residual ? "recompute_residual = true"
                                                     : "recompute = true");
    r->reduce_votes = strcmp(primal_cfg_str(c, "reduce"), "votes") == 0;
    r->sample_tokens = (int)primal_cfg_int(c, "sample_tokens");
    r->sample_prompt = primal_cfg_str(c, "sample_prompt");
    return PRIMAL_OK;
}

static int resolve_model(primal_experiment *e, primal_err *err)
{
    primal_config *c = e->model_c;
    primal_model_config *m = &e->model;
    e->model_init = primal_cfg_str(c, "init");
    if (strcmp(e->model_init, "random") != 0) {
        int line = 0;
        primal_ini_get(e->ini, "model", "init", &line);
        e->model_init_path = resolve_path(e, e->model_init, line);
        if (e->model_init_path == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        e->model_init = e->model_init_path;
    }
    e->init_std = primal_cfg_float(c, "init_std");
    m->arch = strcmp(primal_cfg_str(c, "arch"), "qwen2") == 0 ? PRIMAL_ARCH_QWEN2
                                                               : PRIMAL_ARCH_LLAMA;
    m->vocab = (int)primal_cfg_int(c, "vocab");
    m->dim = (int)primal_cfg_int(c, "dim");
    m->layers = (int)primal_cfg_int(c, "layers");
    m->heads = (int)primal_cfg_int(c, "heads");
    m->kv_heads = (int)primal_cfg_int(c, "kv_heads");
    if (m->kv_heads == 0)
        m->kv_heads = m->heads;
    m->ffn = (int)primal_cfg_int(c, "ffn");
    m->rope_theta = primal_cfg_float(c, "rope_theta");
    m->norm_eps = primal_cfg_float(c, "norm_eps");
    m->tied = primal_cfg_bool(c, "tied");
    m->qkv_bias = primal_cfg_bool(c, "qkv_bias");
    if (m->dim % m->heads != 0)
        return primal_cfg_errf(c, "heads", err, PRIMAL_ECONFIG,
                               "dim %d is not a multiple of heads %d", m->dim, m->heads);
    if ((m->dim / m->heads) % 2 != 0)
        return primal_cfg_errf(c, "heads", err, PRIMAL_ECONFIG,
                               "head size dim/heads = %d must be even for RoPE",
                               m->dim / m->heads);
    if (m->heads % m->kv_heads != 0)
        return primal_cfg_errf(c, "kv_heads", err, PRIMAL_ECONFIG,
                               "heads %d is not a multiple of kv_heads %d", m->heads,
                               m->kv_heads);
    return PRIMAL_OK;
}

static int resolve_optim(primal_experiment *e, primal_err *err)
{
    primal_config *c = e->optim_c;
    primal_optim_cfg *o = &e->optim;
    o->lr = primal_cfg_float(c, "lr");
    o->eps = primal_cfg_float(c, "eps");
    o->weight_decay = primal_cfg_float(c, "weight_decay");
    o->warmup = primal_cfg_int(c, "warmup");
    o->min_lr = primal_cfg_float(c, "min_lr");
    o->clip = primal_cfg_float(c, "clip");
    const char *s = primal_cfg_str(c, "schedule");
    o->schedule = strcmp(s, "cosine") == 0 ? 1 : strcmp(s, "linear") == 0 ? 2 : 0;
    const char *betas = primal_cfg_str(c, "betas");
    char *end;
    o->beta1 = strtod(betas, &end);
    const char *p = end;
    while (*p == ' ')
        p++;
    if (*p == ',') {
        o->beta2 = strtod(p + 1, &end);
        while (*end == ' ')
            end++;
    }
    if (end == betas || *p != ',' || *end != '\0' || !(o->beta1 >= 0 && o->beta1 < 1) ||
        !(o->beta2 >= 0 && o->beta2 < 1))
        return primal_cfg_errf(c, "betas", err, PRIMAL_ECONFIG,
                               "expected two numbers in [0,1) separated by a comma, got \"%s\"",
                               betas);
    if (o->min_lr > o->lr && o->schedule != 0)
        return primal_cfg_errf(c, "min_lr", err, PRIMAL_ECONFIG,
                               "%g is above lr %g", o->min_lr, o->lr);
    return PRIMAL_OK;
}

static int load_grids(primal_experiment *e, primal_err *err)
{
    int grid_line = 0;
    primal_ini_get(e->ini, "grid", "plugin", &grid_line);
    int rc = plugin_paths_from(e, grid_line, err);
    if (rc == PRIMAL_OK)
        rc = primal_grid_from_ini(&e->search, e->ini, "grid", &e->grid, err);
    if (rc != PRIMAL_OK)
        return rc;
    e->grid_ref = (primal_grid_ref){e->grid->name, e->grid->values, e->grid->size};
    int n = primal_ini_nsections(e->ini);
    e->overrides = calloc((size_t)n + 1, sizeof *e->overrides);
    e->override_refs = calloc((size_t)n + 1, sizeof *e->override_refs);
    if (e->overrides == NULL || e->override_refs == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        const char *name = primal_ini_section_name(e->ini, i);
        if (strncmp(name, "grid.", 5) != 0)
            continue;
        primal_grid_override *o = &e->overrides[e->n_overrides];
        o->pattern = strdup(name + 5);
        if (o->pattern == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        /* an override without a plugin key inherits [grid]'s plugin (and, for a path, where
         * [grid]'s value came from) */
        int line = 0;
        if (primal_ini_get(e->ini, name, "plugin", &line) == NULL) {
            char set[600];
            const char *base = primal_ini_get(e->ini, "grid", "plugin", NULL);
            snprintf(set, sizeof set, "%s.plugin=%s", name,
                     base ? base : primal_grid_core_keys[0].def);
            rc = primal_ini_set(e->ini, set, err);
            line = grid_line;
        }
        if (rc == PRIMAL_OK)
            rc = plugin_paths_from(e, line, err);
        if (rc == PRIMAL_OK)
            rc = primal_grid_from_ini(&e->search, e->ini, name, &o->grid, err);
        if (rc != PRIMAL_OK) {
            free(o->pattern); /* not yet counted in n_overrides, which experiment_free frees */
            o->pattern = NULL;
            return rc;
        }
        e->override_refs[e->n_overrides] =
            (primal_grid_ref){o->grid->name, o->grid->values, o->grid->size};
        e->n_overrides++;
    }
    return PRIMAL_OK;
}

const primal_grid_ref *primal_experiment_grid_for(void *user, const char *tensor_name)
{
    primal_experiment *e = user;
    const primal_policy_vt *vt = e->policy->desc->vtable;
    if (vt->storage == PRIMAL_STORAGE_DENSE)
        return NULL;
    for (int i = e->n_overrides - 1; i >= 0; i--)
        if (fnmatch(e->overrides[i].pattern, tensor_name, 0) == 0)
            return &e->override_refs[i];
    return &e->grid_ref;
}

static int load_schedulers(primal_experiment *e, primal_err *err)
{
    const char *list = primal_cfg_str(e->sched_c, "plugins");
    char *copy = strdup(list);
    if (copy == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int cap = 1;
    for (const char *p = list; *p; p++)
        cap += *p == ',';
    e->scheds = calloc((size_t)cap, sizeof *e->scheds);
    e->sched_cs = calloc((size_t)cap, sizeof *e->sched_cs);
    if (e->scheds == NULL || e->sched_cs == NULL) {
        free(copy);
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    }
    int rc = PRIMAL_OK;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == PRIMAL_OK;
         tok = strtok_r(NULL, ",", &save)) {
        char *name = trim(tok);
        if (*name == '\0')
            continue;
        int line = 0;
        primal_ini_get(e->ini, "scheduler", "plugins", &line);
        /* a scheduler's keys live in a section named after it (the basename for a path) */
        const char *section = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
        char sect[256];
        snprintf(sect, sizeof sect, "%s", section);
        char *dot = strstr(sect, ".so");
        if (dot)
            *dot = '\0';
        int k = e->n_scheds;
        rc = plugin_paths_from(e, line, err);
        if (rc == PRIMAL_OK)
            rc = primal_plugin_load(&e->search, name, PRIMAL_KIND_SCHEDULER, &e->scheds[k],
                                    err);
        if (rc != PRIMAL_OK) {
            rc = line > 0 ? primal_err_prefix(err, "%s:%d: [scheduler] plugins",
                                              primal_ini_path(e->ini), line)
                          : primal_err_prefix(err, "[scheduler] plugins");
            break;
        }
        e->n_scheds++;
        rc = primal_config_bind(e->ini, sect, e->scheds[k]->desc->keys,
                                e->scheds[k]->desc->name, NULL, &e->sched_cs[k], err);
    }
    free(copy);
    return rc;
}

static int check_resolved(primal_experiment *e, primal_err *err);

int primal_experiment_load(const char *path, const char *const *sets,
                           const char *const *plugin_dirs, primal_experiment **out,
                           primal_err *err)
{
    *out = NULL;
    primal_experiment *e = calloc(1, sizeof *e);
    if (e == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int rc = primal_ini_load(path, &e->ini, err);
    for (; rc == PRIMAL_OK && sets && *sets; sets++)
        rc = primal_ini_set(e->ini, *sets, err);
    if (rc == PRIMAL_OK)
        rc = primal_search_init(&e->search, plugin_dirs, err);
    static const char *const ignore_plugin[] = {"plugin", NULL};
    static const char *const ignore_data[] = {"plugin", "tokenizer", NULL};
    if (rc == PRIMAL_OK)
        rc = bind_core(e->ini, "run", primal_run_keys, NULL, &e->run_c, err);
    if (rc == PRIMAL_OK)
        rc = bind_core(e->ini, "model", primal_model_keys, NULL, &e->model_c, err);
    if (rc == PRIMAL_OK)
        rc = bind_core(e->ini, "optim", primal_optim_keys, NULL, &e->optim_c, err);
    if (rc == PRIMAL_OK)
        rc = bind_core(e->ini, "scheduler", primal_scheduler_keys, NULL, &e->sched_c, err);
    if (rc == PRIMAL_OK) {
        /* [data]'s own keys first (plugin, tokenizer), then the loader binds the rest */
        primal_ini *tmp = primal_ini_new(primal_ini_path(e->ini));
        if (tmp == NULL)
            rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        const char *dk[] = {"plugin", "tokenizer"};
        char set[4096];
        for (int i = 0; i < 2 && rc == PRIMAL_OK; i++) {
            const char *v = primal_ini_get(e->ini, "data", dk[i], NULL);
            if (v != NULL) {
                snprintf(set, sizeof set, "data.%s=%s", dk[i], v);
                rc = primal_ini_set(tmp, set, err);
            }
        }
        if (rc == PRIMAL_OK)
            rc = bind_core(tmp, "data", primal_data_keys, NULL, &e->data_c, err);
        primal_ini_free(tmp);
    }
    if (rc == PRIMAL_OK)
        rc = resolve_run(e, err);
    if (rc == PRIMAL_OK)
        rc = resolve_model(e, err);
    if (rc == PRIMAL_OK)
        rc = resolve_optim(e, err);
    if (rc == PRIMAL_OK) {
        int line = 0;
        const char *name = primal_ini_get(e->ini, "flip", "plugin", &line);
        rc = load_plugin_section(e, "flip", name ? name : primal_flip_core_keys[0].def, line,
                                 PRIMAL_KIND_POLICY, ignore_plugin, &e->policy, &e->policy_c,
                                 err);
    }
    if (rc == PRIMAL_OK)
        rc = load_grids(e, err);
    if (rc == PRIMAL_OK)
        rc = load_schedulers(e, err);
    if (rc == PRIMAL_OK) {
        /* data_c was bound from a copy of [data]'s two core keys, where every line reads as
         * --set's: where the value came from is e->ini's line */
        int line = 0;
        primal_ini_get(e->ini, "data", "tokenizer", &line);
        e->tokenizer = primal_cfg_str(e->data_c, "tokenizer");
        if (strcmp(e->tokenizer, "bytes") != 0) {
            if (line < 0 && e->tokenizer[0] != '/' && e->tokenizer[0] != '\0') {
                /* the resolved configuration writes this path: a relative one that --set
                 * gives is made absolute against the current directory (as [data] path and
                 * val_path), so that config.ini, read again, names the same file */
                char *cwd = getcwd(NULL, 0);
                if (cwd == NULL)
                    rc = primal_errf(err, PRIMAL_EIO, "--set data.tokenizer: the current "
                                     "directory: %s", strerror(errno));
                else if (asprintf(&e->tokenizer_path, "%s/%s", cwd, e->tokenizer) < 0)
                    e->tokenizer_path = NULL;
                free(cwd);
            } else {
                e->tokenizer_path = resolve_path(e, e->tokenizer, line);
            }
            if (rc == PRIMAL_OK && e->tokenizer_path == NULL)
                rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
            e->tokenizer = e->tokenizer_path;
        }
    }
    if (rc == PRIMAL_OK)
        rc = data_paths_from_cwd(e, "path", err);
    if (rc == PRIMAL_OK)
        rc = data_paths_from_cwd(e, "val_path", err);
    if (rc == PRIMAL_OK) {
        int line = 0;
        primal_ini_get(e->ini, "data", "plugin", &line);
        rc = load_plugin_section(e, "data", primal_cfg_str(e->data_c, "plugin"), line,
                                 PRIMAL_KIND_LOADER, ignore_data, &e->loader, &e->loader_c,
                                 err);
    }
    if (rc == PRIMAL_OK) {
        char hint[512];
        snprintf(hint, sizeof hint,
                 "known: run, model, grid, grid.TENSOR, flip, optim, scheduler, data%s%s",
                 e->n_scheds ? ", and the sections of the schedulers listed in [scheduler] "
                               "plugins"
                             : "",
                 "");
        rc = primal_ini_check_unused(e->ini, hint, err);
    }
    if (rc == PRIMAL_OK)
        rc = check_resolved(e, err);
    if (rc != PRIMAL_OK) {
        primal_experiment_free(e);
        return rc;
    }
    *out = e;
    return PRIMAL_OK;
}

void primal_experiment_free(primal_experiment *e)
{
    if (e == NULL)
        return;
    primal_config_free(e->run_c);
    primal_config_free(e->model_c);
    primal_config_free(e->optim_c);
    primal_config_free(e->data_c);
    primal_config_free(e->sched_c);
    primal_config_free(e->policy_c);
    primal_config_free(e->loader_c);
    primal_plugin_unload(e->policy);
    primal_plugin_unload(e->loader);
    for (int i = 0; i < e->n_scheds; i++) {
        primal_config_free(e->sched_cs[i]);
        primal_plugin_unload(e->scheds[i]);
    }
    free(e->scheds);
    free(e->sched_cs);
    primal_grid_free(e->grid);
    for (int i = 0; e->overrides && i < e->n_overrides; i++) {
        free(e->overrides[i].pattern);
        primal_grid_free(e->overrides[i].grid);
    }
    free(e->overrides);
    free(e->override_refs);
    primal_search_free(&e->search);
    primal_ini_free(e->ini);
    free(e->tokenizer_path);
    free(e->model_init_path);
    free(e);
}

static void append(char **buf, size_t *len, size_t *cap, const char *text)
{
    size_t n = strlen(text);
    if (*buf == NULL)
        return;
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap + n + 1) * 2;
        char *nb = realloc(*buf, nc);
        if (nb == NULL) {
            free(*buf);
            *buf = NULL;
            return;
        }
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, text, n + 1);
    *len += n;
}

/* Append the "key = value" lines of text, less those whose key is in omit (NULL-terminated)
 * and was not given in the experiment. */
/* text without the lines of the keys in omit that the experiment did not set, and of the keys
 * in drop whatever it did (extra lines of section_text replace them). */
static void append_kept(char **buf, size_t *len, size_t *cap, const char *text,
                        const primal_config *c, const char *const *omit,
                        const char *const *drop)
{
    char line[4200];
    for (const char *p = text; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t n = nl != NULL ? (size_t)(nl - p) + 1 : strlen(p);
        int keep = 1;
        for (int i = 0; omit != NULL && omit[i] != NULL && keep; i++) {
            size_t k = strlen(omit[i]);
            if (n > k + 2 && strncmp(p, omit[i], k) == 0 && strncmp(p + k, " = ", 3) == 0 &&
                !primal_cfg_is_set(c, omit[i]))
                keep = 0;
        }
        for (int i = 0; drop != NULL && drop[i] != NULL && keep; i++) {
            size_t k = strlen(drop[i]);
            if (n > k + 2 && strncmp(p, drop[i], k) == 0 && strncmp(p + k, " = ", 3) == 0)
                keep = 0;
        }
        if (keep) {
            snprintf(line, sizeof line, "%.*s", (int)n, p);
            append(buf, len, cap, line);
        }
        p += n;
    }
}

/* [run] keys that only the CUDA backend reads: a CPU run's resolved configuration leaves them
 * out unless the experiment gave them. */
static const char *const cuda_only_keys[] = {"recompute_residual", "norm_input", "head_ahead",
                                             "logits", "gemm", "grad_stream", NULL};

static void section_text(char **buf, size_t *len, size_t *cap, const char *name,
                         const char *plugin, const primal_config *c, const char *extra,
                         const char *const *omit, const char *const *drop)
{
    char line[4200];
    snprintf(line, sizeof line, "[%s]\n", name);
    append(buf, len, cap, line);
    if (plugin != NULL) {
        snprintf(line, sizeof line, "plugin = %s\n", plugin);
        append(buf, len, cap, line);
    }
    if (extra != NULL)
        append(buf, len, cap, extra);
    if (c != NULL) {
        char *mem = NULL;
        size_t mlen = 0;
        FILE *f = open_memstream(&mem, &mlen);
        if (f != NULL) {
            primal_config_write(c, f);
            fclose(f);
            append_kept(buf, len, cap, mem, c, omit, drop);
            free(mem);
        }
    }
    append(buf, len, cap, "\n");
}

/* A grid's plugin as config.ini names it (grid.h). */
static const char *grid_ref(const primal_grid *g)
{
    return g->plugin_ref != NULL ? g->plugin_ref : g->plugin;
}

char *primal_experiment_resolved(const primal_experiment *e)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    if (buf == NULL)
        return NULL;
    buf[0] = '\0';
    section_text(&buf, &len, &cap, "run", NULL, e->run_c, NULL,
                 e->run.device == PRIMAL_DEVICE_CPU ? cuda_only_keys : NULL, NULL);
    section_text(&buf, &len, &cap, "model", NULL, e->model_c, NULL, NULL, NULL);
    section_text(&buf, &len, &cap, "grid", grid_ref(e->grid), NULL, e->grid->keys_ini, NULL,
                 NULL);
    for (int i = 0; i < e->n_overrides; i++) {
        char sect[512];
        snprintf(sect, sizeof sect, "grid.%s", e->overrides[i].pattern);
        section_text(&buf, &len, &cap, sect, grid_ref(e->overrides[i].grid), NULL,
                     e->overrides[i].grid->keys_ini, NULL, NULL);
    }
    section_text(&buf, &len, &cap, "flip", e->policy->ref, e->policy_c, NULL, NULL, NULL);
    section_text(&buf, &len, &cap, "optim", NULL, e->optim_c, NULL, NULL, NULL);
    /* the scheduler plugins as loaded: a name, or a .so's absolute path (registry.h) */
    static const char *const sched_omit[] = {"plugins", NULL};
    size_t plen = 0, pcap = 64;
    char *plist = malloc(pcap);
    if (plist != NULL) {
        plist[0] = '\0';
        append(&plist, &plen, &pcap, "plugins = ");
        for (int i = 0; i < e->n_scheds; i++) {
            if (i > 0)
                append(&plist, &plen, &pcap, ", ");
            append(&plist, &plen, &pcap, e->scheds[i]->ref);
        }
        append(&plist, &plen, &pcap, "\n");
    }
    section_text(&buf, &len, &cap, "scheduler", NULL, e->sched_c,
                 plist != NULL && e->n_scheds > 0 ? plist : NULL, NULL,
                 plist != NULL && e->n_scheds > 0 ? sched_omit : NULL);
    free(plist);
    for (int i = 0; i < e->n_scheds; i++)
        section_text(&buf, &len, &cap, primal_cfg_section(e->sched_cs[i]), NULL,
                     e->sched_cs[i], NULL, NULL, NULL);
    char dline[600];
    snprintf(dline, sizeof dline, "tokenizer = %s\n", e->tokenizer);
    section_text(&buf, &len, &cap, "data", e->loader->ref, e->loader_c, dline, NULL, NULL);
    return buf;
}

/* The resolved configuration (what primal-run writes to config.ini) must load again as it is:
 * each line within the reader's PRIMAL_INI_MAX_LINE characters, each section name and value one
 * the reader gives back.  A file's own lines keep to the limit, but resolving joins relative
 * paths onto the file's directory ([run] out, [data] tokenizer) or makes them absolute ([data]
 * path, val_path and tokenizer given with --set), "key=value" comes back as "key = value", and a
 * --set value has no line to keep to: where a line would not hold, the experiment is refused
 * here, naming where the value came from, rather than its config.ini when it is read again. */
static int check_resolved(primal_experiment *e, primal_err *err)
{
    char *text = primal_experiment_resolved(e);
    if (text == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    const char *path = primal_ini_path(e->ini);
    char section[256] = "";
    int rc = PRIMAL_OK;
    for (char *line = text; *line != '\0' && rc == PRIMAL_OK;) {
        char *nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        size_t len = strlen(line);
        if (line[0] == '[') {
            snprintf(section, sizeof section, "%.*s", len > 1 ? (int)(len - 2) : 0, line + 1);
            const char *why = primal_ini_section_problem(section);
            if (why != NULL)
                rc = primal_errf(err, PRIMAL_ECONFIG,
                                 "%s: [%.*s%s]: %s, as the resolved configuration (config.ini) "
                                 "would name it",
                                 path, PRIMAL_INI_MAX_SECTION, section,
                                 strlen(section) > PRIMAL_INI_MAX_SECTION ? "..." : "", why);
        } else if (strstr(line, " = ") != NULL) {
            char *eq = strstr(line, " = ");
            *eq = '\0';
            const char *key = line, *value = eq + 3;
            int at = 0;
            const char *given = primal_ini_get(e->ini, section, key, &at);
            char where[600];
            if (at > 0)
                snprintf(where, sizeof where, "%s:%d", path, at);
            else
                snprintf(where, sizeof where, "%s", at < 0 ? "--set" : path);
            /* a path the core made absolute (or joined onto the file's directory) */
            int resolved = given != NULL && strcmp(given, value) != 0;
            const char *how = value[0] == '/' ? "made absolute"
                                              : "joined onto the experiment file's directory";
            int most = PRIMAL_INI_MAX_LINE - (int)strlen(key) - 3;
            const char *why = primal_ini_value_problem(value);
            if (len > PRIMAL_INI_MAX_LINE && resolved)
                rc = primal_errf(err, PRIMAL_ECONFIG,
                                 "%s: [%s] %s: path longer than %d characters once %s (%zu: "
                                 "%.40s...), more than a line of the resolved configuration "
                                 "(config.ini) holds (%d)",
                                 where, section, key, most, how, strlen(value), value,
                                 PRIMAL_INI_MAX_LINE);
            else if (len > PRIMAL_INI_MAX_LINE)
                rc = primal_errf(err, PRIMAL_ECONFIG,
                                 "%s: [%s] %s: value longer than %d characters (%zu: %.40s...), "
                                 "more than a line of the resolved configuration (config.ini) "
                                 "holds (%d)",
                                 where, section, key, most, strlen(value), value,
                                 PRIMAL_INI_MAX_LINE);
            else if (why != NULL)
                rc = primal_errf(err, PRIMAL_ECONFIG,
                                 "%s: [%s] %s: %s%s%s\"%s\" %s: the resolved configuration "
                                 "(config.ini) would not read it back",
                                 where, section, key, resolved ? "once " : "",
                                 resolved ? how : "", resolved ? ", " : "", value, why);
        } else if (len > PRIMAL_INI_MAX_LINE) {
            rc = primal_errf(err, PRIMAL_ECONFIG,
                             "%s: [%s]: a line of the resolved configuration (config.ini) "
                             "longer than %d characters (%.48s...)",
                             path, section, PRIMAL_INI_MAX_LINE, line);
        }
        line = nl != NULL ? nl + 1 : line + len;
    }
    free(text);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* What a run refuses at start (primal-run --check)                                           */

int primal_experiment_check_run(const primal_experiment *e, int nranks, primal_err *err)
{
    const primal_policy_vt *pvt = e->policy->desc->vtable;
    if (e->run.device == PRIMAL_DEVICE_CUDA) {
#ifdef PRIMAL_HAVE_CUDA
        char gpu[256];
        if (primal_cuda_device_count(gpu, sizeof gpu) < 1)
            return primal_cfg_errf(e->run_c, "device", err, PRIMAL_EDEVICE,
                                   "cuda: no CUDA device on this machine");
        if (pvt->size < offsetof(primal_policy_vt, cuda) + sizeof pvt->cuda ||
            pvt->cuda == NULL)
            return primal_cfg_errf(e->run_c, "device", err, PRIMAL_ECONFIG,
                                   "cuda: flip policy %s has no CUDA version (policies with "
                                   "one: see primal-run --describe NAME)",
                                   e->policy->desc->name);
        if (nranks > 1)
            return primal_cfg_errf(e->run_c, "device", err, PRIMAL_ECONFIG,
                                   "cuda: several ranks on GPUs need NCCL, which this build "
                                   "does not use yet; run one rank per job");
#else
        (void)nranks;
        return primal_cfg_errf(e->run_c, "device", err, PRIMAL_ECONFIG,
                               "cuda: this PRIMAL was built without CUDA (configure "
                               "--with-cuda)");
#endif
    }
    if (e->run.reduce_votes) {
        if (pvt->size < offsetof(primal_policy_vt, vote_increments) +
                            sizeof pvt->vote_increments ||
            pvt->vote_increments == NULL)
            return primal_cfg_errf(e->run_c, "reduce", err, PRIMAL_ECONFIG,
                                   "votes: flip policy %s is not a sum of integer votes it can "
                                   "reduce (it has no vote_increments entry point); use "
                                   "reduce = grad",
                                   e->policy->desc->name);
        if (e->run.device == PRIMAL_DEVICE_CUDA)
            return primal_cfg_errf(e->run_c, "reduce", err, PRIMAL_ECONFIG,
                                   "votes: the vote all-reduce runs on the CPU only");
    }
    return PRIMAL_OK;
}

/* A checkpoint's matrices are stored over the grids the experiment gives them (or dense where
 * the policy is), as primal_ckpt_load_model will insist: the same messages, without a model. */
typedef struct ckpt_grids_ctx {
    primal_experiment *e;
    const primal_ckpt *c;
} ckpt_grids_ctx;

static int check_ckpt_grid(void *user, const primal_param_desc *d, primal_err *err)
{
    const ckpt_grids_ctx *x = user;
    if (!d->is_matrix)
        return PRIMAL_OK;
    const char *path = primal_ckpt_path(x->c);
    const primal_grid_ref *g = primal_experiment_grid_for(x->e, d->name);
    const char *cg = primal_ckpt_grid_name(x->c, d->name);
    if (g == NULL && cg != NULL)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: tensor %s: dense here, over grid %s in the checkpoint", path,
                           d->name, cg);
    if (g == NULL)
        return PRIMAL_OK;
    if (cg == NULL)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: tensor %s: over grid %s here, dense in the checkpoint", path,
                           d->name, g->name);
    const float *values = NULL;
    int n = 0;
    primal_err ignored;
    int found = primal_ckpt_grid(x->c, cg, &values, &n, &ignored) == PRIMAL_OK;
    if (strcmp(cg, g->name) != 0 || !found || n != g->size ||
        memcmp(values, g->values, (size_t)g->size * sizeof(float)) != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: tensor %s: grid %s (%d values) here, %s (%d values) in the "
                           "checkpoint%s",
                           path, d->name, g->name, g->size, cg, found ? n : 0,
                           strcmp(cg, g->name) == 0 ? ", with other values" : "");
    return PRIMAL_OK;
}

/* A Hugging Face directory's weights hold every parameter of its config.json's model with its
 * shape, and nothing the model lacks (as primal_hf_load_model checks before it fills a model). */
typedef struct hf_ctx {
    const char *dir;
    primal_hf_weights *w;
    char **names;
    int n, cap;
} hf_ctx;

static int check_hf_tensor(void *user, const primal_param_desc *d, primal_err *err)
{
    hf_ctx *x = user;
    const primal_st *st;
    const primal_st_tensor *t = primal_hf_weight(x->w, d->name, &st);
    if (t == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: missing from the weights", x->dir,
                           d->name);
    int nd = d->is_matrix ? 2 : 1;
    if (t->ndim != nd || t->shape[0] != d->rows || (nd == 2 && t->shape[1] != d->cols)) {
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
    if (x->n == x->cap) {
        int cap = x->cap ? 2 * x->cap : 64;
        char **nn = realloc(x->names, (size_t)cap * sizeof *nn);
        if (nn == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        x->names = nn;
        x->cap = cap;
    }
    if ((x->names[x->n] = strdup(d->name)) == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    x->n++;
    return PRIMAL_OK;
}

static int check_hf_dir(const char *dir, primal_model_config *mc, primal_err *err)
{
    hf_ctx x = {.dir = dir};
    int rc = primal_hfconfig_load(dir, mc, err);
    if (rc == PRIMAL_OK)
        rc = primal_hf_open_weights(dir, &x.w, err);
    if (rc == PRIMAL_OK && (rc = primal_model_check_config(mc, err)) != PRIMAL_OK)
        primal_err_prefix(err, "%s/config.json", dir);
    if (rc == PRIMAL_OK)
        rc = primal_model_layout(mc, check_hf_tensor, &x, err);
    for (int i = 0; rc == PRIMAL_OK && i < primal_hf_weight_count(x.w); i++) {
        const char *name = primal_hf_weight_name(x.w, i);
        size_t len = strlen(name);
        static const char inv[] = "rotary_emb.inv_freq"; /* as hfimport.c's ignorable() */
        if ((len >= sizeof inv - 1 && strcmp(name + len - (sizeof inv - 1), inv) == 0) ||
            (mc->tied && strcmp(name, "lm_head.weight") == 0))
            continue;
        int known = 0;
        for (int j = 0; j < x.n && !known; j++)
            known = strcmp(x.names[j], name) == 0;
        if (!known)
            rc = primal_errf(err, PRIMAL_ECONFIG,
                             "%s: tensor %s is not part of a %s model of this config (an "
                             "unsupported feature?)",
                             dir, name, mc->arch == PRIMAL_ARCH_QWEN2 ? "qwen2" : "llama");
    }
    for (int j = 0; j < x.n; j++)
        free(x.names[j]);
    free(x.names);
    primal_hf_close_weights(x.w);
    return rc;
}

/* [model] init: random, a checkpoint or a Hugging Face directory, opened and checked as the
 * run's open_model (core/train.c) does, up to allocating the model; *mc gets the shape the run
 * would build. */
static int check_init(primal_experiment *e, primal_model_config *mc, primal_err *err)
{
    const char *init = e->model_init;
    if (strcmp(init, "random") == 0)
        return primal_model_check_config(mc, err);
    struct stat st;
    if (stat(init, &st) != 0)
        return primal_cfg_errf(e->model_c, "init", err, PRIMAL_ECONFIG,
                               "%s: no such file or directory", init);
    if (S_ISDIR(st.st_mode))
        return check_hf_dir(init, mc, err);
    primal_ckpt *c = NULL;
    int rc = primal_ckpt_open(init, &c, err);
    if (rc == PRIMAL_OK)
        rc = primal_ckpt_model_config(c, mc, err);
    if (rc == PRIMAL_OK)
        rc = primal_model_layout(mc, check_ckpt_grid, &(ckpt_grids_ctx){e, c}, err);
    primal_ckpt_close(c);
    return rc;
}

/* One split of the loader, opened and closed as the run opens it (one rank of one). */
static int check_split(primal_experiment *e, primal_tokenizer *tok, int split, primal_err *err)
{
    const primal_loader_vt *vt = e->loader->desc->vtable;
    primal_loader_info info = {tok, split, e->run.seed, 0, 1};
    void *ctx = NULL;
    int rc = vt->open(e->loader_c, &info, &ctx, err);
    if (split == PRIMAL_SPLIT_VAL && rc == PRIMAL_EOF)
        return PRIMAL_OK; /* no validation split, by configuration */
    if (rc != PRIMAL_OK)
        return primal_err_prefix(err, "[data] %s%s", e->loader->desc->name,
                                 split == PRIMAL_SPLIT_VAL ? " (validation split)" : "");
    if (split == PRIMAL_SPLIT_VAL && vt->rewind == NULL)
        rc = primal_errf(err, PRIMAL_EABI, "%s: has a validation split but no rewind()",
                         e->loader->desc->name);
    vt->close(ctx);
    return rc;
}

int primal_experiment_check(primal_experiment *e, primal_err *err)
{
    primal_tokenizer *tok = NULL;
    int rc = primal_tokenizer_open(e->tokenizer, &tok, err);
    if (rc != PRIMAL_OK) {
        int line = 0;
        primal_ini_get(e->ini, "data", "tokenizer", &line);
        if (line > 0)
            return primal_err_prefix(err, "%s:%d: [data] tokenizer", primal_ini_path(e->ini),
                                     line);
        return primal_err_prefix(err, "%s[data] tokenizer", line < 0 ? "--set: " : "");
    }
    primal_model_config mc = e->model;
    int32_t tv = primal_tokenizer_vocab(tok);
    if (mc.vocab == 0)
        mc.vocab = tv;
    else if (mc.vocab < tv)
        rc = primal_cfg_errf(e->model_c, "vocab", err, PRIMAL_ECONFIG,
                             "%d is smaller than the tokenizer's vocabulary (%d)", mc.vocab,
                             (int)tv);
    if (rc == PRIMAL_OK)
        rc = check_init(e, &mc, err);
    if (rc == PRIMAL_OK && e->run.device == PRIMAL_DEVICE_CUDA &&
        e->run.recompute_blocks > mc.layers) /* the model may come from a checkpoint */
        rc = primal_cfg_errf(e->run_c, "recompute_blocks", err, PRIMAL_ECONFIG,
                             "%d blocks, but the model has %d", e->run.recompute_blocks,
                             mc.layers);
    if (rc == PRIMAL_OK) {
        const primal_policy_vt *vt = e->policy->desc->vtable;
        primal_policy_info pinfo = {e->run.seed, e->run.steps, e->run.device,
                                    e->run.reduce_votes};
        void *ctx = NULL;
        rc = vt->create(e->policy_c, &pinfo, &ctx, err);
        if (rc != PRIMAL_OK)
            primal_err_prefix(err, "%s", e->policy->desc->name);
        else if (vt->destroy != NULL)
            vt->destroy(ctx);
    }
    for (int i = 0; rc == PRIMAL_OK && i < e->n_scheds; i++) {
        const primal_scheduler_vt *vt = e->scheds[i]->desc->vtable;
        void *ctx = NULL;
        rc = vt->create(e->sched_cs[i], &ctx, err);
        if (rc != PRIMAL_OK)
            primal_err_prefix(err, "%s", e->scheds[i]->desc->name);
        else if (vt->destroy != NULL)
            vt->destroy(ctx);
    }
    if (rc == PRIMAL_OK)
        rc = check_split(e, tok, PRIMAL_SPLIT_TRAIN, err);
    if (rc == PRIMAL_OK)
        rc = check_split(e, tok, PRIMAL_SPLIT_VAL, err);
    /* last, so that on a machine without a GPU a CUDA experiment is checked in everything else
     * before this says so */
    if (rc == PRIMAL_OK)
        rc = primal_experiment_check_run(e, 1, err);
    primal_tokenizer_close(tok);
    return rc;
}
