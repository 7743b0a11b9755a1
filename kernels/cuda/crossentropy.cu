/* crossentropy.cu: per-position loss = logsumexp(logits) − logits[target], keeping logsumexp
 * for backward; the masked mean over the positions; and backward dlogits = (softmax(logits) −
 * onehot(target)) · d on positions with mask 1 (0 elsewhere), d = loss_scale / count, written as
 * float32 (possibly over the logits) or bfloat16 (the head's GEMM operand).  SPEC.md, "Models".
 *
 * Both work on one vocabulary slab [v0, v0 + nv) of logits at a time, so that the model never
 * holds (N, V) logits: forward merges each slab's max and sum into running ones (online
 * logsumexp across slabs, in a fixed order), and backward needs only the slab and lse.  One
 * warp per position: a slab row is a few thousand columns, too short for a block's
 * reductions to pay.  Where token rows over the whole vocabulary are at hand (the training
 * forward's head-ahead pass), cuda_crossentropy_rows does loss, lse and dlogits at once: rows
 * of up to 65536 columns in one block cluster that reads each logit once, longer ones in two
 * kernels (parts' stats, then merge and grad).  CPU twins: kernels/cpu/crossentropy.c.
 * No keys. */
#include <cooperative_groups.h>

#include "crossentropy.h"

namespace cg = cooperative_groups;

/* One warp per position.  While slabs remain, lse holds the running max and losses the running
 * sum (relative to it). */
