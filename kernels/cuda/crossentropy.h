/* crossentropy.h: softmax cross-entropy of the LM head on the GPU.  See crossentropy.cu. */
#ifndef PRIMAL_KERNELS_CUDA_CROSSENTROPY_H
#define PRIMAL_KERNELS_CUDA_CROSSENTROPY_H

#include "cuda_common.h"

/* logits are of type lt: float32, or bfloat16 where the head's GEMM rounds them (training with
 * [run] logits = bf16, as PyTorch's autocast does). */
CUDA_EXTERN_C int cuda_crossentropy_forward(float *losses, float *lse, float *tl,
                                            const void *logits, cuda_dtype lt,
                                            const int32_t *targets,
                                            int64_t v0, int64_t nv, int64_t V, int64_t N,
                                            cudaStream_t s, primal_err *err);
CUDA_EXTERN_C int cuda_loss_mean(float *out, const float *losses, const uint8_t *mask,
                                 int64_t N, int64_t count, cudaStream_t s, primal_err *err);
CUDA_EXTERN_C int cuda_crossentropy_backward(void *dlogits, cuda_dtype dt, const void *logits,
                                             cuda_dtype lt, const float *lse,
                                             const int32_t *targets, const uint8_t *mask, float d,
                                             int64_t v0, int64_t nv, int64_t N, cudaStream_t s,
                                             primal_err *err);

/* The whole-row kernels split a row into at most this many parts; their scratch is
 * cuda_ce_rows_scratch(N) floats (left untouched where a row fits one block cluster: V % 8 ==
 * 0, V ≤ 65536, 16-byte aligned logits and dlogits). */
#define CUDA_CE_PARTS_MAX 64
static inline int64_t cuda_ce_rows_scratch(int64_t N)
{
    return N * 2 * CUDA_CE_PARTS_MAX;
}
CUDA_EXTERN_C int cuda_crossentropy_rows(float *losses, float *lse, void *dlogits, cuda_dtype dt,
                                         const void *logits, cuda_dtype lt,
                                         const int32_t *targets, const uint8_t *mask, float d,
                                         int64_t V, int64_t N, float *scratch, cudaStream_t s,
                                         primal_err *err);

#endif
