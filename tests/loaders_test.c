/* loaders_test.c: the text, tokens and sft_jsonl loader plugins through their vtables.
 *
 * Expected streams are worked by hand from the small files in tests/fixtures/data (with the
 * "bytes" tokenizer a token is a byte, and documents end with '\n'), or come from Hugging Face
 * ids in tests/fixtures/qwen-tokenizer/cases.jsonl for the BPE cases. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "config.h"
#include "mockhost.h"
#include <primal/plugin.h>
#include <primal/tokenizer.h>

#define D PRIMAL_TEST_FIXTURES "/data/"
#define QWEN PRIMAL_TEST_FIXTURES "/qwen-tokenizer/tokenizer.json"
#define TRAIN PRIMAL_SPLIT_TRAIN
#define VAL PRIMAL_SPLIT_VAL

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

typedef struct ldr {
    const primal_loader_vt *vt;
    primal_config *cfg;
    primal_tokenizer *tok;
    void *ctx;
} ldr;

static const primal_plugin *plugin(const char *name)
{
    primal_err err = {0};
    const primal_plugin *p = mockhost_load(name, NULL, &err);
    cr_assert_not_null(p, "%s", err.msg);
    cr_assert_eq(p->kind, PRIMAL_KIND_LOADER);
    cr_assert_str_eq(p->name, name);
    return p;
}

/* Open a loader; returns open()'s code (the handle is usable only on PRIMAL_OK). */
static int lopen(ldr *l, const char *name, const char *tok, int split, uint64_t seed, int rank,
                 int nranks, const char *const *kv, primal_err *err)
{
    memset(l, 0, sizeof *l);
    primal_err_clear(err);
    const primal_plugin *p = plugin(name);
    l->vt = p->vtable;
    int rc = primal_config_from_kv(p, "data", kv, &l->cfg, err);
    cr_assert_eq(rc, PRIMAL_OK, "config: %s", err->msg);
    rc = primal_tokenizer_open(tok, &l->tok, err);
    cr_assert_eq(rc, PRIMAL_OK, "tokenizer: %s", err->msg);
    primal_loader_info info = {l->tok, split, seed, rank, nranks};
    return l->vt->open(l->cfg, &info, &l->ctx, err);
}

static void lopen_ok(ldr *l, const char *name, int split, uint64_t seed, const char *const *kv)
{
    primal_err err;
    int rc = lopen(l, name, "bytes", split, seed, 0, 1, kv, &err);
    cr_assert_eq(rc, PRIMAL_OK, "open: %s", err.msg);
}

static void lclose(ldr *l)
{
    if (l->ctx != NULL)
        l->vt->close(l->ctx);
    primal_config_free(l->cfg);
    primal_tokenizer_close(l->tok);
    memset(l, 0, sizeof *l);
}

#define MAXL 256

typedef struct batch {
    primal_batch b;
    int32_t tokens[16 * (MAXL + 1)];
    uint8_t mask[16 * MAXL];
} batch;

static int next(ldr *l, batch *bt, int rows, int seq_len, primal_err *err)
{
    cr_assert(rows <= 16 && seq_len <= MAXL);
    memset(bt, 0xAB, sizeof *bt);
    bt->b = (primal_batch){rows, seq_len, bt->tokens, bt->mask};
    return l->vt->next(l->ctx, &bt->b, err);
}

static void next_ok(ldr *l, batch *bt, int rows, int seq_len)
{
    primal_err err;
    int rc = next(l, bt, rows, seq_len, &err);
    cr_assert_eq(rc, PRIMAL_OK, "next: %d %s", rc, err.msg);
}

static const int32_t *row(const batch *bt, int i)
{
    return bt->tokens + (size_t)i * (size_t)(bt->b.seq_len + 1);
}

static const uint8_t *rmask(const batch *bt, int i)
{
    return bt->mask + (size_t)i * (size_t)bt->b.seq_len;
}

/* Row i as a string (bytes tokenizer: id = byte). */
static const char *row_str(const batch *bt, int i)
{
    static char s[MAXL + 2];
    const int32_t *t = row(bt, i);
    for (int k = 0; k <= bt->b.seq_len; k++) {
        cr_assert(t[k] >= 0 && t[k] < 256, "token %d of row %d is %d", k, i, t[k]);
        s[k] = (char)t[k];
    }
    s[bt->b.seq_len + 1] = '\0';
    return s;
}

static void assert_mask_all(const batch *bt, int i, int v)
{
    for (int k = 0; k < bt->b.seq_len; k++)
        cr_assert_eq(rmask(bt, i)[k], v, "row %d mask[%d] = %d, expected %d", i, k,
                     rmask(bt, i)[k], v);
}

static int same_batch(const batch *a, const batch *b)
{
    size_t nt = (size_t)a->b.rows * (size_t)(a->b.seq_len + 1);
    size_t nm = (size_t)a->b.rows * (size_t)a->b.seq_len;
    return a->b.rows == b->b.rows && a->b.seq_len == b->b.seq_len &&
           memcmp(a->tokens, b->tokens, nt * sizeof *a->tokens) == 0 &&
           memcmp(a->mask, b->mask, nm) == 0;
}

static int same_row(const batch *a, int i, const batch *b, int j)
{
    int L = a->b.seq_len;
    return L == b->b.seq_len &&
           memcmp(row(a, i), row(b, j), (size_t)(L + 1) * sizeof(int32_t)) == 0 &&
           memcmp(rmask(a, i), rmask(b, j), (size_t)L) == 0;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)len + 1);
    cr_assert_eq(fread(s, 1, (size_t)len, f), (size_t)len);
    s[len] = '\0';
    fclose(f);
    *n = (size_t)len;
    return s;
}

static char tmpdir[64];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/primal-loaders-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

static const char *write_tmp(const char *name, const char *content)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fputs(content, f);
    fclose(f);
    return path;
}

/* ------------------------------------------------------------------------------------------ */
/* Descriptors                                                                                */

static const primal_key *key(const primal_plugin *p, const char *name)
{
    for (const primal_key *k = p->keys; k && k->name; k++)
        if (strcmp(k->name, name) == 0)
            return k;
    return NULL;
}

Test(loaders, declare_path_val_fraction_and_val_path_with_their_defaults)
{
    const char *names[] = {"text", "tokens", "sft_jsonl"};
    for (int i = 0; i < 3; i++) {
        const primal_plugin *p = plugin(names[i]);
        cr_assert_eq(p->abi_version, PRIMAL_ABI_VERSION);
        const primal_key *path = key(p, "path"), *vf = key(p, "val_fraction"),
                         *vp = key(p, "val_path");
        cr_assert(path && vf && vp, "%s", names[i]);
        cr_assert_null(path->def, "%s: path is required", names[i]);
        cr_assert_str_eq(vf->def, "0.02");
        cr_assert_str_eq(vf->range, "[0,0.5)");
        cr_assert_str_eq(vp->def, "");
        const primal_loader_vt *vt = p->vtable;
        cr_assert(vt->open && vt->close && vt->next && vt->rewind && vt->save && vt->restore);
    }
    cr_assert_str_eq(key(plugin("text"), "shuffle_rows")->def, "1");
    cr_assert_str_eq(key(plugin("text"), "chunk_bytes")->def, "65536");
    cr_assert_str_eq(key(plugin("text"), "window_chunks")->def, "128");
    cr_assert_str_eq(key(plugin("tokens"), "shuffle")->def, "true");
    cr_assert_str_eq(key(plugin("text"), "doc_sep")->def, "");
    cr_assert_str_eq(key(plugin("tokens"), "width")->def, "16");
    cr_assert_str_eq(key(plugin("sft_jsonl"), "on_error")->def, "stop");
    cr_assert_str_eq(key(plugin("sft_jsonl"), "on_error")->range, "stop|skip");
}

/* ------------------------------------------------------------------------------------------ */
/* text                                                                                       */

/* hello.txt "hello\n" + world.txt "world\n", each followed by eot '\n':
 * stream "hello\n\nworld\n\n" (14 tokens); rows of 7 overlap by one. */
Test(text, packs_files_back_to_back_with_a_separator_and_starts_a_new_epoch)
{
    const char *kv[] = {"path=" D "hello.txt, " D "world.txt", "val_fraction=0",
                        "shuffle_rows=0", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "text", TRAIN, 0, kv);
    next_ok(&l, &bt, 2, 6);
    cr_assert_str_eq(row_str(&bt, 0), "hello\n\n");
    cr_assert_str_eq(row_str(&bt, 1), "\nworld\n");
    assert_mask_all(&bt, 0, 1);
    assert_mask_all(&bt, 1, 1);
    /* two tokens left: not a row; epoch 2 starts over */
    next_ok(&l, &bt, 2, 6);
    cr_assert_str_eq(row_str(&bt, 0), "hello\n\n");
    cr_assert_str_eq(row_str(&bt, 1), "\nworld\n");
    lclose(&l);
}

