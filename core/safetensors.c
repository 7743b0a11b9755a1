/* safetensors.c: read and write safetensors files (primal/safetensors.h; SPEC.md, "Models":
 * imports read Hugging Face model.safetensors; our checkpoints are safetensors too, see
 * docs/FORMAT.md).
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {str: str}, NAME: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}}
 * then the data section; offsets are relative to it.
 *
 * Reading maps the file read-only and checks every header fact before anything is used, so a
 * truncated or corrupt file fails with "PATH: problem" (PRIMAL_EIO) rather than a wild read.
 *
 * Writing lays the tensors out back to back in the order added (contiguous, as the reference
 * implementation requires of a reader) and pads the JSON with spaces so that the data section
 * starts at a multiple of 8.  Two checksums go into __metadata__:
 *   "primal.data_sha256"   SHA-256 of the data section;
 *   "primal.header_sha256" SHA-256 of the 8 length bytes and the N header bytes, taken while
 *                          this value's 64 hex digits are all '0' (so that a flipped byte in a
 *                          tensor name or a metadata string is caught too, not only in data).
 * primal_st_verify() checks the first (required) and the second (when present).
 * The file is written as PATH.tmp.PID, fsync'ed, renamed over PATH, and the directory fsync'ed;
 * on any error the temporary file is removed and PATH is left as it was. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include <primal/safetensors.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format is little-endian)"
#endif

/* A header larger than this is not a model header but a corrupt length field. */
#define HEADER_MAX ((uint64_t)100 * 1000 * 1000)

#define KEY_DATA_SHA "primal.data_sha256"
#define KEY_HEADER_SHA "primal.header_sha256"

/* ------------------------------------------------------------------------------------------ */
/* dtypes                                                                                     */

static const struct {
    primal_dtype d;
    const char *name;
    size_t size;
} dtypes[] = {
    { PRIMAL_F32, "F32", 4 },  { PRIMAL_F16, "F16", 2 },  { PRIMAL_BF16, "BF16", 2 },
    { PRIMAL_F64, "F64", 8 },  { PRIMAL_U8, "U8", 1 },    { PRIMAL_I8, "I8", 1 },
    { PRIMAL_U16, "U16", 2 },  { PRIMAL_I16, "I16", 2 },  { PRIMAL_U32, "U32", 4 },
    { PRIMAL_I32, "I32", 4 },  { PRIMAL_I64, "I64", 8 },  { PRIMAL_BOOL, "BOOL", 1 },
};
#define NDTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

size_t primal_dtype_size(primal_dtype d)
{
    for (int i = 0; i < NDTYPES; i++)
        if (dtypes[i].d == d)
            return dtypes[i].size;
    return 0;
}

const char *primal_dtype_name(primal_dtype d)
{
    for (int i = 0; i < NDTYPES; i++)
        if (dtypes[i].d == d)
            return dtypes[i].name;
    return "?";
}

static int dtype_from_name(const char *s, primal_dtype *out)
{
    for (int i = 0; i < NDTYPES; i++)
        if (strcmp(dtypes[i].name, s) == 0) {
            *out = dtypes[i].d;
            return 1;
        }
    return 0;
}

static int is_float_dtype(primal_dtype d)
{
    return d == PRIMAL_F32 || d == PRIMAL_F16 || d == PRIMAL_BF16 || d == PRIMAL_F64;
}

/* "[3,4]" into buf, for messages. */
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
    return buf;
}

/* ------------------------------------------------------------------------------------------ */
/* SHA-256                                                                                    */

static void hex_digest(const unsigned char *md, char out[65])
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hx[md[i] >> 4];
        out[2 * i + 1] = hx[md[i] & 15];
    }
    out[64] = '\0';
}

/* SHA-256 over up to three byte ranges (the header hash needs three).  0 on failure, which only
 * an OpenSSL without SHA-256 could produce. */
