/* export.c: a checkpoint as a Hugging Face directory or a GGUF file (export.h; docs/EXPORT.md;
 * SPEC.md, "Models").  No keys.
 *
 * Facts taken from llama.cpp (ggml-org/llama.cpp: ggml/src/gguf.cpp, src/llama-vocab.cpp,
 * convert_hf_to_gguf.py, ggml/src/ggml-quants.c), written anew here:
 *   - GGUF v3: "GGUF", u32 version 3, u64 tensor count, u64 key/value count, the key/values
 *     (u64-length strings, u32 type tags), the tensor infos (name, u32 n_dims, u64 ne[] innermost
 *     first, u32 ggml type, u64 offset into the data), zero padding to 32 bytes, the data, each
 *     tensor at a multiple of 32.
 *   - Q8_0 (ggml type 8): blocks of 32 values, f16 d = max|x| / 127, int8 q = roundf(x * (1/d)).
 *   - Llama's q_proj and k_proj rows are permuted per head, (h, 2, hd/2) -> (h, hd/2, 2), for
 *     llama.cpp's RoPE of adjacent pairs; Qwen2 uses the NeoX RoPE, Hugging Face's own order.
 *   - The "gpt2" tokenizer model wants tokenizer.ggml.merges, even empty; without bos/eos keys it
 *     takes token 11 for both, as Qwen2's own GGUFs do. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include <primal/safetensors.h>
#include <primal/tokenizer.h>

#include "checkpoint.h"
#include "export.h"
#include "model.h"

#define GGUF_ALIGN 32
#define CHUNK_FLOATS (1 << 20) /* rows dequantised at a time: about this many values */

enum { GT_U8 = 0, GT_I8, GT_U16, GT_I16, GT_U32, GT_I32, GT_F32, GT_BOOL, GT_STRING, GT_ARRAY,
       GT_U64, GT_I64, GT_F64 };
enum { GGML_F32 = 0, GGML_F16 = 1, GGML_Q8_0 = 8, GGML_BF16 = 30 };
enum { TT_NORMAL = 1, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5 };

int primal_export_dtype(const char *name)
{
    static const char *const names[] = { "f32", "f16", "bf16", "q8_0" };
    for (int i = 0; i < 4; i++)
        if (name != NULL && strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

static void note(const primal_export_opts *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void note(const primal_export_opts *o, const char *fmt, ...)
{
    if (o->note == NULL)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    o->note(o->note_user, msg);
}

/* ------------------------------------------------------------------------------------------ */
/* Number formats                                                                             */

/* float32 -> IEEE half, round to nearest even (subnormals, infinities and NaN kept). */
static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) /* 65520 and up round to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: a subnormal half, round(|f| * 2^24) */
        float af;
        memcpy(&af, &ax, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(af * 16777216.0f));
    }
    uint32_t m = ax + 0xfffu + ((ax >> 13) & 1u) - 0x38000000u;
    return (uint16_t)(sign | (m >> 13));
}

/* float32 -> bfloat16, round to nearest even (NaN stays NaN). */
static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* Bytes that n values (n a multiple of 32 for Q8_0) take in ggml type t. */
static int64_t ggml_bytes(int t, int64_t n)
{
    return t == GGML_F32 ? 4 * n : t == GGML_Q8_0 ? n / 32 * 34 : 2 * n;
}

/* n float32 values into out in ggml type t (F32, F16, BF16, or Q8_0 with n % 32 == 0). */
static void convert(unsigned char *out, const float *x, int64_t n, int t)
{
    if (t == GGML_F32) {
        memcpy(out, x, (size_t)n * 4);
    } else if (t == GGML_F16 || t == GGML_BF16) {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = t == GGML_F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
            out[2 * i] = (unsigned char)(h & 0xff);
            out[2 * i + 1] = (unsigned char)(h >> 8);
        }
    } else { /* Q8_0, as ggml's quantize_row_q8_0_ref */
        for (int64_t b = 0; b < n / 32; b++, out += 34) {
            const float *v = x + 32 * b;
            float amax = 0.0f;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(v[j]));
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            uint16_t h = f32_to_f16(d);
            out[0] = (unsigned char)(h & 0xff);
            out[1] = (unsigned char)(h >> 8);
            for (int j = 0; j < 32; j++)
                out[2 + j] = (unsigned char)(int8_t)roundf(v[j] * id);
        }
    }
}

