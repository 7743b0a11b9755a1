/* tokenizer.c: text <-> token ids (primal/tokenizer.h); SPEC.md "Data loaders", Tokenisers.
 *
 * "bytes": vocab 256, id = byte value, decode is the inverse, no end-of-text id.
 *
 * Byte-level BPE from a Hugging Face tokenizer.json, giving the ids of Hugging Face `tokenizers`
 * (encode with add_special_tokens=False, decode with skip_special_tokens=False).  The file must
 * declare exactly this pipeline; anything else is PRIMAL_ECONFIG naming the file and the key:
 *   model           type "BPE"; dropout null; byte_fallback false; continuing_subword_prefix
 *                   and end_of_word_suffix null or ""; ignore_merges honoured; merges as
 *                   "a b" strings or ["a","b"] pairs; all 256 byte symbols in the vocab
 *   added_tokens    cut out of the raw text first (leftmost, then longest); single_word,
 *                   lstrip, rstrip and normalized must be false; special changes nothing here
 *   normalizer      null, NFC (utf8proc), or a Sequence of those
 *   pre_tokenizer   a Sequence of Split (Regex or String, behavior "Isolated", invert false),
 *                   then ByteLevel (add_prefix_space false, use_regex false)
 *   post_processor  null, ByteLevel or TemplateProcessing (none adds ids without special tokens)
 *   decoder         ByteLevel (bytes of all tokens joined, then invalid UTF-8 -> U+FFFD)
 *   truncation, padding  null
 *
 * The Split regex runs through PCRE2 (UTF, UCP, JIT where available).  HF runs it through
 * Oniguruma, whose \s is the Unicode White_Space property; PCRE2's \s also takes U+180E, so
 * \s and \S are rewritten to \p{White_Space} and \P{White_Space} before compiling.
 *
 * BPE merges a word by lowest merge rank, leftmost first (a binary heap over a linked list of
 * symbols, as HF's Word::merge_all); merge pairs and spellings live in open-addressing hash
 * tables, and a bounded cache maps pre-token words to their ids.  Keys: none (the tokenizer is
 * named by [data] tokenizer, see loaders). */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <pcre2.h>
#include <utf8proc.h>

#include <primal/tokenizer.h>

enum { KIND_BYTES, KIND_BPE };

#define MAX_ID (1 << 24)         /* larger ids would only be a corrupt file */
#define MAX_SPLITS 8
#define NONE UINT32_MAX          /* tok_len / dec_len of an id without a token */
#define CACHE_SLOTS (1u << 17)   /* power of two; emptied when half full */
#define CACHE_MAX_WORD 256       /* longer words are merged every time */
#define CACHE_MAX_POOL (32u << 20)

typedef struct merge_slot {
    uint64_t key;   /* (left id << 32) | right id; UINT64_MAX when empty */
    uint32_t rank;  /* index in model.merges: lower merges first */
    int32_t id;     /* the merged token */
} merge_slot;

typedef struct added_tok {
    char *s;
    size_t len;
    int32_t id;
} added_tok;

typedef struct splitter {
    pcre2_code *re;
    pcre2_match_data *md;
    bool jit;
} splitter;

typedef struct cache_slot {
    uint64_t h;
    uint32_t koff, voff;    /* into cache_k, cache_v */
    uint16_t klen, vlen;    /* klen 0: empty slot */
} cache_slot;

typedef struct symbol {
    int32_t id, prev, next; /* prev/next: -1 at the ends */
    int32_t dead;           /* merged into its left neighbour */
} symbol;

typedef struct heap_item {
    uint32_t rank;
    int32_t pos, id;
} heap_item;

struct primal_tokenizer {
    int kind;
    char *path;
    int32_t vocab, eot;
    bool nfc, ignore_merges;

    /* model vocab: id -> spelling in the file (tok_len NONE: no model token), spelling -> id */
    char *spool;
    uint32_t *tok_off, *tok_len;
    int32_t *smap;          /* ids, -1 empty */
    uint32_t smap_mask;

    /* id -> decoded bytes (dec_len NONE: no token at all) */
    uint8_t *dpool;
    uint32_t *dec_off, *dec_len;

    merge_slot *merges;
    uint32_t merge_mask;
    int32_t byte_id[256];   /* the token of each byte's symbol */
    uint8_t byte_sym[256][2], byte_sym_len[256]; /* each byte's symbol in UTF-8 */

    added_tok *added;       /* sorted by first byte, then longest first */
    size_t n_added;
    uint32_t added_start[257];

    splitter split[MAX_SPLITS];
    int n_split;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jstack;

    cache_slot *cache;
    uint32_t cache_count;
    uint8_t *cache_k;
    int32_t *cache_v;
    size_t cache_kn, cache_kcap, cache_vn, cache_vcap;

    uint8_t *norm;          /* the normalizer's output for the current segment */
    size_t norm_n, norm_cap;

    symbol *sym;
    heap_item *heap;
    size_t sym_cap, heap_cap;
};

/* ---- GPT-2 byte <-> unicode alphabet ---- */

/* Printable Latin-1 bytes stand for themselves; the other 68 take 256, 257, ... in byte order. */
static void byte_alphabet(uint32_t cp[256], int16_t rev[256 + 68])
{
    for (int i = 0; i < 256 + 68; i++)
        rev[i] = -1;
    uint32_t extra = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        cp[b] = printable ? (uint32_t)b : extra++;
        rev[cp[b]] = (int16_t)b;
    }
}

