/* adamw.cu: AdamW on the float parameters (row scales, norm weights, biases) of every trainable
 * tensor in one launch: blockIdx.y picks the tensor, blocks stride over its elements.  Per
 * element, in double as the CPU trainer (core/train.c) computes it:
 *   g = grad · grad_scale;  m = β1·m + (1 − β1)·g;  v = β2·v + (1 − β2)·g²;
 *   w −= lr · ((m / bc1) / (sqrt(v / bc2) + eps) + weight_decay · w).
 * SPEC.md, "Flip policies" (scales and norms train with AdamW).  No keys. */
#include "adamw.h"

__global__ void adamw_kernel(const cuda_adamw_tensor *list, /* (gridDim.y) */
                             cuda_adamw_hp hp)
{
    cuda_adamw_tensor t = list[blockIdx.y];
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < t.n;
         k += (int64_t)gridDim.x * blockDim.x) {
        double g = (double)t.g[k] * hp.grad_scale;
        float m = (float)(hp.beta1 * t.m[k] + (1.0 - hp.beta1) * g);
        float v = (float)(hp.beta2 * t.v[k] + (1.0 - hp.beta2) * g * g);
        t.m[k] = m;
        t.v[k] = v;
        double mh = m / t.bc1, vh = v / t.bc2, w = t.w[k];
        t.w[k] = (float)(w - hp.lr * (mh / (sqrt(vh) + hp.eps) + hp.weight_decay * w));
    }
}

/* list is copied to dev_list (n entries of device memory) on the stream first. */
int cuda_adamw(cuda_adamw_tensor *dev_list,     /* (n) device scratch */
               const cuda_adamw_tensor *list,   /* (n) host; its pointers are device ones */
               int n, const cuda_adamw_hp *hp, cudaStream_t s, primal_err *err)
{
    if (n == 0)
        return PRIMAL_OK;
    int64_t maxn = 1;
    for (int i = 0; i < n; i++)
        maxn = list[i].n > maxn ? list[i].n : maxn;
    if (n > 65535)
        return primal_errf(err, PRIMAL_ERROR, "cuda_adamw: %d tensors, at most 65535", n);
    CUDA_TRY(cudaMemcpyAsync(dev_list, list, (size_t)n * sizeof *list, cudaMemcpyHostToDevice, s),
             err);
    unsigned bx = cuda_blocks(maxn, 256);
    if (bx > 1024)
        bx = 1024;
    adamw_kernel<<<dim3(bx, (unsigned)n), 256, 0, s>>>(dev_list, *hp);
    CUDA_LAUNCHED("adamw", err);
    return PRIMAL_OK;
}
