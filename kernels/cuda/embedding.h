/* embedding.h: token embedding over an indexed matrix on the GPU.  See embedding.cu. */
#ifndef PRIMAL_KERNELS_CUDA_EMBEDDING_H
#define PRIMAL_KERNELS_CUDA_EMBEDDING_H

#include <primal/plugin.h>

#include "cuda_common.h"

CUDA_EXTERN_C int cuda_embedding_forward(float *out, const int32_t *tokens,
                                         const primal_qtensor *E, int64_t N, cudaStream_t s,
                                         primal_err *err);
CUDA_EXTERN_C void cuda_embedding_sort(int32_t *start, int32_t *order, const int32_t *tokens,
                                       int64_t N, int64_t V);
CUDA_EXTERN_C int cuda_embedding_backward(float *G, const float *dout, const int32_t *start,
                                          const int32_t *order, int64_t r0, int64_t nrows,
                                          int64_t C, cudaStream_t s, primal_err *err);

#endif
