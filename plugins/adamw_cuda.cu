/* adamw_cuda.cu: the GPU entry points of adamw (primal/policy_cuda.h).
 *
 * SPEC.md, "The four plugin kinds" (baselines); the semantics, keys and defaults are those of
 * plugins/adamw.c (lr 1e-3, beta1 0.9, beta2 0.95, eps 1e-8, weight_decay 0.1), and this file
 * computes the same weights and moments from the same gradients, bit for bit:
 * - the per-step constants (lr * lr_mult, the bias corrections, the decay factor, clip_scale as
 *   a float) are computed on the host in double exactly as adamw.c does, then rounded to float;
 * - the per-weight update (plugins/adamw_update.cuh, shared with latent_adamw) is adamw.c's
 *   float expression, one IEEE operation at a time, written with __fmul_rn / __fadd_rn /
 *   __fdiv_rn / __fsqrt_rn so that nvcc cannot contract a multiply and an add into an FMA (the
 *   CPU build, -std=c11 without -march, rounds each one).
 * - accumulate's gsum += G is one float add per weight, the same in any thread order.
 * Storage: t->dense is the device float32 W (rows, cols).
 * State: the host struct is the CPU's aw_state, field for field (device pointers for m, v and
 * gsum; t on the host), since the core sizes the checkpoint with the CPU's state_bytes(), which
 * reads n; state_download writes the CPU's state_save bytes (m, v, gsum, then t).
 * No entry point synchronises except state_download, which waits for its own copies to land in
 * the caller's buffer (step has no counts to return); tensor_init/tensor_free use cudaMalloc /
 * cudaFree, which may synchronise. */
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <primal/policy_cuda.h>

#include "adamw_update.cuh"
#include "step_counts.cuh"

#define THREADS 256
#define MAX_BLOCKS 4096

/* Must match adamw.c: create() fills it and both halves read it. */
typedef struct aw_ctx {
    double lr, beta1, beta2, eps, wd;
} aw_ctx;

/* The CPU's aw_state, field for field (its state_bytes() reads n). */
typedef struct aw_state {
    int64_t n;
    float *m, *v, *gsum; /* device (rows, cols) each */
    int64_t t;
} aw_state;

#define CU_TRY(call)                                                                           \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess)                                                                 \
            return primal_errf(err, PRIMAL_EDEVICE, "%s:%d: adamw: tensor %s: %s: %s",         \
                               __FILE__, __LINE__, t->name, #call, cudaGetErrorString(e_));    \
    } while (0)

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + THREADS - 1) / THREADS;
    return (unsigned)(b < 1 ? 1 : b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

/* ------------------------------------------------------------------------------------------ */
/* Entry points (the kernels are adamw_update.cuh's)                                        */

static void awg_free(aw_state *s)
{
    if (s == NULL)
        return;
    cudaFree(s->m);
    cudaFree(s->v);
    cudaFree(s->gsum);
    free(s);
}

static int awg_tensor_init(void *ctx, const primal_qtensor *t, void **state, void *stream,
                           primal_err *err)
{
    (void)ctx;
    cudaStream_t st = (cudaStream_t)stream;
    if (t->dense == NULL || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "adamw: tensor %s: needs dense storage (float32 weights), got bits %d",
                           t->name, t->bits);
    aw_state *s = (aw_state *)calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "adamw: tensor %s: out of memory", t->name);
    s->n = t->rows * t->cols;
    const size_t nb = (size_t)s->n * sizeof(float);
    cudaError_t e = cudaMalloc((void **)&s->m, nb);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->v, nb);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->gsum, nb);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->m, 0, nb, st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->v, 0, nb, st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->gsum, 0, nb, st);
    if (e != cudaSuccess) {
        awg_free(s);
        return primal_errf(err, e == cudaErrorMemoryAllocation ? PRIMAL_ENOMEM : PRIMAL_EDEVICE,
                           "adamw: tensor %s: device state for %lld weights: %s", t->name,
                           (long long)t->rows * t->cols, cudaGetErrorString(e));
    }
    *state = s;
    return PRIMAL_OK;
}

static void awg_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    awg_free((aw_state *)state);
}

