/* latent_adamw.c: quantisation-aware training with float shadow weights, the memory reference.
 *
 * SPEC.md, "The four plugin kinds" (baselines): `latent_adamw`.  Indexed storage.  tensor_init
 * sets a float shadow copy to the dequantised W (grid[index] * scale[r]); each step runs AdamW on
 * the shadow with the straight-through gradient, then re-snaps every weight:
 * index = the grid value nearest shadow / scale[r], ties to the lower index.  Per weight it keeps
 * the shadow, m, v and the step's gradient sum (16 bytes).
 *
 * Keys ([flip]) and defaults, as adamw:
 *   lr            FLOAT  1e-3  (0,1]      learning rate (times the schedule's lr_mult)
 *   beta1         FLOAT  0.9   [0,1)
 *   beta2         FLOAT  0.95  [0,1)
 *   eps           FLOAT  1e-8  (0,1]
 *   weight_decay  FLOAT  0.1   [0,inf)    decoupled, on the shadow
 *
 * The AdamW update is torch.optim.AdamW's (see adamw.c), with g = gradient sum *
 * si->clip_scale and lr = key lr * si->lr_mult.  The re-snap divides by the current scale[r]
 * (trained by the core); a row whose scale is 0, or a shadow value that is not a number, keeps
 * its indices.  step stats: flips = indices that changed; saturated = 0. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <primal/plugin.h>

#include "adamw_update.h"

#ifdef PRIMAL_HAVE_CUDA
#include <primal/policy_cuda.h>
/* the GPU entry points, in latent_adamw_cuda.cu */
extern const primal_policy_cuda_vt primal_latent_adamw_cuda;
#endif

static const primal_key la_keys[] = {
    {"lr", PRIMAL_KEY_FLOAT, "1e-3", "learning rate (times the schedule's multiplier)", "(0,1]"},
    {"beta1", PRIMAL_KEY_FLOAT, "0.9", "first-moment decay", "[0,1)"},
    {"beta2", PRIMAL_KEY_FLOAT, "0.95", "second-moment decay", "[0,1)"},
    {"eps", PRIMAL_KEY_FLOAT, "1e-8", "added to the root of the second moment", "(0,1]"},
    {"weight_decay", PRIMAL_KEY_FLOAT, "0.1", "decoupled weight decay on the shadow", "[0,inf)"},
    {NULL, 0, NULL, NULL, NULL},
};

typedef struct la_ctx {
    double lr, beta1, beta2, eps, wd;
} la_ctx;

typedef struct la_state {
    int64_t n;
    float *w, *m, *v, *gsum; /* (rows, cols) each: shadow, moments, gradient sum */
    int64_t t;
} la_state;

static int la_create(const primal_config *cfg, const primal_policy_info *info, void **ctx,
                     primal_err *err)
{
    (void)info;
    la_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "latent_adamw: out of memory");
    c->lr = primal_cfg_float(cfg, "lr");
    c->beta1 = primal_cfg_float(cfg, "beta1");
    c->beta2 = primal_cfg_float(cfg, "beta2");
    c->eps = primal_cfg_float(cfg, "eps");
    c->wd = primal_cfg_float(cfg, "weight_decay");
    *ctx = c;
    return PRIMAL_OK;
}

static void la_destroy(void *ctx) { free(ctx); }

static void la_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    la_state *s = state;
    if (s == NULL)
        return;
    free(s->w);
    free(s->m);
    free(s->v);
    free(s->gsum);
    free(s);
}

static int la_tensor_init(void *ctx, const primal_qtensor *t, void **state, primal_err *err)
{
    if (t->index == NULL || t->scale == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "latent_adamw: tensor %s: needs indexed storage (bits %d, grid size "
                           "%d, shape [%lld,%lld])",
                           t->name, t->bits, t->grid_size, (long long)t->rows,
                           (long long)t->cols);
    la_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "latent_adamw: tensor %s: out of memory", t->name);
    s->n = t->rows * t->cols;
    s->w = malloc((size_t)s->n * sizeof(float));
    s->m = calloc((size_t)s->n, sizeof(float));
    s->v = calloc((size_t)s->n, sizeof(float));
    s->gsum = calloc((size_t)s->n, sizeof(float));
    if (s->w == NULL || s->m == NULL || s->v == NULL || s->gsum == NULL) {
        la_tensor_free(ctx, t, s);
        return primal_errf(err, PRIMAL_ENOMEM,
                           "latent_adamw: tensor %s: out of memory for %lld weights", t->name,
                           (long long)t->rows * t->cols);
    }
    for (int64_t r = 0; r < t->rows; r++)
        for (int64_t c = 0; c < t->cols; c++)
            s->w[r * t->cols + c] = t->grid[primal_index_get(t, r, c)] * t->scale[r];
    *state = s;
    return PRIMAL_OK;
}

