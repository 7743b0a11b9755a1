/* primal-generate: sample text from a checkpoint (core/generate.c; SPEC.md, "Models", "The
 * experiment file and the run directory").
 *   primal-generate CKPT --prompt TEXT [--tokens N] [--temperature T] [--top-k K] [--seed S]
 *                   [--tokenizer bytes|FILE] [--ctx N] [--threads N]
 * Defaults: 200 tokens, temperature 0.8 (0: greedy), top-k 40 (0: whole vocabulary), seed 0.
 * The tokenizer is --tokenizer, else the [data] tokenizer line of the experiment saved in the
 * checkpoint, else "bytes" for a 256-token model.  --ctx (tokens of context fed to the model)
 * defaults to the saved [run] seq_len, else 256.  Prints the prompt and its continuation.
 * Errors: "primal-generate: <msg>" and status 1; usage errors status 2. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <primal/primal.h>

#include "checkpoint.h"
#include "generate.h"

static void usage(FILE *f)
{
    fputs("usage: primal-generate CKPT --prompt TEXT [--tokens N] [--temperature T]\n"
          "                       [--top-k K] [--seed S] [--tokenizer bytes|FILE] [--ctx N]\n"
          "                       [--threads N]\n"
          "Samples N tokens (default 200) after TEXT from the model in CKPT and prints the\n"
          "prompt followed by the continuation.\n"
          "\n"
          "  --temperature T  softmax temperature (default 0.8; 0: always the likeliest token)\n"
          "  --top-k K        sample among the K likeliest tokens (default 40; 0: all)\n"
          "  --seed S         same seed, same text (default 0)\n"
          "  --tokenizer SPEC bytes or a tokenizer.json (default: the [data] tokenizer of the\n"
          "                   experiment saved in CKPT)\n"
          "  --ctx N          tokens of context the model sees (default: the saved [run]\n"
          "                   seq_len, else 256)\n"
          "  --threads N      CPU threads (default 0: all cores)\n",
          f);
}

/* The value of key in [section] of INI text as primal_experiment_resolved writes it (one
 * "key = value" per line), copied into buf; NULL when absent. */
static const char *ini_lookup(const char *ini, const char *section, const char *key, char *buf,
                              size_t n)
{
    char want[128];
    snprintf(want, sizeof want, "[%s]", section);
    int in = 0;
    size_t klen = strlen(key);
    for (const char *line = ini; line != NULL && *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
            len--;
        if (len > 0 && line[0] == '[') {
            in = len == strlen(want) && strncmp(line, want, len) == 0;
        } else if (in && len > klen && strncmp(line, key, klen) == 0) {
            const char *p = line + klen;
            while (*p == ' ' || *p == '\t')
                p++;
            if (*p == '=') {
                p++;
                while (*p == ' ' || *p == '\t')
                    p++;
                size_t vlen = len - (size_t)(p - line);
                if (vlen >= n)
                    vlen = n - 1;
                memcpy(buf, p, vlen);
                buf[vlen] = '\0';
                return buf;
            }
        }
        line = end ? end + 1 : NULL;
    }
    return NULL;
}

