/* adam_carry_cuda.cu: the GPU entry points of adam_carry (primal/policy_cuda.h).
 *
 * The semantics, keys and state layout are those of plugins/adam_carry.c, and this file computes
 * the same residuals, momenta, scales, second moments and indices, bit for bit: the arithmetic is
 * adam_carry.h's, shared by both halves, and every order-dependent sum is taken in the tree that
 * the CPU half mirrors (a row's sum of squares per AC_TB columns as 8 warps' xor shuffles added
 * in order; a column's per AC_RPB rows in row order; mean(vr) by one thread in double).
 *
 * Kernels: accumulate is one pass over G (ac_acc: a thread per column, a block per AC_TB columns
 * by AC_RPB rows, writing the new momenta, one partial row sum per block and one partial column
 * sum per thread) and one small pass adding the partials in order (ac_partials).  step is ac_prep
 * (one block: the second-moment EMAs, the accumulators zeroed, 1/mean(vr)) then ac_step (a
 * thread per pair of columns, so that 4-bit index bytes have one owner).
 * Scratch: the partial sums, shared by the policy's tensors (the core orders its calls), grown
 * by tensor_init and freed by destroy; two counters per tensor. */
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <primal/policy_cuda.h>
#include <primal/rng.h>

#include "adam_carry.h"
#include "index_cuda.cuh"
#include "step_counts.cuh"

#define THREADS 256
#define MAX_BLOCKS 4096

typedef struct acg_scratch {
    float *part;  /* partial sums: rows * ceil(cols/AC_TB), then ceil(rows/AC_RPB) * cols */
    size_t bytes;
} acg_scratch;

typedef struct acg_state {
    int64_t rows, cols, nblk;
    int8_t *resid, *mom;
    uint8_t *rlo;               /* the residuals' low bits (ac_lo_bytes; NULL for 8 bits) */
    float *mscale, *vr, *vc, *racc, *cacc;
    float *invS;                /* (1) */
    unsigned long long *counts; /* (2) flips, saturated */
    int64_t t, t_step;          /* host */
} acg_state;

