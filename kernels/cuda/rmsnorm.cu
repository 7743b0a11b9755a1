/* rmsnorm.cu: y = w · (x · rstd), rstd = 1/sqrt(mean(x²) + eps) per row, as Hugging Face's
 * Llama/Qwen2 RMSNorm computes it in float32; backward (fused: one pass per row for dx)
 *   dx_i += r·w_i·dy_i − (r³/C)·x_i·Σ_j dy_j·w_j·x_j,   dw_i += Σ_n dy_i·x_i·r.
 * SPEC.md, "Models".  Rows of a multiple of 8 columns, at most RMS_VEC_MAX, take the warp
 * kernels: one warp per row, eight columns a lane per access, and backward computes dx and the
 * dw partial sums in one pass (each block CUDA_COLSUM_ROWS rows, its warps' sums added in warp
 * order).  Other rows take one block per row and a separate dw pass.  Either way dw is fixed
 * partial sums and a fixed-order finish: deterministic, no atomics.  The model keeps x and
 * rstd, not the output: cuda_rmsnorm_backward_xn writes the output again in the pass that reads
 * x anyway, and cuda_rmsnorm_apply where no backward runs, both through rms_out.
 * cuda_rmsnorm_forward_keep normalises x rounded to bfloat16 and writes that rounding: a model
 * may keep the half-size copy, and backward and rmsnorm_apply take it as x (inp_dt bf16) and
 * agree with that forward bit for bit, as they do with a float32 x.
 * CPU twins: kernels/cpu/rmsnorm.c.  No keys. */
#include "rmsnorm.h"

#include "elementwise.h"

#define RMS_VEC_MAX 2048 /* columns the warp kernels take: 8 per lane per 256-column step */

/* The norm's output from x, its row's rstd r and the weight: the one expression forward, the
 * backward that makes the output again and rmsnorm_apply all use, so that they agree bit for
 * bit. */
__device__ __forceinline__ float rms_out(float w, float x, float r) { return w * (x * r); }

/* forward_keep's input: x rounded to bfloat16, as backward will read it from the copy */
__device__ __forceinline__ void rms_round8(float *v)
{
    for (int k = 0; k < 8; k++)
        v[k] = __bfloat162float(__float2bfloat16_rn(v[k]));
}

template <typename Tp>
__global__ void rmsnorm_forward_warp_kernel(Tp *out, float *rstd,
                                            __nv_bfloat16 *keep, /* (N, C) or NULL */
                                            const float *inp, const float *weight, int64_t N,
                                            int C, float eps)
{
    const int lane = threadIdx.x & 31;
    const int64_t n = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (n >= N)
        return;
    const float *x = inp + n * C;
    float ss = 0.0f, v[8], w[8];
    for (int c = lane * 8; c < C; c += 256) {
        cuda_ld8(v, x + c);
        if (keep != NULL)
            rms_round8(v);
        for (int k = 0; k < 8; k++)
            ss += v[k] * v[k];
    }
    ss = cuda_warp_sum(ss);
    const float r = 1.0f / sqrtf(ss / (float)C + eps);
    for (int c = lane * 8; c < C; c += 256) {
        cuda_ld8(v, x + c);
        if (keep != NULL) {
            rms_round8(v);
            cuda_st8(keep + n * C + c, v);
        }
        cuda_ld8(w, weight + c);
        for (int k = 0; k < 8; k++)
            v[k] = rms_out(w[k], v[k], r);
        cuda_st8(out + n * C + c, v);
    }
    if (lane == 0)
        rstd[n] = r;
}

/* Block b: rows [b·CUDA_COLSUM_ROWS, +CUDA_COLSUM_ROWS), warp w every nw-th of them.  NPL:
 * 256-column steps a lane holds dw sums for (C <= 256·NPL). */
