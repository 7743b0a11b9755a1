/* cuda_common.h: what every CUDA kernel file and the CUDA model share: the compute dtype of
 * GEMM operands, the launch-check macro that turns a CUDA status into PRIMAL_EDEVICE (STYLE.md,
 * section 3: llm.c's cudaCheck shape, but returning where llm.c exits), and, for .cu files only,
 * small device helpers (bf16 conversion, block reductions).  SPEC.md, "The forward and backward
 * pass of an indexed matrix" (bf16 or fp32 on the GPU).  No keys.
 *
 * Launchers are plain C functions (extern "C") taking a cudaStream_t and a caller-owned
 * primal_err; they check the launch (cudaGetLastError) and return PRIMAL_OK or PRIMAL_EDEVICE.
 * Kernels neither allocate nor synchronise. */
#ifndef PRIMAL_KERNELS_CUDA_COMMON_H
#define PRIMAL_KERNELS_CUDA_COMMON_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#include <primal/error.h>

#ifdef __cplusplus
#define CUDA_EXTERN_C extern "C"
#else
#define CUDA_EXTERN_C
#endif

/* The element type of a buffer that feeds a GEMM (activations in attention, dequantised W, the
 * converted operands): float32 in fp32 mode, bfloat16 in bf16 mode.  Everything else is
 * float32. */
typedef enum cuda_dtype {
    CUDA_F32 = 0,
    CUDA_BF16 = 1,
} cuda_dtype;

static inline size_t cuda_dtype_size(cuda_dtype t)
{
    return t == CUDA_BF16 ? 2 : 4;
}

/* Return PRIMAL_EDEVICE from the enclosing function when a CUDA runtime call fails, naming the
 * call, the CUDA error and the place. */
#define CUDA_TRY(call, err)                                                                    \
    do {                                                                                       \
        cudaError_t cuda_try_rc_ = (call);                                                     \
        if (cuda_try_rc_ != cudaSuccess)                                                       \
            return primal_errf((err), PRIMAL_EDEVICE, "%s:%d: %s: %s", __FILE__, __LINE__,     \
                               #call, cudaGetErrorString(cuda_try_rc_));                       \
    } while (0)

/* The same for a cuBLAS or cuBLASLt call (in files that include their headers). */
#define CUBLAS_TRY(call, err)                                                                  \
    do {                                                                                       \
        cublasStatus_t cublas_try_rc_ = (call);                                                \
        if (cublas_try_rc_ != CUBLAS_STATUS_SUCCESS)                                           \
            return primal_errf((err), PRIMAL_EDEVICE, "%s:%d: %s: %s", __FILE__, __LINE__,     \
                               #call, cublasGetStatusString(cublas_try_rc_));                  \
    } while (0)

/* After a <<<>>> launch: a bad configuration shows up here, a fault in the kernel later. */
#define CUDA_LAUNCHED(name, err)                                                               \
    do {                                                                                       \
        cudaError_t cuda_try_rc_ = cudaGetLastError();                                         \
        if (cuda_try_rc_ != cudaSuccess)                                                       \
            return primal_errf((err), PRIMAL_EDEVICE, "%s:%d: kernel %s: %s", __FILE__,        \
                               __LINE__, (name), cudaGetErrorString(cuda_try_rc_));            \
    } while (0)

/* Whether p can take cuda_ld8/cuda_st8 accesses (and, with n % 8 == 0, all of [0, n) can). */
static inline int cuda_aligned8(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* Blocks needed to cover n items, capped so that grid-stride loops take the rest. */
static inline unsigned cuda_blocks(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1)
        b = 1;
    if (b > 65535 * 16)
        b = 65535 * 16;
    return (unsigned)b;
}

#ifdef __CUDACC__
#include <cuda_bf16.h>

__device__ __forceinline__ float cuda_ld(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float cuda_ld(const __nv_bfloat16 *p, int64_t i)
{
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void cuda_st(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void cuda_st(__nv_bfloat16 *p, int64_t i, float v)
{
    p[i] = __float2bfloat16_rn(v);
}

/* Eight consecutive elements as one 16-byte (bf16) or two (float32) accesses, for the
 * memory-bound kernels; p must be 16-byte aligned (cuda_aligned8). */
__device__ __forceinline__ void cuda_ld8(float *v, const float *p)
{
    float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void cuda_ld8(float *v, const __nv_bfloat16 *p)
{
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
    for (int k = 0; k < 4; k++) {
        float2 f = __bfloat1622float2(h[k]);
        v[2 * k] = f.x, v[2 * k + 1] = f.y;
    }
}
__device__ __forceinline__ void cuda_st8(float *p, const float *v)
{
    reinterpret_cast<float4 *>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4 *>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void cuda_st8(__nv_bfloat16 *p, const float *v)
{
    __nv_bfloat162 h[4];
    for (int k = 0; k < 4; k++)
        h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
    *reinterpret_cast<uint4 *>(p) = *reinterpret_cast<const uint4 *>(h);
}

/* Sum and max over the warp (every lane gets them; all 32 lanes take part). */
__device__ __forceinline__ float cuda_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float cuda_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024) in a fixed order, so that a
 * result never depends on scheduling.  Every thread gets the sum.  shared holds 32 values. */
template <typename F>
__device__ __forceinline__ F cuda_block_sum(F v, F *shared)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads(); /* shared may still be read by a previous call */
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    v = lane < nw ? shared[lane] : (F)0;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float cuda_block_max(float v, float *shared)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    v = lane < nw ? shared[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Grid-stride loop over [0, n). */
#define CUDA_FOR(i, n)                                                                         \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                  \
         i += (int64_t)gridDim.x * blockDim.x)
#endif

#endif
