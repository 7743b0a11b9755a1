/* threshold_consensus.c: the prototype's "voting consensus" flip policy.
 *
 * SPEC.md, "Flip policies", threshold_consensus.  Each micro-batch adds
 * pressure = trunc(100 * g / max|G|) to an int16 vote per weight (g = G * sign(scale[r]),
 * max over the tensor for this micro-batch), saturating at +-32760.  Each step, weights with
 * |votes| >= threshold move their index by -sign(votes) * stride (clamped to the grid) and their
 * votes reset to 0; all other votes decay to trunc(votes * decay).
 *
 * Keys ([flip]):
 *   threshold          INT    20     [1,32760]   |votes| that moves an index
 *   decay              FLOAT  0.95   (0,1]       factor on the votes that did not fire
 *   stride             STRING 1                  a positive integer, or "dynamic"
 *   block              INT    1      [1,4096]    consecutive weights of a row that decide together
 *   max_flip_fraction  FLOAT  1      (0,1]       cap on the fraction of candidates firing per step
 *   cooldown           INT    0      [0,100000]  steps a moved weight must wait
 *
 * Choices where SPEC is silent:
 * - sign(scale) is +1 for a zero scale.  max|G| = 0 gives zero pressure.
 * - pressure is computed in float32 as trunc((100 * g) / max|G|), the decay as
 *   trunc(float(votes) * float(decay)), so that a GPU version computes the same integers.
 * - max|G| comes from observe(), which the core calls on every row chunk of a micro-batch
 *   before accumulate(); a chunk with r0 == 0 or a new (step, micro) starts a new maximum.  If
 *   observe() was not called for this micro-batch, accumulate() uses the chunk's own maximum.
 * - "dynamic" stride: max(1, trunc(8 * (1 - mean|i - c| / c))) with c = grid_size / 2 (32768 for
 *   the 65,536 grid the prototype used it on), over the tensor's indices at the start of the step.
 * - A weight "fires" when selected; its votes reset to 0.  It counts as a flip, and starts its
 *   cooldown, only if its index actually changed (a weight pushing past a grid end fires but does
 *   not move).
 * - Block mode: blocks are `block` consecutive columns of a row (the last one of a row may be
 *   shorter); a block is a candidate when its mean |votes| >= threshold (compared exactly, as
 *   sum|votes| >= threshold * size).  In a firing block each weight not in cooldown moves by
 *   -sign(its own votes) and resets; weights in cooldown keep their votes and decay.
 * - cooldown: a weight that moved at step s cannot fire at steps s+1 .. s+cooldown; its votes
 *   meanwhile keep accumulating and decaying.  Counters are uint8 (cooldown <= 255) or uint16,
 *   and exist only when cooldown > 0.
 * - max_flip_fraction caps the candidates (weights, or blocks in block mode) that fire to
 *   max(1, floor(fraction * units)); the kept ones have the highest |votes| (block mode: the
 *   highest floor(mean |votes|)), ties to the lower flat index.  Selection is O(n) with a
 *   histogram over |votes| in [0, 32760].  Capped-out candidates decay like the rest.
 * - step stats: flips = indices moved, saturated = votes at +-32760 after the step. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <primal/plugin.h>

#ifdef PRIMAL_HAVE_CUDA
#include <primal/policy_cuda.h>
/* the GPU entry points, in threshold_consensus_cuda.cu */
extern const primal_policy_cuda_vt primal_threshold_consensus_cuda;
#endif

#define VOTE_MAX 32760
#define STRIDE_DYNAMIC 0

static const primal_key tc_keys[] = {
    {"threshold", PRIMAL_KEY_INT, "20", "|votes| at which an index moves", "[1,32760]"},
    {"decay", PRIMAL_KEY_FLOAT, "0.95", "factor applied each step to votes that did not fire",
     "(0,1]"},
    {"stride", PRIMAL_KEY_STRING, "1",
     "grid steps per move: a positive integer, or \"dynamic\" (for 65K grids)", NULL},
    {"block", PRIMAL_KEY_INT, "1", "consecutive weights of a row that flip together",
     "[1,4096]"},
    {"max_flip_fraction", PRIMAL_KEY_FLOAT, "1",
     "largest fraction of weights (or blocks) that may move per step", "(0,1]"},
    {"cooldown", PRIMAL_KEY_INT, "0", "steps a moved weight must wait before moving again",
     "[0,100000]"},
    {NULL, 0, NULL, NULL, NULL},
};

typedef struct tc_ctx {
    int threshold;
    float decay;
    int stride; /* STRIDE_DYNAMIC or >= 1 */
    int block;
    double max_flip_fraction;
    int cooldown;
    int reduce_votes; /* [run] reduce = votes: accumulate into incr, summed across ranks */
} tc_ctx;

