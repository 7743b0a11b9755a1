/* latent_adamw_cuda.cu: the GPU entry points of latent_adamw (primal/policy_cuda.h).
 *
 * SPEC.md, "The four plugin kinds" (baselines); the semantics, keys and defaults are those of
 * plugins/latent_adamw.c (lr 1e-3, beta1 0.9, beta2 0.95, eps 1e-8, weight_decay 0.1): float
 * shadow weights, AdamW on them, then every weight re-snapped to the grid value nearest
 * shadow / scale[r] (ties to the lower index; a row with scale 0 or a NaN quotient keeps its
 * index).  This file computes the same shadow, moments and indices, bit for bit:
 * - tensor_init's shadow = grid[index] * scale[r], one float multiply (__fmul_rn);
 * - the per-step constants are computed on the host in double exactly as latent_adamw.c does,
 *   then rounded to float; the per-weight update is its float expression one IEEE operation at
 *   a time (__fmul_rn / __fadd_rn / __fdiv_rn / __fsqrt_rn, so nvcc cannot form FMAs);
 * - the snap divides with __fdiv_rn and runs the CPU's binary search and tie test on the
 *   device grid, so the chosen index is the CPU's.
 * State: the host struct is the CPU's la_state, field for field (device pointers for the
 * arrays, t on the host), since the core sizes the checkpoint with the CPU's state_bytes(),
 * which reads n; state_download writes the CPU's state_save bytes (shadow, m, v, gsum, t).
 * Scratch: one 8-byte device counter (the flips).
 * Only step() synchronises its stream (to return the flip count); state_download waits for its
 * own copies to land in the caller's buffer; tensor_init/tensor_free use cudaMalloc/cudaFree,
 * which may synchronise the device. */
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <primal/policy_cuda.h>

#include "adamw_update.cuh"
#include "index_cuda.cuh"
#include "step_counts.cuh"

#define THREADS 256
#define MAX_BLOCKS 4096

/* Must match latent_adamw.c: create() fills it and both halves read it. */
typedef struct la_ctx {
    double lr, beta1, beta2, eps, wd;
} la_ctx;

/* The CPU's la_state, field for field (its state_bytes() reads n). */
typedef struct la_state {
    int64_t n;
    float *w, *m, *v, *gsum; /* device (rows, cols) each: shadow, moments, gradient sum */
    int64_t t;
} la_state;

typedef struct lag_state {
    la_state base; /* first */
    unsigned long long *flips; /* device (1) */
} lag_state;

#define CU_TRY(call)                                                                           \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess)                                                                 \
            return primal_errf(err, PRIMAL_EDEVICE, "%s:%d: latent_adamw: tensor %s: %s: %s",  \
                               __FILE__, __LINE__, t->name, #call, cudaGetErrorString(e_));    \
    } while (0)

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + THREADS - 1) / THREADS;
    return (unsigned)(b < 1 ? 1 : b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

/* ------------------------------------------------------------------------------------------ */
/* Device helpers                                                                             */

/* The index of the grid value nearest x, ties to the lower index (latent_adamw.c, nearest). */
__device__ __forceinline__ int nearest(const float *grid, /* (n) ascending */
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
    return __fsub_rn(x, grid[lo]) <= __fsub_rn(grid[hi], x) ? lo : hi;
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels                                                                                    */

/* w = grid[index] * scale[r]: the dequantised weights. */
__global__ void la_dequant(float *w,             /* (rows, cols) out */
                           const uint8_t *index, /* (rows, row_stride) packed */
                           const float *scale,   /* (rows) */
                           const float *grid,    /* (grid_size) */
                           int64_t row_stride, int bits, int64_t rows, int64_t cols)
{
    const int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols;
        w[i] = __fmul_rn(grid[index_load(index + r * row_stride, bits, i - r * cols)], scale[r]);
    }
}

/* index = nearest(w / scale[r]) where that is a number and scale[r] != 0; *flips += the
 * indices that changed.  One thread per pair of columns, so that a 4-bit index byte has one
 * writer. */
__global__ void la_snap(uint8_t *index,            /* (rows, row_stride) packed, in/out */
                        unsigned long long *flips, /* (1) in/out */
                        const float *w,            /* (rows, cols) shadow */
                        const float *scale,        /* (rows) */
                        const float *grid,         /* (grid_size) ascending */
                        int64_t row_stride, int bits, int64_t rows, int64_t cols, int grid_size)
{
    const int64_t pairs = (cols + 1) / 2;
    unsigned long long nf = 0;
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < rows * pairs;
         p += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = p / pairs, c0 = (p - r * pairs) * 2;
        const float sc = scale[r];
        if (sc == 0.0f)
            continue;
        const int nc = cols - c0 >= 2 ? 2 : 1;
        uint8_t *row = index + r * row_stride;
        int idx[2] = {0, 0}, moved[2] = {0, 0};
        for (int k = 0; k < nc; k++) {
            idx[k] = index_load(row, bits, c0 + k);
            const float x = __fdiv_rn(w[r * cols + c0 + k], sc);
            if (x != x)
                continue;
            const int to = nearest(grid, x, grid_size);
            if (to != idx[k]) {
                idx[k] = to;
                moved[k] = 1;
                nf++;
            }
        }
        index_store_pair(row, bits, c0, nc, idx, moved);
    }
    for (int o = 16; o > 0; o >>= 1)
        nf += __shfl_down_sync(0xffffffffu, nf, o);
    if ((threadIdx.x & 31) == 0 && nf != 0)
        atomicAdd(flips, nf);
}

