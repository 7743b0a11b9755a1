/* dequant.cu: W[r][c] = grid[index[r][c]] · scale[r] for a row range of an indexed matrix
 * (4-bit two per byte with the even column in the low nibble, 8-bit, 16-bit; the layout of
 * primal/plugin.h), written as float32 or bfloat16 into the one reused weight workspace just
 * before its GEMM; and the scale gradient dscale[r] += Σ_c G[r][c] · grid[index[r][c]] of a G
 * tile.  SPEC.md, "The forward and backward pass of an indexed matrix".
 *
 * The qtensor's index, scale, dense and grid are device pointers.  A dense matrix (bits 32) is
 * copied (converted, in bf16).  The scale gradient sums one row per block in double in a fixed
 * order, as the CPU does, so that it is deterministic.  CPU twins: matmul_dequant_rows and
 * matmul_scale_grad (kernels/cpu/matmul.c).  No keys. */
#include "dequant.h"

#include "elementwise.h"

__device__ __forceinline__ uint32_t index_at(const uint8_t *index, int bits, int64_t stride,
                                             int64_t r, int64_t c)
{
    const uint8_t *row = index + r * stride;
    if (bits == 4)
        return (row[c >> 1] >> ((c & 1) * 4)) & 0xFu;
    if (bits == 8)
        return row[c];
    return ((const uint16_t *)row)[c];
}

template <typename T>
__global__ void dequant_kernel(T *out,                /* (nrows, cols) */
                               const uint8_t *index,  /* (rows, stride) packed */
                               const float *scale,    /* (rows) */
                               const float *grid,     /* (grid_size) */
                               const float *dense,    /* (rows, cols) when bits == 32 */
                               int bits, int64_t stride, int64_t r0, int64_t nrows,
                               int64_t cols)
{
    CUDA_FOR(i, nrows * cols)
    {
        int64_t r = i / cols, c = i - r * cols;
        float v = bits == 32 ? dense[(r0 + r) * cols + c]
                             : grid[index_at(index, bits, stride, r0 + r, c)] * scale[r0 + r];
        cuda_st(out, i, v);
    }
}

/* Eight columns a thread: one 4-, 8- or 16-byte index load and one 16-byte (bf16) or two
 * (float32) stores, and a division per eight elements instead of per element.  For rows of a
 * multiple of 8 columns whose index rows start on the load's alignment. */
template <typename T, int BITS>
__global__ void dequant8_kernel(T *out,               /* (nrows, cols) */
                                const uint8_t *index, /* (rows, stride) packed */
                                const float *scale,   /* (rows) */
                                const float *grid,    /* (grid_size) */
                                int64_t stride, int64_t r0, int64_t nrows, int64_t cols)
{
    int64_t gpr = cols / 8;
    CUDA_FOR(i, nrows * gpr)
    {
        int64_t r = i / gpr, c = (i - r * gpr) * 8;
        const uint8_t *row = index + (r0 + r) * stride;
        float sc = scale[r0 + r], v[8];
        if (BITS == 4) {
            uint32_t x = *reinterpret_cast<const uint32_t *>(row + c / 2);
            for (int k = 0; k < 8; k++)
                v[k] = grid[(x >> (4 * k)) & 0xFu] * sc;
        } else if (BITS == 8) {
            uint2 x = *reinterpret_cast<const uint2 *>(row + c);
            for (int k = 0; k < 8; k++)
                v[k] = grid[((k < 4 ? x.x : x.y) >> (8 * (k & 3))) & 0xFFu] * sc;
        } else {
            uint4 x = *reinterpret_cast<const uint4 *>(row + 2 * c);
            const uint32_t w[4] = {x.x, x.y, x.z, x.w};
            for (int k = 0; k < 8; k++)
                v[k] = grid[(w[k / 2] >> (16 * (k & 1))) & 0xFFFFu] * sc;
        }
        cuda_st8(out + r * cols + c, v);
    }
}

