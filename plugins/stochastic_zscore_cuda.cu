/* stochastic_zscore_cuda.cu: the GPU entry points of stochastic_zscore (primal/policy_cuda.h).
 *
 * SPEC.md, "Flip policies", stochastic_zscore; the semantics, keys and defaults are those of
 * plugins/stochastic_zscore.c (z 0.5, cooldown 100, base_p 0.002).  Given the same votes the
 * step is bit-identical to the CPU's: the same draws primal_rng_u01(seed,
 * primal_rng_stream(tensor id, step, 0x5A), r * cols + c), and p from mean(scale) summed in
 * the CPU's order (one thread walks the rows: exact, and cheap next to the per-weight work).
 *
 * Accumulate, floating point:
 * - the row mean mu is summed in double in column order, as the CPU does (row_ordered_sum, one
 *   lane per row), so mu and every centred x = G - mu are bit-identical;
 * - the tensor-wide sums of a = |x| and a^2 are not: the CPU keeps one running double sum in
 *   row-major order, which a parallel reduction cannot replay.  Here each row's sums are taken
 *   in column order and the rows are added by a fixed tree, so the GPU result is deterministic
 *   (it does not depend on timing or launch order) and differs from the CPU's by the rounding of
 *   the sum (relative error at most about n * 2^-53, typically sqrt(n) * 2^-53).  The threshold
 *   is then rounded to float32 (2^-24 relative), so it is almost always the same float, and a
 *   vote differs only if some |x| falls between the two thresholds when they do differ.
 *   tests/policies_cuda_test.c checks that votes, indices and state stay byte-identical to the
 *   CPU's over many micro-batches of realistic gradients.
 * State: the host struct starts with the CPU's sz_state (its state_bytes() reads n and cool);
 * state_download writes the CPU's state_save bytes (votes int8, then uint16 cooldowns).
 * Scratch per tensor: 28 bytes per row (mu and the row sums).
 * Only step() synchronises its stream (to return the counts); state_download waits for its own
 * copies to land in the caller's buffer; tensor_init/tensor_free use cudaMalloc/cudaFree, which
 * may synchronise the device (tensor_free gets no stream for a stream-ordered free). */
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <primal/policy_cuda.h>

#include "index_cuda.cuh"
#include "row_ordered_sum.cuh"
#include "step_counts.cuh"

#define VOTE_MAX 127
#define VOTE_STRONG 32
#define P_STRONG 0.1f
#define P_MIN 1e-4
#define P_MAX 0.05
#define RNG_PURPOSE_FLIP 0x5A
#define THREADS 256
#define ROW_THREADS 128 /* one block per row in sz_rows */
#define ROW_BLOCKS 65535
#define MAX_BLOCKS 4096

/* Must match stochastic_zscore.c: create() fills it and both halves read it. */
typedef struct sz_ctx {
    double z;
    int cooldown;
    double base_p;
} sz_ctx;

/* The CPU's sz_state, field for field (its state_bytes() reads n and cool). */
typedef struct sz_state {
    int64_t n;
    int8_t *votes;  /* device (rows, cols) */
    uint16_t *cool; /* device (rows, cols); NULL when cooldown == 0 */
    double sum, sumsq; /* unused here: the sums live on the device */
    int64_t count;     /* a's counted into the sums since they were reset */
    int64_t stat_step;
    int stat_micro;
    int stat_valid;
} sz_state;

typedef struct sz_small {
    unsigned long long flips, saturated; /* step counts */
    double sum, sumsq;                   /* of a = |centred G| over the micro-batch */
    float p;                             /* the step's weak-vote probability */
} sz_small;

typedef struct szg_state {
    sz_state base; /* first */
    sz_small *small;
    float *mu;        /* (rows) row means of the chunk in hand */
    double *rsum;     /* (rows) their sums, in column order */
    double *rowsum;   /* (rows, 2) per-row sum a, sum a^2 */
    /* rows [obs_lo, obs_hi) have mu from this micro-batch's observe(), which saw the same G
     * that accumulate() gets, so accumulate() need not sum those rows again */
    int64_t obs_lo, obs_hi;
} szg_state;

