/* rope.h: rotary position embedding on the GPU, fused with the move between the token-major
 * layout of the projections and the head-major layout of attention.  See rope.cu. */
#ifndef PRIMAL_KERNELS_CUDA_ROPE_H
#define PRIMAL_KERNELS_CUDA_ROPE_H

#include "cuda_common.h"

CUDA_EXTERN_C int cuda_rope_pack(void *qh, void *kh, void *vh, cuda_dtype dt, const void *q,
                                 const void *k, const void *v, int64_t ldq, int64_t ldkv,
                                 const float *bq, const float *bk,
                                 const float *bv, const float *cosv, const float *sinv, int B,
                                 int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err);
CUDA_EXTERN_C int cuda_rope_unpack_grad(float *dq, float *dk, float *dv, void *dqb, void *dkb,
                                        void *dvb, int64_t ld, const float *dqh,
                                        const float *dkh, const float *dvh, const float *cosv,
                                        const float *sinv, int B, int T, int H, int KVH, int hd,
                                        cudaStream_t s, primal_err *err);

#endif