static size_t utf8_put(uint8_t *o, uint32_t c)
{
    if (c < 0x80) {
        o[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (uint8_t)(0xc0 | c >> 6);
        o[1] = (uint8_t)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (uint8_t)(0xe0 | c >> 12);
        o[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
        o[2] = (uint8_t)(0x80 | (c & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | c >> 18);
    o[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3f));
    o[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
    o[3] = (uint8_t)(0x80 | (c & 0x3f));
    return 4;
}

/* Length (1..4) of the well-formed UTF-8 sequence at s, or 0; then *bad is the length of its
 * maximal ill-formed prefix (>= 1), the unit that Rust's from_utf8_lossy replaces by one U+FFFD
 * (Unicode 15, section 3.9, "U+FFFD Substitution of Maximal Subparts"). */
static size_t utf8_seq(const uint8_t *s, size_t n, size_t *bad)
{
    uint8_t c = s[0], lo = 0x80, hi = 0xbf;
    size_t need;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        need = 1;
    else if (c == 0xe0)
        need = 2, lo = 0xa0;
    else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef)
        need = 2;
    else if (c == 0xed)
        need = 2, hi = 0x9f;
    else if (c == 0xf0)
        need = 3, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3)
        need = 3;
    else if (c == 0xf4)
        need = 3, hi = 0x8f;
    else {
        *bad = 1;
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80, hi = 0xbf;
    }
    return need + 1;
}

/* Offset of the first ill-formed sequence, or n. */
static size_t utf8_check(const uint8_t *s, size_t n)
{
    size_t i = 0, bad;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq(s + i, n - i, &bad);
        if (k == 0)
            return i;
        i += k;
    }
    return n;
}

/* ---- hashing ---- */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0x243f6a8885a308d3ull ^ (n * 0x9e3779b97f4a7c15ull), w;
    while (n >= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x9e3779b97f4a7c15ull;
        h ^= h >> 32;
        s += 8, n -= 8;
    }
    w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 29);
}

static uint32_t table_size(size_t n)
{
    uint32_t size = 16;
    while (size < 2 * n)
        size *= 2;
    return size;
}

static int32_t smap_find(const primal_tokenizer *t, const char *s, size_t n)
{
    if (t->smap == NULL)
        return -1;
    for (uint32_t i = (uint32_t)hash_bytes(s, n) & t->smap_mask;; i = (i + 1) & t->smap_mask) {
        int32_t id = t->smap[i];
        if (id < 0)
            return -1;
        if (t->tok_len[id] == n && memcmp(t->spool + t->tok_off[id], s, n) == 0)
            return id;
    }
}

static void smap_insert(primal_tokenizer *t, int32_t id)
{
    uint32_t i = (uint32_t)hash_bytes(t->spool + t->tok_off[id], t->tok_len[id]) & t->smap_mask;
    while (t->smap[i] >= 0)
        i = (i + 1) & t->smap_mask;
    t->smap[i] = id;
}

static uint32_t merge_hash(uint64_t key, uint32_t mask)
{
    return (uint32_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & mask;
}

static inline bool merge_find(const primal_tokenizer *t, int32_t a, int32_t b, uint32_t *rank,
                              int32_t *id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint32_t i = merge_hash(key, t->merge_mask);; i = (i + 1) & t->merge_mask) {
        const merge_slot *m = &t->merges[i];
        if (m->key == key) {
            *rank = m->rank;
            *id = m->id;
            return true;
        }
        if (m->key == UINT64_MAX)
            return false;
    }
}

/* A later duplicate overwrites, as HF's collect() into a HashMap does. */
static void merge_insert(primal_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t i = merge_hash(key, t->merge_mask);
    while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key)
        i = (i + 1) & t->merge_mask;
    t->merges[i] = (merge_slot){ key, rank, id };
}

/* ---- primal_ids ---- */

static int ids_reserve(primal_ids *out, size_t extra, primal_err *err)
{
    if (out->cap - out->n >= extra)
        return PRIMAL_OK;
    size_t cap = out->cap ? out->cap : 256;
    while (cap - out->n < extra) {
        if (cap > SIZE_MAX / 2 / sizeof *out->v)
            return primal_errf(err, PRIMAL_ENOMEM, "token ids: %zu ids do not fit in memory",
                               out->n + extra);
        cap *= 2;
    }
    int32_t *v = realloc(out->v, cap * sizeof *v);
    if (v == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "token ids: cannot grow to %zu ids", cap);
    out->v = v;
    out->cap = cap;
    return PRIMAL_OK;
}

int primal_ids_push(primal_ids *out, int32_t id, primal_err *err)
{
    int rc = ids_reserve(out, 1, err);
    if (rc != PRIMAL_OK)
        return rc;
    out->v[out->n++] = id;
    return PRIMAL_OK;
}

/* ---- loading a tokenizer.json ---- */

static int refuse(primal_tokenizer *t, primal_err *err, const char *key, const char *what)
{
    return primal_errf(err, PRIMAL_ECONFIG, "%s: %s: %s", t->path, key, what);
}

static const char *type_of(const json_t *o)
{
    const char *s = json_string_value(json_object_get(o, "type"));
    return s ? s : "(none)";
}

/* *v = the boolean at key, or dflt when it is absent or null. */
static int get_bool(primal_tokenizer *t, const json_t *o, const char *key, bool dflt, bool *v,
                    const char *where, primal_err *err)
{
    json_t *j = json_object_get(o, key);
    if (j == NULL || json_is_null(j)) {
        *v = dflt;
        return PRIMAL_OK;
    }
    if (!json_is_boolean(j))
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s.%s: expected true or false", t->path,
                           where, key);
    *v = json_is_true(j);
    return PRIMAL_OK;
}

/* A key whose only supported value is `want` (absent counts as dflt). */
static int want_bool(primal_tokenizer *t, const json_t *o, const char *key, bool dflt, bool want,
                     const char *where, primal_err *err)
{
    bool v = dflt;
    int rc = get_bool(t, o, key, dflt, &v, where, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (v != want)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s.%s: %s is not supported (only %s)",
                           t->path, where, key, v ? "true" : "false", want ? "true" : "false");
    return PRIMAL_OK;
}

static int load_normalizer(primal_tokenizer *t, const json_t *n, const char *where,
                           primal_err *err)
{
    if (n == NULL || json_is_null(n))
        return PRIMAL_OK;
    const char *type = type_of(n);
    if (strcmp(type, "NFC") == 0) {
        t->nfc = true;
        return PRIMAL_OK;
    }
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list))
            return primal_errf(err, PRIMAL_ECONFIG, "%s: %s.normalizers: expected an array",
                               t->path, where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", where, i);
            int rc = load_normalizer(t, json_array_get(list, i), sub, err);
            if (rc != PRIMAL_OK)
                return rc;
        }
        return PRIMAL_OK;
    }
    return primal_errf(err, PRIMAL_ECONFIG,
                       "%s: %s: type \"%s\" is not supported (NFC, a Sequence of NFC, or null)",
                       t->path, where, type);
}

