/* model.c: the decoder-only Llama/Qwen2 model on the CPU: parameters, forward, backward
 * (core/model.h).  SPEC.md, "Models", "The forward and backward pass of an indexed matrix",
 * "Snapping a float matrix onto a grid".
 *
 * Every 2-D weight is an indexed matrix (index over the grid that grid_for names, 4/8/16-bit by
 * grid size, per-row float scale) or dense float32 when grid_for returns NULL.  The math matches
 * Hugging Face transformers' Qwen2/Llama in float32: embedding; per block
 * h = x + o(attn(rope(q, k), v)) over rmsnorm(x)·w_in, out = h + down(silu(gate(n))·up(n)) with
 * n = rmsnorm(h)·w_post; final rmsnorm; logits = lm_head (the embedding when tied); mean
 * cross-entropy over the masked positions.
 *
 * Forward keeps what backward needs, llm.c style, in one arena that grows with B and T
 * (recompute: only each block's input, the block is recomputed in backward).  Backward makes
 * G = dL/dW of one matrix at a time into one workspace sized for the largest trainable matrix,
 * adds its scale gradient, hands it to the hook and drops it; it stops below the lowest
 * trainable parameter.  Random initialisation draws N(0, std) by Box-Muller from the
 * counter-based RNG, stream primal_rng_stream(tensor id, 0, INIT_PURPOSE), counter = the
 * element's flat index, then snaps like an import.  No keys: primal_model_opts carries threads
 * and recompute.  OpenMP is the only thread pool: creating a model or setting its options sets
 * OpenBLAS to one thread (process-wide), because the kernels split each product among the
 * OpenMP threads themselves (kernels/cpu/matmul.c says why). */
#include "model.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <primal/rng.h>

#include "../kernels/cpu/attention.h"
#include "../kernels/cpu/crossentropy.h"
#include "../kernels/cpu/embedding.h"
#include "../kernels/cpu/matmul.h"
#include "../kernels/cpu/rmsnorm.h"
#include "../kernels/cpu/rope.h"
#include "../kernels/cpu/swiglu.h"

/* Below this many elements a loop runs on one thread: waking the others costs more. */
#define PAR_MIN (1 << 15)

#define INIT_PURPOSE 0x49 /* 'I': the RNG purpose of random initialisation */
#define ALIGN_FLOATS 16   /* 64-byte alignment of every buffer carved from an arena */

/* A block's parameters, in Hugging Face named_parameters() order. */
enum { L_Q, L_BQ, L_K, L_BK, L_V, L_BV, L_O, L_GATE, L_UP, L_DOWN, L_LN1, L_LN2, L_N };

enum { KIND_MATRIX, KIND_NORM, KIND_BIAS };

typedef struct block_acts {
    float *ln1, *rstd1;     /* (N, C), (N) */
    float *q, *k, *v;       /* (N, qdim), (N, kvdim), (N, kvdim): q, k rotated */
    float *att;             /* (B, H, T, T) softmax probabilities */
    float *atty;            /* (N, qdim) attention output before o_proj */
    float *h;               /* (N, C) residual after attention */
    float *ln2, *rstd2;     /* (N, C), (N) */
    float *gate, *up, *act; /* (N, F) each; act = silu(gate) * up */
} block_acts;

struct primal_model {
    primal_model_config c;
    int hd, qdim, kvdim;
    int np;
    primal_param *p;
    const primal_grid_ref **grid; /* (np) NULL: dense or vector */
    uint8_t *kind;                /* (np) KIND_* */
    int embed, fnorm, head;       /* head == embed when tied */
    int (*lp)[L_N];               /* (layers) parameter numbers, -1 where absent */
    primal_model_opts opts;

    /* What the last forward left for backward. */
    int B, T, have_fwd, fwd_recompute, count;
    float *arena;
    size_t arena_cap;    /* floats */
    float **x;           /* (layers + 1) residual stream (N, C): x[l] is block l's input */
    block_acts *blk;     /* (layers), or 1 shared when recomputing */
    float *lnf, *rstdf;  /* (N, C), (N) */
    float *logits;       /* (N, V); backward turns it into dlogits */
    float *losses;       /* (N) */
    int32_t *tok_in, *tok_tgt; /* (N) */
    uint8_t *mask;       /* (N) 1 where the position counts */
    size_t tok_cap;      /* positions */
    float *cosv, *sinv;  /* (rope_T, hd/2) */
    int rope_T;
    float *tile;         /* (threads, MATMUL_TILE_ROWS, max(dim, ffn)) dequantised rows */
    size_t tile_n;

    /* Backward workspace. */
    float *ws;
    size_t ws_cap;
    float *dres, *dln;             /* (N, C) */
    float *dact, *dgate, *dup;     /* (N, F) */
    float *datty, *dq, *dk, *dv;   /* (N, qdim), (N, qdim), (N, kvdim), (N, kvdim) */
    float *ascratch;               /* (threads, T, T) */
    float *dloss;                  /* (N) */
    float *G;                      /* (rows, cols) of the largest trainable matrix */
    size_t G_cap;
};

/* ------------------------------------------------------------------------------------------ */
/* Parameters                                                                                 */

static int index_bits(int grid_size)
{
    return grid_size <= 16 ? 4 : grid_size <= 256 ? 8 : 16;
}

static int64_t index_stride(int bits, int64_t cols)
{
    return bits == 4 ? (cols + 1) / 2 : cols * (bits / 8);
}

static int grad_alloc(primal_param *p, primal_err *err)
{
    if (p->is_matrix) {
        if (p->q.bits == 32 || p->dscale != NULL)
            return PRIMAL_OK;
        p->dscale = calloc((size_t)p->q.rows, sizeof(float));
        if (p->dscale == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "model: %s: scale gradient of %lld rows",
                               p->name, (long long)p->q.rows);
    } else if (p->dvec == NULL) {
        p->dvec = calloc((size_t)p->n, sizeof(float));
        if (p->dvec == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "model: %s: gradient of %lld floats",
                               p->name, (long long)p->n);
    }
    return PRIMAL_OK;
}

