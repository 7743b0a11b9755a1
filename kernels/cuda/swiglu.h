/* swiglu.h: the SwiGLU gate of the MLP on the GPU.  See swiglu.cu. */
#ifndef PRIMAL_KERNELS_CUDA_SWIGLU_H
#define PRIMAL_KERNELS_CUDA_SWIGLU_H

#include "cuda_common.h"

/* Every pointer holds elements of dt: n for forward; (N, F) for backward, whose outputs dgate
 * and dup have rows of ld. */
CUDA_EXTERN_C int cuda_swiglu_forward(void *out, cuda_dtype dt, const void *gate,
                                      const void *up, int64_t n, cudaStream_t s,
                                      primal_err *err);
CUDA_EXTERN_C int cuda_swiglu_backward(void *dgate, void *dup, int64_t ld, cuda_dtype dt,
                                       const void *dout, const void *gate, const void *up,
                                       int64_t N, int64_t F, cudaStream_t s, primal_err *err);

#endif
