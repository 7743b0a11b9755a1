/* text: UTF-8 text files, tokenised on the fly with the run's tokenizer and packed back to back
 * into rows of seq_len + 1 tokens.  SPEC.md, "Data loaders".
 *
 * Keys ([data]; the core handles plugin and tokenizer itself):
 *   path          STRING, required  one or more paths or globs, comma-separated; relative ones
 *                                   resolve against the experiment file's directory
 *   val_fraction  FLOAT  "0.02"     [0,0.5): the last fraction of the bytes of the concatenated
 *                                   files (moved forward to a line start) is the val split
 *   val_path      STRING ""         a separate validation file set; val_fraction must then be 0
 *                                   or unset; these three keys are read by
 *                                   primal_data_split_new (primal/datafiles.h)
 *   doc_sep       STRING ""         separator between documents inside a file, with C escapes
 *                                   (\n \r \t \\), e.g. "\n\n"; "" = each file is one document
 *   shuffle_rows  INT    "1"        0 = sequential (train in file order, as one stream); any
 *                                   other value = shuffled over the whole corpus, as below (the
 *                                   number itself no longer matters: it once counted the rows
 *                                   of a window of neighbouring text)
 *   chunk_bytes   INT    "65536"    the corpus is cut into chunks at multiples of it
 *   window_chunks INT    "128"      train, shuffled: chunks tokenised and shuffled together
 *
 * Chunks.  Each file's byte range in the split (a segment) is cut at its start + k * chunk_bytes,
 * and each cut is moved forward, by less than chunk_bytes / 2 and never past the segment's end,
 * to the first place that ends a document separator; else that follows a newline and precedes
 * a non-space; else that precedes a space that a non-space follows (BPE pre-tokenisers glue a
 * space to the next word); else that starts a UTF-8 character (never inside a separator).  A
 * cut depends only on the bytes around it, not on the order the chunks are read in, so a chunk
 * is always the same text and gives the same tokens, and tokenising the chunks one by one gives
 * the tokens of the whole text.  A document open at a chunk's start is one that a cut not
 * made at a separator runs through.  Documents are followed by the tokenizer's eot id, or by the
 * id of "\n" where it has none ("bytes").  Rows overlap by one token (a row's last token is the
 * next row's first), so every token is predicted once; the mask is all ones.
 *
 * Train, shuffled (the default): epoch e visits all the chunks of the split in the order of a
 * keyed bijection of [0, chunks) (a 4-round Feistel network over the 4^h >= chunks values, its
 * round keys drawn from the counter-based RNG by (seed, e), walked until it lands below chunks:
 * O(1) memory whatever the corpus).  That order is read window_chunks chunks at a time: a
 * window's chunks are tokenised and concatenated in that order, cut into rows (the tokens after
 * its last whole row are dropped) and its rows are emitted in a second keyed order drawn by
 * (seed, e, window).  A row can therefore join the end of one chunk to the start of an
 * unrelated one, as packing does with documents.  With the defaults a window is 128 chunks of
 * about 64 KiB (8 MiB of text) from 128 places spread over the whole corpus, so consecutive
 * rows, and the rows of one batch, come from distant parts of it (on book-ordered KJV, windows
 * of 1024 neighbouring rows cost dense training 7% in validation loss against a full shuffle;
 * its 4.3 MB make a single window, a full shuffle).  Memory: one window's tokens as int32 ids,
 * at most window_chunks * (1.5 * chunk_bytes + 1) of them (about 32 MiB with the bytes tokenizer
 * and the defaults, 8 MiB with a BPE of ~4 bytes a token; the array grows by doubling, so up to
 * twice that is reserved), plus one chunk's bytes: whatever the corpus's size, so one larger
 * than memory works.  Reads land anywhere but are 64-96 KiB each.  The position is the epoch, the
 * windows of it begun, the seq_len the current one is cut for, its row count and the rows of
 * it used: a restore re-reads and re-tokenises that window (lazily: not at all if the next
 * seq_len differs).  When seq_len changes the rest of the current window is dropped.  The split
 * never ends: after the last window a new epoch starts with a new order.
 *
 * Train, sequential (shuffle_rows = 0): the chunks in file order as one stream of rows; a
 * partial last row is dropped and the next epoch starts over.  A seq_len change continues the
 * stream.  The position is the chunk, the token within it and the carried token.
 *
 * Val: sequential as above, finite; the last partial row is padded with eot and mask 0, and so
 * are the rows of the last batch that the split cannot fill.
 *
 * State (save/restore): 8-byte little-endian words in the order of the F_ enum below.  A
 * restore treats them as untrusted: each is range-checked and a bad one is PRIMAL_EIO naming
 * the loader and the field; one saved on other data or keys is PRIMAL_ECONFIG.
 *
 * Ranks: every rank reads the same single-rank row sequence; a batch takes rows * nranks
 * consecutive rows and rank r keeps the r-th block of rows of them, so that rank r gets the
 * micro-batches a single rank would take in its slots r, r + nranks, ... (what the vote
 * all-reduce needs to be exact). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <primal/datafiles.h>
#include <primal/plugin.h>

#include "loader_util.h"

#define RNG_TAG 0xDA7Au  /* loaders' tensor-id slot in primal_rng_stream: no model tensor */
#define STATE_MAGIC 0x32787470u     /* "ptx2" */
#define STATE_MAGIC_OLD 0x31787470u /* "ptx1": windows of neighbouring rows */
#define MAX_EPOCH UINT32_MAX        /* keeps the epoch below primal_rng_stream's step bits */

