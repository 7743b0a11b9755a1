/* stochastic_zscore.c: the prototype's "Poltergeist" flip policy (8-bit grids).
 *
 * SPEC.md, "Flip policies", stochastic_zscore.  Each micro-batch: centre G per row, a = |G|,
 * t = mean(a) + z * std(a) over the tensor; int8 votes += -sign(g) where a > t (saturating at
 * +-127).  Each step, with p = clamp(base_p / (|mean(scale)| + 1e-6), 1e-4, 0.05): a weight with
 * |votes| >= 127 flips always, >= 32 with probability 0.1, others with p; a flip moves the index
 * by sign(votes), only where the cooldown is 0; flipped votes reset to 0 and get a cooldown
 * (x3 when more than 0.1% of the tensor flipped); other votes move one step toward 0.
 *
 * Keys ([flip]):
 *   z         FLOAT  0.5    [0,10]     threshold on |centred G| in standard deviations
 *   cooldown  INT    100    [0,65535]  steps a flipped weight waits (x3 after an avalanche)
 *   base_p    FLOAT  0.002  (0,1]      numerator of the per-tensor flip probability p
 *
 * Choices where SPEC is silent:
 * - g = centred G * sign(scale[r]), sign(0) = +1.
 * - std(a) is the sample standard deviation (n - 1 in the denominator, as torch.std, which the
 *   prototype used); mean and std are taken over the whole tensor from observe(), which the core
 *   calls on every row chunk of a micro-batch before accumulate(); a chunk with r0 == 0 or a new
 *   (step, micro) restarts them.  Without observe() a chunk's own statistics are used.
 * - The random draw of weight (r, c) at step s is
 *   primal_rng_u01(seed, primal_rng_stream(tensor id, s, 0x5A), r * cols + c), and a weight
 *   flips when the draw is below its probability.  A weight with votes 0 never moves.
 * - A weight selected to flip at a grid end does not move: its votes reset, but it neither
 *   counts as a flip nor starts a cooldown.
 * - Cooldown: a weight that flipped at step s cannot flip at steps s+1 .. s+cooldown (its votes
 *   still step toward 0 and accumulate); the x3 cooldown is capped at 65535 (uint16 counters,
 *   present only when cooldown > 0).  "More than 0.1%" is flips * 1000 > rows * cols.
 * - step stats: flips = indices moved, saturated = votes at +-127 after the step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <primal/plugin.h>

#ifdef PRIMAL_HAVE_CUDA
#include <primal/policy_cuda.h>
/* the GPU entry points, in stochastic_zscore_cuda.cu */
extern const primal_policy_cuda_vt primal_stochastic_zscore_cuda;
#endif

#define VOTE_MAX 127
#define VOTE_STRONG 32
#define P_STRONG 0.1f
#define P_MIN 1e-4
#define P_MAX 0.05
#define RNG_PURPOSE_FLIP 0x5A

static const primal_key sz_keys[] = {
    {"z", PRIMAL_KEY_FLOAT, "0.5", "vote where |centred G| > mean + z * std over the tensor",
     "[0,10]"},
    {"cooldown", PRIMAL_KEY_INT, "100", "steps a flipped weight waits (x3 after an avalanche)",
     "[0,65535]"},
    {"base_p", PRIMAL_KEY_FLOAT, "0.002",
     "flip probability of weak votes is base_p / |mean(scale)|, clamped to [1e-4, 0.05]",
     "(0,1]"},
    {NULL, 0, NULL, NULL, NULL},
};

typedef struct sz_ctx {
    double z;
    int cooldown;
    double base_p;
} sz_ctx;

typedef struct sz_state {
    int64_t n;
    int8_t *votes;  /* (rows, cols) */
    uint16_t *cool; /* (rows, cols) steps left; NULL when cooldown == 0 */
    /* sums of a = |centred G| over the micro-batch being accumulated (not checkpointed: the
     * checkpoint is taken between steps) */
    double sum, sumsq;
    int64_t count;
    int64_t stat_step;
    int stat_micro;
    int stat_valid;
} sz_state;

static int sz_create(const primal_config *cfg, const primal_policy_info *info, void **ctx,
                     primal_err *err)
{
    (void)info;
    sz_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "stochastic_zscore: out of memory");
    c->z = primal_cfg_float(cfg, "z");
    c->cooldown = (int)primal_cfg_int(cfg, "cooldown");
    c->base_p = primal_cfg_float(cfg, "base_p");
    *ctx = c;
    return PRIMAL_OK;
}

static void sz_destroy(void *ctx) { free(ctx); }