static void grad_free(primal_param *p)
{
    free(p->dscale);
    free(p->dvec);
    p->dscale = NULL;
    p->dvec = NULL;
}

static int add_matrix(primal_model *m, primal_grid_for grid_for, void *user, int layer,
                      int64_t rows, int64_t cols, const char *name, primal_err *err)
{
    int i = m->np++;
    primal_param *p = &m->p[i];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->layer = layer;
    p->is_matrix = 1;
    p->n = rows * cols;
    p->trainable = 1;
    m->kind[i] = KIND_MATRIX;
    primal_qtensor *q = &p->q;
    q->name = p->name;
    q->id = i;
    q->rows = rows;
    q->cols = cols;
    const primal_grid_ref *g = grid_for != NULL ? grid_for(user, p->name) : NULL;
    m->grid[i] = g;
    if (g == NULL) {
        q->bits = 32;
        q->dense = calloc((size_t)(rows * cols), sizeof(float));
        if (q->dense == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "model: %s: %lld x %lld float32 weights",
                               name, (long long)rows, (long long)cols);
        return PRIMAL_OK;
    }
    if (g->values == NULL || g->size < 2 || g->size > PRIMAL_GRID_MAX)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "model: %s: grid %s has %d values, expected 2..%d", name,
                           g->name != NULL ? g->name : "(unnamed)", g->size, PRIMAL_GRID_MAX);
    q->bits = index_bits(g->size);
    q->row_stride = index_stride(q->bits, cols);
    q->grid = g->values;
    q->grid_size = g->size;
    q->index = calloc((size_t)(rows * q->row_stride), 1);
    q->scale = malloc((size_t)rows * sizeof(float));
    if (q->index == NULL || q->scale == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "model: %s: %lld x %lld indices", name,
                           (long long)rows, (long long)cols);
    for (int64_t r = 0; r < rows; r++)
        q->scale[r] = 1.0f;
    return grad_alloc(p, err);
}

static int add_vector(primal_model *m, int layer, int64_t n, int kind, const char *name,
                      primal_err *err)
{
    int i = m->np++;
    primal_param *p = &m->p[i];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->layer = layer;
    p->n = n;
    p->trainable = 1;
    p->q.name = p->name;
    p->q.id = i;
    m->kind[i] = (uint8_t)kind;
    p->vec = malloc((size_t)n * sizeof(float));
    if (p->vec == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "model: %s: %lld floats", name, (long long)n);
    for (int64_t j = 0; j < n; j++)
        p->vec[j] = kind == KIND_NORM ? 1.0f : 0.0f;
    return grad_alloc(p, err);
}

int primal_model_check_config(const primal_model_config *c, primal_err *err)
{
    if (c->arch != PRIMAL_ARCH_LLAMA && c->arch != PRIMAL_ARCH_QWEN2)
        return primal_errf(err, PRIMAL_ECONFIG, "model: arch %d is neither llama nor qwen2",
                           c->arch);
    if (c->vocab < 1 || c->dim < 1 || c->layers < 1 || c->heads < 1 || c->kv_heads < 1 ||
        c->ffn < 1)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "model: vocab %d, dim %d, layers %d, heads %d, kv_heads %d, ffn %d: "
                           "each must be at least 1",
                           c->vocab, c->dim, c->layers, c->heads, c->kv_heads, c->ffn);
    /* The ranges of the INI's [model] keys (core/experiment.c): a checkpoint or config.json
     * naming more is refused before anything is allocated. */
    if (c->vocab > PRIMAL_MODEL_MAX_VOCAB || c->dim > PRIMAL_MODEL_MAX_DIM ||
        c->layers > PRIMAL_MODEL_MAX_LAYERS || c->heads > PRIMAL_MODEL_MAX_HEADS ||
        c->kv_heads > PRIMAL_MODEL_MAX_HEADS || c->ffn > PRIMAL_MODEL_MAX_FFN)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "model: vocab %d, dim %d, layers %d, heads %d, kv_heads %d, ffn %d: "
                           "the limits are %d, %d, %d, %d, %d, %d",
                           c->vocab, c->dim, c->layers, c->heads, c->kv_heads, c->ffn,
                           PRIMAL_MODEL_MAX_VOCAB, PRIMAL_MODEL_MAX_DIM, PRIMAL_MODEL_MAX_LAYERS,
                           PRIMAL_MODEL_MAX_HEADS, PRIMAL_MODEL_MAX_HEADS, PRIMAL_MODEL_MAX_FFN);
    if (c->dim % c->heads != 0 || (c->dim / c->heads) % 2 != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "model: dim %d / heads %d must give an even head size", c->dim,
                           c->heads);
    if (c->heads % c->kv_heads != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "model: heads %d is not a multiple of kv_heads %d", c->heads,
                           c->kv_heads);
    if (!(c->rope_theta > 0.0) || !(c->norm_eps > 0.0) || !isfinite(c->rope_theta) ||
        !isfinite(c->norm_eps))
        return primal_errf(err, PRIMAL_ECONFIG,
                           "model: rope_theta %g and norm_eps %g must be positive and finite",
                           c->rope_theta, c->norm_eps);
    return PRIMAL_OK;
}

/* One parameter of a config's layout, with what primal_model_create needs besides the public
 * description: the parameter's slot in its block (L_*, or -1 outside the blocks) and KIND_*. */
typedef struct layout_item {
    primal_param_desc d;
    int slot, kind;
} layout_item;

typedef int (*layout_fn)(void *user, const layout_item *it, primal_err *err);

/* Every parameter of a model of config mc (checked), in primal_model_param order: the embedding,
 * each block's in Hugging Face named_parameters() order (biases only with qkv_bias), the final
 * norm, and the LM head unless tied.  The one place that knows the model's shapes. */
