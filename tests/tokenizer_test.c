/* tokenizer_test.c: core/tokenizer.c against outside references.
 *
 * The Qwen cases (cases.jsonl, long.txt -> long.json) are ids produced by Hugging Face
 * `tokenizers` 0.23.2; the small synthetic tokenizers are worked by hand; the refusals write
 * modified tokenizer.json files into a temporary directory. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <jansson.h>
#include <utf8proc.h>

#include <primal/tokenizer.h>

#ifndef PRIMAL_TEST_FIXTURES
#error "define PRIMAL_TEST_FIXTURES as the path of tests/fixtures"
#endif
#define QWEN PRIMAL_TEST_FIXTURES "/qwen-tokenizer/tokenizer.json"

static primal_tokenizer *open_or_fail(const char *spec)
{
    primal_err err = { 0 };
    primal_tokenizer *t = NULL;
    int rc = primal_tokenizer_open(spec, &t, &err);
    cr_assert_eq(rc, PRIMAL_OK, "open %s: %s", spec, err.msg);
    return t;
}

static void expect_ids(primal_tokenizer *t, const char *text, size_t len, const int32_t *want,
                       size_t nwant, const char *label)
{
    primal_err err = { 0 };
    primal_ids ids = { 0 };
    int rc = primal_tokenizer_encode(t, text, len, &ids, &err);
    cr_assert_eq(rc, PRIMAL_OK, "%s: %s", label, err.msg);
    cr_assert_eq(ids.n, nwant, "%s: %zu ids, expected %zu", label, ids.n, nwant);
    for (size_t i = 0; i < nwant; i++)
        cr_assert_eq(ids.v[i], want[i], "%s: id %zu is %d, expected %d", label, i, ids.v[i],
                     want[i]);
    free(ids.v);
}

static void expect_text(primal_tokenizer *t, const int32_t *ids, size_t n, const char *want,
                        size_t wlen, const char *label)
{
    primal_err err = { 0 };
    char *text = NULL;
    size_t len = 0;
    int rc = primal_tokenizer_decode(t, ids, n, &text, &len, &err);
    cr_assert_eq(rc, PRIMAL_OK, "%s: %s", label, err.msg);
    cr_assert_eq(len, wlen, "%s: decoded %zu bytes, expected %zu", label, len, wlen);
    cr_assert(memcmp(text, want, wlen) == 0, "%s: decoded text differs", label);
    cr_assert_eq(text[len], '\0', "%s: not NUL-terminated", label);
    free(text);
}

/* ids of a JSON array into a malloc'ed array */
static int32_t *json_ids(json_t *a, size_t *n)
{
    *n = json_array_size(a);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    for (size_t i = 0; i < *n; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return v;
}

/* ---- bytes ---- */

Test(tokenizer_bytes, has_vocab_256_and_no_end_of_text)
{
    primal_tokenizer *t = open_or_fail("bytes");
    cr_expect_eq(primal_tokenizer_vocab(t), 256);
    cr_expect_eq(primal_tokenizer_eot(t), -1);
    int32_t sep = -1;
    primal_err err;
    cr_expect_eq(primal_tokenizer_separator(t, &sep, &err), PRIMAL_OK);
    cr_expect_eq(sep, '\n', "documents are separated by the newline byte, got %d", (int)sep);
    cr_expect_eq(primal_tokenizer_id(t, "A"), 65);
    cr_expect_eq(primal_tokenizer_id(t, "AB"), -1);
    primal_tokenizer_close(t);
}

Test(tokenizer_bytes, encodes_each_byte_as_its_value_and_decodes_back)
{
    primal_tokenizer *t = open_or_fail("bytes");
    const char *s = "h\xc3\xa9!\n";   /* "hé!\n" */
    const int32_t want[] = { 104, 0xc3, 0xa9, 33, 10 };
    expect_ids(t, s, 5, want, 5, "bytes");
    expect_text(t, want, 5, s, 5, "bytes");
    int32_t all[256];
    char raw[256];
    for (int i = 0; i < 256; i++)
        all[i] = i, raw[i] = (char)i;
    expect_text(t, all, 256, raw, 256, "all 256 bytes");
    primal_tokenizer_close(t);
}

Test(tokenizer_bytes, rejects_an_id_of_256_naming_position_and_value)
{
    primal_tokenizer *t = open_or_fail("bytes");
    const int32_t ids[] = { 1, 2, 256 };
    primal_err err = { 0 };
    char *text = NULL;
    size_t len;
    int rc = primal_tokenizer_decode(t, ids, 3, &text, &len, &err);
    cr_expect_eq(rc, PRIMAL_ECONFIG);
    cr_expect_null(text);
    cr_expect(strstr(err.msg, "256") && strstr(err.msg, "position 2"), "message: %s", err.msg);
    primal_tokenizer_close(t);
}

/* ---- Qwen: the Hugging Face reference ids ---- */

Test(tokenizer_qwen, matches_hugging_face_on_every_line_of_cases_jsonl, .timeout = 60)
{
    primal_tokenizer *t = open_or_fail(QWEN);
    FILE *f = fopen(PRIMAL_TEST_FIXTURES "/qwen-tokenizer/cases.jsonl", "r");
    cr_assert_not_null(f);
    char line[8192];
    int lines = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        json_error_t jerr;
        json_t *c = json_loads(line, 0, &jerr);
        cr_assert_not_null(c, "cases.jsonl line %d: %s", lines + 1, jerr.text);
        const char *text = json_string_value(json_object_get(c, "text"));
        size_t tlen = json_string_length(json_object_get(c, "text")), n;
        int32_t *want = json_ids(json_object_get(c, "ids"), &n);
        char label[64];
        snprintf(label, sizeof label, "cases.jsonl line %d", ++lines);
        expect_ids(t, text, tlen, want, n, label);
        /* Decoding gives the NFC form (line 8 has e + U+0301), here from utf8proc. */
        char *nfc = (char *)utf8proc_NFC((const utf8proc_uint8_t *)text);
        expect_text(t, want, n, nfc, strlen(nfc), label);
        free(nfc);
        free(want);
        json_decref(c);
    }
    fclose(f);
    cr_expect_eq(lines, 16);
    primal_tokenizer_close(t);
}

