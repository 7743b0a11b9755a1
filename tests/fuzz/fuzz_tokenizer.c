/* fuzz_tokenizer.c: a tokenizer.json and the text it encodes (core/tokenizer.c).
 *
 * The input is the tokenizer.json text, then a NUL byte, then the text to encode (JSON text has
 * no raw NUL, so the cut is unambiguous; without a NUL the text is a fixed sentence).  The file
 * is opened with primal_tokenizer_open; a refusal must have a message.  An opened tokenizer then
 * encodes the text (at most 1 KiB of it: the Split regexes are the file's, and a hostile pattern
 * may backtrack for long), every id must lie in [0, vocab), the ids decode, the separator and the
 * id of <|endoftext|> are looked up, and ids taken from the text's bytes decode or are refused
 * with a message.  With the FUZZ_BPE define the harness is fuzz_bpe instead (fuzz_bpe.c). */
#include <stdlib.h>
#include <string.h>

#include <primal/tokenizer.h>

#include "fuzz.h"

#define MAX_TEXT 1024

/* Encode and decode text with t, checking what the header promises. */
void fuzz_tokenizer_exercise(primal_tokenizer *t, const uint8_t *text, size_t n);

void fuzz_tokenizer_exercise(primal_tokenizer *t, const uint8_t *text, size_t n)
{
    primal_err err = {0};
    int32_t vocab = primal_tokenizer_vocab(t);
    if (vocab < 1)
        fuzz_fail("vocab %d", vocab);
    primal_ids ids = {0};
    int rc = primal_tokenizer_encode(t, (const char *)text, n, &ids, &err);
    fuzz_check_err(rc, &err, "primal_tokenizer_encode");
    if (rc != PRIMAL_OK && ids.n != 0)
        fuzz_fail("encode failed but left %zu ids", ids.n);
    for (size_t i = 0; i < ids.n; i++)
        if (ids.v[i] < 0 || ids.v[i] >= vocab)
            fuzz_fail("encode gave id %d at %zu, outside [0, %d)", ids.v[i], i, vocab);
    if (rc == PRIMAL_OK) {
        char *out = NULL;
        size_t len = 0;
        rc = primal_tokenizer_decode(t, ids.v, ids.n, &out, &len, &err);
        if (rc != PRIMAL_OK)
            fuzz_fail("decode of encode's own ids failed: %s", err.msg);
        if (out == NULL || strlen(out) > len || out[len] != '\0')
            fuzz_fail("decode: text not NUL-terminated at its length %zu", len);
        free(out);
    }
    free(ids.v);

    /* ids from the bytes themselves: in or out of the vocabulary, with or without a token */
    size_t m = n / 4;
    if (m > 64)
        m = 64;
    if (m > 0) {
        int32_t *raw = malloc(m * sizeof *raw);
        if (raw == NULL)
            return;
        memcpy(raw, text, m * sizeof *raw);
        for (size_t i = 0; i < m; i++)
            if (raw[i] >= 0)
                raw[i] %= vocab + 1; /* mostly inside, now and then just past the end */
        char *out = NULL;
        size_t len = 0;
        rc = primal_tokenizer_decode(t, raw, m, &out, &len, &err);
        fuzz_check_err(rc, &err, "primal_tokenizer_decode");
        if (rc != PRIMAL_OK && out != NULL)
            fuzz_fail("decode failed but returned text");
        free(out);
        free(raw);
    }

    int32_t sep = -2;
    rc = primal_tokenizer_separator(t, &sep, &err);
    fuzz_check_err(rc, &err, "primal_tokenizer_separator");
    if (rc == PRIMAL_OK && (sep < 0 || sep >= vocab))
        fuzz_fail("separator %d outside [0, %d)", sep, vocab);
    int32_t eot = primal_tokenizer_eot(t);
    if (eot < -1 || eot >= vocab)
        fuzz_fail("eot %d", eot);
    int32_t id = primal_tokenizer_id(t, "<|endoftext|>");
    if (id < -1 || id >= vocab)
        fuzz_fail("id of <|endoftext|> is %d", id);
}

#ifndef FUZZ_BPE
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_dir();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char fallback[] = "Hello world, 1234 don't  stop\n\tnaïve 日本語 <|endoftext|>x";
    const uint8_t *nul = memchr(data, '\0', size);
    size_t json_n = nul ? (size_t)(nul - data) : size;
    const uint8_t *text = nul ? nul + 1 : (const uint8_t *)fallback;
    size_t text_n = nul ? size - json_n - 1 : sizeof fallback - 1;
    if (text_n > MAX_TEXT)
        text_n = MAX_TEXT;
    const char *path = fuzz_write("tokenizer.json", data, json_n);
    primal_tokenizer *t = NULL;
    primal_err err = {0};
    int rc = primal_tokenizer_open(path, &t, &err);
    fuzz_check_err(rc, &err, "primal_tokenizer_open");
    if (rc != PRIMAL_OK) {
        if (t != NULL)
            fuzz_fail("primal_tokenizer_open failed but left *out set");
        return 0;
    }
    fuzz_tokenizer_exercise(t, text, text_n);
    primal_tokenizer_close(t);
    return 0;
}
#endif
