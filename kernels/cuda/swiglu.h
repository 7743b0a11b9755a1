/* swiglu.h: the SwiGLU gate of the MLP on the GPU.  See swiglu.cu. */
#ifndef PRIMAL_KERNELS_CUDA_SWIGLU_H
#define PRIMAL_KERNELS_CUDA_SWIGLU_H

#include "cuda_common.h"

/* Every pointer holds elements of dt. */
/* act (N, F) = silu(gate)·up, gate and up rows at n·ld (ld >= F). */
CUDA_EXTERN_C int cuda_swiglu_forward(void *act, cuda_dtype dt, const void *gate,
                                      const void *up, int64_t ld, int64_t N, int64_t F,
                                      cudaStream_t s, primal_err *err);
/* dgate, dup (at gate's and up's row stride ld; may be gate and up) from dout (N, F); act (N, F;
 * may be dout; NULL: not wanted) = silu(gate)·up again. */
CUDA_EXTERN_C int cuda_swiglu_backward(void *dgate, void *dup, void *act, cuda_dtype dt,
                                       const void *dout, const void *gate, const void *up,
                                       int64_t ld, int64_t N, int64_t F, cudaStream_t s,
                                       primal_err *err);

#endif
