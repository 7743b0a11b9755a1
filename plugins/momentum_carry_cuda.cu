/* momentum_carry_cuda.cu: the GPU entry points of momentum_carry (primal/policy_cuda.h).
 *
 * SPEC.md, "Flip policies", momentum_carry; the semantics, keys and defaults are those of
 * plugins/momentum_carry.c (lr 1e-3, beta1 0.9, beta2 0.999, residual_bits and momentum_bits
 * 8 or 4, k micro-batches per step as documented there), and this file computes the same
 * residuals, momenta, per-row scales, v and S, bit for bit:
 * - the only order-dependent sum, mean_c G^2 of a row, is taken in column order as on the
 *   CPU, one lane per row (row_ordered_sum);
 * - max|m| of a row is exact in any order;
 * - every float and double expression is written with __fmul_rn / __fadd_rn / __fdiv_rn /
 *   __dmul_rn / __dadd_rn in the CPU's order, so nvcc cannot contract a * b + c into an FMA
 *   (the CPU build, -std=c11 on x86-64, never contracts); 1 - beta2^t is computed on the host
 *   with the same libm pow as the CPU;
 * - the random draws are the CPU's: primal_rng_u01(seed, primal_rng_stream(tensor id, step,
 *   0x4D or 0x52), counter).
 * State: the host struct starts with the CPU's mc_state (device pointers for the arrays, t and
 * t_step kept on the host), since the core sizes the checkpoint with the CPU's state_bytes(),
 * which reads rows, rstride and mstride; state_download writes the CPU's state_save layout
 * (residuals, momenta, per-row momentum scale, v, S, t, t_step).  Scratch: 8 bytes per row.
 * Only step() synchronises its stream (to return the counts); state_download waits for its own
 * copies to land in the caller's buffer; tensor_init/tensor_free use cudaMalloc/cudaFree, which
 * may synchronise the device (tensor_free gets no stream for a stream-ordered free). */
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <primal/policy_cuda.h>

#include "index_cuda.cuh"
#include "row_ordered_sum.cuh"
#include "step_counts.cuh"

#define RNG_PURPOSE_MOMENTUM 0x4D
#define RNG_PURPOSE_RESIDUAL 0x52
#define THREADS 256
#define MAX_BLOCKS 4096

/* Must match momentum_carry.c: create() fills it and both halves read it. */
typedef struct mc_ctx {
    double lr, beta1, beta2;
    int rbits, mbits;
} mc_ctx;

/* The CPU's mc_state, field for field (its state_bytes() reads rows, rstride, mstride). */
typedef struct mc_state {
    int64_t rows, cols;
    int64_t rstride, mstride;
    uint8_t *resid; /* device (rows, rstride) packed signed residuals */
    uint8_t *mom;   /* device (rows, mstride) packed signed momenta */
    float *mscale;  /* device (rows) */
    double *v;      /* device (rows) */
    double *vsum;   /* device (rows) */
    int64_t t;      /* host */
    int64_t t_step; /* host */
} mc_state;

typedef struct mcg_state {
    mc_state base; /* first */
    double *sumsq;  /* (rows) scratch: sum_c G^2 of the micro-batch in hand */
    unsigned long long *counts; /* (2) flips, saturated */
} mcg_state;

#define CU_TRY(call)                                                                           \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess)                                                                 \
            return primal_errf(err, PRIMAL_EDEVICE, "%s:%d: momentum_carry: tensor %s: %s: %s", \
                               __FILE__, __LINE__, t->name, #call, cudaGetErrorString(e_));    \
    } while (0)

static int64_t packed_stride(int bits, int64_t cols) { return bits == 4 ? (cols + 1) / 2 : cols; }

static unsigned grid_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

/* ------------------------------------------------------------------------------------------ */
/* Device helpers: a pair of columns (2j, 2j+1) of a packed row, so that one thread owns each
 * byte of 4-bit storage.                                                                     */

