/* primal/rng.h: the counter-based random numbers every stochastic component draws.
 *
 * A draw is a pure function of (seed, stream, counter): no generator state exists, so a resumed
 * run draws exactly what an uninterrupted one would, and a CUDA kernel that computes the same
 * function draws the same numbers as the CPU (SPEC.md, stochastic_zscore and momentum_carry).
 * The mixer is SplitMix64's finaliser applied twice over the three words; it is not
 * cryptographic, it only has to be well distributed and cheap on both host and device.
 *
 * Convention for policies: stream = primal_rng_stream(tensor id, step, purpose) and counter =
 * the weight's flat index (r * cols + c). */
#ifndef PRIMAL_RNG_H
#define PRIMAL_RNG_H

#include <stdint.h>

#if defined(__CUDACC__)
#define PRIMAL_HD __host__ __device__ __forceinline__
#else
#define PRIMAL_HD static inline
#endif

PRIMAL_HD uint64_t primal_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* 64 random bits for (seed, stream, counter). */
PRIMAL_HD uint64_t primal_rng_u64(uint64_t seed, uint64_t stream, uint64_t counter)
{
    uint64_t z = primal_mix64(seed + 0x9e3779b97f4a7c15ULL * (stream + 1));
    return primal_mix64(z ^ (counter * 0xd1b54a32d192ed03ULL + 0x8cb92ba72f3d8dd7ULL));
}

/* A uniform float in [0, 1) with 24 random bits, so that u < 1 holds exactly in float32. */
PRIMAL_HD float primal_rng_u01(uint64_t seed, uint64_t stream, uint64_t counter)
{
    return (float)(primal_rng_u64(seed, stream, counter) >> 40) * (1.0f / 16777216.0f);
}

/* A stream number for one use: (tensor id, step or micro-batch number, purpose). */
PRIMAL_HD uint64_t primal_rng_stream(uint64_t tensor_id, uint64_t step, uint64_t purpose)
{
    return primal_mix64((tensor_id << 48) ^ (purpose << 40) ^ step);
}

#endif
