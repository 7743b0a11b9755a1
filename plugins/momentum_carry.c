/* momentum_carry.c: integer momentum plus a sub-grid residual that carries into the index.
 *
 * SPEC.md, "Flip policies", momentum_carry.  Per trainable tensor: a residual r per weight
 * (residual_bits signed, R = 2^(bits-1) - 1), a momentum per weight (momentum_bits signed,
 * q = 2^(bits-1) - 1, one float scale per row), a second moment v per row, a step counter t.
 * index + r/R is a fixed-point position between grid entries.
 *
 * Keys ([flip]):
 *   lr             FLOAT  1e-3   (0,1]  step size, in grid-value units relative to |scale|
 *   beta1          FLOAT  0.9    [0,1)  momentum decay (0: no momentum)
 *   beta2          FLOAT  0.999  [0,1)  per-row second-moment decay
 *   residual_bits  INT    8      4 or 8
 *   momentum_bits  INT    8      4 or 8
 * 4-bit values are stored two per byte (the even column in the low nibble, two's complement).
 *
 * One micro-batch per step (k = 1) is exactly SPEC's reference:
 *   accumulate: t += 1; v = b2 v + (1-b2) mean_c G^2; rho = sqrt(v / (1 - b2^t)) + 1e-12;
 *     m = b1 m + (1-b1) g / rho, re-quantised per row (s = max|m|/q,
 *     m = clamp(floor(m/s + U), -q, q) s); u = -lr m / max(|scale|, 1e-12);
 *     r += floor(u R / gap + U), saturating at +-R, gap = the grid gap in u's direction (the
 *     inner gap at either end).
 *   step: h = (R+1)/2; r >= h moves the index up and r -= R, r <= -h moves it down and r += R,
 *     never past a grid end; then r is clamped to [-h, h].
 *
 * Choices where SPEC is silent or leaves room:
 * - lr: the core passes ai->lr (the policy's lr times the schedule), but it cannot know this
 *   policy's key, so the plugin uses its own key times ai->lr_mult and ignores ai->lr.
 * - g = G * sign(scale[r]) with sign(0) = +1.  Per-weight arithmetic is float32; per-row
 *   statistics are double.  Per row, (1-b1)/rho, q/max|m| (double) and -lr R/max(|scale|,1e-12)
 *   are computed once, so m = decay m + ((1-b1)/rho) g, m/s = m * (q/max|m|) and
 *   u R/gap = (-lr R/|scale|) m / gap; the entry equal to max|m| maps exactly to +-q.  A value x
 *   far outside the residual's range is clamped to +-(2R + 2) before floor(x + U).
 * - Random draws: U = primal_rng_u01(seed, primal_rng_stream(tensor id, step, P), counter) with
 *   P = 0x4D for the momentum rounding and 0x52 for the residual rounding; counter = r * cols +
 *   c, plus micro * rows * cols for the momentum rounding of micro-batch `micro` > 0.
 * - k = n_micro > 1 micro-batches per step (each G is already divided by k by the core, so the
 *   step's gradient is the sum of the k G's).  No per-weight float copy is kept:
 *   * v uses the mean over micro-batches of each micro-batch's own mean square, i.e. with
 *     S[r] = sum_j mean_c G_j^2 so far, v_j = b2 v + (1-b2) k^2 S / (j+1); it is committed at the
 *     last micro-batch.  For identical micro-batches this equals the one-batch value; in general
 *     it is larger by the micro-batch noise (as Adam's v is when each micro-batch is a step).
 *   * the momentum takes each micro-batch's share as it comes: micro 0 applies the decay,
 *     m = b1 m + (1-b1) g_0 / rho_0, later ones add (1-b1) g_j / rho_j; it is re-quantised after
 *     each (k stochastic roundings, each unbiased).  So m ends as b1 m + (1-b1) mean-gradient /
 *     rho when the rho_j agree (exactly so for identical micro-batches).
 *   * the residual moves once, at the last micro-batch (micro == n_micro - 1), from the final m.
 *   * t counts steps, not micro-batches (it increments at the first accumulate of a new step).
 * - step stats: flips = indices moved; saturated = residuals at +-h after the step, i.e. weights
 *   pushing against a grid end.
 * - State (and checkpoint) per tensor: residuals, momenta, per row the momentum scale (float),
 *   v and S (double), then t and the step t last counted (int64); native byte order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <primal/plugin.h>

#ifdef PRIMAL_HAVE_CUDA
#include <primal/policy_cuda.h>
/* the GPU entry points, in momentum_carry_cuda.cu */
extern const primal_policy_cuda_vt primal_momentum_carry_cuda;
#endif