Test(tokenizer_qwen, matches_hugging_face_on_long_txt_both_ways, .timeout = 60)
{
    primal_tokenizer *t = open_or_fail(QWEN);
    FILE *f = fopen(PRIMAL_TEST_FIXTURES "/qwen-tokenizer/long.txt", "rb");
    cr_assert_not_null(f);
    static char text[1 << 17];
    size_t tlen = fread(text, 1, sizeof text, f);
    fclose(f);
    cr_assert(tlen > 40000 && tlen < sizeof text);
    json_error_t jerr;
    json_t *ref = json_load_file(PRIMAL_TEST_FIXTURES "/qwen-tokenizer/long.json", 0, &jerr);
    cr_assert_not_null(ref, "long.json: %s", jerr.text);
    size_t n;
    int32_t *want = json_ids(json_object_get(ref, "ids"), &n);
    cr_assert_eq(n, 13181);
    expect_ids(t, text, tlen, want, n, "long.txt");
    expect_text(t, want, n, text, tlen, "long.json");
    /* A second pass runs from the word cache and must agree. */
    expect_ids(t, text, tlen, want, n, "long.txt again");
    free(want);
    json_decref(ref);
    primal_tokenizer_close(t);
}

Test(tokenizer_qwen, knows_its_vocabulary_and_added_tokens, .timeout = 60)
{
    primal_tokenizer *t = open_or_fail(QWEN);
    cr_expect_eq(primal_tokenizer_vocab(t), 151669);  /* 151,643 + 26 added */
    cr_expect_eq(primal_tokenizer_eot(t), 151643);
    int32_t sep = -1;
    primal_err err;
    cr_expect_eq(primal_tokenizer_separator(t, &sep, &err), PRIMAL_OK);
    cr_expect_eq(sep, 151643, "documents are separated by <|endoftext|>, got %d", (int)sep);
    cr_expect_eq(primal_tokenizer_id(t, "<|endoftext|>"), 151643);
    cr_expect_eq(primal_tokenizer_id(t, "<|im_start|>"), 151644);
    cr_expect_eq(primal_tokenizer_id(t, "</think>"), 151668);
    cr_expect_eq(primal_tokenizer_id(t, "Hello"), 9707);         /* cases.jsonl line 1 */
    cr_expect_eq(primal_tokenizer_id(t, "\xc4\xa0world"), 1879); /* "Ġworld" */
    cr_expect_eq(primal_tokenizer_id(t, "no such token here"), -1);
    /* An added token in mid-word is cut out whole: "a" and "b" are ids 64, 65 in the file. */
    const int32_t want[] = { 64, 151644, 65 };
    expect_ids(t, "a<|im_start|>b", 14, want, 3, "a<|im_start|>b");
    expect_text(t, want, 3, "a<|im_start|>b", 14, "decode a<|im_start|>b");
    const int32_t eot[] = { 151643, 151643 };
    expect_ids(t, "<|endoftext|><|endoftext|>", 26, eot, 2, "two <|endoftext|>");
    primal_tokenizer_close(t);
}

