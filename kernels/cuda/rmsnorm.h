/* rmsnorm.h: RMSNorm forward and backward on the GPU.  See rmsnorm.cu. */
#ifndef PRIMAL_KERNELS_CUDA_RMSNORM_H
#define PRIMAL_KERNELS_CUDA_RMSNORM_H

#include "cuda_common.h"

CUDA_EXTERN_C int cuda_rmsnorm_forward(void *out, cuda_dtype dt, float *rstd, const float *inp,
                                       const float *weight, int64_t N, int64_t C, float eps,
                                       cudaStream_t s, primal_err *err);
CUDA_EXTERN_C int cuda_rmsnorm_forward_keep(void *out, cuda_dtype dt, float *rstd, void *keep,
                                            const float *inp, const float *weight, int64_t N,
                                            int64_t C, float eps, cudaStream_t s,
                                            primal_err *err);
CUDA_EXTERN_C int cuda_rmsnorm_backward(float *dinp, void *dinp_b, float *dweight, float *scratch,
                                        const float *dout, const float *inp, const float *weight,
                                        const float *rstd, int64_t N, int64_t C, cudaStream_t s,
                                        primal_err *err);
CUDA_EXTERN_C int cuda_rmsnorm_backward_xn(float *dinp, void *dinp_b, void *xn, cuda_dtype xn_dt,
                                           float *dweight, float *scratch, const void *dout,
                                           cuda_dtype dout_dt, const void *inp,
                                           cuda_dtype inp_dt, const float *weight,
                                           const float *rstd, int64_t N, int64_t C,
                                           cudaStream_t s, primal_err *err);
CUDA_EXTERN_C int cuda_rmsnorm_apply(void *out, cuda_dtype dt, const float *rstd,
                                     const void *inp, cuda_dtype inp_dt, const float *weight,
                                     int64_t N, int64_t C, cudaStream_t s, primal_err *err);

#endif
