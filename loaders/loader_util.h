/* loader_util.h: what the data loaders share (private; each loader is its own plugin, so this
 * header is compiled into each): the little-endian fields of their saved states and the keyed
 * permutation by which text and tokens visit a corpus in a random order. */
#ifndef PRIMAL_LOADER_UTIL_H
#define PRIMAL_LOADER_UTIL_H

#include <stdint.h>

#include <primal/rng.h>

static inline void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* A keyed bijection of [0, n), n <= 2^62: a 4-round Feistel network over the 4^h >= n values
 * (h bits a half), its round functions drawn from (seed, stream), walked until it lands below
 * n.  4^h < 4n, so a walk takes fewer than 4 rounds on average. */
static inline uint64_t permute(uint64_t i, uint64_t n, uint64_t seed, uint64_t stream)
{
    int h = 1;
    while (h < 31 && (UINT64_C(1) << (2 * h)) < n)
        h++;
    uint64_t mask = (UINT64_C(1) << h) - 1, x = i;
    do {
        uint64_t l = x >> h, r = x & mask;
        for (uint64_t k = 0; k < 4; k++) {
            uint64_t t = l ^ (primal_rng_u64(seed, stream, r << 2 | k) & mask);
            l = r;
            r = t;
        }
        x = l << h | r;
    } while (x >= n);
    return x;
}

#endif
