/* adam_carry.c: Adam without a float copy of the weights.  A weight's position is its grid index
 * plus an 8-bit residual in fractions of the local grid gap; an 8-bit blockwise first moment and a
 * factored (row x column) second moment move that position, and a move of any size carries into
 * the index.
 *
 * Why (issue 21, docs/QUALITY.md): below one epoch momentum_carry trails QAT on the same grid by
 * 1.2-4.6 points.  It differs from latent_adamw (QAT) in four ways that this policy removes, each
 * behind a key so that each can be measured alone:
 * - its second moment is one number per row, so a column whose input is large (the heavy tails of
 *   the SwiGLU output, say) dominates the row's normalisation.  Here v[r][c] is Adafactor's
 *   rank-one estimate vr[r] vc[c] / mean(vr) (`second_moment = factored`, or `row`);
 * - its momentum is quantised with one scale per row, so one outlier coarsens the row.  Here one
 *   float scale per `block` columns, as 8-bit Adam does;
 * - it moves an index at most one entry per step, which caps small weights on fine grids (fp8,
 *   uniform 255) far below the learning rate.  Here the position goes wherever the step takes it;
 * - it has no weight decay.  Here `weight_decay` is decoupled, on the position, as AdamW's.
 *
 * Per trainable tensor (rows x cols) the state is: resid (int8, in [-64, 64]: the position is
 * grid[i] + resid/127 of the gap on its side; with residual_bits 12 or 16, 4 or 8 more low bits
 * per weight, 16 or 256 times finer, adam_carry.h), mom (int8, the first moment of g = G sign(scale),
 * times one float scale per block), vr (rows) and vc (cols), two accumulators of this step's
 * squared gradients (rows and cols), and the step count: 2 bytes per weight plus 4/block, plus 8
 * per row and per column.
 *
 * Keys ([flip]):
 *   lr             FLOAT  1e-3     (0,1]     step size, in grid-value units relative to |scale|
 *   beta1          FLOAT  0.9      [0,1)     first-moment decay
 *   beta2          FLOAT  0.95     [0,1)     second-moment decay
 *   eps            FLOAT  1e-8     (0,1]     added to the root of the second moment
 *   weight_decay   FLOAT  0.1      [0,inf)   decoupled, on the position (0.1 as latent_adamw's:
 *                                            -0.4% validation loss on the H100 benchmark,
 *                                            docs/QUALITY.md)
 *   second_moment  ENUM   factored factored|row
 *   block          INT    64       32, 64, 128 or 256 columns per momentum scale
 *   residual_bits  INT    8        8, 12 or 16: the sub-grid position's resolution (1, 1.5 or 2
 *                                  bytes per weight); the stochastic rounding of a small move
 *                                  adds noise of variance ~ |move| x unit, which the finer
 *                                  units cut
 *
 * One step, with k micro-batches (the core divides each G by k, so the step's gradient is their
 * sum):
 *   accumulate (micro j): gn = g / (sqrt(vhat / (1 - b2^(t-1))) + eps), clamped to
 *     +-1/sqrt(1 - b2), with vhat = vr[r] vc[c] / mean(vr) (factored; Adafactor's rank-one
 *     estimate) or vr[r] (row) as the previous step left them; at a tensor's first step, when no
 *     second moment exists yet, gn = sign(g), Adam's own first step.  m = (j == 0 ? beta1 : 1) m
 *     + (1 - beta1) gn, re-quantised per block (s = max|m|/127, m = clamp(floor(m/s + U), -127,
 *     127) s), so the 8 bits hold a normalised quantity of range ~1 whatever the column's
 *     gradient scale.  racc[r] += sum_c g^2 and cacc[c] += sum_r g^2 (in the fixed tree AC_TB /
 *     AC_RPB of adam_carry.h).
 *   step: vr = b2 vr + (1 - b2) k racc / cols, vc = b2 vc + (1 - b2) k cacc / rows (k sum G_j^2
 *     equals the step gradient's square for identical micro-batches), 1/mean(vr) kept; the
 *     position moves by u = -lr/max(|scale|, 1e-12) m / (1 - b1^t) - lr wd position, and splits
 *     again into the nearest index and a residual rounded stochastically (adam_carry.h,
 *     ac_move).  lr is the key times the [optim] schedule's multiplier (lr_mult).  Gradient
 *     clipping is not applied (as momentum_carry): the normalisation bounds each move.
 * Random draws: U = primal_rng_u01(seed, primal_rng_stream(tensor id, step, P), counter), P =
 * AC_RNG_MOMENTUM with counter j rows cols + r cols + c, P = AC_RNG_RESIDUAL with r cols + c.
 * Step stats: flips = indices moved; saturated = positions held at an end of the grid. */