__device__ __forceinline__ void pair_get(int *out, const uint8_t *row, int bits, int64_t j,
                                         int nc)
{
    if (bits == 8) {
        out[0] = (int8_t)row[2 * j];
        out[1] = nc == 2 ? (int8_t)row[2 * j + 1] : 0;
        return;
    }
    int lo = row[j] & 0xF, hi = row[j] >> 4;
    out[0] = lo >= 8 ? lo - 16 : lo;
    out[1] = hi >= 8 ? hi - 16 : hi;
}

__device__ __forceinline__ int pair_get1(const uint8_t *row, int bits, int64_t c)
{
    if (bits == 8)
        return (int8_t)row[c];
    int x = (row[c >> 1] >> ((c & 1) * 4)) & 0xF;
    return x >= 8 ? x - 16 : x;
}

__device__ __forceinline__ void pair_set(uint8_t *row, int bits, int64_t j, const int *v, int nc)
{
    if (bits == 8) {
        row[2 * j] = (uint8_t)(int8_t)v[0];
        if (nc == 2)
            row[2 * j + 1] = (uint8_t)(int8_t)v[1];
        return;
    }
    uint8_t b = row[j];
    b = (uint8_t)((b & 0xF0u) | ((unsigned)v[0] & 0xFu));
    if (nc == 2)
        b = (uint8_t)((b & 0x0Fu) | (((unsigned)v[1] & 0xFu) << 4));
    row[j] = b;
}