/* ------------------------------------------------------------------------------------------ */
/* Chunks                                                                                     */

typedef struct text_ctx {
    primal_tokenizer *tok;
    int32_t eot, vocab;
    int split, rank, nranks;
    uint64_t seed;
    primal_data_split *data; /* the split's files and byte ranges */
    char sep[256];
    size_t seplen;
    int64_t chunk, span;     /* chunk_bytes; a cut moves forward by less than span */
    int shuffle;             /* train, shuffle_rows > 0 */
    int64_t wchunks;         /* window_chunks */
    int64_t *cbase;          /* (nsegs + 1) number of each segment's first chunk; [nsegs]: all */
    int64_t nchunks, nwin;   /* chunks of the split, windows of an epoch */

    int fd, fd_file;
    char *buf;               /* the bytes read for one chunk */

    /* the stream (sequential train, val): chunk g, its token tpos, the carried token */
    primal_ids ids;          /* the tokens of chunk ids_g (-1: none) */
    int64_t ids_g, g, tpos;
    int32_t carry;
    int ended;
    int32_t *row;
    size_t row_len;

    /* train */
    uint64_t epoch;
    int epoch_rows;          /* the epoch has given a row */
    int64_t wnext;           /* shuffled: windows of the epoch begun (the current is wnext - 1) */
    int wlen;                /* the seq_len the current window is cut for */
    int64_t wrows, wused;    /* its rows, and those already emitted */
    primal_ids win;          /* the tokens of window (win_epoch, win_num) when win_ok */
    int win_ok;
    uint64_t win_epoch;
    int64_t win_num;
} text_ctx;

static const char *first_path(const text_ctx *c)
{
    return c->data->files[c->data->segs[0].file].path;
}

static int is_space(int ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* The byte at file offset p, when buf holds [lo, hi); -1 outside. */
static int byte_at(const text_ctx *c, int64_t lo, int64_t hi, int64_t p)
{
    return p >= lo && p < hi ? (unsigned char)c->buf[p - lo] : -1;
}

/* Does an occurrence of the separator start before p and end after it? */
static int straddles(const text_ctx *c, int64_t lo, int64_t hi, int64_t p)
{
    for (int64_t k = 1; k < (int64_t)c->seplen; k++) {
        int64_t q = p - k;
        if (q >= lo && q + (int64_t)c->seplen <= hi &&
            memcmp(c->buf + (q - lo), c->sep, c->seplen) == 0)
            return 1;
    }
    return 0;
}

/* Where the cut nominally at x moves to, searching [x, lim) (buf holds [lo, hi), which covers
 * [x - seplen - 1, lim + seplen + 1) where the segment has those bytes): see the file's
 * comment.  *at_sep says it ends a separator. */
static int64_t cut_at(const text_ctx *c, int64_t lo, int64_t hi, int64_t x, int64_t lim,
                      int *at_sep)
{
    int64_t sl = (int64_t)c->seplen, p;
    *at_sep = 0;
    if (sl > 0) {
        int64_t q = x - sl < lo ? lo : x - sl;
        const char *m = lim - 1 > q ? memmem(c->buf + (q - lo), (size_t)(lim - 1 - q), c->sep,
                                             c->seplen)
                                    : NULL;
        if (m != NULL) {
            *at_sep = 1;
            return lo + (int64_t)(m - c->buf) + sl;
        }
    }
    for (p = x; p < lim; p++)
        if (byte_at(c, lo, hi, p - 1) == '\n' && byte_at(c, lo, hi, p) >= 0 &&
            !is_space(byte_at(c, lo, hi, p)) && !straddles(c, lo, hi, p))
            return p;
    for (p = x; p < lim; p++)
        if (is_space(byte_at(c, lo, hi, p)) && byte_at(c, lo, hi, p + 1) >= 0 &&
            !is_space(byte_at(c, lo, hi, p + 1)) && !straddles(c, lo, hi, p))
            return p;
    for (p = x; p < lim; p++)
        if (byte_at(c, lo, hi, p) >= 0 && (byte_at(c, lo, hi, p) & 0xC0) != 0x80 &&
            !straddles(c, lo, hi, p))
            return p;
    return x;
}

static int read_at(int fd, const char *path, char *buf, size_t n, int64_t off, primal_err *err)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)(off + (int64_t)got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return primal_errf(err, PRIMAL_EIO, "%s: read at byte %lld: %s", path,
                               (long long)(off + (int64_t)got), strerror(errno));
        if (r == 0)
            return primal_errf(err, PRIMAL_EIO, "%s: truncated: ends at byte %lld, expected "
                               "%lld bytes", path, (long long)(off + (int64_t)got),
                               (long long)(off + (int64_t)n));
        got += (size_t)r;
    }
    return PRIMAL_OK;
}

