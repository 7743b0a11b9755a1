/* mkcorpus.c: write the seed corpora of tests/fuzz/corpus/ (tests/fuzz/fuzz.sh corpus).
 *
 * Usage: mkcorpus CORPUS_DIR EXAMPLES_DIR.  Everything comes from the test fixtures
 * (FUZZ_FIXTURES), the examples and the library's own writers, small (a few KB a harness):
 *   safetensors        every dtype (scalars, empty and 2-D tensors, metadata); the first
 *                      elements of each tensor of hf-qwen2-tiny/model.safetensors; a checkpoint
 *   checkpoint,        tiny checkpoints written by primal_ckpt_save: a Qwen2 shape with 4-bit,
 *   checkpoint_signed  8-bit, 16-bit and dense matrices, q/k/v biases, odd columns and state
 *                      blobs; a tied Llama over prime13
 *   tokenizer          qwen-tokenizer/tokenizer.json cut down to its 256 byte symbols, the first
 *                      merges their tokens allow and three added tokens (ids renumbered), then a
 *                      NUL and a text of cases.jsonl; variants (merges as "a b", ignore_merges,
 *                      no Split, a String split, a normalizer Sequence)
 *   bpe                the texts of qwen-tokenizer/cases.jsonl, and the starts of data/utf8.txt,
 *                      data/verse.txt and qwen-tokenizer/long.txt
 *   experiment         examples/NAME.ini without comments, [data] path, val_path, tokenizer and
 *                      [model] init pointed at the harness's scratch files (d.txt, v.txt, s.jsonl,
 *                      bytes, random); two with --set lines after a NUL
 *   loader_text,       a configuration byte and the state save() gives after 0 to 3 batches, for
 *   loader_tokens      a spread of configurations (fuzz_loader.h) */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include <primal/safetensors.h>
#include <primal/tokenizer.h>

#include "checkpoint.h"
#include "fuzz.h"
#include "fuzz_loader.h"
#include "model.h"
#include "registry.h"

static const char *corpus;

static void must(int rc, const primal_err *err, const char *what)
{
    if (rc != PRIMAL_OK)
        fuzz_fail("mkcorpus: %s: %s", what, err->msg);
}

static void put(const char *sub, const char *name, const void *data, size_t n)
{
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/%s", corpus, sub);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        fuzz_fail("mkcorpus: mkdir %s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, n, f) != n || fclose(f) != 0)
        fuzz_fail("mkcorpus: cannot write %s", path);
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fuzz_fail("mkcorpus: cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    if (b == NULL || fread(b, 1, (size_t)len, f) != (size_t)len)
        fuzz_fail("mkcorpus: cannot read %s", path);
    fclose(f);
    b[len] = '\0';
    *n = (size_t)len;
    return b;
}

/* Copy a file written under the scratch directory into the corpus. */
static void put_file(const char *sub, const char *name, const char *path)
{
    size_t n;
    char *b = slurp(path, &n);
    put(sub, name, b, n);
    free(b);
}

/* ------------------------------------------------------------------------------------------ */
/* safetensors                                                                                */