static int sz_tensor_init(void *ctx, const primal_qtensor *t, void **state, primal_err *err)
{
    const sz_ctx *c = ctx;
    if (t->index == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "stochastic_zscore: tensor %s: needs indexed storage (bits %d, grid "
                           "size %d, shape [%lld,%lld])",
                           t->name, t->bits, t->grid_size, (long long)t->rows,
                           (long long)t->cols);
    sz_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "stochastic_zscore: tensor %s: out of memory",
                           t->name);
    s->n = t->rows * t->cols;
    s->votes = calloc((size_t)s->n, sizeof *s->votes);
    if (c->cooldown > 0)
        s->cool = calloc((size_t)s->n, sizeof *s->cool);
    if (s->votes == NULL || (c->cooldown > 0 && s->cool == NULL)) {
        free(s->votes);
        free(s->cool);
        free(s);
        return primal_errf(err, PRIMAL_ENOMEM,
                           "stochastic_zscore: tensor %s: out of memory for %lld votes", t->name,
                           (long long)t->rows * t->cols);
    }
    *state = s;
    return PRIMAL_OK;
}

static void sz_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    sz_state *s = state;
    if (s == NULL)
        return;
    free(s->votes);
    free(s->cool);
    free(s);
}

static size_t sz_state_bytes(void *ctx, const primal_qtensor *t, const void *state)
{
    (void)ctx;
    (void)t;
    const sz_state *s = state;
    return (size_t)s->n * (sizeof(int8_t) + (s->cool != NULL ? sizeof(uint16_t) : 0));
}

static float row_mean(const float *g, int64_t cols)
{
    double m = 0.0;
    for (int64_t c = 0; c < cols; c++)
        m += g[c];
    return (float)(m / (double)cols);
}

static void add_stats(sz_state *s, const float *G, int64_t nrows, int64_t cols)
{
    for (int64_t r = 0; r < nrows; r++) {
        const float *g = G + r * cols;
        float mu = row_mean(g, cols);
        for (int64_t c = 0; c < cols; c++) {
            double a = fabsf(g[c] - mu);
            s->sum += a;
            s->sumsq += a * a;
        }
    }
    s->count += nrows * cols;
}

static int sz_observe(void *ctx, void *state, const primal_qtensor *t, const float *G, int64_t r0,
                      int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    (void)ctx;
    (void)err;
    sz_state *s = state;
    if (r0 == 0 || !s->stat_valid || s->stat_step != ai->step || s->stat_micro != ai->micro) {
        s->sum = s->sumsq = 0.0;
        s->count = 0;
        s->stat_step = ai->step;
        s->stat_micro = ai->micro;
        s->stat_valid = 1;
    }
    add_stats(s, G, nrows, t->cols);
    return PRIMAL_OK;
}

/* votes += -sign(g) where |centred G| > thr, saturating. */
static void sz_vote_rows(int8_t *votes,     /* (nrows, cols) in/out */
                         const float *G,    /* (nrows, cols) dL/dW */
                         const float *scale, /* (nrows) */
                         float thr, int64_t nrows, int64_t cols)
{
    for (int64_t r = 0; r < nrows; r++) {
        const float *g = G + r * cols;
        float mu = row_mean(g, cols);
        int neg_scale = scale[r] < 0.0f;
        for (int64_t c = 0; c < cols; c++) {
            float x = g[c] - mu;
            if (!(fabsf(x) > thr))
                continue;
            int up = (x < 0.0f) != neg_scale; /* g < 0: a larger value is better */
            int v = votes[r * cols + c] + (up ? 1 : -1);
            votes[r * cols + c] = (int8_t)(v > VOTE_MAX ? VOTE_MAX : v < -VOTE_MAX ? -VOTE_MAX : v);
        }
    }
}

static int sz_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                         int64_t r0, int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    const sz_ctx *c = ctx;
    sz_state *s = state;
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR,
                           "stochastic_zscore: tensor %s: rows [%lld,%lld) outside [0,%lld)",
                           t->name, (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    if (!(s->stat_valid && s->stat_step == ai->step && s->stat_micro == ai->micro)) {
        s->sum = s->sumsq = 0.0;
        s->count = 0;
        s->stat_valid = 0;
        add_stats(s, G, nrows, t->cols);
    }
    double n = (double)s->count, mean = n > 0 ? s->sum / n : 0.0, var = 0.0;
    if (n > 1)
        var = (s->sumsq - s->sum * mean) / (n - 1);
    float thr = (float)(mean + c->z * sqrt(var > 0.0 ? var : 0.0));
    sz_vote_rows(s->votes + r0 * t->cols, G, t->scale + r0, thr, nrows, t->cols);
    return PRIMAL_OK;
}

