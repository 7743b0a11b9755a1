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
 *   shuffle_rows  INT    "1024"     rows per shuffle window; 0 = sequential
 *   chunk_bytes   INT    "4194304"  text read and tokenised at a time
 *
 * Streaming: a corpus larger than memory works, since only one chunk (chunk_bytes, cut after a
 * document separator, else after a newline or before a space that precedes a word, so that a
 * BPE tokeniser sees the same words as on the whole text) and its tokens are held.  Documents
 * are followed by the tokenizer's eot id, or by the id of "\n" where it has none ("bytes").
 * Rows overlap by one token (a row's last token is the next row's first), so every token is
 * predicted once; the mask is all ones.
 *
 * Train: the stream is cut into windows of shuffle_rows rows, and each window is emitted in an
 * order drawn from the counter-based RNG (seed, epoch, window), so the rows of a batch come from
 * all over a window rather than from consecutive text.  A position is therefore where the
 * current window starts (segment, chunk's byte offset, token within the chunk, carried token),
 * the rows of it already used, and the epoch: a restore re-reads one window.  When seq_len
 * changes the rest of the current window is dropped.  The split never ends: a partial last row
 * is dropped and a new epoch starts with a new window order.
 *
 * Val: sequential, finite; the last partial row is padded with eot and mask 0, and so are the
 * rows of the last batch that the split cannot fill.
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

#define RNG_TAG 0xDA7Au  /* loaders' tensor-id slot in primal_rng_stream: no model tensor */
#define STATE_MAGIC 0x31787470u /* "ptx1" */

/* ------------------------------------------------------------------------------------------ */
/* Small helpers (each loader is one file, so these recur in the others)        */

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* The token stream                                                                           */

typedef struct rpos {
    int seg;        /* segment of the chunk */
    int64_t off;    /* file offset where the chunk starts */
    int doc_open;   /* a document with content was open when the chunk started */
    int64_t tpos;   /* next token within the chunk's tokens */
    int32_t carry;  /* first token of the next row (the last of the previous one), or -1 */
} rpos;

typedef struct text_ctx {
    primal_tokenizer *tok;
    int32_t eot, vocab;
    int split, rank, nranks;
    uint64_t seed;
    primal_data_split *data; /* the split's files and byte ranges */
    char sep[256];
    size_t seplen;
    size_t chunk, margin;
    int64_t shuffle_rows;

    /* the chunk in memory */
    int fd, fd_file;
    char *buf;
    primal_ids ids;
    int loaded;
    int seg_i;          /* the chunk's segment, offset and doc_open at its start */
    int64_t off;
    int doc_open;
    int64_t tpos;       /* next token of ids */
    int64_t next_off;   /* where the following chunk starts */
    int doc_open_after;
    int32_t carry;

    /* train: epoch and shuffle window */
    uint64_t epoch, wnum, wnext;
    rpos wstart;
    int wlen;
    int64_t wrows, wused, wcap;
    int32_t *win;
    size_t win_len;
    uint32_t *perm;
    int epoch_rows;

    /* val */
    int ended;
    int32_t *row;
    size_t row_len;
} text_ctx;

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* Does an occurrence of the separator straddle position p (start before p, end after)? */
static int straddles(const text_ctx *c, const char *b, size_t got, size_t p)
{
    for (size_t k = 1; k < c->seplen && k <= p; k++)
        if (p - k + c->seplen <= got && memcmp(b + p - k, c->sep, c->seplen) == 0)
            return 1;
    return 0;
}

/* Where to end a chunk of lim bytes (got >= lim + margin are in b), so that tokenising the
 * pieces gives the tokens of the whole: after the last separator; else after a newline that a
 * non-space follows; else before a space that a non-space follows (BPE pre-tokenisers glue a
 * space to the next word); else at a UTF-8 character boundary. */
static size_t find_cut(const text_ctx *c, const char *b, size_t lim, size_t got)
{
    if (c->seplen > 0) {
        size_t last = 0;
        const char *p = b;
        while ((p = memmem(p, (size_t)(b + lim - p), c->sep, c->seplen)) != NULL) {
            p += c->seplen;
            last = (size_t)(p - b);
        }
        if (last > 0)
            return last;
    }
    for (size_t p = lim; p > 0; p--)
        if (b[p - 1] == '\n' && !is_space(b[p]) && !straddles(c, b, got, p))
            return p;
    for (size_t p = lim; p > 0; p--)
        if (is_space(b[p]) && !is_space(b[p + 1]) && !straddles(c, b, got, p))
            return p;
    size_t p = lim;
    while (p > 1 && ((((unsigned char)b[p] & 0xC0) == 0x80) || straddles(c, b, got, p)))
        p--;
    return p;
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

static int encode_piece(text_ctx *c, const char *path, size_t a, size_t n, primal_err *err)
{
    if (primal_tokenizer_encode(c->tok, c->buf + a, n, &c->ids, err) != PRIMAL_OK)
        return primal_err_prefix(err, "%s: bytes %lld..%lld", path,
                                 (long long)(c->off + (int64_t)a),
                                 (long long)(c->off + (int64_t)(a + n)));
    return PRIMAL_OK;
}

/* Read and tokenise the chunk of segment s that starts at off. */
static int load_chunk(text_ctx *c, int s, int64_t off, int doc_open, primal_err *err)
{
    const primal_data_seg *g = &c->data->segs[s];
    const char *path = c->data->files[g->file].path;
    if (c->fd_file != g->file) {
        if (c->fd >= 0)
            close(c->fd);
        c->fd_file = -1;
        c->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (c->fd < 0)
            return primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", path, strerror(errno));
        c->fd_file = g->file;
    }
    c->loaded = 0;
    int64_t left = g->end - off;
    int final = left <= (int64_t)(c->chunk + c->margin);
    size_t want = final ? (size_t)left : c->chunk + c->margin;
    int rc = read_at(c->fd, path, c->buf, want, off, err);
    if (rc != PRIMAL_OK)
        return rc;
    size_t cut = final ? want : find_cut(c, c->buf, c->chunk, want);
    c->off = off;
    c->ids.n = 0;
    size_t a = 0;
    int open_doc = doc_open;
    if (c->seplen > 0) {
        const char *p;
        while ((p = memmem(c->buf + a, cut - a, c->sep, c->seplen)) != NULL) {
            size_t e = (size_t)(p - c->buf);
            if (e > a) {
                if ((rc = encode_piece(c, path, a, e - a, err)) != PRIMAL_OK)
                    return rc;
                open_doc = 1;
            }
            if (open_doc && (rc = primal_ids_push(&c->ids, c->eot, err)) != PRIMAL_OK)
                return rc;
            open_doc = 0;
            a = e + c->seplen;
        }
    }
    if (cut > a) {
        if ((rc = encode_piece(c, path, a, cut - a, err)) != PRIMAL_OK)
            return rc;
        open_doc = 1;
    }
    if (final && open_doc) {
        if ((rc = primal_ids_push(&c->ids, c->eot, err)) != PRIMAL_OK)
            return rc;
        open_doc = 0;
    }
    c->seg_i = s;
    c->doc_open = doc_open;
    c->tpos = 0;
    c->next_off = off + (int64_t)cut;
    c->doc_open_after = open_doc;
    c->loaded = 1;
    return PRIMAL_OK;
}

static rpos snapshot(const text_ctx *c)
{
    return (rpos){c->seg_i, c->off, c->doc_open, c->tpos, c->carry};
}

static int seek(text_ctx *c, rpos p, primal_err *err)
{
    if (p.seg < 0 || p.seg >= c->data->nsegs || p.off < c->data->segs[p.seg].start ||
        p.off >= c->data->segs[p.seg].end || p.tpos < 0)
        return primal_errf(err, PRIMAL_ECONFIG, "text loader: saved position (segment %d, "
                           "byte %lld) lies outside the data", p.seg, (long long)p.off);
    int rc = PRIMAL_OK;
    if (!(c->loaded && c->seg_i == p.seg && c->off == p.off && c->doc_open == p.doc_open))
        rc = load_chunk(c, p.seg, p.off, p.doc_open, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (p.tpos > (int64_t)c->ids.n)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: saved position (token %lld of the chunk "
                           "at byte %lld) lies past its %zu tokens: the data changed",
                           c->data->files[c->data->segs[p.seg].file].path, (long long)p.tpos,
                           (long long)p.off, c->ids.n);
    c->tpos = p.tpos;
    c->carry = p.carry;
    return PRIMAL_OK;
}

static rpos stream_start(const text_ctx *c)
{
    return (rpos){0, c->data->segs[0].start, 0, 0, -1};
}

/* 1 and the next token, 0 at the end of the split, or an error. */
static int next_token(text_ctx *c, int32_t *t, primal_err *err)
{
    while (c->tpos >= (int64_t)c->ids.n) {
        int rc;
        if (c->next_off < c->data->segs[c->seg_i].end)
            rc = load_chunk(c, c->seg_i, c->next_off, c->doc_open_after, err);
        else if (c->seg_i + 1 < c->data->nsegs)
            rc = load_chunk(c, c->seg_i + 1, c->data->segs[c->seg_i + 1].start, 0, err);
        else
            return 0;
        if (rc != PRIMAL_OK)
            return rc;
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

/* Read the next window of up to wcap rows of L and draw its order. */
static int fill_window(text_ctx *c, int L, primal_err *err)
{
    int rc = grow((void **)&c->win, &c->win_len, (size_t)c->wcap * (size_t)(L + 1),
                  sizeof *c->win, err);
    if (rc != PRIMAL_OK)
        return rc;
    c->wstart = snapshot(c);
    c->wlen = L;
    c->wrows = c->wused = 0;
    while (c->wrows < c->wcap) {
        int n;
        rc = take_row(c, L, c->win + (size_t)c->wrows * (size_t)(L + 1), &n, err);
        if (rc != PRIMAL_OK)
            return rc;
        if (n < L + 1)
            break;
        c->wrows++;
    }
    for (int64_t i = 0; i < c->wrows; i++)
        c->perm[i] = (uint32_t)i;
    if (c->shuffle_rows > 0) {
        uint64_t stream = primal_mix64(primal_rng_stream(RNG_TAG, c->epoch, 1) + c->wnum);
        for (int64_t i = c->wrows - 1; i > 0; i--) {
            uint64_t j = primal_rng_u64(c->seed, stream, (uint64_t)i) % (uint64_t)(i + 1);
            uint32_t t = c->perm[i];
            c->perm[i] = c->perm[j];
            c->perm[j] = t;
        }
    }
    return PRIMAL_OK;
}

/* The next row of the single-rank train sequence (L + 1 tokens). */
static int train_row(text_ctx *c, int L, int32_t *out, primal_err *err)
{
    if (c->wused < c->wrows && c->wlen != L)
        c->wrows = c->wused; /* seq_len changed: the rest of this window is dropped */
    while (c->wused == c->wrows) {
        c->wnum = c->wnext++;
        int rc = fill_window(c, L, err);
        if (rc != PRIMAL_OK)
            return rc;
        if (c->wrows > 0) {
            c->epoch_rows = 1;
            break;
        }
        if (!c->epoch_rows)
            return primal_errf(err, PRIMAL_ECONFIG, "%s: the train split (%lld bytes) holds "
                               "fewer than seq_len + 1 = %d tokens",
                               c->data->files[c->data->segs[0].file].path,
                               (long long)c->data->bytes, L + 1);
        c->epoch++;
        c->wnext = 0;
        c->epoch_rows = 0;
        if ((rc = seek(c, stream_start(c), err)) != PRIMAL_OK)
            return rc;
    }
    memcpy(out, c->win + (size_t)c->perm[c->wused] * (size_t)(L + 1),
           (size_t)(L + 1) * sizeof *out);
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
    free(c->buf);
    free(c->ids.v);
    free(c->win);
    free(c->perm);
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
    c->tok = info->tok;
    c->split = info->split;
    c->seed = info->seed;
    c->rank = info->rank;
    c->nranks = info->nranks;
    c->vocab = primal_tokenizer_vocab(info->tok);
    c->chunk = (size_t)primal_cfg_int(cfg, "chunk_bytes");
    c->shuffle_rows = info->split == PRIMAL_SPLIT_TRAIN ? primal_cfg_int(cfg, "shuffle_rows")
                                                        : 0;
    c->wcap = c->shuffle_rows > 0 ? c->shuffle_rows : 1;
    c->carry = -1;
    int rc = parse_sep(cfg, c, err);
    if (rc == PRIMAL_OK)
        rc = primal_tokenizer_separator(c->tok, &c->eot, err);
    if (rc == PRIMAL_OK)
        rc = primal_data_split_new(cfg, info->split, PRIMAL_DATA_LINES, &c->data, err);
    if (rc != PRIMAL_OK) {
        free(c);
        return rc;
    }
    c->margin = c->seplen + 16;
    c->buf = malloc(c->chunk + c->margin);
    c->perm = malloc((size_t)c->wcap * sizeof *c->perm);
    if (c->buf == NULL || c->perm == NULL)
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    c->wstart = stream_start(c);
    if (rc == PRIMAL_OK)
        rc = seek(c, c->wstart, err); /* an unreadable first file fails here, not later */
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
            if ((rc = train_row(c, L, dst, err)) != PRIMAL_OK)
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
    text_ctx *c = ctx;
    c->ended = 0;
    c->epoch = c->wnum = c->wnext = 0;
    c->wrows = c->wused = 0;
    c->epoch_rows = 0;
    c->wstart = stream_start(c);
    return seek(c, c->wstart, err);
}

enum { F_MAGIC, F_SPLIT, F_BYTES, F_CHUNK, F_SHUF, F_VOCAB, F_EPOCH, F_WNUM, F_WNEXT, F_SEG,
       F_OFF, F_DOC, F_TPOS, F_CARRY, F_WLEN, F_WROWS, F_WUSED, F_ENDED, F_N };

static int text_save(void *ctx, void *buf, size_t cap, size_t *n, primal_err *err)
{
    text_ctx *c = ctx;
    if (cap < F_N * 8)
        return primal_errf(err, PRIMAL_ERROR, "text loader: state needs %d bytes, got %zu",
                           F_N * 8, cap);
    /* train: where the current window starts; val: where the next row starts */
    rpos p = c->split == PRIMAL_SPLIT_TRAIN ? c->wstart : snapshot(c);
    uint64_t v[F_N] = {
        [F_MAGIC] = STATE_MAGIC, [F_SPLIT] = (uint64_t)c->split,
        [F_BYTES] = (uint64_t)c->data->bytes, [F_CHUNK] = c->chunk,
        [F_SHUF] = (uint64_t)c->shuffle_rows, [F_VOCAB] = (uint64_t)c->vocab,
        [F_EPOCH] = c->epoch, [F_WNUM] = c->wnum, [F_WNEXT] = c->wnext,
        [F_SEG] = (uint64_t)p.seg, [F_OFF] = (uint64_t)p.off, [F_DOC] = (uint64_t)p.doc_open,
        [F_TPOS] = (uint64_t)p.tpos, [F_CARRY] = (uint64_t)(int64_t)p.carry,
        [F_WLEN] = (uint64_t)c->wlen, [F_WROWS] = (uint64_t)c->wrows,
        [F_WUSED] = (uint64_t)c->wused, [F_ENDED] = (uint64_t)c->ended,
    };
    for (int i = 0; i < F_N; i++)
        put64((uint8_t *)buf + 8 * i, v[i]);
    *n = F_N * 8;
    return PRIMAL_OK;
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
    if (v[F_MAGIC] != STATE_MAGIC || v[F_SPLIT] != (uint64_t)c->split)
        return primal_errf(err, PRIMAL_ECONFIG, "text loader: saved state is not a text "
                           "loader's for this split");
    if (v[F_BYTES] != (uint64_t)c->data->bytes || v[F_CHUNK] != c->chunk ||
        v[F_SHUF] != (uint64_t)c->shuffle_rows || v[F_VOCAB] != (uint64_t)c->vocab)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: the data or [data] keys changed since the "
                           "state was saved (split %llu bytes, chunk_bytes %llu, shuffle_rows "
                           "%llu, vocab %llu then; %lld, %zu, %lld, %d now)",
                           c->data->files[0].path, (unsigned long long)v[F_BYTES],
                           (unsigned long long)v[F_CHUNK], (unsigned long long)v[F_SHUF],
                           (unsigned long long)v[F_VOCAB], (long long)c->data->bytes, c->chunk,
                           (long long)c->shuffle_rows, c->vocab);
    rpos p = {(int)v[F_SEG], (int64_t)v[F_OFF], (int)v[F_DOC], (int64_t)v[F_TPOS],
              (int32_t)(int64_t)v[F_CARRY]};
    int rc = seek(c, p, err);
    if (rc != PRIMAL_OK)
        return rc;
    c->epoch = v[F_EPOCH];
    c->wnum = v[F_WNUM];
    c->wnext = v[F_WNEXT];
    c->ended = (int)v[F_ENDED];
    c->wstart = p;
    c->wrows = c->wused = 0;
    c->epoch_rows = c->wnext > 0;
    int64_t wrows = (int64_t)v[F_WROWS], wused = (int64_t)v[F_WUSED];
    if (c->split != PRIMAL_SPLIT_TRAIN || wrows == 0)
        return PRIMAL_OK;
    if (v[F_WLEN] < 1 || v[F_WLEN] > INT32_MAX - 1 || wused > wrows || wrows > c->wcap)
        return primal_errf(err, PRIMAL_ECONFIG, "text loader: saved window is inconsistent");
    if ((rc = fill_window(c, (int)v[F_WLEN], err)) != PRIMAL_OK)
        return rc;
    if (c->wrows < wrows)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: the saved window has %lld rows, the data "
                           "now gives %lld: the data changed", c->data->files[0].path,
                           (long long)wrows, (long long)c->wrows);
    c->wrows = wrows;
    c->wused = wused;
    return PRIMAL_OK;
}

static const primal_key text_keys[] = {
    {"path", PRIMAL_KEY_STRING, NULL, "text files or globs, comma-separated", NULL},
    {"val_fraction", PRIMAL_KEY_FLOAT, "0.02", "last fraction of the bytes held out for "
     "validation", "[0,0.5)"},
    {"val_path", PRIMAL_KEY_STRING, "", "separate validation files (val_fraction then 0)", NULL},
    {"doc_sep", PRIMAL_KEY_STRING, "", "document separator inside a file, C escapes; empty: "
     "one document per file", NULL},
    {"shuffle_rows", PRIMAL_KEY_INT, "1024", "rows per shuffle window; 0 = sequential",
     "[0,1048576]"},
    {"chunk_bytes", PRIMAL_KEY_INT, "4194304", "bytes read and tokenised at a time",
     "[64,1073741824]"},
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
        .description = "UTF-8 text files, tokenised while streaming, packed, window-shuffled",
        .keys = text_keys,
        .vtable = &text_vt,
    };
    return &d;
}
