/* swiglu.cu: out = silu(gate) · up, silu(g) = g·sigmoid(g), elementwise; backward with
 * s = sigmoid(g): dgate = dout·up·s·(1 + g·(1 − s)), dup = dout·g·s.  SPEC.md, "Models".
 * Every operand is in the compute dtype: gate and up come from GEMMs and are kept for backward
 * (or made again there), act feeds the down projection, dout comes from its backward GEMM,
 * dgate and dup feed the gate and up projections' backward.  Backward can write dgate and dup
 * over gate and up, and make act again over dout, so the model keeps neither act nor a
 * separate gradient matrix: act is one of the cheapest things to recompute, one more write in
 * a pass that reads the same operands anyway.  In bf16 that halves both the traffic of these memory-bound
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

/* Row n of gate and up starts at n·ld (ld >= F): the model keeps them side by side in one
 * (N, 2F) matrix, which one stacked GEMM writes.  vec: eight elements a thread (F and ld
 * multiples of 8, 16-byte aligned operands), else one. */
template <typename Tp>
__global__ void swiglu_forward_kernel(Tp *act,        /* (N, F) */
                                      const Tp *gate, /* (N rows of ld, F) */
                                      const Tp *up,   /* (N rows of ld, F) */
                                      int64_t N, int64_t F, int64_t ld, int vec)
{
    if (vec) {
        const int64_t f8 = F / 8;
        CUDA_FOR(j, N * f8)
        {
            const int64_t n = j / f8, o = n * ld + (j - n * f8) * 8;
            float g[8], u[8], a[8];
            cuda_ld8(g, gate + o);
            cuda_ld8(u, up + o);
            for (int k = 0; k < 8; k++)
                a[k] = silu_up(g[k], u[k]);
            cuda_st8(act + 8 * j, a);
        }
        return;
    }
    CUDA_FOR(i, N * F)
    {
        const int64_t n = i / F, o = n * ld + (i - n * F);
        cuda_st(act, i, silu_up(cuda_ld(gate, o), cuda_ld(up, o)));
    }
}

/* dgate and dup are written (not accumulated) at gate's and up's positions, and may be gate
 * and up themselves; act, when not NULL, gets silu(gate)·up again and may be dout itself.  No
 * __restrict__: every element is read before the one thread that owns it overwrites it, which
 * is what makes the in-place use safe. */
template <typename Tp>
__global__ void swiglu_backward_kernel(Tp *dgate,      /* (N rows of ld, F) */
                                       Tp *dup,        /* (N rows of ld, F) */
                                       Tp *act,        /* (N, F) or NULL */
                                       const Tp *dout, /* (N, F) */
                                       const Tp *gate, /* (N rows of ld, F) */
                                       const Tp *up,   /* (N rows of ld, F) */
                                       int64_t N, int64_t F, int64_t ld, int vec)
{
    if (vec) {
        const int64_t f8 = F / 8;
        CUDA_FOR(j, N * f8)
        {
            const int64_t n = j / f8, o = n * ld + (j - n * f8) * 8;
            float d[8], g[8], u[8], dg[8], du[8];
            cuda_ld8(d, dout + 8 * j);
            cuda_ld8(g, gate + o);
            cuda_ld8(u, up + o);
            for (int k = 0; k < 8; k++)
                silu_up_grad(&dg[k], &du[k], d[k], g[k], u[k]);
            if (act != NULL) {
                for (int k = 0; k < 8; k++)
                    d[k] = silu_up(g[k], u[k]);
                cuda_st8(act + 8 * j, d);
            }
            cuda_st8(dgate + o, dg);
            cuda_st8(dup + o, du);
        }
        return;
    }
    CUDA_FOR(i, N * F)
    {
        const int64_t n = i / F, o = n * ld + (i - n * F);
        float dg, du, g = cuda_ld(gate, o), u = cuda_ld(up, o);
        silu_up_grad(&dg, &du, cuda_ld(dout, i), g, u);
        if (act != NULL)
            cuda_st(act, i, silu_up(g, u));
        cuda_st(dgate, o, dg);
        cuda_st(dup, o, du);
    }
}

static int vec_ok(int64_t F, int64_t ld, const void *a, const void *b, const void *c,
                  const void *d, const void *e)
{
    return F % 8 == 0 && ld % 8 == 0 && cuda_aligned8(a) && cuda_aligned8(b) &&
           cuda_aligned8(c) && cuda_aligned8(d) && cuda_aligned8(e);
}

int cuda_swiglu_forward(void *act, cuda_dtype dt, const void *gate, const void *up, int64_t ld,
                        int64_t N, int64_t F, cudaStream_t s, primal_err *err)
{
    int64_t n = N * F;
    if (n == 0)
        return PRIMAL_OK;
    int vec = vec_ok(F, ld, act, gate, up, act, act);
    unsigned nb = cuda_blocks(vec ? n / 8 : n, 256);
    if (dt == CUDA_BF16)
        swiglu_forward_kernel<<<nb, 256, 0, s>>>((__nv_bfloat16 *)act,
                                                 (const __nv_bfloat16 *)gate,
                                                 (const __nv_bfloat16 *)up, N, F, ld, vec);
    else
        swiglu_forward_kernel<<<nb, 256, 0, s>>>((float *)act, (const float *)gate,
                                                 (const float *)up, N, F, ld, vec);
    CUDA_LAUNCHED("swiglu_forward", err);
    return PRIMAL_OK;
}

int cuda_swiglu_backward(void *dgate, void *dup, void *act, cuda_dtype dt, const void *dout,
                         const void *gate, const void *up, int64_t ld, int64_t N, int64_t F,
                         cudaStream_t s, primal_err *err)
{
    int64_t n = N * F;
    if (n == 0)
        return PRIMAL_OK;
    int vec = vec_ok(F, ld, dgate, dup, dout, gate, up) && (act == NULL || cuda_aligned8(act));
    unsigned nb = cuda_blocks(vec ? n / 8 : n, 256);
    if (dt == CUDA_BF16)
        swiglu_backward_kernel<<<nb, 256, 0, s>>>(
            (__nv_bfloat16 *)dgate, (__nv_bfloat16 *)dup, (__nv_bfloat16 *)act,
            (const __nv_bfloat16 *)dout, (const __nv_bfloat16 *)gate,
            (const __nv_bfloat16 *)up, N, F, ld, vec);
    else
        swiglu_backward_kernel<<<nb, 256, 0, s>>>((float *)dgate, (float *)dup, (float *)act,
                                                  (const float *)dout, (const float *)gate,
                                                  (const float *)up, N, F, ld, vec);
    CUDA_LAUNCHED("swiglu_backward", err);
    return PRIMAL_OK;
}