Test(tokenizer_qwen, normalises_to_nfc_before_splitting, .timeout = 60)
{
    /* NFC runs before the pre-tokenizer, so e + U+0301 must give the ids of U+00E9. */
    primal_tokenizer *t = open_or_fail(QWEN);
    primal_err err = { 0 };
    primal_ids a = { 0 }, b = { 0 };
    const char *composed = "caf\xc3\xa9 na\xc3\xafve";
    const char *decomposed = "cafe\xcc\x81 nai\xcc\x88ve";
    cr_assert_eq(primal_tokenizer_encode(t, composed, strlen(composed), &a, &err), PRIMAL_OK);
    cr_assert_eq(primal_tokenizer_encode(t, decomposed, strlen(decomposed), &b, &err),
                 PRIMAL_OK);
    cr_assert_eq(a.n, b.n);
    cr_expect(memcmp(a.v, b.v, a.n * sizeof *a.v) == 0);
    free(a.v);
    free(b.v);
    primal_tokenizer_close(t);
}

Test(tokenizer_qwen, rejects_invalid_utf8_naming_the_offset, .timeout = 60)
{
    primal_tokenizer *t = open_or_fail(QWEN);
    static const struct {
        const char *s;
        size_t len, off;
    } bad[] = {
        { "ab\xff" "cd", 5, 2 },             /* a byte that is never UTF-8 */
        { "abc\xe4\xbd", 5, 3 },             /* truncated at the end */
        { "x\xc0\xaf", 3, 1 },               /* overlong '/' */
        { "xy\xed\xa0\x80z", 6, 2 },         /* a surrogate */
        { "\xf4\x90\x80\x80", 4, 0 },        /* above U+10FFFF */
        { "ok \xe4\xbd\xa0 \x80", 8, 7 },    /* a lone continuation byte */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        primal_err err = { 0 };
        primal_ids ids = { 0 };
        primal_ids_push(&ids, 7, &err);
        int rc = primal_tokenizer_encode(t, bad[i].s, bad[i].len, &ids, &err);
        cr_expect_neq(rc, PRIMAL_OK, "case %zu accepted", i);
        char want[64];
        snprintf(want, sizeof want, "offset %zu", bad[i].off);
        cr_expect(strstr(err.msg, want) != NULL, "case %zu: message: %s", i, err.msg);
        cr_expect_eq(ids.n, 1, "case %zu: output changed on failure", i);
        free(ids.v);
    }
    primal_tokenizer_close(t);
}

