/* index_cuda.cuh: reading and writing the packed 4-, 8- and 16-bit indices of an indexed matrix
 * row on the GPU, for the policy plugins whose CUDA halves move indices (threshold_consensus,
 * stochastic_zscore, momentum_carry, latent_adamw); each includes it into its own module.
 * Layout as primal_index_get/primal_index_set (primal/plugin.h): 4-bit indices two a byte, the
 * even column in the low nibble.  No keys. */
#ifndef PRIMAL_PLUGINS_INDEX_CUDA_CUH
#define PRIMAL_PLUGINS_INDEX_CUDA_CUH

#include <stdint.h>

__device__ __forceinline__ int index_load(const uint8_t *row, int bits, int64_t c)
{
    if (bits == 4)
        return (row[c >> 1] >> ((c & 1) * 4)) & 0xF;
    if (bits == 8)
        return row[c];
    return ((const uint16_t *)row)[c];
}

/* Columns c0 and c0 + 1 (c0 even; nc of them, 1 at an odd row's end) get idx[k] where moved[k].
 * A 4-bit pair shares one byte, so one thread owns each pair and writes the byte once. */
__device__ __forceinline__ void index_store_pair(uint8_t *row, int bits, int64_t c0, int nc,
                                                 const int idx[2], const int moved[2])
{
    if (bits == 4) {
        if (!moved[0] && !(nc == 2 && moved[1]))
            return;
        uint8_t b = row[c0 >> 1];
        if (moved[0])
            b = (uint8_t)((b & 0xF0u) | ((unsigned)idx[0] & 0xFu));
        if (nc == 2 && moved[1])
            b = (uint8_t)((b & 0x0Fu) | (((unsigned)idx[1] & 0xFu) << 4));
        row[c0 >> 1] = b;
        return;
    }
    for (int k = 0; k < nc; k++)
        if (moved[k]) {
            if (bits == 8)
                row[c0 + k] = (uint8_t)idx[k];
            else
                ((uint16_t *)row)[c0 + k] = (uint16_t)idx[k];
        }
}

#endif
