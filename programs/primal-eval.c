/* primal-eval: logits, loss, gradients or perplexity of a checkpoint (core/evaluate.c;
 * SPEC.md, "Models").
 *   primal-eval CKPT --tokens IN.safetensors -o OUT.safetensors [--grads]
 *       IN holds input_ids I32 (or I64) [B, T].  OUT gets logits F32 [B, T, V] and loss F32 [1]
 *       (mean next-token cross-entropy over the B x (T-1) shifted positions); with --grads also
 *       grad.NAME for every parameter (straight-through dL/dW of a matrix, dL/dv of a vector)
 *       and grad_scale.NAME (dL/dscale) for every indexed matrix: the names of
 *       tests/fixtures/hf-qwen2-tiny/expected.safetensors.
 *   primal-eval CKPT --text FILE [--tokenizer bytes|tokenizer.json] [--seq-len N] [--batch N]
 *       prints the mean loss (nats per token) and the perplexity of FILE.
 * Common: --threads N (0: OpenMP's default). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <primal/safetensors.h>
#include <primal/tokenizer.h>

#include "checkpoint.h"
#include "evaluate.h"

static void usage(FILE *f)
{
    fputs("usage: primal-eval CKPT --tokens IN.safetensors -o OUT.safetensors [--grads]\n"
          "       primal-eval CKPT --text FILE [--tokenizer bytes|tokenizer.json]\n"
          "                   [--seq-len N] [--batch N]\n"
          "       common options: --threads N\n",
          f);
}

/* A path given for a file that names a directory: said so, since reading it would fail with a
 * bare "read error" or a JSON parse error.  what is the file expected, e.g. "a text file". */
static int refuse_dir(const char *path, const char *what, primal_err *err)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return primal_errf(err, PRIMAL_EIO, "%s: is a directory, not %s", path, what);
    return PRIMAL_OK;
}

/* input_ids of path, each in [0, vocab): a bad id is refused here with the file and its
 * position, before the model sees it. */
static int read_ids(const char *path, int vocab, int32_t **ids, int *B, int *T,
                    primal_err *err)
{
    primal_st *st;
    int rc = primal_st_open(path, &st, err);
    if (rc != PRIMAL_OK)
        return rc;
    const primal_st_tensor *t = primal_st_get(st, "input_ids");
    if (t == NULL || t->ndim != 2 || (t->dtype != PRIMAL_I32 && t->dtype != PRIMAL_I64) ||
        t->shape[0] < 1 || t->shape[1] < 2 || t->shape[0] * t->shape[1] > 0x7FFFFFFF) {
        rc = primal_errf(err, PRIMAL_EIO,
                         "%s: tensor input_ids: missing, or not I32/I64 [B, T] with T >= 2",
                         path);
        goto out;
    }
    *B = (int)t->shape[0];
    *T = (int)t->shape[1];
    *ids = malloc((size_t)t->numel * sizeof **ids);
    if (*ids == NULL) {
        rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        if (t->dtype == PRIMAL_I32) {
            int32_t x;
            memcpy(&x, (const char *)t->data + 4 * i, 4);
            v = x;
        } else {
            memcpy(&v, (const char *)t->data + 8 * i, 8);
        }
        if (v < 0 || v >= vocab) {
            free(*ids);
            *ids = NULL;
            rc = primal_errf(err, PRIMAL_EIO,
                             "%s: input_ids[%lld][%lld] = %lld is outside the model's "
                             "vocabulary [0, %d)",
                             path, (long long)(i / *T), (long long)(i % *T), (long long)v,
                             vocab);
            goto out;
        }
        (*ids)[i] = (int32_t)v;
    }
out:
    primal_st_close(st);
    return rc;
}

