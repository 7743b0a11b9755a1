/* sft_jsonl: supervised fine-tuning examples, one JSON object per line, rendered with the
 * ChatML template and packed back to back; only the answers count in the loss.
 * SPEC.md, "Data loaders".
 *
 * A line is {"prompt": str, "response": str} (a user then an assistant message) or
 * {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}; other members are
 * ignored, blank lines skipped.  Each message becomes "<|im_start|>ROLE\nCONTENT<|im_end|>\n";
 * an example ends with the tokenizer's eot (the id of "\n" for "bytes", which has none).  The
 * pieces are encoded separately: "<|im_start|>ROLE\n", CONTENT, "<|im_end|>", "\n", so that the
 * loss mask falls exactly on the assistant's content and its closing <|im_end|> (mask 1), and
 * nothing else (mask 0).  With the bytes tokenizer the markers are plain text, masked the same
 * way; with a BPE tokenizer encode() maps them to their added-token ids.  Rows overlap by one
 * token; an example longer than a row continues into the next.
 *
 * Keys ([data]; the core handles plugin and tokenizer itself):
 *   path          STRING, required  one or more paths or globs, comma-separated; relative ones
 *                                   resolve against the experiment file's directory
 *   val_fraction  FLOAT  "0.02"     [0,0.5): the last fraction of the bytes of the
 *                                   concatenated files (moved forward to a line start) is the
 *                                   val split
 *   val_path      STRING ""         a separate validation file set; val_fraction must then be 0
 *                                   or unset; these three keys are read by
 *                                   primal_data_split_new (primal/datafiles.h)
 *   on_error      ENUM   "stop"     stop|skip: a malformed line (bad JSON, missing field, wrong
 *                                   type, unknown role) stops the open with PRIMAL_ECONFIG and
 *                                   "PATH:LINE: what", or is skipped and counted in
 *                                   sft_ctx.skipped (not an output; a split whose every line is
 *                                   malformed is still an error)
 *   shuffle       BOOL   "true"     train: visit the examples in a new order each epoch, drawn
 *                                   from the counter-based RNG (seed, epoch)
 *
 * Every line is parsed once at open (so errors surface before training) and its offset kept;
 * next() reads, parses and tokenises the examples it needs.  Position: epoch, example number in
 * the epoch's order, token within it, and the carried token.  Train never ends (a partial last
 * row is dropped, a new epoch begins); val is read in file order, finite, its last partial row
 * and unfilled rows padded with mask 0.
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
#include <unistd.h>

#include <jansson.h>

#include <primal/datafiles.h>
#include <primal/plugin.h>

#include "loader_util.h"

#define RNG_TAG 0xDA7Au  /* loaders' tensor-id slot in primal_rng_stream: no model tensor */
#define STATE_MAGIC 0x31667370u /* "psf1" */

/* ------------------------------------------------------------------------------------------ */
/* Examples                                                                                   */

typedef struct example {
    int file;
    int line;      /* 1-based, for messages */
    int64_t off;   /* byte offset of the line */
    int64_t len;   /* without its newline */
} example;

typedef struct sft_ctx {
    primal_tokenizer *tok;
    int32_t eot, vocab;
    int split, rank, nranks, shuffle;
    uint64_t seed;
    primal_data_split *data; /* the split's files and byte ranges */
    example *ex;
    int64_t nex;
    int64_t skipped;    /* malformed lines skipped with on_error = skip */

    int fd, fd_file;
    char *line;
    size_t line_cap;
    uint32_t *order;    /* (nex) this epoch's example order */
    uint64_t epoch;
    int64_t k;          /* position in order of the loaded example */
    primal_ids ids;     /* its tokens */
    uint8_t *tm;        /* (ids.n) 1 where the token is a target that counts */
    size_t tm_cap;
    int64_t t;          /* next token of it */
    int32_t carry;      /* first token of the next row, or -1 */
    uint8_t carry_m;
    int epoch_rows;
    int ended;
    int32_t *row;       /* (seq_len + 1) scratch */
    uint8_t *rowm;
    size_t row_len;
} sft_ctx;

static const char *const roles[] = {"system", "user", "assistant"};