template <int NPL, typename Td, typename Tx>
__global__ void rmsnorm_backward_warp_kernel(float *dinp,            /* (N, C) += or NULL */
                                             __nv_bfloat16 *dinp_b,  /* (N, C) or NULL */
                                             __nv_bfloat16 *xn_b,    /* (N, C) or NULL */
                                             float *xn_f,            /* (N, C) or NULL */
                                             float *partial,         /* (nblocks, C) or NULL */
                                             const Td *dout, const Tx *inp,
                                             const float *weight, const float *rstd,
                                             int64_t N, int C)
{
    extern __shared__ float sh_dw[]; /* (C) */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float acc[NPL][8];
    for (int j = 0; j < NPL; j++)
        for (int k = 0; k < 8; k++)
            acc[j][k] = 0.0f;
    const int64_t n0 = (int64_t)blockIdx.x * CUDA_COLSUM_ROWS;
    const int64_t n1 = n0 + CUDA_COLSUM_ROWS < N ? n0 + CUDA_COLSUM_ROWS : N;
    for (int64_t n = n0 + warp; n < n1; n += nw) {
        const float r = rstd[n];
        const Tx *x = inp + n * C;
        const Td *dy = dout + n * C;
        float a[8], b[8], w[8];
        float dot = 0.0f;
        for (int c = lane * 8; c < C; c += 256) {
            cuda_ld8(a, dy + c);
            cuda_ld8(b, x + c);
            cuda_ld8(w, weight + c);
            for (int k = 0; k < 8; k++)
                dot += a[k] * w[k] * b[k];
        }
        const float kk = cuda_warp_sum(dot) * r * r * r / (float)C;
#pragma unroll
        for (int j = 0; j < NPL; j++) {
            const int c = lane * 8 + j * 256;
            if (c >= C)
                break;
            cuda_ld8(a, dy + c);
            cuda_ld8(b, x + c);
            if (partial != NULL)
                for (int k = 0; k < 8; k++)
                    acc[j][k] += a[k] * b[k] * r;
            if (dinp != NULL || xn_b != NULL || xn_f != NULL)
                cuda_ld8(w, weight + c);
            if (xn_b != NULL || xn_f != NULL) {
                /* forward's output again, by forward's expression: the same bits */
                float y[8];
                for (int k = 0; k < 8; k++)
                    y[k] = rms_out(w[k], b[k], r);
                if (xn_b != NULL)
                    cuda_st8(xn_b + n * C + c, y);
                else
                    cuda_st8(xn_f + n * C + c, y);
            }
            if (dinp != NULL) {
                float d[8];
                cuda_ld8(d, dinp + n * C + c);
                for (int k = 0; k < 8; k++)
                    d[k] = d[k] + (r * w[k] * a[k] - kk * b[k]);
                cuda_st8(dinp + n * C + c, d);
                if (dinp_b != NULL)
                    cuda_st8(dinp_b + n * C + c, d);
            }
        }
    }
    if (partial == NULL)
        return;
    /* the warps' sums, added in warp order */
    for (int wi = 0; wi < nw; wi++) {
        if (warp == wi)
#pragma unroll
            for (int j = 0; j < NPL; j++) {
                const int c = lane * 8 + j * 256;
                if (c >= C)
                    break;
                for (int k = 0; k < 8; k++)
                    sh_dw[c + k] = wi == 0 ? acc[j][k] : sh_dw[c + k] + acc[j][k];
            }
        __syncthreads();
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        partial[(int64_t)blockIdx.x * C + c] = sh_dw[c];
}

template <typename Tp>
__global__ void rmsnorm_forward_kernel(Tp *out,             /* (N, C) */
                                       float *rstd,         /* (N) */
                                       __nv_bfloat16 *keep, /* (N, C) or NULL */
                                       const float *inp,    /* (N, C) */
                                       const float *weight, /* (C) */
                                       int64_t C, float eps)
{
    __shared__ float sh[32];
    const float *x = inp + blockIdx.x * C;
    Tp *y = out + blockIdx.x * C;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
        float v = keep != NULL ? __bfloat162float(__float2bfloat16_rn(x[i])) : x[i];
        ss += v * v;
    }
    ss = cuda_block_sum(ss, sh);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
        float v = x[i];
        if (keep != NULL) {
            keep[blockIdx.x * C + i] = __float2bfloat16_rn(v);
            v = __bfloat162float(__float2bfloat16_rn(v));
        }
        cuda_st(y, i, rms_out(weight[i], v, r));
    }
    if (threadIdx.x == 0)
        rstd[blockIdx.x] = r;
}

/* out is only ever a GEMM operand, so it is written in the compute dtype.  keep, when not
 * NULL, gets x rounded to bfloat16, and the norm is then that rounding's: see the top. */
