/* row_ordered_sum.cuh: the row sums of a float matrix in double, in column order, bit for bit
 * the CPU's serial loop.  Private to the policy plugins that need the CPU's exact row statistics
 * on the GPU (momentum_carry_cuda.cu, stochastic_zscore_cuda.cu); each includes it into its
 * own module.  No keys. */
#ifndef PRIMAL_PLUGINS_ROW_ORDERED_SUM_CUH
#define PRIMAL_PLUGINS_ROW_ORDERED_SUM_CUH

#include <stdint.h>

#define SEQ_ROWS 32     /* rows per block of row_ordered_sum, one lane of warp 0 each */
#define SEQ_COLS 128    /* columns per staged tile */
#define SEQ_THREADS 256 /* warp 0 adds, the others stage */
#define SEQ_LOADERS (SEQ_THREADS - 32)
#define SEQ_ITEMS ((SEQ_ROWS * SEQ_COLS + SEQ_LOADERS - 1) / SEQ_LOADERS)

/* out[r] = the sum over c, in column order, of (double)G[r][c] (SQUARE: of its square), each
 * addition rounded in double: the CPU's loop, bit for bit.  The order makes each row's sum one
 * chain of dependent additions, so 32 rows run side by side: warps 1.. stage the next tile of
 * 32 rows x SEQ_COLS columns in shared memory while lane i of warp 0 adds row i of the current
 * tile.  One block per 32 rows. */
template <int SQUARE>
__global__ void __launch_bounds__(SEQ_THREADS, 3)
row_ordered_sum(double *out,    /* (nrows) */
                const float *G, /* (nrows, cols) */
                int64_t nrows, int64_t cols)
{
    __shared__ float tile[2][SEQ_ROWS][SEQ_COLS + 1]; /* +1: lane i reads row i, no conflicts */
    const int64_t r0 = blockIdx.x * (int64_t)SEQ_ROWS;
    const int nr = nrows - r0 < SEQ_ROWS ? (int)(nrows - r0) : SEQ_ROWS;
    const int64_t ntiles = (cols + SEQ_COLS - 1) / SEQ_COLS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int loader = (int)threadIdx.x - 32;
    double acc = 0.0;
    for (int64_t t = -1; t < ntiles; t++) {
        if (warp > 0 && t + 1 < ntiles) { /* stage tile t + 1 */
            const int64_t c0 = (t + 1) * SEQ_COLS;
            const int len = cols - c0 < SEQ_COLS ? (int)(cols - c0) : SEQ_COLS;
            float (*buf)[SEQ_COLS + 1] = tile[(t + 1) & 1];
            float x[SEQ_ITEMS]; /* every load in flight before the first store */
#pragma unroll
            for (int j = 0; j < SEQ_ITEMS; j++) {
                const int e = loader + j * SEQ_LOADERS, i = e / SEQ_COLS, k = e % SEQ_COLS;
                if (e < SEQ_ROWS * SEQ_COLS && i < nr && k < len)
                    x[j] = G[(r0 + i) * cols + c0 + k];
            }
#pragma unroll
            for (int j = 0; j < SEQ_ITEMS; j++) {
                const int e = loader + j * SEQ_LOADERS, i = e / SEQ_COLS, k = e % SEQ_COLS;
                if (e < SEQ_ROWS * SEQ_COLS && i < nr && k < len)
                    buf[i][k] = x[j];
            }
        } else if (warp == 0 && t >= 0 && lane < nr) { /* add tile t */
            const int64_t c0 = t * SEQ_COLS;
            const int len = cols - c0 < SEQ_COLS ? (int)(cols - c0) : SEQ_COLS;
            const float *row = tile[t & 1][lane];
#pragma unroll 16
            for (int k = 0; k < len; k++) {
                const double x = (double)row[k];
                acc = __dadd_rn(acc, SQUARE ? __dmul_rn(x, x) : x);
            }
        }
        __syncthreads();
    }
    if (warp == 0 && lane < nr)
        out[r0 + lane] = acc;
}

#endif