static int encode_piece(text_ctx *c, const char *path, int64_t lo, size_t a, size_t n,
                        primal_ids *out, primal_err *err)
{
    if (primal_tokenizer_encode(c->tok, c->buf + a, n, out, err) != PRIMAL_OK)
        return primal_err_prefix(err, "%s: bytes %lld..%lld", path, (long long)(lo + (int64_t)a),
                                 (long long)(lo + (int64_t)(a + n)));
    return PRIMAL_OK;
}

/* Append the tokens of chunk g (0 <= g < nchunks) to out. */
static int read_chunk(text_ctx *c, int64_t g, primal_ids *out, primal_err *err)
{
    int s = 0, hi_s = c->data->nsegs - 1;
    while (s < hi_s) {
        int mid = (s + hi_s + 1) / 2;
        if (c->cbase[mid] <= g)
            s = mid;
        else
            hi_s = mid - 1;
    }
    const primal_data_seg *sg = &c->data->segs[s];
    const char *path = c->data->files[sg->file].path;
    int64_t i = g - c->cbase[s];
    int64_t x0 = sg->start + i * c->chunk;
    int final = sg->end - x0 <= c->chunk;
    int64_t x1 = final ? sg->end : x0 + c->chunk;
    int64_t pre = (int64_t)c->seplen + 1;
    int64_t lo = x0 - pre > sg->start ? x0 - pre : sg->start;
    int64_t hi = x1 + c->span + pre + 16 < sg->end ? x1 + c->span + pre + 16 : sg->end;
    if (c->fd_file != sg->file) {
        if (c->fd >= 0)
            close(c->fd);
        c->fd_file = -1;
        c->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (c->fd < 0)
            return primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", path, strerror(errno));
        c->fd_file = sg->file;
    }
    int rc = read_at(c->fd, path, c->buf, (size_t)(hi - lo), lo, err);
    if (rc != PRIMAL_OK)
        return rc;
    int at_sep = 1, unused;
    int64_t a = i == 0 ? sg->start
                       : cut_at(c, lo, hi, x0, x0 + c->span < sg->end ? x0 + c->span : sg->end,
                                &at_sep);
    int64_t b = final ? sg->end
                      : cut_at(c, lo, hi, x1, x1 + c->span < sg->end ? x1 + c->span : sg->end,
                               &unused);
    size_t p = (size_t)(a - lo), e = (size_t)(b - lo);
    int open_doc = !at_sep; /* a chunk that starts inside a document */
    if (c->seplen > 0) {
        const char *m;
        while (p < e && (m = memmem(c->buf + p, e - p, c->sep, c->seplen)) != NULL) {
            size_t q = (size_t)(m - c->buf);
            if (q > p) {
                if ((rc = encode_piece(c, path, lo, p, q - p, out, err)) != PRIMAL_OK)
                    return rc;
                open_doc = 1;
            }
            if (open_doc && (rc = primal_ids_push(out, c->eot, err)) != PRIMAL_OK)
                return rc;
            open_doc = 0;
            p = q + c->seplen;
        }
    }
    if (e > p) {
        if ((rc = encode_piece(c, path, lo, p, e - p, out, err)) != PRIMAL_OK)
            return rc;
        open_doc = 1;
    }
    if (final && open_doc && (rc = primal_ids_push(out, c->eot, err)) != PRIMAL_OK)
        return rc;
    return PRIMAL_OK;
}

