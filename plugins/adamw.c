/* adamw.c: plain AdamW on float32 weights, the dense quality reference.
 *
 * SPEC.md, "The four plugin kinds" (baselines): `adamw`, a dense float model.  Storage is
 * PRIMAL_STORAGE_DENSE: t->dense is W itself.  Per weight it keeps m, v and the step's gradient
 * sum (12 bytes), so this is also the memory figure that the indexed policies are compared with.
 *
 * Keys ([flip]):
 *   lr            FLOAT  1e-3  (0,1]      learning rate (times the schedule's lr_mult)
 *   beta1         FLOAT  0.9   [0,1)
 *   beta2         FLOAT  0.95  [0,1)
 *   eps           FLOAT  1e-8  (0,1]
 *   weight_decay  FLOAT  0.1   [0,inf)    decoupled, as torch.optim.AdamW
 *
 * accumulate adds G into the gradient sum (the core already divides each micro-batch's G by
 * n_micro).  step, as torch.optim.AdamW: t += 1; g = sum * si->clip_scale; m = b1 m + (1-b1) g;
 * v = b2 v + (1-b2) g^2; W *= 1 - lr wd; W -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t)
 * + eps), with lr = key lr * si->lr_mult; then the sum is zeroed.  Per-weight arithmetic is
 * float32.  step stats report no flips (nothing is indexed); weights = rows * cols. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <primal/plugin.h>

#include "adamw_update.h"

#ifdef PRIMAL_HAVE_CUDA
#include <primal/policy_cuda.h>
/* the GPU entry points, in adamw_cuda.cu */
extern const primal_policy_cuda_vt primal_adamw_cuda;
#endif

static const primal_key aw_keys[] = {
    {"lr", PRIMAL_KEY_FLOAT, "1e-3", "learning rate (times the schedule's multiplier)", "(0,1]"},
    {"beta1", PRIMAL_KEY_FLOAT, "0.9", "first-moment decay", "[0,1)"},
    {"beta2", PRIMAL_KEY_FLOAT, "0.95", "second-moment decay", "[0,1)"},
    {"eps", PRIMAL_KEY_FLOAT, "1e-8", "added to the root of the second moment", "(0,1]"},
    {"weight_decay", PRIMAL_KEY_FLOAT, "0.1", "decoupled weight decay", "[0,inf)"},
    {NULL, 0, NULL, NULL, NULL},
};

typedef struct aw_ctx {
    double lr, beta1, beta2, eps, wd;
} aw_ctx;

typedef struct aw_state {
    int64_t n;
    float *m, *v, *gsum; /* (rows, cols) each */
    int64_t t;
} aw_state;

static int aw_create(const primal_config *cfg, const primal_policy_info *info, void **ctx,
                     primal_err *err)
{
    (void)info;
    aw_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "adamw: out of memory");
    c->lr = primal_cfg_float(cfg, "lr");
    c->beta1 = primal_cfg_float(cfg, "beta1");
    c->beta2 = primal_cfg_float(cfg, "beta2");
    c->eps = primal_cfg_float(cfg, "eps");
    c->wd = primal_cfg_float(cfg, "weight_decay");
    *ctx = c;
    return PRIMAL_OK;
}

static void aw_destroy(void *ctx) { free(ctx); }

static void aw_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    aw_state *s = state;
    if (s == NULL)
        return;
    free(s->m);
    free(s->v);
    free(s->gsum);
    free(s);
}

static int aw_tensor_init(void *ctx, const primal_qtensor *t, void **state, primal_err *err)
{
    if (t->dense == NULL || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "adamw: tensor %s: needs dense storage (float32 weights), got bits %d",
                           t->name, t->bits);
    aw_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "adamw: tensor %s: out of memory", t->name);
    s->n = t->rows * t->cols;
    s->m = calloc((size_t)s->n, sizeof(float));
    s->v = calloc((size_t)s->n, sizeof(float));
    s->gsum = calloc((size_t)s->n, sizeof(float));
    if (s->m == NULL || s->v == NULL || s->gsum == NULL) {
        aw_tensor_free(ctx, t, s);
        return primal_errf(err, PRIMAL_ENOMEM, "adamw: tensor %s: out of memory for %lld weights",
                           t->name, (long long)t->rows * t->cols);
    }
    *state = s;
    return PRIMAL_OK;
}

static size_t aw_state_bytes(void *ctx, const primal_qtensor *t, const void *state)
{
    (void)ctx;
    (void)t;
    const aw_state *s = state;
    return 3 * (size_t)s->n * sizeof(float) + sizeof(int64_t);
}

static int aw_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                         int64_t r0, int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    (void)ctx;
    (void)ai;
    aw_state *s = state;
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR, "adamw: tensor %s: rows [%lld,%lld) outside [0,%lld)",
                           t->name, (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    float *gs = s->gsum + r0 * t->cols;
    for (int64_t i = 0; i < nrows * t->cols; i++)
        gs[i] += G[i];
    return PRIMAL_OK;
}

static int aw_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                   primal_step_stats *stats, primal_err *err)
{
    (void)err;
    const aw_ctx *c = ctx;
    aw_state *s = state;
    s->t++;
    const adamw_consts k = adamw_consts_for(c->lr * si->lr_mult, c->beta1, c->beta2, c->eps,
                                            c->wd, s->t, si->clip_scale);
    adamw_update(t->dense, s->m, s->v, s->gsum, &k, s->n);
    stats->flips = 0;
    stats->saturated = 0;
    stats->weights = s->n;
    return PRIMAL_OK;
}

static int aw_state_save(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                         primal_err *err)
{
    (void)ctx;
    (void)t;
    (void)err;
    const aw_state *s = state;
    size_t nb = (size_t)s->n * sizeof(float);
    uint8_t *p = buf;
    memcpy(p, s->m, nb);
    memcpy(p + nb, s->v, nb);
    memcpy(p + 2 * nb, s->gsum, nb);
    memcpy(p + 3 * nb, &s->t, sizeof s->t);
    return PRIMAL_OK;
}

static int aw_state_load(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                         size_t n, primal_err *err)
{
    aw_state *s = state;
    size_t want = aw_state_bytes(ctx, t, state);
    if (n != want)
        return primal_errf(err, PRIMAL_EIO, "adamw: tensor %s: state is %zu bytes, expected %zu",
                           t->name, n, want);
    size_t nb = (size_t)s->n * sizeof(float);
    const uint8_t *p = buf;
    memcpy(s->m, p, nb);
    memcpy(s->v, p + nb, nb);
    memcpy(s->gsum, p + 2 * nb, nb);
    memcpy(&s->t, p + 3 * nb, sizeof s->t);
    return PRIMAL_OK;
}

static const primal_policy_vt aw_vt = {
    .size = sizeof(primal_policy_vt),
    .storage = PRIMAL_STORAGE_DENSE,
    .create = aw_create,
    .destroy = aw_destroy,
    .tensor_init = aw_tensor_init,
    .tensor_free = aw_tensor_free,
    .state_bytes = aw_state_bytes,
    .observe = NULL,
    .accumulate = aw_accumulate,
    .step = aw_step,
    .state_save = aw_state_save,
    .state_load = aw_state_load,
#ifdef PRIMAL_HAVE_CUDA
    .cuda = &primal_adamw_cuda,
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
        .name = "adamw",
        .description = "dense float32 weights trained with AdamW (the quality reference)",
        .keys = aw_keys,
        .vtable = &aw_vt,
    };
    return &d;
}