#define RNG_PURPOSE_MOMENTUM 0x4D
#define RNG_PURPOSE_RESIDUAL 0x52

static const primal_key mc_keys[] = {
    {"lr", PRIMAL_KEY_FLOAT, "1e-3", "step size of the grid position, relative to |scale|",
     "(0,1]"},
    {"beta1", PRIMAL_KEY_FLOAT, "0.9", "momentum decay (0: no momentum)", "[0,1)"},
    {"beta2", PRIMAL_KEY_FLOAT, "0.999", "per-row second-moment decay", "[0,1)"},
    {"residual_bits", PRIMAL_KEY_INT, "8", "bits of the sub-grid residual per weight: 4 or 8",
     "[4,8]"},
    {"momentum_bits", PRIMAL_KEY_INT, "8", "bits of the momentum per weight: 4 or 8", "[4,8]"},
    {NULL, 0, NULL, NULL, NULL},
};

typedef struct mc_ctx {
    double lr, beta1, beta2;
    int rbits, mbits;
} mc_ctx;

typedef struct mc_state {
    int64_t rows, cols;
    int64_t rstride, mstride; /* bytes per row of resid and mom */
    uint8_t *resid;           /* (rows, rstride) packed signed residuals */
    uint8_t *mom;             /* (rows, mstride) packed signed momenta */
    float *mscale;            /* (rows) momentum scale */
    double *v;                /* (rows) second moment */
    double *vsum;             /* (rows) sum over this step's micro-batches of mean_c G^2 */
    int64_t t;                /* steps accumulated */
    int64_t t_step;           /* the step that last incremented t; -1 before any */
} mc_state;

static int mc_create(const primal_config *cfg, const primal_policy_info *info, void **ctx,
                     primal_err *err)
{
    (void)info;
    int rbits = (int)primal_cfg_int(cfg, "residual_bits");
    int mbits = (int)primal_cfg_int(cfg, "momentum_bits");
    if (rbits != 4 && rbits != 8)
        return primal_cfg_errf(cfg, "residual_bits", err, PRIMAL_ECONFIG,
                               "must be 4 or 8, got %d", rbits);
    if (mbits != 4 && mbits != 8)
        return primal_cfg_errf(cfg, "momentum_bits", err, PRIMAL_ECONFIG,
                               "must be 4 or 8, got %d", mbits);
    mc_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "momentum_carry: out of memory");
    c->lr = primal_cfg_float(cfg, "lr");
    c->beta1 = primal_cfg_float(cfg, "beta1");
    c->beta2 = primal_cfg_float(cfg, "beta2");
    c->rbits = rbits;
    c->mbits = mbits;
    *ctx = c;
    return PRIMAL_OK;
}

static void mc_destroy(void *ctx) { free(ctx); }

static int64_t packed_stride(int bits, int64_t cols) { return bits == 4 ? (cols + 1) / 2 : cols; }

static int sget(const uint8_t *row, int bits, int64_t c)
{
    if (bits == 8)
        return (int8_t)row[c];
    int x = (row[c >> 1] >> ((c & 1) * 4)) & 0xF;
    return x >= 8 ? x - 16 : x;
}

static void sset(uint8_t *row, int bits, int64_t c, int v)
{
    if (bits == 8) {
        row[c] = (uint8_t)(int8_t)v;
        return;
    }
    int sh = (int)(c & 1) * 4;
    row[c >> 1] = (uint8_t)((row[c >> 1] & ~(0xF << sh)) | (((unsigned)v & 0xFu) << sh));
}

