/* crossentropy.cu: per-position loss = logsumexp(logits) − logits[target] in one pass over the
 * vocabulary (online max and sum), keeping logsumexp for backward; the masked mean over the
 * positions; and backward dlogits = (softmax(logits) − onehot(target)) · d on positions with
 * mask 1 (0 elsewhere), d = loss_scale / count, written as float32 (possibly over the logits)
 * or bfloat16 (the head's GEMM operand).  SPEC.md, "Models".  One block per position.  CPU
 * twins: kernels/cpu/crossentropy.c.  No keys. */
#include "crossentropy.h"

__global__ void crossentropy_forward_kernel(float *losses,          /* (N) */
                                            float *lse,             /* (N) */
                                            const float *logits,    /* (N, V) */
                                            const int32_t *targets, /* (N) */
                                            int64_t V)
{
    __shared__ float sh[32];
    const float *x = logits + blockIdx.x * V;
    float m = -INFINITY, s = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        float v = x[i];
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    float M = cuda_block_max(m, sh);
    s = m == -INFINITY ? 0.0f : s * expf(m - M);
    s = cuda_block_sum(s, sh);
    if (threadIdx.x == 0) {
        float l = logf(s) + M;
        lse[blockIdx.x] = l;
        losses[blockIdx.x] = l - x[targets[blockIdx.x]];
    }
}

int cuda_crossentropy_forward(float *losses,          /* (N) */
                              float *lse,             /* (N) logsumexp, kept for backward */
                              const float *logits,    /* (N, V) */
                              const int32_t *targets, /* (N) in [0, V) */
                              int64_t N, int64_t V, cudaStream_t s, primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    crossentropy_forward_kernel<<<(unsigned)N, 512, 0, s>>>(losses, lse, logits, targets, V);
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
__global__ void crossentropy_backward_kernel(T *dlogits,              /* (N, V) */
                                             const float *logits,     /* (N, V) */
                                             const float *lse,        /* (N) */
                                             const int32_t *targets,  /* (N) */
                                             const uint8_t *mask,     /* (N) */
                                             float d, int64_t V)
{
    int64_t o = blockIdx.x * V;
    float l = lse[blockIdx.x];
    float dn = mask[blockIdx.x] ? d : 0.0f;
    int32_t tgt = targets[blockIdx.x];
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        float p = dn == 0.0f ? 0.0f : expf(logits[o + i] - l) * dn;
        cuda_st(dlogits, o + i, i == tgt ? p - dn : p);
    }
}

/* dlogits is written (not accumulated); in float32 it may be logits itself. */
int cuda_crossentropy_backward(void *dlogits,          /* (N, V) of dt */
                               cuda_dtype dt,
                               const float *logits,    /* (N, V) */
                               const float *lse,       /* (N) from forward */
                               const int32_t *targets, /* (N) */
                               const uint8_t *mask,    /* (N) 1: the position counts */
                               float d, int64_t N, int64_t V, cudaStream_t s, primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    if (dt == CUDA_BF16)
        crossentropy_backward_kernel<<<(unsigned)N, 512, 0, s>>>(
            (__nv_bfloat16 *)dlogits, logits, lse, targets, mask, d, V);
    else
        crossentropy_backward_kernel<<<(unsigned)N, 512, 0, s>>>((float *)dlogits, logits, lse,
                                                                 targets, mask, d, V);
    CUDA_LAUNCHED("crossentropy_backward", err);
    return PRIMAL_OK;
}