static size_t la_state_bytes(void *ctx, const primal_qtensor *t, const void *state)
{
    (void)ctx;
    (void)t;
    const la_state *s = state;
    return 4 * (size_t)s->n * sizeof(float) + sizeof(int64_t);
}

static int la_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                         int64_t r0, int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    (void)ctx;
    (void)ai;
    la_state *s = state;
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR,
                           "latent_adamw: tensor %s: rows [%lld,%lld) outside [0,%lld)", t->name,
                           (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    float *gs = s->gsum + r0 * t->cols;
    for (int64_t i = 0; i < nrows * t->cols; i++)
        gs[i] += G[i];
    return PRIMAL_OK;
}

/* The index of the grid value nearest x, ties to the lower index. */
static int nearest(const float *grid, /* (n) ascending */
                   float x, int n)
{
    if (x <= grid[0])
        return 0;
    if (x >= grid[n - 1])
        return n - 1;
    int lo = 0, hi = n - 1; /* grid[lo] < x <= grid[hi] */
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (grid[mid] < x)
            lo = mid;
        else
            hi = mid;
    }
    return x - grid[lo] <= grid[hi] - x ? lo : hi;
}

static int la_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                   primal_step_stats *stats, primal_err *err)
{
    (void)err;
    const la_ctx *c = ctx;
    la_state *s = state;
    s->t++;
    const adamw_consts k = adamw_consts_for(c->lr * si->lr_mult, c->beta1, c->beta2, c->eps,
                                            c->wd, s->t, si->clip_scale);
    adamw_update(s->w, s->m, s->v, s->gsum, &k, s->n);
    int64_t flips = 0;
    for (int64_t r = 0; r < t->rows; r++) {
        float sc = t->scale[r];
        if (sc == 0.0f)
            continue;
        for (int64_t col = 0; col < t->cols; col++) {
            float x = s->w[r * t->cols + col] / sc;
            if (x != x)
                continue;
            uint32_t to = (uint32_t)nearest(t->grid, x, t->grid_size);
            if (to != primal_index_get(t, r, col)) {
                primal_index_set(t, r, col, to);
                flips++;
            }
        }
    }
    stats->flips = flips;
    stats->saturated = 0;
    stats->weights = s->n;
    return PRIMAL_OK;
}

/* The checkpoint layout, in order: shadow, m, v, gsum, t. */
static int la_state_save(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                         primal_err *err)
{
    (void)ctx;
    (void)t;
    (void)err;
    const la_state *s = state;
    size_t nb = (size_t)s->n * sizeof(float);
    uint8_t *p = buf;
    memcpy(p, s->w, nb);
    memcpy(p + nb, s->m, nb);
    memcpy(p + 2 * nb, s->v, nb);
    memcpy(p + 3 * nb, s->gsum, nb);
    memcpy(p + 4 * nb, &s->t, sizeof s->t);
    return PRIMAL_OK;
}

static int la_state_load(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                         size_t n, primal_err *err)
{
    la_state *s = state;
    size_t want = la_state_bytes(ctx, t, state);
    if (n != want)
        return primal_errf(err, PRIMAL_EIO,
                           "latent_adamw: tensor %s: state is %zu bytes, expected %zu", t->name,
                           n, want);
    size_t nb = (size_t)s->n * sizeof(float);
    const uint8_t *p = buf;
    memcpy(s->w, p, nb);
    memcpy(s->m, p + nb, nb);
    memcpy(s->v, p + 2 * nb, nb);
    memcpy(s->gsum, p + 3 * nb, nb);
    memcpy(&s->t, p + 4 * nb, sizeof s->t);
    return PRIMAL_OK;
}

static const primal_policy_vt la_vt = {
    .size = sizeof(primal_policy_vt),
    .storage = PRIMAL_STORAGE_INDEXED,
    .create = la_create,
    .destroy = la_destroy,
    .tensor_init = la_tensor_init,
    .tensor_free = la_tensor_free,
    .state_bytes = la_state_bytes,
    .observe = NULL,
    .accumulate = la_accumulate,
    .step = la_step,
    .state_save = la_state_save,
    .state_load = la_state_load,
#ifdef PRIMAL_HAVE_CUDA
    .cuda = &primal_latent_adamw_cuda,
#else
    .cuda = NULL,
#endif
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_POLICY,
        .name = "latent_adamw",
        .description = "float shadow weights trained with AdamW, re-snapped onto the grid each "
                       "step (QAT)",
        .keys = la_keys,
        .vtable = &la_vt,
    };
    return &d;
}