Test(text, expands_a_glob_in_sorted_order)
{
    const char *kv[] = {"path=" D "[hw]*.txt", "val_fraction=0", "shuffle_rows=0", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "text", TRAIN, 0, kv);
    next_ok(&l, &bt, 2, 6);
    cr_assert_str_eq(row_str(&bt, 0), "hello\n\n");
    cr_assert_str_eq(row_str(&bt, 1), "\nworld\n");
    lclose(&l);
}

/* docs.txt "one\n\ntwo\n\nthree\n" with doc_sep "\n\n": "one" eot "two" eot "three\n" eot. */
Test(text, replaces_the_document_separator_by_the_separator_token)
{
    const char *kv[] = {"path=" D "docs.txt", "val_fraction=0", "shuffle_rows=0",
                        "doc_sep=\\n\\n", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "text", TRAIN, 0, kv);
    next_ok(&l, &bt, 1, 14);
    cr_assert_str_eq(row_str(&bt, 0), "one\ntwo\nthree\n\n");
    lclose(&l);
}

/* The reference: the file with each "\n\n" (leftmost, non-overlapping) replaced by one '\n',
 * plus the eot of the last document. */
Test(text, gives_the_same_stream_whatever_the_chunk_size)
{
    size_t n;
    char *file = slurp(D "genesis.txt", &n);
    char *want = malloc(n + 2);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        want[m++] = file[i];
        if (file[i] == '\n' && i + 1 < n && file[i + 1] == '\n')
            i++;
    }
    want[m++] = '\n';
    const char *sizes[] = {"chunk_bytes=64", "chunk_bytes=100", "chunk_bytes=4194304"};
    for (int s = 0; s < 3; s++) {
        const char *kv[] = {"path=" D "genesis.txt", "val_fraction=0", "shuffle_rows=0",
                            "doc_sep=\\n\\n", sizes[s], NULL};
        ldr l;
        batch bt;
        lopen_ok(&l, "text", TRAIN, 0, kv);
        int L = 100;
        size_t rows = (m - 1) / (size_t)L;
        for (size_t r = 0; r < rows; r += 8) {
            int k = rows - r < 8 ? (int)(rows - r) : 8;
            next_ok(&l, &bt, k, L);
            for (int i = 0; i < k; i++)
                cr_assert(memcmp(row_str(&bt, i), want + (r + (size_t)i) * (size_t)L,
                                 (size_t)L + 1) == 0,
                          "%s: row %zu differs", sizes[s], r + (size_t)i);
        }
        next_ok(&l, &bt, 1, L); /* the rest is too short: the next epoch begins */
        cr_assert(memcmp(row_str(&bt, 0), want, (size_t)L + 1) == 0);
        lclose(&l);
    }
    free(want);
    free(file);
}

/* Paragraphs of 50..130 letters without spaces between "\n\n": with 64-byte chunks some chunk
 * ends between the two newlines, where a cut would split the separator. */
Test(text, never_splits_a_separator_between_chunks, .init = make_tmpdir, .fini = remove_tmpdir)
{
    static char file[40000], want[40000];
    size_t n = 0, m = 0;
    for (int p = 0; p < 200; p++) {
        int len = 50 + (p * 37) % 81;
        for (int i = 0; i < len; i++)
            file[n++] = want[m++] = (char)('a' + p % 26);
        file[n++] = '\n';
        file[n++] = '\n';
        want[m++] = '\n';
    }
    file[n] = '\0';
    char pathkv[300];
    snprintf(pathkv, sizeof pathkv, "path=%s", write_tmp("paras.txt", file));
    const char *kv[] = {pathkv, "val_fraction=0", "shuffle_rows=0", "doc_sep=\\n\\n",
                        "chunk_bytes=64", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "text", TRAIN, 0, kv);
    int L = 250;
    for (size_t r = 0; r < (m - 1) / (size_t)L; r++) {
        next_ok(&l, &bt, 1, L);
        cr_assert(memcmp(row_str(&bt, 0), want + r * (size_t)L, (size_t)L + 1) == 0,
                  "row %zu differs", r);
    }
    lclose(&l);
}

/* With BPE, 64-byte chunks must give the ids of each whole document (cut before a space that
 * precedes a word, or after a newline). */
Test(text, gives_the_bpe_ids_of_whole_documents_whatever_the_chunk_size)
{
    primal_tokenizer *tok;
    primal_err err;
    cr_assert_eq(primal_tokenizer_open(QWEN, &tok, &err), PRIMAL_OK, "%s", err.msg);
    size_t n;
    char *file = slurp(D "genesis.txt", &n);
    primal_ids want = {0};
    for (char *doc = file; *doc;) { /* documents end at "\n\n" or the end of the file */
        char *end = strstr(doc, "\n\n");
        size_t len = end ? (size_t)(end - doc) : strlen(doc);
        cr_assert_eq(primal_tokenizer_encode(tok, doc, len, &want, &err), PRIMAL_OK);
        cr_assert_eq(primal_ids_push(&want, primal_tokenizer_eot(tok), &err), PRIMAL_OK);
        doc += len + (end ? 2 : 0);
    }
    const char *kv[] = {"path=" D "genesis.txt", "val_fraction=0", "shuffle_rows=0",
                        "doc_sep=\\n\\n", "chunk_bytes=64", NULL};
    ldr l;
    batch bt;
    cr_assert_eq(lopen(&l, "text", QWEN, TRAIN, 0, 0, 1, kv, &err), PRIMAL_OK, "%s", err.msg);
    int L = 200;
    for (size_t r = 0; r < (want.n - 1) / (size_t)L; r++) {
        next_ok(&l, &bt, 1, L);
        for (int k = 0; k <= L; k++)
            cr_assert_eq(row(&bt, 0)[k], want.v[r * (size_t)L + (size_t)k], "row %zu token %d",
                         r, k);
    }
    lclose(&l);
    free(want.v);
    free(file);
    primal_tokenizer_close(tok);
}

/* 200 x "é" (400 bytes, no whitespace): chunks must end on a character boundary. */
Test(text, cuts_a_chunk_without_whitespace_at_a_character_boundary)
{
    const char *kv[] = {"path=" D "utf8.txt", "val_fraction=0", "shuffle_rows=0",
                        "chunk_bytes=65", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "text", TRAIN, 0, kv);
    next_ok(&l, &bt, 1, 100);
    next_ok(&l, &bt, 4, 75);
    for (int i = 0; i < 4; i++)
        for (int k = 0; k <= 75; k++) {
            int at = 100 + i * 75 + k; /* 400 bytes of C3 A9, then eot */
            cr_assert_eq(row(&bt, i)[k], at == 400 ? '\n' : at % 2 == 0 ? 0xC3 : 0xA9);
        }
    lclose(&l);
}

/* lines.txt: "line0\n" .. "line9\n", 60 bytes.  val_fraction 0.25 puts the cut at byte 45,
 * inside "line7\n" (42..47), so it moves to 48; 0.2 puts it at 48 exactly.  Either way val is
 * "line8\nline9\n" + eot and train is "line0\n".."line7\n" + eot. */
Test(text, splits_off_the_last_fraction_at_a_line_start)
{
    const char *fr[] = {"val_fraction=0.25", "val_fraction=0.2"};
    for (int f = 0; f < 2; f++) {
        const char *kv[] = {"path=" D "lines.txt", fr[f], "shuffle_rows=0", NULL};
        ldr l;
        batch bt;
        primal_err err;
        lopen_ok(&l, "text", VAL, 0, kv);
        for (int pass = 0; pass < 2; pass++) {
            next_ok(&l, &bt, 1, 8);
            cr_assert_str_eq(row_str(&bt, 0), "line8\nlin");
            assert_mask_all(&bt, 0, 1);
            next_ok(&l, &bt, 2, 8);
            /* "ne9\n" + eot: 4 targets, padded */
            cr_assert(memcmp(row_str(&bt, 0), "ne9\n\n", 5) == 0);
            const uint8_t want[8] = {1, 1, 1, 1, 0, 0, 0, 0};
            cr_assert(memcmp(rmask(&bt, 0), want, 8) == 0);
            assert_mask_all(&bt, 1, 0);
            cr_assert_eq(next(&l, &bt, 1, 8, &err), PRIMAL_EOF);
            cr_assert_eq(next(&l, &bt, 1, 8, &err), PRIMAL_EOF);
            cr_assert_eq(l.vt->rewind(l.ctx, &err), PRIMAL_OK, "%s", err.msg);
        }
        lclose(&l);

        lopen_ok(&l, "text", TRAIN, 0, kv);
        for (int epoch = 0; epoch < 2; epoch++) {
            next_ok(&l, &bt, 1, 48);
            cr_assert_str_eq(row_str(&bt, 0),
                             "line0\nline1\nline2\nline3\nline4\nline5\nline6\nline7\n\n");
        }
        lclose(&l);
    }
}