/* Oniguruma's \s is White_Space; see the file comment.  Escapes other than \s, \S and the
 * \Q...\E literal span are copied as they are. */
static char *rewrite_spaces(const char *p)
{
    size_t n = strlen(p), o = 0;
    char *out = malloc(n * 8 + 1);
    if (out == NULL)
        return NULL;
    bool literal = false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\\' || i + 1 == n) {
            out[o++] = p[i];
            continue;
        }
        char c = p[i + 1];
        i++;
        if (literal) {
            if (c == 'E')
                literal = false;
            out[o++] = '\\';
            out[o++] = c;
        } else if (c == 's' || c == 'S') {
            const char *w = c == 's' ? "\\p{White_Space}" : "\\P{White_Space}";
            memcpy(out + o, w, strlen(w));
            o += strlen(w);
        } else {
            if (c == 'Q')
                literal = true;
            out[o++] = '\\';
            out[o++] = c;
        }
    }
    out[o] = '\0';
    return out;
}

static int load_split(primal_tokenizer *t, const json_t *s, const char *where, primal_err *err)
{
    const char *behavior = json_string_value(json_object_get(s, "behavior"));
    if (behavior == NULL || strcmp(behavior, "Isolated") != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: %s.behavior: \"%s\" is not supported (only \"Isolated\")",
                           t->path, where, behavior ? behavior : "(none)");
    int rc = want_bool(t, s, "invert", false, false, where, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (t->n_split == MAX_SPLITS)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s: more than %d Split steps", t->path,
                           where, MAX_SPLITS);

    json_t *pat = json_object_get(s, "pattern");
    const char *regex = json_string_value(json_object_get(pat, "Regex"));
    const char *literal = json_string_value(json_object_get(pat, "String"));
    if ((regex == NULL) == (literal == NULL))
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: %s.pattern: expected {\"Regex\": ...} or {\"String\": ...}",
                           t->path, where);
    char *text = regex ? rewrite_spaces(regex) : strdup(literal);
    if (text == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: %s.pattern: out of memory", t->path, where);
    int ecode;
    PCRE2_SIZE eoff;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (regex ? 0 : PCRE2_LITERAL);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)text, PCRE2_ZERO_TERMINATED, opts, &ecode, &eoff,
                                   NULL);
    free(text);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s.pattern: PCRE2 cannot compile it: %s",
                           t->path, where, (const char *)msg);
    }
    splitter *sp = &t->split[t->n_split++];
    sp->re = re;
    sp->jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    sp->md = pcre2_match_data_create_from_pattern(re, NULL);
    if (sp->md == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: %s.pattern: out of memory", t->path, where);
    return PRIMAL_OK;
}

static int load_byte_level(primal_tokenizer *t, const json_t *b, const char *where,
                           primal_err *err)
{
    /* Absent means HF's default, true, for both. */
    int rc = want_bool(t, b, "add_prefix_space", true, false, where, err);
    if (rc == PRIMAL_OK)
        rc = want_bool(t, b, "use_regex", true, false, where, err);
    return rc;
}

static int load_pre_tokenizer(primal_tokenizer *t, const json_t *p, primal_err *err)
{
    if (p == NULL || json_is_null(p))
        return refuse(t, err, "pre_tokenizer", "null is not supported (byte-level BPE needs a "
                      "ByteLevel pre-tokenizer)");
    const char *type = type_of(p);
    if (strcmp(type, "ByteLevel") == 0)
        return load_byte_level(t, p, "pre_tokenizer", err);
    if (strcmp(type, "Sequence") != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: pre_tokenizer: type \"%s\" is not supported (a Sequence of "
                           "Split steps and a final ByteLevel)", t->path, type);
    json_t *list = json_object_get(p, "pretokenizers");
    size_t n = json_array_size(list);
    if (!json_is_array(list) || n == 0)
        return refuse(t, err, "pre_tokenizer.pretokenizers", "expected a non-empty array");
    for (size_t i = 0; i < n; i++) {
        json_t *step = json_array_get(list, i);
        const char *st = type_of(step);
        char where[64];
        snprintf(where, sizeof where, "pre_tokenizer.pretokenizers[%zu]", i);
        int rc;
        if (strcmp(st, "Split") == 0 && i + 1 < n)
            rc = load_split(t, step, where, err);
        else if (strcmp(st, "ByteLevel") == 0 && i + 1 == n)
            rc = load_byte_level(t, step, where, err);
        else
            rc = primal_errf(err, PRIMAL_ECONFIG,
                             "%s: %s: type \"%s\" is not supported here (Split steps, then one "
                             "ByteLevel last)", t->path, where, st);
        if (rc != PRIMAL_OK)
            return rc;
    }
    return PRIMAL_OK;
}

static int load_model_options(primal_tokenizer *t, const json_t *m, primal_err *err)
{
    if (!json_is_object(m))
        return refuse(t, err, "model", "missing or not an object");
    const char *type = json_string_value(json_object_get(m, "type"));
    if (type == NULL || strcmp(type, "BPE") != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: model.type: \"%s\" is not supported (only \"BPE\")", t->path,
                           type ? type : "(none)");
    json_t *dropout = json_object_get(m, "dropout");
    if (dropout != NULL && !json_is_null(dropout))
        return refuse(t, err, "model.dropout", "only null is supported");
    static const char *const affixes[] = { "continuing_subword_prefix", "end_of_word_suffix" };
    for (int i = 0; i < 2; i++) {
        json_t *a = json_object_get(m, affixes[i]);
        if (a != NULL && !json_is_null(a) &&
            !(json_is_string(a) && json_string_length(a) == 0))
            return primal_errf(err, PRIMAL_ECONFIG,
                               "%s: model.%s: only null or \"\" is supported", t->path,
                               affixes[i]);
    }
    int rc = want_bool(t, m, "byte_fallback", false, false, "model", err);
    if (rc == PRIMAL_OK)
        rc = get_bool(t, m, "ignore_merges", false, &t->ignore_merges, "model", err);
    if (rc != PRIMAL_OK)
        return rc;
    if (!json_is_object(json_object_get(m, "vocab")))
        return refuse(t, err, "model.vocab", "missing or not an object");
    json_t *merges = json_object_get(m, "merges");
    if (merges != NULL && !json_is_array(merges))
        return refuse(t, err, "model.merges", "not an array");
    return PRIMAL_OK;
}