/* ------------------------------------------------------------------------------------------ */
/* Entry points                                                                               */

static void lag_free(lag_state *s)
{
    if (s == NULL)
        return;
    cudaFree(s->base.w);
    cudaFree(s->base.m);
    cudaFree(s->base.v);
    cudaFree(s->base.gsum);
    cudaFree(s->flips);
    free(s);
}

static int lag_tensor_init(void *ctx, const primal_qtensor *t, void **state, void *stream,
                           primal_err *err)
{
    (void)ctx;
    cudaStream_t st = (cudaStream_t)stream;
    if (t->index == NULL || t->scale == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "latent_adamw: tensor %s: needs indexed storage (bits %d, grid size "
                           "%d, shape [%lld,%lld])",
                           t->name, t->bits, t->grid_size, (long long)t->rows,
                           (long long)t->cols);
    lag_state *s = (lag_state *)calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "latent_adamw: tensor %s: out of memory", t->name);
    s->base.n = t->rows * t->cols;
    const size_t nb = (size_t)s->base.n * sizeof(float);
    cudaError_t e = cudaMalloc((void **)&s->base.w, nb);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->base.m, nb);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->base.v, nb);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->base.gsum, nb);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->flips, sizeof(unsigned long long));
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->base.m, 0, nb, st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->base.v, 0, nb, st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->base.gsum, 0, nb, st);
    if (e == cudaSuccess) {
        la_dequant<<<grid_for(s->base.n), THREADS, 0, st>>>(
            s->base.w, (const uint8_t *)t->index, t->scale, t->grid, t->row_stride, t->bits,
            t->rows, t->cols);
        e = cudaGetLastError();
    }
    if (e != cudaSuccess) {
        lag_free(s);
        return primal_errf(err, e == cudaErrorMemoryAllocation ? PRIMAL_ENOMEM : PRIMAL_EDEVICE,
                           "latent_adamw: tensor %s: device state for %lld weights: %s", t->name,
                           (long long)t->rows * t->cols, cudaGetErrorString(e));
    }
    *state = s;
    return PRIMAL_OK;
}

static void lag_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    lag_free((lag_state *)state);
}

