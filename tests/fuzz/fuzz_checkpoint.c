/* fuzz_checkpoint.c: opening and loading a checkpoint (core/checkpoint.c, with core/model.c).
 *
 * Two harnesses from this file:
 *   fuzz_checkpoint         the input is the file as it is.  Nearly every mutation breaks a
 *                           checksum, so this one mostly covers the container and the checksum
 *                           checks;
 *   fuzz_checkpoint_signed  (-DFUZZ_RESIGN) the input is signed again first, as whoever edits a
 *                           file can (docs/FORMAT.md: the checksums have no key): every grid's
 *                           SHA-256 in primal.grid_sha256, then primal.data_sha256, then
 *                           primal.header_sha256, each written where core/checkpoint.c and
 *                           core/safetensors.c write it (tests/checkpoint_test.c's resign helper,
 *                           plus the grids).  The mutations then reach the checks behind the
 *                           checksums: the model config, the grids' values, every parameter's
 *                           dtype and shape, indices inside their grids, finite floats.
 * A file primal_ckpt_open accepts is used as primal-eval and primal-generate use one: a model is
 * created from its config and grids (primal_ckpt_grid_for), loaded (primal_ckpt_load_model must
 * then succeed, unless the file holds a tensor that is no parameter, grid or state blob), and
 * every matrix dequantised (each index looks up its grid: ASan sees a read past it); the state
 * blobs and the INI text are read. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <primal/safetensors.h>

#include "checkpoint.h"
#include "fuzz.h"
#include "model.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_dir();
    return 0;
}

#ifdef FUZZ_RESIGN
/* The 64 characters after the first pat in [h, h + n), or NULL where they do not fit. */
static uint8_t *field(uint8_t *h, size_t n, const char *pat)
{
    size_t pl = strlen(pat);
    uint8_t *at = memmem(h, n, pat, pl);
    if (at == NULL || (size_t)(at - h) + pl + 64 > n)
        return NULL;
    return at + pl;
}

/* Each grid.NAME tensor's SHA-256 into primal.grid_sha256, where that JSON string holds
 * \"NAME\":\"<64 hex>\" as the writer escapes it (names of plain characters only). */
static void resign_grids(uint8_t *buf, size_t n, uint64_t hl)
{
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hl, 0, NULL);
    if (root == NULL)
        return;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (strncmp(k, "grid.", 5) != 0 || strlen(k) > 200)
            continue;
        json_t *off = json_object_get(v, "data_offsets");
        json_t *jb = json_array_get(off, 0), *je = json_array_get(off, 1);
        if (!json_is_integer(jb) || !json_is_integer(je))
            continue;
        json_int_t b = json_integer_value(jb), e = json_integer_value(je);
        if (b < 0 || e < b || (uint64_t)e > n - 8 - hl)
            continue;
        int plain = 1;
        for (const char *c = k + 5; *c; c++)
            plain &= *c != '"' && *c != '\\' && (unsigned char)*c >= 0x20;
        if (!plain)
            continue;
        char pat[256], hex[65];
        snprintf(pat, sizeof pat, "\\\"%s\\\":\\\"", k + 5);
        uint8_t *at = field(buf + 8, (size_t)hl, pat);
        if (at == NULL)
            continue;
        primal_sha256_hex(buf + 8 + hl + b, (size_t)(e - b), hex);
        memcpy(at, hex, 64);
    }
    json_decref(root);
}

/* Sign buf (a whole file of n bytes) again: grids, data section, header. */
static void resign(uint8_t *buf, size_t n)
{
    if (n < 8)
        return;
    uint64_t hl;
    memcpy(&hl, buf, 8);
    if (hl > n - 8)
        return;
    resign_grids(buf, n, hl);
    char hex[65];
    uint8_t *d = field(buf + 8, (size_t)hl, "\"primal.data_sha256\":\"");
    if (d != NULL) {
        primal_sha256_hex(buf + 8 + hl, n - 8 - hl, hex);
        memcpy(d, hex, 64);
    }
    uint8_t *h = field(buf + 8, (size_t)hl, "\"primal.header_sha256\":\"");
    if (h != NULL) {
        memset(h, '0', 64);
        primal_sha256_hex(buf, 8 + hl, hex);
        memcpy(h, hex, 64);
    }
}
#endif

/* What primal-eval does with a checkpoint that opens. */
static void use(primal_ckpt *c)
{
    primal_err err = {0};
    primal_model_config mc;
    if (primal_ckpt_model_config(c, &mc, &err) != PRIMAL_OK)
        fuzz_fail("primal_ckpt_model_config: %s", err.msg);
    primal_model *m = NULL;
    int rc = primal_model_create(&mc, primal_ckpt_grid_for, c, &m, &err);
    if (rc != PRIMAL_OK)
        fuzz_fail("a checkpoint that opens gives no model: %s", err.msg);
    rc = primal_ckpt_load_model(c, m, &err);
    if (rc != PRIMAL_OK && strstr(err.msg, "not a parameter of the model") == NULL)
        fuzz_fail("a checkpoint that opens does not load into a model of its own config and "
                  "grids: %s", err.msg);
    if (rc == PRIMAL_OK) {
        float *row = NULL;
        size_t cap = 0;
        for (int i = 0; i < primal_model_nparams(m); i++) {
            primal_param *p = primal_model_param(m, i);
            if (!p->is_matrix)
                continue;
            size_t need = (size_t)p->q.cols;
            if (need > cap) {
                free(row);
                cap = need;
                row = malloc(cap * sizeof *row);
                if (row == NULL)
                    fuzz_fail("malloc of %zu floats", cap);
            }
            for (int64_t r = 0; r < p->q.rows; r++)
                primal_model_get_rows(m, p, r, 1, row);
        }
        free(row);
    }
    primal_model_free(m);
    static const char *const blobs[] = {"train", "trainable", "loader", "gemm", NULL};
    volatile unsigned sink = 0;
    for (int i = 0; blobs[i] != NULL; i++) {
        const void *d;
        size_t n;
        if (primal_ckpt_get_blob(c, blobs[i], &d, &n) == PRIMAL_OK && n > 0)
            sink += ((const unsigned char *)d)[0] + ((const unsigned char *)d)[n - 1];
    }
    sink += (unsigned)strlen(primal_ckpt_config_ini(c));
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
#ifdef FUZZ_RESIGN
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    resign(buf, size);
    const char *path = fuzz_write("in.safetensors", buf, size);
    free(buf);
#else
    const char *path = fuzz_write("in.safetensors", data, size);
#endif
    primal_ckpt *c = NULL;
    primal_err err = {0};
    int rc = primal_ckpt_open(path, &c, &err);
    fuzz_check_err(rc, &err, "primal_ckpt_open");
    if (rc != PRIMAL_OK) {
        if (c != NULL)
            fuzz_fail("primal_ckpt_open failed but left *out set");
        return 0;
    }
    use(c);
    primal_ckpt_close(c);
    return 0;
}
