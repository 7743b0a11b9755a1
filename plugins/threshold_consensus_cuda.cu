/* threshold_consensus_cuda.cu: the GPU entry points of threshold_consensus (primal/policy_cuda.h).
 *
 * SPEC.md, "Flip policies", threshold_consensus; the semantics, keys and defaults are those of
 * plugins/threshold_consensus.c (threshold 20, decay 0.95, stride 1 | dynamic, block 1,
 * max_flip_fraction 1, cooldown 0), and this file makes the same flips, votes and cooldowns from
 * the same gradients, bit for bit:
 * - max|G| is exact in any order (an atomicMax on the float's bits, NaN skipped as the CPU's
 *   `a > m` skips it); pressure = trunc((100 * g) / max|G|) and decay = trunc(votes * decay) are
 *   single IEEE float operations, written with __fmul_rn / __fdiv_rn so nvcc cannot contract
 *   them.
 * - the dynamic stride's sum of |i - centre| is an integer, summed exactly with 64-bit atomics;
 *   the CPU's double running sum is exact as well below 2^53.
 * - max_flip_fraction: a histogram of the candidates' keys picks the cut key and how many units
 *   of that key may still fire (one 1024-thread block scans the 32761 bins); the units of the cut
 *   key fire in flat order (ties to the lower index), ranked by per-chunk counts and a prefix
 *   scan, as the CPU's row-major loop does.
 * State: the host struct starts with the CPU's tc_state (device pointers in place of host ones),
 * since the core sizes the checkpoint with the CPU's state_bytes(), which reads n and cool_bytes;
 * state_download writes the CPU's state_save bytes (votes int16, then the cooldown counters).
 * Scratch: with block > 1 or max_flip_fraction < 1, one byte per unit (fire flags); with
 * max_flip_fraction < 1 also a 256 KiB histogram and 8 bytes per 256 units.
 * Only step() synchronises its stream (to return the counts); state_download waits for its own
 * copies to land in the caller's buffer; tensor_init/tensor_free use cudaMalloc/cudaFree, which
 * may synchronise the device (tensor_free gets no stream for a stream-ordered free). */
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <primal/policy_cuda.h>

#include "index_cuda.cuh"
#include "step_counts.cuh"

#define VOTE_MAX 32760
#define STRIDE_DYNAMIC 0
#define THREADS 256
#define MAX_BLOCKS 4096
#define HIST_SHARED 4096 /* low keys counted in shared memory first */

/* Must match threshold_consensus.c: create() fills it and both halves read it. */
typedef struct tc_ctx {
    int threshold;
    float decay;
    int stride;
    int block;
    double max_flip_fraction;
    int cooldown;
} tc_ctx;

/* The CPU's tc_state, field for field (its state_bytes() reads n and cool_bytes). */
typedef struct tc_state {
    int64_t n;
    int16_t *votes; /* device (rows, cols) */
    void *cool;     /* device (rows, cols) uint8 or uint16; NULL when cooldown == 0 */
    int cool_bytes;
    float gmax; /* unused here: max|G| lives on the device */
    int64_t gmax_step;
    int gmax_micro;
    int gmax_valid;
} tc_state;

/* Device scalars, one allocation per tensor. */
typedef struct tc_small {
    unsigned long long flips, saturated; /* step counts */
    unsigned long long dynsum;           /* sum |index - centre| for the dynamic stride */
    unsigned long long ncand;            /* candidates this step (capped mode) */
    long long cut, quota;                /* the cap's cut key and how many of it may fire */
    unsigned int gmax;                   /* max|G| of the observed micro-batch, float bits */
    unsigned int gmax_chunk;             /* a chunk's own max|G| (no observe) */
} tc_small;

typedef struct tcg_state {
    tc_state base; /* first */
    tc_small *small;
    uint8_t *fire;                /* (units) fire flags; NULL when block == 1 and uncapped */
    unsigned long long *hist;     /* (VOTE_MAX + 1) capped mode only */
    unsigned long long *tie;      /* (n_chunks) ties per chunk, then their offsets */
    int64_t units, n_chunks, cap;
    int capped;
} tcg_state;

#define CU_TRY(call)                                                                           \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess)                                                                 \
            return primal_errf(err, PRIMAL_EDEVICE,                                            \
                               "%s:%d: threshold_consensus: tensor %s: %s: %s", __FILE__,      \
                               __LINE__, t->name, #call, cudaGetErrorString(e_));              \
    } while (0)