typedef struct tc_state {
    int64_t n;       /* rows * cols */
    int16_t *votes;  /* (rows, cols) */
    void *cool;      /* (rows, cols) uint8 or uint16 steps left; NULL when cooldown == 0 */
    int cool_bytes;  /* 1 or 2 */
    int32_t *incr;   /* (rows, cols) this step's vote increments; only with reduce = votes (zero
                      * between steps, so not in the checkpoint) */
    /* max|G| of the micro-batch being accumulated; not part of the checkpoint, which is taken
     * between steps */
    float gmax;
    int64_t gmax_step;
    int gmax_micro;
    int gmax_valid;
} tc_state;

static int tc_create(const primal_config *cfg, const primal_policy_info *info, void **ctx,
                     primal_err *err)
{
    tc_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "threshold_consensus: out of memory");
    c->reduce_votes = info->reduce_votes;
    c->threshold = (int)primal_cfg_int(cfg, "threshold");
    c->decay = (float)primal_cfg_float(cfg, "decay");
    c->block = (int)primal_cfg_int(cfg, "block");
    c->max_flip_fraction = primal_cfg_float(cfg, "max_flip_fraction");
    c->cooldown = (int)primal_cfg_int(cfg, "cooldown");
    const char *s = primal_cfg_str(cfg, "stride");
    if (s != NULL && strcmp(s, "dynamic") == 0) {
        c->stride = STRIDE_DYNAMIC;
    } else {
        char *end = NULL;
        long v = s != NULL ? strtol(s, &end, 10) : 0;
        if (s == NULL || end == s || *end != '\0' || v < 1 || v > 65535) {
            free(c);
            return primal_cfg_errf(cfg, "stride", err, PRIMAL_ECONFIG,
                                   "must be an integer in [1,65535] or \"dynamic\", got \"%s\"",
                                   s != NULL ? s : "");
        }
        c->stride = (int)v;
    }
    *ctx = c;
    return PRIMAL_OK;
}

static void tc_destroy(void *ctx) { free(ctx); }

static int tc_tensor_init(void *ctx, const primal_qtensor *t, void **state, primal_err *err)
{
    const tc_ctx *c = ctx;
    if (t->index == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "threshold_consensus: tensor %s: needs indexed storage (bits %d, "
                           "grid size %d, shape [%lld,%lld])",
                           t->name, t->bits, t->grid_size, (long long)t->rows,
                           (long long)t->cols);
    tc_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "threshold_consensus: tensor %s: out of memory",
                           t->name);
    s->n = t->rows * t->cols;
    s->votes = calloc((size_t)s->n, sizeof *s->votes);
    if (c->cooldown > 0) {
        s->cool_bytes = c->cooldown <= UINT8_MAX ? 1 : 2;
        s->cool = calloc((size_t)s->n, (size_t)s->cool_bytes);
    }
    if (c->reduce_votes)
        s->incr = calloc((size_t)s->n, sizeof *s->incr);
    if (s->votes == NULL || (c->cooldown > 0 && s->cool == NULL) ||
        (c->reduce_votes && s->incr == NULL)) {
        free(s->votes);
        free(s->cool);
        free(s->incr);
        free(s);
        return primal_errf(err, PRIMAL_ENOMEM,
                           "threshold_consensus: tensor %s: out of memory for %lld votes",
                           t->name, (long long)t->rows * t->cols);
    }
    *state = s;
    return PRIMAL_OK;
}

static void tc_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    tc_state *s = state;
    if (s == NULL)
        return;
    free(s->votes);
    free(s->cool);
    free(s->incr);
    free(s);
}

static size_t tc_state_bytes(void *ctx, const primal_qtensor *t, const void *state)
{
    (void)ctx;
    (void)t;
    const tc_state *s = state;
    return (size_t)s->n * (sizeof(int16_t) + (size_t)s->cool_bytes);
}

static float sign_of(float scale) { return scale < 0.0f ? -1.0f : 1.0f; }

static float chunk_absmax(const float *G, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(G[i]);
        if (a > m)
            m = a;
    }
    return m;
}

static int tc_observe(void *ctx, void *state, const primal_qtensor *t, const float *G, int64_t r0,
                      int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    (void)ctx;
    (void)err;
    tc_state *s = state;
    if (r0 == 0 || !s->gmax_valid || s->gmax_step != ai->step || s->gmax_micro != ai->micro) {
        s->gmax = 0.0f;
        s->gmax_step = ai->step;
        s->gmax_micro = ai->micro;
        s->gmax_valid = 1;
    }
    float m = chunk_absmax(G, nrows * t->cols);
    if (m > s->gmax)
        s->gmax = m;
    return PRIMAL_OK;
}