Test(text, reads_a_separate_val_path_whole)
{
    const char *kv[] = {"path=" D "lines.txt", "val_path=" D "hello.txt", NULL};
    ldr l;
    batch bt;
    primal_err err;
    lopen_ok(&l, "text", VAL, 0, kv);
    next_ok(&l, &bt, 1, 6);
    cr_assert_str_eq(row_str(&bt, 0), "hello\n\n");
    cr_assert_eq(next(&l, &bt, 1, 6, &err), PRIMAL_EOF);
    lclose(&l);
    lopen_ok(&l, "text", TRAIN, 0, kv); /* and train is all of path */
    next_ok(&l, &bt, 1, 60);
    cr_assert(memcmp(row_str(&bt, 0), "line0\n", 6) == 0);
    cr_assert(memcmp(row_str(&bt, 0) + 54, "line9\n\n", 7) == 0);
    lclose(&l);
}

Test(text, refuses_val_fraction_together_with_val_path)
{
    const char *kv[] = {"path=" D "lines.txt", "val_path=" D "hello.txt", "val_fraction=0.1",
                        NULL};
    ldr l;
    primal_err err;
    cr_assert_eq(lopen(&l, "text", "bytes", TRAIN, 0, 0, 1, kv, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "val_fraction") && strstr(err.msg, "val_path"), "%s", err.msg);
    lclose(&l);
}

Test(text, has_no_val_split_when_val_fraction_is_0)
{
    const char *kv[] = {"path=" D "lines.txt", "val_fraction=0", NULL};
    ldr l;
    primal_err err;
    cr_assert_eq(lopen(&l, "text", "bytes", VAL, 0, 0, 1, kv, &err), PRIMAL_EOF, "%s", err.msg);
    lclose(&l);
}

Test(text, reports_a_missing_file_by_path)
{
    const char *kv[] = {"path=" D "hello.txt," D "no-such-file.txt", NULL};
    ldr l;
    primal_err err;
    cr_assert_eq(lopen(&l, "text", "bytes", TRAIN, 0, 0, 1, kv, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, D "no-such-file.txt") != NULL, "%s", err.msg);
    lclose(&l);
    const char *kv2[] = {"path=" D "nothing-*.txt", NULL};
    cr_assert_eq(lopen(&l, "text", "bytes", TRAIN, 0, 0, 1, kv2, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, D "nothing-*.txt: no file matches") != NULL, "%s", err.msg);
    lclose(&l);
}

/* from_kv's experiment directory is ".": relative paths resolve against it. */
Test(text, resolves_a_relative_path_against_the_experiment_directory)
{
    cr_assert_eq(chdir(PRIMAL_TEST_FIXTURES), 0);
    const char *kv[] = {"path=data/hello.txt", "val_fraction=0", NULL};
    ldr l;
    batch bt;
    primal_err err;
    lopen_ok(&l, "text", TRAIN, 0, kv);
    next_ok(&l, &bt, 1, 6);
    cr_assert_str_eq(row_str(&bt, 0), "hello\n\n");
    lclose(&l);
    const char *kv2[] = {"path=data/absent.txt", NULL};
    cr_assert_eq(lopen(&l, "text", "bytes", TRAIN, 0, 0, 1, kv2, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "./data/absent.txt: cannot open") != NULL, "%s", err.msg);
    lclose(&l);
}

Test(text, refuses_a_train_split_shorter_than_a_row)
{
    const char *kv[] = {"path=" D "hello.txt", "val_fraction=0", NULL};
    ldr l;
    batch bt;
    primal_err err;
    lopen_ok(&l, "text", TRAIN, 0, kv);
    cr_assert_eq(next(&l, &bt, 1, 7, &err), PRIMAL_ECONFIG); /* 7 tokens, a row needs 8 */
    cr_assert(strstr(err.msg, "hello.txt") && strstr(err.msg, "8"), "%s", err.msg);
    lclose(&l);
}

/* genesis.txt is one chunk (11132 bytes + eot < 64 KiB), so one window: an epoch's 695 shuffled
 * rows of 16 are the 695 sequential rows in another order, the same for the same seed. */
Test(text, shuffles_the_rows_of_an_epoch_deterministically_per_seed)
{
    const char *shuf[] = {"path=" D "genesis.txt", "val_fraction=0", NULL};
    const char *seq[] = {"path=" D "genesis.txt", "val_fraction=0", "shuffle_rows=0", NULL};
    enum { ROWS = 695, B = 5 };
    ldr a, b, c, s;
    lopen_ok(&a, "text", TRAIN, 7, shuf);
    lopen_ok(&b, "text", TRAIN, 7, shuf);
    lopen_ok(&c, "text", TRAIN, 8, shuf);
    lopen_ok(&s, "text", TRAIN, 7, seq);
    static batch ba[ROWS / B], bb, bc, bs[ROWS / B];
    int differs = 0, moved = 0;
    for (int k = 0; k < ROWS / B; k++) {
        next_ok(&a, &ba[k], B, 16);
        next_ok(&b, &bb, B, 16);
        next_ok(&c, &bc, B, 16);
        next_ok(&s, &bs[k], B, 16);
        cr_assert(same_batch(&ba[k], &bb), "seed 7 twice: batch %d differs", k);
        differs |= !same_batch(&ba[k], &bc);
        moved |= !same_batch(&ba[k], &bs[k]);
    }
    cr_assert(differs, "seeds 7 and 8 gave the same batches");
    cr_assert(moved, "the default gave the sequential order");
    static int used[ROWS];
    for (int i = 0; i < ROWS; i++) {
        int found = 0;
        for (int j = 0; j < ROWS && !found; j++)
            if (!used[j] && same_row(&ba[i / B], i % B, &bs[j / B], j % B))
                used[j] = found = 1;
        cr_assert(found, "shuffled row %d is not one of the epoch's rows", i);
    }
    lclose(&a);
    lclose(&b);
    lclose(&c);
    lclose(&s);
}

/* Save after k batches; a fresh loader restored there, and the same loader rewound there (as
 * the prefetch queue does on a seq_len change), give the following batches.  lines.txt's train
 * split is 49 tokens: 12 rows of 4 per epoch in one window, so the save points cover the
 * window's middle and the epochs' ends (windows of many chunks: see
 * resumes_mid_window_and_across_windows_bit_identically). */
Test(text, restores_the_exact_position)
{
    const char *kv[] = {"path=" D "lines.txt", "val_fraction=0.2", "shuffle_rows=5", NULL};
    for (int k = 0; k < 12; k++) {
        ldr a, b;
        batch x, y, want[5];
        primal_err err;
        lopen_ok(&a, "text", TRAIN, 3, kv);
        for (int i = 0; i < k; i++)
            next_ok(&a, &x, 3, 4);
        uint8_t st[PRIMAL_LOADER_STATE_MAX];
        size_t n = 0;
        cr_assert_eq(a.vt->save(a.ctx, st, sizeof st, &n, &err), PRIMAL_OK, "%s", err.msg);
        cr_assert(n > 0 && n <= PRIMAL_LOADER_STATE_MAX);
        for (int i = 0; i < 5; i++)
            next_ok(&a, &want[i], 3, 4);
        lopen_ok(&b, "text", TRAIN, 3, kv);
        cr_assert_eq(b.vt->restore(b.ctx, st, n, &err), PRIMAL_OK, "%s", err.msg);
        cr_assert_eq(a.vt->restore(a.ctx, st, n, &err), PRIMAL_OK, "%s", err.msg);
        for (int i = 0; i < 5; i++) {
            next_ok(&b, &x, 3, 4);
            next_ok(&a, &y, 3, 4);
            cr_assert(same_batch(&x, &want[i]), "saved after %d: batch %d differs", k, i);
            cr_assert(same_batch(&y, &want[i]), "rewound after %d: batch %d differs", k, i);
        }
        lclose(&a);
        lclose(&b);
    }
}

Test(text, restores_the_val_position)
{
    const char *kv[] = {"path=" D "genesis.txt", "val_fraction=0.3", NULL};
    ldr a, b;
    batch x, y;
    primal_err err;
    lopen_ok(&a, "text", VAL, 0, kv);
    lopen_ok(&b, "text", VAL, 0, kv);
    next_ok(&a, &x, 4, 32);
    uint8_t st[PRIMAL_LOADER_STATE_MAX];
    size_t n;
    cr_assert_eq(a.vt->save(a.ctx, st, sizeof st, &n, &err), PRIMAL_OK);
    cr_assert_eq(b.vt->restore(b.ctx, st, n, &err), PRIMAL_OK, "%s", err.msg);
    int rca, rcb;
    do {
        rca = next(&a, &x, 4, 32, &err);
        rcb = next(&b, &y, 4, 32, &err);
        cr_assert_eq(rca, rcb);
        cr_assert(rca != PRIMAL_OK || same_batch(&x, &y));
    } while (rca == PRIMAL_OK);
    cr_assert_eq(rca, PRIMAL_EOF);
    lclose(&a);
    lclose(&b);
}

Test(text, refuses_a_state_saved_on_other_data)
{
    const char *k1[] = {"path=" D "lines.txt", "val_fraction=0", NULL};
    const char *k2[] = {"path=" D "genesis.txt", "val_fraction=0", NULL};
    ldr a, b;
    primal_err err;
    uint8_t st[PRIMAL_LOADER_STATE_MAX];
    size_t n;
    lopen_ok(&a, "text", TRAIN, 0, k1);
    lopen_ok(&b, "text", TRAIN, 0, k2);
    cr_assert_eq(a.vt->save(a.ctx, st, sizeof st, &n, &err), PRIMAL_OK);
    cr_assert_eq(b.vt->restore(b.ctx, st, n, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "changed") != NULL, "%s", err.msg);
    lclose(&a);
    lclose(&b);
}

