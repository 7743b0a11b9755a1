/* tokens: pre-tokenised files of little-endian uint16 or uint32 ids, memory-mapped.
 * SPEC.md, "Data loaders".
 *
 * Keys ([data]; the core handles plugin and tokenizer itself):
 *   path          STRING, required  one or more paths or globs, comma-separated; relative ones
 *                                   resolve against the experiment file's directory
 *   val_fraction  FLOAT  "0.02"     [0,0.5): the last fraction of the tokens of the
 *                                   concatenated files is the val split
 *   val_path      STRING ""         a separate validation file set; val_fraction must then be 0
 *                                   or unset; these three keys are read by
 *                                   primal_data_split_new (primal/datafiles.h)
 *   width         INT    "16"       bits per id: 16 or 32
 *   shuffle       BOOL   "true"     train: visit the row slots in a new random order each
 *                                   epoch; false: in file order
 *
 * The files are taken as one array of n ids (they are expected to hold their own document
 * separators).
 *
 * Train: the split is divided into (n - 1) / seq_len row slots of seq_len + 1 ids, slot k
 * starting at id k * seq_len (slots overlap by one id, as rows of a stream do, so every id is
 * predicted once).  Each epoch visits every slot of the whole split exactly once, in the order
 * of a keyed bijection of [0, slots): a 4-round Feistel network over the 4^h >= slots values,
 * its round keys drawn from the counter-based RNG by (seed, epoch), walked until it lands below
 * slots (cycle walking; fewer than 4 rounds of walking on average).  So the rows of a batch
 * come from all over the corpus, in O(1) memory whatever its size, and the position is just the
 * epoch, the slots of it already drawn and the seq_len they were cut for.  A seq_len change
 * keeps the epoch and the fraction of it already drawn: p of s slots becomes ceil(p * s' / s)
 * of the s' slots of the new length (so an epoch with a change visits about, not exactly, every
 * id once).  The split never ends: after the last slot the next epoch starts with a new order.
 * shuffle = false visits the slots in file order (slot k as the k-th row of the epoch).
 *
 * Val: sequential windows overlapping by one id (every id predicted once), finite; the last
 * partial row is padded with mask 0, as are the rows of the last batch the split cannot fill.
 * The mask is otherwise all ones.  Every id copied into a batch is checked against the
 * tokenizer's vocabulary; a bad one is an error naming the file and its byte offset (checked on
 * copy, not by a scan at open, so that opening a large corpus costs nothing).
 *
 * State (save/restore): 8-byte little-endian words, in the order of the F_ enum below.  A
 * restore treats them as untrusted: each is range-checked, and a bad one is PRIMAL_EIO naming
 * the loader and the field.
 *
 * Ranks: a batch takes rows * nranks consecutive rows of the single-rank sequence and rank r
 * keeps the r-th block of rows of them, so that rank r gets the micro-batches a single rank
 * would take in its slots r, r + nranks, ... (what the vote all-reduce needs to be exact). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <primal/datafiles.h>
#include <primal/plugin.h>

#include "loader_util.h"

#define RNG_TAG 0xDA7Au  /* loaders' tensor-id slot in primal_rng_stream: no model tensor */
#define STATE_MAGIC 0x326b7470u     /* "ptk2" */
#define STATE_MAGIC_OLD 0x316b7470u /* "ptk1": random windows drawn with replacement */
#define MAX_EPOCH UINT32_MAX        /* keeps the epoch below primal_rng_stream's step bits */

/* ------------------------------------------------------------------------------------------ */
/* Ids                                                                                        */

typedef struct tseg {
    int file;
    int64_t start, end; /* id range of the file in this split */
    int64_t base;       /* index of start within the split */
} tseg;

typedef struct tokens_ctx {
    int32_t vocab, pad;
    int split, rank, nranks, width, shuffle;
    uint64_t seed;
    primal_data_split *data; /* the split's files and byte ranges */
    const uint8_t **maps; /* (data->nfiles) mapped files; NULL when empty */
    tseg *segs;           /* (nsegs) data->segs in ids */
    int nsegs;
    int64_t n;          /* ids in the split */
    uint64_t epoch;     /* train: the epoch */
    int plen;           /* train: the seq_len pos counts slots of (0: none drawn yet) */
    int64_t pos;        /* train: slots of the epoch drawn; val: where the next row starts */
    int ended;
} tokens_ctx;