static void safetensors_seeds(void)
{
    char path[1024];
    primal_err err = {0};
    primal_stw *w;
    static const uint8_t bytes[64] = {0, 0, 128, 63, 0, 0, 0, 192, 1, 2, 3, 4, 5, 6, 7, 8,
                                      9, 10, 11, 12, 13, 14, 15, 16, 0, 60, 0, 188, 128, 63};
    static const struct {
        const char *name;
        primal_dtype d;
        int nd;
        int64_t sh[2];
    } all[] = {
        {"f32", PRIMAL_F32, 1, {2, 0}},   {"f16", PRIMAL_F16, 2, {1, 2}},
        {"bf16", PRIMAL_BF16, 1, {2, 0}}, {"f64", PRIMAL_F64, 0, {0, 0}},
        {"u8", PRIMAL_U8, 1, {3, 0}},     {"i8", PRIMAL_I8, 1, {1, 0}},
        {"u16", PRIMAL_U16, 1, {2, 0}},   {"i16", PRIMAL_I16, 2, {2, 1}},
        {"u32", PRIMAL_U32, 1, {1, 0}},   {"i32", PRIMAL_I32, 1, {2, 0}},
        {"i64", PRIMAL_I64, 1, {1, 0}},   {"bool", PRIMAL_BOOL, 1, {2, 0}},
        {"empty", PRIMAL_F32, 2, {0, 3}},
    };
    must(primal_stw_begin(fuzz_path("all.safetensors", path, sizeof path), &w, &err), &err,
         "stw");
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        must(primal_stw_add(w, all[i].name, all[i].d, all[i].nd, all[i].sh, bytes, &err), &err,
             "stw_add");
    must(primal_stw_meta(w, "primal.format", "1", &err), &err, "stw_meta");
    must(primal_stw_meta(w, "note", "\"quoted\" \\ unicode \xc3\xa9", &err), &err, "stw_meta");
    must(primal_stw_commit(w, &err), &err, "stw_commit");
    put_file("safetensors", "dtypes.safetensors", path);

    /* the first elements of each tensor of the Hugging Face fixture, names and dtypes kept */
    primal_st *st;
    must(primal_st_open(FUZZ_FIXTURES "/hf-qwen2-tiny/model.safetensors", &st, &err), &err,
         "open hf fixture");
    must(primal_stw_begin(fuzz_path("hf.safetensors", path, sizeof path), &w, &err), &err,
         "stw");
    for (int i = 0; i < primal_st_count(st); i++) {
        const primal_st_tensor *t = primal_st_at(st, i);
        int64_t k = t->numel < 3 ? t->numel : 3;
        int64_t sh[2] = {1, k};
        must(primal_stw_add(w, t->name, t->dtype, t->ndim > 1 ? 2 : 1,
                            t->ndim > 1 ? sh : sh + 1, t->data, &err),
             &err, "stw_add");
    }
    must(primal_stw_commit(w, &err), &err, "stw_commit");
    primal_st_close(st);
    put_file("safetensors", "hf-qwen2-tiny-cut.safetensors", path);

    /* a primal-eval input: input_ids I64 [1, 4] */
    static const int64_t ids[4] = {1, 2, 3, 4};
    int64_t sh[2] = {1, 4};
    must(primal_stw_begin(fuzz_path("eval.safetensors", path, sizeof path), &w, &err), &err,
         "stw");
    must(primal_stw_add(w, "input_ids", PRIMAL_I64, 2, sh, ids, &err), &err, "stw_add");
    must(primal_stw_commit(w, &err), &err, "stw_commit");
    put_file("safetensors", "eval-input.safetensors", path);
}

/* ------------------------------------------------------------------------------------------ */
/* checkpoints                                                                                */

static float prime13[13], u100[100], u300[300];
static primal_grid_ref g13 = {"prime13", prime13, 13};
static primal_grid_ref g100 = {"uniform(size=100)", u100, 100};
static primal_grid_ref g300 = {"uniform(size=300)", u300, 300};

static const primal_grid_ref *mixed(void *user, const char *name)
{
    (void)user;
    if (strcmp(name, "model.layers.0.mlp.down_proj.weight") == 0)
        return NULL; /* dense */
    if (strcmp(name, "model.layers.0.self_attn.o_proj.weight") == 0)
        return &g100;
    if (strcmp(name, "lm_head.weight") == 0)
        return &g300;
    return &g13;
}

static const primal_grid_ref *all13(void *user, const char *name)
{
    (void)user;
    (void)name;
    return &g13;
}

