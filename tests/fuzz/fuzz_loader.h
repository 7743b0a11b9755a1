/* fuzz_loader.h: the loader configurations of fuzz_loader.c, picked by the input's first byte;
 * tests/fuzz/mkcorpus.c writes the seeds of tests/fuzz/corpus/loader_* with the same ones.
 *
 * text:   bit 0 the val split (val_path verse.txt) or train (val_fraction 0.1), bit 1
 *         shuffle_rows 1 or 0, bits 2-3 chunk_bytes 64, 100, 4096, 65536, bits 4-5 window_chunks
 *         1, 3, 128, 7, bit 6 doc_sep "\n\n"; path genesis.txt and lines.txt.
 * tokens: bits 2-3 the files (ids16.bin; ids16.bin and badid16.bin, whose id 300 is outside the
 *         bytes vocabulary; ids32.bin; ids32.bin twice; width 16, 16, 32, 32), bit 0
 *         val_fraction 0.25 or 0.1, bit 1 shuffle, bit 5 the val split.
 * Both: bit 7 the seed (7 or 0).  The files are tests/fixtures/data's. */
#ifndef PRIMAL_FUZZ_LOADER_H
#define PRIMAL_FUZZ_LOADER_H

#include <stdint.h>
#include <string.h>

#include <primal/plugin.h>

#include "config.h"

#define FUZZ_D FUZZ_FIXTURES "/data/"

/* The [data] section that byte c picks for loader `name` ("text" or "tokens"). */
static inline int fuzz_loader_config(const primal_plugin *p, const char *name, uint8_t c,
                                     primal_config **cfg, primal_err *err)
{
    static const char *const chunk[] = {"chunk_bytes=64", "chunk_bytes=100", "chunk_bytes=4096",
                                        "chunk_bytes=65536"};
    static const char *const window[] = {"window_chunks=1", "window_chunks=3",
                                         "window_chunks=128", "window_chunks=7"};
    static const char *const files[] = {
        "path=" FUZZ_D "ids16.bin", "path=" FUZZ_D "ids16.bin," FUZZ_D "badid16.bin",
        "path=" FUZZ_D "ids32.bin", "path=" FUZZ_D "ids32.bin," FUZZ_D "ids32.bin"};
    const char *kv[8];
    int k = 0;
    if (strcmp(name, "text") == 0) {
        kv[k++] = "path=" FUZZ_D "genesis.txt," FUZZ_D "lines.txt";
        kv[k++] = c & 1 ? "val_path=" FUZZ_D "verse.txt" : "val_fraction=0.1";
        kv[k++] = c & 2 ? "shuffle_rows=1" : "shuffle_rows=0";
        kv[k++] = chunk[(c >> 2) & 3];
        kv[k++] = window[(c >> 4) & 3];
        if (c & 64)
            kv[k++] = "doc_sep=\\n\\n";
    } else {
        int f = (c >> 2) & 3;
        kv[k++] = files[f];
        kv[k++] = f < 2 ? "width=16" : "width=32";
        kv[k++] = c & 1 ? "val_fraction=0.25" : "val_fraction=0.1";
        kv[k++] = c & 2 ? "shuffle=true" : "shuffle=false";
    }
    kv[k] = NULL;
    return primal_config_from_kv(p, "data", kv, cfg, err);
}

static inline int fuzz_loader_split(const char *name, uint8_t c)
{
    if (strcmp(name, "text") == 0)
        return c & 1 ? PRIMAL_SPLIT_VAL : PRIMAL_SPLIT_TRAIN;
    return c & 32 ? PRIMAL_SPLIT_VAL : PRIMAL_SPLIT_TRAIN;
}

/* The tokens loader's 32-bit files need a vocabulary past 70099 (Qwen2's). */
static inline int fuzz_loader_wants_qwen(const char *name, uint8_t c)
{
    return strcmp(name, "tokens") == 0 && ((c >> 2) & 3) >= 2;
}

static inline uint64_t fuzz_loader_seed(uint8_t c)
{
    return c & 128 ? 7 : 0;
}

#endif
