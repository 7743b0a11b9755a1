/* fuzz_bpe.c: BPE encoding and decoding with a real tokenizer (core/tokenizer.c).
 *
 * tests/fixtures/qwen-tokenizer/tokenizer.json (Qwen2's: NFC, its Split regex, 151,643 tokens,
 * 151,387 merges, added tokens) is opened once; each input is a text that it encodes, and the ids
 * decode back (fuzz_tokenizer_exercise in fuzz_tokenizer.c, built here with -DFUZZ_BPE, says what
 * is checked).  Byte-level BPE loses nothing but what NFC changes, so for t = decode(encode(x))
 * (x valid UTF-8), decode(encode(t)) must be t again. */
#include <stdlib.h>
#include <string.h>

#include <primal/tokenizer.h>

#include "fuzz.h"

#define QWEN FUZZ_FIXTURES "/qwen-tokenizer/tokenizer.json"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void fuzz_tokenizer_exercise(primal_tokenizer *t, const uint8_t *text, size_t n);

static primal_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    primal_err err = {0};
    if (primal_tokenizer_open(QWEN, &tok, &err) != PRIMAL_OK)
        fuzz_fail("%s", err.msg);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_tokenizer_exercise(tok, data, size);

    /* decode(encode(x)) encodes to the same ids (x valid UTF-8; both sides NFC) */
    primal_ids a = {0}, b = {0};
    primal_err err = {0};
    if (primal_tokenizer_encode(tok, (const char *)data, size, &a, &err) == PRIMAL_OK) {
        char *text = NULL;
        size_t len = 0;
        if (primal_tokenizer_decode(tok, a.v, a.n, &text, &len, &err) != PRIMAL_OK)
            fuzz_fail("decode: %s", err.msg);
        if (primal_tokenizer_encode(tok, text, len, &b, &err) != PRIMAL_OK)
            fuzz_fail("encoding the decoded text failed: %s", err.msg);
        /* Equal ids are not promised (BPE is not idempotent across added tokens written in
         * the text, nor across NFC), but the decoded text must decode back to itself. */
        char *text2 = NULL;
        size_t len2 = 0;
        if (primal_tokenizer_decode(tok, b.v, b.n, &text2, &len2, &err) != PRIMAL_OK)
            fuzz_fail("decode: %s", err.msg);
        if (len2 != len || memcmp(text, text2, len) != 0)
            fuzz_fail("decode(encode(t)) != t for t = decode(encode(input)) (%zu vs %zu bytes)",
                      len, len2);
        free(text);
        free(text2);
    }
    free(a.v);
    free(b.v);
    return 0;
}