static size_t mc_state_bytes(void *ctx, const primal_qtensor *t, const void *state)
{
    (void)ctx;
    (void)t;
    const mc_state *s = state;
    return (size_t)(s->rows * (s->rstride + s->mstride)) +
           (size_t)s->rows * (sizeof(float) + 2 * sizeof(double)) + 2 * sizeof(int64_t);
}

static void mc_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    mc_state *s = state;
    if (s == NULL)
        return;
    free(s->resid);
    free(s->mom);
    free(s->mscale);
    free(s->v);
    free(s->vsum);
    free(s);
}

static int mc_tensor_init(void *ctx, const primal_qtensor *t, void **state, primal_err *err)
{
    const mc_ctx *c = ctx;
    if (t->index == NULL || t->scale == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "momentum_carry: tensor %s: needs indexed storage (bits %d, grid size "
                           "%d, shape [%lld,%lld])",
                           t->name, t->bits, t->grid_size, (long long)t->rows,
                           (long long)t->cols);
    mc_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "momentum_carry: tensor %s: out of memory",
                           t->name);
    s->rows = t->rows;
    s->cols = t->cols;
    s->rstride = packed_stride(c->rbits, t->cols);
    s->mstride = packed_stride(c->mbits, t->cols);
    s->resid = calloc((size_t)(s->rows * s->rstride), 1);
    s->mom = calloc((size_t)(s->rows * s->mstride), 1);
    s->mscale = calloc((size_t)s->rows, sizeof *s->mscale);
    s->v = calloc((size_t)s->rows, sizeof *s->v);
    s->vsum = calloc((size_t)s->rows, sizeof *s->vsum);
    s->t_step = -1;
    if (s->resid == NULL || s->mom == NULL || s->mscale == NULL || s->v == NULL ||
        s->vsum == NULL) {
        mc_tensor_free(ctx, t, s);
        return primal_errf(err, PRIMAL_ENOMEM,
                           "momentum_carry: tensor %s: out of memory for [%lld,%lld] state",
                           t->name, (long long)t->rows, (long long)t->cols);
    }
    *state = s;
    return PRIMAL_OK;
}

/* One row of one micro-batch: m = decay m + (1-b1) g / rho, re-quantised; then, at the last
 * micro-batch, the residual update.  coef = (1-b1) / rho for the row, so the per-weight work has
 * no division except by the grid gap. */
static void mc_row(uint8_t *mom,         /* (cols) packed momenta, in/out */
                   float *mscale,        /* (1) the row's momentum scale, in/out */
                   uint8_t *resid,       /* (cols) packed residuals, in/out (if last) */
                   const float *G,       /* (cols) this micro-batch's dL/dW row */
                   const primal_qtensor *t, int64_t r, const mc_ctx *c, float coef, float decay,
                   float lr, int last, uint64_t seed, uint64_t mstream, uint64_t mcounter0,
                   uint64_t rstream)
{
    const int64_t cols = t->cols;
    const int q = (1 << (c->mbits - 1)) - 1, R = (1 << (c->rbits - 1)) - 1;
    const float gcoef = t->scale[r] < 0.0f ? -coef : coef; /* g = G sign(scale) */
    const float s_old = *mscale;

    float maxabs = 0.0f;
    for (int64_t col = 0; col < cols; col++) {
        float m = decay * ((float)sget(mom, c->mbits, col) * s_old) + gcoef * G[col];
        if (fabsf(m) > maxabs)
            maxabs = fabsf(m);
    }
    const float s_new = maxabs / (float)q;
    const double inv = maxabs > 0.0f ? (double)q / (double)maxabs : 0.0;
    /* u R / gap = ustep * m / gap */
    const float ustep = -lr * (float)R / fmaxf(fabsf(t->scale[r]), 1e-12f);
    const float lim = (float)(2 * R + 2);
    const float *grid = t->grid;
    const int top = t->grid_size - 1;
    for (int64_t col = 0; col < cols; col++) {
        const uint64_t flat = (uint64_t)(r * cols + col);
        float m = decay * ((float)sget(mom, c->mbits, col) * s_old) + gcoef * G[col];
        int mi = 0;
        if (fabsf(m) == maxabs && maxabs > 0.0f) {
            mi = m > 0.0f ? q : -q; /* exactly, whatever inv's rounding */
        } else if (maxabs > 0.0f) {
            double f = floor((double)m * inv + primal_rng_u01(seed, mstream, mcounter0 + flat));
            mi = f > q ? q : f < -q ? -q : f == f ? (int)f : 0;
        }
        sset(mom, c->mbits, col, mi);
        if (!last)
            continue;
        float um = ustep * ((float)mi * s_new);
        int i = (int)primal_index_get(t, r, col);
        float gap;
        if (um > 0.0f)
            gap = i < top ? grid[i + 1] - grid[i] : grid[top] - grid[top - 1];
        else
            gap = i > 0 ? grid[i] - grid[i - 1] : grid[1] - grid[0];
        float x = um / gap;
        x = x > lim ? lim : x < -lim ? -lim : x == x ? x : 0.0f;
        int d = (int)floorf(x + primal_rng_u01(seed, rstream, flat));
        int rv = sget(resid, c->rbits, col) + d;
        sset(resid, c->rbits, col, rv > R ? R : rv < -R ? -R : rv);
    }
    *mscale = s_new;
}