/* Parse a whole-string number; 0 on success, -1 (after a usage message) otherwise. */
static int parse_long(const char *opt, const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "primal-generate: %s: expected an integer in [%lld, %lld], got '%s'\n",
                opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0 && v <= 100.0)) {
        fprintf(stderr, "primal-generate: %s: expected a number in [0, 100], got '%s'\n", opt,
                s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

static int takes_value(const char *opt)
{
    static const char *const opts[] = {"--prompt", "--tokenizer", "--tokens", "--top-k",
                                       "--seed", "--ctx", "--threads", "--temperature", NULL};
    for (int i = 0; opts[i] != NULL; i++)
        if (strcmp(opt, opts[i]) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *ckpt = NULL, *prompt = NULL, *tokspec = NULL;
    long long n_tokens = 200, top_k = 40, seed = 0, ctx = 0, threads = 0;
    float temperature = 0.8f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("primal-generate %s\n", PRIMAL_VERSION_STRING);
            return 0;
        } else if (v == NULL && takes_value(a)) {
            fprintf(stderr, "primal-generate: %s: missing value (see --help)\n", a);
            return 2;
        } else if (strcmp(a, "--prompt") == 0) {
            prompt = v;
        } else if (strcmp(a, "--tokenizer") == 0) {
            tokspec = v;
        } else if (strcmp(a, "--tokens") == 0) {
            bad = parse_long(a, v, 0, 1000000, &n_tokens);
        } else if (strcmp(a, "--top-k") == 0) {
            bad = parse_long(a, v, 0, 16777216, &top_k);
        } else if (strcmp(a, "--seed") == 0) {
            bad = parse_long(a, v, 0, INT64_MAX, &seed);
        } else if (strcmp(a, "--ctx") == 0) {
            bad = parse_long(a, v, 1, 1048576, &ctx);
        } else if (strcmp(a, "--threads") == 0) {
            bad = parse_long(a, v, 0, 4096, &threads);
        } else if (strcmp(a, "--temperature") == 0) {
            bad = parse_float(a, v, &temperature);
        } else if (a[0] == '-' || ckpt != NULL) {
            fprintf(stderr, "primal-generate: unexpected argument '%s' (see --help)\n", a);
            return 2;
        } else {
            ckpt = a;
            continue;
        }
        if (bad)
            return 2;
        i++; /* every option above takes a value */
    }
    if (ckpt == NULL || prompt == NULL) {
        usage(stderr);
        return 2;
    }

    primal_err err;
    primal_err_clear(&err);
    primal_ckpt *c = NULL;
    primal_model *m = NULL;
    primal_tokenizer *tok = NULL;
    primal_model_config mc;
    char *text = NULL;
    char tokbuf[4096], seqbuf[64];
    int from_ckpt = 0;
    int rc = primal_ckpt_open(ckpt, &c, &err);
    if (rc == PRIMAL_OK)
        rc = primal_ckpt_model_config(c, &mc, &err);
    if (rc == PRIMAL_OK)
        rc = primal_model_create(&mc, primal_ckpt_grid_for, c, &m, &err);
    if (rc == PRIMAL_OK)
        rc = primal_ckpt_load_model(c, m, &err);
    if (rc == PRIMAL_OK) {
        const char *ini = primal_ckpt_config_ini(c);
        if (tokspec == NULL) {
            tokspec = ini_lookup(ini, "data", "tokenizer", tokbuf, sizeof tokbuf);
            from_ckpt = tokspec != NULL;
        }
        if (tokspec == NULL && mc.vocab == 256)
            tokspec = "bytes";
        if (tokspec == NULL)
            rc = primal_errf(&err, PRIMAL_ECONFIG,
                             "%s: holds no experiment with a [data] tokenizer and the model's "
                             "vocabulary is %d, not 256 (bytes): pass --tokenizer",
                             ckpt, mc.vocab);
        if (ctx == 0 && ini_lookup(ini, "run", "seq_len", seqbuf, sizeof seqbuf) != NULL)
            ctx = strtoll(seqbuf, NULL, 10);
        if (ctx <= 0)
            ctx = 256;
    }
    struct stat sb;
    if (rc == PRIMAL_OK && strcmp(tokspec, "bytes") != 0 && stat(tokspec, &sb) == 0 &&
        S_ISDIR(sb.st_mode))
        rc = primal_errf(&err, PRIMAL_EIO, "%s: is a directory, not a tokenizer.json%s",
                         tokspec, from_ckpt ? " (the checkpoint's [data] tokenizer; pass "
                                              "--tokenizer to use another)"
                                            : "");
    if (rc == PRIMAL_OK && (rc = primal_tokenizer_open(tokspec, &tok, &err)) != PRIMAL_OK)
        primal_err_prefix(&err, "%s", from_ckpt ? "the checkpoint's [data] tokenizer (pass "
                                                  "--tokenizer to use another)"
                                                : "--tokenizer");
    if (rc == PRIMAL_OK && primal_tokenizer_vocab(tok) > mc.vocab)
        rc = primal_errf(&err, PRIMAL_ECONFIG,
                         "tokenizer %s has %d ids, the model's vocabulary only %d", tokspec,
                         (int)primal_tokenizer_vocab(tok), mc.vocab);
    if (rc == PRIMAL_OK) {
        primal_model_set_opts(m, &(primal_model_opts){(int)threads, 0});
        primal_gen_opts go = {.n_tokens = (int)n_tokens,
                              .temperature = temperature,
                              .top_k = (int)top_k,
                              .seed = (uint64_t)seed,
                              .max_ctx = (int)ctx};
        rc = primal_generate(m, tok, prompt, &go, &text, &err);
    }
    if (rc == PRIMAL_OK) {
        fputs(text, stdout);
        fputc('\n', stdout);
        if (fflush(stdout) != 0)
            rc = primal_errf(&err, PRIMAL_EIO, "standard output: %s", strerror(errno));
    }
    if (rc != PRIMAL_OK)
        fprintf(stderr, "primal-generate: %s\n", err.msg);
    free(text);
    primal_tokenizer_close(tok);
    primal_model_free(m);
    primal_ckpt_close(c); /* after the model: it holds the grids */
    return rc == PRIMAL_OK ? 0 : 1;
}
