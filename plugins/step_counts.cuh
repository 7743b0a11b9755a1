/* step_counts.cuh: how a policy's CUDA step counts (block_add2) and hands back its counts
 * (primal/policy_cuda.h): step() copies them to the host and waits; step_async() leaves them in the core's device slot,
 * so that the core waits once for all tensors instead of once per tensor.  flips and saturated
 * are device counters, NULL where the policy has none (the count is zero). */
#ifndef PRIMAL_PLUGINS_STEP_COUNTS_CUH
#define PRIMAL_PLUGINS_STEP_COUNTS_CUH

#include <cuda_runtime.h>

#include <primal/plugin.h>

/* Add a and b over the block and once per block into *out0, *out1 (out1 may be NULL).  Every
 * thread of the block calls it.  One atomic per block, not per warp: thousands of warps adding
 * to one address had serialised, and cost more than the pass that counted. */
static __device__ __forceinline__ void block_add2(unsigned long long *out0, unsigned long long *out1,
                                           unsigned long long a, unsigned long long b)
{
    __shared__ unsigned long long sa[32], sb[32];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads(); /* sa, sb may still be read by an earlier call */
    if (lane == 0)
        sa[warp] = a, sb[warp] = b;
    __syncthreads();
    if (warp != 0)
        return;
    a = lane < nw ? sa[lane] : 0;
    b = lane < nw ? sb[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    if (lane == 0) {
        if (a)
            atomicAdd(out0, a);
        if (b && out1 != NULL)
            atomicAdd(out1, b);
    }
}

static __global__ void step_counts_store(primal_step_stats *out,
                                         const unsigned long long *flips,
                                         const unsigned long long *saturated, int64_t weights)
{
    out->flips = flips != NULL ? (int64_t)*flips : 0;
    out->saturated = saturated != NULL ? (int64_t)*saturated : 0;
    out->weights = weights;
}

/* Exactly one of host (step) and dev (step_async) is not NULL. */
static inline cudaError_t step_counts(const unsigned long long *flips,
                                      const unsigned long long *saturated, int64_t weights,
                                      primal_step_stats *host, primal_step_stats *dev,
                                      cudaStream_t st)
{
    if (dev != NULL) {
        step_counts_store<<<1, 1, 0, st>>>(dev, flips, saturated, weights);
        return cudaGetLastError();
    }
    unsigned long long h[2] = {0, 0};
    cudaError_t e = cudaSuccess;
    if (flips != NULL)
        e = cudaMemcpyAsync(&h[0], flips, sizeof h[0], cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess && saturated != NULL)
        e = cudaMemcpyAsync(&h[1], saturated, sizeof h[1], cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess && (flips != NULL || saturated != NULL))
        e = cudaStreamSynchronize(st);
    if (e != cudaSuccess)
        return e;
    host->flips = (int64_t)h[0];
    host->saturated = (int64_t)h[1];
    host->weights = weights;
    return cudaSuccess;
}

#endif
