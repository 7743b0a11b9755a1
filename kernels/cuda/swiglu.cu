/* swiglu.cu: out = silu(gate) · up, silu(g) = g·sigmoid(g), elementwise; backward with
 * s = sigmoid(g): dgate = dout·up·s·(1 + g·(1 − s)), dup = dout·g·s.  SPEC.md, "Models".
 * The outputs feed GEMMs only (out the down projection, dgate and dup the gate and up
 * projections' backward), so they are written in the compute dtype.
 * CPU twins: kernels/cpu/swiglu.c.  No keys. */
#include "swiglu.h"

template <typename Tp>
__global__ void swiglu_forward_kernel(Tp *out,           /* (n) */
                                      const float *gate, /* (n) */
                                      const float *up,   /* (n) */
                                      int64_t n)
{
    CUDA_FOR(i, n)
    {
        float g = gate[i];
        cuda_st(out, i, g / (1.0f + expf(-g)) * up[i]);
    }
}

int cuda_swiglu_forward(void *out, cuda_dtype dt, const float *gate, const float *up, int64_t n,
                        cudaStream_t s, primal_err *err)
{
    if (n == 0)
        return PRIMAL_OK;
    if (dt == CUDA_BF16)
        swiglu_forward_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>((__nv_bfloat16 *)out, gate, up,
                                                                  n);
    else
        swiglu_forward_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>((float *)out, gate, up, n);
    CUDA_LAUNCHED("swiglu_forward", err);
    return PRIMAL_OK;
}

/* dgate and dup are written (not accumulated). */
template <typename Tp>
__global__ void swiglu_backward_kernel(Tp *dgate,         /* (n) */
                                       Tp *dup,           /* (n) */
                                       const float *dout, /* (n) */
                                       const float *gate, /* (n) */
                                       const float *up,   /* (n) */
                                       int64_t n)
{
    CUDA_FOR(i, n)
    {
        float g = gate[i];
        float sg = 1.0f / (1.0f + expf(-g));
        float d = dout[i];
        cuda_st(dgate, i, d * up[i] * sg * (1.0f + g * (1.0f - sg)));
        cuda_st(dup, i, d * g * sg);
    }
}

int cuda_swiglu_backward(void *dgate, void *dup, cuda_dtype dt, const float *dout,
                         const float *gate, const float *up, int64_t n, cudaStream_t s,
                         primal_err *err)
{
    if (n == 0)
        return PRIMAL_OK;
    if (dt == CUDA_BF16)
        swiglu_backward_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>(
            (__nv_bfloat16 *)dgate, (__nv_bfloat16 *)dup, dout, gate, up, n);
    else
        swiglu_backward_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>((float *)dgate, (float *)dup,
                                                                   dout, gate, up, n);
    CUDA_LAUNCHED("swiglu_backward", err);
    return PRIMAL_OK;
}