/* Copy ids [at, at + len) of the split into dst, checking each against the vocabulary. */
static int copy_ids(const tokens_ctx *c, int32_t *dst, int64_t at, int64_t len, primal_err *err)
{
    int lo = 0, hi = c->nsegs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (c->segs[mid].base <= at)
            lo = mid;
        else
            hi = mid - 1;
    }
    int64_t k = 0;
    for (int s = lo; s < c->nsegs && k < len; s++) {
        const tseg *g = &c->segs[s];
        const uint8_t *m = c->maps[g->file];
        int64_t i = g->start + (at + k - g->base);
        for (; i < g->end && k < len; i++, k++) {
            const uint8_t *p = m + i * c->width / 8;
            uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8;
            if (c->width == 32)
                v |= (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            if (v >= (uint32_t)c->vocab)
                return primal_errf(err, PRIMAL_EIO, "%s: byte offset %lld: id %u is not below "
                                   "the tokenizer's vocabulary size %d",
                                   c->data->files[g->file].path,
                                   (long long)(i * c->width / 8), v, c->vocab);
            dst[k] = (int32_t)v;
        }
    }
    return PRIMAL_OK;
}

static void tokens_close(void *ctx)
{
    tokens_ctx *c = ctx;
    if (c == NULL)
        return;
    for (int i = 0; c->maps && i < c->data->nfiles; i++)
        if (c->maps[i] != NULL)
            munmap((void *)c->maps[i], (size_t)c->data->files[i].size);
    free(c->maps);
    primal_data_split_free(c->data);
    free(c->segs);
    free(c);
}