/* Fills why and returns -1 if o is not an example this loader reads. */
static int check_example(const json_t *o, char *why, size_t n)
{
    if (!json_is_object(o)) {
        snprintf(why, n, "not a JSON object");
        return -1;
    }
    const json_t *msgs = json_object_get(o, "messages");
    const json_t *prompt = json_object_get(o, "prompt");
    const json_t *resp = json_object_get(o, "response");
    if (msgs == NULL) {
        if (prompt == NULL)
            snprintf(why, n, "missing \"prompt\" (or \"messages\")");
        else if (!json_is_string(prompt))
            snprintf(why, n, "\"prompt\" is not a string");
        else if (resp == NULL)
            snprintf(why, n, "missing \"response\"");
        else if (!json_is_string(resp))
            snprintf(why, n, "\"response\" is not a string");
        else
            return 0;
        return -1;
    }
    if (prompt != NULL || resp != NULL) {
        snprintf(why, n, "has both \"messages\" and \"%s\"", prompt ? "prompt" : "response");
        return -1;
    }
    if (!json_is_array(msgs)) {
        snprintf(why, n, "\"messages\" is not an array");
        return -1;
    }
    if (json_array_size(msgs) == 0) {
        snprintf(why, n, "\"messages\" is empty");
        return -1;
    }
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        const json_t *m = json_array_get(msgs, i);
        const json_t *role = json_object_get(m, "role");
        const json_t *content = json_object_get(m, "content");
        if (!json_is_object(m))
            snprintf(why, n, "messages[%zu] is not an object", i);
        else if (role == NULL)
            snprintf(why, n, "messages[%zu]: missing \"role\"", i);
        else if (!json_is_string(role))
            snprintf(why, n, "messages[%zu]: \"role\" is not a string", i);
        else if (strcmp(json_string_value(role), roles[0]) != 0 &&
                 strcmp(json_string_value(role), roles[1]) != 0 &&
                 strcmp(json_string_value(role), roles[2]) != 0)
            snprintf(why, n, "messages[%zu]: unknown role \"%.64s\" (expected system, user or "
                     "assistant)", i, json_string_value(role));
        else if (content == NULL)
            snprintf(why, n, "messages[%zu]: missing \"content\"", i);
        else if (!json_is_string(content))
            snprintf(why, n, "messages[%zu]: \"content\" is not a string", i);
        else
            continue;
        return -1;
    }
    return 0;
}

