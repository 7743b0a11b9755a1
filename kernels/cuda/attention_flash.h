/* attention_flash.h: fused causal attention for bf16 operands (FlashAttention-2 tiling on
 * mma.sync), the kernels behind attention.h for head sizes 32, 64 and 128.  See
 * attention_flash.cu.  Private to kernels/cuda/attention.cu and its tests. */
#ifndef PRIMAL_KERNELS_CUDA_ATTENTION_FLASH_H
#define PRIMAL_KERNELS_CUDA_ATTENTION_FLASH_H

#include "cuda_common.h"

/* Whether the fused kernels take this dtype and head size. */
CUDA_EXTERN_C int cuda_flash_supported(cuda_dtype dt, int hd);

/* out (B, T, H, hd) bfloat16 token-major, lse (B, H, T) natural log; q (B, H, T, hd), k and v
 * (B, KVH, T, hd), bfloat16 head-major. */
CUDA_EXTERN_C int cuda_flash_forward(void *out, float *lse, const void *qh, const void *kh,
                                     const void *vh, int B, int T, int H, int KVH, int hd,
                                     cudaStream_t s, primal_err *err);

/* dq (B·T rows of ld, H·hd), dk and dv (B·T rows of ld, KVH·hd), token-major, written, dq and
 * dk rotated back through RoPE (cosv, sinv: (>= T, hd/2)); each in float32 and/or bf16 (the
 * other NULL).  dout and out (B, T, H, hd) bfloat16 token-major: the output's gradient and the
 * output; D (B, H, T) scratch, where the kernels leave rowsum(dO ∘ O). */
CUDA_EXTERN_C int cuda_flash_backward(float *dq, float *dk, float *dv, void *dqb, void *dkb,
                                      void *dvb, int64_t ld, const float *cosv,
                                      const float *sinv, const void *qh, const void *kh,
                                      const void *vh, const void *dout, const void *out,
                                      const float *lse, float *D, int B, int T, int H, int KVH,
                                      int hd, cudaStream_t s, primal_err *err);

#endif