static int walk_layout(const primal_model_config *mc, layout_fn fn, void *user, primal_err *err)
{
    static const char *const names[L_N] = {
        [L_Q] = "self_attn.q_proj.weight", [L_BQ] = "self_attn.q_proj.bias",
        [L_K] = "self_attn.k_proj.weight", [L_BK] = "self_attn.k_proj.bias",
        [L_V] = "self_attn.v_proj.weight", [L_BV] = "self_attn.v_proj.bias",
        [L_O] = "self_attn.o_proj.weight", [L_GATE] = "mlp.gate_proj.weight",
        [L_UP] = "mlp.up_proj.weight",     [L_DOWN] = "mlp.down_proj.weight",
        [L_LN1] = "input_layernorm.weight", [L_LN2] = "post_attention_layernorm.weight",
    };
    int64_t C = mc->dim, F = mc->ffn, qdim = C, kvdim = (int64_t)mc->kv_heads * (C / mc->heads);
    const int64_t rows[L_N] = {
        [L_Q] = qdim, [L_BQ] = qdim, [L_K] = kvdim, [L_BK] = kvdim, [L_V] = kvdim,
        [L_BV] = kvdim, [L_O] = C, [L_GATE] = F, [L_UP] = F, [L_DOWN] = C, [L_LN1] = C,
        [L_LN2] = C,
    };
    const int64_t cols[L_N] = {
        [L_Q] = C, [L_K] = C, [L_V] = C, [L_O] = qdim, [L_GATE] = C, [L_UP] = C, [L_DOWN] = F,
    };
    char name[96];
    layout_item it = { { name, PRIMAL_LAYER_EMBED, 1, mc->vocab, C }, -1, KIND_MATRIX };
    snprintf(name, sizeof name, "model.embed_tokens.weight");
    int rc = fn(user, &it, err);
    for (int l = 0; l < mc->layers && rc == PRIMAL_OK; l++)
        for (int j = 0; j < L_N && rc == PRIMAL_OK; j++) {
            int is_bias = j == L_BQ || j == L_BK || j == L_BV;
            if (is_bias && !mc->qkv_bias)
                continue;
            int is_norm = j == L_LN1 || j == L_LN2;
            snprintf(name, sizeof name, "model.layers.%d.%s", l, names[j]);
            it = (layout_item){ { name, l, !is_bias && !is_norm, rows[j], cols[j] },
                                j,
                                is_norm ? KIND_NORM : is_bias ? KIND_BIAS : KIND_MATRIX };
            rc = fn(user, &it, err);
        }
    if (rc == PRIMAL_OK) {
        snprintf(name, sizeof name, "model.norm.weight");
        it = (layout_item){ { name, PRIMAL_LAYER_FINAL_NORM, 0, C, 0 }, -1, KIND_NORM };
        rc = fn(user, &it, err);
    }
    if (rc == PRIMAL_OK && !mc->tied) {
        snprintf(name, sizeof name, "lm_head.weight");
        it = (layout_item){ { name, PRIMAL_LAYER_HEAD, 1, mc->vocab, C }, -1, KIND_MATRIX };
        rc = fn(user, &it, err);
    }
    return rc;
}

typedef struct public_walk {
    primal_param_fn fn;
    void *user;
} public_walk;

static int public_item(void *user, const layout_item *it, primal_err *err)
{
    const public_walk *w = user;
    return w->fn(w->user, &it->d, err);
}

int primal_model_layout(const primal_model_config *mc, primal_param_fn fn, void *user,
                        primal_err *err)
{
    int rc = primal_model_check_config(mc, err);
    if (rc != PRIMAL_OK)
        return rc;
    public_walk w = { fn, user };
    return walk_layout(mc, public_item, &w, err);
}

typedef struct create_ctx {
    primal_model *m;
    primal_grid_for grid_for;
    void *user;
} create_ctx;

static int create_item(void *user, const layout_item *it, primal_err *err)
{
    const create_ctx *cc = user;
    primal_model *m = cc->m;
    const primal_param_desc *d = &it->d;
    if (d->layer >= 0)
        m->lp[d->layer][it->slot] = m->np;
    else if (d->layer == PRIMAL_LAYER_EMBED)
        m->embed = m->np;
    else if (d->layer == PRIMAL_LAYER_FINAL_NORM)
        m->fnorm = m->np;
    else
        m->head = m->np;
    if (d->is_matrix)
        return add_matrix(m, cc->grid_for, cc->user, d->layer, d->rows, d->cols, d->name, err);
    return add_vector(m, d->layer, d->rows, it->kind, d->name, err);
}

int primal_model_create(const primal_model_config *mc, primal_grid_for grid_for, void *user,
                        primal_model **out, primal_err *err)
{
    *out = NULL;
    int rc = primal_model_check_config(mc, err);
    if (rc != PRIMAL_OK)
        return rc;
    primal_model *m = calloc(1, sizeof *m);
    if (m == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "model: out of memory");
    m->c = *mc;
    m->c.tied = mc->tied != 0;
    m->c.qkv_bias = mc->qkv_bias != 0;
    int L = mc->layers, C = mc->dim;
    m->hd = C / mc->heads;
    m->qdim = C;
    m->kvdim = mc->kv_heads * m->hd;
    int maxp = 3 + L * L_N;
    m->p = calloc((size_t)maxp, sizeof *m->p);
    m->grid = calloc((size_t)maxp, sizeof *m->grid);
    m->kind = calloc((size_t)maxp, 1);
    m->lp = calloc((size_t)L, sizeof *m->lp);
    m->x = calloc((size_t)L + 1, sizeof *m->x);
    m->blk = calloc((size_t)L, sizeof *m->blk);
    /* sgemm runs single-threaded inside the kernels' OpenMP regions (see matmul.c) */
    openblas_set_num_threads(1);
    if (!m->p || !m->grid || !m->kind || !m->lp || !m->x || !m->blk) {
        primal_model_free(m);
        return primal_errf(err, PRIMAL_ENOMEM, "model: out of memory");
    }
    for (int l = 0; l < L; l++)
        for (int j = 0; j < L_N; j++)
            m->lp[l][j] = -1;
    create_ctx cc = { m, grid_for, user };
    rc = walk_layout(&m->c, create_item, &cc, err);
    if (rc == PRIMAL_OK && m->c.tied)
        m->head = m->embed;
    if (rc != PRIMAL_OK) {
        primal_model_free(m);
        return rc;
    }
    *out = m;
    return PRIMAL_OK;
}

