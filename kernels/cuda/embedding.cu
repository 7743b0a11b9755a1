/* embedding.cu: out[n] = E[tokens[n]] with E stored as index + per-row scale (only the gathered
 * rows are dequantised), and its backward: G[r − r0] += dout[n] for every position n whose token
 * r lies in the chunk [r0, r0 + nrows), the straight-through dL/dE of those rows.  SPEC.md,
 * "Models" and "The forward and backward pass of an indexed matrix".
 *
 * Backward is deterministic without atomics: the host sorts the positions by token once per
 * forward (cuda_embedding_sort, a stable counting sort: start (V + 1) offsets and order (N)
 * positions), and blocks per vocabulary row add that row's positions in a fixed order (not the
 * CPU's serial order: results agree to rounding).  CPU twins: kernels/cpu/embedding.c.  No keys. */
#include "embedding.h"

__device__ __forceinline__ float weight_at(const primal_qtensor E, int64_t r, int64_t c)
{
    if (E.bits == 32)
        return E.dense[r * E.cols + c];
    const uint8_t *row = (const uint8_t *)E.index + r * E.row_stride;
    uint32_t i = E.bits == 4 ? (row[c >> 1] >> ((c & 1) * 4)) & 0xFu
                 : E.bits == 8 ? row[c]
                               : ((const uint16_t *)row)[c];
    return E.grid[i] * E.scale[r];
}

__global__ void embedding_forward_kernel(float *out,            /* (N, C) */
                                         const int32_t *tokens, /* (N) in [0, V) */
                                         const primal_qtensor E, /* (V, C), device pointers */
                                         int64_t N)
{
    int64_t C = E.cols;
    CUDA_FOR(i, N * C)
    {
        int64_t n = i / C, c = i - n * C;
        out[i] = weight_at(E, tokens[n], c);
    }
}

int cuda_embedding_forward(float *out,              /* (N, C) device */
                           const int32_t *tokens,   /* (N) device, checked by the caller */
                           const primal_qtensor *E, /* (V, C) device pointers */
                           int64_t N, cudaStream_t s, primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    embedding_forward_kernel<<<cuda_blocks(N * E->cols, 256), 256, 0, s>>>(out, tokens, *E, N);
    CUDA_LAUNCHED("embedding_forward", err);
    return PRIMAL_OK;
}

/* Host side: positions grouped by token, in position order within a token. */
void cuda_embedding_sort(int32_t *start,        /* (V + 1) start[r] .. start[r+1] in order */
                         int32_t *order,        /* (N) positions */
                         const int32_t *tokens, /* (N) host, in [0, V) */
                         int64_t N, int64_t V)
{
    for (int64_t r = 0; r <= V; r++)
        start[r] = 0;
    for (int64_t n = 0; n < N; n++)
        start[tokens[n] + 1]++;
    for (int64_t r = 0; r < V; r++)
        start[r + 1] += start[r];
    /* order is filled through a running cursor per token: reuse start shifted by one */
    for (int64_t n = 0; n < N; n++)
        order[start[tokens[n]]++] = (int32_t)n;
    for (int64_t r = V; r > 0; r--)
        start[r] = start[r - 1];
    start[0] = 0;
}

/* Grid (rows, column tiles of 128); 8 warps split a row's positions round-robin (warp w takes
 * the w-th, (w+8)-th, ... in sorted order) and their partial sums are added in warp order, so
 * the result is fixed for given inputs.  A frequent token (a space, a newline) is thus summed by
 * 8 warps times C/128 blocks instead of one serial loop. */
__global__ void embedding_backward_kernel(float *G,             /* (nrows, C) += */
                                          const float *dout,    /* (N, C) */
                                          const int32_t *start, /* (V + 1) */
                                          const int32_t *order, /* (N) */
                                          int64_t r0, int64_t C)
{
    __shared__ float part[8][4][32];
    int64_t r = blockIdx.x;
    int32_t k0 = start[r0 + r], k1 = start[r0 + r + 1];
    if (k0 == k1)
        return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int64_t c0 = (int64_t)blockIdx.y * 128 + lane;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 2
    for (int32_t k = k0 + warp; k < k1; k += 8) {
        const float *d = dout + (int64_t)order[k] * C;
#pragma unroll
        for (int i = 0; i < 4; i++)
            if (c0 + 32 * i < C)
                acc[i] += d[c0 + 32 * i];
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
        part[warp][i][lane] = acc[i];
    __syncthreads();
    if (warp == 0) {
        float *g = G + r * C;
        for (int i = 0; i < 4; i++) {
            float sum = 0.0f;
            for (int w = 0; w < 8; w++)
                sum += part[w][i][lane];
            if (c0 + 32 * i < C)
                g[c0 + 32 * i] += sum;
        }
    }
}

int cuda_embedding_backward(float *G,             /* (nrows, C) device, accumulated into */
                            const float *dout,    /* (N, C) device */
                            const int32_t *start, /* (V + 1) device, from cuda_embedding_sort */
                            const int32_t *order, /* (N) device */
                            int64_t r0, int64_t nrows, int64_t C, cudaStream_t s,
                            primal_err *err)
{
    if (nrows == 0)
        return PRIMAL_OK;
    dim3 grid((unsigned)nrows, (unsigned)((C + 127) / 128));
    embedding_backward_kernel<<<grid, 256, 0, s>>>(G, dout, start, order, r0, C);
    CUDA_LAUNCHED("embedding_backward", err);
    return PRIMAL_OK;
}