/* The pieces that only need checking; the vocab comes after them so that a refusal is quick. */
static int load_options(primal_tokenizer *t, const json_t *root, primal_err *err)
{
    static const char *const nulls[] = { "truncation", "padding" };
    for (int i = 0; i < 2; i++) {
        json_t *j = json_object_get(root, nulls[i]);
        if (j != NULL && !json_is_null(j))
            return refuse(t, err, nulls[i], "only null is supported");
    }
    int rc = load_normalizer(t, json_object_get(root, "normalizer"), "normalizer", err);
    if (rc == PRIMAL_OK)
        rc = load_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), err);
    if (rc != PRIMAL_OK)
        return rc;

    json_t *pp = json_object_get(root, "post_processor");
    if (pp != NULL && !json_is_null(pp) && strcmp(type_of(pp), "ByteLevel") != 0 &&
        strcmp(type_of(pp), "TemplateProcessing") != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: post_processor: type \"%s\" is not supported (null, ByteLevel "
                           "or TemplateProcessing)", t->path, type_of(pp));
    json_t *dec = json_object_get(root, "decoder");
    if (dec == NULL || json_is_null(dec) || strcmp(type_of(dec), "ByteLevel") != 0)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s: decoder: type \"%s\" is not supported (only ByteLevel)", t->path,
                           dec && !json_is_null(dec) ? type_of(dec) : "null");
    return load_model_options(t, json_object_get(root, "model"), err);
}