static int map_files(tokens_ctx *c, primal_err *err)
{
    c->maps = calloc((size_t)c->data->nfiles, sizeof *c->maps);
    if (c->maps == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    for (int i = 0; i < c->data->nfiles; i++) {
        const primal_data_file *f = &c->data->files[i];
        if (f->size == 0)
            continue;
        int fd = open(f->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", f->path,
                               strerror(errno));
        void *m = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        int e = errno;
        close(fd);
        if (m == MAP_FAILED)
            return primal_errf(err, PRIMAL_EIO, "%s: cannot map: %s", f->path, strerror(e));
        /* train windows land anywhere: read-ahead would only waste page cache */
        madvise(m, (size_t)f->size, c->split == PRIMAL_SPLIT_TRAIN ? MADV_RANDOM
                                                                   : MADV_SEQUENTIAL);
        c->maps[i] = m;
    }
    return PRIMAL_OK;
}

static int tokens_open(const primal_config *cfg, const primal_loader_info *info, void **ctx,
                       primal_err *err)
{
    *ctx = NULL;
    if (info->nranks < 1 || info->rank < 0 || info->rank >= info->nranks)
        return primal_errf(err, PRIMAL_ECONFIG, "tokens loader: rank %d of %d", info->rank,
                           info->nranks);
    int width = (int)primal_cfg_int(cfg, "width");
    if (width != 16 && width != 32)
        return primal_cfg_errf(cfg, "width", err, PRIMAL_ECONFIG, "must be 16 or 32 (got %d)",
                               width);
    tokens_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    c->split = info->split;
    c->seed = info->seed;
    c->rank = info->rank;
    c->nranks = info->nranks;
    c->width = width;
    c->shuffle = info->split == PRIMAL_SPLIT_TRAIN && primal_cfg_bool(cfg, "shuffle");
    c->vocab = primal_tokenizer_vocab(info->tok);
    c->pad = primal_tokenizer_eot(info->tok);
    if (c->pad < 0)
        c->pad = 0; /* padding is masked out: any valid id will do */
    /* the cut falls between ids: of N ids, the last floor(val_fraction * N) are val */
    int64_t w = width / 8;
    int rc = primal_data_split_new(cfg, info->split, (int)w, &c->data, err);
    if (rc != PRIMAL_OK) {
        free(c);
        return rc;
    }
    c->segs = calloc((size_t)c->data->nsegs, sizeof *c->segs);
    if (c->segs == NULL)
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    for (int s = 0; rc == PRIMAL_OK && s < c->data->nsegs; s++) {
        const primal_data_seg *g = &c->data->segs[s];
        c->segs[c->nsegs++] = (tseg){g->file, g->start / w, g->end / w, c->n};
        c->n += (g->end - g->start) / w;
    }
    if (rc == PRIMAL_OK)
        rc = map_files(c, err);
    if (rc != PRIMAL_OK) {
        tokens_close(c);
        return rc;
    }
    *ctx = c;
    return PRIMAL_OK;
}

static int tokens_next(void *ctx, primal_batch *b, primal_err *err)
{
    tokens_ctx *c = ctx;
    if (b->rows < 1 || b->seq_len < 1 || b->tokens == NULL || b->mask == NULL)
        return primal_errf(err, PRIMAL_ERROR, "tokens loader: batch of %d rows x seq_len %d",
                           b->rows, b->seq_len);
    int L = b->seq_len;
    size_t W = (size_t)L + 1;
    int total = b->rows * c->nranks;
    int rc;
    if (c->split == PRIMAL_SPLIT_TRAIN) {
        if (c->n < (int64_t)W)
            return primal_errf(err, PRIMAL_ECONFIG, "%s: the train split holds %lld ids, fewer "
                               "than seq_len + 1 = %zu", c->data->files[c->segs[0].file].path,
                               (long long)c->n, W);
        int64_t slots = (c->n - 1) / L;
        if (c->plen != L) { /* seq_len changed: keep the fraction of the epoch already drawn */
            if (c->plen > 0 && c->pos > 0) {
                double q = (double)c->pos * (double)slots / (double)((c->n - 1) / c->plen);
                int64_t p = (int64_t)q;
                c->pos = (double)p < q ? p + 1 : p;
                if (c->pos > slots)
                    c->pos = slots;
            }
            c->plen = L;
        }
        for (int j = 0; j < total; j++) {
            if (c->pos == slots) {
                c->epoch++;
                c->pos = 0;
            }
            uint64_t k = (uint64_t)c->pos++;
            if (j / b->rows != c->rank)
                continue;
            if (c->shuffle)
                k = permute(k, (uint64_t)slots, c->seed, primal_rng_stream(RNG_TAG, c->epoch, 6));
            int64_t at = (int64_t)k * L;
            rc = copy_ids(c, b->tokens + (size_t)(j - c->rank * b->rows) * W, at, (int64_t)W, err);
            if (rc != PRIMAL_OK)
                return rc;
        }
        memset(b->mask, 1, (size_t)b->rows * (size_t)L);
        return PRIMAL_OK;
    }
    for (int j = 0; j < total; j++) {
        int64_t n = c->ended ? 0 : c->n - c->pos;
        if (n > (int64_t)W)
            n = (int64_t)W;
        if (n < 2)
            n = 0; /* a lone id predicts nothing */
        int64_t at = c->pos;
        if (n < (int64_t)W)
            c->ended = 1;
        else
            c->pos += L;
        if (j == 0 && n == 0)
            return primal_errf(err, PRIMAL_EOF, "validation split exhausted");
        if (j / b->rows != c->rank)
            continue;
        size_t i = (size_t)(j - c->rank * b->rows);
        int32_t *dst = b->tokens + i * W;
        uint8_t *m = b->mask + i * (size_t)L;
        if ((rc = copy_ids(c, dst, at, n, err)) != PRIMAL_OK)
            return rc;
        for (size_t k = (size_t)n; k < W; k++)
            dst[k] = c->pad;
        for (int k = 0; k < L; k++)
            m[k] = k < n - 1;
    }
    return PRIMAL_OK;
}

static int tokens_rewind(void *ctx, primal_err *err)
{
    (void)err;
    tokens_ctx *c = ctx;
    c->epoch = 0;
    c->plen = 0;
    c->pos = 0;
    c->ended = 0;
    return PRIMAL_OK;
}

enum { F_MAGIC, F_SPLIT, F_N, F_WIDTH, F_VOCAB, F_SHUF, F_EPOCH, F_PLEN, F_POS, F_ENDED,
       F_COUNT };

static int tokens_save(void *ctx, void *buf, size_t cap, size_t *n, primal_err *err)
{
    tokens_ctx *c = ctx;
    if (cap < F_COUNT * 8)
        return primal_errf(err, PRIMAL_ERROR, "tokens loader: state needs %d bytes, got %zu",
                           F_COUNT * 8, cap);
    uint64_t v[F_COUNT] = {
        [F_MAGIC] = STATE_MAGIC, [F_SPLIT] = (uint64_t)c->split, [F_N] = (uint64_t)c->n,
        [F_WIDTH] = (uint64_t)c->width, [F_VOCAB] = (uint64_t)c->vocab,
        [F_SHUF] = (uint64_t)c->shuffle, [F_EPOCH] = c->epoch, [F_PLEN] = (uint64_t)c->plen,
        [F_POS] = (uint64_t)c->pos, [F_ENDED] = (uint64_t)c->ended,
    };
    for (int i = 0; i < F_COUNT; i++)
        put64((uint8_t *)buf + 8 * i, v[i]);
    *n = F_COUNT * 8;
    return PRIMAL_OK;
}

/* A saved word outside [lo, hi] (as unsigned: a negative value is huge) is refused. */
static int check_field(const char *what, uint64_t v, uint64_t lo, uint64_t hi, primal_err *err)
{
    if (v >= lo && v <= hi)
        return PRIMAL_OK;
    return primal_errf(err, PRIMAL_EIO, "tokens loader: saved state: %s is %lld, outside "
                       "[%llu, %llu]", what, (long long)v, (unsigned long long)lo,
                       (unsigned long long)hi);
}

static int tokens_restore(void *ctx, const void *buf, size_t n, primal_err *err)
{
    tokens_ctx *c = ctx;
    uint64_t v[F_COUNT];
    if (n != F_COUNT * 8)
        return primal_errf(err, PRIMAL_ECONFIG, "tokens loader: saved state is %zu bytes, "
                           "expected %d", n, F_COUNT * 8);
    for (int i = 0; i < F_COUNT; i++)
        v[i] = get64((const uint8_t *)buf + 8 * i);
    if (v[F_MAGIC] == STATE_MAGIC_OLD)
        return primal_errf(err, PRIMAL_ECONFIG, "tokens loader: the state was saved by an "
                           "earlier version, which drew random windows; this one visits row "
                           "slots in a per-epoch order, so the position cannot be carried over");
    if (v[F_MAGIC] != STATE_MAGIC || v[F_SPLIT] != (uint64_t)c->split)
        return primal_errf(err, PRIMAL_ECONFIG, "tokens loader: saved state is not a tokens "
                           "loader's for this split");
    if (v[F_N] != (uint64_t)c->n || v[F_WIDTH] != (uint64_t)c->width ||
        v[F_VOCAB] != (uint64_t)c->vocab || v[F_SHUF] != (uint64_t)c->shuffle)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: the data or [data] keys changed since the "
                           "state was saved (%llu ids of %llu bits, vocab %llu, shuffle %llu "
                           "then; %lld, %d, %d, %d now)", c->data->files[0].path,
                           (unsigned long long)v[F_N], (unsigned long long)v[F_WIDTH],
                           (unsigned long long)v[F_VOCAB], (unsigned long long)v[F_SHUF],
                           (long long)c->n, c->width, c->vocab, c->shuffle);
    int train = c->split == PRIMAL_SPLIT_TRAIN, rc;
    /* train: pos counts slots of plen (none before the first row); val: ids */
    uint64_t plen_max = train ? (uint64_t)(c->n > 1 ? c->n - 1 : 0) : 0;
    if (plen_max > INT32_MAX - 1)
        plen_max = INT32_MAX - 1;
    if ((rc = check_field("epoch", v[F_EPOCH], 0, train ? MAX_EPOCH : 0, err)) != PRIMAL_OK ||
        (rc = check_field("seq_len", v[F_PLEN], 0, plen_max, err)) != PRIMAL_OK)
        return rc;
    uint64_t pos_max = !train ? (uint64_t)c->n
                       : v[F_PLEN] > 0 ? (uint64_t)(c->n - 1) / v[F_PLEN] : 0;
    if ((rc = check_field("position", v[F_POS], 0, pos_max, err)) != PRIMAL_OK ||
        (rc = check_field("ended", v[F_ENDED], 0, train ? 0 : 1, err)) != PRIMAL_OK)
        return rc;
    c->epoch = v[F_EPOCH];
    c->plen = (int)v[F_PLEN];
    c->pos = (int64_t)v[F_POS];
    c->ended = (int)v[F_ENDED];
    return PRIMAL_OK;
}

static const primal_key tokens_keys[] = {
    {"path", PRIMAL_KEY_STRING, NULL, "id files or globs, comma-separated", NULL},
    {"val_fraction", PRIMAL_KEY_FLOAT, "0.02", "last fraction of the ids held out for "
     "validation", "[0,0.5)"},
    {"val_path", PRIMAL_KEY_STRING, "", "separate validation files (val_fraction then 0)", NULL},
    {"width", PRIMAL_KEY_INT, "16", "bits per little-endian id: 16 or 32", "[16,32]"},
    {"shuffle", PRIMAL_KEY_BOOL, "true", "train: every seq_len + 1-id slot of the split once "
     "an epoch, in a new random order each epoch; false: in file order", NULL},
    {0},
};

static const primal_loader_vt tokens_vt = {
    .size = sizeof(primal_loader_vt),
    .open = tokens_open,
    .close = tokens_close,
    .next = tokens_next,
    .rewind = tokens_rewind,
    .save = tokens_save,
    .restore = tokens_restore,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_LOADER,
        .name = "tokens",
        .description = "pre-tokenised uint16/uint32 id files, mmapped, slots in a random order",
        .keys = tokens_keys,
        .vtable = &tokens_vt,
    };
    return &d;
}
