/* rmsnorm.cu: y = w · (x · rstd), rstd = 1/sqrt(mean(x²) + eps) per row, as Hugging Face's
 * Llama/Qwen2 RMSNorm computes it in float32; backward (fused: one pass per row for dx)
 *   dx_i += r·w_i·dy_i − (r³/C)·x_i·Σ_j dy_j·w_j·x_j,   dw_i += Σ_n dy_i·x_i·r.
 * SPEC.md, "Models".  One block per row; dw by fixed per-block partial column sums and a
 * fixed-order finish (deterministic, no atomics).  CPU twins: kernels/cpu/rmsnorm.c.  No keys. */
#include "rmsnorm.h"

#include "elementwise.h"

template <typename Tp>
__global__ void rmsnorm_forward_kernel(Tp *out,             /* (N, C) */
                                       float *rstd,         /* (N) */
                                       const float *inp,    /* (N, C) */
                                       const float *weight, /* (C) */
                                       int64_t C, float eps)
{
    __shared__ float sh[32];
    const float *x = inp + blockIdx.x * C;
    Tp *y = out + blockIdx.x * C;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x)
        ss += x[i] * x[i];
    ss = cuda_block_sum(ss, sh);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x)
        cuda_st(y, i, weight[i] * (x[i] * r));
    if (threadIdx.x == 0)
        rstd[blockIdx.x] = r;
}

/* out is only ever a GEMM operand, so it is written in the compute dtype. */
int cuda_rmsnorm_forward(void *out,           /* (N, C) of dt */
                         cuda_dtype dt,
                         float *rstd,         /* (N) kept for backward */
                         const float *inp,    /* (N, C) */
                         const float *weight, /* (C) */
                         int64_t N, int64_t C, float eps, cudaStream_t s, primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    if (dt == CUDA_BF16)
        rmsnorm_forward_kernel<<<(unsigned)N, 256, 0, s>>>((__nv_bfloat16 *)out, rstd, inp,
                                                           weight, C, eps);
    else
        rmsnorm_forward_kernel<<<(unsigned)N, 256, 0, s>>>((float *)out, rstd, inp, weight, C,
                                                           eps);
    CUDA_LAUNCHED("rmsnorm_forward", err);
    return PRIMAL_OK;
}

__global__ void rmsnorm_dinp_kernel(float *dinp,         /* (N, C) += */
                                    __nv_bfloat16 *dinp_b, /* (N, C) the result again, or NULL */
                                    const float *dout,   /* (N, C) */
                                    const float *inp,    /* (N, C) */
                                    const float *weight, /* (C) */
                                    const float *rstd,   /* (N) */
                                    int64_t C)
{
    __shared__ float sh[32];
    int64_t o = blockIdx.x * C;
    const float *x = inp + o, *dy = dout + o;
    float *dx = dinp + o;
    float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x)
        dot += dy[i] * weight[i] * x[i];
    dot = cuda_block_sum(dot, sh);
    float k = dot * r * r * r / (float)C;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
        float v = dx[i] + (r * weight[i] * dy[i] - k * x[i]);
        dx[i] = v;
        if (dinp_b != NULL)
            dinp_b[o + i] = __float2bfloat16_rn(v);
    }
}

/* partial[chunk][c] = Σ over the chunk's rows of dy·x·r; block (32 columns, 8 row lanes). */
__global__ void rmsnorm_dw_partial_kernel(float *partial,    /* (nchunks, C) */
                                          const float *dout, /* (N, C) */
                                          const float *inp,  /* (N, C) */
                                          const float *rstd, /* (N) */
                                          int64_t N, int64_t C)
{
    __shared__ float sh[8][33];
    int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    int64_t n0 = (int64_t)blockIdx.y * CUDA_COLSUM_ROWS;
    int64_t n1 = n0 + CUDA_COLSUM_ROWS < N ? n0 + CUDA_COLSUM_ROWS : N;
    float acc = 0.0f;
    if (c < C)
        for (int64_t n = n0 + threadIdx.y; n < n1; n += 8)
            acc += dout[n * C + c] * inp[n * C + c] * rstd[n];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float s = 0.0f;
        for (int k = 0; k < 8; k++)
            s += sh[k][threadIdx.x];
        partial[blockIdx.y * C + c] = s;
    }
}

__global__ void rmsnorm_dw_finish_kernel(float *dweight,       /* (C) += */
                                         const float *partial, /* (nchunks, C) */
                                         int64_t nchunks, int64_t C)
{
    CUDA_FOR(c, C)
    {
        double s = 0.0;
        for (int64_t k = 0; k < nchunks; k++)
            s += partial[k * C + c];
        dweight[c] += (float)s;
    }
}

/* dinp and dweight are accumulated into; either may be NULL (not wanted).  dinp_b, when not
 * NULL, receives the accumulated dinp in bf16: the next GEMMs' operand, without a pass of its
 * own. */
int cuda_rmsnorm_backward(float *dinp,         /* (N, C) or NULL */
                          void *dinp_b,        /* (N, C) bf16 or NULL */
                          float *dweight,      /* (C) or NULL */
                          float *scratch,      /* cuda_colsum_scratch(N, C) floats */
                          const float *dout,   /* (N, C) */
                          const float *inp,    /* (N, C) */
                          const float *weight, /* (C) */
                          const float *rstd,   /* (N) from forward */
                          int64_t N, int64_t C, cudaStream_t s, primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    if (dinp != NULL) {
        rmsnorm_dinp_kernel<<<(unsigned)N, 256, 0, s>>>(dinp, (__nv_bfloat16 *)dinp_b, dout,
                                                        inp, weight, rstd, C);
        CUDA_LAUNCHED("rmsnorm_dinp", err);
    }
    if (dweight != NULL) {
        int64_t nchunks = (N + CUDA_COLSUM_ROWS - 1) / CUDA_COLSUM_ROWS;
        dim3 grid((unsigned)((C + 31) / 32), (unsigned)nchunks);
        rmsnorm_dw_partial_kernel<<<grid, dim3(32, 8), 0, s>>>(scratch, dout, inp, rstd, N, C);
        CUDA_LAUNCHED("rmsnorm_dw_partial", err);
        rmsnorm_dw_finish_kernel<<<cuda_blocks(C, 256), 256, 0, s>>>(dweight, scratch, nchunks,
                                                                      C);
        CUDA_LAUNCHED("rmsnorm_dw_finish", err);
    }
    return PRIMAL_OK;
}
