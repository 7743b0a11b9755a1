/* elementwise.h: the small GPU kernels of the model: bias gradient, sum of squares.  See elementwise.cu. */
#ifndef PRIMAL_KERNELS_CUDA_ELEMENTWISE_H
#define PRIMAL_KERNELS_CUDA_ELEMENTWISE_H

#include "cuda_common.h"

/* Rows summed per block by the column-sum kernels; scratch for them is
 * cuda_colsum_scratch(N, C) floats. */
#define CUDA_COLSUM_ROWS 64
#define CUDA_SUMSQ_BLOCKS 256

static inline int64_t cuda_colsum_scratch(int64_t N, int64_t C)
{
    return (N + CUDA_COLSUM_ROWS - 1) / CUDA_COLSUM_ROWS * C;
}

/* out (OC) += column sums of partial (nchunks, OC), deterministic (fixed order). */
CUDA_EXTERN_C int cuda_colsum_finish(float *out, const float *partial, int64_t nchunks,
                                     int64_t OC, cudaStream_t s, primal_err *err);
/* dbias (OC) += column sums of dout, N rows of ld (>= OC) floats. */
CUDA_EXTERN_C int cuda_bias_backward(float *dbias, float *scratch, const float *dout, int64_t ld,
                                     int64_t N, int64_t OC, cudaStream_t s, primal_err *err);
/* sum(x²) over any number of calls: cuda_sumsq adds into scratch (zeroed to start), and
 * cuda_sumsq_finish adds the total to acc and zeroes scratch again. */
CUDA_EXTERN_C int cuda_sumsq(double *scratch, const float *x, int64_t n, cudaStream_t s,
                             primal_err *err);
/* ... and over n tensors in one launch: list is copied to dev_list (n items, device) first. */
typedef struct cuda_sumsq_item {
    const float *x;
    int64_t n;
} cuda_sumsq_item;
CUDA_EXTERN_C int cuda_sumsq_list(double *scratch, cuda_sumsq_item *dev_list,
                                  const cuda_sumsq_item *list, int n, cudaStream_t s,
                                  primal_err *err);
CUDA_EXTERN_C int cuda_sumsq_finish(double *acc, double *scratch, cudaStream_t s,
                                    primal_err *err);

#endif