/* votes += trunc(100 * g / gmax), saturating; or, with reduce = votes, incr += the same
 * pressures (int32: k micro-batches of at most 100 each cannot overflow), saturation then
 * applies once, when step() adds the increments summed over the ranks. */
static void tc_vote_rows(int16_t *votes,        /* (nrows, cols) in/out */
                         int32_t *incr,         /* (nrows, cols) in/out, or NULL */
                         const float *G,        /* (nrows, cols) dL/dW */
                         const float *scale,    /* (nrows) */
                         float gmax, int64_t nrows, int64_t cols)
{
    if (!(gmax > 0.0f))
        return;
    for (int64_t r = 0; r < nrows; r++) {
        float sg = sign_of(scale[r]);
        for (int64_t c = 0; c < cols; c++) {
            float g = G[r * cols + c] * sg;
            float x = (100.0f * g) / gmax;
            if (x != x) /* an infinite G; the core reports non-finite losses */
                continue;
            int p = (int)truncf(x);
            if (incr != NULL) {
                incr[r * cols + c] += p;
                continue;
            }
            int v = votes[r * cols + c] + p;
            v = v > VOTE_MAX ? VOTE_MAX : v < -VOTE_MAX ? -VOTE_MAX : v;
            votes[r * cols + c] = (int16_t)v;
        }
    }
}

static int tc_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                         int64_t r0, int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    (void)ctx;
    tc_state *s = state;
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR,
                           "threshold_consensus: tensor %s: rows [%lld,%lld) outside [0,%lld)",
                           t->name, (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    float gmax;
    if (s->gmax_valid && s->gmax_step == ai->step && s->gmax_micro == ai->micro)
        gmax = s->gmax;
    else
        gmax = chunk_absmax(G, nrows * t->cols);
    tc_vote_rows(s->votes + r0 * t->cols, s->incr ? s->incr + r0 * t->cols : NULL, G,
                 t->scale + r0, gmax, nrows, t->cols);
    return PRIMAL_OK;
}

static int cool_get(const tc_state *s, int64_t i)
{
    if (s->cool == NULL)
        return 0;
    return s->cool_bytes == 1 ? ((const uint8_t *)s->cool)[i] : ((const uint16_t *)s->cool)[i];
}

static void cool_set(tc_state *s, int64_t i, int v)
{
    if (s->cool_bytes == 1)
        ((uint8_t *)s->cool)[i] = (uint8_t)v;
    else
        ((uint16_t *)s->cool)[i] = (uint16_t)v;
}

static int dynamic_stride(const primal_qtensor *t)
{
    double centre = (double)(t->grid_size / 2), sum = 0.0;
    for (int64_t r = 0; r < t->rows; r++)
        for (int64_t c = 0; c < t->cols; c++)
            sum += fabs((double)primal_index_get(t, r, c) - centre);
    double mean = sum / (double)(t->rows * t->cols);
    int st = (int)trunc(8.0 * (1.0 - mean / centre));
    return st < 1 ? 1 : st;
}

/* The candidate key of the unit of len weights starting at flat index i (one weight, or one
 * block of a row), or -1 if it is no candidate. */
static int unit_key(const tc_ctx *c, const tc_state *s, int64_t i, int64_t len)
{
    if (c->block == 1) {
        int a = abs(s->votes[i]);
        return a >= c->threshold && cool_get(s, i) == 0 ? a : -1;
    }
    int64_t sum = 0;
    for (int64_t j = 0; j < len; j++)
        sum += abs(s->votes[i + j]);
    return sum >= (int64_t)c->threshold * len ? (int)(sum / len) : -1;
}

