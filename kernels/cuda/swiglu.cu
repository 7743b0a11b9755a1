/* swiglu.cu: out = silu(gate) · up, silu(g) = g·sigmoid(g), elementwise; backward with
 * s = sigmoid(g): dgate = dout·up·s·(1 + g·(1 − s)), dup = dout·g·s.  SPEC.md, "Models".
 * Every operand is in the compute dtype: gate and up come from GEMMs and are kept for backward,
 * out feeds the down projection, dout comes from its backward GEMM, dgate and dup feed the gate
 * and up projections' backward.  In bf16 that halves both the traffic of these memory-bound
 * passes and the MLP's share of the activations.  Math is in float32.
 * CPU twins: kernels/cpu/swiglu.c.  No keys. */
#include "swiglu.h"

__device__ __forceinline__ float silu_up(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
}

__device__ __forceinline__ void silu_up_grad(float *dg, float *du, float d, float g, float u)
{
    float sg = 1.0f / (1.0f + expf(-g));
    *dg = d * u * sg * (1.0f + g * (1.0f - sg));
    *du = d * g * sg;
}

/* vec: eight elements a thread (n % 8 == 0, 16-byte aligned operands), else one. */
template <typename Tp>
__global__ void swiglu_forward_kernel(Tp *out,        /* (n) */
                                      const Tp *gate, /* (n) */
                                      const Tp *up,   /* (n) */
                                      int64_t n, int vec)
{
    if (vec) {
        CUDA_FOR(j, n / 8)
        {
            float g[8], u[8], o[8];
            cuda_ld8(g, gate + 8 * j);
            cuda_ld8(u, up + 8 * j);
            for (int k = 0; k < 8; k++)
                o[k] = silu_up(g[k], u[k]);
            cuda_st8(out + 8 * j, o);
        }
        return;
    }
    CUDA_FOR(i, n)
    cuda_st(out, i, silu_up(cuda_ld(gate, i), cuda_ld(up, i)));
}

/* dgate and dup are written (not accumulated), row n at n·ld. */
template <typename Tp>
__global__ void swiglu_backward_kernel(Tp *dgate,      /* (N rows of ld, F) */
                                       Tp *dup,        /* (N rows of ld, F) */
                                       const Tp *dout, /* (N, F) */
                                       const Tp *gate, /* (N, F) */
                                       const Tp *up,   /* (N, F) */
                                       int64_t N, int64_t F, int64_t ld, int vec)
{
    if (vec) {
        const int64_t f8 = F / 8;
        CUDA_FOR(j, N * f8)
        {
            const int64_t n = j / f8, o = n * ld + (j - n * f8) * 8;
            float d[8], g[8], u[8], dg[8], du[8];
            cuda_ld8(d, dout + 8 * j);
            cuda_ld8(g, gate + 8 * j);
            cuda_ld8(u, up + 8 * j);
            for (int k = 0; k < 8; k++)
                silu_up_grad(&dg[k], &du[k], d[k], g[k], u[k]);
            cuda_st8(dgate + o, dg);
            cuda_st8(dup + o, du);
        }
        return;
    }
    CUDA_FOR(i, N * F)
    {
        const int64_t n = i / F, o = n * ld + (i - n * F);
        float dg, du;
        silu_up_grad(&dg, &du, cuda_ld(dout, i), cuda_ld(gate, i), cuda_ld(up, i));
        cuda_st(dgate, o, dg);
        cuda_st(dup, o, du);
    }
}

static int vec_ok(int64_t n, const void *a, const void *b, const void *c, const void *d,
                  const void *e)
{
    return n % 8 == 0 && cuda_aligned8(a) && cuda_aligned8(b) && cuda_aligned8(c) &&
           cuda_aligned8(d) && cuda_aligned8(e);
}

int cuda_swiglu_forward(void *out, cuda_dtype dt, const void *gate, const void *up, int64_t n,
                        cudaStream_t s, primal_err *err)
{
    if (n == 0)
        return PRIMAL_OK;
    int vec = vec_ok(n, out, gate, up, out, out);
    unsigned nb = cuda_blocks(vec ? n / 8 : n, 256);
    if (dt == CUDA_BF16)
        swiglu_forward_kernel<<<nb, 256, 0, s>>>((__nv_bfloat16 *)out,
                                                 (const __nv_bfloat16 *)gate,
                                                 (const __nv_bfloat16 *)up, n, vec);
    else
        swiglu_forward_kernel<<<nb, 256, 0, s>>>((float *)out, (const float *)gate,
                                                 (const float *)up, n, vec);
    CUDA_LAUNCHED("swiglu_forward", err);
    return PRIMAL_OK;
}

/* dgate and dup may be two column blocks of one (N, ld) matrix (the model's stacked gate/up
 * gradient), ld >= F. */
int cuda_swiglu_backward(void *dgate, void *dup, int64_t ld, cuda_dtype dt, const void *dout,
                         const void *gate, const void *up, int64_t N, int64_t F, cudaStream_t s,
                         primal_err *err)
{
    int64_t n = N * F;
    if (n == 0)
        return PRIMAL_OK;
    int vec = F % 8 == 0 && ld % 8 == 0 && vec_ok(n, dgate, dup, dout, gate, up);
    unsigned nb = cuda_blocks(vec ? n / 8 : n, 256);
    if (dt == CUDA_BF16)
        swiglu_backward_kernel<<<nb, 256, 0, s>>>(
            (__nv_bfloat16 *)dgate, (__nv_bfloat16 *)dup, (const __nv_bfloat16 *)dout,
            (const __nv_bfloat16 *)gate, (const __nv_bfloat16 *)up, N, F, ld, vec);
    else
        swiglu_backward_kernel<<<nb, 256, 0, s>>>((float *)dgate, (float *)dup,
                                                  (const float *)dout, (const float *)gate,
                                                  (const float *)up, N, F, ld, vec);
    CUDA_LAUNCHED("swiglu_backward", err);
    return PRIMAL_OK;
}