static int awg_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                          int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                          primal_err *err)
{
    (void)ctx;
    (void)ai;
    aw_state *s = (aw_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR, "adamw: tensor %s: rows [%lld,%lld) outside [0,%lld)",
                           t->name, (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    const int64_t n = nrows * t->cols;
    if (n == 0)
        return PRIMAL_OK;
    adamw_accum_kernel<<<grid_for(n), THREADS, 0, st>>>(s->gsum + r0 * t->cols, G, n);
    CU_TRY(cudaGetLastError());
    return PRIMAL_OK;
}

/* step and step_async: the counts to the host (stats) or to the core's device slot (dstats) */
static int awg_step_to(void *ctx, void *state, const primal_qtensor *t,
                       const primal_step_info *si, primal_step_stats *stats,
                       primal_step_stats *dstats, void *stream, primal_err *err)
{
    const aw_ctx *c = (const aw_ctx *)ctx;
    aw_state *s = (aw_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    s->t++;
    /* adamw.c's constants, in the same double arithmetic */
    const adamw_consts k = adamw_consts_for(c->lr * si->lr_mult, c->beta1, c->beta2, c->eps,
                                            c->wd, s->t, si->clip_scale);
    adamw_update_kernel<<<grid_for(s->n), THREADS, 0, st>>>(t->dense, s->m, s->v, s->gsum, k,
                                                            s->n);
    CU_TRY(cudaGetLastError());
    /* nothing to count, so no sync: the update stays queued on the stream */
    CU_TRY(step_counts(NULL, NULL, s->n, stats, dstats, st));
    return PRIMAL_OK;
}

static int awg_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                    primal_step_stats *stats, void *stream, primal_err *err)
{
    return awg_step_to(ctx, state, t, si, stats, NULL, stream, err);
}

static int awg_step_async(void *ctx, void *state, const primal_qtensor *t,
                          const primal_step_info *si, primal_step_stats *dstats, void *stream,
                          primal_err *err)
{
    return awg_step_to(ctx, state, t, si, NULL, dstats, stream, err);
}

static int awg_state_download(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                              void *stream, primal_err *err)
{
    (void)ctx;
    const aw_state *s = (const aw_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    const size_t nb = (size_t)s->n * sizeof(float);
    uint8_t *p = (uint8_t *)buf;
    CU_TRY(cudaMemcpyAsync(p, s->m, nb, cudaMemcpyDeviceToHost, st));
    CU_TRY(cudaMemcpyAsync(p + nb, s->v, nb, cudaMemcpyDeviceToHost, st));
    CU_TRY(cudaMemcpyAsync(p + 2 * nb, s->gsum, nb, cudaMemcpyDeviceToHost, st));
    memcpy(p + 3 * nb, &s->t, sizeof s->t);
    CU_TRY(cudaStreamSynchronize(st));
    return PRIMAL_OK;
}

static int awg_state_upload(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                            size_t n, void *stream, primal_err *err)
{
    (void)ctx;
    aw_state *s = (aw_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    const size_t nb = (size_t)s->n * sizeof(float), want = 3 * nb + sizeof(int64_t);
    if (n != want)
        return primal_errf(err, PRIMAL_EIO, "adamw: tensor %s: state is %zu bytes, expected %zu",
                           t->name, n, want);
    const uint8_t *p = (const uint8_t *)buf;
    /* from pageable memory the copy has left buf when the call returns */
    CU_TRY(cudaMemcpyAsync(s->m, p, nb, cudaMemcpyHostToDevice, st));
    CU_TRY(cudaMemcpyAsync(s->v, p + nb, nb, cudaMemcpyHostToDevice, st));
    CU_TRY(cudaMemcpyAsync(s->gsum, p + 2 * nb, nb, cudaMemcpyHostToDevice, st));
    memcpy(&s->t, p + 3 * nb, sizeof s->t);
    return PRIMAL_OK;
}

extern "C" {

extern const primal_policy_cuda_vt primal_adamw_cuda;
const primal_policy_cuda_vt primal_adamw_cuda = {
    sizeof(primal_policy_cuda_vt), awg_tensor_init, awg_tensor_free,    NULL,
    awg_accumulate,                awg_step,        awg_state_download, awg_state_upload,
    awg_step_async,
};

const primal_policy_cuda_vt *primal_adamw_cuda_vt(void) { return &primal_adamw_cuda; }
}