#define CU_TRY(call)                                                                           \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess)                                                                 \
            return primal_errf(err, PRIMAL_EDEVICE, "%s:%d: adam_carry: tensor %s: %s: %s",    \
                               __FILE__, __LINE__, t->name, #call, cudaGetErrorString(e_));    \
    } while (0)

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + THREADS - 1) / THREADS;
    return (unsigned)(b < 1 ? 1 : b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

static int64_t part_floats(int64_t rows, int64_t cols)
{
    return rows * ((cols + AC_TB - 1) / AC_TB) + (rows + AC_RPB - 1) / AC_RPB * cols;
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels                                                                                    */

/* Block (bx, by): columns [bx AC_TB, +AC_TB), rows [by AC_RPB, +AC_RPB) of the chunk. */
__global__ void ac_acc(int8_t *mom, float *mscale, float *rpart, float *cpart, const float *G,
                       const float *scale, const float *vr, const float *vc, const float *invS,
                       int64_t r0, int64_t nrows, int64_t cols, int64_t nblk, int block,
                       int factored, float decay, float omb1, float inv_bc2, float eps,
                       float clip, int first, uint64_t seed, uint64_t mstream,
                       uint64_t mcounter0)
{
    const float is = *invS;
    __shared__ float smax[AC_TB / 32], ssum[AC_TB / 32];
    const int tid = threadIdx.x, warp = tid >> 5, wpg = block / 32;
    const int64_t col = (int64_t)blockIdx.x * AC_TB + tid, nbx = gridDim.x;
    const bool in = col < cols;
    const float vcc = in ? vc[col] : 0.0f;
    const int64_t b = col / block;
    const int64_t i0 = (int64_t)blockIdx.y * AC_RPB;
    const int64_t i1 = nrows - i0 < AC_RPB ? nrows : i0 + AC_RPB;
    float csum = 0.0f;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t r = r0 + i;
        float g = in ? G[i * cols + col] : 0.0f;
        if (scale[r] < 0.0f)
            g = -g;
        float m = 0.0f;
        if (in) {
            const float vh = factored ? AC_MUL(AC_MUL(vr[r], vcc), is) : vr[r];
            const float gn = ac_norm(g, vh, inv_bc2, eps, clip, first);
            m = ac_mom(decay, mom[r * cols + col], mscale[r * nblk + b], omb1, gn);
        }
        float a = fabsf(m), sq = AC_MUL(g, g);
        csum = AC_ADD(csum, sq);
        for (int o = 16; o > 0; o >>= 1) {
            a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
            sq = AC_ADD(sq, __shfl_xor_sync(0xffffffffu, sq, o));
        }
        if ((tid & 31) == 0)
            smax[warp] = a, ssum[warp] = sq;
        __syncthreads();
        float gmax = 0.0f;
        for (int w = warp / wpg * wpg; w < warp / wpg * wpg + wpg; w++)
            gmax = fmaxf(gmax, smax[w]);
        if (tid == 0) {
            float s = ssum[0];
            for (int w = 1; w < AC_TB / 32; w++)
                s = AC_ADD(s, ssum[w]);
            rpart[i * nbx + blockIdx.x] = s;
        }
        if (in) {
            const float inv = gmax > 0.0f ? AC_DIV((float)AC_Q, gmax) : 0.0f;
            const uint64_t ctr = mcounter0 + (uint64_t)(r * cols + col);
            mom[r * cols + col] = (int8_t)ac_quant(m, gmax, inv, primal_rng_u01(seed, mstream, ctr));
            if (col % block == 0)
                mscale[r * nblk + b] = AC_DIV(gmax, (float)AC_Q);
        }
        __syncthreads(); /* smax, ssum are rewritten by the next row */
    }
    if (in)
        cpart[(int64_t)blockIdx.y * cols + col] = csum;
}

/* racc[r0 + i] += the row's partials in order; cacc[c] += the column's partials in order. */
__global__ void ac_partials(float *racc, float *cacc, const float *rpart, const float *cpart,
                            int64_t r0, int64_t nrows, int64_t cols, int64_t nbx, int64_t nby)
{
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < nrows + cols;
         k += (int64_t)gridDim.x * blockDim.x) {
        if (k < nrows) {
            float x = racc[r0 + k];
            for (int64_t j = 0; j < nbx; j++)
                x = AC_ADD(x, rpart[k * nbx + j]);
            racc[r0 + k] = x;
        } else {
            const int64_t c = k - nrows;
            float x = cacc[c];
            for (int64_t j = 0; j < nby; j++)
                x = AC_ADD(x, cpart[j * cols + c]);
            cacc[c] = x;
        }
    }
}

/* One block: the EMAs, accumulators zeroed, then thread 0 sums vr in row order in double. */
__global__ void ac_prep(float *vr, float *vc, float *racc, float *cacc, float *invS, int64_t rows,
                        int64_t cols, float b2, float omb2, float kf)
{
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
        vr[r] = ac_ema(vr[r], b2, omb2, kf, racc[r], (float)cols);
        racc[r] = 0.0f;
    }
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        vc[c] = ac_ema(vc[c], b2, omb2, kf, cacc[c], (float)rows);
        cacc[c] = 0.0f;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double sum = 0.0;
        for (int64_t r = 0; r < rows; r++)
            sum = __dadd_rn(sum, (double)vr[r]);
        *invS = sum > 0.0 ? (float)__ddiv_rn((double)rows, sum) : 0.0f;
    }
}