#include <stdlib.h>
#include <string.h>

#include "adam_carry.h"

#ifdef PRIMAL_HAVE_CUDA
#include <primal/policy_cuda.h>
/* the GPU entry points, in adam_carry_cuda.cu */
extern const primal_policy_cuda_vt primal_adam_carry_cuda;
void primal_adam_carry_cuda_release(ac_ctx *c);
#endif

static const primal_key ac_keys[] = {
    {"lr", PRIMAL_KEY_FLOAT, "1e-3", "step size of the grid position, relative to |scale|",
     "(0,1]"},
    {"beta1", PRIMAL_KEY_FLOAT, "0.9", "first-moment decay", "[0,1)"},
    {"beta2", PRIMAL_KEY_FLOAT, "0.95", "second-moment decay", "[0,1)"},
    {"eps", PRIMAL_KEY_FLOAT, "1e-8", "added to the root of the second moment", "(0,1]"},
    {"weight_decay", PRIMAL_KEY_FLOAT, "0.1", "decoupled weight decay on the position", "[0,inf)"},
    {"second_moment", PRIMAL_KEY_ENUM, "factored",
     "factored: row x column (Adafactor's estimate); row: one per row", "factored|row"},
    {"block", PRIMAL_KEY_INT, "64", "columns per momentum scale: 32, 64, 128 or 256", "[32,256]"},
    {"residual_bits", PRIMAL_KEY_INT, "8",
     "bits of a weight's sub-grid position: 8, 12 or 16 (127, 2032 or 32512 units per grid gap)",
     "[8,16]"},
    {NULL, 0, NULL, NULL, NULL},
};

typedef struct ac_state {
    int64_t rows, cols, nblk;
    int8_t *resid, *mom;      /* (rows, cols) */
    uint8_t *rlo;             /* the residuals' low bits (ac_lo_bytes; NULL for 8 bits) */
    float *mscale;            /* (rows, nblk) */
    float *vr, *vc;           /* (rows), (cols) */
    float *racc, *cacc;       /* (rows), (cols) this step's sums of g^2 */
    float invS;               /* 1 / mean(vr) */
    int64_t t, t_step;
    float *cpart, *mv;        /* scratch: (cols), (block) */
} ac_state;

static int ac_create(const primal_config *cfg, const primal_policy_info *info, void **ctx,
                     primal_err *err)
{
    (void)info;
    int64_t block = primal_cfg_int(cfg, "block");
    if (block != 32 && block != 64 && block != 128 && block != 256)
        return primal_cfg_errf(cfg, "block", err, PRIMAL_ECONFIG,
                               "must be 32, 64, 128 or 256, got %lld", (long long)block);
    int64_t rbits = primal_cfg_int(cfg, "residual_bits");
    if (rbits != 8 && rbits != 12 && rbits != 16)
        return primal_cfg_errf(cfg, "residual_bits", err, PRIMAL_ECONFIG,
                               "must be 8, 12 or 16, got %lld", (long long)rbits);
    ac_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "adam_carry: out of memory");
    c->lr = primal_cfg_float(cfg, "lr");
    c->beta1 = primal_cfg_float(cfg, "beta1");
    c->beta2 = primal_cfg_float(cfg, "beta2");
    c->eps = primal_cfg_float(cfg, "eps");
    c->wd = primal_cfg_float(cfg, "weight_decay");
    c->block = (int)block;
    c->rbits = (int)rbits;
    c->factored = strcmp(primal_cfg_str(cfg, "second_moment"), "factored") == 0;
    *ctx = c;
    return PRIMAL_OK;
}

static void ac_destroy(void *ctx)
{
#ifdef PRIMAL_HAVE_CUDA
    primal_adam_carry_cuda_release(ctx);
#endif
    free(ctx);
}

static size_t ac_bytes(void *ctx, const primal_qtensor *t, const void *state)
{
    (void)state;
    return ac_state_bytes(ctx, t->rows, t->cols);
}

static void ac_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    ac_state *s = state;
    if (s == NULL)
        return;
    free(s->resid);
    free(s->rlo);
    free(s->mom);
    free(s->mscale);
    free(s->vr);
    free(s->vc);
    free(s->racc);
    free(s->cacc);
    free(s->cpart);
    free(s->mv);
    free(s);
}

