/* elementwise.cu: the bias gradient (column sums of dY, as matmul_backward_bias on the CPU)
 * and a sum of squares (the trainer's gradient norm).  SPEC.md, "Models".
 *
 * Reductions are deterministic: fixed partial sums per block, then a fixed-order pass over the
 * partials (no atomics), so that two runs of one step give the same bits.  No keys. */
#include "elementwise.h"

/* partial[chunk][c] = Σ over the chunk's rows of dout[n][c]; block (32 columns, 8 row lanes). */
__global__ void colsum_partial_kernel(float *partial,    /* (nchunks, OC) */
                                      const float *dout, /* (N rows of ld, OC) */
                                      int64_t N, int64_t OC, int64_t ld)
{
    __shared__ float sh[8][33];
    int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    int64_t n0 = (int64_t)blockIdx.y * CUDA_COLSUM_ROWS;
    int64_t n1 = n0 + CUDA_COLSUM_ROWS < N ? n0 + CUDA_COLSUM_ROWS : N;
    float acc = 0.0f;
    if (c < OC)
        for (int64_t n = n0 + threadIdx.y; n < n1; n += 8)
            acc += dout[n * ld + c];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < OC) {
        float s = 0.0f;
        for (int k = 0; k < 8; k++)
            s += sh[k][threadIdx.x];
        partial[blockIdx.y * OC + c] = s;
    }
}

/* block (32 columns, 32 chunk lanes): lane ty sums chunks ty, ty + 32, ..., then lane 0 adds
 * the 32 lane sums in order.  A thread per column summing every chunk itself had made this
 * tiny pass a long serial chain of loads. */
__global__ void colsum_finish_kernel(float *out,            /* (OC) += */
                                     const float *partial, /* (nchunks, OC) */
                                     int64_t nchunks, int64_t OC)
{
    __shared__ double sh[32][33];
    int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    double acc = 0.0;
    if (c < OC)
        for (int64_t k = threadIdx.y; k < nchunks; k += 32)
            acc += partial[k * OC + c];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < OC) {
        double s = 0.0;
        for (int k = 0; k < 32; k++)
            s += sh[k][threadIdx.x];
        out[c] += (float)s;
    }
}

int cuda_colsum_finish(float *out, const float *partial, int64_t nchunks, int64_t OC,
                       cudaStream_t s, primal_err *err)
{
    if (OC == 0)
        return PRIMAL_OK;
    colsum_finish_kernel<<<(unsigned)((OC + 31) / 32), dim3(32, 32), 0, s>>>(out, partial,
                                                                             nchunks, OC);
    CUDA_LAUNCHED("colsum_finish", err);
    return PRIMAL_OK;
}

int cuda_bias_backward(float *dbias,      /* (OC) accumulated into */
                       float *scratch,    /* cuda_colsum_scratch(N, OC) floats */
                       const float *dout, /* (N rows of ld, OC) */
                       int64_t ld, int64_t N, int64_t OC, cudaStream_t s, primal_err *err)
{
    if (N == 0 || OC == 0)
        return PRIMAL_OK;
    int64_t nchunks = (N + CUDA_COLSUM_ROWS - 1) / CUDA_COLSUM_ROWS;
    dim3 grid((unsigned)((OC + 31) / 32), (unsigned)nchunks);
    colsum_partial_kernel<<<grid, dim3(32, 8), 0, s>>>(scratch, dout, N, OC, ld);
    CUDA_LAUNCHED("colsum_partial", err);
    return cuda_colsum_finish(dbias, scratch, nchunks, OC, s, err);
}

/* Each call adds block b's share of sum(x²) to partial[b]: a norm over many tensors costs one
 * launch a tensor (or one for a list of them), and the 256 partials are folded once, in
 * cuda_sumsq_finish.  Four floats a load where n and x allow: a weight gradient is read once
 * more for the clipping norm, so this pass should run at the memory's speed. */
__device__ __forceinline__ double sumsq_of(const float *x, int64_t n)
{
    double acc = 0.0;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    const int64_t i0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (n % 4 == 0 && ((uintptr_t)x & 15) == 0) {
        const float4 *x4 = (const float4 *)x;
        for (int64_t i = i0; i < n / 4; i += step) {
            const float4 v = x4[i];
            acc += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
        }
        return acc;
    }
    for (int64_t i = i0; i < n; i += step)
        acc += (double)x[i] * x[i];
    return acc;
}

__global__ void sumsq_partial_kernel(double *partial, /* (CUDA_SUMSQ_BLOCKS) += */
                                     const float *x,  /* (n) */
                                     int64_t n)
{
    __shared__ double sh[32];
    double acc = cuda_block_sum(sumsq_of(x, n), sh);
    if (threadIdx.x == 0)
        partial[blockIdx.x] += acc;
}

__global__ void sumsq_list_kernel(double *partial,             /* (CUDA_SUMSQ_BLOCKS) += */
                                  const cuda_sumsq_item *list, /* (n) */
                                  int n)
{
    __shared__ double sh[32];
    double acc = 0.0;
    for (int j = 0; j < n; j++)
        acc += sumsq_of(list[j].x, list[j].n);
    acc = cuda_block_sum(acc, sh);
    if (threadIdx.x == 0)
        partial[blockIdx.x] += acc;
}

/* acc += Σ partial in a fixed tree, and partial is zeroed for the next norm. */
__global__ void sumsq_finish_kernel(double *acc,     /* (1) += */
                                    double *partial) /* (CUDA_SUMSQ_BLOCKS) */
{
    __shared__ double sh[32];
    double v = partial[threadIdx.x];
    partial[threadIdx.x] = 0.0;
    v = cuda_block_sum(v, sh);
    if (threadIdx.x == 0)
        *acc += v;
}

int cuda_sumsq(double *scratch, /* (CUDA_SUMSQ_BLOCKS) device, accumulated into */
               const float *x,  /* (n) device */
               int64_t n, cudaStream_t s, primal_err *err)
{
    if (n == 0)
        return PRIMAL_OK;
    sumsq_partial_kernel<<<CUDA_SUMSQ_BLOCKS, 256, 0, s>>>(scratch, x, n);
    CUDA_LAUNCHED("sumsq_partial", err);
    return PRIMAL_OK;
}

int cuda_sumsq_list(double *scratch, cuda_sumsq_item *dev_list, const cuda_sumsq_item *list,
                    int n, cudaStream_t s, primal_err *err)
{
    if (n <= 0)
        return PRIMAL_OK;
    /* from pageable memory: the list has left the host when the call returns */
    CUDA_TRY(cudaMemcpyAsync(dev_list, list, (size_t)n * sizeof *list, cudaMemcpyHostToDevice,
                             s), err);
    sumsq_list_kernel<<<CUDA_SUMSQ_BLOCKS, 256, 0, s>>>(scratch, dev_list, n);
    CUDA_LAUNCHED("sumsq_list", err);
    return PRIMAL_OK;
}

int cuda_sumsq_finish(double *acc,     /* (1) device, accumulated into */
                      double *scratch, /* (CUDA_SUMSQ_BLOCKS) device, zeroed */
                      cudaStream_t s, primal_err *err)
{
    sumsq_finish_kernel<<<1, CUDA_SUMSQ_BLOCKS, 0, s>>>(acc, scratch);
    CUDA_LAUNCHED("sumsq_finish", err);
    return PRIMAL_OK;
}
