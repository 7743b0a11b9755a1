/* fuzz_safetensors.c: the safetensors reader (core/safetensors.c) on any bytes.
 *
 * The input is a whole file.  primal_st_open must refuse it with a message or accept it; an
 * accepted file is then used as every reader uses one: each tensor looked up by name, its bytes
 * read (a range outside the mapping faults), float tensors converted to float32 into a buffer
 * of exactly numel floats (ASan checks the writes), primal_st_verify run.  Last, the accepted
 * file is written back with the writer (primal_stw_*, names and metadata strings as read) and
 * read again: the copy must open, verify, and hold the same tensors.  docs/FORMAT.md lists what
 * the reader refuses. */
#include <stdlib.h>
#include <string.h>

#include <primal/safetensors.h>

#include "fuzz.h"

/* Metadata keys copied into the round trip: the ones PRIMAL's readers look up. */
static const char *const meta_keys[] = {"primal.format", "primal.model", "primal.grids",
                                        "primal.grid_sha256", "primal.config", NULL};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_dir();
    return 0;
}

static uint64_t touch(const primal_st_tensor *t)
{
    const unsigned char *p = t->data;
    uint64_t s = 0;
    for (size_t i = 0; i < t->nbytes; i++)
        s += p[i];
    return s;
}

static int is_float(primal_dtype d)
{
    return d == PRIMAL_F32 || d == PRIMAL_F16 || d == PRIMAL_BF16 || d == PRIMAL_F64;
}

/* Write st's tensors and PRIMAL metadata to another file, read it back and compare. */
static void round_trip(const primal_st *st)
{
    char path[1024];
    fuzz_path("copy.safetensors", path, sizeof path);
    primal_stw *w = NULL;
    primal_err err = {0};
    int rc = primal_stw_begin(path, &w, &err);
    fuzz_check_err(rc, &err, "primal_stw_begin");
    if (rc != PRIMAL_OK)
        return;
    int n = primal_st_count(st);
    for (int i = 0; i < n && rc == PRIMAL_OK; i++) {
        const primal_st_tensor *t = primal_st_at(st, i);
        rc = primal_stw_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err);
        /* the writer refuses an empty name, which the reader accepts as a JSON key */
        if (rc != PRIMAL_OK && t->name[0] != '\0')
            fuzz_fail("primal_stw_add(%s) refused a tensor the reader accepted: %s", t->name,
                      err.msg);
    }
    for (int k = 0; meta_keys[k] != NULL && rc == PRIMAL_OK; k++) {
        const char *v = primal_st_meta(st, meta_keys[k]);
        if (v != NULL)
            rc = primal_stw_meta(w, meta_keys[k], v, &err);
        fuzz_check_err(rc, &err, "primal_stw_meta");
    }
    if (rc != PRIMAL_OK) {
        primal_stw_abort(w);
        return;
    }
    rc = primal_stw_commit(w, &err);
    if (rc != PRIMAL_OK)
        fuzz_fail("primal_stw_commit: %s", err.msg);
    primal_st *st2 = NULL;
    rc = primal_st_open(path, &st2, &err);
    if (rc != PRIMAL_OK)
        fuzz_fail("the writer's copy does not open: %s", err.msg);
    if ((rc = primal_st_verify(st2, &err)) != PRIMAL_OK)
        fuzz_fail("the writer's copy does not verify: %s", err.msg);
    if (primal_st_count(st2) != n)
        fuzz_fail("the copy holds %d tensors, the original %d", primal_st_count(st2), n);
    for (int i = 0; i < n; i++) {
        const primal_st_tensor *a = primal_st_at(st, i);
        const primal_st_tensor *b = primal_st_get(st2, a->name);
        if (b == NULL || b->dtype != a->dtype || b->ndim != a->ndim || b->nbytes != a->nbytes ||
            memcmp(b->shape, a->shape, (size_t)a->ndim * sizeof *a->shape) != 0 ||
            (a->nbytes > 0 && memcmp(a->data, b->data, a->nbytes) != 0))
            fuzz_fail("tensor %s differs in the writer's copy", a->name);
    }
    for (int k = 0; meta_keys[k] != NULL; k++) {
        const char *a = primal_st_meta(st, meta_keys[k]), *b = primal_st_meta(st2, meta_keys[k]);
        if ((a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0))
            fuzz_fail("metadata %s differs in the writer's copy", meta_keys[k]);
    }
    primal_st_close(st2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("in.safetensors", data, size);
    primal_st *st = NULL;
    primal_err err = {0};
    int rc = primal_st_open(path, &st, &err);
    fuzz_check_err(rc, &err, "primal_st_open");
    if (rc != PRIMAL_OK) {
        if (st != NULL)
            fuzz_fail("primal_st_open failed but left *out set");
        return 0;
    }
    int n = primal_st_count(st);
    volatile uint64_t sink = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const primal_st_tensor *t = primal_st_at(st, i);
        if (primal_st_get(st, t->name) != t)
            fuzz_fail("primal_st_get(%s) does not find tensor %d", t->name, i);
        size_t es = primal_dtype_size(t->dtype);
        if (es == 0 || t->ndim < 0 || t->ndim > PRIMAL_ST_MAXDIM ||
            (uint64_t)t->numel * es != t->nbytes)
            fuzz_fail("tensor %s: numel %lld x %zu bytes is not nbytes %zu", t->name,
                      (long long)t->numel, es, t->nbytes);
        total += t->nbytes;
        if (total > size)
            fuzz_fail("tensors hold %zu bytes, more than the %zu-byte file", total, size);
        sink += touch(t);
        if (is_float(t->dtype)) {
            float *out = malloc((size_t)t->numel * sizeof *out + 1);
            if (out == NULL)
                fuzz_fail("malloc of %lld floats", (long long)t->numel);
            rc = primal_st_read_f32(st, t->name, t->ndim, t->shape, out, &err);
            if (rc != PRIMAL_OK)
                fuzz_fail("primal_st_read_f32(%s): %s", t->name, err.msg);
            free(out);
        } else {
            float f;
            rc = primal_st_to_f32(st, t, &f, &err);
            if (rc == PRIMAL_OK)
                fuzz_fail("primal_st_to_f32 converted %s, dtype %s", t->name,
                          primal_dtype_name(t->dtype));
            fuzz_check_err(rc, &err, "primal_st_to_f32");
        }
    }
    for (int k = 0; meta_keys[k] != NULL; k++) {
        const char *v = primal_st_meta(st, meta_keys[k]);
        if (v != NULL)
            sink += strlen(v);
    }
    rc = primal_st_verify(st, &err);
    fuzz_check_err(rc, &err, "primal_st_verify");
    if (n <= 256)
        round_trip(st);
    primal_st_close(st);
    (void)sink;
    return 0;
}
