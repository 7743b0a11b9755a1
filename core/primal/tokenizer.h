/* primal/tokenizer.h: text <-> token ids.
 *
 * Two tokenizers: "bytes" (vocab 256, one token per byte, the default) and byte-level BPE read
 * from a Hugging Face tokenizer.json (added tokens, NFC, the Split pre-tokeniser's regex through
 * PCRE2, ByteLevel, BPE by merge rank), matching Hugging Face `tokenizers` exactly.  A file that
 * declares anything else is refused, never approximated.
 *
 * A handle is not thread-safe (it caches pre-token words): open one per thread. */
#ifndef PRIMAL_TOKENIZER_H
#define PRIMAL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include <primal/error.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct primal_tokenizer primal_tokenizer;

/* A growable array of ids that encode() appends to.  Zero-initialise it; free v when done. */
typedef struct primal_ids {
    int32_t *v;
    size_t n, cap;
} primal_ids;

/* spec: "bytes", or the path of a Hugging Face tokenizer.json. */
int primal_tokenizer_open(const char *spec, primal_tokenizer **out, primal_err *err);
void primal_tokenizer_close(primal_tokenizer *t);

/* Largest id + 1 (added tokens included). */
int32_t primal_tokenizer_vocab(const primal_tokenizer *t);

/* The id of a token or added token written as in the file ("<|endoftext|>"), or -1. */
int32_t primal_tokenizer_id(const primal_tokenizer *t, const char *token);

/* <|endoftext|> for BPE files that have it, else -1 ("bytes" has none). */
int32_t primal_tokenizer_eot(const primal_tokenizer *t);

/* The token that separates packed documents: the eot token, else the single token of "\n" (the
 * byte 10 with "bytes").  A tokenizer with neither is an error (PRIMAL_ECONFIG). */
int primal_tokenizer_separator(primal_tokenizer *t, int32_t *id, primal_err *err);

/* Encode len bytes of UTF-8 (not NUL-terminated), appending to out.  Added tokens in the text
 * are matched as whole tokens (add_special_tokens = false in HF terms).  Invalid UTF-8 is an
 * error naming the byte offset. */
int primal_tokenizer_encode(primal_tokenizer *t, const char *text, size_t len, primal_ids *out,
                            primal_err *err);

/* Decode ids to UTF-8 into a malloc'ed, NUL-terminated *text (its length in *len).  An id
 * outside the vocabulary is an error naming its position and value. */
int primal_tokenizer_decode(primal_tokenizer *t, const int32_t *ids, size_t n, char **text,
                            size_t *len, primal_err *err);

/* Append one id to out, growing it; PRIMAL_ENOMEM on failure. */
int primal_ids_push(primal_ids *out, int32_t id, primal_err *err);

#ifdef __cplusplus
}
#endif
#endif
