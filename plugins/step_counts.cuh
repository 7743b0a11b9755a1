/* step_counts.cuh: how a policy's CUDA step hands back its counts (primal/policy_cuda.h):
 * step() copies them to the host and waits; step_async() leaves them in the core's device slot,
 * so that the core waits once for all tensors instead of once per tensor.  flips and saturated
 * are device counters, NULL where the policy has none (the count is zero). */
#ifndef PRIMAL_PLUGINS_STEP_COUNTS_CUH
#define PRIMAL_PLUGINS_STEP_COUNTS_CUH

#include <cuda_runtime.h>

#include <primal/plugin.h>

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