static int sha256_parts(const void *a, size_t na, const void *b, size_t nb, const void *c,
                        size_t nc, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             (na == 0 || EVP_DigestUpdate(ctx, a, na) == 1) &&
             (nb == 0 || EVP_DigestUpdate(ctx, b, nb) == 1) &&
             (nc == 0 || EVP_DigestUpdate(ctx, c, nc) == 1) &&
             EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    if (ok)
        hex_digest(md, out);
    else
        memset(out, 0, 65);
    return ok;
}

void primal_sha256_hex(const void *data, size_t n, char out[65])
{
    sha256_parts(data, n, NULL, 0, NULL, 0, out);
}

/* ------------------------------------------------------------------------------------------ */
/* Reader                                                                                     */

struct primal_st {
    char *path;
    const unsigned char *map;
    size_t size;        /* file bytes */
    uint64_t hlen;      /* N */
    size_t data_off;    /* 8 + N */
    json_t *root;       /* owns the name and metadata strings the tensors point at */
    int n;
    primal_st_tensor *t; /* (n) header order */
    const primal_st_tensor **by_name; /* (n) sorted by name, for bsearch */
};

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp((*(const primal_st_tensor *const *)a)->name,
                  (*(const primal_st_tensor *const *)b)->name);
}

typedef struct range {
    uint64_t b, e;
    int i;
} range;

static int cmp_range(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e < y->e ? -1 : x->e > y->e);
}

/* Parse one tensor entry of the header into t.  data_size bounds the offsets. */
static int parse_entry(const char *path, const char *name, json_t *v, uint64_t data_size,
                       primal_st_tensor *t, uint64_t *b_out, uint64_t *e_out, primal_err *err)
{
    if (!json_is_object(v))
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: header entry is not an object",
                           path, name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: dtype missing or not a string",
                           path, name);
    if (!dtype_from_name(json_string_value(jd), &t->dtype))
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: unknown dtype \"%s\"", path, name,
                           json_string_value(jd));
    if (!json_is_array(js))
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: shape missing or not a list", path,
                           name);
    size_t nd = json_array_size(js);
    if (nd > PRIMAL_ST_MAXDIM)
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: %zu dimensions, at most %d supported",
                           path, name, nd, PRIMAL_ST_MAXDIM);
    t->name = name;
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t k = 0; k < nd; k++) {
        json_t *d = json_array_get(js, k);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return primal_errf(err, PRIMAL_EIO,
                               "%s: tensor %s: shape is not a list of non-negative integers",
                               path, name);
        t->shape[k] = (int64_t)json_integer_value(d);
        if (__builtin_mul_overflow(numel, (uint64_t)t->shape[k], &numel))
            return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: shape overflows", path, name);
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)primal_dtype_size(t->dtype), &nbytes) ||
        numel > (uint64_t)INT64_MAX)
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: shape overflows", path, name);
    t->numel = (int64_t)numel;
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)) ||
        json_integer_value(json_array_get(jo, 0)) < 0 ||
        json_integer_value(json_array_get(jo, 1)) < 0)
        return primal_errf(err, PRIMAL_EIO,
                           "%s: tensor %s: data_offsets is not a pair of non-negative integers",
                           path, name);
    uint64_t b = (uint64_t)json_integer_value(json_array_get(jo, 0));
    uint64_t e = (uint64_t)json_integer_value(json_array_get(jo, 1));
    if (b > e || e > data_size)
        return primal_errf(err, PRIMAL_EIO,
                           "%s: tensor %s: byte range [%llu, %llu) outside the data section "
                           "(%llu bytes)",
                           path, name, (unsigned long long)b, (unsigned long long)e,
                           (unsigned long long)data_size);
    if (e - b != nbytes) {
        char sb[160];
        return primal_errf(err, PRIMAL_EIO,
                           "%s: tensor %s: byte range holds %llu bytes, shape %s of %s needs %llu",
                           path, name, (unsigned long long)(e - b),
                           shape_str(sb, sizeof sb, t->ndim, t->shape),
                           primal_dtype_name(t->dtype), (unsigned long long)nbytes);
    }
    t->nbytes = (size_t)nbytes;
    *b_out = b;
    *e_out = e;
    return PRIMAL_OK;
}