/* Sequential: after a row of 8 ("line0\nlin"), a row of 4 starts at its last token. */
Test(text, continues_the_stream_when_seq_len_changes)
{
    const char *kv[] = {"path=" D "lines.txt", "val_fraction=0", "shuffle_rows=0", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "text", TRAIN, 0, kv);
    next_ok(&l, &bt, 1, 8);
    cr_assert_str_eq(row_str(&bt, 0), "line0\nlin");
    next_ok(&l, &bt, 2, 4);
    cr_assert_str_eq(row_str(&bt, 0), "ne1\nl");
    cr_assert_str_eq(row_str(&bt, 1), "line2");
    assert_mask_all(&bt, 0, 1);
    next_ok(&l, &bt, 1, 12);
    cr_assert_str_eq(row_str(&bt, 0), "2\nline3\nline4");
    lclose(&l);
}

/* Shuffled: a seq_len change drops the rest of the window; rows then have the new length, are
 * pieces of the text, and a save/restore across the change reproduces them. */
Test(text, shuffled_rows_take_the_new_seq_len)
{
    size_t n;
    char *file = slurp(D "genesis.txt", &n);
    const char *kv[] = {"path=" D "genesis.txt", "val_fraction=0", "shuffle_rows=32", NULL};
    ldr a, b;
    batch x, y;
    primal_err err;
    lopen_ok(&a, "text", TRAIN, 5, kv);
    next_ok(&a, &x, 4, 20);
    uint8_t st[PRIMAL_LOADER_STATE_MAX];
    size_t sn;
    cr_assert_eq(a.vt->save(a.ctx, st, sizeof st, &sn, &err), PRIMAL_OK);
    lopen_ok(&b, "text", TRAIN, 5, kv);
    cr_assert_eq(b.vt->restore(b.ctx, st, sn, &err), PRIMAL_OK, "%s", err.msg);
    for (int k = 0; k < 3; k++) {
        next_ok(&a, &x, 4, 9);
        next_ok(&b, &y, 4, 9);
        cr_assert(same_batch(&x, &y));
        for (int i = 0; i < 4; i++)
            cr_assert(memmem(file, n, row_str(&x, i), 10) != NULL, "row \"%s\" is not in the "
                      "text", row_str(&x, i));
    }
    lclose(&a);
    lclose(&b);
    free(file);
}

/* Two ranks with 4 rows each see, between them, the single rank's batches of 8: rank r gets
 * the r-th block of 4 rows (the single rank's micro-batch slots r, r + 2, ... at batch 4). */