/* One block a row, up to MAX_BLOCKS (then blocks loop over rows). */
static unsigned rows_grid(int64_t rows)
{
    return (unsigned)(rows < 1 ? 1 : rows > MAX_BLOCKS ? MAX_BLOCKS : rows);
}

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + THREADS - 1) / THREADS;
    return (unsigned)(b < 1 ? 1 : b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

/* ------------------------------------------------------------------------------------------ */
/* Device helpers                                                                             */

__device__ __forceinline__ int cool_get(const void *cool, int cool_bytes, int64_t i)
{
    if (cool == NULL)
        return 0;
    return cool_bytes == 1 ? ((const uint8_t *)cool)[i] : ((const uint16_t *)cool)[i];
}

__device__ __forceinline__ void cool_set(void *cool, int cool_bytes, int64_t i, int v)
{
    if (cool_bytes == 1)
        ((uint8_t *)cool)[i] = (uint8_t)v;
    else
        ((uint16_t *)cool)[i] = (uint16_t)v;
}

/* The candidate key of the unit of len weights at flat index i, or -1 (threshold_consensus.c,
 * unit_key). */
__device__ __forceinline__ int unit_key(const int16_t *votes, const void *cool, int cool_bytes,
                                        int threshold, int block, int64_t i, int64_t len)
{
    if (block == 1) {
        int a = abs((int)votes[i]);
        return a >= threshold && cool_get(cool, cool_bytes, i) == 0 ? a : -1;
    }
    int64_t sum = 0;
    for (int64_t j = 0; j < len; j++)
        sum += abs((int)votes[i + j]);
    return sum >= (int64_t)threshold * len ? (int)(sum / len) : -1;
}

__device__ __forceinline__ int unit_key_of(const int16_t *votes, const void *cool,
                                           int cool_bytes, int threshold, int block, int64_t u,
                                           int64_t cols, int64_t bpr)
{
    int64_t r = u / bpr, c0 = (u - r * bpr) * block;
    int64_t len = cols - c0 < block ? cols - c0 : block;
    return unit_key(votes, cool, cool_bytes, threshold, block, r * cols + c0, len);
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels                                                                                    */

/* *gmax = max(*gmax, max|G|), NaN skipped.  vec: four floats a load (n % 4 == 0, G 16-byte
 * aligned), so that each thread has more bytes in flight. */
__global__ void tc_absmax(unsigned int *gmax, /* (1) float bits, in/out */
                          const float *G,     /* (n) */
                          int64_t n, int vec)
{
    float m = 0.0f;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    if (vec) {
        const float4 *G4 = (const float4 *)G;
        for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n / 4; i += step) {
            const float4 g = G4[i];
            m = fmaxf(m, fmaxf(fmaxf(fabsf(g.x), fabsf(g.y)), fmaxf(fabsf(g.z), fabsf(g.w))));
        }
    } else {
        for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += step)
            m = fmaxf(m, fabsf(G[i]));
    }
    /* over the block first: one atomic per block (see block_add2) */
    __shared__ float sh[32];
    for (int o = 16; o > 0; o >>= 1)
        m = fmaxf(m, __shfl_down_sync(0xffffffffu, m, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0)
        sh[warp] = m;
    __syncthreads();
    if (warp != 0)
        return;
    m = lane < nw ? sh[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        m = fmaxf(m, __shfl_down_sync(0xffffffffu, m, o));
    /* non-negative floats order as their bits do */
    if (lane == 0 && m > 0.0f)
        atomicMax(gmax, __float_as_uint(m));
}

/* One weight's vote plus trunc(100 * g / gmax), saturating; unchanged when that is NaN. */
__device__ __forceinline__ int16_t vote_one(int16_t vote, float g, float sg, float gmax)
{
    float x = __fdiv_rn(__fmul_rn(100.0f, __fmul_rn(g, sg)), gmax);
    if (x != x)
        return vote;
    int v = vote + (int)truncf(x);
    return (int16_t)(v > VOTE_MAX ? VOTE_MAX : v < -VOTE_MAX ? -VOTE_MAX : v);
}

/* votes += trunc(100 * g / gmax), saturating (threshold_consensus.c, tc_vote_rows).  Blocks over
 * rows, threads over W columns each: W = 8 (cols % 8 == 0, aligned rows) moves votes and G
 * 16 bytes at a time, so that a thread has enough loads in flight; W = 1 otherwise. */
template <int W>
__global__ void tc_vote(int16_t *votes,            /* (nrows, cols) in/out */
                        const float *G,            /* (nrows, cols) dL/dW */
                        const float *scale,        /* (nrows) */
                        const unsigned int *gmax_bits, /* (1) */
                        int64_t nrows, int64_t cols)
{
    const float gmax = __uint_as_float(*gmax_bits);
    if (!(gmax > 0.0f))
        return;
    for (int64_t r = blockIdx.x; r < nrows; r += gridDim.x) {
        const float sg = scale[r] < 0.0f ? -1.0f : 1.0f;
        for (int64_t c = (int64_t)threadIdx.x * W; c < cols; c += (int64_t)blockDim.x * W) {
            const int64_t i = r * cols + c;
            if (W == 1) {
                votes[i] = vote_one(votes[i], G[i], sg, gmax);
                continue;
            }
            const float4 g0 = *(const float4 *)(G + i), g1 = *(const float4 *)(G + i + 4);
            union {
                uint4 u;
                int16_t v[8];
            } b;
            b.u = *(const uint4 *)(votes + i);
            const float g[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
            for (int k = 0; k < 8; k++)
                b.v[k] = vote_one(b.v[k], g[k], sg, gmax);
            *(uint4 *)(votes + i) = b.u;
        }
    }
}

/* *sum += sum |index - centre| over the tensor. */
__global__ void tc_dynsum(unsigned long long *sum, /* (1) in/out */
                          const uint8_t *index,    /* (rows, row_stride) packed */
                          int64_t row_stride, int bits, int64_t rows, int64_t cols, int centre)
{
    unsigned long long a = 0;
    const int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols;
        a += (unsigned long long)abs(index_load(index + r * row_stride, bits, i - r * cols) -
                                     centre);
    }
    block_add2(sum, NULL, a, 0);
}

/* hist[key]++ and ncand++ for every candidate unit.  Keys below HIST_SHARED count in a
 * per-block shared histogram first, and the lanes of a warp with equal keys add once. */
__global__ void tc_hist(unsigned long long *hist,  /* (VOTE_MAX + 1) in/out */
                        unsigned long long *ncand, /* (1) in/out */
                        const int16_t *votes,      /* (rows, cols) */
                        const void *cool,          /* (rows, cols) or NULL */
                        int cool_bytes, int threshold, int block, int64_t units, int64_t cols,
                        int64_t bpr)
{
    __shared__ unsigned int sh[HIST_SHARED];
    for (int k = threadIdx.x; k < HIST_SHARED; k += blockDim.x)
        sh[k] = 0;
    __syncthreads();
    const unsigned lane = threadIdx.x & 31;
    unsigned long long c = 0;
    for (int64_t base = blockIdx.x * (int64_t)blockDim.x; base < units;
         base += (int64_t)gridDim.x * blockDim.x) {
        const int64_t u = base + threadIdx.x;
        const int k = u < units ? unit_key_of(votes, cool, cool_bytes, threshold, block, u, cols,
                                              bpr)
                                : -1;
        const unsigned peers = __match_any_sync(0xffffffffu, k);
        if (k >= 0) {
            c++;
            if (lane == (unsigned)(__ffs(peers) - 1)) {
                if (k < HIST_SHARED)
                    atomicAdd(&sh[k], (unsigned)__popc(peers));
                else
                    atomicAdd(&hist[k], (unsigned long long)__popc(peers));
            }
        }
    }
    __syncthreads();
    for (int k = threadIdx.x; k < HIST_SHARED; k += blockDim.x)
        if (sh[k] != 0)
            atomicAdd(&hist[k], (unsigned long long)sh[k]);
    block_add2(ncand, NULL, c, 0);
}

/* The cap: walking the keys down from VOTE_MAX, the first key at which the running count
 * reaches cap is the cut, and quota = cap - units above it.  One block of 1024 threads, 32 bins
 * each. */
__global__ void tc_select(long long *cut, long long *quota,     /* (1), (1) out */
                          const unsigned long long *hist,       /* (VOTE_MAX + 1) */
                          const unsigned long long *ncand,      /* (1) */
                          long long cap)
{
    __shared__ unsigned long long part[1024];
    const int t = threadIdx.x;
    if (*ncand <= (unsigned long long)cap) {
        if (t == 0) {
            *cut = 0;
            *quota = LLONG_MAX;
        }
        return;
    }
    unsigned long long s = 0;
    for (int j = 0; j < 32; j++) {
        int p = t * 32 + j; /* position in descending key order */
        if (p <= VOTE_MAX)
            s += hist[VOTE_MAX - p];
    }
    part[t] = s;
    __syncthreads();
    for (int o = 1; o < 1024; o <<= 1) {
        unsigned long long x = t >= o ? part[t - o] : 0;
        __syncthreads();
        part[t] += x;
        __syncthreads();
    }
    unsigned long long above = t > 0 ? part[t - 1] : 0;
    if (above < (unsigned long long)cap && part[t] >= (unsigned long long)cap) {
        for (int j = 0; j < 32; j++) {
            int k = VOTE_MAX - (t * 32 + j);
            if (above + hist[k] >= (unsigned long long)cap) {
                *cut = k;
                *quota = cap - (long long)above;
                break;
            }
            above += hist[k];
        }
    }
}

/* tie[b] = units of chunk b (THREADS units) whose key equals the cut. */
__global__ void tc_tiecount(unsigned long long *tie, /* (n_chunks) out */
                            const int16_t *votes, const void *cool, int cool_bytes,
                            const long long *cut, const long long *quota, int threshold,
                            int block, int64_t units, int64_t cols, int64_t bpr)
{
    if (*quota == LLONG_MAX) /* uncapped this step: every candidate fires */
        return;
    int64_t u = blockIdx.x * (int64_t)THREADS + threadIdx.x;
    int k = u < units ? unit_key_of(votes, cool, cool_bytes, threshold, block, u, cols, bpr) : -1;
    int n = __syncthreads_count(k >= 0 && k == *cut);
    if (threadIdx.x == 0)
        tie[blockIdx.x] = (unsigned long long)n;
}

/* tie[] -> its exclusive prefix sums, in place.  One block of 1024 threads. */
__global__ void tc_tiescan(unsigned long long *tie, /* (n) in/out */
                           const long long *quota, int64_t n)
{
    __shared__ unsigned long long part[1024];
    if (*quota == LLONG_MAX)
        return;
    const int t = threadIdx.x;
    const int64_t per = (n + 1023) / 1024, lo = t * per, hi = lo + per < n ? lo + per : n;
    unsigned long long s = 0;
    for (int64_t i = lo; i < hi; i++)
        s += tie[i];
    part[t] = s;
    __syncthreads();
    for (int o = 1; o < 1024; o <<= 1) {
        unsigned long long x = t >= o ? part[t - o] : 0;
        __syncthreads();
        part[t] += x;
        __syncthreads();
    }
    unsigned long long off = t > 0 ? part[t - 1] : 0;
    for (int64_t i = lo; i < hi; i++) {
        unsigned long long c = tie[i];
        tie[i] = off;
        off += c;
    }
}

/* fire[u] for every unit: key > cut, or key == cut within the quota in flat order.  Uncapped
 * (capped == 0): every candidate.  Chunks of THREADS units, one per block. */
__global__ void tc_decide(uint8_t *fire,                     /* (units) out */
                          const int16_t *votes, const void *cool, int cool_bytes,
                          const long long *cut_p, const long long *quota_p,
                          const unsigned long long *tie_off, /* (n_chunks) */
                          int capped, int threshold, int block, int64_t units, int64_t cols,
                          int64_t bpr)
{
    __shared__ int warp_n[THREADS / 32];
    const int64_t u = blockIdx.x * (int64_t)THREADS + threadIdx.x;
    int k = u < units ? unit_key_of(votes, cool, cool_bytes, threshold, block, u, cols, bpr) : -1;
    if (!capped) {
        if (u < units)
            fire[u] = k >= 0;
        return;
    }
    const long long cut = *cut_p, quota = *quota_p;
    if (quota == LLONG_MAX) {
        if (u < units)
            fire[u] = k >= 0 && k >= cut;
        return;
    }
    const int eq = k >= 0 && k == cut;
    const unsigned lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const unsigned bal = __ballot_sync(0xffffffffu, eq);
    if (lane == 0)
        warp_n[w] = __popc(bal);
    __syncthreads();
    long long rank = (long long)tie_off[blockIdx.x] + __popc(bal & ((1u << lane) - 1u));
    for (unsigned j = 0; j < w; j++)
        rank += warp_n[j];
    if (u < units)
        fire[u] = k > cut || (eq && rank < quota);
}

/* What tc_apply does to one weight: its new vote, index and cooldown, and the counts. */
__device__ __forceinline__ int16_t apply_one(int v, int cd, int f, int *idx, int *moved,
                                             void *cool, int cool_bytes, int64_t i, int stride,
                                             int top, float decay, int cooldown,
                                             unsigned long long *nf, unsigned long long *ns)
{
    if (f && cd == 0) {
        int to = v > 0 ? *idx - stride : v < 0 ? *idx + stride : *idx;
        to = to < 0 ? 0 : to > top ? top : to;
        if (to != *idx) {
            *idx = to;
            *moved = 1;
            (*nf)++;
            if (cool != NULL)
                cool_set(cool, cool_bytes, i, cooldown);
        }
        return 0;
    }
    const int16_t nv = (int16_t)truncf(__fmul_rn((float)v, decay));
    if (cd > 0)
        cool_set(cool, cool_bytes, i, cd - 1);
    if (nv == VOTE_MAX || nv == -VOTE_MAX)
        (*ns)++;
    return nv;
}

/* Move the fired weights, reset their votes and start their cooldown; decay the rest.  Blocks
 * over rows, threads over W columns (pairs of them, so that a 4-bit index byte has one writer):
 * W = 8 (cols % 8 == 0, aligned rows) reads and writes the votes 16 bytes at a time, W = 2
 * otherwise. */
template <int W>
__global__ void tc_apply(uint8_t *index,                  /* (rows, row_stride) packed, in/out */
                         int16_t *votes,                  /* (rows, cols) in/out */
                         void *cool,                      /* (rows, cols) in/out, or NULL */
                         unsigned long long *flips,       /* (1) in/out */
                         unsigned long long *saturated,   /* (1) in/out */
                         int64_t *weights_out,            /* (1) out, or NULL */
                         const uint8_t *fire,             /* (units) or NULL: decide here */
                         const unsigned long long *dynsum, /* (1) or NULL: fixed stride */
                         int64_t row_stride, int bits, int64_t rows, int64_t cols,
                         int grid_size, int stride_fixed, int threshold, float decay, int block,
                         int cool_bytes, int cooldown)
{
    int stride = stride_fixed;
    if (dynsum != NULL) {
        double centre = (double)(grid_size / 2);
        double mean = (double)*dynsum / (double)(rows * cols);
        int st = (int)trunc(__dmul_rn(8.0, __dsub_rn(1.0, __ddiv_rn(mean, centre))));
        stride = st < 1 ? 1 : st;
    }
    const int top = grid_size - 1;
    const int64_t bpr = (cols + block - 1) / block;
    if (weights_out != NULL && blockIdx.x == 0 && threadIdx.x == 0)
        *weights_out = rows * cols;
    unsigned long long nf = 0, ns = 0;
    /* no 64-bit division per element */
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        uint8_t *row = index + r * row_stride;
        for (int64_t c0 = (int64_t)threadIdx.x * W; c0 < cols; c0 += (int64_t)blockDim.x * W) {
            const int n = cols - c0 >= W ? W : (int)(cols - c0);
            union {
                uint4 u;
                int16_t v[8];
            } b;
            if (W == 8)
                b.u = *(const uint4 *)(votes + r * cols + c0);
            else
                for (int k = 0; k < n; k++)
                    b.v[k] = votes[r * cols + c0 + k];
            for (int p = 0; p < n; p += 2) {
                const int nc = n - p >= 2 ? 2 : 1;
                int idx[2] = {0, 0}, moved[2] = {0, 0};
                for (int k = 0; k < nc; k++) {
                    const int64_t col = c0 + p + k, i = r * cols + col;
                    const int cd = cool_get(cool, cool_bytes, i);
                    const int v = b.v[p + k];
                    const int f = fire != NULL ? fire[r * bpr + (int)col / block]
                                               : abs(v) >= threshold && cd == 0;
                    /* apply_one reads the index only of a weight that fires, a few in a
                     * thousand: the others' index bytes are not loaded at all */
                    if (f && cd == 0)
                        idx[k] = index_load(row, bits, col);
                    b.v[p + k] = apply_one(v, cd, f, &idx[k], &moved[k], cool, cool_bytes, i,
                                           stride, top, decay, cooldown, &nf, &ns);
                }
                index_store_pair(row, bits, c0 + p, nc, idx, moved);
            }
            if (W == 8)
                *(uint4 *)(votes + r * cols + c0) = b.u;
            else
                for (int k = 0; k < n; k++)
                    votes[r * cols + c0 + k] = b.v[k];
        }
    }
    block_add2(flips, saturated, nf, ns);
}

/* Threads a block for W columns each over rows of cols: a multiple of 32, at most THREADS. */
static unsigned row_threads(int64_t cols, int w)
{
    int64_t t = ((cols + w - 1) / w + 31) / 32 * 32;
    return (unsigned)(t > THREADS ? THREADS : t);
}

/* Rows of cols int16 votes (and float G) can go 16 bytes at a time. */
static int rows_vec8(int64_t cols, const void *a, const void *b)
{
    return cols % 8 == 0 && ((uintptr_t)a & 15) == 0 && (b == NULL || ((uintptr_t)b & 15) == 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Entry points                                                                               */

static void tcg_free(tcg_state *s)
{
    if (s == NULL)
        return;
    cudaFree(s->base.votes);
    cudaFree(s->base.cool);
    cudaFree(s->small);
    cudaFree(s->fire);
    cudaFree(s->hist);
    cudaFree(s->tie);
    free(s);
}

static int tcg_tensor_init(void *ctx, const primal_qtensor *t, void **state, void *stream,
                           primal_err *err)
{
    const tc_ctx *c = (const tc_ctx *)ctx;
    cudaStream_t st = (cudaStream_t)stream;
    if (t->index == NULL || (t->bits != 4 && t->bits != 8 && t->bits != 16) ||
        t->grid_size < 2 || t->rows < 1 || t->cols < 1)
        return primal_errf(err, PRIMAL_ERROR,
                           "threshold_consensus: tensor %s: needs indexed storage (bits %d, "
                           "grid size %d, shape [%lld,%lld])",
                           t->name, t->bits, t->grid_size, (long long)t->rows,
                           (long long)t->cols);
    tcg_state *s = (tcg_state *)calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "threshold_consensus: tensor %s: out of memory",
                           t->name);
    s->base.n = t->rows * t->cols;
    const int64_t B = c->block, bpr = (t->cols + B - 1) / B;
    s->units = t->rows * bpr;
    s->n_chunks = (s->units + THREADS - 1) / THREADS;
    s->cap = (int64_t)floor(c->max_flip_fraction * (double)s->units);
    if (s->cap < 1)
        s->cap = 1;
    s->capped = s->cap < s->units;
    cudaError_t e = cudaMalloc((void **)&s->base.votes, (size_t)s->base.n * sizeof(int16_t));
    if (e == cudaSuccess && c->cooldown > 0) {
        s->base.cool_bytes = c->cooldown <= UINT8_MAX ? 1 : 2;
        e = cudaMalloc(&s->base.cool, (size_t)s->base.n * (size_t)s->base.cool_bytes);
    }
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->small, sizeof(tc_small));
    if (e == cudaSuccess && (s->capped || B > 1))
        e = cudaMalloc((void **)&s->fire, (size_t)s->units);
    if (e == cudaSuccess && s->capped)
        e = cudaMalloc((void **)&s->hist, (VOTE_MAX + 1) * sizeof(unsigned long long));
    if (e == cudaSuccess && s->capped)
        e = cudaMalloc((void **)&s->tie, (size_t)s->n_chunks * sizeof(unsigned long long));
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->base.votes, 0, (size_t)s->base.n * sizeof(int16_t), st);
    if (e == cudaSuccess && s->base.cool != NULL)
        e = cudaMemsetAsync(s->base.cool, 0, (size_t)s->base.n * (size_t)s->base.cool_bytes, st);
    if (e == cudaSuccess)
        e = cudaMemsetAsync(s->small, 0, sizeof(tc_small), st);
    if (e != cudaSuccess) {
        tcg_free(s);
        return primal_errf(err, e == cudaErrorMemoryAllocation ? PRIMAL_ENOMEM : PRIMAL_EDEVICE,
                           "threshold_consensus: tensor %s: device state for %lld weights: %s",
                           t->name, (long long)t->rows * t->cols, cudaGetErrorString(e));
    }
    *state = s;
    return PRIMAL_OK;
}

