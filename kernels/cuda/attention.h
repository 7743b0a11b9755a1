/* attention.h: causal softmax attention with grouped-query heads on the GPU: fused kernels for
 * bf16 (attention_flash.cu), cuBLAS strided-batched GEMMs and row kernels otherwise.  See
 * attention.cu. */
#ifndef PRIMAL_KERNELS_CUDA_ATTENTION_H
#define PRIMAL_KERNELS_CUDA_ATTENTION_H

#include <cublas_v2.h>

#include "cuda_common.h"

/* Scratch for Bc batch rows at a time (carved from one allocation by cuda_attn_layout).  The
 * fused path needs none of the (T, T) buffers: they are NULL there. */
typedef struct cuda_attn_scratch {
    float *S;         /* (Bc, H, T, T) scores */
    void *P;          /* (Bc, H, T, T) probabilities, dt; the same memory as S in float32 */
    float *dP;        /* (Bc, H, T, T) */
    void *dS;         /* (Bc, H, T, T) dt; the same memory as dP in float32 */
    float *Oh;        /* (Bc, H, T, hd) forward output; backward: dL/dq head-major */
    void *dOh;        /* (Bc, H, T, hd) dt; none under the fused kernels */
    float *dKh, *dVh; /* (Bc, KVH, T, hd) */
    float *D;         /* (Bc, H, T) rowsum(dout · out) */
    int Bc;
    int flash; /* the fused kernels run */
} cuda_attn_scratch;

/* Lays out the scratch at base (NULL: only sizes it) and returns its bytes.  fused = 1 takes
 * the fused kernels where they apply (bf16, head size 32, 64 or 128), 0 never. */
CUDA_EXTERN_C size_t cuda_attn_layout(cuda_attn_scratch *sc, void *base, cuda_dtype dt, int Bc,
                                      int T, int H, int KVH, int hd, int fused);
CUDA_EXTERN_C int cuda_attention_forward(void *out, float *lse, const void *qh, const void *kh,
                                         const void *vh, const cuda_attn_scratch *sc,
                                         cublasHandle_t cb, cuda_dtype dt, int B, int T, int H,
                                         int KVH, int hd, cudaStream_t s, primal_err *err);
CUDA_EXTERN_C int cuda_attention_backward(float *dq, float *dk, float *dv, void *dqb, void *dkb,
                                          void *dvb, int64_t ld, const void *dout,
                                          const void *out, const float *lse, const void *qh,
                                          const void *kh, const void *vh, const float *cosv,
                                          const float *sinv, const cuda_attn_scratch *sc,
                                          cublasHandle_t cb, cuda_dtype dt, int B, int T, int H,
                                          int KVH, int hd, cudaStream_t s, primal_err *err);

#endif
