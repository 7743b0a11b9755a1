/* swiglu.cu: out = silu(gate) · up, silu(g) = g·sigmoid(g), elementwise; backward with
 * s = sigmoid(g): dgate = dout·up·s·(1 + g·(1 − s)), dup = dout·g·s.  SPEC.md, "Models".
 * CPU twins: kernels/cpu/swiglu.c.  No keys. */
#include "swiglu.h"

__global__ void swiglu_forward_kernel(float *out,        /* (n) */
                                      const float *gate, /* (n) */
                                      const float *up,   /* (n) */
                                      int64_t n)
{
    CUDA_FOR(i, n)
    {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

int cuda_swiglu_forward(float *out, const float *gate, const float *up, int64_t n,
                        cudaStream_t s, primal_err *err)
{
    if (n == 0)
        return PRIMAL_OK;
    swiglu_forward_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>(out, gate, up, n);
    CUDA_LAUNCHED("swiglu_forward", err);
    return PRIMAL_OK;
}

/* dgate and dup are written (not accumulated). */
__global__ void swiglu_backward_kernel(float *dgate,      /* (n) */
                                       float *dup,        /* (n) */
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
        dgate[i] = d * up[i] * sg * (1.0f + g * (1.0f - sg));
        dup[i] = d * g * sg;
    }
}

int cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                         const float *up, int64_t n, cudaStream_t s, primal_err *err)
{
    if (n == 0)
        return PRIMAL_OK;
    swiglu_backward_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>(dgate, dup, dout, gate, up, n);
    CUDA_LAUNCHED("swiglu_backward", err);
    return PRIMAL_OK;
}