static void checkpoint(const char *name, const primal_model_config *mc, primal_grid_for gf,
                       int with_blobs)
{
    static const int den[] = {1, 2, 3, 5, 7, 11};
    int k = 0;
    for (int i = 0; i < 6; i++)
        prime13[k++] = (float)(-1.0 / den[i]);
    prime13[k++] = 0.0f;
    for (int i = 5; i >= 0; i--)
        prime13[k++] = (float)(1.0 / den[i]);
    for (int i = 0; i < 100; i++)
        u100[i] = -1.0f + 2.0f * (float)i / 99.0f;
    for (int i = 0; i < 300; i++)
        u300[i] = -1.0f + 2.0f * (float)i / 299.0f;
    primal_err err = {0};
    primal_model *m;
    must(primal_model_create(mc, gf, NULL, &m, &err), &err, "model_create");
    must(primal_model_init_random(m, 1, 0.02f, &err), &err, "init_random");
    static const uint64_t train[4] = {3, 96, 0, 7};
    static const uint8_t trainable[32] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    static const uint8_t loader[12] = {8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
    static const uint8_t votes[6] = {1, 255, 2, 254, 0, 9};
    primal_ckpt_blob blobs[] = {
        {"train", train, sizeof train},
        {"trainable", trainable, (size_t)primal_model_nparams(m)},
        {"loader", loader, sizeof loader},
        {"policy.model.layers.0.mlp.up_proj.weight", votes, sizeof votes},
    };
    char path[1024];
    must(primal_ckpt_save(fuzz_path(name, path, sizeof path), m,
                          with_blobs ? "[run]\nsteps = 3\n\n[grid]\nplugin = prime13\n" : NULL,
                          blobs, with_blobs ? 4 : 0, &err),
         &err, "ckpt_save");
    primal_model_free(m);
    put_file("checkpoint", name, path);
    put_file("checkpoint_signed", name, path);
    if (with_blobs)
        put_file("safetensors", name, path);
}

static void checkpoint_seeds(void)
{
    primal_model_config q = {.arch = PRIMAL_ARCH_QWEN2, .vocab = 8, .dim = 4, .layers = 1,
                             .heads = 2, .kv_heads = 1, .ffn = 5, .rope_theta = 10000.0,
                             .norm_eps = 1e-6, .tied = 0, .qkv_bias = 1};
    checkpoint("qwen2-mixed.safetensors", &q, mixed, 1);
    primal_model_config l = {.arch = PRIMAL_ARCH_LLAMA, .vocab = 6, .dim = 4, .layers = 2,
                             .heads = 2, .kv_heads = 2, .ffn = 3, .rope_theta = 500000.0,
                             .norm_eps = 1e-5, .tied = 1, .qkv_bias = 0};
    checkpoint("llama-tied-prime13.safetensors", &l, all13, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* tokenizer.json and texts                                                                   */

/* The cases.jsonl texts. */
static char **case_texts(int *n)
{
    size_t len;
    char *all = slurp(FUZZ_FIXTURES "/qwen-tokenizer/cases.jsonl", &len);
    char **out = NULL;
    *n = 0;
    for (char *line = strtok(all, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        json_t *o = json_loads(line, 0, NULL);
        const char *t = json_string_value(json_object_get(o, "text"));
        if (t != NULL) {
            out = realloc(out, (size_t)(*n + 1) * sizeof *out);
            out[(*n)++] = strdup(t);
        }
        json_decref(o);
    }
    free(all);
    return out;
}

/* GPT-2's byte alphabet (core/tokenizer.c, byte_alphabet): printable Latin-1 bytes stand for
 * themselves, the others take U+0100 onwards in byte order. */
static void byte_symbol(int b, char out[4])
{
    static unsigned cp[256];
    if (cp[255] == 0) {
        unsigned extra = 256;
        for (int i = 0; i < 256; i++) {
            int printable = (i >= 0x21 && i <= 0x7e) || (i >= 0xa1 && i <= 0xac) || i >= 0xae;
            cp[i] = printable ? (unsigned)i : extra++;
        }
    }
    unsigned c = cp[b];
    if (c < 0x80) {
        out[0] = (char)c;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xc0 | c >> 6);
        out[1] = (char)(0x80 | (c & 0x3f));
        out[2] = '\0';
    }
}

/* The fixture tokenizer cut down to the byte symbols, the first nm merges whose halves are
 * tokens by then, and three added tokens. */
static json_t *small_tokenizer(int nm)
{
    json_error_t je;
    json_t *full = json_load_file(FUZZ_FIXTURES "/qwen-tokenizer/tokenizer.json", 0, &je);
    if (full == NULL)
        fuzz_fail("mkcorpus: tokenizer.json: %s", je.text);
    json_t *model = json_object_get(full, "model");
    json_t *vocab = json_object(), *merges = json_array();
    json_int_t next = 0;
    for (int b = 0; b < 256; b++) {
        char s[4];
        byte_symbol(b, s);
        json_object_set_new(vocab, s, json_integer(next++));
    }
    json_t *fm = json_object_get(model, "merges");
    for (size_t i = 0; i < json_array_size(fm) && (int)json_array_size(merges) < nm; i++) {
        json_t *m = json_array_get(fm, i);
        const char *a = json_string_value(json_array_get(m, 0));
        const char *b = json_string_value(json_array_get(m, 1));
        if (a == NULL || b == NULL || json_object_get(vocab, a) == NULL ||
            json_object_get(vocab, b) == NULL)
            continue;
        char ab[256];
        snprintf(ab, sizeof ab, "%s%s", a, b);
        if (json_object_get(vocab, ab) == NULL)
            json_object_set_new(vocab, ab, json_integer(next++));
        json_array_append(merges, m);
    }
    json_t *small = json_deep_copy(full);
    json_t *sm = json_object_get(small, "model");
    json_object_set_new(sm, "vocab", vocab);
    json_object_set_new(sm, "merges", merges);
    json_t *added = json_array();
    json_t *fa = json_object_get(full, "added_tokens");
    for (size_t i = 0; i < 3 && i < json_array_size(fa); i++) {
        json_t *a = json_deep_copy(json_array_get(fa, i));
        json_object_set_new(a, "id", json_integer(next++));
        json_array_append_new(added, a);
    }
    json_object_set_new(small, "added_tokens", added);
    json_decref(full);
    return small;
}

static void put_tokenizer(const char *name, json_t *tok, const char *text)
{
    char *j = json_dumps(tok, JSON_COMPACT);
    size_t jn = strlen(j), tn = strlen(text);
    char *buf = malloc(jn + 1 + tn);
    memcpy(buf, j, jn);
    buf[jn] = '\0';
    memcpy(buf + jn + 1, text, tn);
    put("tokenizer", name, buf, jn + 1 + tn);
    free(buf);
    free(j);
}

static void tokenizer_seeds(void)
{
    int nt;
    char **texts = case_texts(&nt);
    json_t *tok = small_tokenizer(80);
    put_tokenizer("qwen-cut-0", tok, texts[0]);
    put_tokenizer("qwen-cut-1", tok, texts[1 % nt]);
    put_tokenizer("qwen-cut-eot", tok, "a<|endoftext|>b<|im_start|>\n");

    /* merges as "a b" strings, ignore_merges, a normalizer Sequence, no added tokens */
    json_t *v = json_deep_copy(tok);
    json_t *m = json_object_get(v, "model");
    json_t *strs = json_array();
    json_t *pairs = json_object_get(m, "merges");
    for (size_t i = 0; i < json_array_size(pairs) && i < 40; i++) {
        char s[256];
        snprintf(s, sizeof s, "%s %s", json_string_value(json_array_get(json_array_get(pairs, i), 0)),
                 json_string_value(json_array_get(json_array_get(pairs, i), 1)));
        json_array_append_new(strs, json_string(s));
    }
    json_object_set_new(m, "merges", strs);
    json_object_set_new(m, "ignore_merges", json_true());
    json_object_set_new(v, "normalizer",
                        json_pack("{s:s, s:[{s:s}]}", "type", "Sequence", "normalizers", "type",
                                  "NFC"));
    json_object_set_new(v, "added_tokens", json_array());
    put_tokenizer("strings-ignore-merges", v, texts[2 % nt]);
    json_decref(v);

    /* ByteLevel alone (no Split); and a String Split before the Regex one */
    v = json_deep_copy(tok);
    json_object_set_new(v, "pre_tokenizer",
                        json_pack("{s:s, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                                  "use_regex", 0));
    json_object_set_new(v, "normalizer", json_null());
    put_tokenizer("bytelevel-only", v, texts[3 % nt]);
    json_decref(v);
    v = json_deep_copy(tok);
    json_t *pre = json_object_get(json_object_get(v, "pre_tokenizer"), "pretokenizers");
    json_array_insert_new(pre, 0,
                          json_pack("{s:s, s:{s:s}, s:s, s:b}", "type", "Split", "pattern",
                                    "String", " ", "behavior", "Isolated", "invert", 0));
    put_tokenizer("string-split", v, "tabs\tand  spaces, naïve café 123\n");
    json_decref(v);
    json_decref(tok);

    for (int i = 0; i < nt; i++) {
        char name[32];
        snprintf(name, sizeof name, "case-%02d", i);
        put("bpe", name, texts[i], strlen(texts[i]));
        free(texts[i]);
    }
    free(texts);
    static const struct {
        const char *file, *name;
        size_t max;
    } starts[] = {{"/data/utf8.txt", "utf8", 400},
                  {"/data/verse.txt", "verse", 400},
                  {"/qwen-tokenizer/long.txt", "long", 600}};
    for (size_t i = 0; i < sizeof starts / sizeof *starts; i++) {
        char path[1024];
        size_t n;
        snprintf(path, sizeof path, "%s%s", FUZZ_FIXTURES, starts[i].file);
        char *b = slurp(path, &n);
        size_t k = n < starts[i].max ? n : starts[i].max;
        while (k > 0 && k < n && ((unsigned char)b[k] & 0xc0) == 0x80)
            k--; /* end on a character boundary */
        put("bpe", starts[i].name, b, k);
        free(b);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* experiment files                                                                           */

/* examples/NAME.ini without comments and blank runs, its file paths pointed at the harness's
 * scratch files. */
static void experiment_seed(const char *examples, const char *file, const char *seed,
                            const char *sets)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", examples, file);
    size_t n;
    char *in = slurp(path, &n);
    char *out = malloc(n + 512 + (sets ? strlen(sets) : 0));
    size_t k = 0;
    int sft = 0;
    for (char *line = strtok(in, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (line[0] == ';' || line[0] == '#')
            continue;
        if (strstr(line, "sft_jsonl") != NULL)
            sft = 1;
        const char *rep = NULL;
        if (strncmp(line, "path =", 6) == 0)
            rep = sft ? "path = s.jsonl" : "path = d.txt";
        else if (strncmp(line, "val_path =", 10) == 0)
            rep = "val_path = v.txt";
        else if (strncmp(line, "tokenizer =", 11) == 0)
            rep = "tokenizer = bytes";
        else if (strncmp(line, "init =", 6) == 0)
            rep = "init = random";
        if (line[0] == '[' && k > 0)
            out[k++] = '\n';
        k += (size_t)sprintf(out + k, "%s\n", rep ? rep : line);
    }
    if (sets != NULL) {
        out[k++] = '\0';
        k += (size_t)sprintf(out + k, "%s", sets);
    }
    put("experiment", seed, out, k);
    free(out);
    free(in);
}

static void experiment_seeds(const char *examples)
{
    DIR *d = opendir(examples);
    if (d == NULL)
        fuzz_fail("mkcorpus: %s: %s", examples, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n > 4 && strcmp(e->d_name + n - 4, ".ini") == 0)
            experiment_seed(examples, e->d_name, e->d_name, NULL);
    }
    closedir(d);
    /* --set lines: a policy and a scheduler swapped in, a grid override, data paths */
    static const char sets1[] = "flip.plugin=threshold_consensus\nflip.threshold=3\n"
                                "scheduler.plugins=sealing\nrun.steps=5\n"
                                "grid.model.layers.*.mlp.*.plugin=uniform\n"
                                "grid.model.layers.*.mlp.*.size=16\n";
    static const char sets2[] = "data.path=d.txt\ndata.val_path=v.txt\ndata.val_fraction=0\n"
                                "model.vocab=300\nrun.reduce=votes\n";
    experiment_seed(examples, "kjv.ini", "kjv-with-sets", sets1);
    experiment_seed(examples, "kjv-threshold-consensus.ini", "kjv-tc-with-sets", sets2);
}

/* ------------------------------------------------------------------------------------------ */
/* loader states                                                                              */

static void loader_seeds(const char *name, const uint8_t *configs, int nc)
{
    primal_search s;
    primal_err err = {0};
    must(primal_search_init(&s, NULL, &err), &err, "search");
    char so[1024];
    snprintf(so, sizeof so, "%s/%s.so", FUZZ_PLUGIN_DIR, name);
    primal_loaded *pl;
    must(primal_plugin_load(&s, so, PRIMAL_KIND_LOADER, &pl, &err), &err, "plugin_load");
    const primal_loader_vt *vt = pl->desc->vtable;
    primal_tokenizer *bytes, *qwen = NULL;
    must(primal_tokenizer_open("bytes", &bytes, &err), &err, "tokenizer");
    for (int i = 0; i < nc; i++) {
        uint8_t c = configs[i];
        if (fuzz_loader_wants_qwen(name, c) && qwen == NULL)
            must(primal_tokenizer_open(FUZZ_FIXTURES "/qwen-tokenizer/tokenizer.json", &qwen,
                                       &err),
                 &err, "tokenizer");
        primal_config *cfg;
        must(fuzz_loader_config(pl->desc, name, c, &cfg, &err), &err, "config");
        primal_loader_info info = {fuzz_loader_wants_qwen(name, c) ? qwen : bytes,
                                   fuzz_loader_split(name, c), fuzz_loader_seed(c), 0, 1};
        void *ctx;
        must(vt->open(cfg, &info, &ctx, &err), &err, "open");
        int32_t tokens[2 * 17];
        uint8_t mask[2 * 16];
        for (int b = 0; b < i % 4; b++) {
            primal_batch batch = {2, 16, tokens, mask};
            if (vt->next(ctx, &batch, &err) != PRIMAL_OK)
                break;
        }
        uint8_t buf[1 + PRIMAL_LOADER_STATE_MAX];
        size_t n = 0;
        buf[0] = c;
        must(vt->save(ctx, buf + 1, PRIMAL_LOADER_STATE_MAX, &n, &err), &err, "save");
        char file[64];
        snprintf(file, sizeof file, "config-%02x-batches-%d", c, i % 4);
        put(strcmp(name, "text") == 0 ? "loader_text" : "loader_tokens", file, buf, n + 1);
        vt->close(ctx);
        primal_config_free(cfg);
    }
    primal_tokenizer_close(bytes);
    primal_tokenizer_close(qwen);
    primal_plugin_unload(pl);
    primal_search_free(&s);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: mkcorpus CORPUS_DIR EXAMPLES_DIR\n");
        return 2;
    }
    corpus = argv[1];
    if (mkdir(corpus, 0755) != 0 && errno != EEXIST)
        fuzz_fail("mkcorpus: mkdir %s: %s", corpus, strerror(errno));
    safetensors_seeds();
    checkpoint_seeds();
    tokenizer_seeds();
    experiment_seeds(argv[2]);
    /* text: train and val, shuffled and not, every chunk size and window, a doc_sep, a seed */
    static const uint8_t text_cfg[] = {0x00, 0x02, 0x06, 0x12, 0x1a, 0x2e, 0x36, 0x03,
                                       0x41, 0x46, 0x8a, 0xc2};
    loader_seeds("text", text_cfg, (int)sizeof text_cfg);
    /* tokens: each file set, train and val, shuffled and not */
    static const uint8_t tokens_cfg[] = {0x00, 0x02, 0x20, 0x21, 0x06, 0x0a, 0x2a,
                                         0x0e, 0x8c, 0x23};
    loader_seeds("tokens", tokens_cfg, (int)sizeof tokens_cfg);
    return 0;
}