template <typename L>
__global__ void crossentropy_forward_kernel(float *losses,          /* (N) */
                                            float *lse,             /* (N) */
                                            float *tl,              /* (N) target logits */
                                            const L *logits,        /* (N, nv) */
                                            const int32_t *targets, /* (N) */
                                            int64_t N, int64_t v0, int64_t nv, int first,
                                            int last)
{
    int64_t n = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (n >= N)
        return;
    const L *x = logits + n * nv;
    float m = -INFINITY, s = 0.0f;
    for (int64_t i = lane; i < nv; i += 32) {
        float v = cuda_ld(x, i);
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
            tl[n] = cuda_ld(x, t - v0);
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
                              const void *logits,     /* (N, nv) of lt: vocabulary [v0, v0 + nv) */
                              cuda_dtype lt,
                              const int32_t *targets, /* (N) in [0, V) */
                              int64_t v0, int64_t nv, int64_t V, int64_t N, cudaStream_t s,
                              primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    unsigned g = (unsigned)((N + 7) / 8);
    int first = v0 == 0, last = v0 + nv >= V;
    if (lt == CUDA_BF16)
        crossentropy_forward_kernel<<<g, 256, 0, s>>>(losses, lse, tl,
                                                       (const __nv_bfloat16 *)logits, targets, N,
                                                       v0, nv, first, last);
    else
        crossentropy_forward_kernel<<<g, 256, 0, s>>>(losses, lse, tl, (const float *)logits,
                                                       targets, N, v0, nv, first, last);
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

template <typename T, typename L>
__global__ void crossentropy_backward_kernel(T *dlogits,              /* (N, nv) */
                                             const L *logits,         /* (N, nv) */
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
        float p = dn == 0.0f ? 0.0f : expf(cuda_ld(logits, o + i) - l) * dn;
        cuda_st(dlogits, o + i, i == tgt ? p - dn : p);
    }
}

template <typename L>
static void ce_backward_launch(void *dlogits, cuda_dtype dt, const L *logits, const float *lse,
                               const int32_t *targets, const uint8_t *mask, float d, int64_t v0,
                               int64_t nv, int64_t N, cudaStream_t s)
{
    unsigned g = (unsigned)((N + 7) / 8);
    if (dt == CUDA_BF16)
        crossentropy_backward_kernel<<<g, 256, 0, s>>>((__nv_bfloat16 *)dlogits, logits, lse,
                                                        targets, mask, d, N, v0, nv);
    else
        crossentropy_backward_kernel<<<g, 256, 0, s>>>((float *)dlogits, logits, lse, targets,
                                                        mask, d, N, v0, nv);
}

/* dlogits of the slab [v0, v0 + nv) is written (not accumulated); of the logits' type it may
 * be the logits slab itself. */
int cuda_crossentropy_backward(void *dlogits,          /* (N, nv) of dt */
                               cuda_dtype dt,
                               const void *logits,     /* (N, nv) of lt */
                               cuda_dtype lt,
                               const float *lse,       /* (N) from forward */
                               const int32_t *targets, /* (N) */
                               const uint8_t *mask,    /* (N) 1: the position counts */
                               float d, int64_t v0, int64_t nv, int64_t N, cudaStream_t s,
                               primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    if (lt == CUDA_BF16)
        ce_backward_launch(dlogits, dt, (const __nv_bfloat16 *)logits, lse, targets, mask, d, v0,
                           nv, N, s);
    else
        ce_backward_launch(dlogits, dt, (const float *)logits, lse, targets, mask, d, v0, nv, N,
                           s);
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

/* A row's log-sum-exp from its P parts' (max, sum), merged in part order: every block of the
 * row gets the same bits. */
__device__ __forceinline__ float merge_lse(const float2 *st, int P)
{
    float M = -INFINITY, S = 0.0f;
    for (int q = 0; q < P; q++)
        M = fmaxf(M, st[q].x);
    for (int q = 0; q < P; q++)
        S += st[q].x == -INFINITY ? 0.0f : st[q].y * expf(st[q].x - M);
    return M + logf(S);
}

template <typename L>
__global__ void ce_rows_stats_kernel(float2 *stats,   /* (N, P) (max, sum) */
                                     const L *logits, /* (N, V) */
                                     int64_t V, int64_t span, int vec)
{
    __shared__ float sh[32];
    const int P = gridDim.y;
    const int64_t a = blockIdx.y * span, b = a + span < V ? a + span : V;
    const L *x = logits + (int64_t)blockIdx.x * V;
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
            online_add(&m, &s, cuda_ld(x, i));
    }
    float M = cuda_block_max(m, sh);
    s = m == -INFINITY ? 0.0f : s * expf(m - M);
    s = cuda_block_sum(s, sh);
    if (threadIdx.x == 0)
        stats[(int64_t)blockIdx.x * P + blockIdx.y] = make_float2(M, s);
}

template <typename T, typename L>
__global__ void ce_rows_grad_kernel(float *losses,          /* (N) */
                                    float *lse,             /* (N) */
                                    T *dlogits,             /* (N, V), may be logits */
                                    const L *logits,        /* (N, V) */
                                    const float2 *stats,    /* (N, P) */
                                    const int32_t *targets, /* (N) */
                                    const uint8_t *mask,    /* (N) */
                                    float d, int64_t V, int64_t span, int vec)
{
    const int P = gridDim.y;
    const int64_t n = blockIdx.x, o = n * V;
    const int64_t a = blockIdx.y * span, b = a + span < V ? a + span : V;
    const float l = merge_lse(stats + n * P, P);
    const int64_t tgt = targets[n];
    if (tgt >= a && tgt < b) {
        /* this block holds the target: read it before any thread overwrites it (in place) */
        if (threadIdx.x == 0) {
            lse[n] = l;
            losses[n] = l - cuda_ld(logits, o + tgt);
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
            float p = dn == 0.0f ? 0.0f : expf(cuda_ld(logits, o + i) - l) * dn;
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

/* Whole rows read once.  The pair above reads the logits twice (stats, then grad), and the
 * second read is as long as the first.  Here a row is split over a thread-block cluster of P
 * blocks (Hopper distributed shared memory) that keep their parts in registers: each block
 * reduces its part to (max, sum), publishes it in shared memory, and after cluster.sync() every
 * block copies the P pairs from their owners and merges them in the grad kernel's fixed order,
 * then writes its dlogits from the registers.  A thread holds the 16-byte chunks t, t + 256, ...
 * of its part (4 float32 logits or 8 bfloat16 ones a chunk), so a warp's load is 512 contiguous
 * bytes and a block moves the same bytes in either type: with half the bytes a logit, bf16
 * blocks take twice the columns rather than finishing twice as fast, since a block's fixed
 * costs (its reductions, the cluster barrier) would then weigh twice as much.  Each thread
 * writes only the columns it read, so dlogits may be the logits.  One cluster per row: V ≤ 8 ·
 * 256 · 8 chunks (65536 float32 columns, 131072 bf16), the portable cluster size. */
#define CE_ONCE_THREADS 256
#define CE_ONCE_CHUNKS 8 /* 16-byte chunks a thread holds */
#define CE_ONCE_PARTS 8

/* A 16-byte chunk of logits of type L: W of them, loaded, and unpacked to floats. */
template <typename L> struct ce_chunk;
template <> struct ce_chunk<float> {
    static constexpr int W = 4;
    __device__ static void unpack(const uint4 &u, float *e)
    {
        e[0] = __uint_as_float(u.x), e[1] = __uint_as_float(u.y);
        e[2] = __uint_as_float(u.z), e[3] = __uint_as_float(u.w);
    }
};
template <> struct ce_chunk<__nv_bfloat16> {
    static constexpr int W = 8;
    __device__ static void unpack(const uint4 &u, float *e)
    {
        const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
        for (int k = 0; k < 4; k++) {
            float2 f = __bfloat1622float2(h[k]);
            e[2 * k] = f.x, e[2 * k + 1] = f.y;
        }
    }
};

template <typename L> static constexpr int ce_part_cols()
{
    return CE_ONCE_THREADS * CE_ONCE_CHUNKS * ce_chunk<L>::W;
}

/* W dlogits from floats */
__device__ __forceinline__ void ce_st(float *p, const float *v, int W)
{
    reinterpret_cast<float4 *>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    if (W == 8)
        reinterpret_cast<float4 *>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void ce_st(__nv_bfloat16 *p, const float *v, int W)
{
    __nv_bfloat162 h[4];
    for (int k = 0; k < W / 2; k++)
        h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
    if (W == 8)
        *reinterpret_cast<uint4 *>(p) = *reinterpret_cast<const uint4 *>(h);
    else
        *reinterpret_cast<uint2 *>(p) = *reinterpret_cast<const uint2 *>(h);
}

template <typename T, typename L>
__global__ void __launch_bounds__(CE_ONCE_THREADS)
    ce_rows_once_kernel(float *losses,          /* (N) */
                        float *lse,             /* (N) */
                        T *dlogits,             /* (N, V), may be logits */
                        const L *logits,        /* (N, V) */
                        const int32_t *targets, /* (N) */
                        const uint8_t *mask,    /* (N) */
                        float d, int64_t V, int64_t span)
{
    constexpr int W = ce_chunk<L>::W;
    __shared__ float sh[32];
    __shared__ float2 part;                  /* this block's (max, sum), read by the cluster */
    __shared__ float2 parts[CE_ONCE_PARTS];  /* every block's, copied in */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    /* thread-block clusters need sm_90: ce_rows never launches this kernel on older GPUs
     * (ce_clusters), and this build of it for them is empty */
    (void)losses, (void)lse, (void)dlogits, (void)logits, (void)targets, (void)mask, (void)d,
        (void)V, (void)span, (void)W, (void)sh, (void)part, (void)parts;
    __trap();
#else
    cg::cluster_group cluster = cg::this_cluster();
    const int P = (int)cluster.num_blocks(), q = (int)cluster.block_rank();
    const int64_t n = blockIdx.x / P, a = q * span;
    /* columns [a, a + w) are this block's (w a multiple of 8); w ≤ 0 leaves it none */
    const int w = (int)((a + span < V ? a + span : V) - a);
    const int64_t tgt = targets[n];
    const int tc = tgt >= a && tgt < a + w ? (int)(tgt - a) : -1;
    const float dn = mask[n] ? d : 0.0f;
    const L *x = logits + n * V + a;

    uint4 v[CE_ONCE_CHUNKS];
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < CE_ONCE_CHUNKS; j++) {
        const int c = W * ((int)threadIdx.x + j * CE_ONCE_THREADS);
        if (c < w) {
            v[j] = *reinterpret_cast<const uint4 *>(x + c);
            float e[W];
            ce_chunk<L>::unpack(v[j], e);
            for (int k = 0; k < W; k++)
                m = fmaxf(m, e[k]);
        }
    }
    const float M = cuda_block_max(m, sh);
    float s = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
        for (int j = 0; j < CE_ONCE_CHUNKS; j++)
            if (W * ((int)threadIdx.x + j * CE_ONCE_THREADS) < w) {
                float e[W];
                ce_chunk<L>::unpack(v[j], e);
                for (int k = 0; k < W; k++)
                    s += expf(e[k] - M);
            }
    }
    s = cuda_block_sum(s, sh);
    if (threadIdx.x == 0)
        part = make_float2(M, s);
    cluster.sync();
    if ((int)threadIdx.x < P)
        parts[threadIdx.x] = *cluster.map_shared_rank(&part, (int)threadIdx.x);
    __syncthreads();
    /* done with the other blocks' shared memory; the wait before exit keeps ours alive until
     * they are done with it */
    cluster.barrier_arrive();

    const float l = merge_lse(parts, P);
#pragma unroll
    for (int j = 0; j < CE_ONCE_CHUNKS; j++) {
        const int c = W * ((int)threadIdx.x + j * CE_ONCE_THREADS);
        if (c < w) {
            float e[W];
            ce_chunk<L>::unpack(v[j], e);
            for (int k = 0; k < W; k++) {
                float p = dn == 0.0f ? 0.0f : expf(e[k] - l) * dn;
                if (c + k == tc) {
                    lse[n] = l;
                    losses[n] = l - e[k];
                    p -= dn;
                }
                e[k] = p;
            }
            ce_st(dlogits + n * V + a + c, e, W);
        }
    }
    cluster.barrier_wait();
#endif
}

/* Whether the current device launches thread-block clusters (compute capability 9.0 and newer),
 * asked once per process and device. */
static int ce_clusters(void)
{
    static int known[64], yes[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        (void)cudaGetLastError();
        return 0;
    }
    if (!known[dev]) {
        int v = 0;
        if (cudaDeviceGetAttribute(&v, cudaDevAttrClusterLaunch, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            v = 0;
        }
        yes[dev] = v != 0;
        known[dev] = 1;
    }
    return yes[dev];
}

/* One cluster of P blocks per row; V % 8 == 0, 16-byte aligned buffers, V ≤ CE_ONCE_PARTS ·
 * ce_part_cols<L>(). */
template <typename L>
static int ce_rows_once(float *losses, float *lse, void *dlogits, cuda_dtype dt, const L *logits,
                        const int32_t *targets, const uint8_t *mask, float d, int64_t V,
                        int64_t N, cudaStream_t s, primal_err *err)
{
    const int64_t pc = ce_part_cols<L>();
    int P = (int)((V + pc - 1) / pc);
    int64_t span = ((V + P - 1) / P + 7) / 8 * 8; /* ≤ pc */
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeClusterDimension;
    at[0].val.clusterDim.x = (unsigned)P;
    at[0].val.clusterDim.y = 1;
    at[0].val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)(P * N));
    cfg.blockDim = dim3(CE_ONCE_THREADS);
    cfg.stream = s;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    cudaError_t rc;
    if (dt == CUDA_BF16)
        rc = cudaLaunchKernelEx(&cfg, ce_rows_once_kernel<__nv_bfloat16, L>, losses, lse,
                                (__nv_bfloat16 *)dlogits, logits, targets, mask, d, V, span);
    else
        rc = cudaLaunchKernelEx(&cfg, ce_rows_once_kernel<float, L>, losses, lse, (float *)dlogits,
                                logits, targets, mask, d, V, span);
    if (rc != cudaSuccess) {
        (void)cudaGetLastError(); /* reported here; don't let the next launch check see it */
        return primal_errf(err, PRIMAL_EDEVICE, "%s:%d: kernel ce_rows_once (cluster of %d): %s",
                           __FILE__, __LINE__, P, cudaGetErrorString(rc));
    }
    CUDA_LAUNCHED("ce_rows_once", err);
    return PRIMAL_OK;
}

template <typename L>
static int ce_rows(float *losses, float *lse, void *dlogits, cuda_dtype dt, const L *logits,
                   const int32_t *targets, const uint8_t *mask, float d, int64_t V, int64_t N,
                   float *scratch, cudaStream_t s, primal_err *err)
{
    if (V > 0 && V % 8 == 0 && V <= CE_ONCE_PARTS * ce_part_cols<L>() &&
        cuda_aligned8(logits) && cuda_aligned8(dlogits) && N <= INT32_MAX / CE_ONCE_PARTS &&
        ce_clusters())
        return ce_rows_once(losses, lse, dlogits, dt, logits, targets, mask, d, V, N, s, err);
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

/* losses, lse and dlogits (written, in dt; of the logits' type it may be the logits themselves)
 * of N positions whose logits over the whole vocabulary (of lt) are at hand: the fused head of
 * primal_cuda_model_forward_train.  dlogits = (softmax − onehot) · d on positions with mask
 * 1, 0 elsewhere. */
int cuda_crossentropy_rows(float *losses, float *lse, void *dlogits, cuda_dtype dt,
                           const void *logits, cuda_dtype lt, const int32_t *targets,
                           const uint8_t *mask, float d, int64_t V, int64_t N, float *scratch,
                           cudaStream_t s, primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    if (lt == CUDA_BF16)
        return ce_rows(losses, lse, dlogits, dt, (const __nv_bfloat16 *)logits, targets, mask, d,
                       V, N, scratch, s, err);
    return ce_rows(losses, lse, dlogits, dt, (const float *)logits, targets, mask, d, V, N,
                   scratch, s, err);
}