__global__ void ac_step(int8_t *resid, uint8_t *rlo, int shift, const int8_t *mom,
                        const float *mscale, uint8_t *index, const float *scale,
                        const float *grid, int64_t rows, int64_t cols, int64_t nblk, int block,
                        int64_t row_stride, int bits, int grid_size, float inv_bc1, float lr,
                        float lrwd, uint64_t seed, uint64_t rstream, unsigned long long *counts)
{
    const int64_t pairs = (cols + 1) / 2;
    unsigned long long flips = 0, sat_n = 0;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < rows * pairs;
         k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = k / pairs, c0 = 2 * (k % pairs);
        const int nc = cols - c0 >= 2 ? 2 : 1;
        uint8_t *irow = index + r * row_stride;
        const float lrs = AC_DIV(lr, fmaxf(fabsf(scale[r]), 1e-12f));
        int idx[2] = {0, 0}, moved[2] = {0, 0}, lo[2] = {0, 0};
        for (int q = 0; q < nc; q++) {
            const int64_t c = c0 + q, f = r * cols + c;
            const float ug = ac_direction(mom[f], mscale[r * nblk + c / block], inv_bc1, lrs);
            const int i = index_load(irow, bits, c);
            int rv = ac_resid_get(resid, rlo, shift, r, cols, c), sat;
            const int ni = ac_move(grid, grid_size, i, &rv, ug, lrwd,
                                   primal_rng_u01(seed, rstream, (uint64_t)f), shift, &sat);
            resid[f] = (int8_t)ac_resid_hi(rv, shift);
            lo[q] = ac_resid_lo(rv, shift);
            if (shift == 8)
                rlo[f] = (uint8_t)lo[q];
            idx[q] = ni;
            moved[q] = ni != i;
            flips += (unsigned long long)moved[q];
            sat_n += (unsigned long long)sat;
        }
        if (shift == 4) /* the pair's two nibbles are this thread's byte */
            rlo[r * pairs + c0 / 2] = (uint8_t)(lo[0] | (lo[1] << 4));
        index_store_pair(irow, bits, c0, nc, idx, moved);
    }
    block_add2(&counts[0], &counts[1], flips, sat_n);
}

/* ------------------------------------------------------------------------------------------ */
/* Entry points                                                                               */

extern "C" void primal_adam_carry_cuda_release(ac_ctx *c)
{
    acg_scratch *g = (acg_scratch *)c->gpu;
    if (g == NULL)
        return;
    cudaFree(g->part);
    free(g);
    c->gpu = NULL;
}

static void acg_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    acg_state *s = (acg_state *)state;
    if (s == NULL)
        return;
    cudaFree(s->resid);
    cudaFree(s->rlo);
    cudaFree(s->mom);
    cudaFree(s->mscale);
    cudaFree(s->vr);
    cudaFree(s->vc);
    cudaFree(s->racc);
    cudaFree(s->cacc);
    cudaFree(s->invS);
    cudaFree(s->counts);
    free(s);
}

static int acg_init(void *ctx, const primal_qtensor *t, void **state, void *stream,
                    primal_err *err)
{
    ac_ctx *c = (ac_ctx *)ctx;
    cudaStream_t st = (cudaStream_t)stream;
    if (t->index == NULL || t->scale == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "adam_carry: tensor %s: needs indexed storage (bits %d, grid size %d)",
                           t->name, t->bits, t->grid_size);
    if (c->gpu == NULL) {
        c->gpu = calloc(1, sizeof(acg_scratch));
        if (c->gpu == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "adam_carry: out of memory");
    }
    acg_scratch *g = (acg_scratch *)c->gpu;
    size_t need = (size_t)part_floats(t->rows, t->cols) * sizeof(float);
    if (need > g->bytes) {
        cudaFree(g->part); /* synchronises the device: no call still reads the old one */
        g->part = NULL;
        g->bytes = 0;
        CU_TRY(cudaMalloc((void **)&g->part, need));
        g->bytes = need;
    }
    acg_state *s = (acg_state *)calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "adam_carry: tensor %s: out of memory", t->name);
    s->rows = t->rows;
    s->cols = t->cols;
    s->nblk = ac_nblk(c, t->cols);
    s->t_step = -1;
    *state = s;
    const size_t n = (size_t)(t->rows * t->cols), fr = (size_t)t->rows * sizeof(float),
                 fc = (size_t)t->cols * sizeof(float);
    struct {
        void **p;
        size_t bytes;
    } a[] = {{(void **)&s->resid, n},
             {(void **)&s->rlo, (size_t)ac_lo_bytes(c, t->rows, t->cols)},
             {(void **)&s->mom, n},
             {(void **)&s->mscale, (size_t)s->nblk * fr},
             {(void **)&s->vr, fr},
             {(void **)&s->vc, fc},
             {(void **)&s->racc, fr},
             {(void **)&s->cacc, fc},
             {(void **)&s->invS, sizeof(float)},
             {(void **)&s->counts, 2 * sizeof(unsigned long long)}};
    for (size_t k = 0; k < sizeof a / sizeof *a; k++) {
        if (a[k].bytes == 0)
            continue; /* rlo with 8-bit residuals */
        cudaError_t e = cudaMalloc(a[k].p, a[k].bytes);
        if (e == cudaSuccess)
            e = cudaMemsetAsync(*a[k].p, 0, a[k].bytes, st);
        if (e != cudaSuccess) {
            acg_free(ctx, t, s);
            *state = NULL;
            return primal_errf(err, PRIMAL_EDEVICE, "adam_carry: tensor %s: %zu bytes: %s",
                               t->name, a[k].bytes, cudaGetErrorString(e));
        }
    }
    return PRIMAL_OK;
}