int cuda_rmsnorm_forward_keep(void *out,           /* (N, C) of dt */
                              cuda_dtype dt,
                              float *rstd,         /* (N) kept for backward */
                              void *keep,          /* (N, C) bf16, or NULL */
                              const float *inp,    /* (N, C) */
                              const float *weight, /* (C) */
                              int64_t N, int64_t C, float eps, cudaStream_t s, primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    __nv_bfloat16 *kb = (__nv_bfloat16 *)keep;
    if (C % 8 == 0 && cuda_aligned8(out) && cuda_aligned8(inp) && cuda_aligned8(weight) &&
        (keep == NULL || cuda_aligned8(keep))) {
        unsigned nb = (unsigned)((N + 7) / 8); /* 8 warps, 8 rows a block */
        if (dt == CUDA_BF16)
            rmsnorm_forward_warp_kernel<<<nb, 256, 0, s>>>((__nv_bfloat16 *)out, rstd, kb, inp,
                                                           weight, N, (int)C, eps);
        else
            rmsnorm_forward_warp_kernel<<<nb, 256, 0, s>>>((float *)out, rstd, kb, inp, weight,
                                                           N, (int)C, eps);
        CUDA_LAUNCHED("rmsnorm_forward", err);
        return PRIMAL_OK;
    }
    if (dt == CUDA_BF16)
        rmsnorm_forward_kernel<<<(unsigned)N, 256, 0, s>>>((__nv_bfloat16 *)out, rstd, kb, inp,
                                                           weight, C, eps);
    else
        rmsnorm_forward_kernel<<<(unsigned)N, 256, 0, s>>>((float *)out, rstd, kb, inp, weight,
                                                           C, eps);
    CUDA_LAUNCHED("rmsnorm_forward", err);
    return PRIMAL_OK;
}

int cuda_rmsnorm_forward(void *out, cuda_dtype dt, float *rstd, const float *inp,
                         const float *weight, int64_t N, int64_t C, float eps, cudaStream_t s,
                         primal_err *err)
{
    return cuda_rmsnorm_forward_keep(out, dt, rstd, NULL, inp, weight, N, C, eps, s, err);
}

/* y = w · (x · rstd) with forward's rstd and forward's expression, so the same bits as
 * forward wrote: the norm's output is made again instead of kept. */
template <typename Tp, typename Tx>
__global__ void rmsnorm_apply_warp_kernel(Tp *out, const float *rstd, const Tx *inp,
                                          const float *weight, int64_t N, int C)
{
    const int lane = threadIdx.x & 31;
    const int64_t n = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (n >= N)
        return;
    const float r = rstd[n];
    float v[8], w[8];
    for (int c = lane * 8; c < C; c += 256) {
        cuda_ld8(v, inp + n * C + c);
        cuda_ld8(w, weight + c);
        for (int k = 0; k < 8; k++)
            v[k] = rms_out(w[k], v[k], r);
        cuda_st8(out + n * C + c, v);
    }
}

template <typename Tp, typename Tx>
__global__ void rmsnorm_apply_kernel(Tp *out, const float *rstd, const Tx *inp,
                                     const float *weight, int64_t C)
{
    const float r = rstd[blockIdx.x];
    const int64_t o = (int64_t)blockIdx.x * C;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x)
        cuda_st(out, o + i, rms_out(weight[i], cuda_ld(inp, o + i), r));
}

template <typename Tp, typename Tx>
static void rms_apply_launch(Tp *out, const float *rstd, const Tx *inp, const float *weight,
                             int64_t N, int64_t C, int vec, cudaStream_t s)
{
    if (vec) /* 8 warps, 8 rows a block */
        rmsnorm_apply_warp_kernel<<<(unsigned)((N + 7) / 8), 256, 0, s>>>(out, rstd, inp, weight,
                                                                          N, (int)C);
    else
        rmsnorm_apply_kernel<<<(unsigned)N, 256, 0, s>>>(out, rstd, inp, weight, C);
}

int cuda_rmsnorm_apply(void *out, cuda_dtype dt, const float *rstd,
                       const void *inp,    /* (N, C) of inp_dt */
                       cuda_dtype inp_dt, const float *weight, int64_t N, int64_t C,
                       cudaStream_t s, primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    int vec = C % 8 == 0 && cuda_aligned8(out) && cuda_aligned8(inp) && cuda_aligned8(weight);
    const float *xf = (const float *)inp;
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)inp;
    if (dt == CUDA_BF16 && inp_dt == CUDA_BF16)
        rms_apply_launch((__nv_bfloat16 *)out, rstd, xb, weight, N, C, vec, s);
    else if (dt == CUDA_BF16)
        rms_apply_launch((__nv_bfloat16 *)out, rstd, xf, weight, N, C, vec, s);
    else if (inp_dt == CUDA_BF16)
        rms_apply_launch((float *)out, rstd, xb, weight, N, C, vec, s);
    else
        rms_apply_launch((float *)out, rstd, xf, weight, N, C, vec, s);
    CUDA_LAUNCHED("rmsnorm_apply", err);
    return PRIMAL_OK;
}

