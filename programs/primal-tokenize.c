/* primal-tokenize: text <-> token ids on stdin/stdout (core/tokenizer.c; SPEC.md "Data
 * loaders", Tokenisers).
 *
 *   primal-tokenize --tokenizer FILE|bytes [--decode] [--bin OUT [--width 16|32]]
 *
 * Encoding reads all of stdin as one text (added tokens such as <|endoftext|> in it are matched)
 * and writes the ids separated by single spaces with a final newline, or with --bin the ids as
 * raw little-endian uint16 (the default when the vocabulary has at most 65,536 ids) or uint32
 * into OUT, the format of the `tokens` loader.  --decode reads whitespace-separated ids and
 * writes the text.  Errors go to stderr as "primal-tokenize: <message>", exit status 1. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <primal/tokenizer.h>

static const char usage[] =
    "usage: primal-tokenize --tokenizer FILE|bytes [--decode] [--bin OUT [--width 16|32]]\n"
    "\n"
    "Encode stdin (UTF-8) to token ids, or decode ids back to text.\n"
    "\n"
    "  --tokenizer FILE|bytes  a Hugging Face tokenizer.json (byte-level BPE), or \"bytes\"\n"
    "                          (one id per byte, vocab 256)\n"
    "  --decode                read whitespace-separated ids from stdin, write the text\n"
    "  --bin OUT               write the ids to OUT as raw little-endian integers instead of\n"
    "                          text (for the tokens loader)\n"
    "  --width 16|32           bits per id in OUT; default 16 if the vocabulary has at most\n"
    "                          65536 ids, else 32\n"
    "  --help                  this text\n";

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("primal-tokenize: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf != NULL) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (nb == NULL)
            free(buf);
        buf = nb;
    }
    if (buf == NULL || ferror(f)) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int write_bin(const char *path, const primal_ids *ids, int width)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return fail("%s: cannot create", path);
    uint8_t buf[4096];
    size_t k = 0;
    for (size_t i = 0; i < ids->n; i++) {
        uint32_t v = (uint32_t)ids->v[i];
        for (int b = 0; b < width / 8; b++)
            buf[k++] = (uint8_t)(v >> (8 * b));
        if (k + 4 > sizeof buf || i + 1 == ids->n) {
            fwrite(buf, 1, k, f);
            k = 0;
        }
    }
    if (ferror(f) | (fclose(f) != 0))
        return fail("%s: write failed", path);
    return 0;
}

static int write_text_ids(const primal_ids *ids)
{
    char buf[1 << 16];
    size_t k = 0;
    for (size_t i = 0; i < ids->n; i++) {
        if (k + 16 > sizeof buf) {
            fwrite(buf, 1, k, stdout);
            k = 0;
        }
        k += (size_t)snprintf(buf + k, sizeof buf - k, i ? " %d" : "%d", (int)ids->v[i]);
    }
    buf[k++] = '\n';
    fwrite(buf, 1, k, stdout);
    return 0;
}

static int encode(primal_tokenizer *t, const char *bin, int width)
{
    size_t len;
    char *text = read_all(stdin, &len);
    if (text == NULL)
        return fail("stdin: cannot read");
    primal_ids ids = { 0 };
    primal_err err = { 0 };
    int rc = primal_tokenizer_encode(t, text, len, &ids, &err);
    free(text);
    if (rc != PRIMAL_OK) {
        free(ids.v);
        return fail("%s", err.msg);
    }
    int32_t vocab = primal_tokenizer_vocab(t);
    if (width == 0)
        width = vocab <= 65536 ? 16 : 32;
    if (bin != NULL && width == 16 && vocab > 65536) {
        free(ids.v);
        return fail("--width 16: the vocabulary has %d ids, more than 65536", (int)vocab);
    }
    int status = bin ? write_bin(bin, &ids, width) : write_text_ids(&ids);
    free(ids.v);
    return status;
}

static int decode(primal_tokenizer *t)
{
    size_t len;
    char *text = read_all(stdin, &len);
    if (text == NULL)
        return fail("stdin: cannot read");
    primal_ids ids = { 0 };
    primal_err err = { 0 };
    char *p = text;
    int status = 0;
    for (;;) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == '\f' || *p == '\v')
            p++;
        if (*p == '\0' && p == text + len)
            break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno != 0 || v < INT32_MIN || v > INT32_MAX ||
            (*end != '\0' && strchr(" \n\t\r\f\v", *end) == NULL)) {
            size_t w = strcspn(p, " \n\t\r\f\v");
            status = fail("stdin: id %zu: \"%.*s\" is not an integer", ids.n + 1,
                          (int)(w < 24 ? w : 24), p);
            break;
        }
        if (primal_ids_push(&ids, (int32_t)v, &err) != PRIMAL_OK) {
            status = fail("%s", err.msg);
            break;
        }
        p = end;
    }
    free(text);
    if (status == 0) {
        char *out;
        size_t olen;
        if (primal_tokenizer_decode(t, ids.v, ids.n, &out, &olen, &err) != PRIMAL_OK) {
            status = fail("%s", err.msg);
        } else {
            fwrite(out, 1, olen, stdout);
            free(out);
        }
    }
    free(ids.v);
    return status;
}

int main(int argc, char **argv)
{
    const char *spec = NULL, *bin = NULL;
    int want_decode = 0, width = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(a, "--decode") == 0) {
            want_decode = 1;
        } else if (strcmp(a, "--tokenizer") == 0 || strcmp(a, "--bin") == 0 ||
                   strcmp(a, "--width") == 0) {
            if (i + 1 == argc)
                return fail("%s: needs a value (see --help)", a);
            const char *v = argv[++i];
            if (strcmp(a, "--tokenizer") == 0) {
                spec = v;
            } else if (strcmp(a, "--bin") == 0) {
                bin = v;
            } else if (strcmp(v, "16") == 0 || strcmp(v, "32") == 0) {
                width = atoi(v);
            } else {
                return fail("--width: must be 16 or 32, got \"%s\"", v);
            }
        } else {
            return fail("unknown argument \"%s\" (see --help)", a);
        }
    }
    if (spec == NULL)
        return fail("--tokenizer is required (a tokenizer.json, or \"bytes\")");
    if (want_decode && bin != NULL)
        return fail("--bin writes encoded ids; it cannot be used with --decode");
    if (width != 0 && bin == NULL)
        return fail("--width applies only to --bin");

    primal_tokenizer *t;
    primal_err err = { 0 };
    if (primal_tokenizer_open(spec, &t, &err) != PRIMAL_OK)
        return fail("%s", err.msg);
    int status = want_decode ? decode(t) : encode(t, bin, width);
    primal_tokenizer_close(t);
    if (fflush(stdout) != 0 || ferror(stdout))
        status = fail("stdout: write failed");
    return status;
}
