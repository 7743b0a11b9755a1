/* swiglu.h: the SwiGLU gate of the MLP on the GPU.  See swiglu.cu. */
#ifndef PRIMAL_KERNELS_CUDA_SWIGLU_H
#define PRIMAL_KERNELS_CUDA_SWIGLU_H

#include "cuda_common.h"

CUDA_EXTERN_C int cuda_swiglu_forward(void *out, cuda_dtype dt, const float *gate,
                                      const float *up, int64_t n, cudaStream_t s,
                                      primal_err *err);
CUDA_EXTERN_C int cuda_swiglu_backward(void *dgate, void *dup, cuda_dtype dt, const float *dout,
                                       const float *gate, const float *up, int64_t n,
                                       cudaStream_t s, primal_err *err);

#endif