template <typename Td, typename Tx>
__global__ void rmsnorm_dinp_kernel(float *dinp,         /* (N, C) += */
                                    __nv_bfloat16 *dinp_b, /* (N, C) the result again, or NULL */
                                    const Td *dout,      /* (N, C) */
                                    const Tx *inp,       /* (N, C) */
                                    const float *weight, /* (C) */
                                    const float *rstd,   /* (N) */
                                    int64_t C)
{
    __shared__ float sh[32];
    int64_t o = blockIdx.x * C;
    const Tx *x = inp + o;
    const Td *dy = dout + o;
    float *dx = dinp + o;
    float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x)
        dot += cuda_ld(dy, i) * weight[i] * cuda_ld(x, i);
    dot = cuda_block_sum(dot, sh);
    float k = dot * r * r * r / (float)C;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
        float v = dx[i] + (r * weight[i] * cuda_ld(dy, i) - k * cuda_ld(x, i));
        dx[i] = v;
        if (dinp_b != NULL)
            dinp_b[o + i] = __float2bfloat16_rn(v);
    }
}

/* partial[chunk][c] = Σ over the chunk's rows of dy·x·r; block (32 columns, 8 row lanes). */
template <typename Td, typename Tx>
__global__ void rmsnorm_dw_partial_kernel(float *partial,    /* (nchunks, C) */
                                          const Td *dout,    /* (N, C) */
                                          const Tx *inp,     /* (N, C) */
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
            acc += cuda_ld(dout, n * C + c) * cuda_ld(inp, n * C + c) * rstd[n];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float s = 0.0f;
        for (int k = 0; k < 8; k++)
            s += sh[k][threadIdx.x];
        partial[blockIdx.y * C + c] = s;
    }
}

int cuda_rmsnorm_backward(float *dinp, void *dinp_b, float *dweight, float *scratch,
                          const float *dout, const float *inp, const float *weight,
                          const float *rstd, int64_t N, int64_t C, cudaStream_t s,
                          primal_err *err)
{
    return cuda_rmsnorm_backward_xn(dinp, dinp_b, NULL, CUDA_BF16, dweight, scratch, dout,
                                    CUDA_F32, inp, CUDA_F32, weight, rstd, N, C, s, err);
}

/* The warp kernel for C <= 256·npl, npl in [1, 8]. */
template <typename Td, typename Tx>
static void rms_bwd_warp_launch(int npl, unsigned nb, size_t shb, cudaStream_t s, float *dinp,
                                __nv_bfloat16 *b, __nv_bfloat16 *xb, float *xf, float *part,
                                const Td *dy, const Tx *x, const float *w, const float *rstd,
                                int64_t N, int C)
{
#define RMS_BWD(K)                                                                             \
    rmsnorm_backward_warp_kernel<K><<<nb, 256, shb, s>>>(dinp, b, xb, xf, part, dy, x, w, rstd, \
                                                         N, C)
    switch (npl) {
    case 1: RMS_BWD(1); break;
    case 2: RMS_BWD(2); break;
    case 3: RMS_BWD(3); break;
    case 4: RMS_BWD(4); break;
    case 5: RMS_BWD(5); break;
    case 6: RMS_BWD(6); break;
    case 7: RMS_BWD(7); break;
    default: RMS_BWD(8); break;
    }
#undef RMS_BWD
}

/* The block-per-row kernels, for rows the warp kernel does not take. */
template <typename Td, typename Tx>
static void rms_bwd_rows_launch(float *dinp, __nv_bfloat16 *dinp_b, float *scratch,
                                const Td *dy, const Tx *x, const float *w, const float *rstd,
                                int64_t N, int64_t C, int64_t nchunks, cudaStream_t s)
{
    if (dinp != NULL)
        rmsnorm_dinp_kernel<<<(unsigned)N, 256, 0, s>>>(dinp, dinp_b, dy, x, w, rstd, C);
    if (scratch != NULL) {
        dim3 grid((unsigned)((C + 31) / 32), (unsigned)nchunks);
        rmsnorm_dw_partial_kernel<<<grid, dim3(32, 8), 0, s>>>(scratch, dy, x, rstd, N, C);
    }
}

/* dinp and dweight are accumulated into; either may be NULL (not wanted).  dinp_b, when not
 * NULL, receives the accumulated dinp in bf16: the next GEMMs' operand, without a pass of its
 * own.  xn, when not NULL, receives forward's output again (in xn_dt, bit for bit what
 * cuda_rmsnorm_forward wrote): the pass reads x anyway, so the model keeps x and rstd instead of
 * the output too.  dout may be bf16 (dout_dt): the GEMM that makes it writes half the bytes
 * and this pass reads half, and the sums here are float32 either way.  inp may be the bf16
 * copy cuda_rmsnorm_forward_keep wrote (inp_dt bf16). */