Test(tokenizer_qwen, rejects_out_of_range_ids_naming_position_and_value, .timeout = 60)
{
    primal_tokenizer *t = open_or_fail(QWEN);
    const int32_t big[] = { 9707, 151669 }, neg[] = { -3 };
    primal_err err = { 0 };
    char *text = NULL;
    size_t len;
    cr_expect_eq(primal_tokenizer_decode(t, big, 2, &text, &len, &err), PRIMAL_ECONFIG);
    cr_expect(strstr(err.msg, "151669") && strstr(err.msg, "position 1"), "msg: %s", err.msg);
    cr_expect_eq(primal_tokenizer_decode(t, neg, 1, &text, &len, &err), PRIMAL_ECONFIG);
    cr_expect(strstr(err.msg, "-3") && strstr(err.msg, "position 0"), "msg: %s", err.msg);
    cr_expect_null(text);
    primal_tokenizer_close(t);
}

Test(tokenizer_qwen, decodes_a_partial_character_to_the_replacement_character, .timeout = 60)
{
    /* HF's ByteLevel decoder ends in String::from_utf8_lossy: the lone lead byte 0xe4 (token
     * "ä", id 160) becomes one U+FFFD; the full sequence e4 bd a0 is "你". */
    primal_tokenizer *t = open_or_fail(QWEN);
    int32_t lead = primal_tokenizer_id(t, "\xc3\xa4");
    cr_assert_eq(lead, 160);
    const int32_t one[] = { 160, 64 };
    expect_text(t, one, 2, "\xef\xbf\xbd" "a", 4, "lone lead byte");
    primal_tokenizer_close(t);
}

/* ---- small hand-worked tokenizers ---- */

/* GPT-2's byte-to-unicode table, written out here from its definition. */
static void byte_symbol(int b, char out[3])
{
    int printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    int cp = b;
    if (!printable) {
        cp = 256;
        for (int i = 0; i < b; i++) {
            int p = (i >= 0x21 && i <= 0x7e) || (i >= 0xa1 && i <= 0xac) || i >= 0xae;
            cp += !p;
        }
    }
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3f)), out[2] = 0;
    }
}

/* Byte symbol b has id b; "he" 256, "ll" 257, "hell" 258, "hello" 259, "abc" 260 (no merge
 * builds it); "<eos>" is an added token 261.  Merges, by rank: l l, h e, he ll, hell o. */
static json_t *small_tokenizer(void)
{
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        char s[3];
        byte_symbol(b, s);
        json_object_set_new(vocab, s, json_integer(b));
    }
    json_object_set_new(vocab, "he", json_integer(256));
    json_object_set_new(vocab, "ll", json_integer(257));
    json_object_set_new(vocab, "hell", json_integer(258));
    json_object_set_new(vocab, "hello", json_integer(259));
    json_object_set_new(vocab, "abc", json_integer(260));
    return json_pack(
        "{s:s, s:n, s:n, s:[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}], s:{s:s},"
        " s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]},"
        " s:n, s:{s:s, s:b, s:b, s:b},"
        " s:{s:s, s:n, s:n, s:s, s:s, s:b, s:b, s:b, s:o, s:[s, s, s, s]}}",
        "version", "1.0", "truncation", "padding",
        "added_tokens", "id", 261, "content", "<eos>", "single_word", 0, "lstrip", 0,
        "rstrip", 0, "normalized", 0, "special", 1,
        "normalizer", "type", "NFC",
        "pre_tokenizer", "type", "Sequence", "pretokenizers",
        "type", "Split", "pattern", "Regex", " ?\\p{L}+|\\s+|[^\\s\\p{L}]+", "behavior",
        "Isolated", "invert", 0,
        "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0,
        "post_processor",
        "decoder", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
        "use_regex", 0,
        "model", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix", "",
        "end_of_word_suffix", "", "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0,
        "vocab", vocab, "merges", "l l", "h e", "he ll", "hell o");
}

