/* crossentropy.cu: per-position loss = logsumexp(logits) − logits[target], keeping logsumexp
 * for backward; the masked mean over the positions; and backward dlogits = (softmax(logits) −
 * onehot(target)) · d on positions with mask 1 (0 elsewhere), d = loss_scale / count, written as
 * float32 (possibly over the logits) or bfloat16 (the head's GEMM operand).  SPEC.md, "Models".
 *
 * Both work on one vocabulary slab [v0, v0 + nv) of logits at a time, so that the model never
 * holds (N, V) logits: forward merges each slab's max and sum into running ones (online
 * logsumexp across slabs, in a fixed order), and backward needs only the slab and lse.  One
 * warp per position: a slab row is a few thousand columns, too short for a block's
 * reductions to pay.  CPU twins: kernels/cpu/crossentropy.c.  No keys. */
#include "crossentropy.h"

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One warp per position.  While slabs remain, lse holds the running max and losses the running
 * sum (relative to it). */
__global__ void crossentropy_forward_kernel(float *losses,          /* (N) */
                                            float *lse,             /* (N) */
                                            float *tl,              /* (N) target logits */
                                            const float *logits,    /* (N, nv) */
                                            const int32_t *targets, /* (N) */
                                            int64_t N, int64_t v0, int64_t nv, int first,
                                            int last)
{
    int64_t n = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (n >= N)
        return;
    const float *x = logits + n * nv;
    float m = -INFINITY, s = 0.0f;
    for (int64_t i = lane; i < nv; i += 32) {
        float v = x[i];
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    float M = warp_max(m);
    s = m == -INFINITY ? 0.0f : s * expf(m - M);
    s = warp_sum(s);
    if (lane == 0) {
        float pm = first ? -INFINITY : lse[n], ps = first ? 0.0f : losses[n];
        float nm = fmaxf(pm, M);
        float ns = (pm == -INFINITY ? 0.0f : ps * expf(pm - nm)) +
                   (M == -INFINITY ? 0.0f : s * expf(M - nm));
        int64_t t = targets[n];
        if (t >= v0 && t < v0 + nv)
            tl[n] = x[t - v0];
        if (last) {
            float l = nm + logf(ns);
            lse[n] = l;
            losses[n] = l - tl[n];
        } else {
            lse[n] = nm;
            losses[n] = ns;
        }
    }
}

/* Call once per slab, v0 = 0 first and increasing, until v0 + nv = V; losses and lse are
 * final after the last call. */
int cuda_crossentropy_forward(float *losses,          /* (N) */
                              float *lse,             /* (N) logsumexp, kept for backward */
                              float *tl,              /* (N) scratch */
                              const float *logits,    /* (N, nv): vocabulary [v0, v0 + nv) */
                              const int32_t *targets, /* (N) in [0, V) */
                              int64_t v0, int64_t nv, int64_t V, int64_t N, cudaStream_t s,
                              primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    crossentropy_forward_kernel<<<(unsigned)((N + 7) / 8), 256, 0, s>>>(
        losses, lse, tl, logits, targets, N, v0, nv, v0 == 0, v0 + nv >= V);
    CUDA_LAUNCHED("crossentropy_forward", err);
    return PRIMAL_OK;
}

__global__ void loss_mean_kernel(float *out,           /* (1) */
                                 const float *losses,  /* (N) */
                                 const uint8_t *mask,  /* (N) */
                                 int64_t N, int64_t count)
{
    __shared__ double sh[32];
    double acc = 0.0;
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x)
        if (mask[n])
            acc += losses[n];
    acc = cuda_block_sum(acc, sh);
    if (threadIdx.x == 0)
        *out = count > 0 ? (float)(acc / (double)count) : 0.0f;
}

int cuda_loss_mean(float *out, const float *losses, const uint8_t *mask, int64_t N,
                   int64_t count, cudaStream_t s, primal_err *err)
{
    loss_mean_kernel<<<1, 1024, 0, s>>>(out, losses, mask, N, count);
    CUDA_LAUNCHED("loss_mean", err);
    return PRIMAL_OK;
}

template <typename T>
__global__ void crossentropy_backward_kernel(T *dlogits,              /* (N, nv) */
                                             const float *logits,     /* (N, nv) */
                                             const float *lse,        /* (N) */
                                             const int32_t *targets,  /* (N) */
                                             const uint8_t *mask,     /* (N) */
                                             float d, int64_t N, int64_t v0, int64_t nv)
{
    int64_t n = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (n >= N)
        return;
    int64_t o = n * nv;
    float l = lse[n];
    float dn = mask[n] ? d : 0.0f;
    int64_t tgt = targets[n] - v0;
    for (int64_t i = lane; i < nv; i += 32) {
        float p = dn == 0.0f ? 0.0f : expf(logits[o + i] - l) * dn;
        cuda_st(dlogits, o + i, i == tgt ? p - dn : p);
    }
}

/* dlogits of the slab [v0, v0 + nv) is written (not accumulated); in float32 it may be the
 * logits slab itself. */
int cuda_crossentropy_backward(void *dlogits,          /* (N, nv) of dt */
                               cuda_dtype dt,
                               const float *logits,    /* (N, nv) */
                               const float *lse,       /* (N) from forward */
                               const int32_t *targets, /* (N) */
                               const uint8_t *mask,    /* (N) 1: the position counts */
                               float d, int64_t v0, int64_t nv, int64_t N, cudaStream_t s,
                               primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    if (dt == CUDA_BF16)
        crossentropy_backward_kernel<<<(unsigned)((N + 7) / 8), 256, 0, s>>>(
            (__nv_bfloat16 *)dlogits, logits, lse, targets, mask, d, N, v0, nv);
    else
        crossentropy_backward_kernel<<<(unsigned)((N + 7) / 8), 256, 0, s>>>(
            (float *)dlogits, logits, lse, targets, mask, d, N, v0, nv);
    CUDA_LAUNCHED("crossentropy_backward", err);
    return PRIMAL_OK;
}