static int check_added(primal_tokenizer *t, const json_t *a, size_t i, int32_t *maxid,
                       primal_err *err)
{
    char where[64];
    snprintf(where, sizeof where, "added_tokens[%zu]", i);
    json_t *id = json_object_get(a, "id");
    const char *content = json_string_value(json_object_get(a, "content"));
    if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= MAX_ID)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s.id: expected an integer in [0, %d)",
                           t->path, where, MAX_ID);
    if (content == NULL || content[0] == '\0')
        return primal_errf(err, PRIMAL_ECONFIG, "%s: %s.content: expected a non-empty string",
                           t->path, where);
    static const char *const flags[] = { "single_word", "lstrip", "rstrip", "normalized" };
    for (int k = 0; k < 4; k++) {
        int rc = want_bool(t, a, flags[k], false, false, where, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    bool special;
    int rc = get_bool(t, a, "special", false, &special, where, err);
    if (rc != PRIMAL_OK)
        return rc;
    if ((int32_t)json_integer_value(id) > *maxid)
        *maxid = (int32_t)json_integer_value(id);
    return PRIMAL_OK;
}

static int cmp_added(const void *pa, const void *pb)
{
    const added_tok *a = pa, *b = pb;
    uint8_t fa = (uint8_t)a->s[0], fb = (uint8_t)b->s[0];
    if (fa != fb)
        return fa < fb ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* HF's ByteLevel decoder: each char back to its byte; a token with a char outside the
 * alphabet contributes its UTF-8 bytes unchanged. */
static size_t decode_spelling(const char *s, size_t n, const int16_t rev[256 + 68], uint8_t *o)
{
    size_t k = 0;
    utf8proc_ssize_t i = 0;
    while ((size_t)i < n) {
        utf8proc_int32_t c;
        utf8proc_ssize_t step = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                                 (utf8proc_ssize_t)n - i, &c);
        if (step <= 0 || c < 0 || c >= 256 + 68 || rev[c] < 0) {
            memcpy(o, s, n);
            return n;
        }
        o[k++] = (uint8_t)rev[c];
        i += step;
    }
    return k;
}

static int load_vocab(primal_tokenizer *t, const json_t *root, primal_err *err)
{
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (added != NULL && !json_is_null(added) && !json_is_array(added))
        return refuse(t, err, "added_tokens", "not an array");

    /* Sizes first: the arrays are indexed by id. */
    int32_t maxid = -1;
    size_t spool_n = 0;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= MAX_ID)
            return primal_errf(err, PRIMAL_ECONFIG,
                               "%s: model.vocab: \"%s\": expected an integer id in [0, %d)",
                               t->path, key, MAX_ID);
        if ((int32_t)json_integer_value(val) > maxid)
            maxid = (int32_t)json_integer_value(val);
        spool_n += strlen(key);
    }
    size_t n_added = json_array_size(added);
    for (size_t i = 0; i < n_added; i++) {
        int rc = check_added(t, json_array_get(added, i), i, &maxid, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    if (maxid < 0)
        return refuse(t, err, "model.vocab", "empty");
    t->vocab = maxid + 1;
    size_t nv = (size_t)t->vocab;

    t->spool = malloc(spool_n + 1);
    t->tok_off = malloc(nv * sizeof *t->tok_off);
    t->tok_len = malloc(nv * sizeof *t->tok_len);
    t->dec_off = malloc(nv * sizeof *t->dec_off);
    t->dec_len = malloc(nv * sizeof *t->dec_len);
    uint32_t smap_size = table_size(json_object_size(vocab));
    t->smap = malloc(smap_size * sizeof *t->smap);
    t->smap_mask = smap_size - 1;
    t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
    if (!t->spool || !t->tok_off || !t->tok_len || !t->dec_off || !t->dec_len || !t->smap ||
        !t->added)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory for %d tokens", t->path,
                           t->vocab);
    for (size_t i = 0; i < nv; i++)
        t->tok_len[i] = t->dec_len[i] = NONE;
    memset(t->smap, 0xff, smap_size * sizeof *t->smap);

    size_t off = 0;
    json_object_foreach(vocab, key, val) {
        int32_t id = (int32_t)json_integer_value(val);
        size_t len = strlen(key);
        if (t->tok_len[id] != NONE)
            return primal_errf(err, PRIMAL_ECONFIG,
                               "%s: model.vocab: id %d is given to both \"%.*s\" and \"%s\"",
                               t->path, id, (int)t->tok_len[id], t->spool + t->tok_off[id],
                               key);
        memcpy(t->spool + off, key, len);
        t->tok_off[id] = (uint32_t)off;
        t->tok_len[id] = (uint32_t)len;
        off += len;
        smap_insert(t, id);
    }

    uint32_t cp[256];
    int16_t rev[256 + 68];
    byte_alphabet(cp, rev);
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        size_t k = utf8_put(u, cp[b]);
        t->byte_id[b] = smap_find(t, (const char *)u, k);
        memcpy(t->byte_sym[b], u, k);
        t->byte_sym_len[b] = (uint8_t)k;
        if (t->byte_id[b] < 0)
            return primal_errf(err, PRIMAL_ECONFIG,
                               "%s: model.vocab: the byte-level symbol for byte 0x%02x (U+%04X) "
                               "is missing", t->path, b, (unsigned)cp[b]);
    }

    /* Merges: rank = position; both halves and their concatenation must be tokens. */
    size_t nm = json_array_size(merges);
    uint32_t msize = table_size(nm);
    t->merges = malloc(msize * sizeof *t->merges);
    if (t->merges == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory for %zu merges", t->path, nm);
    memset(t->merges, 0xff, msize * sizeof *t->merges);
    t->merge_mask = msize - 1;
    char *buf = NULL;
    size_t buf_cap = 0;
    int rc = PRIMAL_OK;
    for (size_t i = 0; i < nm && rc == PRIMAL_OK; i++) {
        json_t *m = json_array_get(merges, i);
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (sp != NULL && strchr(sp + 1, ' ') == NULL) {
                la = (size_t)(sp - a);
                b = sp + 1;
                lb = strlen(b);
            }
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            la = strlen(a);
            lb = strlen(b);
        }
        if (b == NULL) {
            rc = primal_errf(err, PRIMAL_ECONFIG,
                             "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]",
                             t->path, i);
            break;
        }
        if (la + lb + 1 > buf_cap) {
            buf_cap = 2 * (la + lb + 1);
            char *nb = realloc(buf, buf_cap);
            if (nb == NULL) {
                rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", t->path);
                break;
            }
            buf = nb;
        }
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t ia = smap_find(t, a, la), ib = smap_find(t, b, lb);
        int32_t in = smap_find(t, buf, la + lb);
        if (ia < 0 || ib < 0 || in < 0) {
            const char *miss = ia < 0 ? a : ib < 0 ? b : buf;
            int mlen = (int)(ia < 0 ? la : ib < 0 ? lb : la + lb);
            rc = primal_errf(err, PRIMAL_ECONFIG,
                             "%s: model.merges[%zu]: \"%.*s\" is not in the vocab", t->path, i,
                             mlen, miss);
            break;
        }
        merge_insert(t, ia, ib, (uint32_t)i, in);
    }
    free(buf);
    if (rc != PRIMAL_OK)
        return rc;

    /* Added tokens, and every id's decoded bytes (an added token's content wins, as in HF). */
    size_t dpool_n = spool_n;
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        const char *content = json_string_value(json_object_get(a, "content"));
        added_tok *at = &t->added[t->n_added++];
        at->len = strlen(content);
        at->s = strdup(content);
        at->id = (int32_t)json_integer_value(json_object_get(a, "id"));
        if (at->s == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", t->path);
        dpool_n += at->len;
    }
    t->dpool = malloc(dpool_n + 1);
    if (t->dpool == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", t->path);
    size_t doff = 0;
    for (size_t i = 0; i < n_added; i++) {
        const added_tok *at = &t->added[i];
        t->dec_off[at->id] = (uint32_t)doff;
        t->dec_len[at->id] = (uint32_t)decode_spelling(at->s, at->len, rev, t->dpool + doff);
        doff += t->dec_len[at->id];
    }
    for (size_t id = 0; id < nv; id++) {
        if (t->tok_len[id] == NONE || t->dec_len[id] != NONE)
            continue;
        t->dec_off[id] = (uint32_t)doff;
        t->dec_len[id] = (uint32_t)decode_spelling(t->spool + t->tok_off[id], t->tok_len[id],
                                                   rev, t->dpool + doff);
        doff += t->dec_len[id];
    }

    qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    size_t k = 0;
    for (int c = 0; c <= 256; c++) {
        while (k < t->n_added && (uint8_t)t->added[k].s[0] < c)
            k++;
        t->added_start[c] = (uint32_t)k;
    }
    t->eot = primal_tokenizer_id(t, "<|endoftext|>");
    return PRIMAL_OK;
}