/* Whether weight i, not in cooldown and holding votes v, flips this step. */
static int fires(int v, float p, uint64_t seed, uint64_t stream, int64_t i)
{
    int a = abs(v);
    if (a == 0)
        return 0;
    if (a >= VOTE_MAX)
        return 1;
    return primal_rng_u01(seed, stream, (uint64_t)i) < (a >= VOTE_STRONG ? P_STRONG : p);
}

static int sz_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                   primal_step_stats *stats, primal_err *err)
{
    (void)err;
    const sz_ctx *c = ctx;
    sz_state *s = state;
    const int64_t rows = t->rows, cols = t->cols;
    const int top = t->grid_size - 1;
    const uint64_t stream = primal_rng_stream((uint64_t)t->id, (uint64_t)si->step,
                                              RNG_PURPOSE_FLIP);
    double ms = 0.0;
    for (int64_t r = 0; r < rows; r++)
        ms += t->scale[r];
    double p = c->base_p / (fabs(ms / (double)rows) + 1e-6);
    const float pf = (float)(p < P_MIN ? P_MIN : p > P_MAX ? P_MAX : p);

    /* The cooldown given depends on how many flip, so count them first (the draws are a pure
     * function of (seed, step, weight), so the second pass sees the same ones). */
    int64_t flips = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t col = 0; col < cols; col++) {
            int64_t i = r * cols + col;
            if (s->cool != NULL && s->cool[i] > 0)
                continue;
            int v = s->votes[i];
            if (!fires(v, pf, si->seed, stream, i))
                continue;
            int idx = (int)primal_index_get(t, r, col);
            if ((v > 0 && idx < top) || (v < 0 && idx > 0))
                flips++;
        }
    int cd = c->cooldown;
    if (flips * 1000 > rows * cols)
        cd = 3 * cd > UINT16_MAX ? UINT16_MAX : 3 * cd;

    int64_t saturated = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t col = 0; col < cols; col++) {
            int64_t i = r * cols + col;
            int v = s->votes[i];
            int cooling = s->cool != NULL && s->cool[i] > 0;
            if (!cooling && fires(v, pf, si->seed, stream, i)) {
                int idx = (int)primal_index_get(t, r, col);
                int to = idx + (v > 0 ? 1 : -1);
                s->votes[i] = 0;
                if (to >= 0 && to <= top) {
                    primal_index_set(t, r, col, (uint32_t)to);
                    if (s->cool != NULL)
                        s->cool[i] = (uint16_t)cd;
                }
                continue;
            }
            s->votes[i] = (int8_t)(v > 0 ? v - 1 : v < 0 ? v + 1 : 0);
            if (cooling)
                s->cool[i]--;
            if (abs(s->votes[i]) == VOTE_MAX)
                saturated++;
        }
    stats->flips = flips;
    stats->saturated = saturated;
    stats->weights = rows * cols;
    return PRIMAL_OK;
}

static int sz_state_save(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                         primal_err *err)
{
    (void)ctx;
    (void)t;
    (void)err;
    const sz_state *s = state;
    memcpy(buf, s->votes, (size_t)s->n);
    if (s->cool != NULL)
        memcpy((uint8_t *)buf + s->n, s->cool, (size_t)s->n * sizeof *s->cool);
    return PRIMAL_OK;
}

static int sz_state_load(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                         size_t n, primal_err *err)
{
    sz_state *s = state;
    size_t want = sz_state_bytes(ctx, t, state);
    if (n != want)
        return primal_errf(err, PRIMAL_EIO,
                           "stochastic_zscore: tensor %s: state is %zu bytes, expected %zu",
                           t->name, n, want);
    memcpy(s->votes, buf, (size_t)s->n);
    if (s->cool != NULL)
        memcpy(s->cool, (const uint8_t *)buf + s->n, (size_t)s->n * sizeof *s->cool);
    s->stat_valid = 0;
    return PRIMAL_OK;
}

static const primal_policy_vt sz_vt = {
    .size = sizeof(primal_policy_vt),
    .storage = PRIMAL_STORAGE_INDEXED,
    .create = sz_create,
    .destroy = sz_destroy,
    .tensor_init = sz_tensor_init,
    .tensor_free = sz_tensor_free,
    .state_bytes = sz_state_bytes,
    .observe = sz_observe,
    .accumulate = sz_accumulate,
    .step = sz_step,
    .state_save = sz_state_save,
    .state_load = sz_state_load,
#ifdef PRIMAL_HAVE_CUDA
    .cuda = &primal_stochastic_zscore_cuda,
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
        .name = "stochastic_zscore",
        .description = "votes where |centred G| is z std above its mean; random flips by vote "
                       "strength",
        .keys = sz_keys,
        .vtable = &sz_vt,
    };
    return &d;
}