static int parse_header(primal_st *st, primal_err *err)
{
    const char *path = st->path;
    json_error_t je;
    st->root = json_loadb((const char *)st->map + 8, (size_t)st->hlen, JSON_REJECT_DUPLICATES, &je);
    if (st->root == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: header is not valid JSON: %s (at byte %d)", path,
                           je.text, je.position);
    if (!json_is_object(st->root))
        return primal_errf(err, PRIMAL_EIO, "%s: header is not a JSON object", path);

    json_t *meta = json_object_get(st->root, "__metadata__");
    if (meta != NULL) {
        if (!json_is_object(meta))
            return primal_errf(err, PRIMAL_EIO, "%s: __metadata__ is not an object", path);
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v))
                return primal_errf(err, PRIMAL_EIO, "%s: __metadata__: %s: value is not a string",
                                   path, k);
        }
    }

    size_t cap = json_object_size(st->root);
    st->t = calloc(cap ? cap : 1, sizeof *st->t);
    st->by_name = calloc(cap ? cap : 1, sizeof *st->by_name);
    range *rg = calloc(cap ? cap : 1, sizeof *rg);
    if (st->t == NULL || st->by_name == NULL || rg == NULL) {
        free(rg);
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory for %zu tensors", path, cap);
    }
    uint64_t data_size = st->size - st->data_off;
    const char *k;
    json_t *v;
    int rc = PRIMAL_OK;
    json_object_foreach(st->root, k, v) {
        if (strcmp(k, "__metadata__") == 0)
            continue;
        primal_st_tensor *t = &st->t[st->n];
        rc = parse_entry(path, k, v, data_size, t, &rg[st->n].b, &rg[st->n].e, err);
        if (rc != PRIMAL_OK)
            goto out;
        t->data = st->map + st->data_off + rg[st->n].b;
        rg[st->n].i = st->n;
        st->by_name[st->n] = t;
        st->n++;
    }
    /* Overlap: after sorting by start, each non-empty range must begin at or after the end of
     * every earlier non-empty one. */
    qsort(rg, (size_t)st->n, sizeof *rg, cmp_range);
    uint64_t end = 0;
    int last = -1;
    for (int i = 0; i < st->n; i++) {
        if (rg[i].b == rg[i].e)
            continue;
        if (last >= 0 && rg[i].b < end) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: tensors %s and %s overlap in the data section",
                             path, st->t[last].name, st->t[rg[i].i].name);
            goto out;
        }
        end = rg[i].e;
        last = rg[i].i;
    }
    qsort(st->by_name, (size_t)st->n, sizeof *st->by_name, cmp_by_name);
out:
    free(rg);
    return rc;
}

int primal_st_open(const char *path, primal_st **out, primal_err *err)
{
    *out = NULL;
    primal_st *st = calloc(1, sizeof *st);
    if (st == NULL || (st->path = strdup(path)) == NULL) {
        free(st);
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
    }
    int rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    int got = fstat(fd, &sb) == 0;
    if (!got || !S_ISREG(sb.st_mode)) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: %s", path,
                         got && S_ISDIR(sb.st_mode) ? "is a directory, not a safetensors file"
                                                    : "not a regular file");
        close(fd);
        goto fail;
    }
    st->size = (size_t)sb.st_size;
    if (st->size < 8) {
        rc = primal_errf(err, PRIMAL_EIO,
                         "%s: file is %zu bytes, shorter than the 8-byte header length", path,
                         st->size);
        close(fd);
        goto fail;
    }
    void *m = mmap(NULL, st->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file */
    if (m == MAP_FAILED) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: mmap: %s", path, strerror(errno));
        goto fail;
    }
    st->map = m;
    uint64_t n;
    memcpy(&n, st->map, 8);
    if (n > HEADER_MAX) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: header length %llu is absurd (limit %llu)", path,
                         (unsigned long long)n, (unsigned long long)HEADER_MAX);
        goto fail;
    }
    if (n > st->size - 8) {
        rc = primal_errf(err, PRIMAL_EIO,
                         "%s: header length %llu runs past the end of the file (%zu bytes)", path,
                         (unsigned long long)n, st->size);
        goto fail;
    }
    st->hlen = n;
    st->data_off = (size_t)(8 + n);
    rc = parse_header(st, err);
    if (rc != PRIMAL_OK)
        goto fail;
    *out = st;
    return PRIMAL_OK;