/* m = decay * (mi * s_old) + gcoef * G, in the CPU's order. */
__device__ __forceinline__ float mom_new(float decay, int mi, float s_old, float gcoef, float g)
{
    return __fadd_rn(__fmul_rn(decay, __fmul_rn((float)mi, s_old)), __fmul_rn(gcoef, g));
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels                                                                                    */

/* One row per block (momentum_carry.c, mc_accumulate and mc_row):
 * - S += mean_c G^2 (sumsq from row_ordered_sum), then v_j, rho and coef = (1-b1)/rho; v is
 *   committed at the last micro-batch;
 * - m = decay m + coef g, re-quantised with the row's new scale max|m|/q;
 * - at the last micro-batch, r += floor(u R / gap + U), saturating. */
__global__ void mc_row(uint8_t *mom,          /* (nrows, mstride) packed, in/out */
                       float *mscale,         /* (nrows) in/out */
                       uint8_t *resid,        /* (nrows, rstride) packed, in/out */
                       double *v,             /* (nrows) in/out */
                       double *vsum,          /* (nrows) in/out */
                       const double *sumsq,   /* (nrows) sum_c G^2 in column order */
                       const float *G,        /* (nrows, cols) this micro-batch */
                       const float *scale,    /* (nrows) */
                       const uint8_t *index,  /* (nrows, row_stride) packed */
                       const float *grid,     /* (grid_size) */
                       int64_t r0, int64_t cols, int64_t mstride, int64_t rstride,
                       int64_t row_stride, int bits, int mbits, int rbits, int grid_size,
                       double b2, double bias2, double beta1, int k, int j, float decay,
                       float lr, int last, uint64_t seed, uint64_t mstream, uint64_t mcounter0,
                       uint64_t rstream)
{
    __shared__ float wmax[32];
    __shared__ float coef_s;
    const int64_t i = blockIdx.x, r = r0 + i;
    const float *g = G + i * cols;
    if (threadIdx.x == 0) {
        const double ms = __ddiv_rn(sumsq[i], (double)cols);
        const double vs = __dadd_rn(j == 0 ? 0.0 : vsum[i], ms);
        vsum[i] = vs;
        const double w =
            __ddiv_rn(__dmul_rn(__dmul_rn((double)k, (double)k), vs), (double)(j + 1));
        const double vj = __dadd_rn(__dmul_rn(b2, v[i]), __dmul_rn(1.0 - b2, w));
        if (last)
            v[i] = vj;
        const double rho = __dadd_rn(sqrt(__ddiv_rn(vj, bias2)), 1e-12);
        coef_s = (float)__ddiv_rn(1.0 - beta1, rho);
    }
    __syncthreads();

    const int q = (1 << (mbits - 1)) - 1, R = (1 << (rbits - 1)) - 1;
    const float sc = scale[i];
    const float gcoef = sc < 0.0f ? -coef_s : coef_s;
    const float s_old = mscale[i];
    uint8_t *mrow = mom + i * mstride;
    uint8_t *rrow = resid + i * rstride;
    const uint8_t *irow = index + i * row_stride;
    const int64_t pairs = (cols + 1) / 2;

    float mx = 0.0f;
    for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
        int mo[2];
        const int nc = cols - 2 * p >= 2 ? 2 : 1;
        pair_get(mo, mrow, mbits, p, nc);
        for (int k = 0; k < nc; k++) {
            float a = fabsf(mom_new(decay, mo[k], s_old, gcoef, g[2 * p + k]));
            if (a > mx)
                mx = a;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float x = __shfl_down_sync(0xffffffffu, mx, o);
        if (x > mx)
            mx = x;
    }
    if ((threadIdx.x & 31) == 0)
        wmax[threadIdx.x >> 5] = mx;
    __syncthreads();
    float maxabs = 0.0f;
    for (unsigned w = 0; w < blockDim.x / 32; w++)
        if (wmax[w] > maxabs)
            maxabs = wmax[w];

    const float s_new = __fdiv_rn(maxabs, (float)q);
    const double inv = maxabs > 0.0f ? __ddiv_rn((double)q, (double)maxabs) : 0.0;
    const float ustep = __fdiv_rn(__fmul_rn(-lr, (float)R), fmaxf(fabsf(sc), 1e-12f));
    const float lim = (float)(2 * R + 2);
    const int top = grid_size - 1;
    for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
        int mo[2], mi[2] = {0, 0}, rv[2] = {0, 0};
        const int nc = cols - 2 * p >= 2 ? 2 : 1;
        pair_get(mo, mrow, mbits, p, nc);
        for (int k = 0; k < nc; k++) {
            const int64_t col = 2 * p + k;
            const uint64_t flat = (uint64_t)(r * cols + col);
            const float m = mom_new(decay, mo[k], s_old, gcoef, g[col]);
            if (fabsf(m) == maxabs && maxabs > 0.0f) {
                mi[k] = m > 0.0f ? q : -q;
            } else if (maxabs > 0.0f) {
                double u = (double)primal_rng_u01(seed, mstream, mcounter0 + flat);
                double f = floor(__dadd_rn(__dmul_rn((double)m, inv), u));
                mi[k] = f > q ? q : f < -q ? -q : f == f ? (int)f : 0;
            }
        }
        pair_set(mrow, mbits, p, mi, nc);
        if (!last)
            continue;
        for (int k = 0; k < nc; k++) {
            const int64_t col = 2 * p + k;
            const uint64_t flat = (uint64_t)(r * cols + col);
            const float um = __fmul_rn(ustep, __fmul_rn((float)mi[k], s_new));
            const int ix = index_load(irow, bits, col);
            float gap;
            if (um > 0.0f)
                gap = ix < top ? __fsub_rn(grid[ix + 1], grid[ix])
                               : __fsub_rn(grid[top], grid[top - 1]);
            else
                gap = ix > 0 ? __fsub_rn(grid[ix], grid[ix - 1]) : __fsub_rn(grid[1], grid[0]);
            float x = __fdiv_rn(um, gap);
            x = x > lim ? lim : x < -lim ? -lim : x == x ? x : 0.0f;
            const int d = (int)floorf(__fadd_rn(x, primal_rng_u01(seed, rstream, flat)));
            const int v = pair_get1(rrow, rbits, col) + d;
            rv[k] = v > R ? R : v < -R ? -R : v;
        }
        pair_set(rrow, rbits, p, rv, nc);
    }
    if (threadIdx.x == 0)
        mscale[i] = s_new; /* every thread read s_old before the barrier */
}

/* Carry: r >= h moves the index up and r -= R, r <= -h down and r += R, within the grid; then
 * r is clamped to [-h, h].  One thread per pair of columns. */