/* Parse one line; NULL and why filled if it is malformed. */
static json_t *parse_line(const char *s, size_t len, char *why, size_t n)
{
    json_error_t je;
    json_t *o = json_loadb(s, len, 0, &je);
    if (o == NULL) {
        snprintf(why, n, "invalid JSON: %s (column %d)", je.text, je.column);
        return NULL;
    }
    if (check_example(o, why, n) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

/* Index the lines of every segment, checking each. */
static int index_lines(sft_ctx *c, int skip, primal_err *err)
{
    int64_t cap = 0, bad = 0;
    char first[PRIMAL_ERR_MAX] = "";
    int rc = PRIMAL_OK;
    for (int s = 0; s < c->data->nsegs && rc == PRIMAL_OK; s++) {
        const primal_data_seg *g = &c->data->segs[s];
        const char *path = c->data->files[g->file].path;
        FILE *fp = fopen(path, "rb");
        if (fp == NULL)
            return primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", path, strerror(errno));
        int64_t off = 0;
        int lineno = 0;
        ssize_t got;
        /* from the file's start, so that line numbers are the file's own */
        while (rc == PRIMAL_OK && off < g->end &&
               (got = getline(&c->line, &c->line_cap, fp)) > 0) {
            int64_t at = off;
            off += got;
            lineno++;
            if (at < g->start)
                continue;
            size_t len = (size_t)got;
            if (len > 0 && c->line[len - 1] == '\n')
                len--;
            if (len > 0 && c->line[len - 1] == '\r')
                len--;
            if (is_blank(c->line, len))
                continue;
            char why[PRIMAL_ERR_MAX / 2];
            json_t *o = parse_line(c->line, len, why, sizeof why);
            if (o == NULL) {
                if (!skip) {
                    rc = primal_errf(err, PRIMAL_ECONFIG, "%s:%d: %s", path, lineno, why);
                    break;
                }
                if (bad++ == 0)
                    snprintf(first, sizeof first, "%s:%d: %s", path, lineno, why);
                continue;
            }
            json_decref(o);
            if (c->nex == cap) {
                cap = cap ? 2 * cap : 1024;
                example *e = realloc(c->ex, (size_t)cap * sizeof *e);
                if (e == NULL) {
                    rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
                    break;
                }
                c->ex = e;
            }
            c->ex[c->nex++] = (example){g->file, lineno, at, (int64_t)len};
        }
        if (rc == PRIMAL_OK && ferror(fp))
            rc = primal_errf(err, PRIMAL_EIO, "%s: read error after line %d", path, lineno);
        fclose(fp);
    }
    if (rc != PRIMAL_OK)
        return rc;
    c->skipped = bad;
    if (c->nex == 0 && bad > 0)
        return primal_errf(err, PRIMAL_ECONFIG, "all %lld lines of the %s split are malformed; "
                           "the first: %s", (long long)bad,
                           c->split == PRIMAL_SPLIT_TRAIN ? "train" : "validation", first);
    if (c->nex == 0)
        return c->split == PRIMAL_SPLIT_VAL
                   ? primal_errf(err, PRIMAL_EOF, "%s: the validation split has no examples",
                                 c->data->files[0].path)
                   : primal_errf(err, PRIMAL_ECONFIG, "%s: the train split has no examples",
                                 c->data->files[0].path);
    return PRIMAL_OK;
}

/* Encode text onto the loaded example's tokens with mask m. */
static int emit(sft_ctx *c, const char *s, size_t n, uint8_t m, primal_err *err)
{
    size_t before = c->ids.n;
    int rc = primal_tokenizer_encode(c->tok, s, n, &c->ids, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (c->ids.n > c->tm_cap) {
        size_t cap = c->ids.n * 2;
        uint8_t *tm = realloc(c->tm, cap);
        if (tm == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        c->tm = tm;
        c->tm_cap = cap;
    }
    memset(c->tm + before, m, c->ids.n - before);
    return PRIMAL_OK;
}

static int push_eot(sft_ctx *c, primal_err *err)
{
    int rc = primal_ids_push(&c->ids, c->eot, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (c->ids.n > c->tm_cap) {
        uint8_t *tm = realloc(c->tm, c->ids.n * 2);
        if (tm == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        c->tm = tm;
        c->tm_cap = c->ids.n * 2;
    }
    c->tm[c->ids.n - 1] = 0;
    return PRIMAL_OK;
}

static int emit_message(sft_ctx *c, const char *role, const char *content, size_t n,
                        primal_err *err)
{
    char head[64];
    int hn = snprintf(head, sizeof head, "<|im_start|>%s\n", role);
    uint8_t m = strcmp(role, "assistant") == 0;
    int rc = emit(c, head, (size_t)hn, 0, err);
    if (rc == PRIMAL_OK)
        rc = emit(c, content, n, m, err);
    if (rc == PRIMAL_OK)
        rc = emit(c, "<|im_end|>", 10, m, err);
    if (rc == PRIMAL_OK)
        rc = emit(c, "\n", 1, 0, err);
    return rc;
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

/* Read, parse and tokenise example order[k]. */
static int load_example(sft_ctx *c, int64_t k, primal_err *err)
{
    const example *e = &c->ex[c->order[k]];
    const char *path = c->data->files[e->file].path;
    if (c->fd_file != e->file) {
        if (c->fd >= 0)
            close(c->fd);
        c->fd_file = -1;
        c->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (c->fd < 0)
            return primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", path, strerror(errno));
        c->fd_file = e->file;
    }
    if ((size_t)e->len + 1 > c->line_cap) {
        char *l = realloc(c->line, (size_t)e->len + 1);
        if (l == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        c->line = l;
        c->line_cap = (size_t)e->len + 1;
    }
    int rc = read_at(c->fd, path, c->line, (size_t)e->len, e->off, err);
    if (rc != PRIMAL_OK)
        return rc;
    char why[PRIMAL_ERR_MAX / 2];
    json_t *o = parse_line(c->line, (size_t)e->len, why, sizeof why);
    if (o == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s:%d: changed since it was opened: %s", path,
                           e->line, why);
    c->ids.n = 0;
    const json_t *msgs = json_object_get(o, "messages");
    if (msgs != NULL) {
        for (size_t i = 0; i < json_array_size(msgs) && rc == PRIMAL_OK; i++) {
            const json_t *m = json_array_get(msgs, i);
            const json_t *content = json_object_get(m, "content");
            rc = emit_message(c, json_string_value(json_object_get(m, "role")),
                              json_string_value(content), json_string_length(content), err);
        }
    } else {
        const json_t *p = json_object_get(o, "prompt"), *r = json_object_get(o, "response");
        rc = emit_message(c, "user", json_string_value(p), json_string_length(p), err);
        if (rc == PRIMAL_OK)
            rc = emit_message(c, "assistant", json_string_value(r), json_string_length(r), err);
    }
    json_decref(o);
    if (rc == PRIMAL_OK)
        rc = push_eot(c, err);
    if (rc != PRIMAL_OK)
        return primal_err_prefix(err, "%s:%d", path, e->line);
    c->k = k;
    c->t = 0;
    return PRIMAL_OK;
}

static void draw_order(sft_ctx *c)
{
    for (int64_t i = 0; i < c->nex; i++)
        c->order[i] = (uint32_t)i;
    if (!c->shuffle)
        return;
    uint64_t stream = primal_rng_stream(RNG_TAG, c->epoch, 2);
    for (int64_t i = c->nex - 1; i > 0; i--) {
        uint64_t j = primal_rng_u64(c->seed, stream, (uint64_t)i) % (uint64_t)(i + 1);
        uint32_t t = c->order[i];
        c->order[i] = c->order[j];
        c->order[j] = t;
    }
}

/* 1 and the next token with its mask bit, 0 at the end of the epoch, or an error. */
static int next_token(sft_ctx *c, int32_t *t, uint8_t *m, primal_err *err)
{
    while (c->t >= (int64_t)c->ids.n) {
        if (c->k + 1 >= c->nex)
            return 0;
        int rc = load_example(c, c->k + 1, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    *t = c->ids.v[c->t];
    *m = c->tm[c->t];
    c->t++;
    return 1;
}

/* Up to L + 1 tokens into row and their mask bits into rm (*n of them; fewer only at the end of
 * the epoch). */
static int take_row(sft_ctx *c, int L, int32_t *row, uint8_t *rm, int *n, primal_err *err)
{
    int k = 0;
    if (c->carry >= 0) {
        row[0] = c->carry;
        rm[0] = c->carry_m;
        k = 1;
    }
    while (k < L + 1) {
        int rc = next_token(c, &row[k], &rm[k], err);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        k++;
    }
    c->carry = k == L + 1 ? row[L] : -1;
    c->carry_m = k == L + 1 ? rm[L] : 0;
    *n = k;
    return PRIMAL_OK;
}

static int start_epoch(sft_ctx *c, primal_err *err)
{
    draw_order(c);
    c->carry = -1;
    c->carry_m = 0;
    c->epoch_rows = 0;
    return load_example(c, 0, err);
}

/* ------------------------------------------------------------------------------------------ */
/* The vtable                                                                                 */

static void sft_close(void *ctx)
{
    sft_ctx *c = ctx;
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    primal_data_split_free(c->data);
    free(c->ex);
    free(c->line);
    free(c->order);
    free(c->ids.v);
    free(c->tm);
    free(c->row);
    free(c->rowm);
    free(c);
}

static int sft_open(const primal_config *cfg, const primal_loader_info *info, void **ctx,
                    primal_err *err)
{
    *ctx = NULL;
    if (info->nranks < 1 || info->rank < 0 || info->rank >= info->nranks)
        return primal_errf(err, PRIMAL_ECONFIG, "sft_jsonl loader: rank %d of %d", info->rank,
                           info->nranks);
    sft_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    c->fd = c->fd_file = -1;
    c->tok = info->tok;
    c->split = info->split;
    c->seed = info->seed;
    c->rank = info->rank;
    c->nranks = info->nranks;
    c->vocab = primal_tokenizer_vocab(info->tok);
    c->shuffle = info->split == PRIMAL_SPLIT_TRAIN && primal_cfg_bool(cfg, "shuffle");
    c->carry = -1;
    int rc = primal_tokenizer_separator(c->tok, &c->eot, err);
    if (rc == PRIMAL_OK)
        rc = primal_data_split_new(cfg, info->split, PRIMAL_DATA_LINES, &c->data, err);
    if (rc != PRIMAL_OK) {
        free(c);
        return rc;
    }
    const char *on_error = primal_cfg_str(cfg, "on_error");
    rc = index_lines(c, on_error != NULL && strcmp(on_error, "skip") == 0, err);
    if (rc == PRIMAL_OK && c->nex > (int64_t)UINT32_MAX)
        rc = primal_errf(err, PRIMAL_ECONFIG, "%s: %lld examples, more than 2^32",
                         c->data->files[0].path, (long long)c->nex);
    if (rc == PRIMAL_OK && (c->order = malloc((size_t)c->nex * sizeof *c->order)) == NULL)
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    if (rc == PRIMAL_OK)
        rc = start_epoch(c, err);
    if (rc != PRIMAL_OK) {
        sft_close(c);
        return rc;
    }
    *ctx = c;
    return PRIMAL_OK;
}

static int sft_next(void *ctx, primal_batch *b, primal_err *err)
{
    sft_ctx *c = ctx;
    if (b->rows < 1 || b->seq_len < 1 || b->tokens == NULL || b->mask == NULL)
        return primal_errf(err, PRIMAL_ERROR, "sft_jsonl loader: batch of %d rows x seq_len %d",
                           b->rows, b->seq_len);
    int L = b->seq_len;
    size_t W = (size_t)L + 1;
    if (c->row_len < W) {
        int32_t *r = realloc(c->row, W * sizeof *r);
        if (r != NULL)
            c->row = r;
        uint8_t *m = realloc(c->rowm, W);
        if (m != NULL)
            c->rowm = m;
        if (r == NULL || m == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        c->row_len = W;
    }
    int total = b->rows * c->nranks, rc;
    for (int j = 0; j < total; j++) {
        int n = 0;
        if (c->split == PRIMAL_SPLIT_TRAIN) {
            for (;;) {
                if ((rc = take_row(c, L, c->row, c->rowm, &n, err)) != PRIMAL_OK)
                    return rc;
                if (n == L + 1)
                    break;
                if (!c->epoch_rows)
                    return primal_errf(err, PRIMAL_ECONFIG, "%s: the train split's %lld "
                                       "examples hold fewer than seq_len + 1 = %d tokens",
                                       c->data->files[0].path, (long long)c->nex, L + 1);
                c->epoch++;
                if ((rc = start_epoch(c, err)) != PRIMAL_OK)
                    return rc;
            }
            c->epoch_rows = 1;
        } else {
            if (!c->ended && (rc = take_row(c, L, c->row, c->rowm, &n, err)) != PRIMAL_OK)
                return rc;
            if (n < L + 1)
                c->ended = 1;
            if (n < 2)
                n = 0;
            if (j == 0 && n == 0)
                return primal_errf(err, PRIMAL_EOF, "validation split exhausted");
        }
        if (j / b->rows != c->rank)
            continue;
        size_t i = (size_t)(j - c->rank * b->rows);
        int32_t *dst = b->tokens + i * W;
        uint8_t *m = b->mask + i * (size_t)L;
        for (int k = 0; k < L + 1; k++)
            dst[k] = k < n ? c->row[k] : c->eot;
        /* mask[k] says whether target k + 1 counts */
        for (int k = 0; k < L; k++)
            m[k] = k + 1 < n ? c->rowm[k + 1] : 0;
    }
    return PRIMAL_OK;
}

static int sft_rewind(void *ctx, primal_err *err)
{
    sft_ctx *c = ctx;
    c->epoch = 0;
    c->ended = 0;
    return start_epoch(c, err);
}

enum { F_MAGIC, F_SPLIT, F_NEX, F_BYTES, F_VOCAB, F_SHUF, F_EPOCH, F_K, F_T, F_CARRY, F_CARRYM,
       F_ROWS, F_ENDED, F_N };

static int sft_save(void *ctx, void *buf, size_t cap, size_t *n, primal_err *err)
{
    sft_ctx *c = ctx;
    if (cap < F_N * 8)
        return primal_errf(err, PRIMAL_ERROR, "sft_jsonl loader: state needs %d bytes, got %zu",
                           F_N * 8, cap);
    uint64_t v[F_N] = {
        [F_MAGIC] = STATE_MAGIC, [F_SPLIT] = (uint64_t)c->split, [F_NEX] = (uint64_t)c->nex,
        [F_BYTES] = (uint64_t)c->data->bytes, [F_VOCAB] = (uint64_t)c->vocab,
        [F_SHUF] = (uint64_t)c->shuffle, [F_EPOCH] = c->epoch, [F_K] = (uint64_t)c->k,
        [F_T] = (uint64_t)c->t, [F_CARRY] = (uint64_t)(int64_t)c->carry,
        [F_CARRYM] = c->carry_m, [F_ROWS] = (uint64_t)c->epoch_rows,
        [F_ENDED] = (uint64_t)c->ended,
    };
    for (int i = 0; i < F_N; i++)
        put64((uint8_t *)buf + 8 * i, v[i]);
    *n = F_N * 8;
    return PRIMAL_OK;
}

static int sft_restore(void *ctx, const void *buf, size_t n, primal_err *err)
{
    sft_ctx *c = ctx;
    uint64_t v[F_N];
    if (n != F_N * 8)
        return primal_errf(err, PRIMAL_ECONFIG, "sft_jsonl loader: saved state is %zu bytes, "
                           "expected %d", n, F_N * 8);
    for (int i = 0; i < F_N; i++)
        v[i] = get64((const uint8_t *)buf + 8 * i);
    if (v[F_MAGIC] != STATE_MAGIC || v[F_SPLIT] != (uint64_t)c->split)
        return primal_errf(err, PRIMAL_ECONFIG, "sft_jsonl loader: saved state is not an "
                           "sft_jsonl loader's for this split");
    if (v[F_NEX] != (uint64_t)c->nex || v[F_BYTES] != (uint64_t)c->data->bytes ||
        v[F_VOCAB] != (uint64_t)c->vocab || v[F_SHUF] != (uint64_t)c->shuffle ||
        v[F_K] >= (uint64_t)c->nex)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: the data or [data] keys changed since the "
                           "state was saved (%llu examples in %llu bytes then, %lld in %lld "
                           "now)", c->data->files[0].path, (unsigned long long)v[F_NEX],
                           (unsigned long long)v[F_BYTES], (long long)c->nex,
                           (long long)c->data->bytes);
    c->epoch = v[F_EPOCH];
    draw_order(c);
    int rc = load_example(c, (int64_t)v[F_K], err);
    if (rc != PRIMAL_OK)
        return rc;
    if (v[F_T] > c->ids.n)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: saved position lies past example %lld's "
                           "%zu tokens: the data changed", c->data->files[0].path,
                           (long long)v[F_K], c->ids.n);
    c->t = (int64_t)v[F_T];
    c->carry = (int32_t)(int64_t)v[F_CARRY];
    c->carry_m = (uint8_t)v[F_CARRYM];
    c->epoch_rows = (int)v[F_ROWS];
    c->ended = (int)v[F_ENDED];
    return PRIMAL_OK;
}

static const primal_key sft_keys[] = {
    {"path", PRIMAL_KEY_STRING, NULL, "JSONL files or globs, comma-separated", NULL},
    {"val_fraction", PRIMAL_KEY_FLOAT, "0.02", "last fraction of the bytes held out for "
     "validation", "[0,0.5)"},
    {"val_path", PRIMAL_KEY_STRING, "", "separate validation files (val_fraction then 0)", NULL},
    {"on_error", PRIMAL_KEY_ENUM, "stop", "a malformed line stops the run or is skipped",
     "stop|skip"},
    {"shuffle", PRIMAL_KEY_BOOL, "true", "train: a new example order each epoch", NULL},
    {0},
};

static const primal_loader_vt sft_vt = {
    .size = sizeof(primal_loader_vt),
    .open = sft_open,
    .close = sft_close,
    .next = sft_next,
    .rewind = sft_rewind,
    .save = sft_save,
    .restore = sft_restore,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_LOADER,
        .name = "sft_jsonl",
        .description = "prompt/response or chat JSONL, ChatML, only answers in the loss",
        .keys = sft_keys,
        .vtable = &sft_vt,
    };
    return &d;
}