static void tcg_tensor_free(void *ctx, const primal_qtensor *t, void *state)
{
    (void)ctx;
    (void)t;
    tcg_free((tcg_state *)state);
}

static int check_rows(const primal_qtensor *t, int64_t r0, int64_t nrows, primal_err *err)
{
    if (r0 < 0 || nrows < 0 || r0 + nrows > t->rows)
        return primal_errf(err, PRIMAL_ERROR,
                           "threshold_consensus: tensor %s: rows [%lld,%lld) outside [0,%lld)",
                           t->name, (long long)r0, (long long)(r0 + nrows), (long long)t->rows);
    return PRIMAL_OK;
}

/* The core's max |G| (ABI 1.5) where it covers the whole tensor, which is what observe finds
 * over all chunks: as float bits, as tc_vote reads them; NULL where the policy must find it. */
static const unsigned int *core_gmax(const primal_qtensor *t, int64_t r0, int64_t nrows,
                                     const primal_accum_info *ai)
{
    if (ai->g_absmax == NULL || r0 != 0 || nrows != t->rows)
        return NULL;
    return (const unsigned int *)ai->g_absmax;
}

static int tcg_observe(void *ctx, void *state, const primal_qtensor *t, const float *G,
                       int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                       primal_err *err)
{
    (void)ctx;
    tcg_state *s = (tcg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    int rc = check_rows(t, r0, nrows, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (core_gmax(t, r0, nrows, ai) != NULL)
        return PRIMAL_OK; /* accumulate takes the core's */
    if (r0 == 0 || !s->base.gmax_valid || s->base.gmax_step != ai->step ||
        s->base.gmax_micro != ai->micro) {
        CU_TRY(cudaMemsetAsync(&s->small->gmax, 0, sizeof(unsigned int), st));
        s->base.gmax_step = ai->step;
        s->base.gmax_micro = ai->micro;
        s->base.gmax_valid = 1;
    }
    const int64_t n = nrows * t->cols;
    if (n == 0)
        return PRIMAL_OK;
    tc_absmax<<<grid_for(n), THREADS, 0, st>>>(&s->small->gmax, G, n,
                                               n % 4 == 0 && ((uintptr_t)G & 15) == 0);
    CU_TRY(cudaGetLastError());
    return PRIMAL_OK;
}

static int tcg_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                          int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                          primal_err *err)
{
    (void)ctx;
    tcg_state *s = (tcg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    int rc = check_rows(t, r0, nrows, err);
    if (rc != PRIMAL_OK)
        return rc;
    const int64_t n = nrows * t->cols;
    if (n == 0)
        return PRIMAL_OK;
    const unsigned int *gmax = core_gmax(t, r0, nrows, ai);
    if (gmax == NULL)
        gmax = &s->small->gmax;
    if (gmax == &s->small->gmax && !(s->base.gmax_valid && s->base.gmax_step == ai->step &&
                                     s->base.gmax_micro == ai->micro)) {
        CU_TRY(cudaMemsetAsync(&s->small->gmax_chunk, 0, sizeof(unsigned int), st));
        tc_absmax<<<grid_for(n), THREADS, 0, st>>>(&s->small->gmax_chunk, G, n,
                                                   n % 4 == 0 && ((uintptr_t)G & 15) == 0);
        CU_TRY(cudaGetLastError());
        gmax = &s->small->gmax_chunk;
    }
    int16_t *votes = s->base.votes + r0 * t->cols;
    if (rows_vec8(t->cols, votes, G))
        tc_vote<8><<<rows_grid(nrows), row_threads(t->cols, 8), 0, st>>>(votes, G, t->scale + r0,
                                                                         gmax, nrows, t->cols);
    else
        tc_vote<1><<<rows_grid(nrows), THREADS, 0, st>>>(votes, G, t->scale + r0, gmax, nrows,
                                                         t->cols);
    CU_TRY(cudaGetLastError());
    return PRIMAL_OK;
}

/* step and step_async: the counts to the host (stats) or to the core's device slot (dstats) */
static int tcg_step_to(void *ctx, void *state, const primal_qtensor *t,
                       const primal_step_info *si, primal_step_stats *stats,
                       primal_step_stats *dstats, void *stream, primal_err *err)
{
    (void)si;
    const tc_ctx *c = (const tc_ctx *)ctx;
    tcg_state *s = (tcg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    const int64_t rows = t->rows, cols = t->cols, B = c->block, bpr = (cols + B - 1) / B;
    tc_small *d = s->small;
    /* step_async's slot arrives zeroed (ABI 1.4): tc_apply adds its counts straight into it,
     * and the tensor's own counters need clearing only where something else counts */
    unsigned long long *flips = dstats != NULL ? (unsigned long long *)&dstats->flips : &d->flips;
    unsigned long long *sat =
        dstats != NULL ? (unsigned long long *)&dstats->saturated : &d->saturated;
    if (dstats == NULL || c->stride == STRIDE_DYNAMIC || s->capped)
        CU_TRY(cudaMemsetAsync(d, 0, offsetof(tc_small, cut), st)); /* the counters */
    const unsigned long long *dynsum = NULL;
    if (c->stride == STRIDE_DYNAMIC) {
        tc_dynsum<<<grid_for(s->base.n), THREADS, 0, st>>>(&d->dynsum, (const uint8_t *)t->index,
                                                           t->row_stride, t->bits, rows, cols,
                                                           t->grid_size / 2);
        CU_TRY(cudaGetLastError());
        dynsum = &d->dynsum;
    }
    if (s->capped) {
        CU_TRY(cudaMemsetAsync(s->hist, 0, (VOTE_MAX + 1) * sizeof(unsigned long long), st));
        tc_hist<<<grid_for(s->units), THREADS, 0, st>>>(s->hist, &d->ncand, s->base.votes,
                                                        s->base.cool, s->base.cool_bytes,
                                                        c->threshold, c->block, s->units, cols,
                                                        bpr);
        CU_TRY(cudaGetLastError());
        tc_select<<<1, 1024, 0, st>>>(&d->cut, &d->quota, s->hist, &d->ncand, (long long)s->cap);
        CU_TRY(cudaGetLastError());
        tc_tiecount<<<(unsigned)s->n_chunks, THREADS, 0, st>>>(
            s->tie, s->base.votes, s->base.cool, s->base.cool_bytes, &d->cut, &d->quota,
            c->threshold, c->block, s->units, cols, bpr);
        CU_TRY(cudaGetLastError());
        tc_tiescan<<<1, 1024, 0, st>>>(s->tie, &d->quota, s->n_chunks);
        CU_TRY(cudaGetLastError());
    }
    if (s->fire != NULL) {
        tc_decide<<<(unsigned)s->n_chunks, THREADS, 0, st>>>(
            s->fire, s->base.votes, s->base.cool, s->base.cool_bytes, &d->cut, &d->quota,
            s->tie, s->capped, c->threshold, c->block, s->units, cols, bpr);
        CU_TRY(cudaGetLastError());
    }
    const int vec = rows_vec8(cols, s->base.votes, NULL);
    (vec ? tc_apply<8> : tc_apply<2>)<<<rows_grid(rows), row_threads(cols, vec ? 8 : 2), 0, st>>>(
        (uint8_t *)t->index, s->base.votes, s->base.cool, flips, sat,
        dstats != NULL ? &dstats->weights : NULL, s->fire,
        dynsum, t->row_stride, t->bits, rows, cols, t->grid_size,
        c->stride == STRIDE_DYNAMIC ? 1 : c->stride, c->threshold, c->decay, c->block,
        s->base.cool_bytes, c->cooldown);
    CU_TRY(cudaGetLastError());
    if (dstats == NULL)
        CU_TRY(step_counts(&d->flips, &d->saturated, rows * cols, stats, NULL, st));
    return PRIMAL_OK;
}

static int tcg_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                    primal_step_stats *stats, void *stream, primal_err *err)
{
    return tcg_step_to(ctx, state, t, si, stats, NULL, stream, err);
}

static int tcg_step_async(void *ctx, void *state, const primal_qtensor *t,
                          const primal_step_info *si, primal_step_stats *dstats, void *stream,
                          primal_err *err)
{
    return tcg_step_to(ctx, state, t, si, NULL, dstats, stream, err);
}

static int tcg_state_download(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                              void *stream, primal_err *err)
{
    (void)ctx;
    const tcg_state *s = (const tcg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    size_t nv = (size_t)s->base.n * sizeof(int16_t);
    CU_TRY(cudaMemcpyAsync(buf, s->base.votes, nv, cudaMemcpyDeviceToHost, st));
    if (s->base.cool != NULL)
        CU_TRY(cudaMemcpyAsync((uint8_t *)buf + nv, s->base.cool,
                               (size_t)s->base.n * (size_t)s->base.cool_bytes,
                               cudaMemcpyDeviceToHost, st));
    CU_TRY(cudaStreamSynchronize(st));
    return PRIMAL_OK;
}

static int tcg_state_upload(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                            size_t n, void *stream, primal_err *err)
{
    (void)ctx;
    tcg_state *s = (tcg_state *)state;
    cudaStream_t st = (cudaStream_t)stream;
    size_t nv = (size_t)s->base.n * sizeof(int16_t);
    size_t want = nv + (size_t)s->base.n * (size_t)s->base.cool_bytes;
    if (n != want)
        return primal_errf(err, PRIMAL_EIO,
                           "threshold_consensus: tensor %s: state is %zu bytes, expected %zu",
                           t->name, n, want);
    /* from pageable memory the copy has left buf when the call returns */
    CU_TRY(cudaMemcpyAsync(s->base.votes, buf, nv, cudaMemcpyHostToDevice, st));
    if (s->base.cool != NULL)
        CU_TRY(cudaMemcpyAsync(s->base.cool, (const uint8_t *)buf + nv,
                               (size_t)s->base.n * (size_t)s->base.cool_bytes,
                               cudaMemcpyHostToDevice, st));
    s->base.gmax_valid = 0;
    return PRIMAL_OK;
}

extern "C" {

extern const primal_policy_cuda_vt primal_threshold_consensus_cuda;
const primal_policy_cuda_vt primal_threshold_consensus_cuda = {
    sizeof(primal_policy_cuda_vt), tcg_tensor_init,    tcg_tensor_free,  tcg_observe,
    tcg_accumulate,                tcg_step,           tcg_state_download, tcg_state_upload,
    tcg_step_async,
};

const primal_policy_cuda_vt *primal_threshold_consensus_cuda_vt(void)
{
    return &primal_threshold_consensus_cuda;
}
}