static int ac_tensor_init(void *ctx, const primal_qtensor *t, void **state, primal_err *err)
{
    const ac_ctx *c = ctx;
    if (t->index == NULL || t->scale == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "adam_carry: tensor %s: needs indexed storage (bits %d, grid size %d, "
                           "shape [%lld,%lld])",
                           t->name, t->bits, t->grid_size, (long long)t->rows,
                           (long long)t->cols);
    ac_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "adam_carry: tensor %s: out of memory", t->name);
    s->rows = t->rows;
    s->cols = t->cols;
    s->nblk = ac_nblk(c, t->cols);
    size_t n = (size_t)(t->rows * t->cols);
    s->resid = calloc(n, 1);
    const size_t nlo = (size_t)ac_lo_bytes(c, t->rows, t->cols);
    s->rlo = nlo > 0 ? calloc(nlo, 1) : NULL;
    s->mom = calloc(n, 1);
    s->mscale = calloc((size_t)(s->rows * s->nblk), sizeof(float));
    s->vr = calloc((size_t)s->rows, sizeof(float));
    s->vc = calloc((size_t)s->cols, sizeof(float));
    s->racc = calloc((size_t)s->rows, sizeof(float));
    s->cacc = calloc((size_t)s->cols, sizeof(float));
    s->cpart = calloc((size_t)s->cols, sizeof(float));
    s->mv = calloc((size_t)c->block, sizeof(float));
    s->t_step = -1;
    if (s->resid == NULL || (nlo > 0 && s->rlo == NULL) || s->mom == NULL || s->mscale == NULL ||
        s->vr == NULL || s->vc == NULL || s->racc == NULL || s->cacc == NULL || s->cpart == NULL || s->mv == NULL) {
        ac_tensor_free(ctx, t, s);
        return primal_errf(err, PRIMAL_ENOMEM,
                           "adam_carry: tensor %s: out of memory for [%lld,%lld] state", t->name,
                           (long long)t->rows, (long long)t->cols);
    }
    *state = s;
    return PRIMAL_OK;
}

/* The sum of 32 values in the tree of a warp's xor shuffle (lane 0's result). */
static float ac_warp_sum(float *v)
{
    for (int o = 16; o > 0; o >>= 1)
        for (int l = 0; l < o; l++)
            v[l] = AC_ADD(v[l], v[l + o]);
    return v[0];
}