static int eval_tokens(primal_model *m, const char *in, const char *out, int grads,
                       primal_err *err)
{
    int32_t *ids = NULL;
    int V = primal_model_cfg(m)->vocab, np = primal_model_nparams(m);
    int B = 0, T = 0, rc = read_ids(in, V, &ids, &B, &T, err);
    if (rc != PRIMAL_OK)
        return rc;
    float *logits = malloc((size_t)B * (size_t)T * (size_t)V * sizeof *logits), loss = 0.0f;
    float **grad = calloc((size_t)np, sizeof *grad), **gscale = calloc((size_t)np, sizeof *gscale);
    char **names = calloc(2 * (size_t)np, sizeof *names);
    primal_stw *w = NULL;
    if (logits == NULL || grad == NULL || gscale == NULL || names == NULL) {
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory for the logits");
        goto out;
    }
    for (int i = 0; grads && i < np; i++) {
        const primal_param *p = primal_model_param(m, i);
        grad[i] = calloc((size_t)p->n, sizeof(float));
        if (p->is_matrix && p->q.bits != 32)
            gscale[i] = calloc((size_t)p->q.rows, sizeof(float));
        if (grad[i] == NULL || (p->is_matrix && p->q.bits != 32 && gscale[i] == NULL)) {
            rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory for the gradient of %s",
                             p->name);
            goto out;
        }
    }
    primal_eval_grads g = { grad, gscale };
    if ((rc = primal_eval_batch(m, ids, B, T, logits, &loss, grads ? &g : NULL, err)) !=
        PRIMAL_OK)
        goto out;
    if ((rc = primal_stw_begin(out, &w, err)) != PRIMAL_OK)
        goto out;
    int64_t ls[3] = { B, T, V }, one[1] = { 1 };
    if ((rc = primal_stw_add(w, "logits", PRIMAL_F32, 3, ls, logits, err)) != PRIMAL_OK ||
        (rc = primal_stw_add(w, "loss", PRIMAL_F32, 1, one, &loss, err)) != PRIMAL_OK)
        goto out;
    for (int i = 0; grads && i < np; i++) {
        const primal_param *p = primal_model_param(m, i);
        int64_t sh[2] = { p->is_matrix ? p->q.rows : p->n, p->q.cols };
        size_t len = strlen(p->name) + 16;
        if ((names[2 * i] = malloc(len)) == NULL || (names[2 * i + 1] = malloc(len)) == NULL) {
            rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
            goto out;
        }
        snprintf(names[2 * i], len, "grad.%s", p->name);
        snprintf(names[2 * i + 1], len, "grad_scale.%s", p->name);
        if ((rc = primal_stw_add(w, names[2 * i], PRIMAL_F32, p->is_matrix ? 2 : 1, sh, grad[i],
                                 err)) != PRIMAL_OK)
            goto out;
        if (gscale[i] != NULL &&
            (rc = primal_stw_add(w, names[2 * i + 1], PRIMAL_F32, 1, sh, gscale[i], err)) !=
                PRIMAL_OK)
            goto out;
    }
    rc = primal_stw_commit(w, err);
    w = NULL;
    if (rc == PRIMAL_OK)
        fprintf(stderr, "primal-eval: loss %.6f over %d x %d predictions; wrote %s\n",
                (double)loss, B, T - 1, out);
out:
    primal_stw_abort(w);
    for (int i = 0; i < np && grad != NULL; i++) {
        free(grad[i]);
        free(gscale ? gscale[i] : NULL);
        free(names ? names[2 * i] : NULL);
        free(names ? names[2 * i + 1] : NULL);
    }
    free(grad);
    free(gscale);
    free(names);
    free(logits);
    free(ids);
    return rc;
}