static int open_bpe(primal_tokenizer *t, primal_err *err)
{
    /* jansson reads a directory as an empty text: "not valid JSON" would hide the mistake */
    struct stat sb;
    if (stat(t->path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return primal_errf(err, PRIMAL_EIO, "%s: is a directory, not a tokenizer.json", t->path);
    json_error_t jerr;
    json_t *root = json_load_file(t->path, 0, &jerr);
    if (root == NULL) {
        if (jerr.line < 0)
            return primal_errf(err, PRIMAL_EIO, "%s: cannot read: %s", t->path, jerr.text);
        return primal_errf(err, PRIMAL_EIO, "%s:%d:%d: not valid JSON: %s", t->path, jerr.line,
                           jerr.column, jerr.text);
    }
    int rc = json_is_object(root) ? PRIMAL_OK
                                  : refuse(t, err, "(top level)", "expected a JSON object");
    if (rc == PRIMAL_OK)
        rc = load_options(t, root, err);
    if (rc == PRIMAL_OK)
        rc = load_vocab(t, root, err);
    json_decref(root);
    if (rc != PRIMAL_OK)
        return rc;

    t->mctx = pcre2_match_context_create(NULL);
    t->jstack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (t->mctx == NULL || t->jstack == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", t->path);
    pcre2_jit_stack_assign(t->mctx, NULL, t->jstack);
    return PRIMAL_OK;
}

int primal_tokenizer_open(const char *spec, primal_tokenizer **out, primal_err *err)
{
    *out = NULL;
    if (spec == NULL || spec[0] == '\0')
        return primal_errf(err, PRIMAL_ECONFIG,
                           "tokenizer: empty name (\"bytes\" or a tokenizer.json path)");
    primal_tokenizer *t = calloc(1, sizeof *t);
    if (t == NULL || (t->path = strdup(spec)) == NULL) {
        free(t);
        return primal_errf(err, PRIMAL_ENOMEM, "tokenizer %s: out of memory", spec);
    }
    t->eot = -1;
    if (strcmp(spec, "bytes") == 0) {
        t->kind = KIND_BYTES;
        t->vocab = 256;
    } else {
        t->kind = KIND_BPE;
        int rc = open_bpe(t, err);
        if (rc != PRIMAL_OK) {
            primal_tokenizer_close(t);
            return rc;
        }
    }
    *out = t;
    return PRIMAL_OK;
}

void primal_tokenizer_close(primal_tokenizer *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < t->n_split; i++) {
        pcre2_match_data_free(t->split[i].md);
        pcre2_code_free(t->split[i].re);
    }
    pcre2_match_context_free(t->mctx);
    if (t->jstack != NULL)
        pcre2_jit_stack_free(t->jstack);
    for (size_t i = 0; i < t->n_added; i++)
        free(t->added[i].s);
    free(t->added);
    free(t->spool);
    free(t->tok_off);
    free(t->tok_len);
    free(t->smap);
    free(t->dpool);
    free(t->dec_off);
    free(t->dec_len);
    free(t->merges);
    free(t->cache);
    free(t->cache_k);
    free(t->cache_v);
    free(t->norm);
    free(t->sym);
    free(t->heap);
    free(t->path);
    free(t);
}

int32_t primal_tokenizer_vocab(const primal_tokenizer *t)
{
    return t->vocab;
}

int32_t primal_tokenizer_id(const primal_tokenizer *t, const char *token)
{
    size_t n = strlen(token);
    if (t->kind == KIND_BYTES)
        return n == 1 ? (uint8_t)token[0] : -1;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].s, token, n) == 0)
            return t->added[i].id;
    return smap_find(t, token, n);
}

int32_t primal_tokenizer_eot(const primal_tokenizer *t)
{
    return t->eot;
}

int primal_tokenizer_separator(primal_tokenizer *t, int32_t *id, primal_err *err)
{
    *id = primal_tokenizer_eot(t);
    if (*id >= 0)
        return PRIMAL_OK;
    primal_ids ids = {0};
    int rc = primal_tokenizer_encode(t, "\n", 1, &ids, err);
    if (rc == PRIMAL_OK && ids.n != 1)
        rc = primal_errf(err, PRIMAL_ECONFIG, "[data] tokenizer: no <|endoftext|> and \"\\n\" "
                         "is %zu tokens, so documents cannot be separated", ids.n);
    if (rc == PRIMAL_OK)
        *id = ids.v[0];
    free(ids.v);
    return rc;
}

/* ---- encoding ---- */