/* The shortest of %.9g .. %.17g that reads back as v, for JSON that people read. */
static void fmt_real(char *buf, size_t n, double v)
{
    for (int p = 9; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    if (strspn(buf, "-0123456789") == strlen(buf)) /* "10000" -> "10000.0": a JSON real */
        strncat(buf, ".0", n - strlen(buf) - 1);
}

/* ------------------------------------------------------------------------------------------ */
/* Files: NAME.tmp.PID in the output directory, renamed into place once complete             */

typedef struct outfile {
    FILE *f;
    char path[4096], tmp[4200];
} outfile;

static int out_open(outfile *of, const char *dir, const char *name, primal_err *err)
{
    snprintf(of->path, sizeof of->path, "%s/%s", dir, name);
    snprintf(of->tmp, sizeof of->tmp, "%s.tmp.%ld", of->path, (long)getpid());
    of->f = fopen(of->tmp, "wb");
    if (of->f == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: cannot create: %s", of->tmp, strerror(errno));
    return PRIMAL_OK;
}

static int out_write(outfile *of, const void *p, size_t n, primal_err *err)
{
    if (n > 0 && fwrite(p, 1, n, of->f) != n)
        return primal_errf(err, PRIMAL_EIO, "%s: write failed: %s", of->path, strerror(errno));
    return PRIMAL_OK;
}

static void out_abort(outfile *of)
{
    if (of->f != NULL) {
        fclose(of->f);
        of->f = NULL;
        unlink(of->tmp);
    }
}

static int out_commit(outfile *of, primal_err *err)
{
    int bad = fflush(of->f) != 0 || fsync(fileno(of->f)) != 0;
    int e = errno;
    bad |= fclose(of->f) != 0;
    of->f = NULL;
    if (bad || rename(of->tmp, of->path) != 0) {
        if (!bad)
            e = errno;
        unlink(of->tmp);
        return primal_errf(err, PRIMAL_EIO, "%s: write failed: %s", of->path, strerror(e));
    }
    return PRIMAL_OK;
}

static int write_whole(const char *dir, const char *name, const void *p, size_t n,
                       primal_err *err)
{
    outfile of = { 0 };
    int rc = out_open(&of, dir, name, err);
    if (rc == PRIMAL_OK)
        rc = out_write(&of, p, n, err);
    if (rc == PRIMAL_OK)
        return out_commit(&of, err);
    out_abort(&of);
    return rc;
}

/* A whole file into malloc'ed memory (NUL-terminated); PRIMAL_EIO naming it. */
static int read_whole(const char *path, char **out, size_t *n, primal_err *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 65536, len = 0, k;
    char *buf = malloc(cap + 1);
    while (buf != NULL && (k = fread(buf + len, 1, cap - len, f)) > 0) {
        len += k;
        if (len == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    int bad = buf == NULL || ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return primal_errf(err, buf == NULL ? PRIMAL_ENOMEM : PRIMAL_EIO, "%s: read failed",
                           path);
    }
    buf[len] = '\0';
    *out = buf;
    *n = len;
    return PRIMAL_OK;
}

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* ------------------------------------------------------------------------------------------ */
/* What the checkpoint says besides the weights                                               */

/* The value of key in [section] of the experiment text (one "key = value" a line, as
 * primal_experiment_resolved and primal-import write it), into buf; NULL when absent. */
static const char *ini_lookup(const char *ini, const char *section, const char *key, char *buf,
                              size_t n)
{
    size_t slen = strlen(section), klen = strlen(key);
    int in = 0;
    for (const char *line = ini; line != NULL && *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
            len--;
        if (len > 0 && line[0] == '[') {
            in = len == slen + 2 && strncmp(line + 1, section, slen) == 0 && line[len - 1] == ']';
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

typedef struct exporter {
    const primal_export_opts *o;
    const char *ckpt_path, *dir;
    primal_model *m;
    primal_model_config mc;
    char name[256];          /* general.name: the checkpoint's file name without .safetensors */
    char tokspec[4096];      /* "bytes", a tokenizer.json path, or "" for none */
    json_t *init_config;     /* [model] init's config.json, when it is a readable directory */
    int context_length;
    int64_t bos, eos;        /* -1: unknown */
    json_t *bos_json, *eos_json; /* as config.json of [model] init has them (may be lists) */
} exporter;

/* First integer of a JSON integer or list of integers, else -1. */
static int64_t first_id(json_t *v)
{
    if (json_is_array(v) && json_array_size(v) > 0)
        v = json_array_get(v, 0);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? json_integer_value(v) : -1;
}

/* The tokenizer, context length and special ids, from the options and the checkpoint. */
static int resolve(exporter *x, const primal_ckpt *c, primal_err *err)
{
    const primal_export_opts *o = x->o;
    const char *ini = primal_ckpt_config_ini(c);
    char init[4096], buf[4096];
    if (ini_lookup(ini, "model", "init", init, sizeof init) != NULL && is_dir(init)) {
        snprintf(buf, sizeof buf, "%s/config.json", init);
        x->init_config = json_load_file(buf, 0, NULL); /* NULL: not a Hugging Face directory */
    } else {
        init[0] = '\0';
    }

    const char *t = o->tokenizer;
    if (t == NULL) {
        t = ini_lookup(ini, "data", "tokenizer", buf, sizeof buf);
        if (t == NULL && init[0] != '\0') {
            snprintf(buf, sizeof buf, "%s/tokenizer.json", init);
            t = is_file(buf) ? buf : NULL;
        }
        if (t == NULL && x->mc.vocab == 256)
            t = "bytes";
        if (t == NULL && o->format == PRIMAL_EXPORT_HF)
            note(o, "%s: names no tokenizer: none exported (pass --tokenizer)", x->ckpt_path);
    }
    snprintf(x->tokspec, sizeof x->tokspec, "%s", t == NULL || strcmp(t, "none") == 0 ? "" : t);
    if (x->tokspec[0] != '\0' && strcmp(x->tokspec, "bytes") != 0 && !is_file(x->tokspec))
        return primal_errf(err, PRIMAL_EIO, "tokenizer %s: not a file%s", x->tokspec,
                           o->tokenizer == NULL ? " (the checkpoint's; pass --tokenizer)" : "");
    if (x->tokspec[0] == '\0' && o->format == PRIMAL_EXPORT_GGUF)
        return primal_errf(err, PRIMAL_ECONFIG, "GGUF needs a tokenizer and %s names none: pass "
                           "--tokenizer bytes|tokenizer.json", x->ckpt_path);

    x->bos = x->eos = -1;
    if (x->init_config != NULL) {
        x->bos_json = json_object_get(x->init_config, "bos_token_id");
        x->eos_json = json_object_get(x->init_config, "eos_token_id");
        x->bos = first_id(x->bos_json);
        x->eos = first_id(x->eos_json);
    }
    if (x->tokspec[0] != '\0') {
        primal_tokenizer *tok;
        int rc = primal_tokenizer_open(x->tokspec, &tok, err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "tokenizer");
        int32_t tv = primal_tokenizer_vocab(tok), eot = primal_tokenizer_eot(tok);
        primal_tokenizer_close(tok);
        if (tv > x->mc.vocab)
            return primal_errf(err, PRIMAL_ECONFIG, "tokenizer %s has %d ids, the model's "
                               "vocabulary only %d", x->tokspec, (int)tv, x->mc.vocab);
        if (x->eos < 0 && x->eos_json == NULL && eot >= 0)
            x->eos = eot;
    }

    x->context_length = o->context_length;
    json_t *mpe = x->init_config ? json_object_get(x->init_config, "max_position_embeddings")
                                 : NULL;
    if (x->context_length <= 0 && json_is_integer(mpe) && json_integer_value(mpe) > 0 &&
        json_integer_value(mpe) <= INT32_MAX)
        x->context_length = (int)json_integer_value(mpe);
    if (x->context_length <= 0 && ini_lookup(ini, "run", "seq_len", buf, sizeof buf) != NULL)
        x->context_length = atoi(buf);
    if (x->context_length <= 0)
        x->context_length = 2048;
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Weights: one tensor, a few rows at a time                                                  */

/* The Hugging Face tensors of the model, in parameter order, with Qwen2's implicit zero q/k/v
 * biases where the model has none. */
typedef struct hf_tensor {
    char name[96];
    primal_param *p;  /* NULL: zeros */
    int64_t rows, cols; /* cols 0: a vector */
    int layer;
} hf_tensor;

static int list_tensors(exporter *x, int zero_bias, hf_tensor **out, int *n, primal_err *err)
{
    int np = primal_model_nparams(x->m);
    hf_tensor *t = calloc((size_t)np + 3 * (size_t)x->mc.layers, sizeof *t);
    if (t == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int k = 0, hd = x->mc.dim / x->mc.heads;
    for (int i = 0; i < np; i++) {
        primal_param *p = primal_model_param(x->m, i);
        snprintf(t[k].name, sizeof t[k].name, "%s", p->name);
        t[k].p = p;
        t[k].layer = p->layer;
        t[k].rows = p->is_matrix ? p->q.rows : p->n;
        t[k].cols = p->is_matrix ? p->q.cols : 0;
        k++;
        const char *vsuf = ".self_attn.v_proj.weight";
        size_t nl = strlen(p->name), sl = strlen(vsuf);
        if (zero_bias && nl > sl && strcmp(p->name + nl - sl, vsuf) == 0) {
            static const char *const b[3] = { "q_proj", "k_proj", "v_proj" };
            for (int j = 0; j < 3; j++, k++) {
                snprintf(t[k].name, sizeof t[k].name, "model.layers.%d.self_attn.%s.bias",
                         p->layer, b[j]);
                t[k].layer = p->layer;
                t[k].rows = j == 0 ? x->mc.dim : (int64_t)x->mc.kv_heads * hd;
            }
        }
    }
    *out = t;
    *n = k;
    return PRIMAL_OK;
}

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

/* Heads whose rows llama.cpp's Llama wants permuted (0: none): q_proj by heads, k_proj by
 * kv_heads, weight and bias alike. */
static int permute_heads(const exporter *x, const hf_tensor *t)
{
    if (x->o->format != PRIMAL_EXPORT_GGUF || x->mc.arch != PRIMAL_ARCH_LLAMA)
        return 0;
    if (ends_with(t->name, "q_proj.weight") || ends_with(t->name, "q_proj.bias"))
        return x->mc.heads;
    if (ends_with(t->name, "k_proj.weight") || ends_with(t->name, "k_proj.bias"))
        return x->mc.kv_heads;
    return 0;
}

/* Write tensor t in ggml type gt (F32, F16, BF16 or Q8_0) to of.  buf holds CHUNK_FLOATS + one
 * head's rows, perm as many. */
static int emit(exporter *x, const hf_tensor *t, int gt, outfile *of, float *buf, float *perm,
                unsigned char *cbuf, primal_err *err)
{
    int64_t cols = t->cols > 0 ? t->cols : 1, rows = t->rows;
    int heads = permute_heads(x, t);
    int64_t hd = heads > 0 ? rows / heads : 1;
    int64_t step = CHUNK_FLOATS / cols;
    if (step < 1)
        step = 1;
    if (heads > 0) /* whole heads at a time */
        step = step < hd ? hd : step / hd * hd;
    for (int64_t r0 = 0; r0 < rows; r0 += step) {
        int64_t nr = rows - r0 < step ? rows - r0 : step;
        if (t->p == NULL)
            memset(buf, 0, (size_t)(nr * cols) * sizeof *buf);
        else if (t->p->is_matrix)
            primal_model_get_rows(x->m, t->p, r0, nr, buf);
        else
            memcpy(buf, t->p->vec + r0, (size_t)nr * sizeof *buf);
        const float *src = buf;
        if (heads > 0) {
            /* (h, 2, hd/2, cols) -> (h, hd/2, 2, cols): row h*hd + 2i + j <- h*hd + j*hd/2 + i */
            for (int64_t h = 0; h < nr / hd; h++)
                for (int64_t i = 0; i < hd / 2; i++)
                    for (int j = 0; j < 2; j++)
                        memcpy(perm + (h * hd + 2 * i + j) * cols,
                               buf + (h * hd + j * hd / 2 + i) * cols,
                               (size_t)cols * sizeof *buf);
            src = perm;
        }
        convert(cbuf, src, nr * cols, gt);
        int rc = out_write(of, cbuf, (size_t)ggml_bytes(gt, nr * cols), err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    return PRIMAL_OK;
}

/* The scratch emit() needs for tensors of at most maxcols columns and maxhd-row heads. */
static int scratch(int64_t maxcols, int64_t maxhd, float **buf, float **perm,
                   unsigned char **cbuf, primal_err *err)
{
    size_t n = (size_t)(CHUNK_FLOATS + maxcols * (maxhd > 1 ? maxhd : 1) + maxcols);
    *buf = malloc(n * sizeof(float));
    *perm = malloc(n * sizeof(float));
    *cbuf = malloc(n * sizeof(float));
    if (*buf == NULL || *perm == NULL || *cbuf == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Hugging Face                                                                               */

static const char *torch_dtype(int d)
{
    return d == PRIMAL_EXPORT_F16 ? "float16" : d == PRIMAL_EXPORT_BF16 ? "bfloat16" : "float32";
}

static int hf_config(exporter *x, primal_err *err)
{
    const primal_model_config *mc = &x->mc;
    int qwen = mc->arch == PRIMAL_ARCH_QWEN2;
    char eps[40], theta[40], *txt = NULL, *bos = NULL, *eos = NULL;
    size_t len = 0;
    fmt_real(eps, sizeof eps, mc->norm_eps);
    fmt_real(theta, sizeof theta, mc->rope_theta);
    if (x->bos_json != NULL)
        bos = json_dumps(x->bos_json, JSON_COMPACT | JSON_ENCODE_ANY);
    if (x->eos_json != NULL)
        eos = json_dumps(x->eos_json, JSON_COMPACT | JSON_ENCODE_ANY);
    FILE *f = open_memstream(&txt, &len);
    if (f == NULL) {
        free(bos);
        free(eos);
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    }
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n",
            qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM", qwen ? "qwen2" : "llama");
    fprintf(f, "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
               "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n"
               "  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n  \"vocab_size\": %d,\n",
            mc->dim, mc->ffn, mc->layers, mc->heads, mc->kv_heads, mc->dim / mc->heads,
            mc->vocab);
    /* rope_theta as transformers 4 reads it, rope_parameters as transformers 5 writes it */
    fprintf(f, "  \"hidden_act\": \"silu\",\n  \"rms_norm_eps\": %s,\n  \"rope_theta\": %s,\n"
               "  \"rope_parameters\": {\"rope_theta\": %s, \"rope_type\": \"default\"},\n"
               "  \"max_position_embeddings\": %d,\n  \"tie_word_embeddings\": %s,\n",
            eps, theta, theta, x->context_length, mc->tied ? "true" : "false");
    if (qwen)
        fprintf(f, "  \"use_sliding_window\": false,\n  \"sliding_window\": null,\n");
    else
        fprintf(f, "  \"attention_bias\": %s,\n  \"mlp_bias\": false,\n",
                mc->qkv_bias ? "true" : "false");
    fprintf(f, "  \"attention_dropout\": 0.0,\n  \"initializer_range\": 0.02,\n"
               "  \"use_cache\": true,\n");
    if (bos != NULL)
        fprintf(f, "  \"bos_token_id\": %s,\n", bos);
    if (eos != NULL)
        fprintf(f, "  \"eos_token_id\": %s,\n", eos);
    else if (x->eos >= 0)
        fprintf(f, "  \"eos_token_id\": %lld,\n", (long long)x->eos);
    fprintf(f, "  \"torch_dtype\": \"%s\"\n}\n", torch_dtype(x->o->dtype));
    fclose(f);
    free(bos);
    free(eos);
    int rc = txt != NULL ? write_whole(x->dir, "config.json", txt, len, err)
                         : primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    free(txt);
    return rc;
}

/* GPT-2's byte -> code point table: printable Latin-1 bytes stand for themselves, the others
 * for 256, 257, ... in byte order. */
static void byte_to_unicode(uint32_t cp[256])
{
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        cp[b] = keep ? (uint32_t)b : next++;
    }
}

static int utf8_put(char *s, uint32_t cp)
{
    if (cp < 0x80) {
        s[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        s[0] = (char)(0xc0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    s[0] = (char)(0xe0 | (cp >> 12));
    s[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    s[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* The byte tokenizer for transformers: byte-level BPE over the 256 byte symbols and no merges,
 * so that every byte is one token and id = byte. */
static int hf_byte_tokenizer(exporter *x, primal_err *err)
{
    uint32_t cp[256];
    byte_to_unicode(cp);
    json_t *vocab = json_object();
    for (int b = 0; b < 256 && vocab != NULL; b++) {
        char s[4] = { 0 };
        utf8_put(s, cp[b]);
        json_object_set_new(vocab, s, json_integer(b));
    }
    json_t *root = json_pack(
        "{s:s, s:n, s:n, s:[], s:n, s:{s:s, s:b, s:b, s:b}, s:n, s:{s:s, s:b, s:b, s:b},"
        " s:{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:o, s:[]}}",
        "version", "1.0", "truncation", "padding", "added_tokens", "normalizer",
        "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
        "use_regex", 0, "post_processor", "decoder", "type", "ByteLevel", "add_prefix_space", 0,
        "trim_offsets", 0, "use_regex", 0, "model", "type", "BPE", "dropout", "unk_token",
        "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0,
        "vocab", vocab, "merges");
    char *txt = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (txt == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int rc = write_whole(x->dir, "tokenizer.json", txt, strlen(txt), err);
    free(txt);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n"
             "  \"clean_up_tokenization_spaces\": false,\n  \"model_max_length\": %d\n}\n",
             x->context_length);
    if (rc == PRIMAL_OK)
        rc = write_whole(x->dir, "tokenizer_config.json", cfg, strlen(cfg), err);
    return rc;
}

static int hf_tokenizer(exporter *x, primal_err *err)
{
    if (x->tokspec[0] == '\0')
        return PRIMAL_OK;
    if (strcmp(x->tokspec, "bytes") == 0)
        return hf_byte_tokenizer(x, err);
    /* tokenizer.json, and the files that sit beside it in a Hugging Face directory */
    static const char *const beside[] = { "tokenizer_config.json", "special_tokens_map.json",
                                          "vocab.json", "merges.txt", "added_tokens.json",
                                          "chat_template.jinja", "generation_config.json", NULL };
    char src[4200], dirpart[4096];
    snprintf(dirpart, sizeof dirpart, "%s", x->tokspec);
    char *slash = strrchr(dirpart, '/');
    if (slash != NULL)
        *slash = '\0';
    else
        snprintf(dirpart, sizeof dirpart, ".");
    int copied_config = 0;
    for (int i = -1; i < 0 || beside[i] != NULL; i++) {
        const char *name = i < 0 ? "tokenizer.json" : beside[i];
        if (i < 0)
            snprintf(src, sizeof src, "%s", x->tokspec);
        else
            snprintf(src, sizeof src, "%s/%s", dirpart, name);
        if (i >= 0 && !is_file(src))
            continue;
        char *data = NULL;
        size_t n = 0;
        int rc = read_whole(src, &data, &n, err);
        if (rc == PRIMAL_OK)
            rc = write_whole(x->dir, name, data, n, err);
        free(data);
        if (rc != PRIMAL_OK)
            return rc;
        copied_config |= i == 0;
    }
    if (!copied_config) {
        char cfg[256];
        snprintf(cfg, sizeof cfg, "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n"
                 "  \"model_max_length\": %d\n}\n", x->context_length);
        return write_whole(x->dir, "tokenizer_config.json", cfg, strlen(cfg), err);
    }
    return PRIMAL_OK;
}

/* "model-00001-of-00003.safetensors" and the like (any digits). */
static int is_shard_name(const char *s)
{
    if (strncmp(s, "model-", 6) != 0 || !ends_with(s, ".safetensors"))
        return 0;
    const char *p = s + 6;
    size_t a = strspn(p, "0123456789");
    if (a == 0 || strncmp(p + a, "-of-", 4) != 0)
        return 0;
    p += a + 4;
    size_t b = strspn(p, "0123456789");
    return b > 0 && strcmp(p + b, ".safetensors") == 0;
}

/* Remove what an earlier export left that this one did not write: other shards, and the index or
 * the single file, whichever this export does not have. */
static void hf_remove_stale(exporter *x, int nshards)
{
    DIR *d = opendir(x->dir);
    if (d == NULL)
        return;
    char keep[64], path[4400];
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int stale = 0;
        if (is_shard_name(e->d_name)) {
            stale = 1;
            for (int s = 1; s <= nshards && nshards > 1; s++) {
                snprintf(keep, sizeof keep, "model-%05d-of-%05d.safetensors", s, nshards);
                stale &= strcmp(e->d_name, keep) != 0;
            }
        } else if (strcmp(e->d_name, "model.safetensors.index.json") == 0) {
            stale = nshards == 1;
        } else if (strcmp(e->d_name, "model.safetensors") == 0) {
            stale = nshards > 1;
        }
        if (stale) {
            snprintf(path, sizeof path, "%s/%s", x->dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

static int hf_weights(exporter *x, primal_err *err)
{
    int dt = x->o->dtype, gt = dt == PRIMAL_EXPORT_F16 ? GGML_F16
                                 : dt == PRIMAL_EXPORT_BF16 ? GGML_BF16 : GGML_F32;
    const char *stname = gt == GGML_F16 ? "F16" : gt == GGML_BF16 ? "BF16" : "F32";
    int64_t limit = x->o->shard_bytes > 0 ? x->o->shard_bytes : PRIMAL_EXPORT_SHARD_DEFAULT;
    hf_tensor *t = NULL;
    int n = 0, rc = list_tensors(x, x->mc.arch == PRIMAL_ARCH_QWEN2 && !x->mc.qkv_bias, &t, &n,
                                 err);
    if (rc != PRIMAL_OK)
        return rc;
    /* shards: a new one when the next tensor would take this one past the limit */
    int *shard = calloc((size_t)n, sizeof *shard), nshards = 1;
    int64_t used = 0, total = 0, maxcols = 1;
    for (int i = 0; shard != NULL && i < n; i++) {
        int64_t b = ggml_bytes(gt, t[i].rows * (t[i].cols > 0 ? t[i].cols : 1));
        if (used > 0 && used + b > limit) {
            nshards++;
            used = 0;
        }
        shard[i] = nshards;
        used += b;
        total += b;
        if (t[i].cols > maxcols)
            maxcols = t[i].cols;
    }
    float *buf = NULL, *perm = NULL;
    unsigned char *cbuf = NULL;
    json_t *map = json_object();
    if (shard == NULL || map == NULL)
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    if (rc == PRIMAL_OK)
        rc = scratch(maxcols, 1, &buf, &perm, &cbuf, err);
    outfile of = { 0 };
    for (int s = 1, i0 = 0; rc == PRIMAL_OK && s <= nshards; s++) {
        char fname[64];
        if (nshards == 1)
            snprintf(fname, sizeof fname, "model.safetensors");
        else
            snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s, nshards);
        int i1 = i0;
        while (i1 < n && shard[i1] == s)
            i1++;
        /* the header: {"__metadata__":{"format":"pt"}, NAME: {dtype, shape, data_offsets}...} */
        char *hdr = NULL;
        size_t hlen = 0;
        FILE *h = open_memstream(&hdr, &hlen);
        if (h == NULL) {
            rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
            break;
        }
        fputs("{\"__metadata__\":{\"format\":\"pt\"}", h);
        int64_t off = 0;
        for (int i = i0; i < i1; i++) {
            int64_t b = ggml_bytes(gt, t[i].rows * (t[i].cols > 0 ? t[i].cols : 1));
            if (t[i].cols > 0)
                fprintf(h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],", t[i].name, stname,
                        (long long)t[i].rows, (long long)t[i].cols);
            else
                fprintf(h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],", t[i].name, stname,
                        (long long)t[i].rows);
            fprintf(h, "\"data_offsets\":[%lld,%lld]}", (long long)off, (long long)(off + b));
            off += b;
            json_object_set_new(map, t[i].name, json_string(fname));
        }
        fputc('}', h);
        while ((ftell(h) % 8) != 0)
            fputc(' ', h);
        fclose(h);
        if (hdr == NULL) {
            rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
            break;
        }
        unsigned char lenb[8];
        for (int k = 0; k < 8; k++)
            lenb[k] = (unsigned char)((uint64_t)hlen >> (8 * k));
        rc = out_open(&of, x->dir, fname, err);
        if (rc == PRIMAL_OK)
            rc = out_write(&of, lenb, 8, err);
        if (rc == PRIMAL_OK)
            rc = out_write(&of, hdr, hlen, err);
        free(hdr);
        for (int i = i0; rc == PRIMAL_OK && i < i1; i++)
            rc = emit(x, &t[i], gt, &of, buf, perm, cbuf, err);
        if (rc == PRIMAL_OK)
            rc = out_commit(&of, err);
        out_abort(&of);
        i0 = i1;
    }
    if (rc == PRIMAL_OK && nshards > 1) {
        json_t *idx = json_pack("{s:{s:I}, s:O}", "metadata", "total_size", (json_int_t)total,
                                "weight_map", map);
        char *txt = idx ? json_dumps(idx, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        rc = txt ? write_whole(x->dir, "model.safetensors.index.json", txt, strlen(txt), err)
                 : primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        free(txt);
        json_decref(idx);
    }
    if (rc == PRIMAL_OK) {
        hf_remove_stale(x, nshards);
        if (nshards > 1)
            note(x->o, "%lld bytes of tensors in %d shards (--shard-size %lld)",
                 (long long)total, nshards, (long long)limit);
    }
    json_decref(map);
    free(buf);
    free(perm);
    free(cbuf);
    free(shard);
    free(t);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* GGUF                                                                                       */

typedef struct gbuf {
    unsigned char *p;
    size_t n, cap;
    int oom;
} gbuf;

static void put(gbuf *b, const void *v, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (np == NULL) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, v, n);
    b->n += n;
}

static void put_u32(gbuf *b, uint32_t v)
{
    unsigned char s[4] = { (unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 24) };
    put(b, s, 4);
}

static void put_u64(gbuf *b, uint64_t v)
{
    put_u32(b, (uint32_t)v);
    put_u32(b, (uint32_t)(v >> 32));
}

static void put_str(gbuf *b, const char *s, size_t n)
{
    put_u64(b, n);
    put(b, s, n);
}

typedef struct kvs {
    gbuf b;
    uint64_t n;
} kvs;

static void kv_key(kvs *k, const char *key, uint32_t type)
{
    put_str(&k->b, key, strlen(key));
    put_u32(&k->b, type);
    k->n++;
}

static void kv_u32(kvs *k, const char *key, uint32_t v)
{
    kv_key(k, key, GT_U32);
    put_u32(&k->b, v);
}

static void kv_f32(kvs *k, const char *key, double v)
{
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    kv_key(k, key, GT_F32);
    put_u32(&k->b, u);
}

static void kv_bool(kvs *k, const char *key, int v)
{
    unsigned char c = v != 0;
    kv_key(k, key, GT_BOOL);
    put(&k->b, &c, 1);
}

static void kv_str(kvs *k, const char *key, const char *v)
{
    kv_key(k, key, GT_STRING);
    put_str(&k->b, v, strlen(v));
}

static void kv_arr(kvs *k, const char *key, uint32_t elem, uint64_t n)
{
    kv_key(k, key, GT_ARRAY);
    put_u32(&k->b, elem);
    put_u64(&k->b, n);
}

/* llama.cpp's name for a Hugging Face tensor name, into out; 0 when unknown. */
static int gguf_name(const char *hf, char *out, size_t n)
{
    static const char *const map[][2] = {
        { "input_layernorm.weight", "attn_norm.weight" },
        { "self_attn.q_proj.weight", "attn_q.weight" },
        { "self_attn.q_proj.bias", "attn_q.bias" },
        { "self_attn.k_proj.weight", "attn_k.weight" },
        { "self_attn.k_proj.bias", "attn_k.bias" },
        { "self_attn.v_proj.weight", "attn_v.weight" },
        { "self_attn.v_proj.bias", "attn_v.bias" },
        { "self_attn.o_proj.weight", "attn_output.weight" },
        { "post_attention_layernorm.weight", "ffn_norm.weight" },
        { "mlp.gate_proj.weight", "ffn_gate.weight" },
        { "mlp.up_proj.weight", "ffn_up.weight" },
        { "mlp.down_proj.weight", "ffn_down.weight" },
    };
    if (strcmp(hf, "model.embed_tokens.weight") == 0)
        return snprintf(out, n, "token_embd.weight") > 0;
    if (strcmp(hf, "model.norm.weight") == 0)
        return snprintf(out, n, "output_norm.weight") > 0;
    if (strcmp(hf, "lm_head.weight") == 0)
        return snprintf(out, n, "output.weight") > 0;
    int layer, used = 0;
    if (sscanf(hf, "model.layers.%d.%n", &layer, &used) != 1 || used == 0)
        return 0;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(hf + used, map[i][0]) == 0)
            return snprintf(out, n, "blk.%d.%s", layer, map[i][1]) > 0;
    return 0;
}

/* llama.cpp's pre-tokenizer for the Split regexes PRIMAL's tokenizer reads: the Qwen2 and
 * Llama 3 ones, as their tokenizer.json files spell them. */
static const char *pre_for_regex(const char *re)
{
    static const char *const table[][2] = {
        { "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
          "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "qwen2" },
        { "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}"
          "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "llama-bpe" },
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(re, table[i][0]) == 0)
            return table[i][1];
    return NULL;
}

/* The tokenizer into the key/values: the byte tokenizer as 256 byte-level tokens and no merges
 * (so llama.cpp gives id = byte whatever its pre-tokenizer splits), or a tokenizer.json's vocab,
 * added tokens, merges and pre-tokenizer. */
static int gguf_tokenizer(exporter *x, kvs *k, primal_err *err)
{
    int V = x->mc.vocab;
    char **tok = calloc((size_t)V, sizeof *tok);
    int32_t *type = calloc((size_t)V, sizeof *type);
    json_t *root = NULL;
    int rc = PRIMAL_OK, add_bos = 0;
    const char *pre = x->o->gguf_pre;
    json_t *merges = NULL;
    if (tok == NULL || type == NULL) {
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        goto out;
    }
    if (strcmp(x->tokspec, "bytes") == 0) {
        uint32_t cp[256];
        byte_to_unicode(cp);
        for (int b = 0; b < 256 && b < V; b++) {
            char s[4] = { 0 };
            utf8_put(s, cp[b]);
            tok[b] = strdup(s);
            type[b] = TT_NORMAL;
        }
        /* with no merges any pre-tokenizer gives one token a byte; qwen2 leaves spaces alone
         * when decoding (clean_spaces false) */
        if (pre == NULL)
            pre = "qwen2";
    } else {
        json_error_t je;
        root = json_load_file(x->tokspec, 0, &je);
        json_t *model = json_object_get(root, "model");
        json_t *vocab = json_object_get(model, "vocab");
        merges = json_object_get(model, "merges");
        if (root == NULL || !json_is_object(vocab) || !json_is_array(merges)) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: not a BPE tokenizer.json%s%s", x->tokspec,
                             root == NULL ? ": " : "", root == NULL ? je.text : "");
            goto out;
        }
        const char *key;
        json_t *v;
        json_object_foreach(vocab, key, v) {
            json_int_t id = json_integer_value(v);
            if (json_is_integer(v) && id >= 0 && id < V && tok[id] == NULL) {
                tok[id] = strdup(key);
                type[id] = TT_NORMAL;
            }
        }
        size_t i;
        json_array_foreach(json_object_get(root, "added_tokens"), i, v) {
            json_int_t id = json_integer_value(json_object_get(v, "id"));
            const char *s = json_string_value(json_object_get(v, "content"));
            if (s == NULL || id < 0 || id >= V)
                continue;
            free(tok[id]);
            tok[id] = strdup(s);
            type[id] = json_is_true(json_object_get(v, "special")) ? TT_CONTROL : TT_USER_DEFINED;
        }
        if (pre == NULL) {
            json_t *pt = json_object_get(root, "pre_tokenizer"), *steps, *re = NULL;
            steps = json_object_get(pt, "pretokenizers");
            json_array_foreach(steps, i, v) {
                const char *ty = json_string_value(json_object_get(v, "type"));
                if (ty != NULL && strcmp(ty, "Split") == 0 && re == NULL)
                    re = json_object_get(json_object_get(v, "pattern"), "Regex");
            }
            const char *res = json_string_value(re);
            pre = res ? pre_for_regex(res) : NULL;
            if (pre == NULL) {
                rc = primal_errf(err, PRIMAL_ECONFIG,
                                 "%s: pre_tokenizer: no llama.cpp pre-tokenizer is known for "
                                 "the Split regex %s (known: Qwen2's and Llama 3's); pass "
                                 "--gguf-pre NAME, one of llama.cpp's that splits the same",
                                 x->tokspec, res ? res : "(none)");
                goto out;
            }
        }
        /* a post_processor that starts each text with a special token: llama.cpp adds it too */
        json_t *single = json_object_get(json_object_get(root, "post_processor"), "single");
        json_t *first = json_object_get(json_array_get(single, 0), "SpecialToken");
        const char *bname = json_string_value(json_object_get(first, "id"));
        if (bname != NULL) {
            json_t *sp = json_object_get(json_object_get(root, "post_processor"),
                                         "special_tokens");
            json_int_t bid = first_id(json_object_get(json_object_get(sp, bname), "ids"));
            if (bid >= 0 && bid < V) {
                add_bos = 1;
                if (x->bos < 0)
                    x->bos = bid;
            }
        }
    }
    for (int i = 0; i < V; i++) {
        if (tok[i] == NULL) {
            char s[32];
            snprintf(s, sizeof s, "[PAD%d]", i);
            tok[i] = strdup(s);
            type[i] = TT_UNUSED;
        }
        if (tok[i] == NULL) {
            rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
            goto out;
        }
    }
    kv_str(k, "tokenizer.ggml.model", "gpt2");
    kv_str(k, "tokenizer.ggml.pre", pre);
    kv_arr(k, "tokenizer.ggml.tokens", GT_STRING, (uint64_t)V);
    for (int i = 0; i < V; i++)
        put_str(&k->b, tok[i], strlen(tok[i]));
    kv_arr(k, "tokenizer.ggml.token_type", GT_I32, (uint64_t)V);
    for (int i = 0; i < V; i++)
        put_u32(&k->b, (uint32_t)type[i]);
    size_t nm = merges ? json_array_size(merges) : 0;
    kv_arr(k, "tokenizer.ggml.merges", GT_STRING, nm);
    for (size_t i = 0; i < nm; i++) {
        json_t *mg = json_array_get(merges, i);
        char pair[2048];
        const char *s = json_string_value(mg);
        if (s == NULL) { /* ["a", "b"] */
            const char *a = json_string_value(json_array_get(mg, 0));
            const char *b = json_string_value(json_array_get(mg, 1));
            snprintf(pair, sizeof pair, "%s %s", a ? a : "", b ? b : "");
            s = pair;
        }
        put_str(&k->b, s, strlen(s));
    }
    if (x->bos >= 0 && x->bos < V)
        kv_u32(k, "tokenizer.ggml.bos_token_id", (uint32_t)x->bos);
    if (x->eos >= 0 && x->eos < V)
        kv_u32(k, "tokenizer.ggml.eos_token_id", (uint32_t)x->eos);
    kv_bool(k, "tokenizer.ggml.add_bos_token", add_bos);
    if (root != NULL) { /* the chat template of tokenizer_config.json beside, if any */
        char cfg[4200], dirpart[4096];
        snprintf(dirpart, sizeof dirpart, "%s", x->tokspec);
        char *slash = strrchr(dirpart, '/');
        if (slash != NULL)
            *slash = '\0';
        snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", slash ? dirpart : ".");
        json_t *tc = is_file(cfg) ? json_load_file(cfg, 0, NULL) : NULL;
        const char *tmpl = json_string_value(json_object_get(tc, "chat_template"));
        if (tmpl != NULL)
            kv_str(k, "tokenizer.chat_template", tmpl);
        json_decref(tc);
    }
out:
    for (int i = 0; tok != NULL && i < V; i++)
        free(tok[i]);
    free(tok);
    free(type);
    json_decref(root);
    return rc;
}

static int write_gguf(exporter *x, primal_err *err)
{
    const primal_model_config *mc = &x->mc;
    const char *arch = mc->arch == PRIMAL_ARCH_QWEN2 ? "qwen2" : "llama";
    int dt = x->o->dtype;
    int mt = dt == PRIMAL_EXPORT_F16 ? GGML_F16 : dt == PRIMAL_EXPORT_BF16 ? GGML_BF16
           : dt == PRIMAL_EXPORT_Q8_0 ? GGML_Q8_0 : GGML_F32;
    static const uint32_t ftype[] = { 0, 1, 32, 7 }; /* llama_ftype: ALL_F32, MOSTLY_F16, ... */
    kvs k = { { 0 }, 0 };
    char key[128];
    kv_str(&k, "general.architecture", arch);
    kv_str(&k, "general.name", x->name);
    kv_u32(&k, "general.file_type", ftype[dt]);
    if (mt == GGML_Q8_0)
        kv_u32(&k, "general.quantization_version", 2);
#define ARCHKEY(s) (snprintf(key, sizeof key, "%s.%s", arch, s), key)
    kv_u32(&k, ARCHKEY("context_length"), (uint32_t)x->context_length);
    kv_u32(&k, ARCHKEY("embedding_length"), (uint32_t)mc->dim);
    kv_u32(&k, ARCHKEY("block_count"), (uint32_t)mc->layers);
    kv_u32(&k, ARCHKEY("feed_forward_length"), (uint32_t)mc->ffn);
    kv_u32(&k, ARCHKEY("attention.head_count"), (uint32_t)mc->heads);
    kv_u32(&k, ARCHKEY("attention.head_count_kv"), (uint32_t)mc->kv_heads);
    kv_f32(&k, ARCHKEY("attention.layer_norm_rms_epsilon"), mc->norm_eps);
    kv_f32(&k, ARCHKEY("rope.freq_base"), mc->rope_theta);
    kv_u32(&k, ARCHKEY("rope.dimension_count"), (uint32_t)(mc->dim / mc->heads));
    kv_u32(&k, ARCHKEY("vocab_size"), (uint32_t)mc->vocab);
#undef ARCHKEY
    int rc = gguf_tokenizer(x, &k, err);
    hf_tensor *t = NULL;
    int n = 0;
    if (rc == PRIMAL_OK)
        rc = list_tensors(x, 0, &t, &n, err);
    gbuf ti = { 0 };
    int *gt = rc == PRIMAL_OK ? calloc((size_t)n, sizeof *gt) : NULL;
    if (rc == PRIMAL_OK && gt == NULL)
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    uint64_t off = 0;
    int64_t maxcols = 1, fallback = 0;
    for (int i = 0; rc == PRIMAL_OK && i < n; i++) {
        char gname[128];
        if (!gguf_name(t[i].name, gname, sizeof gname)) {
            rc = primal_errf(err, PRIMAL_ERROR, "%s: tensor %s: no llama.cpp name",
                             x->ckpt_path, t[i].name);
            break;
        }
        gt[i] = t[i].cols > 0 ? mt : GGML_F32;
        if (gt[i] == GGML_Q8_0 && t[i].cols % 32 != 0) {
            gt[i] = GGML_F16; /* as convert_hf_to_gguf.py falls back */
            if (fallback++ == 0)
                note(x->o, "q8_0: %s has %lld columns, not a multiple of 32: written as f16, as "
                     "llama.cpp's converter does (so are any others like it)", t[i].name,
                     (long long)t[i].cols);
        }
        if (t[i].cols > maxcols)
            maxcols = t[i].cols;
        put_str(&ti, gname, strlen(gname));
        put_u32(&ti, t[i].cols > 0 ? 2 : 1);
        if (t[i].cols > 0)
            put_u64(&ti, (uint64_t)t[i].cols);
        put_u64(&ti, (uint64_t)t[i].rows);
        put_u32(&ti, (uint32_t)gt[i]);
        put_u64(&ti, off);
        uint64_t b = (uint64_t)ggml_bytes(gt[i], t[i].rows * (t[i].cols > 0 ? t[i].cols : 1));
        off += (b + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN;
    }
    if (rc == PRIMAL_OK && (k.b.oom || ti.oom))
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    float *buf = NULL, *perm = NULL;
    unsigned char *cbuf = NULL;
    if (rc == PRIMAL_OK)
        rc = scratch(maxcols, mc->dim / mc->heads, &buf, &perm, &cbuf, err);
    outfile of = { 0 };
    if (rc == PRIMAL_OK)
        rc = out_open(&of, x->dir, "model.gguf", err);
    if (rc == PRIMAL_OK) {
        gbuf h = { 0 };
        put(&h, "GGUF", 4);
        put_u32(&h, 3);
        put_u64(&h, (uint64_t)n);
        put_u64(&h, k.n);
        static const unsigned char zeros[GGUF_ALIGN] = { 0 };
        size_t pos = h.n + k.b.n + ti.n;
        rc = h.oom ? primal_errf(err, PRIMAL_ENOMEM, "out of memory") : PRIMAL_OK;
        if (rc == PRIMAL_OK)
            rc = out_write(&of, h.p, h.n, err);
        if (rc == PRIMAL_OK)
            rc = out_write(&of, k.b.p, k.b.n, err);
        if (rc == PRIMAL_OK)
            rc = out_write(&of, ti.p, ti.n, err);
        if (rc == PRIMAL_OK)
            rc = out_write(&of, zeros, (GGUF_ALIGN - pos % GGUF_ALIGN) % GGUF_ALIGN, err);
        for (int i = 0; rc == PRIMAL_OK && i < n; i++) {
            rc = emit(x, &t[i], gt[i], &of, buf, perm, cbuf, err);
            uint64_t b = (uint64_t)ggml_bytes(gt[i], t[i].rows * (t[i].cols > 0 ? t[i].cols : 1));
            if (rc == PRIMAL_OK)
                rc = out_write(&of, zeros, (GGUF_ALIGN - b % GGUF_ALIGN) % GGUF_ALIGN, err);
        }
        free(h.p);
        if (rc == PRIMAL_OK)
            rc = out_commit(&of, err);
        out_abort(&of);
    }
    free(buf);
    free(perm);
    free(cbuf);
    free(gt);
    free(t);
    free(ti.p);
    free(k.b.p);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */

int primal_export(const char *ckpt_path, const char *out_dir, const primal_export_opts *o,
                  primal_err *err)
{
    if (o->format != PRIMAL_EXPORT_HF && o->format != PRIMAL_EXPORT_GGUF)
        return primal_errf(err, PRIMAL_ECONFIG, "format: expected hf or gguf");
    if (o->dtype < PRIMAL_EXPORT_F32 || o->dtype > PRIMAL_EXPORT_Q8_0)
        return primal_errf(err, PRIMAL_ECONFIG, "dtype: expected f32, f16, bf16 or q8_0");
    if (o->format == PRIMAL_EXPORT_HF && o->dtype == PRIMAL_EXPORT_Q8_0)
        return primal_errf(err, PRIMAL_ECONFIG, "dtype q8_0: GGUF only (hf takes f32, f16 or "
                           "bf16)");
    exporter x = { 0 };
    x.o = o;
    x.ckpt_path = ckpt_path;
    x.dir = out_dir;
    const char *base = strrchr(ckpt_path, '/');
    snprintf(x.name, sizeof x.name, "%s", base ? base + 1 : ckpt_path);
    if (ends_with(x.name, ".safetensors"))
        x.name[strlen(x.name) - strlen(".safetensors")] = '\0';

    primal_ckpt *c = NULL;
    int rc = primal_ckpt_open(ckpt_path, &c, err);
    if (rc == PRIMAL_OK)
        rc = primal_ckpt_model_config(c, &x.mc, err);
    if (rc == PRIMAL_OK)
        rc = primal_model_create(&x.mc, primal_ckpt_grid_for, c, &x.m, err);
    if (rc == PRIMAL_OK)
        rc = primal_ckpt_load_model(c, x.m, err);
    if (rc == PRIMAL_OK)
        rc = resolve(&x, c, err);
    if (rc == PRIMAL_OK && !is_dir(out_dir) && mkdir(out_dir, 0777) != 0)
        rc = primal_errf(err, PRIMAL_EIO, "%s: cannot create the directory: %s", out_dir,
                         strerror(errno));
    if (rc == PRIMAL_OK && o->format == PRIMAL_EXPORT_HF) {
        rc = hf_config(&x, err);
        if (rc == PRIMAL_OK)
            rc = hf_weights(&x, err);
        if (rc == PRIMAL_OK)
            rc = hf_tokenizer(&x, err);
    } else if (rc == PRIMAL_OK) {
        rc = write_gguf(&x, err);
    }
    json_decref(x.init_config);
    primal_model_free(x.m);
    primal_ckpt_close(c); /* after the model: it holds the grids */
    return rc;
}
