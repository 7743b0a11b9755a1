/* dequant.h: indexed matrices on the GPU: rows of W from (index, scale, grid), and the scale
 * gradient from a G tile.  See dequant.cu. */
#ifndef PRIMAL_KERNELS_CUDA_DEQUANT_H
#define PRIMAL_KERNELS_CUDA_DEQUANT_H

#include <primal/plugin.h>

#include "cuda_common.h"

CUDA_EXTERN_C int cuda_dequant_rows(void *out, cuda_dtype dt, const primal_qtensor *w,
                                    int64_t r0, int64_t nrows, cudaStream_t s, primal_err *err);
CUDA_EXTERN_C int cuda_scale_grad(float *dscale, double *sq_part, unsigned int *amax,
                                  unsigned int *amax_zero, int *amax_done, const float *G,
                                  const primal_qtensor *w, int64_t r0, int64_t nrows,
                                  cudaStream_t s, primal_err *err);

#endif
