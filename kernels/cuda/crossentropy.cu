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
    float M = cuda_warp_max(m);
    s = m == -INFINITY ? 0.0f : s * expf(m - M);
    s = cuda_warp_sum(s);
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

/* Forward and backward of whole rows at once, each row in P parts of span columns (a multiple
 * of 8) so that a few thousand rows still fill the GPU: the stats kernel leaves each part's
 * running max and sum, and the grad kernel merges a row's parts in a fixed order (every block
 * of the row alike: deterministic), then writes the loss and its part of dlogits.  vec: eight
 * columns a thread (V % 8 == 0). */
__device__ __forceinline__ void online_add(float *m, float *s, float v)
{
    if (v > *m) {
        *s = *s * expf(*m - v) + 1.0f;
        *m = v;
    } else {
        *s += expf(v - *m);
    }
}

__global__ void ce_rows_stats_kernel(float2 *stats,       /* (N, P) (max, sum) */
                                     const float *logits, /* (N, V) */
                                     int64_t V, int64_t span, int vec)
{
    __shared__ float sh[32];
    const int P = gridDim.y;
    const int64_t a = blockIdx.y * span, b = a + span < V ? a + span : V;
    const float *x = logits + (int64_t)blockIdx.x * V;
    float m = -INFINITY, s = 0.0f;
    if (vec) {
        for (int64_t i = a + 8 * (int64_t)threadIdx.x; i < b; i += 8 * (int64_t)blockDim.x) {
            float v[8];
            cuda_ld8(v, x + i);
            for (int k = 0; k < 8; k++)
                online_add(&m, &s, v[k]);
        }
    } else {
        for (int64_t i = a + threadIdx.x; i < b; i += blockDim.x)
            online_add(&m, &s, x[i]);
    }
    float M = cuda_block_max(m, sh);
    s = m == -INFINITY ? 0.0f : s * expf(m - M);
    s = cuda_block_sum(s, sh);
    if (threadIdx.x == 0)
        stats[(int64_t)blockIdx.x * P + blockIdx.y] = make_float2(M, s);
}

template <typename T>
__global__ void ce_rows_grad_kernel(float *losses,          /* (N) */
                                    float *lse,             /* (N) */
                                    T *dlogits,             /* (N, V), may be logits */
                                    const float *logits,    /* (N, V) */
                                    const float2 *stats,    /* (N, P) */
                                    const int32_t *targets, /* (N) */
                                    const uint8_t *mask,    /* (N) */
                                    float d, int64_t V, int64_t span, int vec)
{
    const int P = gridDim.y;
    const int64_t n = blockIdx.x, o = n * V;
    const int64_t a = blockIdx.y * span, b = a + span < V ? a + span : V;
    const float2 *st = stats + n * P;
    float M = -INFINITY, S = 0.0f;
    for (int q = 0; q < P; q++)
        M = fmaxf(M, st[q].x);
    for (int q = 0; q < P; q++)
        S += st[q].x == -INFINITY ? 0.0f : st[q].y * expf(st[q].x - M);
    const float l = M + logf(S);
    const int64_t tgt = targets[n];
    if (tgt >= a && tgt < b) {
        /* this block holds the target: read it before any thread overwrites it (in place) */
        if (threadIdx.x == 0) {
            lse[n] = l;
            losses[n] = l - logits[o + tgt];
        }
        __syncthreads();
    }
    const float dn = mask[n] ? d : 0.0f;
    if (vec) {
        for (int64_t i = a + 8 * (int64_t)threadIdx.x; i < b; i += 8 * (int64_t)blockDim.x) {
            float v[8];
            cuda_ld8(v, logits + o + i);
            for (int k = 0; k < 8; k++) {
                v[k] = dn == 0.0f ? 0.0f : expf(v[k] - l) * dn;
                if (i + k == tgt)
                    v[k] -= dn;
            }
            cuda_st8(dlogits + o + i, v);
        }
    } else {
        for (int64_t i = a + threadIdx.x; i < b; i += blockDim.x) {
            float p = dn == 0.0f ? 0.0f : expf(logits[o + i] - l) * dn;
            cuda_st(dlogits, o + i, i == tgt ? p - dn : p);
        }
    }
}

/* Parts a row of V logits is split into, and their span (a multiple of 8). */
static int ce_parts(int64_t V, int64_t *span)
{
    int64_t P = (V + 8191) / 8192;
    P = P < 1 ? 1 : P > CUDA_CE_PARTS_MAX ? CUDA_CE_PARTS_MAX : P;
    *span = ((V + P - 1) / P + 7) / 8 * 8;
    return (int)((V + *span - 1) / *span);
}

/* losses, lse and dlogits (written, in dt; in float32 it may be the logits themselves) of N
 * positions whose logits over the whole vocabulary are at hand: the fused head of
 * primal_cuda_model_forward_train.  dlogits = (softmax − onehot) · d on positions with mask
 * 1, 0 elsewhere. */
int cuda_crossentropy_rows(float *losses, float *lse, void *dlogits, cuda_dtype dt,
                           const float *logits, const int32_t *targets, const uint8_t *mask,
                           float d, int64_t V, int64_t N, float *scratch, cudaStream_t s,
                           primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    int64_t span;
    int P = ce_parts(V, &span);
    int vec = V % 8 == 0 && cuda_aligned8(logits) && cuda_aligned8(dlogits);
    dim3 grid((unsigned)N, (unsigned)P);
    ce_rows_stats_kernel<<<grid, 256, 0, s>>>((float2 *)scratch, logits, V, span, vec);
    CUDA_LAUNCHED("ce_rows_stats", err);
    if (dt == CUDA_BF16)
        ce_rows_grad_kernel<<<grid, 256, 0, s>>>(losses, lse, (__nv_bfloat16 *)dlogits, logits,
                                                 (const float2 *)scratch, targets, mask, d, V,
                                                 span, vec);
    else
        ce_rows_grad_kernel<<<grid, 256, 0, s>>>(losses, lse, (float *)dlogits, logits,
                                                 (const float2 *)scratch, targets, mask, d, V,
                                                 span, vec);
    CUDA_LAUNCHED("ce_rows_grad", err);
    return PRIMAL_OK;
}
