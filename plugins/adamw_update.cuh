/* adamw_update.cuh: the AdamW step on the GPU, element by element in the CPU's float order
 * (adamw_update.h, whose constants it takes), for the two plugins that run it: adamw_cuda.cu on
 * dense weights, latent_adamw_cuda.cu on its float shadow.  Each includes it into its own
 * module.  No keys. */
#ifndef PRIMAL_PLUGINS_ADAMW_UPDATE_CUH
#define PRIMAL_PLUGINS_ADAMW_UPDATE_CUH

#include "adamw_update.h"

/* gsum += G. */
__global__ void adamw_accum_kernel(float *gsum,    /* (n) in/out */
                                   const float *G, /* (n) */
                                   int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        gsum[i] = __fadd_rn(gsum[i], G[i]);
}

/* One AdamW update of n weights, then gsum = 0. */
__global__ void adamw_update_kernel(float *w,    /* (n) weights, in/out */
                                    float *m,    /* (n) first moment, in/out */
                                    float *v,    /* (n) second moment, in/out */
                                    float *gsum, /* (n) gradient sum, read then zeroed */
                                    adamw_consts k, int64_t n)
{
    const float ob1 = __fsub_rn(1.0f, k.b1), ob2 = __fsub_rn(1.0f, k.b2);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = __fmul_rn(gsum[i], k.clip);
        const float mi = __fadd_rn(__fmul_rn(k.b1, m[i]), __fmul_rn(ob1, g));
        const float vi = __fadd_rn(__fmul_rn(k.b2, v[i]), __fmul_rn(__fmul_rn(ob2, g), g));
        float wi = __fmul_rn(w[i], k.decay);
        const float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k.rbc2), k.eps);
        wi = __fsub_rn(wi, __fdiv_rn(__fmul_rn(k.step, mi), den));
        m[i] = mi;
        v[i] = vi;
        w[i] = wi;
        gsum[i] = 0.0f;
    }
}

#endif
