/* sign_flip: a complete flip policy written out of tree, the example of
 * docs/writing-a-plugin.md.
 *
 * Each micro-batch, every weight casts one vote against the sign of its gradient
 * (votes += -sign(g), with g = G * sign(scale), SPEC.md "Flip policies"), saturating at ±127.
 * At each optimizer step a weight whose |votes| reached `threshold` moves one grid entry in the
 * direction of its votes, and its votes restart from 0.  State: one int8 per trainable weight.
 *
 * Keys: threshold (default 4): votes needed to move. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <primal/plugin.h>

static const primal_key sf_keys[] = {
    {"threshold", PRIMAL_KEY_INT, "4", "votes needed to move a weight", "[1,127]"},
    {0},
};

typedef struct sf_policy {
    int threshold;
} sf_policy;

static int sf_create(const primal_config *cfg, const primal_policy_info *info, void **ctx,
                     primal_err *err)
{
    (void)info;
    sf_policy *p = malloc(sizeof *p);
    if (p == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "sign_flip: out of memory");
    p->threshold = (int)primal_cfg_int(cfg, "threshold");
    *ctx = p;
    return PRIMAL_OK;
}

static void sf_destroy(void *ctx) { free(ctx); }

/* The per-tensor state is just the votes, (rows, cols) int8. */
static int sf_tensor_init(void *ctx, const primal_qtensor *t, void **state, primal_err *err)
{
    (void)ctx;
    *state = calloc((size_t)(t->rows * t->cols), 1);
    if (*state == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "sign_flip: out of memory for %s", t->name);
    return PRIMAL_OK;
}

static void sf_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    free(state);
}

static size_t sf_state_bytes(void *ctx, const primal_qtensor *t, const void *state)
{
    (void)ctx;
    (void)state;
    return (size_t)(t->rows * t->cols);
}

static int sf_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                         int64_t r0, int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    (void)ctx;
    (void)ai;
    (void)err;
    int8_t *votes = state;
    for (int64_t r = 0; r < nrows; r++) {
        float sign_scale = t->scale[r0 + r] < 0 ? -1.0f : 1.0f;
        for (int64_t c = 0; c < t->cols; c++) {
            float g = G[r * t->cols + c] * sign_scale;
            int8_t *v = &votes[(r0 + r) * t->cols + c];
            if (g > 0 && *v > -127)
                (*v)--; /* a positive gradient asks for a smaller value: vote down */
            else if (g < 0 && *v < 127)
                (*v)++;
        }
    }
    return PRIMAL_OK;
}

static int sf_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                   primal_step_stats *stats, primal_err *err)
{
    (void)si;
    (void)err;
    const sf_policy *p = ctx;
    int8_t *votes = state;
    for (int64_t r = 0; r < t->rows; r++)
        for (int64_t c = 0; c < t->cols; c++) {
            int8_t *v = &votes[r * t->cols + c];
            if (*v == 127 || *v == -127)
                stats->saturated++;
            if (abs(*v) < p->threshold)
                continue;
            uint32_t i = primal_index_get(t, r, c);
            if (*v > 0 && i + 1 < (uint32_t)t->grid_size) {
                primal_index_set(t, r, c, i + 1);
                stats->flips++;
            } else if (*v < 0 && i > 0) {
                primal_index_set(t, r, c, i - 1);
                stats->flips++;
            }
            *v = 0;
        }
    stats->weights += t->rows * t->cols;
    return PRIMAL_OK;
}

static int sf_state_save(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                         primal_err *err)
{
    (void)ctx;
    (void)err;
    memcpy(buf, state, (size_t)(t->rows * t->cols));
    return PRIMAL_OK;
}

static int sf_state_load(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                         size_t n, primal_err *err)
{
    (void)ctx;
    if (n != (size_t)(t->rows * t->cols))
        return primal_errf(err, PRIMAL_EIO, "sign_flip: state of %s is %zu bytes, expected %lld",
                           t->name, n, (long long)(t->rows * t->cols));
    memcpy(state, buf, n);
    return PRIMAL_OK;
}

static const primal_policy_vt sf_vt = {
    .size = sizeof(primal_policy_vt),
    .storage = PRIMAL_STORAGE_INDEXED,
    .create = sf_create,
    .destroy = sf_destroy,
    .tensor_init = sf_tensor_init,
    .tensor_free = sf_tensor_free,
    .state_bytes = sf_state_bytes,
    .accumulate = sf_accumulate,
    .step = sf_step,
    .state_save = sf_state_save,
    .state_load = sf_state_load,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_POLICY,
        .name = "sign_flip",
        .description = "one vote per micro-batch against the gradient's sign; move at a threshold",
        .keys = sf_keys,
        .vtable = &sf_vt,
    };
    return &d;
}