typedef struct tmpdir {
    char dir[64], path[128];
} tmpdir;

static void write_json(tmpdir *d, json_t *j)
{
    if (d->dir[0] == '\0') {
        strcpy(d->dir, "/tmp/primal-tok-XXXXXX");
        cr_assert_not_null(mkdtemp(d->dir));
    }
    snprintf(d->path, sizeof d->path, "%s/tokenizer.json", d->dir);
    cr_assert_eq(json_dump_file(j, d->path, 0), 0);
    json_decref(j);
}

static void remove_tmp(tmpdir *d)
{
    unlink(d->path);
    rmdir(d->dir);
}

Test(tokenizer_small, merges_by_rank_leftmost_first_as_worked_by_hand)
{
    tmpdir d = { 0 };
    write_json(&d, small_tokenizer());
    primal_tokenizer *t = open_or_fail(d.path);
    cr_expect_eq(primal_tokenizer_vocab(t), 262);
    cr_expect_eq(primal_tokenizer_eot(t), -1);
    /* h e l l o: l l (rank 0) -> h e ll o; h e (1) -> he ll o; he ll (2); hell o (3). */
    expect_ids(t, "hello", 5, (const int32_t[]){ 259 }, 1, "hello");
    expect_ids(t, "hellx", 5, (const int32_t[]){ 258, 'x' }, 2, "hellx");
    /* Two overlapping l l pairs of the same rank: the left one merges. */
    expect_ids(t, "lll", 3, (const int32_t[]){ 257, 'l' }, 2, "lll");
    /* The Split regex isolates " hello" (Ġ, 0x20's symbol, is id 32 here; no merge takes it),
     * and <eos> is cut out before the regex runs. */
    expect_ids(t, "hello hello<eos>!", 17, (const int32_t[]){ 259, 32, 259, 261, '!' }, 5,
               "pieces");
    /* No merge builds "abc", so without ignore_merges it stays three bytes. */
    expect_ids(t, "abc", 3, (const int32_t[]){ 'a', 'b', 'c' }, 3, "abc");
    expect_text(t, (const int32_t[]){ 259, 32, 261 }, 3, "hello <eos>", 11, "decode");
    primal_tokenizer_close(t);
    remove_tmp(&d);
}

Test(tokenizer_small, takes_whole_words_from_the_vocab_with_ignore_merges)
{
    tmpdir d = { 0 };
    json_t *j = small_tokenizer();
    json_object_set_new(json_object_get(j, "model"), "ignore_merges", json_true());
    write_json(&d, j);
    primal_tokenizer *t = open_or_fail(d.path);
    expect_ids(t, "abc", 3, (const int32_t[]){ 260 }, 1, "abc");
    expect_ids(t, "hellx", 5, (const int32_t[]){ 258, 'x' }, 2, "hellx");
    primal_tokenizer_close(t);
    remove_tmp(&d);
}

Test(tokenizer_small, reads_merges_given_as_pairs)
{
    tmpdir d = { 0 };
    json_t *j = small_tokenizer();
    json_object_set_new(json_object_get(j, "model"), "merges",
                        json_pack("[[s,s],[s,s],[s,s],[s,s]]", "l", "l", "h", "e", "he", "ll",
                                  "hell", "o"));
    write_json(&d, j);
    primal_tokenizer *t = open_or_fail(d.path);
    expect_ids(t, "hello lll", 9, (const int32_t[]){ 259, ' ', 257, 'l' }, 4, "pairs");
    primal_tokenizer_close(t);
    remove_tmp(&d);
}