#define CU_TRY(call)                                                                           \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess)                                                                 \
            return primal_errf(err, PRIMAL_EDEVICE, "%s:%d: stochastic_zscore: tensor %s: %s: %s", \
                               __FILE__, __LINE__, t->name, #call, cudaGetErrorString(e_));    \
    } while (0)

static unsigned row_blocks(int64_t nrows)
{
    return (unsigned)(nrows < ROW_BLOCKS ? nrows : ROW_BLOCKS);
}

static unsigned grid_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

/* ------------------------------------------------------------------------------------------ */
/* Device helpers                                                                             */

/* Whether weight i, not in cooldown and holding votes v, flips (stochastic_zscore.c, fires). */
__device__ __forceinline__ int fires(int v, float p, uint64_t seed, uint64_t stream, int64_t i)
{
    int a = abs(v);
    if (a == 0)
        return 0;
    if (a >= VOTE_MAX)
        return 1;
    return primal_rng_u01(seed, stream, (uint64_t)i) < (a >= VOTE_STRONG ? P_STRONG : p);
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels                                                                                    */

/* Per row: mu = float(rsum / cols), rsum the CPU-order sum from row_ordered_sum; with rowsum,
 * also the row's sums of a = |G - mu| and a^2, by a fixed tree over the block (deterministic,
 * not the CPU's order: see the top).  One block per row. */
__global__ void sz_rows(float *mu,           /* (nrows) out */
                        double *rowsum,      /* (nrows, 2) out, or NULL */
                        const double *rsum,  /* (nrows) sum_c G in column order */
                        const float *G,      /* (nrows, cols) */
                        int64_t nrows, int64_t cols)
{
    __shared__ double ps[ROW_THREADS], pq[ROW_THREADS];
    for (int64_t r = blockIdx.x; r < nrows; r += gridDim.x) {
        const float *g = G + r * cols;
        const float mr = (float)__ddiv_rn(rsum[r], (double)cols);
        if (threadIdx.x == 0)
            mu[r] = mr;
        if (rowsum == NULL)
            continue;
        double a_s = 0.0, a_q = 0.0;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            double a = fabsf(__fsub_rn(g[c], mr));
            a_s = __dadd_rn(a_s, a);
            a_q = __dadd_rn(a_q, __dmul_rn(a, a));
        }
        ps[threadIdx.x] = a_s;
        pq[threadIdx.x] = a_q;
        __syncthreads();
        for (int h = ROW_THREADS / 2; h > 0; h >>= 1) {
            if ((int)threadIdx.x < h) {
                ps[threadIdx.x] = __dadd_rn(ps[threadIdx.x], ps[threadIdx.x + h]);
                pq[threadIdx.x] = __dadd_rn(pq[threadIdx.x], pq[threadIdx.x + h]);
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            rowsum[2 * r] = ps[0];
            rowsum[2 * r + 1] = pq[0];
        }
        __syncthreads(); /* before the next row reuses ps, pq */
    }
}

/* (*sum, *sumsq) += the rows' sums, by a fixed tree (deterministic).  One block of 1024. */
__global__ void sz_addrows(double *sum, double *sumsq, /* (1), (1) in/out */
                           const double *rowsum,       /* (nrows, 2) */
                           int64_t nrows)
{
    __shared__ double ps[1024], pq[1024];
    const int t = threadIdx.x;
    double s = 0.0, q = 0.0;
    for (int64_t r = t; r < nrows; r += 1024) {
        s = __dadd_rn(s, rowsum[2 * r]);
        q = __dadd_rn(q, rowsum[2 * r + 1]);
    }
    ps[t] = s;
    pq[t] = q;
    __syncthreads();
    for (int h = 512; h > 0; h >>= 1) {
        if (t < h) {
            ps[t] = __dadd_rn(ps[t], ps[t + h]);
            pq[t] = __dadd_rn(pq[t], pq[t + h]);
        }
        __syncthreads();
    }
    if (t == 0) {
        *sum = __dadd_rn(*sum, ps[0]);
        *sumsq = __dadd_rn(*sumsq, pq[0]);
    }
}

/* votes += -sign(g) where |G - mu| > thr, saturating; thr = mean + z std of a (sample std), as
 * stochastic_zscore.c computes it from the sums. */
__global__ void sz_vote(int8_t *votes,        /* (nrows, cols) in/out */
                        const float *G,       /* (nrows, cols) dL/dW */
                        const float *scale,   /* (nrows) */
                        const float *mu,      /* (nrows) */
                        const double *sum_p, const double *sumsq_p, /* (1), (1) */
                        double n, double z, int64_t nrows, int64_t cols)
{
    __shared__ float thr_s;
    if (threadIdx.x == 0) {
        const double sum = *sum_p, sumsq = *sumsq_p;
        double mean = n > 0 ? __ddiv_rn(sum, n) : 0.0, var = 0.0;
        if (n > 1)
            var = __ddiv_rn(__dsub_rn(sumsq, __dmul_rn(sum, mean)), n - 1);
        thr_s = (float)__dadd_rn(mean, __dmul_rn(z, sqrt(var > 0.0 ? var : 0.0)));
    }
    __syncthreads();
    const float thr = thr_s;
    const int64_t total = nrows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols;
        float x = __fsub_rn(G[i], mu[r]);
        if (!(fabsf(x) > thr))
            continue;
        int up = (x < 0.0f) != (scale[r] < 0.0f); /* g < 0: a larger value is better */
        int v = votes[i] + (up ? 1 : -1);
        votes[i] = (int8_t)(v > VOTE_MAX ? VOTE_MAX : v < -VOTE_MAX ? -VOTE_MAX : v);
    }
}