static int acg_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                          int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                          primal_err *err)
{
    const ac_ctx *c = (const ac_ctx *)ctx;
    acg_state *s = (acg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
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
    if (nrows == 0)
        return PRIMAL_OK;
    const acg_scratch *g = (const acg_scratch *)c->gpu;
    const int64_t cols = t->cols, nbx = (cols + AC_TB - 1) / AC_TB;
    const int64_t nby = (nrows + AC_RPB - 1) / AC_RPB;
    float *rpart = g->part, *cpart = g->part + nrows * nbx;
    const uint64_t mstream =
        primal_rng_stream((uint64_t)t->id, (uint64_t)ai->step, AC_RNG_MOMENTUM);
    const uint64_t mcounter0 = (uint64_t)j * (uint64_t)(t->rows * t->cols);
    const int first = s->t <= 1;
    const float inv_bc2 = first ? 0.0f : (float)(1.0 / (1.0 - pow(c->beta2, (double)(s->t - 1))));
    ac_acc<<<dim3((unsigned)nbx, (unsigned)nby), AC_TB, 0, st>>>(
        s->mom, s->mscale, rpart, cpart, G, t->scale, s->vr, s->vc, s->invS, r0, nrows, cols,
        s->nblk, c->block, c->factored, j == 0 ? (float)c->beta1 : 1.0f,
        (float)(1.0 - c->beta1), inv_bc2, (float)c->eps, (float)(1.0 / sqrt(1.0 - c->beta2)),
        first, ai->seed, mstream, mcounter0);
    CU_TRY(cudaGetLastError());
    ac_partials<<<grid_for(nrows + cols), THREADS, 0, st>>>(s->racc, s->cacc, rpart, cpart, r0,
                                                            nrows, cols, nbx, nby);
    CU_TRY(cudaGetLastError());
    return PRIMAL_OK;
}

static int acg_step_common(void *ctx, void *state, const primal_qtensor *t,
                           const primal_step_info *si, primal_step_stats *host,
                           primal_step_stats *dev, void *stream, primal_err *err)
{
    const ac_ctx *c = (const ac_ctx *)ctx;
    acg_state *s = (acg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    const int64_t rows = t->rows, cols = t->cols;
    ac_prep<<<1, 1024, 0, st>>>(s->vr, s->vc, s->racc, s->cacc, s->invS, rows, cols,
                                (float)c->beta2, (float)(1.0 - c->beta2), (float)si->n_micro);
    CU_TRY(cudaGetLastError());
    const int64_t tt = s->t > 0 ? s->t : 1;
    const float inv_bc1 = (float)(1.0 / (1.0 - pow(c->beta1, (double)tt)));
    const float lr = (float)(c->lr * si->lr_mult), lrwd = (float)(c->lr * si->lr_mult * c->wd);
    const uint64_t rstream =
        primal_rng_stream((uint64_t)t->id, (uint64_t)si->step, AC_RNG_RESIDUAL);
    CU_TRY(cudaMemsetAsync(s->counts, 0, 2 * sizeof(unsigned long long), st));
    ac_step<<<grid_for(rows * ((cols + 1) / 2)), THREADS, 0, st>>>(
        s->resid, s->rlo, ac_lo_shift(c), s->mom, s->mscale, (uint8_t *)t->index, t->scale, t->grid, rows, cols, s->nblk,
        c->block, t->row_stride, t->bits, t->grid_size, inv_bc1, lr, lrwd, si->seed, rstream,
        s->counts);
    CU_TRY(cudaGetLastError());
    CU_TRY(step_counts(&s->counts[0], &s->counts[1], rows * cols, host, dev, st));
    return PRIMAL_OK;
}

static int acg_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                    primal_step_stats *stats, void *stream, primal_err *err)
{
    return acg_step_common(ctx, state, t, si, stats, NULL, stream, err);
}

static int acg_step_async(void *ctx, void *state, const primal_qtensor *t,
                          const primal_step_info *si, primal_step_stats *dstats, void *stream,
                          primal_err *err)
{
    return acg_step_common(ctx, state, t, si, NULL, dstats, stream, err);
}

static int acg_download(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                        void *stream, primal_err *err)
{
    const acg_state *s = (const acg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    uint8_t *p = (uint8_t *)buf;
    const size_t n = (size_t)(s->rows * s->cols), fr = (size_t)s->rows * sizeof(float),
                 fc = (size_t)s->cols * sizeof(float);
    const struct {
        const void *src;
        size_t bytes;
    } a[] = {{s->resid, n},  {s->rlo, (size_t)ac_lo_bytes((const ac_ctx *)ctx, s->rows, s->cols)},
             {s->mom, n},    {s->mscale, (size_t)s->nblk * fr}, {s->vr, fr}, {s->vc, fc},
             {s->racc, fr},  {s->cacc, fc}, {s->invS, sizeof(float)}};
    for (size_t k = 0; k < sizeof a / sizeof *a; k++) {
        if (a[k].bytes == 0)
            continue;
        CU_TRY(cudaMemcpyAsync(p, a[k].src, a[k].bytes, cudaMemcpyDeviceToHost, st));
        p += a[k].bytes;
    }
    CU_TRY(cudaStreamSynchronize(st));
    memcpy(p, &s->t, sizeof s->t);
    memcpy(p + sizeof s->t, &s->t_step, sizeof s->t_step);
    return PRIMAL_OK;
}

static int acg_upload(void *ctx, const primal_qtensor *t, void *state, const void *buf, size_t nb,
                      void *stream, primal_err *err)
{
    acg_state *s = (acg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    const size_t want = ac_state_bytes((const ac_ctx *)ctx, t->rows, t->cols);
    if (nb != want)
        return primal_errf(err, PRIMAL_EIO, "adam_carry: tensor %s: state is %zu bytes, expected %zu",
                           t->name, nb, want);
    const char *what = NULL;
    if (ac_state_check((const ac_ctx *)ctx, t->rows, t->cols, buf, &what) != 0)
        return primal_errf(err, PRIMAL_EIO, "adam_carry: tensor %s: the state holds %s", t->name,
                           what);
    const uint8_t *p = (const uint8_t *)buf;
    const size_t n = (size_t)(s->rows * s->cols), fr = (size_t)s->rows * sizeof(float),
                 fc = (size_t)s->cols * sizeof(float);
    const struct {
        void *dst;
        size_t bytes;
    } a[] = {{s->resid, n},  {s->rlo, (size_t)ac_lo_bytes((const ac_ctx *)ctx, s->rows, s->cols)},
             {s->mom, n},    {s->mscale, (size_t)s->nblk * fr}, {s->vr, fr}, {s->vc, fc},
             {s->racc, fr},  {s->cacc, fc}, {s->invS, sizeof(float)}};
    for (size_t k = 0; k < sizeof a / sizeof *a; k++) {
        if (a[k].bytes == 0)
            continue;
        CU_TRY(cudaMemcpyAsync(a[k].dst, p, a[k].bytes, cudaMemcpyHostToDevice, st));
        p += a[k].bytes;
    }
    CU_TRY(cudaStreamSynchronize(st)); /* buf is the caller's, valid only during the call */
    memcpy(&s->t, p, sizeof s->t);
    memcpy(&s->t_step, p + sizeof s->t, sizeof s->t_step);
    return PRIMAL_OK;
}

extern "C" const primal_policy_cuda_vt primal_adam_carry_cuda = {
    /* .size = */ sizeof(primal_policy_cuda_vt),
    /* .tensor_init = */ acg_init,
    /* .tensor_free = */ acg_free,
    /* .observe = */ NULL,
    /* .accumulate = */ acg_accumulate,
    /* .step = */ acg_step,
    /* .state_download = */ acg_download,
    /* .state_upload = */ acg_upload,
    /* .step_async = */ acg_step_async,
};