static int eval_text(primal_model *m, const char *path, const char *tokspec, int seq_len,
                     int batch, primal_err *err)
{
    int rc = refuse_dir(path, "a text file", err);
    if (rc != PRIMAL_OK)
        return rc;
    if (strcmp(tokspec, "bytes") != 0 &&
        (rc = refuse_dir(tokspec, "a tokenizer.json", err)) != PRIMAL_OK)
        return rc;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0, k;
    char buf[65536];
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) {
        if (len + k > cap) {
            cap = (len + k) * 2;
            char *nt = realloc(text, cap);
            if (nt == NULL) {
                free(text);
                fclose(f);
                return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
            }
            text = nt;
        }
        memcpy(text + len, buf, k);
        len += k;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(text);
        return primal_errf(err, PRIMAL_EIO, "%s: read error", path);
    }
    primal_tokenizer *tok;
    primal_ids ids = { 0 };
    rc = primal_tokenizer_open(tokspec, &tok, err);
    if (rc != PRIMAL_OK) {
        free(text);
        return rc;
    }
    rc = primal_tokenizer_encode(tok, text, len, &ids, err);
    if (rc != PRIMAL_OK)
        primal_err_prefix(err, "%s", path); /* the tokenizer knows no file name */
    free(text);
    int32_t tv = primal_tokenizer_vocab(tok);
    primal_tokenizer_close(tok);
    if (rc == PRIMAL_OK && tv > primal_model_cfg(m)->vocab)
        rc = primal_errf(err, PRIMAL_ECONFIG,
                         "tokenizer %s has %d ids, the model's vocabulary only %d", tokspec,
                         (int)tv, primal_model_cfg(m)->vocab);
    double loss = 0.0;
    size_t count = 0;
    if (rc == PRIMAL_OK)
        rc = primal_eval_stream(m, ids.v, ids.n, seq_len, batch, &loss, &count, err);
    free(ids.v);
    if (rc == PRIMAL_OK)
        printf("predictions %zu\nloss %.6f\nperplexity %.6f\n", count, loss, exp(loss));
    return rc;
}

int main(int argc, char **argv)
{
    const char *ckpt = NULL, *tokens = NULL, *out = NULL, *text = NULL, *tokspec = "bytes";
    int grads = 0, seq_len = 256, batch = 8, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--tokens") == 0 && more) {
            tokens = argv[++i];
        } else if (strcmp(a, "-o") == 0 && more) {
            out = argv[++i];
        } else if (strcmp(a, "--grads") == 0) {
            grads = 1;
        } else if (strcmp(a, "--text") == 0 && more) {
            text = argv[++i];
        } else if (strcmp(a, "--tokenizer") == 0 && more) {
            tokspec = argv[++i];
        } else if ((strcmp(a, "--seq-len") == 0 || strcmp(a, "--batch") == 0 ||
                    strcmp(a, "--threads") == 0) && more) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < (strcmp(a, "--threads") == 0 ? 0 : 1) || v > 1 << 20) {
                fprintf(stderr, "primal-eval: %s: expected a positive integer, got '%s'\n", a,
                        argv[i]);
                return 2;
            }
            *(strcmp(a, "--seq-len") == 0 ? &seq_len : strcmp(a, "--batch") == 0 ? &batch
                                                                                 : &threads) =
                (int)v;
        } else if (a[0] == '-' || ckpt != NULL) {
            fprintf(stderr, "primal-eval: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        } else {
            ckpt = a;
        }
    }
    if (ckpt == NULL || (tokens == NULL) == (text == NULL) || (tokens != NULL && out == NULL) ||
        (text != NULL && (out != NULL || grads))) {
        usage(stderr);
        return 2;
    }

    primal_err err = { 0 };
    primal_ckpt *c = NULL;
    primal_model *m = NULL;
    primal_model_config mc;
    int rc = primal_ckpt_open(ckpt, &c, &err);
    if (rc == PRIMAL_OK)
        rc = primal_ckpt_model_config(c, &mc, &err);
    if (rc == PRIMAL_OK)
        rc = primal_model_create(&mc, primal_ckpt_grid_for, c, &m, &err);
    if (rc == PRIMAL_OK)
        rc = primal_ckpt_load_model(c, m, &err);
    if (rc == PRIMAL_OK) {
        primal_model_opts o = { threads, 0 };
        primal_model_set_opts(m, &o);
        rc = tokens != NULL ? eval_tokens(m, tokens, out, grads, &err)
                            : eval_text(m, text, tokspec, seq_len, batch, &err);
    }
    if (rc != PRIMAL_OK)
        fprintf(stderr, "primal-eval: %s\n", err.msg);
    primal_model_free(m);
    primal_ckpt_close(c); /* after the model: it holds the grids */
    return rc == PRIMAL_OK ? 0 : 1;
}