/* *p = clamp(base_p / (|mean(scale)| + 1e-6)), the mean summed in row order as on the CPU. */
__global__ void sz_prob(float *p,            /* (1) out */
                        const float *scale,  /* (rows) */
                        int64_t rows, double base_p)
{
    double ms = 0.0;
#pragma unroll 8
    for (int64_t r = 0; r < rows; r++)
        ms = __dadd_rn(ms, (double)scale[r]);
    double q = __ddiv_rn(base_p, __dadd_rn(fabs(__ddiv_rn(ms, (double)rows)), 1e-6));
    *p = (float)(q < P_MIN ? P_MIN : q > P_MAX ? P_MAX : q);
}

/* *flips = weights that will move this step (the cooldown given depends on it). */
__global__ void sz_count(unsigned long long *flips,  /* (1) in/out */
                         const int8_t *votes,        /* (rows, cols) */
                         const uint16_t *cool,       /* (rows, cols) or NULL */
                         const uint8_t *index,       /* (rows, row_stride) packed */
                         const float *p_p,           /* (1) */
                         int64_t row_stride, int bits, int64_t rows, int64_t cols, int top,
                         uint64_t seed, uint64_t stream)
{
    const float p = *p_p;
    unsigned long long nf = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * cols;
         i += (int64_t)gridDim.x * blockDim.x) {
        if (cool != NULL && cool[i] > 0)
            continue;
        const int v = votes[i];
        if (!fires(v, p, seed, stream, i))
            continue;
        const int64_t r = i / cols;
        const int idx = index_load(index + r * row_stride, bits, i - r * cols);
        if ((v > 0 && idx < top) || (v < 0 && idx > 0))
            nf++;
    }
    block_add2(flips, NULL, nf, 0);
}

/* Flip, reset and cool the firing weights; step the other votes toward 0.  One thread per pair
 * of columns, so that a 4-bit index byte has one writer. */