template <typename T>
static int dequant8(T *out, const primal_qtensor *w, int64_t r0, int64_t nrows, cudaStream_t s)
{
    unsigned nb = cuda_blocks(nrows * (w->cols / 8), 256);
    const uint8_t *ix = (const uint8_t *)w->index;
    if (w->bits == 4)
        dequant8_kernel<T, 4><<<nb, 256, 0, s>>>(out, ix, w->scale, w->grid, w->row_stride, r0,
                                                 nrows, w->cols);
    else if (w->bits == 8)
        dequant8_kernel<T, 8><<<nb, 256, 0, s>>>(out, ix, w->scale, w->grid, w->row_stride, r0,
                                                 nrows, w->cols);
    else
        dequant8_kernel<T, 16><<<nb, 256, 0, s>>>(out, ix, w->scale, w->grid, w->row_stride, r0,
                                                  nrows, w->cols);
    return 0;
}

int cuda_dequant_rows(void *out,               /* (nrows, cols) of dt */
                      cuda_dtype dt,
                      const primal_qtensor *w, /* device pointers */
                      int64_t r0, int64_t nrows, cudaStream_t s, primal_err *err)
{
    int64_t n = nrows * w->cols;
    if (n == 0)
        return PRIMAL_OK;
    int64_t align = w->bits == 4 ? 4 : w->bits == 8 ? 8 : 16; /* bytes of 8 indices */
    if (w->bits != 32 && w->cols % 8 == 0 && w->row_stride % align == 0 &&
        (uintptr_t)w->index % align == 0 && (uintptr_t)out % 16 == 0) {
        if (dt == CUDA_BF16)
            dequant8((__nv_bfloat16 *)out, w, r0, nrows, s);
        else
            dequant8((float *)out, w, r0, nrows, s);
        CUDA_LAUNCHED("dequant8", err);
        return PRIMAL_OK;
    }
    unsigned nb = cuda_blocks(n, 256);
    if (dt == CUDA_BF16)
        dequant_kernel<<<nb, 256, 0, s>>>((__nv_bfloat16 *)out, (const uint8_t *)w->index,
                                          w->scale, w->grid, w->dense, w->bits, w->row_stride,
                                          r0, nrows, w->cols);
    else
        dequant_kernel<<<nb, 256, 0, s>>>((float *)out, (const uint8_t *)w->index, w->scale,
                                          w->grid, w->dense, w->bits, w->row_stride, r0, nrows,
                                          w->cols);
    CUDA_LAUNCHED("dequant", err);
    return PRIMAL_OK;
}

__global__ void scale_grad_kernel(float *dscale,        /* (rows) rows [r0, r0+nrows) += */
                                  const float *G,       /* (nrows, cols) */
                                  const uint8_t *index, /* (rows, stride) */
                                  const float *grid,    /* (grid_size) */
                                  int bits, int64_t stride, int64_t r0, int64_t cols)
{
    __shared__ double sh[32];
    int64_t r = blockIdx.x;
    const float *g = G + r * cols;
    double acc = 0.0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        acc += (double)g[c] * grid[index_at(index, bits, stride, r0 + r, c)];
    acc = cuda_block_sum(acc, sh);
    if (threadIdx.x == 0)
        dscale[r0 + r] += (float)acc;
}

/* The same with one warp per row and eight columns a lane (cols % 8 == 0, G 16-byte
 * aligned): no block-wide reduction for rows of a few hundred columns.  With partial, also the
 * tile's Σ G² for the clipping norm, without a pass of its own over G: then the grid is
 * CUDA_SUMSQ_BLOCKS blocks striding over the rows, and block b adds its sum into partial[b],
 * the slot cuda_sumsq's block b fills, so the order is fixed and no atomics are needed.  Each
 * row's sum is the same either way, so dscale's bits are too. */