fail:
    primal_st_close(st);
    return rc;
}

void primal_st_close(primal_st *st)
{
    if (st == NULL)
        return;
    if (st->map != NULL)
        munmap((void *)st->map, st->size);
    json_decref(st->root);
    free(st->t);
    free(st->by_name);
    free(st->path);
    free(st);
}

const char *primal_st_path(const primal_st *st) { return st->path; }

int primal_st_count(const primal_st *st) { return st->n; }

const primal_st_tensor *primal_st_at(const primal_st *st, int i)
{
    return i >= 0 && i < st->n ? &st->t[i] : NULL;
}

const primal_st_tensor *primal_st_get(const primal_st *st, const char *name)
{
    int lo = 0, hi = st->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const primal_st_tensor *t = st->by_name[mid];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *primal_st_meta(const primal_st *st, const char *key)
{
    json_t *meta = json_object_get(st->root, "__metadata__");
    return json_string_value(json_object_get(meta, key)); /* NULL-safe in jansson */
}

/* The header hash is taken with its own value zeroed; the key is located as the exact compact
 * text our writer emits, which a valid JSON document can hold only as that key. */
static int verify_header(const primal_st *st, const char *want, primal_err *err)
{
    static const char pat[] = "\"" KEY_HEADER_SHA "\":\"";
    const size_t pl = sizeof pat - 1;
    const unsigned char *h = st->map + 8;
    const unsigned char *at = NULL;
    for (size_t i = 0; i + pl + 64 <= st->hlen; i++)
        if (h[i] == '"' && memcmp(h + i, pat, pl) == 0) {
            if (at != NULL)
                return primal_errf(err, PRIMAL_EIO, "%s: %s appears twice in the header",
                                   st->path, KEY_HEADER_SHA);
            at = h + i + pl;
        }
    if (at == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: %s is not in the form this writer emits",
                           st->path, KEY_HEADER_SHA);
    char zeros[64];
    memset(zeros, '0', sizeof zeros);
    size_t pre = (size_t)(at - st->map);
    char got[65];
    if (!sha256_parts(st->map, pre, zeros, 64, at + 64, st->data_off - pre - 64, got))
        return primal_errf(err, PRIMAL_ERROR, "%s: SHA-256 unavailable in OpenSSL", st->path);
    if (strcmp(got, want) != 0)
        return primal_errf(err, PRIMAL_EIO, "%s: checksum mismatch: header is corrupt", st->path);
    return PRIMAL_OK;
}

int primal_st_verify(const primal_st *st, primal_err *err)
{
    const char *want = primal_st_meta(st, KEY_DATA_SHA);
    if (want == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: no %s in __metadata__, cannot verify", st->path,
                           KEY_DATA_SHA);
    char got[65];
    if (!sha256_parts(st->map + st->data_off, st->size - st->data_off, NULL, 0, NULL, 0, got))
        return primal_errf(err, PRIMAL_ERROR, "%s: SHA-256 unavailable in OpenSSL", st->path);
    if (strcmp(got, want) != 0)
        return primal_errf(err, PRIMAL_EIO, "%s: checksum mismatch: data section is corrupt",
                           st->path);
    const char *hwant = primal_st_meta(st, KEY_HEADER_SHA);
    if (hwant != NULL)
        return verify_header(st, hwant, err);
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Conversion                                                                                 */

/* IEEE binary16 to binary32: every half value, subnormals included, is exact in float. */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13); /* inf, NaN (payload kept) */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13); /* rebias 15 -> 127 */
    } else if (man == 0) {
        bits = sign;
    } else {
        /* Subnormal: value = man * 2^-24; normalise so the leading 1 becomes implicit. */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while ((man & 0x400) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int primal_st_to_f32(const primal_st *st, const primal_st_tensor *t, float *out,
                     primal_err *err)
{
    const unsigned char *p = t->data;
    int64_t n = t->numel;
    /* memcpy per element: tensors of a foreign file need not be aligned. */
    switch (t->dtype) {
    case PRIMAL_F32:
        memcpy(out, p, (size_t)n * 4);
        return PRIMAL_OK;
    case PRIMAL_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = half_to_float(h);
        }
        return PRIMAL_OK;
    case PRIMAL_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&out[i], &bits, 4);
        }
        return PRIMAL_OK;
    case PRIMAL_F64:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = (float)d; /* round to nearest even */
        }
        return PRIMAL_OK;
    default:
        return primal_errf(err, PRIMAL_EIO,
                           "%s: tensor %s: dtype %s, expected a float type (F32, F16, BF16, F64)",
                           st->path, t->name, primal_dtype_name(t->dtype));
    }
}