__global__ void sz_apply(uint8_t *index,                /* (rows, row_stride) packed, in/out */
                         int8_t *votes,                 /* (rows, cols) in/out */
                         uint16_t *cool,                /* (rows, cols) in/out, or NULL */
                         unsigned long long *saturated, /* (1) in/out */
                         const unsigned long long *flips_p, /* (1) from sz_count */
                         const float *p_p,              /* (1) */
                         int64_t row_stride, int bits, int64_t rows, int64_t cols, int top,
                         int cooldown, uint64_t seed, uint64_t stream)
{
    const float p = *p_p;
    int cd = cooldown;
    if ((long long)*flips_p * 1000 > rows * cols)
        cd = 3 * cd > UINT16_MAX ? UINT16_MAX : 3 * cd;
    const int64_t pairs = (cols + 1) / 2;
    unsigned long long ns = 0;
    for (int64_t pi = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; pi < rows * pairs;
         pi += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = pi / pairs, c0 = (pi - r * pairs) * 2;
        const int nc = cols - c0 >= 2 ? 2 : 1;
        uint8_t *row = index + r * row_stride;
        int idx[2] = {0, 0}, moved[2] = {0, 0};
        for (int k = 0; k < nc; k++) {
            const int64_t col = c0 + k, i = r * cols + col;
            const int v = votes[i];
            const int cooling = cool != NULL && cool[i] > 0;
            if (!cooling && fires(v, p, seed, stream, i)) {
                idx[k] = index_load(row, bits, col);
                const int to = idx[k] + (v > 0 ? 1 : -1);
                votes[i] = 0;
                if (to >= 0 && to <= top) {
                    idx[k] = to;
                    moved[k] = 1;
                    if (cool != NULL)
                        cool[i] = (uint16_t)cd;
                }
                continue;
            }
            const int nv = v > 0 ? v - 1 : v < 0 ? v + 1 : 0;
            votes[i] = (int8_t)nv;
            if (cooling)
                cool[i]--;
            if (nv == VOTE_MAX || nv == -VOTE_MAX)
                ns++;
        }
        index_store_pair(row, bits, c0, nc, idx, moved);
    }
    block_add2(saturated, NULL, ns, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Entry points                                                                               */

static void szg_free(szg_state *s)
{
    if (s == NULL)
        return;
    cudaFree(s->base.votes);
    cudaFree(s->base.cool);
    cudaFree(s->small);
    cudaFree(s->mu);
    cudaFree(s->rsum);
    cudaFree(s->rowsum);
    free(s);
}

static int szg_tensor_init(void *ctx, const primal_qtensor *t, void **state, void *stream,
                           primal_err *err)
{
    const sz_ctx *c = (const sz_ctx *)ctx;
    cudaStream_t st = (cudaStream_t)stream;
    if (t->index == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "stochastic_zscore: tensor %s: needs indexed storage (bits %d, grid "
                           "size %d, shape [%lld,%lld])",
                           t->name, t->bits, t->grid_size, (long long)t->rows,
                           (long long)t->cols);
    szg_state *s = (szg_state *)calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "stochastic_zscore: tensor %s: out of memory",
                           t->name);
    s->base.n = t->rows * t->cols;
    cudaError_t e = cudaMalloc((void **)&s->base.votes, (size_t)s->base.n);
    if (e == cudaSuccess && c->cooldown > 0)
        e = cudaMalloc((void **)&s->base.cool, (size_t)s->base.n * sizeof(uint16_t));
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->small, sizeof(sz_small));
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->mu, (size_t)t->rows * sizeof(float));
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->rsum, (size_t)t->rows * sizeof(double));
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->rowsum, (size_t)t->rows * 2 * sizeof(double));
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->base.votes, 0, (size_t)s->base.n, st);
    if (e == cudaSuccess && s->base.cool != NULL)
        e = cudaMemsetAsync(s->base.cool, 0, (size_t)s->base.n * sizeof(uint16_t), st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->small, 0, sizeof(sz_small), st);
    if (e != cudaSuccess) {
        szg_free(s);
        return primal_errf(err, e == cudaErrorMemoryAllocation ? PRIMAL_ENOMEM : PRIMAL_EDEVICE,
                           "stochastic_zscore: tensor %s: device state for %lld weights: %s",
                           t->name, (long long)t->rows * t->cols, cudaGetErrorString(e));
    }
    *state = s;
    return PRIMAL_OK;
}

static void szg_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    szg_free((szg_state *)state);
}