static bool heap_less(const heap_item *a, const heap_item *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(heap_item *h, size_t *n, heap_item x)
{
    size_t i = (*n)++;
    while (i > 0 && heap_less(&x, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

static heap_item heap_pop(heap_item *h, size_t *n)
{
    heap_item top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c]))
            c++;
        if (!heap_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

/* Merge n >= 2 byte symbols by rank, lowest first, leftmost among equals (HF Word::merge_all:
 * a queue entry is stale once its left symbol is gone, is last, or no longer pairs to the same
 * token).  Appends the resulting ids to out. */
static int bpe_merge(primal_tokenizer *t, const uint8_t *s, size_t n, primal_ids *out,
                     primal_err *err)
{
    if (n > INT32_MAX / 3)
        return primal_errf(err, PRIMAL_ERROR, "%s: a %zu-byte pre-token is too long for BPE",
                           t->path, n);
    if (n > t->sym_cap || 3 * n > t->heap_cap) {
        symbol *sym = realloc(t->sym, n * sizeof *sym);
        if (sym != NULL)
            t->sym = sym;
        heap_item *heap = realloc(t->heap, 3 * n * sizeof *heap);
        if (heap != NULL)
            t->heap = heap;
        if (sym == NULL || heap == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "tokenizer: out of memory for a %zu-byte "
                               "word", n);
        t->sym_cap = n;
        t->heap_cap = 3 * n;
    }
    symbol *sym = t->sym;
    heap_item *heap = t->heap;
    size_t nh = 0;
    for (size_t i = 0; i < n; i++)
        sym[i] = (symbol){ t->byte_id[s[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, 0 };
    for (size_t i = 0; i + 1 < n; i++) {
        heap_item h = { 0, (int32_t)i, 0 };
        if (merge_find(t, sym[i].id, sym[i + 1].id, &h.rank, &h.id))
            heap_push(heap, &nh, h);
    }
    while (nh > 0) {
        heap_item top = heap_pop(heap, &nh);
        symbol *l = &sym[top.pos];
        if (l->dead || l->next < 0)
            continue;
        symbol *r = &sym[l->next];
        uint32_t rank;
        int32_t id;
        if (!merge_find(t, l->id, r->id, &rank, &id) || id != top.id)
            continue;
        l->id = id;
        r->dead = 1;
        l->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = top.pos;
        heap_item h;
        if (l->prev >= 0 && merge_find(t, sym[l->prev].id, l->id, &h.rank, &h.id)) {
            h.pos = l->prev;
            heap_push(heap, &nh, h);
        }
        if (l->next >= 0 && merge_find(t, l->id, sym[l->next].id, &h.rank, &h.id)) {
            h.pos = top.pos;
            heap_push(heap, &nh, h);
        }
    }
    size_t count = 0;
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        count++;
    int rc = ids_reserve(out, count, err);
    if (rc != PRIMAL_OK)
        return rc;
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        out->v[out->n++] = sym[i].id;
    return PRIMAL_OK;
}

static void cache_clear(primal_tokenizer *t)
{
    memset(t->cache, 0, CACHE_SLOTS * sizeof *t->cache);
    t->cache_count = 0;
    t->cache_kn = t->cache_vn = 0;
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 1 << 16;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (q == NULL)
        return false;
    *p = q;
    *cap = c;
    return true;
}

/* Remember word -> ids[0..k); the cache is only an accelerator, so failures are ignored. */
static void cache_put(primal_tokenizer *t, uint64_t h, const uint8_t *s, size_t n,
                      const int32_t *ids, size_t k)
{
    if (t->cache == NULL && (t->cache = calloc(CACHE_SLOTS, sizeof *t->cache)) == NULL)
        return;
    if (t->cache_count >= CACHE_SLOTS / 2 || t->cache_kn + n > CACHE_MAX_POOL)
        cache_clear(t);
    if (!grow((void **)&t->cache_k, &t->cache_kcap, t->cache_kn + n, 1) ||
        !grow((void **)&t->cache_v, &t->cache_vcap, t->cache_vn + k, sizeof *t->cache_v))
        return;
    uint32_t i = (uint32_t)h & (CACHE_SLOTS - 1);
    while (t->cache[i].klen != 0)
        i = (i + 1) & (CACHE_SLOTS - 1);
    t->cache[i] = (cache_slot){ h, (uint32_t)t->cache_kn, (uint32_t)t->cache_vn, (uint16_t)n,
                                (uint16_t)k };
    memcpy(t->cache_k + t->cache_kn, s, n);
    memcpy(t->cache_v + t->cache_vn, ids, k * sizeof *ids);
    t->cache_kn += n;
    t->cache_vn += k;
    t->cache_count++;
}

static const cache_slot *cache_get(const primal_tokenizer *t, uint64_t h, const uint8_t *s,
                                   size_t n)
{
    if (t->cache == NULL)
        return NULL;
    for (uint32_t i = (uint32_t)h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        const cache_slot *c = &t->cache[i];
        if (c->klen == 0)
            return NULL;
        if (c->h == h && c->klen == n && memcmp(t->cache_k + c->koff, s, n) == 0)
            return c;
    }
}

/* One pre-token: ids of its bytes' symbols after merging. */
static int bpe_word(primal_tokenizer *t, const uint8_t *s, size_t n, primal_ids *out,
                    primal_err *err)
{
    if (n == 1)
        return primal_ids_push(out, t->byte_id[s[0]], err);
    if (t->ignore_merges) {
        /* A word that is a token as a whole is taken as it is (HF BPE ignore_merges). */
        uint8_t stackbuf[512] = {0}; /* zeroed only to quiet a -O1 false positive */
        uint8_t *u = n <= 256 ? stackbuf : malloc(2 * n);
        if (u == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "tokenizer: out of memory");
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(u + k, t->byte_sym[s[i]], t->byte_sym_len[s[i]]);
            k += t->byte_sym_len[s[i]];
        }
        int32_t id = smap_find(t, (const char *)u, k);
        if (u != stackbuf)
            free(u);
        if (id >= 0)
            return primal_ids_push(out, id, err);
    }
    if (n > CACHE_MAX_WORD)
        return bpe_merge(t, s, n, out, err);
    uint64_t h = hash_bytes(s, n);
    const cache_slot *c = cache_get(t, h, s, n);
    if (c != NULL) {
        int rc = ids_reserve(out, c->vlen, err);
        if (rc != PRIMAL_OK)
            return rc;
        memcpy(out->v + out->n, t->cache_v + c->voff, c->vlen * sizeof *out->v);
        out->n += c->vlen;
        return PRIMAL_OK;
    }
    size_t first = out->n;
    int rc = bpe_merge(t, s, n, out, err);
    if (rc == PRIMAL_OK)
        cache_put(t, h, s, n, out->v + first, out->n - first);
    return rc;
}

static size_t utf8_len(uint8_t c)
{
    return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

/* Split step `level` (HF Split, behavior Isolated): matches and the gaps between them each
 * become a piece, empty pieces are dropped; each piece goes to the next step on its own. */
static int pre_tokenize(primal_tokenizer *t, int level, const uint8_t *s, size_t n,
                        primal_ids *out, primal_err *err)
{
    if (level == t->n_split)
        return bpe_word(t, s, n, out, err);
    const splitter *sp = &t->split[level];
    size_t last = 0, from = 0;
    int rc = PRIMAL_OK;
    while (from < n && rc == PRIMAL_OK) {
        int m = sp->jit ? pcre2_jit_match(sp->re, s, n, from, 0, sp->md, t->mctx)
                        : pcre2_match(sp->re, s, n, from, PCRE2_NO_UTF_CHECK, sp->md, t->mctx);
        if (m == PCRE2_ERROR_JIT_STACKLIMIT)
            m = pcre2_match(sp->re, s, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, sp->md,
                            t->mctx);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            return primal_errf(err, PRIMAL_ERROR, "%s: pre_tokenizer Split %d: PCRE2 failed "
                               "on a %zu-byte piece: %s", t->path, level, n, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sp->md);
        size_t ms = ov[0] < last ? last : ov[0], me = ov[1];
        if (me <= ms || me <= from) {
            /* An empty match: search on from the next character, as Oniguruma does. */
            size_t at = ms > from ? ms : from;
            from = at + (at < n ? utf8_len(s[at]) : 1);
            continue;
        }
        if (ms > last)
            rc = pre_tokenize(t, level + 1, s + last, ms - last, out, err);
        if (rc == PRIMAL_OK)
            rc = pre_tokenize(t, level + 1, s + ms, me - ms, out, err);
        last = from = me;
    }
    if (rc == PRIMAL_OK && last < n)
        rc = pre_tokenize(t, level + 1, s + last, n - last, out, err);
    return rc;
}

/* Append s[0..n) to the normalisation buffer. */
static bool norm_append(primal_tokenizer *t, const uint8_t *s, size_t n)
{
    if (n == 0)
        return true;
    if (!grow((void **)&t->norm, &t->norm_cap, t->norm_n + n, 1))
        return false;
    memcpy(t->norm + t->norm_n, s, n);
    t->norm_n += n;
    return true;
}

/* NFC of s into t->norm.  A boundary before an ASCII character is always a normalisation
 * boundary (ASCII characters are starters that never compose with what precedes them), so only
 * each non-ASCII run, with the one ASCII character before it (it may be the base of a
 * combining mark), goes through utf8proc. */
static int nfc(primal_tokenizer *t, const uint8_t *s, size_t n, primal_err *err)
{
    t->norm_n = 0;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] < 0x80)
            j++;
        size_t start = j > i ? j - 1 : j, k = j;
        while (k < n && s[k] >= 0x80)
            k++;
        if (!norm_append(t, s + i, start - i))
            return primal_errf(err, PRIMAL_ENOMEM, "%s: NFC normalizer: out of memory",
                               t->path);
        if (k > start) {
            utf8proc_uint8_t *m = NULL;
            utf8proc_ssize_t len = utf8proc_map(s + start, (utf8proc_ssize_t)(k - start), &m,
                                                UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (len < 0)
                return primal_errf(err, len == UTF8PROC_ERROR_NOMEM ? PRIMAL_ENOMEM
                                                                    : PRIMAL_ERROR,
                                   "%s: NFC normalizer: %s", t->path, utf8proc_errmsg(len));
            bool ok = norm_append(t, m, (size_t)len);
            free(m);
            if (!ok)
                return primal_errf(err, PRIMAL_ENOMEM, "%s: NFC normalizer: out of memory",
                                   t->path);
        }
        i = k;
    }
    return PRIMAL_OK;
}

/* Text between added tokens: the normalizer, then the pre-tokenizer. */
static int encode_segment(primal_tokenizer *t, const uint8_t *s, size_t n, primal_ids *out,
                          primal_err *err)
{
    if (n == 0)
        return PRIMAL_OK;
    if (!t->nfc)
        return pre_tokenize(t, 0, s, n, out, err);
    int rc = nfc(t, s, n, err);
    if (rc == PRIMAL_OK)
        rc = pre_tokenize(t, 0, t->norm, t->norm_n, out, err);
    return rc;
}

/* The first added token in s[from..n), leftmost then longest. */
static const added_tok *find_added(const primal_tokenizer *t, const uint8_t *s, size_t n,
                                   size_t from, size_t *at)
{
    for (size_t i = from; i < n; i++) {
        for (uint32_t k = t->added_start[s[i]]; k < t->added_start[s[i] + 1]; k++) {
            const added_tok *a = &t->added[k];
            if (a->len <= n - i && memcmp(a->s, s + i, a->len) == 0) {
                *at = i;
                return a;
            }
        }
    }
    return NULL;
}

int primal_tokenizer_encode(primal_tokenizer *t, const char *text, size_t len, primal_ids *out,
                            primal_err *err)
{
    const uint8_t *s = (const uint8_t *)text;
    size_t n0 = out->n;
    if (len == 0)
        return PRIMAL_OK;
    size_t bad = utf8_check(s, len);
    if (bad != len)
        return primal_errf(err, PRIMAL_EIO, "tokenizer %s: invalid UTF-8 at byte offset %zu "
                           "(0x%02x)", t->path, bad, s[bad]);
    int rc;
    if (t->kind == KIND_BYTES) {
        rc = ids_reserve(out, len, err);
        if (rc != PRIMAL_OK)
            return rc;
        for (size_t i = 0; i < len; i++)
            out->v[out->n++] = s[i];
        return PRIMAL_OK;
    }
    size_t pos = 0, at = 0;
    rc = PRIMAL_OK;
    while (rc == PRIMAL_OK && pos < len) {
        const added_tok *a = t->n_added ? find_added(t, s, len, pos, &at) : NULL;
        size_t end = a ? at : len;
        rc = encode_segment(t, s + pos, end - pos, out, err);
        if (rc == PRIMAL_OK && a != NULL)
            rc = primal_ids_push(out, a->id, err);
        pos = a ? at + a->len : len;
    }
    if (rc != PRIMAL_OK)
        out->n = n0;
    return rc;
}

/* ---- decoding ---- */

int primal_tokenizer_decode(primal_tokenizer *t, const int32_t *ids, size_t n, char **text,
                            size_t *len, primal_err *err)
{
    *text = NULL;
    *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab)
            return primal_errf(err, PRIMAL_ECONFIG, "tokenizer %s: id %d at position %zu is "
                               "outside the vocabulary [0, %d)", t->path, id, i, t->vocab);
        if (t->kind == KIND_BPE && t->dec_len[id] == NONE)
            return primal_errf(err, PRIMAL_ECONFIG, "tokenizer %s: id %d at position %zu has "
                               "no token", t->path, id, i);
        total += t->kind == KIND_BYTES ? 1 : t->dec_len[id];
    }
    uint8_t *raw = malloc(total + 1);
    if (raw == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "tokenizer %s: out of memory for %zu bytes",
                           t->path, total);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (t->kind == KIND_BYTES) {
            raw[k++] = (uint8_t)ids[i];
        } else {
            memcpy(raw + k, t->dpool + t->dec_off[ids[i]], t->dec_len[ids[i]]);
            k += t->dec_len[ids[i]];
        }
    }
    raw[k] = '\0';
    if (t->kind == KIND_BYTES || utf8_check(raw, k) == k) {
        *text = (char *)raw;
        *len = k;
        return PRIMAL_OK;
    }
    /* HF's ByteLevel decoder ends in String::from_utf8_lossy. */
    uint8_t *o = malloc(3 * k + 1);
    if (o == NULL) {
        free(raw);
        return primal_errf(err, PRIMAL_ENOMEM, "tokenizer %s: out of memory for %zu bytes",
                           t->path, 3 * k);
    }
    size_t j = 0, bad;
    for (size_t i = 0; i < k;) {
        size_t q = utf8_seq(raw + i, k - i, &bad);
        if (q > 0) {
            memcpy(o + j, raw + i, q);
            j += q;
            i += q;
        } else {
            j += utf8_put(o + j, 0xfffd);
            i += bad;
        }
    }
    o[j] = '\0';
    free(raw);
    *text = (char *)o;
    *len = j;
    return PRIMAL_OK;
}