int primal_st_read_f32(const primal_st *st, const char *name, int ndim, const int64_t *shape,
                       float *out, primal_err *err)
{
    const primal_st_tensor *t = primal_st_get(st, name);
    if (t == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: not found", st->path, name);
    if (!is_float_dtype(t->dtype))
        return primal_errf(err, PRIMAL_EIO,
                           "%s: tensor %s: dtype %s, expected a float type (F32, F16, BF16, F64)",
                           st->path, name, primal_dtype_name(t->dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char a[160], b[160];
        return primal_errf(err, PRIMAL_EIO, "%s: tensor %s: shape %s, expected %s", st->path, name,
                           shape_str(a, sizeof a, t->ndim, t->shape),
                           shape_str(b, sizeof b, ndim, shape));
    }
    return primal_st_to_f32(st, t, out, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Writer                                                                                     */

typedef struct wtensor {
    char *name;
    primal_dtype dtype;
    int ndim;
    int64_t shape[PRIMAL_ST_MAXDIM];
    const void *data;
    size_t nbytes;
} wtensor;

typedef struct wmeta {
    char *key, *value;
} wmeta;

struct primal_stw {
    char *path;
    wtensor *t;
    int n, cap;
    wmeta *m;
    int nm, capm;
};

int primal_stw_begin(const char *path, primal_stw **out, primal_err *err)
{
    *out = NULL;
    if (path == NULL || path[0] == '\0')
        return primal_errf(err, PRIMAL_EIO, "safetensors writer: empty path");
    primal_stw *w = calloc(1, sizeof *w);
    if (w == NULL || (w->path = strdup(path)) == NULL) {
        free(w);
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
    }
    *out = w;
    return PRIMAL_OK;
}

void primal_stw_abort(primal_stw *w)
{
    if (w == NULL)
        return;
    for (int i = 0; i < w->n; i++)
        free(w->t[i].name);
    for (int i = 0; i < w->nm; i++) {
        free(w->m[i].key);
        free(w->m[i].value);
    }
    free(w->t);
    free(w->m);
    free(w->path);
    free(w);
}

int primal_stw_add(primal_stw *w, const char *name, primal_dtype dtype, int ndim,
                   const int64_t *shape, const void *data, primal_err *err)
{
    if (name == NULL || name[0] == '\0' || strcmp(name, "__metadata__") == 0)
        return primal_errf(err, PRIMAL_ERROR, "%s: tensor name \"%s\" is not allowed", w->path,
                           name ? name : "(null)");
    size_t es = primal_dtype_size(dtype);
    if (es == 0)
        return primal_errf(err, PRIMAL_ERROR, "%s: tensor %s: unknown dtype %d", w->path, name,
                           (int)dtype);
    if (ndim < 0 || ndim > PRIMAL_ST_MAXDIM)
        return primal_errf(err, PRIMAL_ERROR, "%s: tensor %s: %d dimensions, 0..%d supported",
                           w->path, name, ndim, PRIMAL_ST_MAXDIM);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return primal_errf(err, PRIMAL_ERROR, "%s: tensor %s: added twice", w->path, name);
    uint64_t nbytes = es;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(nbytes, (uint64_t)shape[i], &nbytes))
            return primal_errf(err, PRIMAL_ERROR, "%s: tensor %s: bad shape", w->path, name);
    if (nbytes > 0 && data == NULL)
        return primal_errf(err, PRIMAL_ERROR, "%s: tensor %s: no data", w->path, name);
    if (w->n == w->cap) {
        int nc = w->cap ? 2 * w->cap : 64;
        wtensor *nt = realloc(w->t, (size_t)nc * sizeof *nt);
        if (nt == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", w->path);
        w->t = nt;
        w->cap = nc;
    }
    wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if ((t->name = strdup(name)) == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", w->path);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = (size_t)nbytes;
    w->n++;
    return PRIMAL_OK;
}

int primal_stw_meta(primal_stw *w, const char *key, const char *value, primal_err *err)
{
    if (key == NULL || value == NULL)
        return primal_errf(err, PRIMAL_ERROR, "%s: metadata key or value is NULL", w->path);
    if (strcmp(key, KEY_DATA_SHA) == 0 || strcmp(key, KEY_HEADER_SHA) == 0)
        return primal_errf(err, PRIMAL_ERROR, "%s: metadata key %s is reserved for the writer",
                           w->path, key);
    for (int i = 0; i < w->nm; i++)
        if (strcmp(w->m[i].key, key) == 0)
            return primal_errf(err, PRIMAL_ERROR, "%s: metadata key %s set twice", w->path, key);
    if (w->nm == w->capm) {
        int nc = w->capm ? 2 * w->capm : 16;
        wmeta *nm = realloc(w->m, (size_t)nc * sizeof *nm);
        if (nm == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", w->path);
        w->m = nm;
        w->capm = nc;
    }
    char *k = strdup(key), *v = strdup(value);
    if (k == NULL || v == NULL) {
        free(k);
        free(v);
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", w->path);
    }
    w->m[w->nm].key = k;
    w->m[w->nm].value = v;
    w->nm++;
    return PRIMAL_OK;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* The header text, padded with spaces so that 8 + N is a multiple of 8; *hdr is malloc'ed. */
static int build_header(primal_stw *w, const char *data_sha, char **hdr, size_t *hlen,
                        primal_err *err)
{
    json_t *root = json_object(), *meta = json_object();
    int ok = root != NULL && meta != NULL;
    ok = ok && json_object_set_new(root, "__metadata__", meta) == 0;
    if (!ok)
        json_decref(meta);
    for (int i = 0; ok && i < w->nm; i++)
        ok = json_object_set_new(meta, w->m[i].key, json_string(w->m[i].value)) == 0;
    ok = ok && json_object_set_new(meta, KEY_DATA_SHA, json_string(data_sha)) == 0;
    ok = ok && json_object_set_new(meta, KEY_HEADER_SHA,
                                   json_string("00000000000000000000000000000000"
                                               "00000000000000000000000000000000")) == 0;
    uint64_t off = 0;
    for (int i = 0; ok && i < w->n; i++) {
        const wtensor *t = &w->t[i];
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        ok = e != NULL && shape != NULL && offs != NULL;
        ok = ok && json_object_set_new(e, "dtype", json_string(primal_dtype_name(t->dtype))) == 0;
        for (int k = 0; ok && k < t->ndim; k++)
            ok = json_array_append_new(shape, json_integer(t->shape[k])) == 0;
        ok = ok && json_array_append_new(offs, json_integer((json_int_t)off)) == 0;
        ok = ok && json_array_append_new(offs, json_integer((json_int_t)(off + t->nbytes))) == 0;
        if (ok) {
            ok = json_object_set_new(e, "shape", shape) == 0;
            shape = NULL;
        }
        if (ok) {
            ok = json_object_set_new(e, "data_offsets", offs) == 0;
            offs = NULL;
        }
        if (ok) {
            ok = json_object_set_new(root, t->name, e) == 0;
            e = NULL;
        }
        json_decref(e);
        json_decref(shape);
        json_decref(offs);
        off += t->nbytes;
    }
    char *txt = ok ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (txt == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory building the header", w->path);
    size_t n = strlen(txt);
    size_t padded = (n + 7) / 8 * 8;
    char *h = malloc(padded ? padded : 8);
    if (h == NULL) {
        free(txt);
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory building the header", w->path);
    }
    memcpy(h, txt, n);
    memset(h + n, ' ', padded - n);
    free(txt);
    *hdr = h;
    *hlen = padded;
    return PRIMAL_OK;
}

int primal_stw_commit(primal_stw *w, primal_err *err)
{
    char *tmp = NULL, *hdr = NULL;
    int fd = -1, rc;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char data_sha[65], header_sha[65];

    /* Data hash first: it goes into the header, which precedes the data. */
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    for (int i = 0; ok && i < w->n; i++)
        ok = w->t[i].nbytes == 0 || EVP_DigestUpdate(ctx, w->t[i].data, w->t[i].nbytes) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        rc = primal_errf(err, PRIMAL_ERROR, "%s: SHA-256 unavailable in OpenSSL", w->path);
        goto out;
    }
    hex_digest(md, data_sha);

    size_t hlen = 0;
    rc = build_header(w, data_sha, &hdr, &hlen, err);
    if (rc != PRIMAL_OK)
        goto out;
    uint64_t n64 = hlen;
    unsigned char len8[8];
    memcpy(len8, &n64, 8);
    static const char pat[] = "\"" KEY_HEADER_SHA "\":\"";
    char *at = memmem(hdr, hlen, pat, sizeof pat - 1);
    if (at == NULL) { /* cannot happen: build_header put it there */
        rc = primal_errf(err, PRIMAL_ERROR, "%s: header checksum slot missing", w->path);
        goto out;
    }
    at += sizeof pat - 1;
    sha256_parts(len8, 8, hdr, hlen, NULL, 0, header_sha);
    memcpy(at, header_sha, 64);

    size_t tl = strlen(w->path) + 32;
    tmp = malloc(tl);
    if (tmp == NULL) {
        rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", w->path);
        goto out;
    }
    snprintf(tmp, tl, "%s.tmp.%ld", w->path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        tmp = NULL; /* nothing to remove */
        goto out;
    }
    if (write_all(fd, len8, 8) != 0 || write_all(fd, hdr, hlen) != 0) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: write: %s", tmp, strerror(errno));
        goto out;
    }
    for (int i = 0; i < w->n; i++)
        if (write_all(fd, w->t[i].data, w->t[i].nbytes) != 0) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: write: %s", tmp, strerror(errno));
            goto out;
        }
    if (fsync(fd) != 0) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: fsync: %s", tmp, strerror(errno));
        goto out;
    }
    int cr = close(fd);
    fd = -1;
    if (cr != 0) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: close: %s", tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, w->path) != 0) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: rename to %s: %s", tmp, w->path, strerror(errno));
        goto out;
    }
    free(tmp);
    tmp = NULL; /* renamed: it is PATH now */

    /* Make the rename itself durable. */
    char *dir = strdup(w->path);
    if (dir == NULL) {
        rc = primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", w->path);
        goto out;
    }
    char *slash = strrchr(dir, '/');
    const char *d = dir;
    if (slash == NULL)
        d = ".";
    else if (slash == dir)
        d = "/";
    else
        *slash = '\0';
    int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0)
        rc = primal_errf(err, PRIMAL_EIO, "%s: fsync of directory %s: %s", w->path, d,
                         strerror(errno));
    else
        rc = PRIMAL_OK;
    if (dfd >= 0)
        close(dfd);
    free(dir);
out:
    if (fd >= 0)
        close(fd);
    if (tmp != NULL) {
        unlink(tmp);
        free(tmp);
    }
    free(hdr);
    primal_stw_abort(w);
    return rc;
}