static int ac_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                         int64_t r0, int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    const ac_ctx *c = ctx;
    ac_state *s = state;
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR,
                           "adam_carry: tensor %s: rows [%lld,%lld) outside [0,%lld)", t->name,
                           (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    const int k = ai->n_micro, j = ai->micro;
    if (k < 1 || j < 0 || j >= k)
        return primal_errf(err, PRIMAL_ERROR, "adam_carry: tensor %s: micro-batch %d of %d",
                           t->name, j, k);
    if (s->t_step != ai->step) {
        s->t++;
        s->t_step = ai->step;
    }
    const int64_t cols = t->cols, nblk = s->nblk, B = c->block;
    const float decay = j == 0 ? (float)c->beta1 : 1.0f, omb1 = (float)(1.0 - c->beta1);
    /* the second moment as the last step left it (t - 1 updates) */
    const int first = s->t <= 1;
    const float inv_bc2 = first ? 0.0f : (float)(1.0 / (1.0 - pow(c->beta2, (double)(s->t - 1))));
    const float eps = (float)c->eps, clip = (float)(1.0 / sqrt(1.0 - c->beta2));
    const uint64_t mstream =
        primal_rng_stream((uint64_t)t->id, (uint64_t)ai->step, AC_RNG_MOMENTUM);
    const uint64_t mcounter0 = (uint64_t)j * (uint64_t)(t->rows * t->cols);
    for (int64_t i0 = 0; i0 < nrows; i0 += AC_RPB) {
        const int64_t i1 = nrows - i0 < AC_RPB ? nrows : i0 + AC_RPB;
        memset(s->cpart, 0, (size_t)cols * sizeof(float));
        for (int64_t i = i0; i < i1; i++) {
            const int64_t r = r0 + i;
            const float *gr = G + i * cols;
            const int neg = t->scale[r] < 0.0f;
            const float vrr = s->vr[r];
            int8_t *mrow = s->mom + r * cols;
            for (int64_t b = 0; b < nblk; b++) {
                const int64_t c0 = b * B, c1 = cols - c0 < B ? cols : c0 + B;
                const float s_old = s->mscale[r * nblk + b];
                float mx = 0.0f;
                for (int64_t col = c0; col < c1; col++) {
                    const float g = neg ? -gr[col] : gr[col];
                    const float vh =
                        c->factored ? AC_MUL(AC_MUL(vrr, s->vc[col]), s->invS) : vrr;
                    const float gn = ac_norm(g, vh, inv_bc2, eps, clip, first);
                    const float m = ac_mom(decay, mrow[col], s_old, omb1, gn);
                    s->mv[col - c0] = m;
                    if (fabsf(m) > mx)
                        mx = fabsf(m);
                }
                const float inv = mx > 0.0f ? AC_DIV((float)AC_Q, mx) : 0.0f;
                for (int64_t col = c0; col < c1; col++) {
                    const uint64_t ctr = mcounter0 + (uint64_t)(r * cols + col);
                    mrow[col] = (int8_t)ac_quant(s->mv[col - c0], mx, inv,
                                                 primal_rng_u01(ai->seed, mstream, ctr));
                }
                s->mscale[r * nblk + b] = AC_DIV(mx, (float)AC_Q);
            }
            /* sum_c g^2 in the device's tree: AC_TB columns of 8 warps, then in order */
            float x = s->racc[r];
            for (int64_t c0 = 0; c0 < cols; c0 += AC_TB) {
                float ws[AC_TB / 32], lane[32];
                for (int w = 0; w < AC_TB / 32; w++) {
                    for (int l = 0; l < 32; l++) {
                        const int64_t col = c0 + w * 32 + l;
                        lane[l] = col < cols ? AC_MUL(gr[col], gr[col]) : 0.0f;
                    }
                    ws[w] = ac_warp_sum(lane);
                }
                float sum = ws[0];
                for (int w = 1; w < AC_TB / 32; w++)
                    sum = AC_ADD(sum, ws[w]);
                x = AC_ADD(x, sum);
            }
            s->racc[r] = x;
            for (int64_t col = 0; col < cols; col++)
                s->cpart[col] = AC_ADD(s->cpart[col], AC_MUL(gr[col], gr[col]));
        }
        for (int64_t col = 0; col < cols; col++)
            s->cacc[col] = AC_ADD(s->cacc[col], s->cpart[col]);
    }
    return PRIMAL_OK;
}

static int ac_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                   primal_step_stats *stats, primal_err *err)
{
    (void)err;
    const ac_ctx *c = ctx;
    ac_state *s = state;
    const int64_t rows = t->rows, cols = t->cols, nblk = s->nblk;
    const float b2 = (float)c->beta2, omb2 = (float)(1.0 - c->beta2), kf = (float)si->n_micro;
    double sum = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        s->vr[r] = ac_ema(s->vr[r], b2, omb2, kf, s->racc[r], (float)cols);
        s->racc[r] = 0.0f;
        sum += (double)s->vr[r];
    }
    for (int64_t col = 0; col < cols; col++) {
        s->vc[col] = ac_ema(s->vc[col], b2, omb2, kf, s->cacc[col], (float)rows);
        s->cacc[col] = 0.0f;
    }
    s->invS = sum > 0.0 ? (float)((double)rows / sum) : 0.0f;
    const int64_t tt = s->t > 0 ? s->t : 1;
    const float inv_bc1 = (float)(1.0 / (1.0 - pow(c->beta1, (double)tt)));
    const float lr = (float)(c->lr * si->lr_mult), lrwd = (float)(c->lr * si->lr_mult * c->wd);
    const uint64_t rstream =
        primal_rng_stream((uint64_t)t->id, (uint64_t)si->step, AC_RNG_RESIDUAL);
    const int shift = ac_lo_shift(c);
    const int64_t pairs = (cols + 1) / 2;
    int64_t flips = 0, saturated = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float lrs = AC_DIV(lr, fmaxf(fabsf(t->scale[r]), 1e-12f));
        for (int64_t col = 0; col < cols; col++) {
            const int64_t f = r * cols + col;
            const float ug =
                ac_direction(s->mom[f], s->mscale[r * nblk + col / c->block], inv_bc1, lrs);
            const int i = (int)primal_index_get(t, r, col);
            int rv = ac_resid_get(s->resid, s->rlo, shift, r, cols, col), sat;
            const int ni = ac_move(t->grid, t->grid_size, i, &rv, ug, lrwd,
                                   primal_rng_u01(si->seed, rstream, (uint64_t)f), shift, &sat);
            s->resid[f] = (int8_t)ac_resid_hi(rv, shift);
            if (shift == 8) {
                s->rlo[f] = (uint8_t)ac_resid_lo(rv, shift);
            } else if (shift == 4) {
                uint8_t *b = &s->rlo[r * pairs + col / 2];
                const int lo = ac_resid_lo(rv, shift);
                *b = (uint8_t)((col & 1) ? (*b & 15) | (lo << 4) : (*b & 0xf0) | lo);
            }
            if (ni != i) {
                primal_index_set(t, r, col, (uint32_t)ni);
                flips++;
            }
            saturated += sat;
        }
    }
    stats->flips = flips;
    stats->saturated = saturated;
    stats->weights = rows * cols;
    return PRIMAL_OK;
}

