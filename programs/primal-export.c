/* primal-export: a checkpoint out of PRIMAL, for transformers or llama.cpp (core/export.c;
 * docs/EXPORT.md).
 *   primal-export CKPT -o DIR --format hf|gguf [--dtype f32|f16|bf16|q8_0] [--shard-size N]
 *                 [--tokenizer bytes|FILE|none] [--gguf-pre NAME] [--ctx N] [--force]
 * hf writes DIR/config.json, DIR/model.safetensors (or shards and their index) and the
 * tokenizer files; gguf writes DIR/model.gguf.  A DIR that exists and holds anything is refused
 * unless --force.  Errors: "primal-export: <msg>" and status 1; usage errors status 2. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <primal/primal.h>

#include "export.h"

static void usage(FILE *f)
{
    fputs("usage: primal-export CKPT -o DIR --format hf|gguf [--dtype f32|f16|bf16|q8_0]\n"
          "                     [--shard-size N] [--tokenizer bytes|FILE|none]\n"
          "                     [--gguf-pre NAME] [--ctx N] [--force]\n"
          "Writes the model of CKPT with every matrix dequantised (W = grid[index] * scale).\n"
          "\n"
          "  --format hf      DIR/config.json, DIR/model.safetensors (sharded past --shard-size)\n"
          "                   and the tokenizer files, for transformers\n"
          "  --format gguf    DIR/model.gguf (GGUF v3) for llama.cpp\n"
          "  --dtype T        f32 (default, exact), f16, bf16, or q8_0 (gguf only)\n"
          "  --shard-size N   hf: most bytes of tensors in one file, with an optional K, M or G\n"
          "                   (10^3, 10^6, 10^9; default 2G)\n"
          "  --tokenizer S    bytes, a tokenizer.json, or none (hf only) (default: the one the\n"
          "                   checkpoint's experiment names)\n"
          "  --gguf-pre NAME  llama.cpp's pre-tokenizer (default: known from the tokenizer.json)\n"
          "  --ctx N          the context length written (default: the original model's\n"
          "                   max_position_embeddings, else the run's seq_len, else 2048)\n"
          "  --force          write into a DIR that is not empty, replacing the files it\n"
          "                   writes (and the shards of an earlier export)\n",
          f);
}

static void print_note(void *user, const char *msg)
{
    (void)user;
    fprintf(stderr, "primal-export: note: %s\n", msg);
}

/* "123", "2G", "500K" -> bytes; -1 when it is none of those. */
static long long parse_size(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    long long mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1000LL, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1000000LL, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1000000000LL, end++;
    if (errno != 0 || end == s || *end != '\0' || v < 1 || v > INT64_MAX / mul)
        return -1;
    return v * mul;
}

/* 1 when path is a directory with anything in it, 0 when empty or absent, -1 when it is
 * something else. */
static int dir_state(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return 0;
    if (!S_ISDIR(sb.st_mode))
        return -1;
    DIR *d = opendir(path);
    if (d == NULL)
        return 1;
    struct dirent *e;
    int any = 0;
    while (!any && (e = readdir(d)) != NULL)
        any = strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return any;
}

int main(int argc, char **argv)
{
    const char *ckpt = NULL, *out = NULL, *format = NULL, *dtype = "f32";
    primal_export_opts o = { 0 };
    int force = 0;
    o.note = print_note;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--force") == 0) {
            force = 1;
            continue;
        } else if (a[0] != '-') {
            if (ckpt != NULL) {
                fprintf(stderr, "primal-export: unexpected argument '%s' (see --help)\n", a);
                return 2;
            }
            ckpt = a;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "primal-export: %s: missing value (see --help)\n", a);
            return 2;
        }
        if (strcmp(a, "-o") == 0) {
            out = v;
        } else if (strcmp(a, "--format") == 0) {
            format = v;
        } else if (strcmp(a, "--dtype") == 0) {
            dtype = v;
        } else if (strcmp(a, "--tokenizer") == 0) {
            o.tokenizer = v;
        } else if (strcmp(a, "--gguf-pre") == 0) {
            o.gguf_pre = v;
        } else if (strcmp(a, "--shard-size") == 0) {
            long long s = parse_size(v);
            if (s < 0) {
                fprintf(stderr, "primal-export: --shard-size: expected a positive number of "
                        "bytes with an optional K, M or G, got '%s'\n", v);
                return 2;
            }
            o.shard_bytes = s;
        } else if (strcmp(a, "--ctx") == 0) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end != '\0' || end == v || n < 1 || n > (1L << 30)) {
                fprintf(stderr, "primal-export: --ctx: expected a positive integer, got '%s'\n",
                        v);
                return 2;
            }
            o.context_length = (int)n;
        } else {
            fprintf(stderr, "primal-export: unexpected argument '%s' (see --help)\n", a);
            return 2;
        }
        i++;
    }
    if (ckpt == NULL || out == NULL || format == NULL) {
        fprintf(stderr, "primal-export: %s is required\n",
                ckpt == NULL ? "CKPT" : out == NULL ? "-o DIR" : "--format hf|gguf");
        usage(stderr);
        return 2;
    }
    if (strcmp(format, "hf") == 0) {
        o.format = PRIMAL_EXPORT_HF;
    } else if (strcmp(format, "gguf") == 0) {
        o.format = PRIMAL_EXPORT_GGUF;
    } else {
        fprintf(stderr, "primal-export: --format: expected hf or gguf, got '%s'\n", format);
        return 2;
    }
    o.dtype = primal_export_dtype(dtype);
    if (o.dtype < 0) {
        fprintf(stderr, "primal-export: --dtype: expected f32, f16, bf16 or q8_0, got '%s'\n",
                dtype);
        return 2;
    }
    if (o.dtype == PRIMAL_EXPORT_Q8_0 && o.format == PRIMAL_EXPORT_HF) {
        fprintf(stderr, "primal-export: --dtype q8_0: gguf only (hf takes f32, f16 or bf16)\n");
        return 2;
    }

    int st = dir_state(out);
    if (st < 0) {
        fprintf(stderr, "primal-export: %s: exists and is not a directory\n", out);
        return 1;
    }
    if (st > 0 && !force) {
        fprintf(stderr, "primal-export: %s: exists and is not empty (pass --force to write "
                "into it)\n", out);
        return 1;
    }
    struct stat sb;
    int created = stat(out, &sb) != 0;
    primal_err err;
    primal_err_clear(&err);
    int rc = primal_export(ckpt, out, &o, &err);
    if (rc != PRIMAL_OK) {
        fprintf(stderr, "primal-export: %s\n", err.msg);
        if (created && dir_state(out) == 0)
            rmdir(out); /* only an empty directory this run made */
        return 1;
    }
    fprintf(stderr, "primal-export: wrote %s (%s, %s)\n", out, format, dtype);
    return 0;
}