static int mc_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                         int64_t r0, int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    const mc_ctx *c = ctx;
    mc_state *s = state;
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR,
                           "momentum_carry: tensor %s: rows [%lld,%lld) outside [0,%lld)",
                           t->name, (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    const int k = ai->n_micro, j = ai->micro;
    if (k < 1 || j < 0 || j >= k)
        return primal_errf(err, PRIMAL_ERROR,
                           "momentum_carry: tensor %s: micro-batch %d of %d", t->name, j, k);
    if (s->t_step != ai->step) {
        s->t++;
        s->t_step = ai->step;
    }
    const int last = j == k - 1;
    const double b2 = c->beta2, bias2 = 1.0 - pow(b2, (double)s->t);
    const float decay = j == 0 ? (float)c->beta1 : 1.0f;
    const float lr = (float)(c->lr * ai->lr_mult);
    const uint64_t step = (uint64_t)ai->step, id = (uint64_t)t->id;
    const uint64_t mstream = primal_rng_stream(id, step, RNG_PURPOSE_MOMENTUM);
    const uint64_t rstream = primal_rng_stream(id, step, RNG_PURPOSE_RESIDUAL);
    const uint64_t mcounter0 = (uint64_t)j * (uint64_t)(t->rows * t->cols);
    for (int64_t i = 0; i < nrows; i++) {
        const int64_t r = r0 + i;
        const float *g = G + i * t->cols;
        double ms = 0.0;
        for (int64_t col = 0; col < t->cols; col++)
            ms += (double)g[col] * g[col];
        ms /= (double)t->cols;
        s->vsum[r] = (j == 0 ? 0.0 : s->vsum[r]) + ms;
        double vj = b2 * s->v[r] + (1.0 - b2) * ((double)k * k * s->vsum[r] / (j + 1));
        if (last)
            s->v[r] = vj;
        double rho = sqrt(vj / bias2) + 1e-12;
        mc_row(s->mom + r * s->mstride, &s->mscale[r], s->resid + r * s->rstride, g, t, r, c,
               (float)((1.0 - c->beta1) / rho), decay, lr, last, ai->seed, mstream, mcounter0,
               rstream);
    }
    return PRIMAL_OK;
}