static int ac_state_save(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                         primal_err *err)
{
    (void)t;
    (void)err;
    const ac_state *s = state;
    uint8_t *p = buf;
    const size_t n = (size_t)(s->rows * s->cols), fr = (size_t)s->rows * sizeof(float),
                 fc = (size_t)s->cols * sizeof(float);
    const size_t nlo = (size_t)ac_lo_bytes(ctx, s->rows, s->cols);
    memcpy(p, s->resid, n), p += n;
    if (nlo > 0)
        memcpy(p, s->rlo, nlo), p += nlo;
    memcpy(p, s->mom, n), p += n;
    memcpy(p, s->mscale, (size_t)s->nblk * fr), p += (size_t)s->nblk * fr;
    memcpy(p, s->vr, fr), p += fr;
    memcpy(p, s->vc, fc), p += fc;
    memcpy(p, s->racc, fr), p += fr;
    memcpy(p, s->cacc, fc), p += fc;
    memcpy(p, &s->invS, sizeof s->invS), p += sizeof s->invS;
    memcpy(p, &s->t, sizeof s->t), p += sizeof s->t;
    memcpy(p, &s->t_step, sizeof s->t_step);
    return PRIMAL_OK;
}

static int ac_state_load(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                         size_t nbytes, primal_err *err)
{
    ac_state *s = state;
    const size_t want = ac_state_bytes(ctx, t->rows, t->cols);
    if (nbytes != want)
        return primal_errf(err, PRIMAL_EIO, "adam_carry: tensor %s: state is %zu bytes, expected %zu",
                           t->name, nbytes, want);
    const char *what = NULL;
    if (ac_state_check(ctx, t->rows, t->cols, buf, &what) != 0)
        return primal_errf(err, PRIMAL_EIO, "adam_carry: tensor %s: the state holds %s", t->name,
                           what);
    const uint8_t *p = buf;
    const size_t n = (size_t)(s->rows * s->cols), fr = (size_t)s->rows * sizeof(float),
                 fc = (size_t)s->cols * sizeof(float);
    const size_t nlo = (size_t)ac_lo_bytes(ctx, s->rows, s->cols);
    memcpy(s->resid, p, n), p += n;
    if (nlo > 0)
        memcpy(s->rlo, p, nlo), p += nlo;
    memcpy(s->mom, p, n), p += n;
    memcpy(s->mscale, p, (size_t)s->nblk * fr), p += (size_t)s->nblk * fr;
    memcpy(s->vr, p, fr), p += fr;
    memcpy(s->vc, p, fc), p += fc;
    memcpy(s->racc, p, fr), p += fr;
    memcpy(s->cacc, p, fc), p += fc;
    memcpy(&s->invS, p, sizeof s->invS), p += sizeof s->invS;
    memcpy(&s->t, p, sizeof s->t), p += sizeof s->t;
    memcpy(&s->t_step, p, sizeof s->t_step);
    return PRIMAL_OK;
}

static const primal_policy_vt ac_vt = {
    .size = sizeof(primal_policy_vt),
    .storage = PRIMAL_STORAGE_INDEXED,
    .create = ac_create,
    .destroy = ac_destroy,
    .tensor_init = ac_tensor_init,
    .tensor_free = ac_tensor_free,
    .state_bytes = ac_bytes,
    .observe = NULL,
    .accumulate = ac_accumulate,
    .step = ac_step,
    .state_save = ac_state_save,
    .state_load = ac_state_load,
#ifdef PRIMAL_HAVE_CUDA
    .cuda = &primal_adam_carry_cuda,
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
        .name = "adam_carry",
        .description = "Adam on a sub-grid position: 8-bit blockwise momentum, factored second "
                       "moment, any-size carries",
        .keys = ac_keys,
        .vtable = &ac_vt,
    };
    return &d;
}