static int check_rows(const primal_qtensor *t, int64_t r0, int64_t nrows, primal_err *err)
{
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR,
                           "stochastic_zscore: tensor %s: rows [%lld,%lld) outside [0,%lld)",
                           t->name, (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    return PRIMAL_OK;
}

/* Add the chunk's sums of a and a^2 (and, in mu, its row means) on the device. */
static int add_stats(szg_state *s, const primal_qtensor *t, const float *G, int64_t r0,
                     int64_t nrows, cudaStream_t st, primal_err *err)
{
    s->base.count += nrows * t->cols;
    if (nrows == 0)
        return PRIMAL_OK;
    row_ordered_sum<0><<<(unsigned)((nrows + SEQ_ROWS - 1) / SEQ_ROWS), SEQ_THREADS, 0, st>>>(
        s->rsum + r0, G, nrows, t->cols);
    CU_TRY(cudaGetLastError());
    sz_rows<<<row_blocks(nrows), ROW_THREADS, 0, st>>>(s->mu + r0, s->rowsum + 2 * r0,
                                                        s->rsum + r0, G, nrows, t->cols);
    CU_TRY(cudaGetLastError());
    sz_addrows<<<1, 1024, 0, st>>>(&s->small->sum, &s->small->sumsq, s->rowsum + 2 * r0, nrows);
    CU_TRY(cudaGetLastError());
    return PRIMAL_OK;
}

static int reset_stats(szg_state *s, const primal_qtensor *t, cudaStream_t st, primal_err *err)
{
    s->base.count = 0;
    CU_TRY(cudaMemsetAsync(&s->small->sum, 0, 2 * sizeof(double), st));
    return PRIMAL_OK;
}

static int szg_observe(void *ctx, void *state, const primal_qtensor *t, const float *G,
                       int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                       primal_err *err)
{
    (void)ctx;
    szg_state *s = (szg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    int rc = check_rows(t, r0, nrows, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (r0 == 0 || !s->base.stat_valid || s->base.stat_step != ai->step ||
        s->base.stat_micro != ai->micro) {
        if ((rc = reset_stats(s, t, st, err)) != PRIMAL_OK)
            return rc;
        s->base.stat_step = ai->step;
        s->base.stat_micro = ai->micro;
        s->base.stat_valid = 1;
        s->obs_lo = s->obs_hi = r0;
    }
    if (r0 == s->obs_hi)
        s->obs_hi = r0 + nrows;
    else
        s->obs_lo = s->obs_hi = 0; /* not contiguous: recompute in accumulate */
    return add_stats(s, t, G, r0, nrows, st, err);
}

static int szg_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                          int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                          primal_err *err)
{
    const sz_ctx *c = (const sz_ctx *)ctx;
    szg_state *s = (szg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    int rc = check_rows(t, r0, nrows, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (!(s->base.stat_valid && s->base.stat_step == ai->step &&
          s->base.stat_micro == ai->micro)) {
        /* no observe() for this micro-batch: the chunk's own statistics, as on the CPU */
        if ((rc = reset_stats(s, t, st, err)) != PRIMAL_OK)
            return rc;
        s->base.stat_valid = 0;
        if ((rc = add_stats(s, t, G, r0, nrows, st, err)) != PRIMAL_OK)
            return rc;
    } else if (nrows > 0 && !(r0 >= s->obs_lo && r0 + nrows <= s->obs_hi)) {
        row_ordered_sum<0><<<(unsigned)((nrows + SEQ_ROWS - 1) / SEQ_ROWS), SEQ_THREADS, 0,
                             st>>>(s->rsum + r0, G, nrows, t->cols);
        CU_TRY(cudaGetLastError());
        sz_rows<<<row_blocks(nrows), ROW_THREADS, 0, st>>>(s->mu + r0, NULL, s->rsum + r0, G,
                                                            nrows, t->cols);
        CU_TRY(cudaGetLastError());
    }
    const int64_t n = nrows * t->cols;
    if (n == 0)
        return PRIMAL_OK;
    sz_vote<<<grid_for(n, THREADS), THREADS, 0, st>>>(
        s->base.votes + r0 * t->cols, G, t->scale + r0, s->mu + r0, &s->small->sum,
        &s->small->sumsq, (double)s->base.count, c->z, nrows, t->cols);
    CU_TRY(cudaGetLastError());
    return PRIMAL_OK;
}

/* step and step_async: the counts to the host (stats) or to the core's device slot (dstats) */
static int szg_step_to(void *ctx, void *state, const primal_qtensor *t,
                       const primal_step_info *si, primal_step_stats *stats,
                       primal_step_stats *dstats, void *stream, primal_err *err)
{
    const sz_ctx *c = (const sz_ctx *)ctx;
    szg_state *s = (szg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    const int64_t rows = t->rows, cols = t->cols;
    const int top = t->grid_size - 1;
    const uint64_t stream_id =
        primal_rng_stream((uint64_t)t->id, (uint64_t)si->step, RNG_PURPOSE_FLIP);
    sz_small *d = s->small;
    CU_TRY(cudaMemsetAsync(d, 0, offsetof(sz_small, sum), st)); /* the counters */
    sz_prob<<<1, 1, 0, st>>>(&d->p, t->scale, rows, c->base_p);
    CU_TRY(cudaGetLastError());
    sz_count<<<grid_for(rows * cols, THREADS), THREADS, 0, st>>>(
        &d->flips, s->base.votes, s->base.cool, (const uint8_t *)t->index, &d->p, t->row_stride,
        t->bits, rows, cols, top, si->seed, stream_id);
    CU_TRY(cudaGetLastError());
    sz_apply<<<grid_for(rows * ((cols + 1) / 2), THREADS), THREADS, 0, st>>>(
        (uint8_t *)t->index, s->base.votes, s->base.cool, &d->saturated, &d->flips, &d->p,
        t->row_stride, t->bits, rows, cols, top, c->cooldown, si->seed, stream_id);
    CU_TRY(cudaGetLastError());
    CU_TRY(step_counts(&d->flips, &d->saturated, rows * cols, stats, dstats, st));
    return PRIMAL_OK;
}

static int szg_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                    primal_step_stats *stats, void *stream, primal_err *err)
{
    return szg_step_to(ctx, state, t, si, stats, NULL, stream, err);
}

static int szg_step_async(void *ctx, void *state, const primal_qtensor *t,
                          const primal_step_info *si, primal_step_stats *dstats, void *stream,
                          primal_err *err)
{
    return szg_step_to(ctx, state, t, si, NULL, dstats, stream, err);
}

static int szg_state_download(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                              void *stream, primal_err *err)
{
    (void)ctx;
    const szg_state *s = (const szg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    CU_TRY(cudaMemcpyAsync(buf, s->base.votes, (size_t)s->base.n, cudaMemcpyDeviceToHost, st));
    if (s->base.cool != NULL)
        CU_TRY(cudaMemcpyAsync((uint8_t *)buf + s->base.n, s->base.cool,
                               (size_t)s->base.n * sizeof(uint16_t), cudaMemcpyDeviceToHost, st));
    CU_TRY(cudaStreamSynchronize(st));
    return PRIMAL_OK;
}

static int szg_state_upload(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                            size_t n, void *stream, primal_err *err)
{
    (void)ctx;
    szg_state *s = (szg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    size_t want = (size_t)s->base.n * (1 + (s->base.cool != NULL ? sizeof(uint16_t) : 0));
    if (n != want)
        return primal_errf(err, PRIMAL_EIO,
                           "stochastic_zscore: tensor %s: state is %zu bytes, expected %zu",
                           t->name, n, want);
    /* from pageable memory the copy has left buf when the call returns */
    CU_TRY(cudaMemcpyAsync(s->base.votes, buf, (size_t)s->base.n, cudaMemcpyHostToDevice, st));
    if (s->base.cool != NULL)
        CU_TRY(cudaMemcpyAsync(s->base.cool, (const uint8_t *)buf + s->base.n,
                               (size_t)s->base.n * sizeof(uint16_t), cudaMemcpyHostToDevice, st));
    s->base.stat_valid = 0;
    return PRIMAL_OK;
}

extern "C" {

extern const primal_policy_cuda_vt primal_stochastic_zscore_cuda;
const primal_policy_cuda_vt primal_stochastic_zscore_cuda = {
    sizeof(primal_policy_cuda_vt), szg_tensor_init,    szg_tensor_free,  szg_observe,
    szg_accumulate,                szg_step,           szg_state_download, szg_state_upload,
    szg_step_async,
};

const primal_policy_cuda_vt *primal_stochastic_zscore_cuda_vt(void)
{
    return &primal_stochastic_zscore_cuda;
}
}
