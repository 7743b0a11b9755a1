/* adamw.h: AdamW over many float tensors in one GPU launch.  See adamw.cu. */
#ifndef PRIMAL_KERNELS_CUDA_ADAMW_H
#define PRIMAL_KERNELS_CUDA_ADAMW_H

#include "cuda_common.h"

typedef struct cuda_adamw_tensor {
    float *w;       /* (n) parameters, updated in place */
    const float *g; /* (n) gradient */
    float *m, *v;   /* (n) moments */
    int64_t n;
    double bc1, bc2; /* bias corrections 1 − β1^t, 1 − β2^t for this tensor's step t */
} cuda_adamw_tensor;

typedef struct cuda_adamw_hp {
    double lr, beta1, beta2, eps, weight_decay;
    double grad_scale; /* gradients are multiplied by it first (clipping) */
} cuda_adamw_hp;

CUDA_EXTERN_C int cuda_adamw(cuda_adamw_tensor *dev_list, const cuda_adamw_tensor *list, int n,
                             const cuda_adamw_hp *hp, cudaStream_t s, primal_err *err);

#endif