static int grow(void **p, size_t *len, size_t want, size_t elem, primal_err *err)
{
    if (*len >= want)
        return PRIMAL_OK;
    void *q = realloc(*p, want * elem);
    if (q == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory (%zu bytes)", want * elem);
    *p = q;
    *len = want;
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* The stream: sequential train and val                                                       */

/* Have the tokens of chunk g in ids. */
static int load_ids(text_ctx *c, int64_t g, primal_err *err)
{
    if (c->ids_g == g)
        return PRIMAL_OK;
    c->ids_g = -1;
    c->ids.n = 0;
    int rc = read_chunk(c, g, &c->ids, err);
    if (rc == PRIMAL_OK)
        c->ids_g = g;
    return rc;
}

/* 1 and the next token, 0 at the end of the split, or an error. */
static int next_token(text_ctx *c, int32_t *t, primal_err *err)
{
    for (;;) {
        int rc = load_ids(c, c->g, err);
        if (rc != PRIMAL_OK)
            return rc;
        if (c->tpos < (int64_t)c->ids.n)
            break;
        if (c->g + 1 >= c->nchunks)
            return 0;
        c->g++;
        c->tpos = 0;
    }
    *t = c->ids.v[c->tpos++];
    return 1;
}

/* Up to L + 1 tokens into row (*n of them; fewer only at the end of the split). */
static int take_row(text_ctx *c, int L, int32_t *row, int *n, primal_err *err)
{
    int k = 0;
    if (c->carry >= 0)
        row[k++] = c->carry;
    while (k < L + 1) {
        int rc = next_token(c, &row[k], err);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        k++;
    }
    c->carry = k == L + 1 ? row[L] : -1;
    *n = k;
    return PRIMAL_OK;
}

static void stream_start(text_ctx *c)
{
    c->g = 0;
    c->tpos = 0;
    c->carry = -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Train                                                                                      */

static int too_short(const text_ctx *c, int L, primal_err *err)
{
    if (!c->shuffle)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: the train split (%lld bytes) holds fewer "
                           "than seq_len + 1 = %d tokens", first_path(c),
                           (long long)c->data->bytes, L + 1);
    return primal_errf(err, PRIMAL_ECONFIG, "%s: the train split (%lld bytes) gives no row of "
                       "seq_len + 1 = %d tokens: a row comes from one window of window_chunks = "
                       "%lld chunks of chunk_bytes = %lld", first_path(c),
                       (long long)c->data->bytes, L + 1, (long long)c->wchunks,
                       (long long)c->chunk);
}

/* The next row of the sequential train sequence. */
static int stream_train_row(text_ctx *c, int L, int32_t *out, primal_err *err)
{
    for (;;) {
        int n, rc = take_row(c, L, out, &n, err);
        if (rc != PRIMAL_OK)
            return rc;
        if (n == L + 1) {
            c->epoch_rows = 1;
            return PRIMAL_OK;
        }
        if (!c->epoch_rows)
            return too_short(c, L, err);
        c->epoch++; /* a partial last row is dropped */
        c->epoch_rows = 0;
        stream_start(c);
    }
}

/* Read window w of epoch e into win. */
static int fill_window(text_ctx *c, uint64_t e, int64_t w, primal_err *err)
{
    if (c->win_ok && c->win_epoch == e && c->win_num == w)
        return PRIMAL_OK;
    c->win_ok = 0;
    c->win.n = 0;
    uint64_t stream = primal_rng_stream(RNG_TAG, e, 4);
    int64_t last = (w + 1) * c->wchunks < c->nchunks ? (w + 1) * c->wchunks : c->nchunks;
    for (int64_t k = w * c->wchunks; k < last; k++) {
        uint64_t g = permute((uint64_t)k, (uint64_t)c->nchunks, c->seed, stream);
        int rc = read_chunk(c, (int64_t)g, &c->win, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    c->win_ok = 1;
    c->win_epoch = e;
    c->win_num = w;
    return PRIMAL_OK;
}

static int64_t window_rows(const text_ctx *c, int L)
{
    return (int64_t)c->win.n > L ? ((int64_t)c->win.n - 1) / L : 0;
}

/* The next row of the shuffled train sequence. */
static int shuffled_train_row(text_ctx *c, int L, int32_t *out, primal_err *err)
{
    int rc;
    if (c->wused < c->wrows && c->wlen != L)
        c->wrows = c->wused; /* seq_len changed: the rest of this window is dropped */
    while (c->wused == c->wrows) {
        uint64_t e = c->epoch;
        int64_t w = c->wnext;
        int rows_seen = c->epoch_rows;
        if (w == c->nwin) {
            if (!rows_seen)
                return too_short(c, L, err);
            e++;
            w = 0;
            rows_seen = 0;
        }
        if ((rc = fill_window(c, e, w, err)) != PRIMAL_OK)
            return rc;
        c->epoch = e;
        c->wnext = w + 1;
        c->wlen = L;
        c->wrows = window_rows(c, L);
        c->wused = 0;
        c->epoch_rows = rows_seen || c->wrows > 0;
    }
    /* after a restore the window is read again when it is first needed */
    if ((rc = fill_window(c, c->epoch, c->wnext - 1, err)) != PRIMAL_OK)
        return rc;
    if (window_rows(c, c->wlen) != c->wrows)
        return primal_errf(err, PRIMAL_EIO, "text loader: saved state: window %lld of epoch "
                           "%llu has %lld rows of seq_len %d, the data gives %lld: the data "
                           "changed", (long long)(c->wnext - 1), (unsigned long long)c->epoch,
                           (long long)c->wrows, c->wlen, (long long)window_rows(c, c->wlen));
    uint64_t stream = primal_mix64(primal_rng_stream(RNG_TAG, c->epoch, 5) + (uint64_t)c->wnext);
    uint64_t r = permute((uint64_t)c->wused, (uint64_t)c->wrows, c->seed, stream);
    memcpy(out, c->win.v + r * (uint64_t)L, (size_t)(L + 1) * sizeof *out);
    c->wused++;
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* The vtable                                                                                 */

static void text_close(void *ctx)
{
    text_ctx *c = ctx;
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    primal_data_split_free(c->data);
    free(c->cbase);
    free(c->buf);
    free(c->ids.v);
    free(c->win.v);
    free(c->row);
    free(c);
}

static int parse_sep(const primal_config *cfg, text_ctx *c, primal_err *err)
{
    const char *s = primal_cfg_str(cfg, "doc_sep");
    size_t n = 0;
    for (; s && *s; s++) {
        char ch = *s;
        if (ch == '\\') {
            switch (*++s) {
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case '\\': ch = '\\'; break;
            default:
                return primal_cfg_errf(cfg, "doc_sep", err, PRIMAL_ECONFIG,
                                       "unknown escape \"\\%c\" (use \\n, \\r, \\t or \\\\)",
                                       *s ? *s : ' ');
            }
        }
        if (n == sizeof c->sep)
            return primal_cfg_errf(cfg, "doc_sep", err, PRIMAL_ECONFIG,
                                   "longer than %zu bytes", sizeof c->sep);
        c->sep[n++] = ch;
    }
    c->seplen = n;
    return PRIMAL_OK;
}

static int text_open(const primal_config *cfg, const primal_loader_info *info, void **ctx,
                     primal_err *err)
{
    *ctx = NULL;
    if (info->nranks < 1 || info->rank < 0 || info->rank >= info->nranks)
        return primal_errf(err, PRIMAL_ECONFIG, "text loader: rank %d of %d", info->rank,
                           info->nranks);
    text_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    c->fd = c->fd_file = -1;
    c->ids_g = -1;
    c->tok = info->tok;
    c->split = info->split;
    c->seed = info->seed;
    c->rank = info->rank;
    c->nranks = info->nranks;
    c->vocab = primal_tokenizer_vocab(info->tok);
    c->chunk = primal_cfg_int(cfg, "chunk_bytes");
    c->span = c->chunk / 2;
    c->shuffle = info->split == PRIMAL_SPLIT_TRAIN && primal_cfg_int(cfg, "shuffle_rows") > 0;
    c->wchunks = primal_cfg_int(cfg, "window_chunks");
    stream_start(c);
    int rc = parse_sep(cfg, c, err);
    if (rc == PRIMAL_OK)
        rc = primal_tokenizer_separator(c->tok, &c->eot, err);
    if (rc == PRIMAL_OK)
        rc = primal_data_split_new(cfg, info->split, PRIMAL_DATA_LINES, &c->data, err);
    if (rc != PRIMAL_OK) {
        free(c);
        return rc;
    }
    c->cbase = malloc((size_t)(c->data->nsegs + 1) * sizeof *c->cbase);
    c->buf = malloc((size_t)(c->chunk + c->span + 2 * ((int64_t)c->seplen + 1) + 16));
    if (c->cbase == NULL || c->buf == NULL)
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    if (rc == PRIMAL_OK) {
        c->cbase[0] = 0;
        for (int s = 0; s < c->data->nsegs; s++) {
            int64_t len = c->data->segs[s].end - c->data->segs[s].start;
            c->cbase[s + 1] = c->cbase[s] + (len + c->chunk - 1) / c->chunk;
        }
        c->nchunks = c->cbase[c->data->nsegs];
        c->nwin = (c->nchunks + c->wchunks - 1) / c->wchunks;
        rc = load_ids(c, 0, err); /* an unreadable first file fails here, not later */
    }
    if (rc != PRIMAL_OK) {
        text_close(c);
        return rc;
    }
    *ctx = c;
    return PRIMAL_OK;
}

static int check_batch(const primal_batch *b, primal_err *err)
{
    if (b->rows < 1 || b->seq_len < 1 || b->tokens == NULL || b->mask == NULL)
        return primal_errf(err, PRIMAL_ERROR, "text loader: batch of %d rows x seq_len %d",
                           b->rows, b->seq_len);
    return PRIMAL_OK;
}

static int text_next(void *ctx, primal_batch *b, primal_err *err)
{
    text_ctx *c = ctx;
    int rc = check_batch(b, err);
    if (rc != PRIMAL_OK)
        return rc;
    int L = b->seq_len;
    size_t W = (size_t)L + 1;
    if ((rc = grow((void **)&c->row, &c->row_len, W, sizeof *c->row, err)) != PRIMAL_OK)
        return rc;
    int total = b->rows * c->nranks;
    if (c->split == PRIMAL_SPLIT_TRAIN) {
        for (int j = 0; j < total; j++) {
            int mine = j / b->rows == c->rank;
            int32_t *dst = mine ? b->tokens + (size_t)(j - c->rank * b->rows) * W : c->row;
            rc = c->shuffle ? shuffled_train_row(c, L, dst, err)
                            : stream_train_row(c, L, dst, err);
            if (rc != PRIMAL_OK)
                return rc;
        }
        memset(b->mask, 1, (size_t)b->rows * (size_t)L);
        return PRIMAL_OK;
    }
    for (int j = 0; j < total; j++) {
        int n = 0;
        if (!c->ended && (rc = take_row(c, L, c->row, &n, err)) != PRIMAL_OK)
            return rc;
        if (n < L + 1)
            c->ended = 1;
        if (n < 2)
            n = 0; /* a lone carried token predicts nothing */
        if (j == 0 && n == 0)
            return primal_errf(err, PRIMAL_EOF, "validation split exhausted");
        if (j / b->rows != c->rank)
            continue;
        size_t i = (size_t)(j - c->rank * b->rows);
        int32_t *dst = b->tokens + i * W;
        uint8_t *m = b->mask + i * (size_t)L;
        for (int k = 0; k < L + 1; k++)
            dst[k] = k < n ? c->row[k] : c->eot;
        for (int k = 0; k < L; k++)
            m[k] = k < n - 1;
    }
    return PRIMAL_OK;
}

static int text_rewind(void *ctx, primal_err *err)
{
    (void)err;
    text_ctx *c = ctx;
    c->ended = 0;
    c->epoch = 0;
    c->epoch_rows = 0;
    c->wnext = c->wrows = c->wused = 0;
    c->wlen = 0;
    stream_start(c);
    return PRIMAL_OK;
}

enum { F_MAGIC, F_SPLIT, F_BYTES, F_CHUNK, F_SHUF, F_WCHUNKS, F_VOCAB, F_EPOCH, F_EROWS,
       F_WNEXT, F_WLEN, F_WROWS, F_WUSED, F_CHUNKNO, F_TPOS, F_CARRY, F_ENDED, F_N };

static int text_save(void *ctx, void *buf, size_t cap, size_t *n, primal_err *err)
{
    text_ctx *c = ctx;
    if (cap < F_N * 8)
        return primal_errf(err, PRIMAL_ERROR, "text loader: state needs %d bytes, got %zu",
                           F_N * 8, cap);
    uint64_t v[F_N] = {
        [F_MAGIC] = STATE_MAGIC, [F_SPLIT] = (uint64_t)c->split,
        [F_BYTES] = (uint64_t)c->data->bytes, [F_CHUNK] = (uint64_t)c->chunk,
        [F_SHUF] = (uint64_t)c->shuffle, [F_WCHUNKS] = c->shuffle ? (uint64_t)c->wchunks : 0,
        [F_VOCAB] = (uint64_t)c->vocab, [F_EPOCH] = c->epoch,
        [F_EROWS] = (uint64_t)c->epoch_rows, [F_WNEXT] = (uint64_t)c->wnext,
        [F_WLEN] = (uint64_t)c->wlen, [F_WROWS] = (uint64_t)c->wrows,
        [F_WUSED] = (uint64_t)c->wused, [F_CHUNKNO] = (uint64_t)c->g,
        [F_TPOS] = (uint64_t)c->tpos, [F_CARRY] = (uint64_t)(int64_t)c->carry,
        [F_ENDED] = (uint64_t)c->ended,
    };
    for (int i = 0; i < F_N; i++)
        put64((uint8_t *)buf + 8 * i, v[i]);
    *n = F_N * 8;
    return PRIMAL_OK;
}

/* A saved word outside [lo, hi] (as unsigned: a negative value is huge) is refused. */
static int check_field(const char *what, uint64_t v, uint64_t lo, uint64_t hi, primal_err *err)
{
    if (v >= lo && v <= hi)
        return PRIMAL_OK;
    return primal_errf(err, PRIMAL_EIO, "text loader: saved state: %s is %lld, outside "
                       "[%llu, %llu]", what, (long long)v, (unsigned long long)lo,
                       (unsigned long long)hi);
}

static int text_restore(void *ctx, const void *buf, size_t n, primal_err *err)
{
    text_ctx *c = ctx;
    uint64_t v[F_N];
    if (n != F_N * 8)
        return primal_errf(err, PRIMAL_ECONFIG, "text loader: saved state is %zu bytes, "
                           "expected %d", n, F_N * 8);
    for (int i = 0; i < F_N; i++)
        v[i] = get64((const uint8_t *)buf + 8 * i);
    if (v[F_MAGIC] == STATE_MAGIC_OLD)
        return primal_errf(err, PRIMAL_ECONFIG, "text loader: the state was saved by an "
                           "earlier version, which shuffled windows of neighbouring rows; this "
                           "one visits chunks in a per-epoch order, so the position cannot be "
                           "carried over");
    if (v[F_MAGIC] != STATE_MAGIC || v[F_SPLIT] != (uint64_t)c->split)
        return primal_errf(err, PRIMAL_ECONFIG, "text loader: saved state is not a text "
                           "loader's for this split");
    uint64_t wchunks = c->shuffle ? (uint64_t)c->wchunks : 0;
    if (v[F_BYTES] != (uint64_t)c->data->bytes || v[F_CHUNK] != (uint64_t)c->chunk ||
        v[F_SHUF] != (uint64_t)c->shuffle || v[F_WCHUNKS] != wchunks ||
        v[F_VOCAB] != (uint64_t)c->vocab)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: the data or [data] keys changed since the "
                           "state was saved (split %llu bytes, chunk_bytes %llu, shuffled %llu, "
                           "window_chunks %llu, vocab %llu then; %lld, %lld, %d, %llu, %d now)",
                           first_path(c), (unsigned long long)v[F_BYTES],
                           (unsigned long long)v[F_CHUNK], (unsigned long long)v[F_SHUF],
                           (unsigned long long)v[F_WCHUNKS], (unsigned long long)v[F_VOCAB],
                           (long long)c->data->bytes, (long long)c->chunk, c->shuffle,
                           (unsigned long long)wchunks, c->vocab);
    int train = c->split == PRIMAL_SPLIT_TRAIN, rc;
    /* a chunk holds at most 1.5 * chunk_bytes bytes, each at most one token, and an eot */
    uint64_t chunk_tokens = (uint64_t)(c->chunk + c->span + 1);
    uint64_t begun = c->shuffle ? v[F_WNEXT] : 0;
    uint64_t wlen_lo = begun > 0 ? 1 : 0, wlen_hi = begun > 0 ? INT32_MAX - 1 : 0;
    uint64_t wrows_hi = begun > 0 ? (uint64_t)c->wchunks * chunk_tokens : 0;
    if ((rc = check_field("epoch", v[F_EPOCH], 0, train ? MAX_EPOCH : 0, err)) != PRIMAL_OK ||
        (rc = check_field("epoch has rows", v[F_EROWS], 0, train ? 1 : 0, err)) != PRIMAL_OK ||
        (rc = check_field("windows begun", v[F_WNEXT], 0,
                          c->shuffle ? (uint64_t)c->nwin : 0, err)) != PRIMAL_OK ||
        (rc = check_field("window seq_len", v[F_WLEN], wlen_lo, wlen_hi, err)) != PRIMAL_OK ||
        (rc = check_field("window rows", v[F_WROWS], 0, wrows_hi, err)) != PRIMAL_OK ||
        (rc = check_field("window rows used", v[F_WUSED], 0, v[F_WROWS], err)) != PRIMAL_OK ||
        (rc = check_field("chunk", v[F_CHUNKNO], 0, (uint64_t)c->nchunks - 1, err)) !=
            PRIMAL_OK ||
        (rc = check_field("token", v[F_TPOS], 0, chunk_tokens, err)) != PRIMAL_OK ||
        (rc = check_field("ended", v[F_ENDED], 0, train ? 0 : 1, err)) != PRIMAL_OK)
        return rc;
    if (v[F_CARRY] != UINT64_MAX && v[F_CARRY] >= (uint64_t)c->vocab)
        return primal_errf(err, PRIMAL_EIO, "text loader: saved state: carried token is %lld, "
                           "neither -1 nor below the vocabulary size %d", (long long)v[F_CARRY],
                           c->vocab);
    if (!c->shuffle) { /* the stream's chunk must hold the saved token */
        if ((rc = load_ids(c, (int64_t)v[F_CHUNKNO], err)) != PRIMAL_OK)
            return rc;
        if (v[F_TPOS] > (uint64_t)c->ids.n)
            return primal_errf(err, PRIMAL_EIO, "text loader: saved state: token %llu of chunk "
                               "%llu lies past its %zu tokens: the data changed",
                               (unsigned long long)v[F_TPOS], (unsigned long long)v[F_CHUNKNO],
                               c->ids.n);
    }
    c->epoch = v[F_EPOCH];
    c->epoch_rows = (int)v[F_EROWS];
    c->wnext = (int64_t)v[F_WNEXT];
    c->wlen = (int)v[F_WLEN];
    c->wrows = (int64_t)v[F_WROWS];
    c->wused = (int64_t)v[F_WUSED];
    c->g = (int64_t)v[F_CHUNKNO];
    c->tpos = (int64_t)v[F_TPOS];
    c->carry = (int32_t)(int64_t)v[F_CARRY];
    c->ended = (int)v[F_ENDED];
    return PRIMAL_OK;
}

static const primal_key text_keys[] = {
    {"path", PRIMAL_KEY_STRING, NULL, "text files or globs, comma-separated", NULL},
    {"val_fraction", PRIMAL_KEY_FLOAT, "0.02", "last fraction of the bytes held out for "
     "validation", "[0,0.5)"},
    {"val_path", PRIMAL_KEY_STRING, "", "separate validation files (val_fraction then 0)", NULL},
    {"doc_sep", PRIMAL_KEY_STRING, "", "document separator inside a file, C escapes; empty: "
     "one document per file", NULL},
    {"shuffle_rows", PRIMAL_KEY_INT, "1", "0: train in file order; otherwise shuffled over the "
     "whole corpus (chunks in a random order each epoch, window_chunks of them shuffled "
     "together; the number itself no longer matters)", "[0,1048576]"},
    {"chunk_bytes", PRIMAL_KEY_INT, "65536", "the corpus is cut into chunks of about this many "
     "bytes (moved forward to a document or line boundary), the unit of the random order",
     "[64,1073741824]"},
    {"window_chunks", PRIMAL_KEY_INT, "128", "train: chunks read in the random order, tokenised "
     "and row-shuffled together (memory: their tokens)", "[1,1048576]"},
    {0},
};

static const primal_loader_vt text_vt = {
    .size = sizeof(primal_loader_vt),
    .open = text_open,
    .close = text_close,
    .next = text_next,
    .rewind = text_rewind,
    .save = text_save,
    .restore = text_restore,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_LOADER,
        .name = "text",
        .description = "UTF-8 text files, tokenised while streaming, packed, shuffled over the "
                       "whole corpus",
        .keys = text_keys,
        .vtable = &text_vt,
    };
    return &d;
}