Test(tokenizer_small, reads_backslash_s_as_white_space_like_oniguruma)
{
    /* Oniguruma (HF's regex engine) takes \s as Unicode White_Space, without U+180E; PCRE2's own
     * \s takes U+180E too.  With "Ġb" (262) mergeable, "a\u180e b" must split as a | U+180E |
     * " b" -> 97, e1 a0 8e, 262, not as a | "U+180E " | b. */
    tmpdir d = { 0 };
    json_t *j = small_tokenizer();
    json_object_set_new(json_object_get(json_object_get(j, "model"), "vocab"), "\xc4\xa0" "b",
                        json_integer(262));
    json_array_append_new(json_object_get(json_object_get(j, "model"), "merges"),
                          json_string("\xc4\xa0 b"));
    write_json(&d, j);
    primal_tokenizer *t = open_or_fail(d.path);
    expect_ids(t, "a\xe1\xa0\x8e b", 6, (const int32_t[]){ 'a', 0xe1, 0xa0, 0x8e, 262 }, 5,
               "U+180E");
    primal_tokenizer_close(t);
    remove_tmp(&d);
}

Test(tokenizer_small, treats_a_missing_end_of_text_as_minus_one_and_finds_it_when_present)
{
    tmpdir d = { 0 };
    json_t *j = small_tokenizer();
    json_t *a = json_array_get(json_object_get(j, "added_tokens"), 0);
    json_object_set_new(a, "content", json_string("<|endoftext|>"));
    write_json(&d, j);
    primal_tokenizer *t = open_or_fail(d.path);
    cr_expect_eq(primal_tokenizer_eot(t), 261);
    primal_tokenizer_close(t);
    remove_tmp(&d);
}

/* One refusal: apply `edit` to the small tokenizer, expect `code` and both the file's path and
 * `needle` in the message. */
static void expect_refusal(void (*edit)(json_t *), int code, const char *needle)
{
    tmpdir d = { 0 };
    json_t *j = small_tokenizer();
    edit(j);
    write_json(&d, j);
    primal_err err = { 0 };
    primal_tokenizer *t = (primal_tokenizer *)&err;
    int rc = primal_tokenizer_open(d.path, &t, &err);
    remove_tmp(&d);
    cr_expect_eq(rc, code, "expected code %d, got %d (%s)", code, rc, err.msg);
    cr_expect_null(t);
    cr_expect(strstr(err.msg, d.path) != NULL, "message does not name the file: %s", err.msg);
    cr_expect(strstr(err.msg, needle) != NULL, "message lacks \"%s\": %s", needle, err.msg);
}

static json_t *model(json_t *j) { return json_object_get(j, "model"); }
static json_t *pre(json_t *j, size_t i)
{
    return json_array_get(json_object_get(json_object_get(j, "pre_tokenizer"), "pretokenizers"),
                          i);
}
static json_t *added0(json_t *j) { return json_array_get(json_object_get(j, "added_tokens"), 0); }