void primal_model_free(primal_model *m)
{
    if (m == NULL)
        return;
    for (int i = 0; i < m->np; i++) {
        primal_param *p = &m->p[i];
        free(p->q.index);
        free(p->q.scale);
        free(p->q.dense);
        free(p->vec);
        grad_free(p);
    }
    free(m->p);
    free(m->grid);
    free(m->kind);
    free(m->lp);
    free(m->x);
    free(m->blk);
    free(m->arena);
    free(m->tok_in);
    free(m->tok_tgt);
    free(m->mask);
    free(m->cosv);
    free(m->sinv);
    free(m->tile);
    free(m->ws);
    free(m->G);
    free(m);
}

const primal_model_config *primal_model_cfg(const primal_model *m) { return &m->c; }
int primal_model_nparams(const primal_model *m) { return m->np; }

primal_param *primal_model_param(primal_model *m, int i)
{
    return i >= 0 && i < m->np ? &m->p[i] : NULL;
}

primal_param *primal_model_find(primal_model *m, const char *name)
{
    for (int i = 0; i < m->np; i++)
        if (strcmp(m->p[i].name, name) == 0)
            return &m->p[i];
    return NULL;
}

const primal_grid_ref *primal_model_grid(const primal_model *m, int i)
{
    return i >= 0 && i < m->np ? m->grid[i] : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Snapping and initialisation                                                                */

/* The grid entry nearest v, ties to the lower index: binary search for the first value >= v,
 * then compare with its left neighbour.  Distances in float, as |grid − v| in float32. */
static uint32_t nearest(const float *grid, int n, float v)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (grid[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0;
    if (lo == n)
        return (uint32_t)n - 1;
    float dl = v - grid[lo - 1], dh = grid[lo] - v;
    return dh < dl ? (uint32_t)lo : (uint32_t)lo - 1;
}

static void snap_row(primal_qtensor *q, int64_t r, const float *w)
{
    float mx = 0.0f;
    for (int64_t c = 0; c < q->cols; c++)
        mx = fmaxf(mx, fabsf(w[c]));
    float s = mx > 0.0f ? mx : 1.0f;
    q->scale[r] = s;
    for (int64_t c = 0; c < q->cols; c++)
        primal_index_set(q, r, c, nearest(q->grid, q->grid_size, w[c] / s));
}

static int own_matrix(const primal_model *m, const primal_param *p, const char *where,
                      primal_err *err)
{
    if (p < m->p || p >= m->p + m->np || !p->is_matrix)
        return primal_errf(err, PRIMAL_ERROR, "%s: %s is not a matrix of this model", where,
                           p != NULL ? p->name : "(null)");
    return PRIMAL_OK;
}

int primal_model_set_matrix(primal_model *m, primal_param *p, const float *w, primal_err *err)
{
    int rc = own_matrix(m, p, "primal_model_set_matrix", err);
    if (rc != PRIMAL_OK)
        return rc;
    primal_qtensor *q = &p->q;
    for (int64_t r = 0; r < q->rows; r++)
        for (int64_t c = 0; c < q->cols; c++)
            if (!isfinite(w[r * q->cols + c]))
                return primal_errf(err, PRIMAL_ERROR,
                                   "primal_model_set_matrix: %s: [%lld][%lld] is %g, not finite",
                                   p->name, (long long)r, (long long)c, w[r * q->cols + c]);
    if (q->bits == 32) {
        memcpy(q->dense, w, (size_t)(q->rows * q->cols) * sizeof(float));
        return PRIMAL_OK;
    }
#pragma omp parallel for schedule(static) if (q->rows * q->cols >= PAR_MIN)
    for (int64_t r = 0; r < q->rows; r++)
        snap_row(q, r, w + r * q->cols);
    return PRIMAL_OK;
}

/* N(0, 1) for element k: Box-Muller on the uniform pair (2j, 2j + 1), j = k / 2, cos for the
 * even element and sin for the odd one.  A pure function of (seed, stream, k). */
static float normal_at(uint64_t seed, uint64_t stream, uint64_t k)
{
    uint64_t j = k >> 1;
    double u1 = primal_rng_u01(seed, stream, 2 * j);
    double u2 = primal_rng_u01(seed, stream, 2 * j + 1);
    double rad = sqrt(-2.0 * log(1.0 - u1)); /* u1 < 1, so the log is finite */
    double ang = 2.0 * M_PI * u2;
    return (float)(rad * ((k & 1) ? sin(ang) : cos(ang)));
}

int primal_model_init_random(primal_model *m, uint64_t seed, float std, primal_err *err)
{
    if (!(std >= 0.0f) || !isfinite(std))
        return primal_errf(err, PRIMAL_ECONFIG, "primal_model_init_random: std %g", std);
    int64_t maxc = 0;
    for (int i = 0; i < m->np; i++)
        if (m->p[i].is_matrix && m->p[i].q.cols > maxc)
            maxc = m->p[i].q.cols;
    int nt = omp_get_max_threads();
    float *rows = malloc((size_t)(maxc * nt) * sizeof(float));
    if (rows == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "primal_model_init_random: out of memory");
    for (int i = 0; i < m->np; i++) {
        primal_param *p = &m->p[i];
        if (!p->is_matrix) {
            for (int64_t j = 0; j < p->n; j++)
                p->vec[j] = m->kind[i] == KIND_NORM ? 1.0f : 0.0f;
            continue;
        }
        primal_qtensor *q = &p->q;
        uint64_t stream = primal_rng_stream((uint64_t)q->id, 0, INIT_PURPOSE);
#pragma omp parallel for schedule(static) num_threads(nt) if (p->n >= PAR_MIN)
        for (int64_t r = 0; r < q->rows; r++) {
            float *w = q->bits == 32 ? q->dense + r * q->cols : rows + omp_get_thread_num() * maxc;
            for (int64_t c = 0; c < q->cols; c++)
                w[c] = std * normal_at(seed, stream, (uint64_t)(r * q->cols + c));
            if (q->bits != 32)
                snap_row(q, r, w);
        }
    }
    free(rows);
    return PRIMAL_OK;
}

void primal_model_get_rows(const primal_model *m, const primal_param *p, int64_t r0,
                           int64_t nrows, float *out)
{
    (void)m;
    if (p->is_matrix)
        matmul_dequant_rows(out, &p->q, r0, nrows);
}

/* ------------------------------------------------------------------------------------------ */
/* Trainable set, options, gradients, memory                                                  */

int primal_model_set_trainable(primal_model *m, const uint8_t *trainable, primal_err *err)
{
    for (int i = 0; i < m->np; i++) {
        primal_param *p = &m->p[i];
        uint8_t t = trainable[i] != 0;
        if (t && !p->trainable) {
            int rc = grad_alloc(p, err);
            if (rc != PRIMAL_OK)
                return rc;
        } else if (!t && p->trainable) {
            grad_free(p);
        }
        p->trainable = t;
    }
    return PRIMAL_OK;
}

void primal_model_set_opts(primal_model *m, const primal_model_opts *o)
{
    m->opts = *o;
    if (o->threads > 0)
        omp_set_num_threads(o->threads);
    /* One thread pool: OpenMP's.  OpenBLAS's own threads would spin beside OpenMP's and, on
     * few cores, slow every step several times over; the kernels split each product among the
     * OpenMP threads instead. */
    openblas_set_num_threads(1);
}

void primal_model_zero_grad(primal_model *m)
{
    for (int i = 0; i < m->np; i++) {
        primal_param *p = &m->p[i];
        if (p->dscale != NULL)
            memset(p->dscale, 0, (size_t)p->q.rows * sizeof(float));
        if (p->dvec != NULL)
            memset(p->dvec, 0, (size_t)p->n * sizeof(float));
    }
}

void primal_model_memory(const primal_model *m, primal_model_mem *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < m->np; i++) {
        const primal_param *p = &m->p[i];
        if (p->is_matrix && p->q.bits == 32)
            out->weights += (size_t)(p->q.rows * p->q.cols) * sizeof(float);
        else if (p->is_matrix)
            out->weights += (size_t)(p->q.rows * p->q.row_stride) +
                            (size_t)p->q.rows * sizeof(float);
        else
            out->weights += (size_t)p->n * sizeof(float);
        if (p->dscale != NULL)
            out->grads += (size_t)p->q.rows * sizeof(float);
        if (p->dvec != NULL)
            out->grads += (size_t)p->n * sizeof(float);
    }
    out->activations = m->arena_cap * sizeof(float) +
                       m->tok_cap * (2 * sizeof(int32_t) + sizeof(uint8_t));
    out->workspace = (m->ws_cap + m->G_cap + m->tile_n +
                      2 * (size_t)m->rope_T * (size_t)(m->hd / 2)) * sizeof(float);
}

/* ------------------------------------------------------------------------------------------ */
/* Buffers                                                                                    */

static float *take(float *base, size_t *off, size_t n)
{
    float *p = base != NULL ? base + *off : NULL;
    *off += (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    return p;
}

/* Lay the forward activations for (B, T) over base (NULL: only count); returns floats. */
static size_t layout_acts(primal_model *m, int B, int T, int recompute, float *base)
{
    const primal_model_config *c = &m->c;
    size_t N = (size_t)B * T, C = (size_t)c->dim, F = (size_t)c->ffn, off = 0;
    for (int l = 0; l <= c->layers; l++)
        m->x[l] = take(base, &off, N * C);
    int nblk = recompute ? 1 : c->layers;
    for (int l = 0; l < nblk; l++) {
        block_acts *a = &m->blk[l];
        a->ln1 = take(base, &off, N * C);
        a->rstd1 = take(base, &off, N);
        a->q = take(base, &off, N * (size_t)m->qdim);
        a->k = take(base, &off, N * (size_t)m->kvdim);
        a->v = take(base, &off, N * (size_t)m->kvdim);
        a->att = take(base, &off, (size_t)B * (size_t)c->heads * (size_t)T * (size_t)T);
        a->atty = take(base, &off, N * (size_t)m->qdim);
        a->h = take(base, &off, N * C);
        a->ln2 = take(base, &off, N * C);
        a->rstd2 = take(base, &off, N);
        a->gate = take(base, &off, N * F);
        a->up = take(base, &off, N * F);
        a->act = take(base, &off, N * F);
    }
    m->lnf = take(base, &off, N * C);
    m->rstdf = take(base, &off, N);
    m->logits = take(base, &off, N * (size_t)c->vocab);
    m->losses = take(base, &off, N);
    return off;
}

/* One dequantisation tile per OpenMP thread; the thread count may change between calls. */
static int grow_tile(primal_model *m, primal_err *err)
{
    int F = m->c.ffn, C = m->c.dim;
    size_t need = (size_t)omp_get_max_threads() * MATMUL_TILE_ROWS * (size_t)(C > F ? C : F);
    if (need > m->tile_n) {
        free(m->tile);
        m->tile_n = 0;
        m->tile = malloc(need * sizeof(float));
        if (m->tile == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "model: %zu bytes of matmul tiles",
                               need * sizeof(float));
        m->tile_n = need;
    }
    return PRIMAL_OK;
}

static int grow_acts(primal_model *m, int B, int T, primal_err *err)
{
    int trc = grow_tile(m, err);
    if (trc != PRIMAL_OK)
        return trc;
    int rec = m->fwd_recompute;
    size_t need = layout_acts(m, B, T, rec, NULL);
    if (need > m->arena_cap) {
        free(m->arena);
        m->arena_cap = 0;
        m->arena = aligned_alloc(ALIGN_FLOATS * sizeof(float), need * sizeof(float));
        if (m->arena == NULL)
            return primal_errf(err, PRIMAL_ENOMEM,
                               "primal_model_forward: %zu bytes of activations for B %d, T %d",
                               need * sizeof(float), B, T);
        m->arena_cap = need;
    }
    layout_acts(m, B, T, rec, m->arena);
    size_t N = (size_t)B * T;
    if (N > m->tok_cap) {
        free(m->tok_in);
        free(m->tok_tgt);
        free(m->mask);
        m->tok_in = malloc(N * sizeof(int32_t));
        m->tok_tgt = malloc(N * sizeof(int32_t));
        m->mask = malloc(N);
        m->tok_cap = 0;
        if (m->tok_in == NULL || m->tok_tgt == NULL || m->mask == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "primal_model_forward: out of memory");
        m->tok_cap = N;
    }
    if (T > m->rope_T) {
        size_t n = (size_t)T * (size_t)(m->hd / 2);
        free(m->cosv);
        free(m->sinv);
        m->cosv = malloc(n * sizeof(float));
        m->sinv = malloc(n * sizeof(float));
        m->rope_T = 0;
        if (m->cosv == NULL || m->sinv == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "primal_model_forward: out of memory");
        rope_table(m->cosv, m->sinv, T, m->hd, m->c.rope_theta);
        m->rope_T = T;
    }
    return PRIMAL_OK;
}

static size_t layout_ws(primal_model *m, int B, int T, float *base)
{
    size_t N = (size_t)B * T, C = (size_t)m->c.dim, F = (size_t)m->c.ffn, off = 0;
    m->dres = take(base, &off, N * C);
    m->dln = take(base, &off, N * C);
    m->dact = take(base, &off, N * F);
    m->dgate = take(base, &off, N * F);
    m->dup = take(base, &off, N * F);
    m->datty = take(base, &off, N * (size_t)m->qdim);
    m->dq = take(base, &off, N * (size_t)m->qdim);
    m->dk = take(base, &off, N * (size_t)m->kvdim);
    m->dv = take(base, &off, N * (size_t)m->kvdim);
    m->ascratch = take(base, &off, (size_t)omp_get_max_threads() * (size_t)T * (size_t)T);
    m->dloss = take(base, &off, N);
    return off;
}

static int grow_ws(primal_model *m, primal_err *err)
{
    int trc = grow_tile(m, err);
    if (trc != PRIMAL_OK)
        return trc;
    size_t need = layout_ws(m, m->B, m->T, NULL);
    if (need > m->ws_cap) {
        free(m->ws);
        m->ws_cap = 0;
        m->ws = aligned_alloc(ALIGN_FLOATS * sizeof(float), need * sizeof(float));
        if (m->ws == NULL)
            return primal_errf(err, PRIMAL_ENOMEM,
                               "primal_model_backward: %zu bytes of workspace",
                               need * sizeof(float));
        m->ws_cap = need;
    }
    layout_ws(m, m->B, m->T, m->ws);
    size_t gmax = 0;
    for (int i = 0; i < m->np; i++)
        if (m->p[i].is_matrix && m->p[i].trainable && (size_t)m->p[i].n > gmax)
            gmax = (size_t)m->p[i].n;
    if (gmax > m->G_cap) {
        free(m->G);
        m->G_cap = 0;
        m->G = malloc(gmax * sizeof(float));
        if (m->G == NULL)
            return primal_errf(err, PRIMAL_ENOMEM,
                               "primal_model_backward: %zu bytes of weight-gradient workspace",
                               gmax * sizeof(float));
        m->G_cap = gmax;
    }
    return PRIMAL_OK;
}

static void add_inplace(float *y, const float *x, int64_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}

static void zero(float *y, int64_t n)
{
    memset(y, 0, (size_t)n * sizeof(float));
}

/* ------------------------------------------------------------------------------------------ */
/* Forward                                                                                    */

static const float *bias_of(const primal_model *m, int pi)
{
    return pi >= 0 ? m->p[pi].vec : NULL;
}

/* One block from xin into a's buffers and xout = xin + attn + mlp.  xout NULL stops after the
 * SwiGLU product (recomputation for backward needs nothing further). */
static void block_forward(primal_model *m, int l, block_acts *a, const float *xin, float *xout)
{
    const primal_model_config *c = &m->c;
    const int *lp = m->lp[l];
    const primal_param *P = m->p;
    int B = m->B, T = m->T, N = B * T, C = c->dim, F = c->ffn;
    rmsnorm_forward(a->ln1, a->rstd1, xin, P[lp[L_LN1]].vec, N, C, c->norm_eps);
    matmul_forward(a->q, a->ln1, &P[lp[L_Q]].q, bias_of(m, lp[L_BQ]), m->tile, N, C, m->qdim);
    matmul_forward(a->k, a->ln1, &P[lp[L_K]].q, bias_of(m, lp[L_BK]), m->tile, N, C, m->kvdim);
    matmul_forward(a->v, a->ln1, &P[lp[L_V]].q, bias_of(m, lp[L_BV]), m->tile, N, C, m->kvdim);
    rope_forward(a->q, a->q, m->cosv, m->sinv, B, T, c->heads, m->hd);
    rope_forward(a->k, a->k, m->cosv, m->sinv, B, T, c->kv_heads, m->hd);
    attention_forward(a->atty, a->att, a->q, a->k, a->v, B, T, c->heads, c->kv_heads, m->hd);
    matmul_forward(a->h, a->atty, &P[lp[L_O]].q, NULL, m->tile, N, m->qdim, C);
    add_inplace(a->h, xin, (int64_t)N * C);
    rmsnorm_forward(a->ln2, a->rstd2, a->h, P[lp[L_LN2]].vec, N, C, c->norm_eps);
    matmul_forward(a->gate, a->ln2, &P[lp[L_GATE]].q, NULL, m->tile, N, C, F);
    matmul_forward(a->up, a->ln2, &P[lp[L_UP]].q, NULL, m->tile, N, C, F);
    swiglu_forward(a->act, a->gate, a->up, (int64_t)N * F);
    if (xout == NULL)
        return;
    matmul_forward(xout, a->act, &P[lp[L_DOWN]].q, NULL, m->tile, N, F, C);
    add_inplace(xout, a->h, (int64_t)N * C);
}

int primal_model_forward(primal_model *m, const int32_t *tokens, const uint8_t *mask, int B,
                         int T, float *loss, float *logits, primal_err *err)
{
    const primal_model_config *c = &m->c;
    m->have_fwd = 0;
    if (B < 1 || T < 1 || (int64_t)B * T > INT32_MAX)
        return primal_errf(err, PRIMAL_ERROR, "primal_model_forward: B %d, T %d out of range",
                           B, T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t <= T; t++) {
            int32_t tok = tokens[(int64_t)b * (T + 1) + t];
            if (tok < 0 || tok >= c->vocab)
                return primal_errf(err, PRIMAL_ERROR,
                                   "primal_model_forward: row %d, position %d: token %d outside "
                                   "[0, %d)",
                                   b, t, (int)tok, c->vocab);
        }
    m->fwd_recompute = m->opts.recompute != 0;
    int rc = grow_acts(m, B, T, err);
    if (rc != PRIMAL_OK)
        return rc;
    m->B = B;
    m->T = T;
    int N = B * T, C = c->dim, V = c->vocab;
    m->count = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int n = b * T + t;
            m->tok_in[n] = tokens[(int64_t)b * (T + 1) + t];
            m->tok_tgt[n] = tokens[(int64_t)b * (T + 1) + t + 1];
            m->mask[n] = mask == NULL || mask[n] != 0;
            m->count += m->mask[n];
        }

    primal_param *P = m->p;
    embedding_forward(m->x[0], m->tok_in, &P[m->embed].q, N);
    for (int l = 0; l < c->layers; l++)
        block_forward(m, l, &m->blk[m->fwd_recompute ? 0 : l], m->x[l], m->x[l + 1]);
    rmsnorm_forward(m->lnf, m->rstdf, m->x[c->layers], P[m->fnorm].vec, N, C, c->norm_eps);
    matmul_forward(m->logits, m->lnf, &P[m->head].q, NULL, m->tile, N, C, V);
    crossentropy_forward(m->losses, m->logits, m->tok_tgt, N, V);

    double sum = 0.0;
    for (int n = 0; n < N; n++)
        if (m->mask[n])
            sum += m->losses[n];
    *loss = m->count > 0 ? (float)(sum / m->count) : 0.0f;
    if (logits != NULL)
        memcpy(logits, m->logits, (size_t)N * (size_t)V * sizeof(float));
    m->have_fwd = 1;
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Backward                                                                                   */

typedef struct bwd_ctx {
    primal_grad_hook hook;
    void *user;
    primal_err *err;
} bwd_ctx;

static int trains(const primal_model *m, int pi)
{
    return pi >= 0 && m->p[pi].trainable;
}

/* G of parameter pi is ready in m->G: scale gradient, then the hook; then G may be dropped. */
static int consume(primal_model *m, int pi, const bwd_ctx *bc)
{
    primal_param *p = &m->p[pi];
    if (p->q.bits != 32)
        matmul_scale_grad(p->dscale, m->G, &p->q, 0, p->q.rows);
    if (bc->hook == NULL)
        return PRIMAL_OK;
    return bc->hook(bc->user, p, m->G, 0, p->q.rows, bc->err);
}

/* G = doutᵀ·inp for a matrix parameter, then consume it. */
static int weight_grad(primal_model *m, int pi, const float *dout, const float *inp,
                       const bwd_ctx *bc)
{
    const primal_qtensor *q = &m->p[pi].q;
    matmul_backward_weight(m->G, dout, inp, 0, q->rows, m->B * m->T, (int)q->cols,
                           (int)q->rows);
    return consume(m, pi, bc);
}

/* m->dres holds dL/d(block output); on return, when need_dx, dL/d(block input).  Only the
 * stages that lead to a trainable parameter (or to the input, when need_dx) are computed. */
static int block_backward(primal_model *m, int l, const float *xin, int need_dx,
                          const bwd_ctx *bc)
{
    const primal_model_config *c = &m->c;
    const int *lp = m->lp[l];
    primal_param *P = m->p;
    int B = m->B, T = m->T, N = B * T, C = c->dim, F = c->ffn;
    int H = c->heads, KVH = c->kv_heads, hd = m->hd;

    int below_qkv = need_dx || trains(m, lp[L_LN1]);
    int need_dqkv = below_qkv || trains(m, lp[L_Q]) || trains(m, lp[L_K]) ||
                    trains(m, lp[L_V]) || trains(m, lp[L_BQ]) || trains(m, lp[L_BK]) ||
                    trains(m, lp[L_BV]);
    int need_mid = need_dqkv || trains(m, lp[L_O]);
    int need_dln2 = need_mid || trains(m, lp[L_LN2]);
    int need_dgu = need_dln2 || trains(m, lp[L_GATE]) || trains(m, lp[L_UP]);
    if (!need_dgu && !trains(m, lp[L_DOWN]))
        return PRIMAL_OK;

    block_acts *a = &m->blk[0];
    if (m->fwd_recompute)
        block_forward(m, l, a, xin, NULL);
    else
        a = &m->blk[l];
    int rc;

    /* xout = h + down(act) */
    if (trains(m, lp[L_DOWN]) && (rc = weight_grad(m, lp[L_DOWN], m->dres, a->act, bc)) != 0)
        return rc;
    if (!need_dgu)
        return PRIMAL_OK;
    zero(m->dact, (int64_t)N * F);
    matmul_backward_inp(m->dact, m->dres, &P[lp[L_DOWN]].q, m->tile, N, F, C);
    swiglu_backward(m->dgate, m->dup, m->dact, a->gate, a->up, (int64_t)N * F);
    if (trains(m, lp[L_GATE]) && (rc = weight_grad(m, lp[L_GATE], m->dgate, a->ln2, bc)) != 0)
        return rc;
    if (trains(m, lp[L_UP]) && (rc = weight_grad(m, lp[L_UP], m->dup, a->ln2, bc)) != 0)
        return rc;
    if (!need_dln2)
        return PRIMAL_OK;
    zero(m->dln, (int64_t)N * C);
    matmul_backward_inp(m->dln, m->dgate, &P[lp[L_GATE]].q, m->tile, N, C, F);
    matmul_backward_inp(m->dln, m->dup, &P[lp[L_UP]].q, m->tile, N, C, F);
    rmsnorm_backward(need_mid ? m->dres : NULL, P[lp[L_LN2]].dvec, m->dln, a->h,
                     P[lp[L_LN2]].vec, a->rstd2, N, C);

    /* h = xin + o(atty); m->dres is now dL/dh */
    if (trains(m, lp[L_O]) && (rc = weight_grad(m, lp[L_O], m->dres, a->atty, bc)) != 0)
        return rc;
    if (!need_dqkv)
        return PRIMAL_OK;
    zero(m->datty, (int64_t)N * m->qdim);
    matmul_backward_inp(m->datty, m->dres, &P[lp[L_O]].q, m->tile, N, m->qdim, C);
    attention_backward(m->dq, m->dk, m->dv, m->ascratch, m->datty, a->att, a->q, a->k, a->v, B,
                       T, H, KVH, hd);
    rope_backward(m->dq, m->dq, m->cosv, m->sinv, B, T, H, hd);
    rope_backward(m->dk, m->dk, m->cosv, m->sinv, B, T, KVH, hd);
    if (trains(m, lp[L_BQ]))
        matmul_backward_bias(P[lp[L_BQ]].dvec, m->dq, N, m->qdim);
    if (trains(m, lp[L_BK]))
        matmul_backward_bias(P[lp[L_BK]].dvec, m->dk, N, m->kvdim);
    if (trains(m, lp[L_BV]))
        matmul_backward_bias(P[lp[L_BV]].dvec, m->dv, N, m->kvdim);
    if (trains(m, lp[L_Q]) && (rc = weight_grad(m, lp[L_Q], m->dq, a->ln1, bc)) != 0)
        return rc;
    if (trains(m, lp[L_K]) && (rc = weight_grad(m, lp[L_K], m->dk, a->ln1, bc)) != 0)
        return rc;
    if (trains(m, lp[L_V]) && (rc = weight_grad(m, lp[L_V], m->dv, a->ln1, bc)) != 0)
        return rc;
    if (!below_qkv)
        return PRIMAL_OK;
    zero(m->dln, (int64_t)N * C);
    matmul_backward_inp(m->dln, m->dq, &P[lp[L_Q]].q, m->tile, N, C, m->qdim);
    matmul_backward_inp(m->dln, m->dk, &P[lp[L_K]].q, m->tile, N, C, m->kvdim);
    matmul_backward_inp(m->dln, m->dv, &P[lp[L_V]].q, m->tile, N, C, m->kvdim);
    rmsnorm_backward(need_dx ? m->dres : NULL, P[lp[L_LN1]].dvec, m->dln, xin,
                     P[lp[L_LN1]].vec, a->rstd1, N, C);
    return PRIMAL_OK;
}

/* The level of a parameter, bottom-up: embedding -1, block l, final norm and head = layers. */
static int level_of(const primal_model *m, const primal_param *p)
{
    if (p->layer == PRIMAL_LAYER_EMBED)
        return -1;
    if (p->layer == PRIMAL_LAYER_FINAL_NORM || p->layer == PRIMAL_LAYER_HEAD)
        return m->c.layers;
    return p->layer;
}

int primal_model_backward(primal_model *m, float loss_scale, primal_grad_hook hook, void *user,
                          primal_err *err)
{
    if (!m->have_fwd)
        return primal_errf(err, PRIMAL_ERROR,
                           "primal_model_backward: no forward to differentiate (each forward "
                           "allows one backward)");
    const primal_model_config *c = &m->c;
    int L = c->layers;
    int lowest = L + 1;
    for (int i = 0; i < m->np; i++)
        if (m->p[i].trainable && level_of(m, &m->p[i]) < lowest)
            lowest = level_of(m, &m->p[i]);
    if (lowest > L)
        return PRIMAL_OK; /* nothing trains; the forward stays usable */
    m->have_fwd = 0;      /* dlogits overwrite the logits */
    int rc = grow_ws(m, err);
    if (rc != PRIMAL_OK)
        return rc;
    bwd_ctx bc = {hook, user, err};
    primal_param *P = m->p;
    int N = m->B * m->T, C = c->dim, V = c->vocab;

    float d = m->count > 0 ? loss_scale / (float)m->count : 0.0f;
    for (int n = 0; n < N; n++)
        m->dloss[n] = m->mask[n] ? d : 0.0f;
    crossentropy_backward(m->logits, m->logits, m->tok_tgt, m->dloss, N, V);
    const float *dlogits = m->logits;

    if (!c->tied && P[m->head].trainable &&
        (rc = weight_grad(m, m->head, dlogits, m->lnf, &bc)) != PRIMAL_OK)
        return rc;
    if (lowest < L || P[m->fnorm].trainable) {
        zero(m->dln, (int64_t)N * C);
        matmul_backward_inp(m->dln, dlogits, &P[m->head].q, m->tile, N, C, V);
        if (lowest < L)
            zero(m->dres, (int64_t)N * C);
        rmsnorm_backward(lowest < L ? m->dres : NULL, P[m->fnorm].dvec, m->dln, m->x[L],
                         P[m->fnorm].vec, m->rstdf, N, C);
    }
    for (int l = L - 1; l >= 0 && l >= lowest; l--)
        if ((rc = block_backward(m, l, m->x[l], lowest < l, &bc)) != PRIMAL_OK)
            return rc;

    if (lowest == -1) {
        /* The embedding's G: its lookups' scatter, plus the head's G when tied, summed so the
         * hook sees the matrix once. */
        if (c->tied)
            matmul_backward_weight(m->G, dlogits, m->lnf, 0, V, N, C, V);
        else
            zero(m->G, (int64_t)V * C);
        embedding_backward(m->G, m->dres, m->tok_in, 0, V, N, C);
        if ((rc = consume(m, m->embed, &bc)) != PRIMAL_OK)
            return rc;
    }
    return PRIMAL_OK;
}