static void check_ranks(const char *name, int split, const char *const *kv, int L, int batches)
{
    ldr one, r0, r1;
    primal_err err;
    lopen_ok(&one, name, split, 11, kv);
    cr_assert_eq(lopen(&r0, name, "bytes", split, 11, 0, 2, kv, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_eq(lopen(&r1, name, "bytes", split, 11, 1, 2, kv, &err), PRIMAL_OK, "%s",
                 err.msg);
    for (int k = 0; k < batches; k++) {
        batch s, a, b;
        int rc = next(&one, &s, 8, L, &err);
        cr_assert_eq(next(&r0, &a, 4, L, &err), rc, "batch %d", k);
        cr_assert_eq(next(&r1, &b, 4, L, &err), rc, "batch %d", k);
        if (rc == PRIMAL_EOF)
            break;
        cr_assert_eq(rc, PRIMAL_OK, "%s", err.msg);
        for (int i = 0; i < 4; i++) {
            cr_assert(same_row(&a, i, &s, i), "batch %d: rank 0 row %d", k, i);
            cr_assert(same_row(&b, i, &s, 4 + i), "batch %d: rank 1 row %d", k, i);
        }
    }
    lclose(&one);
    lclose(&r0);
    lclose(&r1);
}

Test(text, gives_each_rank_its_share_of_the_rows)
{
    const char *kv[] = {"path=" D "genesis.txt", "val_fraction=0.2", "shuffle_rows=16", NULL};
    check_ranks("text", TRAIN, kv, 16, 6);
    check_ranks("text", VAL, kv, 16, 100);
}

/* HF ids of "In the beginning God created the heaven and the earth." then <|endoftext|>. */
Test(text, tokenises_with_a_bpe_tokenizer_and_its_eot)
{
    const char *kv[] = {"path=" D "verse.txt", "val_fraction=0", "shuffle_rows=0", NULL};
    const int32_t want[12] = {641, 279, 7167, 4264, 3465, 279, 22274, 323, 279, 9393, 13,
                              151643};
    ldr l;
    batch bt;
    primal_err err;
    cr_assert_eq(lopen(&l, "text", QWEN, TRAIN, 0, 0, 1, kv, &err), PRIMAL_OK, "%s", err.msg);
    next_ok(&l, &bt, 1, 11);
    for (int k = 0; k < 12; k++)
        cr_assert_eq(row(&bt, 0)[k], want[k], "token %d: %d, expected %d", k, row(&bt, 0)[k],
                     want[k]);
    lclose(&l);
}

/* ------------------------------------------------------------------------------------------ */
/* text: the order over a whole corpus                                                        */

/* A corpus whose every line says where it is: document d (0..4095) is the 100 lines "dddd.ll"
 * (ll = 00..99) joined by "\n", and documents are joined by doc_sep "\n\n", 3,280,894 bytes.
 * With the bytes tokenizer its stream is every line followed by '\n' (documents end with the
 * eot '\n'): 4096 * 800 tokens, line (d, l) at 8 * (100 d + l).  A row of 65 tokens holds at
 * least 7 whole lines, so it tells where it came from. */
enum { NDOC = 4096, NLINE = 100, NTOK = NDOC * NLINE * 8 };

static const char *corpus_kv(void)
{
    static char kv[300];
    char *text = malloc((size_t)NTOK + 2 * NDOC + 16);
    cr_assert_not_null(text);
    size_t n = 0;
    for (int d = 0; d < NDOC; d++)
        for (int l = 0; l < NLINE; l++)
            n += (size_t)sprintf(text + n, "%04d.%02d%s", d, l,
                                 l < NLINE - 1 ? "\n" : d < NDOC - 1 ? "\n\n" : "");
    char path[256];
    snprintf(path, sizeof path, "%s/corpus.txt", tmpdir);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(text, 1, n, f), n);
    fclose(f);
    free(text);
    snprintf(kv, sizeof kv, "path=%s", path);
    return kv;
}

/* The stream's token at position p. */
static int corpus_token(int64_t p)
{
    int64_t line = p / 8;
    char s[9];
    snprintf(s, sizeof s, "%04d.%02d\n", (int)(line / NLINE), (int)(line % NLINE));
    return s[p % 8];
}

/* The lines wholly inside row i (between two '\n' of it), as 100 d + l, into out; checks that
 * each is a well-formed line.  Returns their number. */
static int row_lines(const batch *bt, int i, int *out)
{
    const int32_t *t = row(bt, i);
    int L = bt->b.seq_len, k = 0, n = 0;
    while (k <= L && t[k] != '\n')
        k++;
    for (int e = k + 1; e <= L; e++) {
        if (t[e] != '\n')
            continue;
        char s[16];
        cr_assert_eq(e - k - 1, 7, "row %d: a line of %d bytes", i, e - k - 1);
        for (int j = 0; j < 7; j++)
            s[j] = (char)t[k + 1 + j];
        s[7] = '\0';
        int d, l;
        cr_assert(sscanf(s, "%4d.%2d", &d, &l) == 2 && s[4] == '.' && d < NDOC && l < NLINE,
                  "row %d: line \"%s\"", i, s);
        out[n++] = d * NLINE + l;
        k = e;
    }
    return n;
}

/* The first batches of a fresh loader take their rows from every tenth of the corpus with the
 * default keys; the sequential order (as windows of neighbouring rows did) does not. */
Test(text, draws_the_first_batches_from_every_tenth_of_the_corpus, .init = make_tmpdir,
     .fini = remove_tmpdir)
{
    const char *path = corpus_kv();
    const char *shuf[] = {path, "val_fraction=0", "doc_sep=\\n\\n", NULL};
    const char *seq[] = {path, "val_fraction=0", "doc_sep=\\n\\n", "shuffle_rows=0", NULL};
    for (int mode = 0; mode < 2; mode++) {
        ldr l, o;
        batch bt, bo;
        int tenth[10] = {0}, lines[64], differs = 0;
        lopen_ok(&l, "text", TRAIN, 1, mode == 0 ? shuf : seq);
        lopen_ok(&o, "text", TRAIN, 2, mode == 0 ? shuf : seq);
        for (int k = 0; k < 8; k++) {
            next_ok(&l, &bt, 16, 64);
            next_ok(&o, &bo, 16, 64);
            differs |= !same_batch(&bt, &bo);
            for (int i = 0; i < 16; i++) {
                int n = row_lines(&bt, i, lines);
                cr_assert_geq(n, 7);
                tenth[lines[0] / NLINE * 10 / NDOC] = 1;
            }
        }
        int hit = 0;
        for (int t = 0; t < 10; t++)
            hit += tenth[t];
        if (mode == 0) {
            cr_assert_eq(hit, 10, "the first 128 rows come from %d tenths of the corpus", hit);
            cr_assert(differs, "seeds 1 and 2 gave the same batches");
        } else {
            cr_assert_eq(hit, 1, "sequential: %d tenths", hit);
        }
        lclose(&l);
        lclose(&o);
    }
}

/* With 201 chunks of 16 KiB in windows of 8, an epoch (51,200 rows of 64 tokens but for the
 * tokens after each window's last row) takes no row twice and sees every document, and its
 * first half (about 13 windows) already has rows from every tenth of the corpus: the windows
 * take their chunks from all over it, not in file order. */
Test(text, sees_every_document_once_an_epoch, .init = make_tmpdir, .fini = remove_tmpdir)
{
    const char *kv[] = {corpus_kv(), "val_fraction=0", "doc_sep=\\n\\n", "chunk_bytes=16384",
                        "window_chunks=8", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "text", TRAIN, 3, kv);
    static unsigned char first[NDOC * NLINE], doc[NDOC];
    int lines[64], rows = NTOK / 64 - 100; /* fewer than the epoch's rows */
    int tenth[10] = {0}, hit = 0;
    for (int r = 0; r < rows; r += 16) {
        next_ok(&l, &bt, 16, 64);
        for (int i = 0; i < 16 && r + i < rows; i++) {
            int n = row_lines(&bt, i, lines);
            cr_assert_geq(n, 7);
            cr_assert_eq(first[lines[0]]++, 0, "row %d: a row starting at line %d.%d came "
                         "twice", r + i, lines[0] / NLINE, lines[0] % NLINE);
            for (int j = 0; j < n; j++)
                doc[lines[j] / NLINE] = 1;
            if (r + i < rows / 2)
                tenth[lines[0] / NLINE * 10 / NDOC] = 1;
        }
    }
    for (int t = 0; t < 10; t++)
        hit += tenth[t];
    cr_assert_eq(hit, 10, "the first half of the epoch comes from %d tenths", hit);
    for (int d = 0; d < NDOC; d++)
        cr_assert(doc[d], "document %d not seen in the epoch", d);
    lclose(&l);
}

/* shuffle_rows = 0 gives the stream in file order, then starts over. */
Test(text, keeps_the_file_order_with_shuffle_rows_0, .init = make_tmpdir,
     .fini = remove_tmpdir)
{
    const char *kv[] = {corpus_kv(), "val_fraction=0", "doc_sep=\\n\\n", "shuffle_rows=0",
                        NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "text", TRAIN, 3, kv);
    int64_t rows = (NTOK - 1) / 250;
    for (int64_t r = 0; r <= rows; r += 16) {
        next_ok(&l, &bt, 16, 250);
        for (int i = 0; i < 16; i++) {
            int64_t at = r + i < rows ? (r + i) * 250 : (r + i - rows) * 250; /* epoch 2 */
            for (int k = 0; k <= 250; k++)
                cr_assert_eq(row(&bt, i)[k], corpus_token(at + k), "row %lld token %d",
                             (long long)(r + i), k);
        }
    }
    lclose(&l);
}

/* Windows of 2 chunks of 16 KiB hold about 512 rows of 64, 32 batches of 16: saving after each
 * of 100 batches covers the middles and the ends of three windows.  A loader rewound there
 * after going elsewhere (every save) and a fresh loader restored there (every fifth) give the
 * next 40 batches; so does one that changes seq_len after the restore, as the uninterrupted
 * one does. */
Test(text, resumes_mid_window_and_across_windows_bit_identically, .init = make_tmpdir,
     .fini = remove_tmpdir)
{
    const char *kv[] = {corpus_kv(), "val_fraction=0", "doc_sep=\\n\\n", "chunk_bytes=16384",
                        "window_chunks=2", NULL};
    enum { K = 100, AHEAD = 40 };
    static batch want[K + AHEAD];
    static uint8_t st[K][PRIMAL_LOADER_STATE_MAX];
    size_t sn[K];
    ldr a, b, r;
    batch x;
    primal_err err;
    lopen_ok(&a, "text", TRAIN, 4, kv);
    for (int k = 0; k < K + AHEAD; k++) {
        if (k < K)
            cr_assert_eq(a.vt->save(a.ctx, st[k], sizeof st[k], &sn[k], &err), PRIMAL_OK);
        next_ok(&a, &want[k], 16, 64);
    }
    lopen_ok(&r, "text", TRAIN, 4, kv);
    for (int k = 0; k < K; k++) {
        next_ok(&r, &x, 3, 64); /* somewhere else first */
        cr_assert_eq(r.vt->restore(r.ctx, st[k], sn[k], &err), PRIMAL_OK, "%s", err.msg);
        for (int i = 0; i < AHEAD; i++) {
            next_ok(&r, &x, 16, 64);
            cr_assert(same_batch(&x, &want[k + i]), "rewound after %d: batch %d differs", k,
                      i);
        }
        if (k % 5 != 0)
            continue;
        lopen_ok(&b, "text", TRAIN, 4, kv);
        cr_assert_eq(b.vt->restore(b.ctx, st[k], sn[k], &err), PRIMAL_OK, "%s", err.msg);
        for (int i = 0; i < AHEAD; i++) {
            next_ok(&b, &x, 16, 64);
            cr_assert(same_batch(&x, &want[k + i]), "restored after %d: batch %d differs", k,
                      i);
        }
        lclose(&b);
    }
    lclose(&a);
    /* a seq_len change after a restore drops the rest of the window, as without the restore */
    for (int k = 5; k < K; k += 30) {
        batch y;
        lopen_ok(&a, "text", TRAIN, 4, kv);
        lopen_ok(&b, "text", TRAIN, 4, kv);
        for (int i = 0; i < k; i++)
            next_ok(&a, &x, 16, 64);
        cr_assert_eq(b.vt->restore(b.ctx, st[k], sn[k], &err), PRIMAL_OK, "%s", err.msg);
        for (int i = 0; i < 20; i++) {
            next_ok(&a, &x, 16, 40);
            next_ok(&b, &y, 16, 40);
            cr_assert(same_batch(&x, &y), "seq_len 40 after %d: batch %d differs", k, i);
        }
        lclose(&a);
        lclose(&b);
    }
    lclose(&r);
}

/* Every 8-byte word of a saved state (text.c's F_ enum: 7 words that name the data and keys,
 * then the position) set to a value no field can take is refused: the first 7 as another
 * loader's or other data's (PRIMAL_ECONFIG), the position's as PRIMAL_EIO naming the loader;
 * the refused restores leave the loader as it was. */
static void refuse_edited_states(const char *name, int split, const char *const *kv, int L,
                                 int header_words, int word, const char *field)
{
    ldr a, b;
    batch x, y;
    primal_err err;
    lopen_ok(&a, name, split, 6, kv);
    lopen_ok(&b, name, split, 6, kv);
    next_ok(&a, &x, 2, L);
    uint8_t st[PRIMAL_LOADER_STATE_MAX], ed[PRIMAL_LOADER_STATE_MAX];
    size_t n;
    cr_assert_eq(a.vt->save(a.ctx, st, sizeof st, &n, &err), PRIMAL_OK);
    cr_assert_eq(n % 8, 0);
    const uint64_t bad[2] = {UINT64_C(1) << 62, UINT64_C(1) << 63};
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s loader: saved state: ", name);
    for (size_t w = 0; w < n / 8; w++)
        for (int v = 0; v < 2; v++) {
            memcpy(ed, st, n);
            for (int i = 0; i < 8; i++)
                ed[8 * w + (size_t)i] = (uint8_t)(bad[v] >> (8 * i));
            int rc = b.vt->restore(b.ctx, ed, n, &err);
            if ((int)w < header_words) {
                cr_assert_eq(rc, PRIMAL_ECONFIG, "%s split %d: word %zu = %llx: %d", name, split,
                             w, (unsigned long long)bad[v], rc);
            } else {
                cr_assert_eq(rc, PRIMAL_EIO, "%s split %d: word %zu = %llx: %d %s", name, split,
                             w, (unsigned long long)bad[v], rc, err.msg);
                cr_assert(strstr(err.msg, prefix) != NULL, "%s", err.msg);
            }
        }
    if (word >= 0) { /* the named field at -1 */
        memcpy(ed, st, n);
        memset(ed + 8 * word, 0xFF, 8);
        cr_assert_eq(b.vt->restore(b.ctx, ed, n, &err), PRIMAL_EIO, "%s word %d = -1", name,
                     word);
        cr_assert(strstr(err.msg, prefix) && strstr(err.msg, field) && strstr(err.msg, "-1"),
                  "%s", err.msg);
    }
    cr_assert_eq(b.vt->restore(b.ctx, st, n, &err), PRIMAL_OK, "%s", err.msg);
    for (int i = 0; i < 2; i++) {
        next_ok(&a, &x, 2, L);
        next_ok(&b, &y, 2, L);
        cr_assert(same_batch(&x, &y), "%s split %d: batch %d after the refusals", name, split, i);
    }
    lclose(&a);
    lclose(&b);
}

Test(text, refuses_a_restored_state_with_a_field_out_of_range)
{
    const char *shuf[] = {"path=" D "genesis.txt", "val_fraction=0.2", "chunk_bytes=1024",
                          "window_chunks=2", NULL};
    const char *seq[] = {"path=" D "genesis.txt", "val_fraction=0.2", "chunk_bytes=1024",
                         "shuffle_rows=0", NULL};
    refuse_edited_states("text", TRAIN, shuf, 16, 7, 12, "rows used"); /* F_WUSED = -1 */
    refuse_edited_states("text", TRAIN, seq, 16, 7, 13, "chunk");      /* F_CHUNKNO = -1 */
    refuse_edited_states("text", VAL, seq, 16, 7, 14, "token");        /* F_TPOS = -1 */
}

/* ------------------------------------------------------------------------------------------ */
/* tokens                                                                                     */

/* ids16.bin holds 0..99: with seq_len 9 its 11 slots start at 0, 9, ..., 90 (slot s is
 * 9s, ..., 9s + 9); each epoch of 11 rows visits every slot once, in a new order. */
Test(tokens, draws_whole_slots_deterministically_per_seed)
{
    const char *kv[] = {"path=" D "ids16.bin", "val_fraction=0", NULL};
    ldr a, b, c;
    batch x, y, z;
    lopen_ok(&a, "tokens", TRAIN, 1, kv);
    lopen_ok(&b, "tokens", TRAIN, 1, kv);
    lopen_ok(&c, "tokens", TRAIN, 2, kv);
    int differs = 0, order[15][11], neworder = 0;
    for (int k = 0; k < 20; k++) {
        next_ok(&a, &x, 8, 9);
        next_ok(&b, &y, 8, 9);
        next_ok(&c, &z, 8, 9);
        cr_assert(same_batch(&x, &y));
        differs |= !same_batch(&x, &z);
        for (int i = 0; i < 8; i++) {
            const int32_t *t = row(&x, i);
            cr_assert(t[0] >= 0 && t[0] <= 90 && t[0] % 9 == 0, "slot start %d", t[0]);
            for (int j = 0; j <= 9; j++)
                cr_assert_eq(t[j], t[0] + j);
            assert_mask_all(&x, i, 1);
            int r = 8 * k + i;
            if (r < 15 * 11)
                order[r / 11][r % 11] = t[0] / 9;
        }
    }
    cr_assert(differs);
    for (int e = 0; e < 14; e++) {
        int seen[11] = {0};
        for (int i = 0; i < 11; i++)
            cr_assert_eq(seen[order[e][i]]++, 0, "epoch %d visits slot %d twice", e,
                         order[e][i]);
        neworder |= memcmp(order[e], order[0], sizeof order[0]) != 0;
    }
    cr_assert(neworder, "every epoch has the first one's order");
    lclose(&a);
    lclose(&b);
    lclose(&c);
}

/* ids32.bin holds 70000..70099 (the third byte matters): needs the Qwen vocabulary. */
Test(tokens, reads_32_bit_ids)
{
    const char *kv[] = {"path=" D "ids32.bin", "val_fraction=0", "width=32", NULL};
    ldr l;
    batch bt;
    primal_err err;
    cr_assert_eq(lopen(&l, "tokens", QWEN, TRAIN, 0, 0, 1, kv, &err), PRIMAL_OK, "%s", err.msg);
    next_ok(&l, &bt, 4, 20);
    for (int i = 0; i < 4; i++) {
        const int32_t *t = row(&bt, i);
        cr_assert(t[0] >= 70000 && t[0] <= 70079, "%d", t[0]);
        for (int j = 0; j <= 20; j++)
            cr_assert_eq(t[j], t[0] + j);
    }
    lclose(&l);
}

/* val_fraction 0.1 of 100 ids: val is 90..99, train 0..89. */
Test(tokens, reads_the_val_split_sequentially_to_its_end)
{
    const char *kv[] = {"path=" D "ids16.bin", "val_fraction=0.1", NULL};
    ldr l;
    batch bt;
    primal_err err;
    lopen_ok(&l, "tokens", VAL, 0, kv);
    for (int pass = 0; pass < 2; pass++) {
        next_ok(&l, &bt, 2, 4);
        for (int j = 0; j <= 4; j++) {
            cr_assert_eq(row(&bt, 0)[j], 90 + j);
            cr_assert_eq(row(&bt, 1)[j], 94 + j);
        }
        next_ok(&l, &bt, 2, 4);
        cr_assert_eq(row(&bt, 0)[0], 98);
        cr_assert_eq(row(&bt, 0)[1], 99);
        const uint8_t want[4] = {1, 0, 0, 0};
        cr_assert(memcmp(rmask(&bt, 0), want, 4) == 0);
        assert_mask_all(&bt, 1, 0);
        cr_assert_eq(next(&l, &bt, 2, 4, &err), PRIMAL_EOF);
        cr_assert_eq(l.vt->rewind(l.ctx, &err), PRIMAL_OK);
    }
    lclose(&l);
    lopen_ok(&l, "tokens", TRAIN, 0, kv);
    for (int k = 0; k < 20; k++) {
        next_ok(&l, &bt, 8, 9);
        for (int i = 0; i < 8; i++)
            cr_assert_leq(row(&bt, i)[9], 89);
    }
    lclose(&l);
}

/* badid16.bin: 0..9 with id 300 at index 5, byte offset 10; the bytes vocabulary is 256. */
Test(tokens, names_file_and_offset_of_an_id_outside_the_vocabulary)
{
    const char *kv[] = {"path=" D "badid16.bin", "val_fraction=0", NULL};
    ldr l;
    batch bt;
    primal_err err;
    lopen_ok(&l, "tokens", TRAIN, 0, kv);
    cr_assert_eq(next(&l, &bt, 1, 9, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, D "badid16.bin: byte offset 10") && strstr(err.msg, "300"), "%s",
              err.msg);
    lclose(&l);
    const char *kv2[] = {"path=" D "ids16.bin", "val_path=" D "badid16.bin", NULL};
    lopen_ok(&l, "tokens", VAL, 0, kv2);
    next_ok(&l, &bt, 1, 4); /* ids 0..4 are fine */
    cr_assert_eq(next(&l, &bt, 1, 4, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "badid16.bin: byte offset 10") != NULL, "%s", err.msg);
    lclose(&l);
}

Test(tokens, refuses_a_file_of_partial_ids_and_a_bad_width)
{
    const char *kv[] = {"path=" D "odd16.bin", "val_fraction=0", NULL};
    ldr l;
    primal_err err;
    cr_assert_eq(lopen(&l, "tokens", "bytes", TRAIN, 0, 0, 1, kv, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, D "odd16.bin") && strstr(err.msg, "3 bytes"), "%s", err.msg);
    lclose(&l);
    const char *kv2[] = {"path=" D "ids16.bin", "width=24", NULL};
    cr_assert_eq(lopen(&l, "tokens", "bytes", TRAIN, 0, 0, 1, kv2, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "width") && strstr(err.msg, "24"), "%s", err.msg);
    lclose(&l);
    const char *kv3[] = {"path=" D "missing.bin", NULL};
    cr_assert_eq(lopen(&l, "tokens", "bytes", TRAIN, 0, 0, 1, kv3, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, D "missing.bin") != NULL, "%s", err.msg);
    lclose(&l);
}

Test(tokens, restores_the_exact_position)
{
    const char *kv[] = {"path=" D "ids16.bin", "val_fraction=0.3", NULL};
    for (int split = 0; split < 2; split++) {
        ldr a, b;
        batch x, y;
        primal_err err;
        lopen_ok(&a, "tokens", split, 9, kv);
        lopen_ok(&b, "tokens", split, 9, kv);
        next_ok(&a, &x, 1, 3);
        uint8_t st[PRIMAL_LOADER_STATE_MAX];
        size_t n;
        cr_assert_eq(a.vt->save(a.ctx, st, sizeof st, &n, &err), PRIMAL_OK);
        cr_assert_eq(b.vt->restore(b.ctx, st, n, &err), PRIMAL_OK, "%s", err.msg);
        for (int k = 0; k < 2; k++) {
            next_ok(&a, &x, 2, 3);
            next_ok(&b, &y, 2, 3);
            cr_assert(same_batch(&x, &y), "split %d batch %d", split, k);
        }
        lclose(&a);
        lclose(&b);
    }
}

Test(tokens, gives_each_rank_its_share_of_the_rows)
{
    const char *kv[] = {"path=" D "ids16.bin", "val_fraction=0.4", NULL};
    check_ranks("tokens", TRAIN, kv, 7, 5);
    check_ranks("tokens", VAL, kv, 3, 100);
}

/* ids.bin: the 40001 ids 0..40000 (16 bits; the Qwen vocabulary): 2500 slots of seq_len 16,
 * slot s holding ids 16 s .. 16 s + 16. */
static const char *ids_kv(void)
{
    static char kv[300];
    char path[256];
    snprintf(path, sizeof path, "%s/ids.bin", tmpdir);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    for (int i = 0; i <= 40000; i++) {
        uint8_t le[2] = {(uint8_t)i, (uint8_t)(i >> 8)};
        cr_assert_eq(fwrite(le, 1, 2, f), 2);
    }
    fclose(f);
    snprintf(kv, sizeof kv, "path=%s", path);
    return kv;
}

static int slot_of(const batch *bt, int i)
{
    const int32_t *t = row(bt, i);
    cr_assert_eq(t[0] % 16, 0, "row %d starts at id %d", i, t[0]);
    for (int j = 0; j <= 16; j++)
        cr_assert_eq(t[j], t[0] + j);
    return t[0] / 16;
}

Test(tokens, visits_every_slot_once_an_epoch_in_a_new_order, .init = make_tmpdir,
     .fini = remove_tmpdir)
{
    const char *kv[] = {ids_kv(), "val_fraction=0", NULL};
    ldr l;
    batch bt;
    primal_err err;
    cr_assert_eq(lopen(&l, "tokens", QWEN, TRAIN, 0, 0, 1, kv, &err), PRIMAL_OK, "%s", err.msg);
    static int order[2][2500];
    for (int e = 0; e < 2; e++) {
        int seen[2500] = {0};
        for (int r = 0; r < 2500; r += 4) {
            next_ok(&l, &bt, 4, 16);
            for (int i = 0; i < 4; i++) {
                int s = slot_of(&bt, i);
                cr_assert_eq(seen[s]++, 0, "epoch %d: slot %d twice", e, s);
                order[e][r + i] = s;
            }
        }
    }
    cr_assert(memcmp(order[0], order[1], sizeof order[0]) != 0, "epoch 2 repeats epoch 1");
    lclose(&l);
}

/* The first 128 rows' slots cover every tenth of the file, and differ between two seeds;
 * shuffle = false gives slots 0, 1, 2, ... */
Test(tokens, draws_the_first_batches_from_every_tenth_of_the_file, .init = make_tmpdir,
     .fini = remove_tmpdir)
{
    const char *path = ids_kv();
    const char *shuf[] = {path, "val_fraction=0", NULL};
    const char *seq[] = {path, "val_fraction=0", "shuffle=false", NULL};
    ldr a, b, s;
    batch x, y, z;
    primal_err err;
    cr_assert_eq(lopen(&a, "tokens", QWEN, TRAIN, 1, 0, 1, shuf, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_eq(lopen(&b, "tokens", QWEN, TRAIN, 2, 0, 1, shuf, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_eq(lopen(&s, "tokens", QWEN, TRAIN, 1, 0, 1, seq, &err), PRIMAL_OK, "%s",
                 err.msg);
    int tenth[10] = {0}, differs = 0, hit = 0;
    for (int k = 0; k < 8; k++) {
        next_ok(&a, &x, 16, 16);
        next_ok(&b, &y, 16, 16);
        next_ok(&s, &z, 16, 16);
        differs |= !same_batch(&x, &y);
        for (int i = 0; i < 16; i++) {
            tenth[slot_of(&x, i) / 250] = 1;
            cr_assert_eq(slot_of(&z, i), 16 * k + i);
        }
    }
    for (int t = 0; t < 10; t++)
        hit += tenth[t];
    cr_assert_eq(hit, 10, "the first 128 rows come from %d tenths of the file", hit);
    cr_assert(differs, "seeds 1 and 2 gave the same batches");
    lclose(&a);
    lclose(&b);
    lclose(&s);
}

/* Saves mid-epoch and next to the end of an epoch (625 batches of 4), restored into a fresh
 * loader, continue bit-identically, also through a seq_len change. */
Test(tokens, resumes_mid_epoch_and_across_epochs_bit_identically, .init = make_tmpdir,
     .fini = remove_tmpdir)
{
    const char *kv[] = {ids_kv(), "val_fraction=0", NULL};
    const int at[] = {0, 1, 300, 623, 624, 625, 626};
    for (size_t p = 0; p < sizeof at / sizeof *at; p++) {
        ldr a, b;
        batch x, y;
        primal_err err;
        cr_assert_eq(lopen(&a, "tokens", QWEN, TRAIN, 5, 0, 1, kv, &err), PRIMAL_OK);
        cr_assert_eq(lopen(&b, "tokens", QWEN, TRAIN, 5, 0, 1, kv, &err), PRIMAL_OK);
        for (int k = 0; k < at[p]; k++)
            next_ok(&a, &x, 4, 16);
        uint8_t st[PRIMAL_LOADER_STATE_MAX];
        size_t n;
        cr_assert_eq(a.vt->save(a.ctx, st, sizeof st, &n, &err), PRIMAL_OK);
        cr_assert_eq(b.vt->restore(b.ctx, st, n, &err), PRIMAL_OK, "%s", err.msg);
        for (int k = 0; k < 6; k++) {
            int L = k < 3 ? 16 : 24;
            next_ok(&a, &x, 4, L);
            next_ok(&b, &y, 4, L);
            cr_assert(same_batch(&x, &y), "saved after %d: batch %d differs", at[p], k);
        }
        lclose(&a);
        lclose(&b);
    }
}

/* tokens.c's F_ enum: 6 words name the data and keys, then epoch, seq_len, position, ended. */
Test(tokens, refuses_a_restored_state_with_a_field_out_of_range)
{
    const char *kv[] = {"path=" D "ids16.bin", "val_fraction=0.3", NULL};
    refuse_edited_states("tokens", TRAIN, kv, 4, 6, 8, "position"); /* F_POS = -1 */
    refuse_edited_states("tokens", VAL, kv, 4, 6, 8, "position");
}

/* ------------------------------------------------------------------------------------------ */
/* sft_jsonl                                                                                  */

/* {"prompt": "Hi", "response": "Yo"}: 65 bytes of ChatML then eot '\n':
 *   0  <|im_start|>user\n   (17)    mask 0
 *  17  Hi                   (2)     mask 0
 *  19  <|im_end|>\n         (11)    mask 0
 *  30  <|im_start|>assistant\n (22) mask 0
 *  52  Yo<|im_end|>         (12)    counted: targets 52..63, so mask[51..62] = 1
 *  64  \n, 65 eot                   mask 0 */
Test(sft_jsonl, masks_everything_but_the_answer_and_its_im_end)
{
    const char *kv[] = {"path=" D "sft.jsonl", "val_fraction=0", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "sft_jsonl", TRAIN, 0, kv);
    next_ok(&l, &bt, 1, 65);
    cr_assert_str_eq(row_str(&bt, 0), "<|im_start|>user\nHi<|im_end|>\n"
                                      "<|im_start|>assistant\nYo<|im_end|>\n\n");
    for (int k = 0; k < 65; k++)
        cr_assert_eq(rmask(&bt, 0)[k], k >= 51 && k <= 62, "mask[%d] = %d", k,
                     rmask(&bt, 0)[k]);
    lclose(&l);
}

/* A chat with a system message and two turns; every assistant turn counts. */
Test(sft_jsonl, masks_every_assistant_turn_of_a_chat)
{
    static const struct {
        const char *text;
        int counted;
    } parts[] = {
        {"<|im_start|>system\nBe brief.<|im_end|>\n", 0},
        {"<|im_start|>user\nQ1<|im_end|>\n", 0},
        {"<|im_start|>assistant\n", 0},
        {"A1<|im_end|>", 1},
        {"\n<|im_start|>user\nQ2<|im_end|>\n", 0},
        {"<|im_start|>assistant\n", 0},
        {"A2<|im_end|>", 1},
        {"\n\n", 0},
    };
    char want[512] = "";
    uint8_t counted[512];
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        strcat(want, parts[i].text);
        for (size_t k = 0; k < strlen(parts[i].text); k++)
            counted[n++] = (uint8_t)parts[i].counted;
    }
    const char *kv[] = {"path=" D "sft-chat.jsonl", "val_fraction=0", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "sft_jsonl", TRAIN, 0, kv);
    int L = (int)n - 1;
    next_ok(&l, &bt, 1, L);
    cr_assert_str_eq(row_str(&bt, 0), want);
    for (int k = 0; k < L; k++)
        cr_assert_eq(rmask(&bt, 0)[k], counted[k + 1], "mask[%d]", k);
    lclose(&l);
}

/* The same 66-token example in rows of 16: rows overlap by one token and carry their masks. */
Test(sft_jsonl, continues_a_long_example_into_the_next_row)
{
    const char *want = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n\n";
    const char *kv[] = {"path=" D "sft.jsonl", "val_fraction=0", NULL};
    ldr l;
    batch bt;
    lopen_ok(&l, "sft_jsonl", TRAIN, 0, kv);
    next_ok(&l, &bt, 4, 16);
    for (int i = 0; i < 4; i++) {
        cr_assert(memcmp(row_str(&bt, i), want + 16 * i, 17) == 0, "row %d: %s", i,
                  row_str(&bt, i));
        for (int k = 0; k < 16; k++) {
            int target = 16 * i + k + 1;
            cr_assert_eq(rmask(&bt, i)[k], target >= 52 && target <= 63, "row %d mask[%d]", i,
                         k);
        }
    }
    /* 66 tokens give 4 rows of 16 (65 tokens used); the next epoch starts over */
    next_ok(&l, &bt, 1, 16);
    cr_assert(memcmp(row_str(&bt, 0), want, 17) == 0);
    lclose(&l);
}

/* The ids Hugging Face gives for the ChatML text (cases.jsonl: the "write a loop" prompt and
 * "Hello world"), then <|im_end|> "\n" <|endoftext|>. */
Test(sft_jsonl, maps_chatml_markers_to_added_tokens_with_bpe)
{
    const int32_t want[16] = {151644, 872, 198, 4934, 264, 6337, 151645, 198,
                              151644, 77091, 198, 9707, 1879, 151645, 198, 151643};
    const char *kv[] = {"path=" D "sft-qwen.jsonl", "val_fraction=0", NULL};
    ldr l;
    batch bt;
    primal_err err;
    cr_assert_eq(lopen(&l, "sft_jsonl", QWEN, TRAIN, 0, 0, 1, kv, &err), PRIMAL_OK, "%s",
                 err.msg);
    next_ok(&l, &bt, 1, 15);
    for (int k = 0; k < 16; k++)
        cr_assert_eq(row(&bt, 0)[k], want[k], "token %d: %d, expected %d", k, row(&bt, 0)[k],
                     want[k]);
    for (int k = 0; k < 15; k++) /* targets 11, 12, 13: Hello, " world", <|im_end|> */
        cr_assert_eq(rmask(&bt, 0)[k], k >= 10 && k <= 12, "mask[%d]", k);
    lclose(&l);
}

static void expect_bad_line(const char *line, const char *what)
{
    char content[512];
    snprintf(content, sizeof content, "{\"prompt\": \"a\", \"response\": \"b\"}\n%s\n", line);
    const char *path = write_tmp("bad.jsonl", content);
    char pathkv[300], where[300];
    snprintf(pathkv, sizeof pathkv, "path=%s", path);
    snprintf(where, sizeof where, "%s:2: ", path);
    const char *kv[] = {pathkv, "val_fraction=0", NULL};
    ldr l;
    primal_err err;
    cr_assert_eq(lopen(&l, "sft_jsonl", "bytes", TRAIN, 0, 0, 1, kv, &err), PRIMAL_ECONFIG,
                 "%s", line);
    cr_assert(strstr(err.msg, where) != NULL, "%s: no \"%s\" in: %s", line, where, err.msg);
    cr_assert(strstr(err.msg, what) != NULL, "%s: no \"%s\" in: %s", line, what, err.msg);
    lclose(&l);
}

Test(sft_jsonl, reports_a_malformed_line_as_path_line_what, .init = make_tmpdir,
     .fini = remove_tmpdir)
{
    expect_bad_line("{\"prompt\": \"a\", ", "invalid JSON");
    expect_bad_line("[1, 2]", "not a JSON object");
    expect_bad_line("{\"prompt\": \"a\"}", "missing \"response\"");
    expect_bad_line("{\"response\": \"a\"}", "missing \"prompt\"");
    expect_bad_line("{\"prompt\": 5, \"response\": \"b\"}", "\"prompt\" is not a string");
    expect_bad_line("{\"prompt\": \"a\", \"response\": null}", "\"response\" is not a string");
    expect_bad_line("{\"messages\": {}}", "\"messages\" is not an array");
    expect_bad_line("{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}",
                    "messages[0]: unknown role \"bot\"");
    expect_bad_line("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, "
                    "{\"role\": \"assistant\"}]}", "messages[1]: missing \"content\"");
    expect_bad_line("{\"messages\": [{\"content\": \"x\"}]}", "messages[0]: missing \"role\"");
    expect_bad_line("{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}",
                    "messages[0]: \"role\" is not a string");
    expect_bad_line("{\"messages\": [{\"role\": \"user\", \"content\": [1]}]}",
                    "messages[0]: \"content\" is not a string");
}

/* sft-bad.jsonl: lines 1 and 6 are good ("a"/"b", "c"/"d"), 2..5 are not. */
Test(sft_jsonl, stops_at_the_first_malformed_line_or_skips_them)
{
    const char *kv[] = {"path=" D "sft-bad.jsonl", "val_fraction=0", NULL};
    ldr l;
    batch bt;
    primal_err err;
    cr_assert_eq(lopen(&l, "sft_jsonl", "bytes", TRAIN, 0, 0, 1, kv, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, D "sft-bad.jsonl:2: invalid JSON") != NULL, "%s", err.msg);
    lclose(&l);
    const char *kv2[] = {"path=" D "sft-bad.jsonl", "val_fraction=0", "on_error=skip",
                         "shuffle=false", NULL};
    lopen_ok(&l, "sft_jsonl", TRAIN, 0, kv2);
    const char *want = "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n\n"
                       "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\nd<|im_end|>\n\n";
    next_ok(&l, &bt, 1, 127);
    cr_assert_str_eq(row_str(&bt, 0), want);
    lclose(&l);
}

Test(sft_jsonl, refuses_a_file_whose_every_line_is_malformed)
{
    const char *kv[] = {"path=" D "sft-allbad.jsonl", "val_fraction=0", "on_error=skip", NULL};
    ldr l;
    primal_err err;
    cr_assert_eq(lopen(&l, "sft_jsonl", "bytes", TRAIN, 0, 0, 1, kv, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "all 2 lines") &&
              strstr(err.msg, D "sft-allbad.jsonl:1: not a JSON object"), "%s", err.msg);
    lclose(&l);
}

/* sft-val.jsonl: 4 lines of 35 bytes.  val_fraction 0.3 cuts at byte 98, inside line 3
 * (70..104), moved to 105: val is line 4 ("p4"/"r4", laid out as "Hi"/"Yo" above: 66 tokens,
 * targets 52..63 count), train lines 1..3. */
Test(sft_jsonl, splits_off_the_last_lines_as_validation)
{
    const char *kv[] = {"path=" D "sft-val.jsonl", "val_fraction=0.3", NULL};
    const char *ex4 = "<|im_start|>user\np4<|im_end|>\n<|im_start|>assistant\nr4<|im_end|>\n\n";
    ldr l;
    batch bt;
    primal_err err;
    lopen_ok(&l, "sft_jsonl", VAL, 0, kv);
    next_ok(&l, &bt, 2, 70);
    cr_assert(memcmp(row_str(&bt, 0), ex4, 66) == 0, "%s", row_str(&bt, 0));
    for (int k = 0; k < 70; k++)
        cr_assert_eq(rmask(&bt, 0)[k], k >= 51 && k <= 62, "mask[%d]", k);
    assert_mask_all(&bt, 1, 0);
    cr_assert_eq(next(&l, &bt, 1, 70, &err), PRIMAL_EOF);
    lclose(&l);
    lopen_ok(&l, "sft_jsonl", TRAIN, 0, kv);
    for (int k = 0; k < 6; k++) {
        next_ok(&l, &bt, 1, 67);
        cr_assert(strstr(row_str(&bt, 0), "p4") == NULL);
    }
    lclose(&l);
}

Test(sft_jsonl, shuffles_examples_per_seed_and_restores_its_position)
{
    const char *kv[] = {"path=" D "sft-many.jsonl", "val_fraction=0", NULL};
    ldr a, b, c;
    batch x, y, z;
    primal_err err;
    lopen_ok(&a, "sft_jsonl", TRAIN, 1, kv);
    lopen_ok(&b, "sft_jsonl", TRAIN, 1, kv);
    lopen_ok(&c, "sft_jsonl", TRAIN, 2, kv);
    next_ok(&a, &x, 4, 50);
    next_ok(&b, &y, 4, 50);
    next_ok(&c, &z, 4, 50);
    cr_assert(same_batch(&x, &y));
    cr_assert(!same_batch(&x, &z));
    uint8_t st[PRIMAL_LOADER_STATE_MAX];
    size_t n;
    for (int k = 0; k < 7; k++) { /* 20 examples of 68 tokens: an epoch is ~7 batches */
        cr_assert_eq(a.vt->save(a.ctx, st, sizeof st, &n, &err), PRIMAL_OK);
        cr_assert_eq(b.vt->restore(b.ctx, st, n, &err), PRIMAL_OK, "%s", err.msg);
        for (int i = 0; i < 3; i++) {
            next_ok(&a, &x, 4, 50);
            next_ok(&b, &y, 4, 50);
            cr_assert(same_batch(&x, &y), "after save %d, batch %d", k, i);
        }
    }
    lclose(&a);
    lclose(&b);
    lclose(&c);
}

Test(sft_jsonl, gives_each_rank_its_share_of_the_rows)
{
    const char *kv[] = {"path=" D "sft-many.jsonl", "val_fraction=0.3", NULL};
    check_ranks("sft_jsonl", TRAIN, kv, 20, 8);
    check_ranks("sft_jsonl", VAL, kv, 20, 100);
}