static void wordpiece(json_t *j)
{
    json_object_set_new(model(j), "type", json_string("WordPiece"));
}
static void lowercase(json_t *j)
{
    json_object_set_new(j, "normalizer", json_pack("{s:s}", "type", "Lowercase"));
}
static void nfkc_in_sequence(json_t *j)
{
    json_object_set_new(j, "normalizer",
                        json_pack("{s:s, s:[{s:s}, {s:s}]}", "type", "Sequence", "normalizers",
                                  "type", "NFC", "type", "NFKC"));
}
static void removed(json_t *j)
{
    json_object_set_new(pre(j, 0), "behavior", json_string("Removed"));
}
static void inverted(json_t *j) { json_object_set_new(pre(j, 0), "invert", json_true()); }
static void use_regex(json_t *j) { json_object_set_new(pre(j, 1), "use_regex", json_true()); }
static void prefix_space(json_t *j)
{
    json_object_set_new(pre(j, 1), "add_prefix_space", json_true());
}
static void bad_regex(json_t *j)
{
    json_object_set_new(pre(j, 0), "pattern", json_pack("{s:s}", "Regex", "(unclosed"));
}
static void whitespace_pre(json_t *j)
{
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s}", "type", "Whitespace"));
}
static void lstrip(json_t *j) { json_object_set_new(added0(j), "lstrip", json_true()); }
static void normalized(json_t *j) { json_object_set_new(added0(j), "normalized", json_true()); }
static void single_word(json_t *j) { json_object_set_new(added0(j), "single_word", json_true()); }
static void byte_fallback(json_t *j)
{
    json_object_set_new(model(j), "byte_fallback", json_true());
}
static void dropout(json_t *j) { json_object_set_new(model(j), "dropout", json_real(0.1)); }
static void prefix(json_t *j)
{
    json_object_set_new(model(j), "continuing_subword_prefix", json_string("##"));
}
static void wordpiece_decoder(json_t *j)
{
    json_object_set_new(j, "decoder", json_pack("{s:s}", "type", "WordPiece"));
}
static void no_decoder(json_t *j) { json_object_set_new(j, "decoder", json_null()); }
static void truncation(json_t *j)
{
    json_object_set_new(j, "truncation", json_pack("{s:i}", "max_length", 8));
}
static void bert_post(json_t *j)
{
    json_object_set_new(j, "post_processor", json_pack("{s:s}", "type", "BertProcessing"));
}
static void merge_out_of_vocab(json_t *j)
{
    json_array_append_new(json_object_get(model(j), "merges"), json_string("x yz"));
}
static void merge_three_parts(json_t *j)
{
    json_array_append_new(json_object_get(model(j), "merges"), json_string("a b c"));
}
static void missing_byte(json_t *j)
{
    json_object_del(json_object_get(model(j), "vocab"), "A");
}

Test(tokenizer_refuses, a_model_that_is_not_bpe)
{
    expect_refusal(wordpiece, PRIMAL_ECONFIG, "WordPiece");
}
Test(tokenizer_refuses, an_unknown_normalizer)
{
    expect_refusal(lowercase, PRIMAL_ECONFIG, "Lowercase");
}
Test(tokenizer_refuses, an_unsupported_normalizer_inside_a_sequence)
{
    expect_refusal(nfkc_in_sequence, PRIMAL_ECONFIG, "normalizers[1]");
}
Test(tokenizer_refuses, a_split_that_removes)
{
    expect_refusal(removed, PRIMAL_ECONFIG, "Removed");
}
Test(tokenizer_refuses, an_inverted_split) { expect_refusal(inverted, PRIMAL_ECONFIG, "invert"); }
Test(tokenizer_refuses, byte_level_with_its_own_regex)
{
    expect_refusal(use_regex, PRIMAL_ECONFIG, "use_regex");
}
Test(tokenizer_refuses, byte_level_with_a_prefix_space)
{
    expect_refusal(prefix_space, PRIMAL_ECONFIG, "add_prefix_space");
}
Test(tokenizer_refuses, a_regex_that_pcre2_cannot_compile)
{
    expect_refusal(bad_regex, PRIMAL_ECONFIG, "pattern");
}
Test(tokenizer_refuses, a_pre_tokenizer_that_is_not_byte_level)
{
    expect_refusal(whitespace_pre, PRIMAL_ECONFIG, "Whitespace");
}
Test(tokenizer_refuses, an_added_token_with_lstrip)
{
    expect_refusal(lstrip, PRIMAL_ECONFIG, "lstrip");
}
Test(tokenizer_refuses, a_normalized_added_token)
{
    expect_refusal(normalized, PRIMAL_ECONFIG, "normalized");
}
Test(tokenizer_refuses, a_single_word_added_token)
{
    expect_refusal(single_word, PRIMAL_ECONFIG, "single_word");
}
Test(tokenizer_refuses, byte_fallback)
{
    expect_refusal(byte_fallback, PRIMAL_ECONFIG, "byte_fallback");
}
Test(tokenizer_refuses, dropout) { expect_refusal(dropout, PRIMAL_ECONFIG, "dropout"); }
Test(tokenizer_refuses, a_subword_prefix)
{
    expect_refusal(prefix, PRIMAL_ECONFIG, "continuing_subword_prefix");
}
Test(tokenizer_refuses, a_decoder_that_is_not_byte_level)
{
    expect_refusal(wordpiece_decoder, PRIMAL_ECONFIG, "decoder");
}
Test(tokenizer_refuses, a_missing_decoder)
{
    expect_refusal(no_decoder, PRIMAL_ECONFIG, "decoder");
}
Test(tokenizer_refuses, truncation) { expect_refusal(truncation, PRIMAL_ECONFIG, "truncation"); }
Test(tokenizer_refuses, a_post_processor_it_does_not_know)
{
    expect_refusal(bert_post, PRIMAL_ECONFIG, "BertProcessing");
}
Test(tokenizer_refuses, a_merge_of_tokens_not_in_the_vocab)
{
    expect_refusal(merge_out_of_vocab, PRIMAL_ECONFIG, "merges[4]");
}
Test(tokenizer_refuses, a_merge_string_with_two_spaces)
{
    expect_refusal(merge_three_parts, PRIMAL_ECONFIG, "merges[4]");
}
Test(tokenizer_refuses, a_vocab_without_every_byte_symbol)
{
    expect_refusal(missing_byte, PRIMAL_ECONFIG, "0x41");
}