static int lag_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                          int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                          primal_err *err)
{
    (void)ctx;
    (void)ai;
    lag_state *s = (lag_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR,
                           "latent_adamw: tensor %s: rows [%lld,%lld) outside [0,%lld)", t->name,
                           (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    const int64_t n = nrows * t->cols;
    if (n == 0)
        return PRIMAL_OK;
    adamw_accum_kernel<<<grid_for(n), THREADS, 0, st>>>(s->base.gsum + r0 * t->cols, G, n);
    CU_TRY(cudaGetLastError());
    return PRIMAL_OK;
}

/* step and step_async: the counts to the host (stats) or to the core's device slot (dstats) */
static int lag_step_to(void *ctx, void *state, const primal_qtensor *t,
                       const primal_step_info *si, primal_step_stats *stats,
                       primal_step_stats *dstats, void *stream, primal_err *err)
{
    const la_ctx *c = (const la_ctx *)ctx;
    lag_state *s = (lag_state *)state;
    la_state *b = &s->base;
    cudaStream_t st = (cudaStream_t)stream;
    b->t++;
    /* latent_adamw.c's constants, in the same double arithmetic */
    const adamw_consts k = adamw_consts_for(c->lr * si->lr_mult, c->beta1, c->beta2, c->eps,
                                            c->wd, b->t, si->clip_scale);
    adamw_update_kernel<<<grid_for(b->n), THREADS, 0, st>>>(b->w, b->m, b->v, b->gsum, k, b->n);
    CU_TRY(cudaGetLastError());
    CU_TRY(cudaMemsetAsync(s->flips, 0, sizeof(unsigned long long), st));
    const int64_t pairs = t->rows * ((t->cols + 1) / 2);
    la_snap<<<grid_for(pairs), THREADS, 0, st>>>((uint8_t *)t->index, s->flips, b->w, t->scale,
                                                 t->grid, t->row_stride, t->bits, t->rows,
                                                 t->cols, t->grid_size);
    CU_TRY(cudaGetLastError());
    CU_TRY(step_counts(s->flips, NULL, b->n, stats, dstats, st));
    return PRIMAL_OK;
}

static int lag_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                    primal_step_stats *stats, void *stream, primal_err *err)
{
    return lag_step_to(ctx, state, t, si, stats, NULL, stream, err);
}

static int lag_step_async(void *ctx, void *state, const primal_qtensor *t,
                          const primal_step_info *si, primal_step_stats *dstats, void *stream,
                          primal_err *err)
{
    return lag_step_to(ctx, state, t, si, NULL, dstats, stream, err);
}

/* The checkpoint layout, in order: shadow, m, v, gsum, t (latent_adamw.c, la_state_save). */
static int lag_state_download(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                              void *stream, primal_err *err)
{
    (void)ctx;
    const la_state *s = &((const lag_state *)state)->base;
    cudaStream_t st = (cudaStream_t)stream;
    const size_t nb = (size_t)s->n * sizeof(float);
    uint8_t *p = (uint8_t *)buf;
    CU_TRY(cudaMemcpyAsync(p, s->w, nb, cudaMemcpyDeviceToHost, st));
    CU_TRY(cudaMemcpyAsync(p + nb, s->m, nb, cudaMemcpyDeviceToHost, st));
    CU_TRY(cudaMemcpyAsync(p + 2 * nb, s->v, nb, cudaMemcpyDeviceToHost, st));
    CU_TRY(cudaMemcpyAsync(p + 3 * nb, s->gsum, nb, cudaMemcpyDeviceToHost, st));
    memcpy(p + 4 * nb, &s->t, sizeof s->t);
    CU_TRY(cudaStreamSynchronize(st));
    return PRIMAL_OK;
}

static int lag_state_upload(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                            size_t n, void *stream, primal_err *err)
{
    (void)ctx;
    la_state *s = &((lag_state *)state)->base;
    cudaStream_t st = (cudaStream_t)stream;
    const size_t nb = (size_t)s->n * sizeof(float), want = 4 * nb + sizeof(int64_t);
    if (n != want)
        return primal_errf(err, PRIMAL_EIO,
                           "latent_adamw: tensor %s: state is %zu bytes, expected %zu", t->name,
                           n, want);
    const uint8_t *p = (const uint8_t *)buf;
    /* from pageable memory the copy has left buf when the call returns */
    CU_TRY(cudaMemcpyAsync(s->w, p, nb, cudaMemcpyHostToDevice, st));
    CU_TRY(cudaMemcpyAsync(s->m, p + nb, nb, cudaMemcpyHostToDevice, st));
    CU_TRY(cudaMemcpyAsync(s->v, p + 2 * nb, nb, cudaMemcpyHostToDevice, st));
    CU_TRY(cudaMemcpyAsync(s->gsum, p + 3 * nb, nb, cudaMemcpyHostToDevice, st));
    memcpy(&s->t, p + 4 * nb, sizeof s->t);
    return PRIMAL_OK;
}

extern "C" {

extern const primal_policy_cuda_vt primal_latent_adamw_cuda;
const primal_policy_cuda_vt primal_latent_adamw_cuda = {
    sizeof(primal_policy_cuda_vt), lag_tensor_init, lag_tensor_free,    NULL,
    lag_accumulate,                lag_step,        lag_state_download, lag_state_upload,
    lag_step_async,
};

const primal_policy_cuda_vt *primal_latent_adamw_cuda_vt(void) { return &primal_latent_adamw_cuda; }
}