__global__ void scale_grad_warp_kernel(float *dscale, double *partial, unsigned int *amax,
                                       unsigned int *amax_zero, const float *G,
                                       const uint8_t *index, const float *grid, int bits,
                                       int64_t stride, int64_t r0, int64_t nrows, int64_t cols)
{
    __shared__ double sh[32];
    __shared__ float shm[32];
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    double sq = 0.0;
    float m = 0.0f;
    for (int64_t r = (int64_t)blockIdx.x * nw + (threadIdx.x >> 5); r < nrows;
         r += (int64_t)gridDim.x * nw) {
        const float *g = G + r * cols;
        double acc = 0.0;
        for (int64_t c = lane * 8; c < cols; c += 256) {
            float v[8];
            cuda_ld8(v, g + c);
            for (int k = 0; k < 8; k++) {
                acc += (double)v[k] * grid[index_at(index, bits, stride, r0 + r, c + k)];
                if (partial != NULL)
                    sq += (double)v[k] * v[k];
                if (amax != NULL)
                    m = fmaxf(m, fabsf(v[k])); /* fmaxf skips a NaN */
            }
        }
        for (int o = 16; o > 0; o >>= 1)
            acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0)
            dscale[r0 + r] += (float)acc;
    }
    if (amax != NULL) {
        m = cuda_block_max(m, shm);
        /* non-negative floats order as their bits do; the maximum is the same in any order */
        if (threadIdx.x == 0 && m > 0.0f)
            atomicMax(amax, __float_as_uint(m));
        if (blockIdx.x == 0 && threadIdx.x == 0)
            *amax_zero = 0u;
    }
    if (partial == NULL)
        return;
    sq = cuda_block_sum(sq, sh);
    if (threadIdx.x == 0)
        partial[blockIdx.x] += sq;
}

/* sq_part, when not NULL, gets Σ G² of the tile added (cuda_sumsq's partial sums), for dense
 * tensors (bits 32, no scale) too.  amax, when not NULL, gets max |G| of the tile (NaN
 * skipped) as float bits, where the pass is the one-warp-a-row kernel's (*amax_done then 1):
 * *amax must be 0 on entry, and the kernel zeroes *amax_zero, so that a caller taking two slots
 * in turn on one stream always finds its next one zeroed, with no launch to clear it (the slot
 * zeroed is the one the call before filled, whose readers the stream has run by then). */
int cuda_scale_grad(float *dscale,           /* (rows) device, accumulated into */
                    double *sq_part,         /* (CUDA_SUMSQ_BLOCKS) device, +=; or NULL */
                    unsigned int *amax,      /* (1) device, 0 on entry; or NULL */
                    unsigned int *amax_zero, /* (1) device, zeroed where amax is filled */
                    int *amax_done,          /* host: whether amax was filled; or NULL */
                    const float *G,          /* (nrows, cols) device */
                    const primal_qtensor *w, /* indexed, device pointers */
                    int64_t r0, int64_t nrows, cudaStream_t s, primal_err *err)
{
    if (amax_done != NULL)
        *amax_done = 0;
    if (nrows == 0)
        return PRIMAL_OK;
    if (w->bits == 32)
        return sq_part != NULL ? cuda_sumsq(sq_part, G, nrows * w->cols, s, err) : PRIMAL_OK;
    if (w->cols % 8 == 0 && cuda_aligned8(G)) {
        unsigned nb = sq_part != NULL ? CUDA_SUMSQ_BLOCKS : (unsigned)((nrows + 7) / 8);
        scale_grad_warp_kernel<<<nb, 256, 0, s>>>(dscale, sq_part, amax, amax_zero, G,
                                                  (const uint8_t *)w->index, w->grid, w->bits,
                                                  w->row_stride, r0, nrows, w->cols);
        CUDA_LAUNCHED("scale_grad", err);
        if (amax_done != NULL)
            *amax_done = amax != NULL;
        return PRIMAL_OK;
    }
    /* one block per row: the grid's x dimension holds 2^31 - 1 */
    scale_grad_kernel<<<(unsigned)nrows, 256, 0, s>>>(dscale, G, (const uint8_t *)w->index,
                                                      w->grid, w->bits, w->row_stride, r0,
                                                      w->cols);
    CUDA_LAUNCHED("scale_grad", err);
    return sq_part != NULL ? cuda_sumsq(sq_part, G, nrows * w->cols, s, err) : PRIMAL_OK;
}