int cuda_rmsnorm_backward_xn(float *dinp,         /* (N, C) or NULL */
                             void *dinp_b,        /* (N, C) bf16 or NULL */
                             void *xn,            /* (N, C) of xn_dt, or NULL */
                             cuda_dtype xn_dt,
                             float *dweight,      /* (C) or NULL */
                             float *scratch,      /* cuda_colsum_scratch(N, C) floats */
                             const void *dout,    /* (N, C) of dout_dt */
                             cuda_dtype dout_dt,
                             const void *inp,     /* (N, C) of inp_dt */
                             cuda_dtype inp_dt,
                             const float *weight, /* (C) */
                             const float *rstd,   /* (N) from forward */
                             int64_t N, int64_t C, cudaStream_t s, primal_err *err)
{
    if (N == 0)
        return PRIMAL_OK;
    if (dinp == NULL && dweight == NULL)
        return xn != NULL ? cuda_rmsnorm_apply(xn, xn_dt, rstd, inp, inp_dt, weight, N, C, s, err)
                          : PRIMAL_OK;
    int64_t nchunks = (N + CUDA_COLSUM_ROWS - 1) / CUDA_COLSUM_ROWS;
    int vec = C % 8 == 0 && C <= RMS_VEC_MAX && cuda_aligned8(dout) && cuda_aligned8(inp) &&
              cuda_aligned8(weight) && (dinp == NULL || cuda_aligned8(dinp)) &&
              (dinp_b == NULL || cuda_aligned8(dinp_b)) && (xn == NULL || cuda_aligned8(xn));
    const __nv_bfloat16 *dyb = (const __nv_bfloat16 *)dout, *xb = (const __nv_bfloat16 *)inp;
    const float *dyf = (const float *)dout, *xf = (const float *)inp;
    __nv_bfloat16 *b = (__nv_bfloat16 *)dinp_b;
    if (vec) {
        float *part = dweight != NULL ? scratch : NULL;
        __nv_bfloat16 *onb = xn_dt == CUDA_BF16 ? (__nv_bfloat16 *)xn : NULL;
        float *onf = xn_dt == CUDA_F32 ? (float *)xn : NULL;
        size_t shb = (size_t)C * sizeof(float);
        int npl = (int)((C + 255) / 256);
        unsigned nb = (unsigned)nchunks;
        if (dout_dt == CUDA_BF16 && inp_dt == CUDA_BF16)
            rms_bwd_warp_launch(npl, nb, shb, s, dinp, b, onb, onf, part, dyb, xb, weight, rstd,
                                N, (int)C);
        else if (dout_dt == CUDA_BF16)
            rms_bwd_warp_launch(npl, nb, shb, s, dinp, b, onb, onf, part, dyb, xf, weight, rstd,
                                N, (int)C);
        else if (inp_dt == CUDA_BF16)
            rms_bwd_warp_launch(npl, nb, shb, s, dinp, b, onb, onf, part, dyf, xb, weight, rstd,
                                N, (int)C);
        else
            rms_bwd_warp_launch(npl, nb, shb, s, dinp, b, onb, onf, part, dyf, xf, weight, rstd,
                                N, (int)C);
        CUDA_LAUNCHED("rmsnorm_backward", err);
        return dweight != NULL ? cuda_colsum_finish(dweight, scratch, nchunks, C, s, err)
                               : PRIMAL_OK;
    }
    if (xn != NULL) {
        int rc = cuda_rmsnorm_apply(xn, xn_dt, rstd, inp, inp_dt, weight, N, C, s, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    float *part = dweight != NULL ? scratch : NULL;
    if (dout_dt == CUDA_BF16 && inp_dt == CUDA_BF16)
        rms_bwd_rows_launch(dinp, b, part, dyb, xb, weight, rstd, N, C, nchunks, s);
    else if (dout_dt == CUDA_BF16)
        rms_bwd_rows_launch(dinp, b, part, dyb, xf, weight, rstd, N, C, nchunks, s);
    else if (inp_dt == CUDA_BF16)
        rms_bwd_rows_launch(dinp, b, part, dyf, xb, weight, rstd, N, C, nchunks, s);
    else
        rms_bwd_rows_launch(dinp, b, part, dyf, xf, weight, rstd, N, C, nchunks, s);
    CUDA_LAUNCHED("rmsnorm_backward", err);
    return dweight != NULL ? cuda_colsum_finish(dweight, scratch, nchunks, C, s, err)
                           : PRIMAL_OK;
}