static int tc_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                   primal_step_stats *stats, primal_err *err)
{
    (void)si;
    const tc_ctx *c = ctx;
    tc_state *s = state;
    const int64_t rows = t->rows, cols = t->cols, B = c->block;
    const int64_t blocks_per_row = (cols + B - 1) / B, units = rows * blocks_per_row;
    const int stride = c->stride == STRIDE_DYNAMIC ? dynamic_stride(t) : c->stride;
    const int top = t->grid_size - 1;
    if (s->incr != NULL) { /* the step's increments, summed over the ranks by the core */
        for (int64_t i = 0; i < rows * cols; i++) {
            int64_t v = (int64_t)s->votes[i] + s->incr[i];
            s->votes[i] = (int16_t)(v > VOTE_MAX ? VOTE_MAX : v < -VOTE_MAX ? -VOTE_MAX : v);
            s->incr[i] = 0;
        }
    }

    /* The cap: find the cutoff key K and how many units with key == K may still fire. */
    int64_t cap = (int64_t)floor(c->max_flip_fraction * (double)units);
    if (cap < 1)
        cap = 1;
    int cut = 0;             /* units with key > cut fire; key == cut fire while quota lasts */
    int64_t quota = INT64_MAX;
    if (cap < units) {
        int64_t *hist = calloc(VOTE_MAX + 1, sizeof *hist);
        if (hist == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "threshold_consensus: tensor %s: out of memory",
                               t->name);
        int64_t ncand = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c0 = 0; c0 < cols; c0 += B) {
                int64_t len = cols - c0 < B ? cols - c0 : B;
                int k = unit_key(c, s, r * cols + c0, len);
                if (k >= 0) {
                    hist[k]++;
                    ncand++;
                }
            }
        if (ncand > cap) {
            int64_t above = 0;
            int k = VOTE_MAX;
            while (above + hist[k] < cap) {
                above += hist[k];
                k--;
            }
            cut = k;
            quota = cap - above;
        }
        free(hist);
    }

    int64_t flips = 0, saturated = 0;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c0 = 0; c0 < cols; c0 += B) {
            int64_t len = cols - c0 < B ? cols - c0 : B, i0 = r * cols + c0;
            int k = unit_key(c, s, i0, len);
            int fire = k > cut || (k == cut && k >= 0 && quota > 0);
            if (fire && k == cut && quota != INT64_MAX)
                quota--;
            for (int64_t j = 0; j < len; j++) {
                int64_t i = i0 + j;
                int cd = cool_get(s, i);
                int v = s->votes[i];
                if (fire && cd == 0) {
                    int64_t col = c0 + j;
                    int idx = (int)primal_index_get(t, r, col);
                    int to = v > 0 ? idx - stride : v < 0 ? idx + stride : idx;
                    to = to < 0 ? 0 : to > top ? top : to;
                    s->votes[i] = 0;
                    if (to != idx) {
                        primal_index_set(t, r, col, (uint32_t)to);
                        flips++;
                        if (s->cool != NULL)
                            cool_set(s, i, c->cooldown);
                    }
                    continue;
                }
                s->votes[i] = (int16_t)truncf((float)v * c->decay);
                if (cd > 0)
                    cool_set(s, i, cd - 1);
                if (abs(s->votes[i]) == VOTE_MAX)
                    saturated++;
            }
        }
    }
    stats->flips = flips;
    stats->saturated = saturated;
    stats->weights = rows * cols;
    return PRIMAL_OK;
}

static int tc_state_save(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                         primal_err *err)
{
    (void)ctx;
    (void)t;
    (void)err;
    const tc_state *s = state;
    size_t nv = (size_t)s->n * sizeof(int16_t);
    memcpy(buf, s->votes, nv);
    if (s->cool != NULL)
        memcpy((uint8_t *)buf + nv, s->cool, (size_t)s->n * (size_t)s->cool_bytes);
    return PRIMAL_OK;
}

static int tc_state_load(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                         size_t n, primal_err *err)
{
    tc_state *s = state;
    size_t want = tc_state_bytes(ctx, t, state);
    if (n != want)
        return primal_errf(err, PRIMAL_EIO,
                           "threshold_consensus: tensor %s: state is %zu bytes, expected %zu",
                           t->name, n, want);
    size_t nv = (size_t)s->n * sizeof(int16_t);
    memcpy(s->votes, buf, nv);
    if (s->cool != NULL)
        memcpy(s->cool, (const uint8_t *)buf + nv, (size_t)s->n * (size_t)s->cool_bytes);
    s->gmax_valid = 0;
    return PRIMAL_OK;
}

static int tc_vote_increments(void *ctx, void *state, const primal_qtensor *t, int32_t **buf,
                               size_t *n, primal_err *err)
{
    (void)ctx;
    tc_state *s = state;
    if (s->incr == NULL)
        return primal_errf(err, PRIMAL_ERROR,
                           "threshold_consensus: tensor %s: created without reduce = votes",
                           t->name);
    *buf = s->incr;
    *n = (size_t)s->n;
    return PRIMAL_OK;
}

static const primal_policy_vt tc_vt = {
    .size = sizeof(primal_policy_vt),
    .storage = PRIMAL_STORAGE_INDEXED,
    .create = tc_create,
    .destroy = tc_destroy,
    .tensor_init = tc_tensor_init,
    .tensor_free = tc_tensor_free,
    .state_bytes = tc_state_bytes,
    .observe = tc_observe,
    .accumulate = tc_accumulate,
    .step = tc_step,
    .state_save = tc_state_save,
    .state_load = tc_state_load,
#ifdef PRIMAL_HAVE_CUDA
    .cuda = &primal_threshold_consensus_cuda,
#else
    .cuda = NULL,
#endif
    .vote_increments = tc_vote_increments,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_POLICY,
        .name = "threshold_consensus",
        .description = "integer votes from normalised gradients; flip at a threshold, decay "
                       "the rest",
        .keys = tc_keys,
        .vtable = &tc_vt,
    };
    return &d;
}