__global__ void mc_carry(uint8_t *index,                 /* (rows, row_stride) packed, in/out */
                         uint8_t *resid,                 /* (rows, rstride) packed, in/out */
                         unsigned long long *counts,     /* (2) flips, saturated, in/out */
                         int64_t rows, int64_t cols, int64_t row_stride, int64_t rstride,
                         int bits, int rbits, int grid_size)
{
    const int R = (1 << (rbits - 1)) - 1, h = (R + 1) / 2, top = grid_size - 1;
    const int64_t pairs = (cols + 1) / 2;
    unsigned long long nf = 0, ns = 0;
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < rows * pairs;
         p += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = p / pairs, j = p - r * pairs;
        const int nc = cols - 2 * j >= 2 ? 2 : 1;
        uint8_t *irow = index + r * row_stride, *rrow = resid + r * rstride;
        int rv[2], ix[2] = {0, 0}, moved[2] = {0, 0};
        pair_get(rv, rrow, rbits, j, nc);
        for (int k = 0; k < nc; k++) {
            ix[k] = index_load(irow, bits, 2 * j + k);
            if (rv[k] >= h && ix[k] < top) {
                ix[k]++;
                rv[k] -= R;
                moved[k] = 1;
                nf++;
            } else if (rv[k] <= -h && ix[k] > 0) {
                ix[k]--;
                rv[k] += R;
                moved[k] = 1;
                nf++;
            }
            rv[k] = rv[k] > h ? h : rv[k] < -h ? -h : rv[k];
            if (rv[k] == h || rv[k] == -h)
                ns++;
        }
        pair_set(rrow, rbits, j, rv, nc);
        index_store_pair(irow, bits, 2 * j, nc, ix, moved);
    }
    for (int o = 16; o > 0; o >>= 1) {
        nf += __shfl_down_sync(0xffffffffu, nf, o);
        ns += __shfl_down_sync(0xffffffffu, ns, o);
    }
    if ((threadIdx.x & 31) == 0) {
        if (nf)
            atomicAdd(&counts[0], nf);
        if (ns)
            atomicAdd(&counts[1], ns);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Entry points                                                                               */

static void mcg_free(mcg_state *s)
{
    if (s == NULL)
        return;
    cudaFree(s->base.resid);
    cudaFree(s->base.mom);
    cudaFree(s->base.mscale);
    cudaFree(s->base.v);
    cudaFree(s->base.vsum);
    cudaFree(s->counts);
    cudaFree(s->sumsq);
    free(s);
}

static int mcg_tensor_init(void *ctx, const primal_qtensor *t, void **state, void *stream,
                           primal_err *err)
{
    const mc_ctx *c = (const mc_ctx *)ctx;
    cudaStream_t st = (cudaStream_t)stream;
    if (t->index == NULL || t->scale == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "momentum_carry: tensor %s: needs indexed storage (bits %d, grid size "
                           "%d, shape [%lld,%lld])",
                           t->name, t->bits, t->grid_size, (long long)t->rows,
                           (long long)t->cols);
    mcg_state *s = (mcg_state *)calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "momentum_carry: tensor %s: out of memory",
                           t->name);
    mc_state *b = &s->base;
    b->rows = t->rows;
    b->cols = t->cols;
    b->rstride = packed_stride(c->rbits, t->cols);
    b->mstride = packed_stride(c->mbits, t->cols);
    b->t_step = -1;
    const size_t rows = (size_t)t->rows, nr = (size_t)(b->rows * b->rstride),
                 nm = (size_t)(b->rows * b->mstride);
    cudaError_t e = cudaMalloc((void **)&b->resid, nr);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&b->mom, nm);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&b->mscale, rows * sizeof(float));
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&b->v, rows * sizeof(double));
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&b->vsum, rows * sizeof(double));
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->counts, 2 * sizeof(unsigned long long));
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->sumsq, rows * sizeof(double));
    if (e == cudaSuccess)
        e = cudaMemsetAsync(b->resid, 0, nr, st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(b->mom, 0, nm, st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(b->mscale, 0, rows * sizeof(float), st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(b->v, 0, rows * sizeof(double), st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(b->vsum, 0, rows * sizeof(double), st);
    if (e != cudaSuccess) {
        mcg_free(s);
        return primal_errf(err, e == cudaErrorMemoryAllocation ? PRIMAL_ENOMEM : PRIMAL_EDEVICE,
                           "momentum_carry: tensor %s: device state for [%lld,%lld]: %s", t->name,
                           (long long)t->rows, (long long)t->cols, cudaGetErrorString(e));
    }
    *state = s;
    return PRIMAL_OK;
}

static void mcg_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    mcg_free((mcg_state *)state);
}

static int mcg_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                          int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                          primal_err *err)
{
    const mc_ctx *c = (const mc_ctx *)ctx;
    mcg_state *s = (mcg_state *)state;
    mc_state *b = &s->base;
    cudaStream_t st = (cudaStream_t)stream;
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR,
                           "momentum_carry: tensor %s: rows [%lld,%lld) outside [0,%lld)",
                           t->name, (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    const int k = ai->n_micro, j = ai->micro;
    if (k < 1 || j < 0 || j >= k)
        return primal_errf(err, PRIMAL_ERROR,
                           "momentum_carry: tensor %s: micro-batch %d of %d", t->name, j, k);
    if (b->t_step != ai->step) {
        b->t++;
        b->t_step = ai->step;
    }
    if (nrows == 0)
        return PRIMAL_OK;
    const int last = j == k - 1;
    const double b2 = c->beta2, bias2 = 1.0 - pow(b2, (double)b->t); /* the CPU's libm pow */
    const float decay = j == 0 ? (float)c->beta1 : 1.0f;
    const float lr = (float)(c->lr * ai->lr_mult);
    const uint64_t step = (uint64_t)ai->step, id = (uint64_t)t->id;
    const uint64_t mstream = primal_rng_stream(id, step, RNG_PURPOSE_MOMENTUM);
    const uint64_t rstream = primal_rng_stream(id, step, RNG_PURPOSE_RESIDUAL);
    const uint64_t mcounter0 = (uint64_t)j * (uint64_t)(t->rows * t->cols);
    row_ordered_sum<1><<<(unsigned)((nrows + SEQ_ROWS - 1) / SEQ_ROWS), SEQ_THREADS, 0, st>>>(
        s->sumsq + r0, G, nrows, t->cols);
    CU_TRY(cudaGetLastError());
    const int64_t pairs = (t->cols + 1) / 2;
    const int threads = pairs >= THREADS ? THREADS : (int)((pairs + 31) / 32 * 32);
    mc_row<<<(unsigned)nrows, threads, 0, st>>>(
        b->mom + r0 * b->mstride, b->mscale + r0, b->resid + r0 * b->rstride, b->v + r0,
        b->vsum + r0, s->sumsq + r0, G, t->scale + r0,
        (const uint8_t *)t->index + r0 * t->row_stride, t->grid, r0, t->cols, b->mstride,
        b->rstride, t->row_stride, t->bits, c->mbits, c->rbits, t->grid_size, b2, bias2, c->beta1,
        k, j, decay, lr, last, ai->seed, mstream, mcounter0, rstream);
    CU_TRY(cudaGetLastError());
    return PRIMAL_OK;
}

/* step and step_async: the counts to the host (stats) or to the core's device slot (dstats) */
static int mcg_step_to(void *ctx, void *state, const primal_qtensor *t,
                       const primal_step_info *si, primal_step_stats *stats,
                       primal_step_stats *dstats, void *stream, primal_err *err)
{
    (void)si;
    const mc_ctx *c = (const mc_ctx *)ctx;
    mcg_state *s = (mcg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    CU_TRY(cudaMemsetAsync(s->counts, 0, 2 * sizeof(unsigned long long), st));
    mc_carry<<<grid_for(t->rows * ((t->cols + 1) / 2), THREADS), THREADS, 0, st>>>(
        (uint8_t *)t->index, s->base.resid, s->counts, t->rows, t->cols, t->row_stride,
        s->base.rstride, t->bits, c->rbits, t->grid_size);
    CU_TRY(cudaGetLastError());
    CU_TRY(step_counts(s->counts, s->counts + 1, t->rows * t->cols, stats, dstats, st));
    return PRIMAL_OK;
}

static int mcg_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                    primal_step_stats *stats, void *stream, primal_err *err)
{
    return mcg_step_to(ctx, state, t, si, stats, NULL, stream, err);
}

static int mcg_step_async(void *ctx, void *state, const primal_qtensor *t,
                          const primal_step_info *si, primal_step_stats *dstats, void *stream,
                          primal_err *err)
{
    return mcg_step_to(ctx, state, t, si, NULL, dstats, stream, err);
}

/* The checkpoint layout, in order: resid, mom, mscale, v, vsum, t, t_step. */
static int mcg_state_download(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                              void *stream, primal_err *err)
{
    (void)ctx;
    const mc_state *b = &((const mcg_state *)state)->base;
    cudaStream_t st = (cudaStream_t)stream;
    uint8_t *p = (uint8_t *)buf;
    const size_t nr = (size_t)(b->rows * b->rstride), nm = (size_t)(b->rows * b->mstride),
                 rows = (size_t)b->rows;
    CU_TRY(cudaMemcpyAsync(p, b->resid, nr, cudaMemcpyDeviceToHost, st));
    p += nr;
    CU_TRY(cudaMemcpyAsync(p, b->mom, nm, cudaMemcpyDeviceToHost, st));
    p += nm;
    CU_TRY(cudaMemcpyAsync(p, b->mscale, rows * sizeof(float), cudaMemcpyDeviceToHost, st));
    p += rows * sizeof(float);
    CU_TRY(cudaMemcpyAsync(p, b->v, rows * sizeof(double), cudaMemcpyDeviceToHost, st));
    p += rows * sizeof(double);
    CU_TRY(cudaMemcpyAsync(p, b->vsum, rows * sizeof(double), cudaMemcpyDeviceToHost, st));
    p += rows * sizeof(double);
    memcpy(p, &b->t, sizeof b->t);
    p += sizeof b->t;
    memcpy(p, &b->t_step, sizeof b->t_step);
    CU_TRY(cudaStreamSynchronize(st));
    return PRIMAL_OK;
}

static int mcg_state_upload(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                            size_t n, void *stream, primal_err *err)
{
    (void)ctx;
    mc_state *b = &((mcg_state *)state)->base;
    cudaStream_t st = (cudaStream_t)stream;
    const size_t nr = (size_t)(b->rows * b->rstride), nm = (size_t)(b->rows * b->mstride),
                 rows = (size_t)b->rows;
    const size_t want = nr + nm + rows * (sizeof(float) + 2 * sizeof(double)) + 2 * sizeof(int64_t);
    if (n != want)
        return primal_errf(err, PRIMAL_EIO,
                           "momentum_carry: tensor %s: state is %zu bytes, expected %zu", t->name,
                           n, want);
    /* from pageable memory each copy has left buf when the call returns */
    const uint8_t *p = (const uint8_t *)buf;
    CU_TRY(cudaMemcpyAsync(b->resid, p, nr, cudaMemcpyHostToDevice, st));
    p += nr;
    CU_TRY(cudaMemcpyAsync(b->mom, p, nm, cudaMemcpyHostToDevice, st));
    p += nm;
    CU_TRY(cudaMemcpyAsync(b->mscale, p, rows * sizeof(float), cudaMemcpyHostToDevice, st));
    p += rows * sizeof(float);
    CU_TRY(cudaMemcpyAsync(b->v, p, rows * sizeof(double), cudaMemcpyHostToDevice, st));
    p += rows * sizeof(double);
    CU_TRY(cudaMemcpyAsync(b->vsum, p, rows * sizeof(double), cudaMemcpyHostToDevice, st));
    p += rows * sizeof(double);
    memcpy(&b->t, p, sizeof b->t);
    p += sizeof b->t;
    memcpy(&b->t_step, p, sizeof b->t_step);
    return PRIMAL_OK;
}

extern "C" {

extern const primal_policy_cuda_vt primal_momentum_carry_cuda;
const primal_policy_cuda_vt primal_momentum_carry_cuda = {
    sizeof(primal_policy_cuda_vt), mcg_tensor_init,    mcg_tensor_free,  NULL,
    mcg_accumulate,                mcg_step,           mcg_state_download, mcg_state_upload,
    mcg_step_async,
};

const primal_policy_cuda_vt *primal_momentum_carry_cuda_vt(void)
{
    return &primal_momentum_carry_cuda;
}
}