Test(tokenizer_refuses, a_missing_file_and_a_broken_one_as_io_errors)
{
    primal_err err = { 0 };
    primal_tokenizer *t = NULL;
    cr_expect_eq(primal_tokenizer_open("/nonexistent/tokenizer.json", &t, &err), PRIMAL_EIO);
    cr_expect(strstr(err.msg, "/nonexistent/tokenizer.json") != NULL, "msg: %s", err.msg);

    tmpdir d = { 0 };
    strcpy(d.dir, "/tmp/primal-tok-XXXXXX");
    cr_assert_not_null(mkdtemp(d.dir));
    snprintf(d.path, sizeof d.path, "%s/tokenizer.json", d.dir);
    FILE *f = fopen(d.path, "w");
    fputs("{\"model\": {\"type\": \"BPE\", ", f);
    fclose(f);
    cr_expect_eq(primal_tokenizer_open(d.path, &t, &err), PRIMAL_EIO);
    cr_expect(strstr(err.msg, d.path) != NULL, "msg: %s", err.msg);
    cr_expect_null(t);
    remove_tmp(&d);
}

Test(tokenizer_ids, push_grows_the_array_and_keeps_order)
{
    primal_ids ids = { 0 };
    primal_err err = { 0 };
    for (int32_t i = 0; i < 10000; i++)
        cr_assert_eq(primal_ids_push(&ids, i * 3, &err), PRIMAL_OK);
    cr_expect_eq(ids.n, 10000);
    cr_expect(ids.cap >= ids.n);
    cr_expect_eq(ids.v[0], 0);
    cr_expect_eq(ids.v[9999], 29997);
    free(ids.v);
}

/* jansson reads a directory as an empty text, which gave "DIR:1:0: not valid JSON" (issue 25):
 * the directory is named as such. */
Test(tokenizer_refuses, a_directory_naming_it)
{
    primal_tokenizer *t = NULL;
    primal_err err;
    int rc = primal_tokenizer_open(PRIMAL_TEST_FIXTURES "/qwen-tokenizer", &t, &err);
    cr_assert_eq(rc, PRIMAL_EIO, "%s", err.msg);
    cr_assert_null(t);
    cr_assert_str_eq(err.msg, PRIMAL_TEST_FIXTURES
                     "/qwen-tokenizer: is a directory, not a tokenizer.json");
}