static int mc_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                   primal_step_stats *stats, primal_err *err)
{
    (void)si;
    (void)err;
    const mc_ctx *c = ctx;
    mc_state *s = state;
    const int R = (1 << (c->rbits - 1)) - 1, h = (R + 1) / 2;
    const int top = t->grid_size - 1;
    int64_t flips = 0, saturated = 0;
    for (int64_t r = 0; r < t->rows; r++) {
        uint8_t *res = s->resid + r * s->rstride;
        for (int64_t col = 0; col < t->cols; col++) {
            int rv = sget(res, c->rbits, col);
            int i = (int)primal_index_get(t, r, col);
            if (rv >= h && i < top) {
                primal_index_set(t, r, col, (uint32_t)(i + 1));
                rv -= R;
                flips++;
            } else if (rv <= -h && i > 0) {
                primal_index_set(t, r, col, (uint32_t)(i - 1));
                rv += R;
                flips++;
            }
            rv = rv > h ? h : rv < -h ? -h : rv;
            if (rv == h || rv == -h)
                saturated++;
            sset(res, c->rbits, col, rv);
        }
    }
    stats->flips = flips;
    stats->saturated = saturated;
    stats->weights = t->rows * t->cols;
    return PRIMAL_OK;
}

/* The checkpoint layout, in order: resid, mom, mscale, v, vsum, t, t_step. */
static int mc_state_save(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                         primal_err *err)
{
    (void)ctx;
    (void)t;
    (void)err;
    const mc_state *s = state;
    uint8_t *p = buf;
    size_t nr = (size_t)(s->rows * s->rstride), nm = (size_t)(s->rows * s->mstride);
    memcpy(p, s->resid, nr);
    p += nr;
    memcpy(p, s->mom, nm);
    p += nm;
    memcpy(p, s->mscale, (size_t)s->rows * sizeof(float));
    p += (size_t)s->rows * sizeof(float);
    memcpy(p, s->v, (size_t)s->rows * sizeof(double));
    p += (size_t)s->rows * sizeof(double);
    memcpy(p, s->vsum, (size_t)s->rows * sizeof(double));
    p += (size_t)s->rows * sizeof(double);
    memcpy(p, &s->t, sizeof s->t);
    p += sizeof s->t;
    memcpy(p, &s->t_step, sizeof s->t_step);
    return PRIMAL_OK;
}

static int mc_state_load(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                         size_t n, primal_err *err)
{
    mc_state *s = state;
    size_t want = mc_state_bytes(ctx, t, state);
    if (n != want)
        return primal_errf(err, PRIMAL_EIO,
                           "momentum_carry: tensor %s: state is %zu bytes, expected %zu", t->name,
                           n, want);
    const uint8_t *p = buf;
    size_t nr = (size_t)(s->rows * s->rstride), nm = (size_t)(s->rows * s->mstride);
    memcpy(s->resid, p, nr);
    p += nr;
    memcpy(s->mom, p, nm);
    p += nm;
    memcpy(s->mscale, p, (size_t)s->rows * sizeof(float));
    p += (size_t)s->rows * sizeof(float);
    memcpy(s->v, p, (size_t)s->rows * sizeof(double));
    p += (size_t)s->rows * sizeof(double);
    memcpy(s->vsum, p, (size_t)s->rows * sizeof(double));
    p += (size_t)s->rows * sizeof(double);
    memcpy(&s->t, p, sizeof s->t);
    p += sizeof s->t;
    memcpy(&s->t_step, p, sizeof s->t_step);
    return PRIMAL_OK;
}

static const primal_policy_vt mc_vt = {
    .size = sizeof(primal_policy_vt),
    .storage = PRIMAL_STORAGE_INDEXED,
    .create = mc_create,
    .destroy = mc_destroy,
    .tensor_init = mc_tensor_init,
    .tensor_free = mc_tensor_free,
    .state_bytes = mc_state_bytes,
    .observe = NULL,
    .accumulate = mc_accumulate,
    .step = mc_step,
    .state_save = mc_state_save,
    .state_load = mc_state_load,
#ifdef PRIMAL_HAVE_CUDA
    .cuda = &primal_momentum_carry_cuda,
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
        .name = "momentum_carry",
        .description = "integer momentum and a sub-grid residual that carries into the index",
        .keys = mc_keys,
        .vtable = &mc_vt,
    };
    return &d;
}
