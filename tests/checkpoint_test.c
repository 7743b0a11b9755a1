/* checkpoint_test.c: core/checkpoint.c with the real model (core/model.c).  A small Qwen2-shaped
 * model mixes every storage: 4-bit (prime13), 8-bit (100 values), 16-bit (300 values) and dense
 * matrices, q/k/v biases and an odd column count.  The round trip is compared byte for byte with
 * the model that was saved; the file layout is checked against docs/FORMAT.md with values worked
 * by hand (nibble order) and an outside SHA-256 (of prime13's float32 values, from Python's
 * hashlib); corrupt files are made by flipping and truncating bytes. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include <primal/safetensors.h>

#include "checkpoint.h"
#include "hfimport.h"
#include "model.h"

/* hashlib.sha256(struct.pack('<13f', -1, -1/2, -1/3, -1/5, -1/7, -1/11, 0, 1/11, ...)) */
#define PRIME13_SHA "75f98f98debcb1cb114958db6649a4d2ecfe5a5a8fb47bc042ef41177cd973a1"

static char tmpdir[256];
static float prime13[13], u100[100], u300[300];
static primal_grid_ref g13 = { "prime13", prime13, 13 };
static primal_grid_ref g100 = { "u100", u100, 100 };
static primal_grid_ref g300 = { "u300", u300, 300 };

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/primal_ckpt_test.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    static const int den[] = { 1, 2, 3, 5, 7, 11 };
    int k = 0;
    for (int i = 0; i < 6; i++)
        prime13[k++] = (float)(-1.0 / den[i]);
    prime13[k++] = 0.0f;
    for (int i = 5; i >= 0; i--)
        prime13[k++] = (float)(1.0 / den[i]);
    for (int i = 0; i < 100; i++)
        u100[i] = -1.0f + 2.0f * (float)i / 99.0f;
    for (int i = 0; i < 300; i++)
        u300[i] = -1.0f + 2.0f * (float)i / 299.0f;
}

static void teardown(void)
{
    DIR *d = opendir(tmpdir);
    if (d == NULL)
        return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

TestSuite(checkpoint, .init = setup, .fini = teardown);

static const primal_model_config cfg = {
    .arch = PRIMAL_ARCH_QWEN2, .vocab = 32, .dim = 16, .layers = 2, .heads = 2, .kv_heads = 1,
    .ffn = 23, .rope_theta = 10000.0, .norm_eps = 1e-6, .tied = 0, .qkv_bias = 1,
};

/* Every storage kind in one model. */
static const primal_grid_ref *mixed_grids(void *user, const char *name)
{
    (void)user;
    if (strcmp(name, "model.layers.1.mlp.down_proj.weight") == 0)
        return NULL;
    if (strcmp(name, "model.layers.0.self_attn.o_proj.weight") == 0)
        return &g100;
    if (strcmp(name, "lm_head.weight") == 0)
        return &g300;
    return &g13;
}

static primal_model *make_model(uint64_t seed)
{
    primal_model *m;
    primal_err err = { 0 };
    cr_assert_eq(primal_model_create(&cfg, mixed_grids, NULL, &m, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_eq(primal_model_init_random(m, seed, 0.02f, &err), PRIMAL_OK, "%s", err.msg);
    /* Distinct scales and vectors, so that a swapped or skipped copy shows. */
    for (int i = 0; i < primal_model_nparams(m); i++) {
        primal_param *p = primal_model_param(m, i);
        if (!p->is_matrix)
            for (int64_t j = 0; j < p->n; j++)
                p->vec[j] = (float)(seed + 1) * 0.001f * (float)(i * 1000 + j);
        else if (p->q.scale != NULL)
            for (int64_t r = 0; r < p->q.rows; r++)
                p->q.scale[r] *= 1.0f + 0.01f * (float)(seed + r);
    }
    return m;
}

static const char *tpath(const char *name)
{
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
    return p[k];
}

static void save(const char *path, primal_model *m)
{
    static const char policy[] = "votes\x01\x02\x03";
    static const uint64_t step = 1234;
    primal_ckpt_blob blobs[] = {
        { "policy.model.layers.0.mlp.up_proj.weight", policy, sizeof policy },
        { "step", &step, sizeof step },
        { "empty", NULL, 0 },
    };
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_save(path, m, "[run]\nsteps = 10\n", blobs, 3, &err), PRIMAL_OK,
                 "%s", err.msg);
}

static void assert_same_model(primal_model *a, primal_model *b)
{
    cr_assert_eq(primal_model_nparams(a), primal_model_nparams(b));
    for (int i = 0; i < primal_model_nparams(a); i++) {
        primal_param *p = primal_model_param(a, i), *q = primal_model_param(b, i);
        cr_assert_str_eq(p->name, q->name);
        if (!p->is_matrix) {
            cr_assert_eq(memcmp(p->vec, q->vec, (size_t)p->n * 4), 0, "%s", p->name);
        } else if (p->q.bits == 32) {
            cr_assert_eq(memcmp(p->q.dense, q->q.dense, (size_t)(p->q.rows * p->q.cols) * 4), 0,
                         "%s", p->name);
        } else {
            cr_assert_eq(p->q.bits, q->q.bits);
            cr_assert_eq(memcmp(p->q.scale, q->q.scale, (size_t)p->q.rows * 4), 0, "%s",
                         p->name);
            for (int64_t r = 0; r < p->q.rows; r++)
                for (int64_t c = 0; c < p->q.cols; c++)
                    cr_assert_eq(primal_index_get(&p->q, r, c), primal_index_get(&q->q, r, c),
                                 "%s [%lld][%lld]", p->name, (long long)r, (long long)c);
        }
    }
}

static int count_tmp_files(void)
{
    DIR *d = opendir(tmpdir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static void expect_open_refused(const char *path, const char *fragment)
{
    primal_ckpt *c = (primal_ckpt *)0x1;
    primal_err err = { 0 };
    int rc = primal_ckpt_open(path, &c, &err);
    cr_assert_eq(rc, PRIMAL_EIO, "rc %d: %s", rc, err.msg);
    cr_assert_null(c);
    cr_assert(strstr(err.msg, path) != NULL, "message lacks the path: %s", err.msg);
    cr_assert(strstr(err.msg, fragment) != NULL, "message lacks \"%s\": %s", fragment, err.msg);
}

static size_t file_size(const char *path)
{
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    return (size_t)sb.st_size;
}

static void flip_byte(const char *path, size_t off)
{
    int fd = open(path, O_RDWR);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, (off_t)off), 1);
    c ^= 0x20;
    cr_assert_eq(pwrite(fd, &c, 1, (off_t)off), 1);
    close(fd);
}

/* Copy checkpoint src to dst with the writer, replacing metadata key (if not NULL) by value and
 * adding one extra tensor (if extra is not NULL): files that are well-formed safetensors with
 * valid checksums, but wrong as checkpoints. */
static void rewrite(const char *src, const char *dst, const char *key, const char *value,
                    const char *extra)
{
    static const char *const keys[] = { "primal.format", "primal.model", "primal.grids",
                                        "primal.grid_sha256", "primal.config" };
    primal_st *st;
    primal_stw *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(src, &st, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_stw_begin(dst, &w, &err), PRIMAL_OK);
    for (int i = 0; i < primal_st_count(st); i++) {
        const primal_st_tensor *t = primal_st_at(st, i);
        cr_assert_eq(primal_stw_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err),
                     PRIMAL_OK, "%s", err.msg);
    }
    static const float one = 1.0f;
    if (extra != NULL)
        cr_assert_eq(primal_stw_add(w, extra, PRIMAL_F32, 1, (int64_t[]){ 1 }, &one, &err),
                     PRIMAL_OK);
    for (int i = 0; i < 5; i++) {
        const char *v = key != NULL && strcmp(key, keys[i]) == 0 ? value
                                                                 : primal_st_meta(st, keys[i]);
        cr_assert_eq(primal_stw_meta(w, keys[i], v, &err), PRIMAL_OK);
    }
    cr_assert_eq(primal_stw_commit(w, &err), PRIMAL_OK, "%s", err.msg);
    primal_st_close(st);
}

/* ------------------------------------------------------------------------------------------ */

Test(checkpoint, save_then_load_round_trips_every_parameter_and_blob_bit_exactly)
{
    primal_model *a = make_model(1), *b = make_model(2);
    const char *path = tpath("a.safetensors");
    save(path, a);
    cr_assert_eq(count_tmp_files(), 0);

    primal_ckpt *c;
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_open(path, &c, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_str_eq(primal_ckpt_path(c), path);
    primal_model_config mc;
    cr_assert_eq(primal_ckpt_model_config(c, &mc, &err), PRIMAL_OK);
    cr_assert_eq(memcmp(&mc, &cfg, sizeof mc), 0);
    cr_assert_str_eq(primal_ckpt_config_ini(c), "[run]\nsteps = 10\n");
    cr_assert_str_eq(primal_ckpt_grid_name(c, "model.embed_tokens.weight"), "prime13");
    cr_assert_str_eq(primal_ckpt_grid_name(c, "lm_head.weight"), "u300");
    cr_assert_null(primal_ckpt_grid_name(c, "model.layers.1.mlp.down_proj.weight"));
    cr_assert_null(primal_ckpt_grid_name(c, "model.norm.weight"));
    const float *gv;
    int gn;
    cr_assert_eq(primal_ckpt_grid(c, "u100", &gv, &gn, &err), PRIMAL_OK);
    cr_assert_eq(gn, 100);
    cr_assert_eq(memcmp(gv, u100, sizeof u100), 0);
    cr_assert_eq(primal_ckpt_grid(c, "nf4", &gv, &gn, &err), PRIMAL_EIO);

    cr_assert_eq(primal_ckpt_load_model(c, b, &err), PRIMAL_OK, "%s", err.msg);
    assert_same_model(a, b);

    const void *d;
    size_t n;
    cr_assert_eq(primal_ckpt_get_blob(c, "policy.model.layers.0.mlp.up_proj.weight", &d, &n),
                 PRIMAL_OK);
    cr_assert_eq(n, 9);
    cr_assert_eq(memcmp(d, "votes\x01\x02\x03", 9), 0);
    uint64_t step;
    cr_assert_eq(primal_ckpt_get_blob(c, "step", &d, &n), PRIMAL_OK);
    cr_assert_eq(n, 8);
    memcpy(&step, d, 8);
    cr_assert_eq(step, 1234);
    cr_assert_eq(primal_ckpt_get_blob(c, "empty", &d, &n), PRIMAL_OK);
    cr_assert_eq(n, 0);
    cr_assert_eq(primal_ckpt_get_blob(c, "absent", &d, &n), PRIMAL_ERROR);
    primal_ckpt_close(c);
    primal_model_free(a);
    primal_model_free(b);
}

Test(checkpoint, a_model_built_from_the_checkpoints_own_grids_loads_it)
{
    primal_model *a = make_model(3);
    const char *path = tpath("g.safetensors");
    save(path, a);
    primal_ckpt *c;
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_open(path, &c, &err), PRIMAL_OK, "%s", err.msg);
    primal_model_config mc;
    primal_ckpt_model_config(c, &mc, &err);
    primal_model *b;
    cr_assert_eq(primal_model_create(&mc, primal_ckpt_grid_for, c, &b, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_eq(primal_ckpt_load_model(c, b, &err), PRIMAL_OK, "%s", err.msg);
    assert_same_model(a, b);
    primal_model_free(b);
    primal_ckpt_close(c);
    primal_model_free(a);
}

Test(checkpoint, file_layout_follows_the_format_document)
{
    primal_model *a = make_model(4);
    /* Hand-set 4-bit indices: columns 0 and 1 share byte 0, the even one in the low nibble. */
    primal_param *up = primal_model_find(a, "model.layers.0.mlp.up_proj.weight");
    primal_index_set(&up->q, 0, 0, 3);
    primal_index_set(&up->q, 0, 1, 12);
    primal_param *down = primal_model_find(a, "model.layers.0.mlp.down_proj.weight");
    primal_index_set(&down->q, 1, 22, 9); /* the odd last column: low nibble of byte 11 */
    const char *path = tpath("layout.safetensors");
    save(path, a);

    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(path, &st, &err), PRIMAL_OK, "%s", err.msg);
    const primal_st_tensor *t = primal_st_get(st, "index.model.layers.0.mlp.up_proj.weight");
    cr_assert_eq(t->dtype, PRIMAL_U8);
    cr_assert_eq(t->shape[0], 23);
    cr_assert_eq(t->shape[1], 8);
    cr_assert_eq(((const uint8_t *)t->data)[0], 0xC3);
    t = primal_st_get(st, "index.model.layers.0.mlp.down_proj.weight");
    cr_assert_eq(t->shape[0], 16);
    cr_assert_eq(t->shape[1], 12); /* ceil(23 / 2) */
    cr_assert_eq(((const uint8_t *)t->data)[12 + 11] & 0xF, 9);
    t = primal_st_get(st, "index.model.layers.0.self_attn.o_proj.weight");
    cr_assert_eq(t->dtype, PRIMAL_U8);
    cr_assert_eq(t->shape[1], 16);
    t = primal_st_get(st, "index.lm_head.weight");
    cr_assert_eq(t->dtype, PRIMAL_U16);
    cr_assert_eq(t->shape[0], 32);
    cr_assert_eq(t->shape[1], 16);
    t = primal_st_get(st, "scale.lm_head.weight");
    cr_assert_eq(t->dtype, PRIMAL_F32);
    cr_assert_eq(t->ndim, 1);
    t = primal_st_get(st, "model.layers.1.mlp.down_proj.weight");
    cr_assert_eq(t->dtype, PRIMAL_F32);
    cr_assert_eq(t->shape[0], 16);
    cr_assert_eq(t->shape[1], 23);
    cr_assert_null(primal_st_get(st, "index.model.layers.1.mlp.down_proj.weight"));
    t = primal_st_get(st, "model.layers.1.self_attn.k_proj.bias");
    cr_assert_eq(t->dtype, PRIMAL_F32);
    cr_assert_eq(t->shape[0], 8);
    t = primal_st_get(st, "grid.prime13");
    cr_assert_eq(t->shape[0], 13);
    cr_assert_eq(memcmp(t->data, prime13, sizeof prime13), 0);
    t = primal_st_get(st, "state.step");
    cr_assert_eq(t->dtype, PRIMAL_U8);
    cr_assert_eq(t->shape[0], 8);
    /* Every tensor aligned to its element size inside the file. */
    for (int i = 0; i < primal_st_count(st); i++) {
        t = primal_st_at(st, i);
        cr_assert_eq((uintptr_t)t->data % primal_dtype_size(t->dtype), 0, "%s", t->name);
    }
    cr_assert_str_eq(primal_st_meta(st, "primal.format"), "1");
    cr_assert(strstr(primal_st_meta(st, "primal.grid_sha256"), "\"prime13\":\"" PRIME13_SHA "\"")
                  != NULL,
              "%s", primal_st_meta(st, "primal.grid_sha256"));
    cr_assert(strstr(primal_st_meta(st, "primal.grids"), "\"lm_head.weight\":\"u300\"") != NULL);
    cr_assert(strstr(primal_st_meta(st, "primal.model"), "\"kv_heads\":1") != NULL);
    cr_assert_eq(primal_st_verify(st, &err), PRIMAL_OK, "%s", err.msg);
    primal_st_close(st);
    primal_model_free(a);
}

Test(checkpoint, a_file_truncated_by_one_byte_is_refused)
{
    primal_model *a = make_model(1);
    const char *path = tpath("trunc.safetensors");
    save(path, a);
    cr_assert_eq(truncate(path, (off_t)(file_size(path) - 1)), 0);
    expect_open_refused(path, "outside the data section");
    primal_model_free(a);
}

Test(checkpoint, a_flipped_byte_in_the_data_section_is_refused)
{
    primal_model *a = make_model(1);
    const char *path = tpath("flipd.safetensors");
    save(path, a);
    flip_byte(path, file_size(path) / 2 + 1000);
    expect_open_refused(path, "checksum mismatch: data section is corrupt");
    primal_model_free(a);
}

Test(checkpoint, a_flipped_byte_in_the_header_is_refused)
{
    primal_model *a = make_model(1);
    const char *path = tpath("fliph.safetensors");
    save(path, a);
    /* Inside the INI text "steps = 10": 's' -> 'S' keeps the JSON valid. */
    FILE *f = fopen(path, "rb");
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    char *at = memmem(buf, n, "steps = 10", 10);
    cr_assert_not_null(at);
    flip_byte(path, (size_t)(at - buf));
    expect_open_refused(path, "checksum mismatch: header is corrupt");

    /* And a byte of a tensor name: "model" -> "modeL". */
    save(path, a);
    f = fopen(path, "rb");
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    at = memmem(buf, n, "\"model.norm.weight\"", 19);
    cr_assert_not_null(at);
    flip_byte(path, (size_t)(at - buf) + 5);
    expect_open_refused(path, "checksum mismatch: header is corrupt");
    primal_model_free(a);
}

Test(checkpoint, a_wrong_grid_hash_is_refused)
{
    primal_model *a = make_model(1);
    const char *src = tpath("good.safetensors"), *dst = tpath("badgrid.safetensors");
    save(src, a);
    char gsha[1024];
    primal_ckpt *c;
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_open(src, &c, &err), PRIMAL_OK, "%s", err.msg);
    primal_ckpt_close(c);
    primal_st *st;
    cr_assert_eq(primal_st_open(src, &st, &err), PRIMAL_OK);
    snprintf(gsha, sizeof gsha, "%s", primal_st_meta(st, "primal.grid_sha256"));
    primal_st_close(st);
    char *h = strstr(gsha, PRIME13_SHA);
    cr_assert_not_null(h);
    h[0] = '0'; /* 7 -> 0 */
    rewrite(src, dst, "primal.grid_sha256", gsha, NULL);
    expect_open_refused(dst, "grid prime13: SHA-256 of its values is " PRIME13_SHA);
    primal_model_free(a);
}

Test(checkpoint, another_format_version_is_refused)
{
    primal_model *a = make_model(1);
    const char *src = tpath("v1.safetensors"), *dst = tpath("v2.safetensors");
    save(src, a);
    rewrite(src, dst, "primal.format", "2", NULL);
    expect_open_refused(dst, "checkpoint format \"2\" is not supported");
    primal_model_free(a);
}

Test(checkpoint, a_plain_hugging_face_file_is_not_a_checkpoint)
{
    expect_open_refused(PRIMAL_TEST_FIXTURES "/hf-qwen2-tiny/model.safetensors",
                        "not a PRIMAL checkpoint");
}

Test(checkpoint, save_into_a_missing_directory_fails_cleanly)
{
    primal_model *a = make_model(1);
    const char *path = tpath("missing/dir/c.safetensors");
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_save(path, a, NULL, NULL, 0, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, path) != NULL, "%s", err.msg);
    cr_assert_eq(count_tmp_files(), 0);
    primal_model_free(a);
}

Test(checkpoint, saving_over_an_existing_checkpoint_replaces_it_and_leaves_no_temp_file)
{
    primal_model *a = make_model(1), *b = make_model(2), *c2 = make_model(3);
    const char *path = tpath("over.safetensors");
    save(path, a);
    save(path, b);
    cr_assert_eq(count_tmp_files(), 0);
    primal_ckpt *c;
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_open(path, &c, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_ckpt_load_model(c, c2, &err), PRIMAL_OK, "%s", err.msg);
    assert_same_model(b, c2);
    primal_ckpt_close(c);
    /* A failing save (an empty blob name) leaves the existing file as it was. */
    primal_ckpt_blob bad = { "", NULL, 0 };
    cr_assert_neq(primal_ckpt_save(path, a, NULL, &bad, 1, &err), PRIMAL_OK);
    cr_assert_eq(count_tmp_files(), 0);
    cr_assert_eq(primal_ckpt_open(path, &c, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_ckpt_load_model(c, c2, &err), PRIMAL_OK, "%s", err.msg);
    assert_same_model(b, c2);
    primal_ckpt_close(c);
    primal_model_free(a);
    primal_model_free(b);
    primal_model_free(c2);
}

Test(checkpoint, load_refuses_a_model_with_another_config)
{
    primal_model *a = make_model(1);
    const char *path = tpath("cfg.safetensors");
    save(path, a);
    primal_ckpt *c;
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_open(path, &c, &err), PRIMAL_OK, "%s", err.msg);
    primal_model_config other = cfg;
    other.ffn = 24;
    primal_model *b;
    cr_assert_eq(primal_model_create(&other, mixed_grids, NULL, &b, &err), PRIMAL_OK);
    cr_assert_eq(primal_ckpt_load_model(c, b, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "model ffn is 24 here, 23 in the checkpoint") != NULL, "%s",
              err.msg);
    cr_assert(strstr(err.msg, path) != NULL, "%s", err.msg);
    primal_model_free(b);
    primal_ckpt_close(c);
    primal_model_free(a);
}

static const primal_grid_ref *all13(void *user, const char *name)
{
    (void)user;
    (void)name;
    return &g13;
}

Test(checkpoint, load_refuses_another_grid_and_changes_nothing)
{
    primal_model *a = make_model(1);
    const char *path = tpath("grid.safetensors");
    save(path, a);
    primal_ckpt *c;
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_open(path, &c, &err), PRIMAL_OK, "%s", err.msg);
    primal_model *b;
    cr_assert_eq(primal_model_create(&cfg, all13, NULL, &b, &err), PRIMAL_OK);
    primal_model_init_random(b, 9, 0.02f, &err);
    primal_param *e = primal_model_find(b, "model.embed_tokens.weight");
    float s0 = e->q.scale[0];
    cr_assert_eq(primal_ckpt_load_model(c, b, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "tensor model.layers.0.self_attn.o_proj.weight: grid prime13 "
                              "(13 values) here, u100 (100 values) in the checkpoint") != NULL,
              "%s", err.msg);
    cr_assert_eq(e->q.scale[0], s0); /* embed comes first and was not overwritten */
    primal_model_free(b);
    primal_ckpt_close(c);
    primal_model_free(a);
}

Test(checkpoint, load_refuses_a_tensor_that_is_not_a_parameter)
{
    primal_model *a = make_model(1);
    const char *src = tpath("x.safetensors"), *dst = tpath("extra.safetensors");
    save(src, a);
    rewrite(src, dst, NULL, NULL, "model.layers.7.mlp.up_proj.bias");
    primal_ckpt *c;
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_open(dst, &c, &err), PRIMAL_OK, "%s", err.msg);
    primal_model *b = make_model(2);
    cr_assert_eq(primal_ckpt_load_model(c, b, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "tensor model.layers.7.mlp.up_proj.bias: not a parameter") != NULL,
              "%s", err.msg);
    cr_assert(strstr(err.msg, dst) != NULL, "%s", err.msg);
    primal_ckpt_close(c);
    primal_model_free(a);
    primal_model_free(b);
}

Test(checkpoint, open_refuses_a_checkpoint_missing_a_parameter)
{
    primal_model *a = make_model(1);
    const char *src = tpath("m.safetensors"), *dst = tpath("missing.safetensors");
    save(src, a);
    primal_st *st;
    primal_stw *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(src, &st, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_begin(dst, &w, &err), PRIMAL_OK);
    for (int i = 0; i < primal_st_count(st); i++) {
        const primal_st_tensor *t = primal_st_at(st, i);
        if (strcmp(t->name, "scale.model.layers.1.self_attn.q_proj.weight") != 0)
            primal_stw_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err);
    }
    static const char *const keys[] = { "primal.format", "primal.model", "primal.grids",
                                        "primal.grid_sha256", "primal.config" };
    for (int i = 0; i < 5; i++)
        primal_stw_meta(w, keys[i], primal_st_meta(st, keys[i]), &err);
    cr_assert_eq(primal_stw_commit(w, &err), PRIMAL_OK, "%s", err.msg);
    primal_st_close(st);
    expect_open_refused(dst, "tensor scale.model.layers.1.self_attn.q_proj.weight: missing");
    primal_model_free(a);
}

Test(checkpoint, a_tied_model_round_trips_without_an_lm_head)
{
    primal_model_config tc = cfg;
    tc.tied = 1;
    tc.qkv_bias = 0;
    tc.arch = PRIMAL_ARCH_LLAMA;
    primal_model *a, *b;
    primal_err err = { 0 };
    cr_assert_eq(primal_model_create(&tc, all13, NULL, &a, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_model_create(&tc, all13, NULL, &b, &err), PRIMAL_OK, "%s", err.msg);
    primal_model_init_random(a, 1, 0.02f, &err);
    const char *path = tpath("tied.safetensors");
    cr_assert_eq(primal_ckpt_save(path, a, NULL, NULL, 0, &err), PRIMAL_OK, "%s", err.msg);
    primal_ckpt *c;
    cr_assert_eq(primal_ckpt_open(path, &c, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_str_eq(primal_ckpt_config_ini(c), "");
    primal_model_config mc;
    primal_ckpt_model_config(c, &mc, &err);
    cr_assert_eq(mc.tied, 1);
    cr_assert_eq(mc.arch, PRIMAL_ARCH_LLAMA);
    cr_assert_null(primal_ckpt_grid_name(c, "lm_head.weight"));
    cr_assert_eq(primal_ckpt_load_model(c, b, &err), PRIMAL_OK, "%s", err.msg);
    assert_same_model(a, b);
    primal_ckpt_close(c);
    primal_model_free(a);
    primal_model_free(b);
}

/* ------------------------------------------------------------------------------------------ */
/* Forged files.  The checksums have no key, so whoever edits a checkpoint can sign it again;
 * these helpers do what such a person would: edit bytes, then recompute both SHA-256 fields as
 * the writer does (docs/FORMAT.md, "What the writer produces"). */

static unsigned char *slurp(const char *path, size_t *n)
{
    *n = file_size(path);
    unsigned char *buf = malloc(*n + 1);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    cr_assert_eq(fread(buf, 1, *n, f), *n);
    fclose(f);
    return buf;
}

static void spit(const char *path, const unsigned char *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(buf, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

static uint64_t header_len(const unsigned char *buf)
{
    uint64_t n;
    memcpy(&n, buf, 8);
    return n;
}

/* The 64 hex digits after "KEY":" in the header. */
static unsigned char *hex_field(unsigned char *buf, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    unsigned char *at = memmem(buf + 8, header_len(buf), pat, strlen(pat));
    cr_assert_not_null(at, "no %s in the header", key);
    return at + strlen(pat);
}

/* Sign buf (a whole file of n bytes) again: the data section's SHA-256, then the SHA-256 of the
 * length and header bytes taken with primal.header_sha256's digits all '0'. */
static void resign(unsigned char *buf, size_t n)
{
    uint64_t hl = header_len(buf);
    char hex[65];
    primal_sha256_hex(buf + 8 + hl, n - 8 - hl, hex);
    memcpy(hex_field(buf, "primal.data_sha256"), hex, 64);
    unsigned char *h = hex_field(buf, "primal.header_sha256");
    memset(h, '0', 64);
    primal_sha256_hex(buf, 8 + hl, hex);
    memcpy(h, hex, 64);
}

/* Where tensor name's data begins in the file (its data_offsets begin, past the header). */
static size_t tensor_at(const unsigned char *buf, const char *name)
{
    char pat[256];
    snprintf(pat, sizeof pat, "\"%s\":{", name);
    uint64_t hl = header_len(buf);
    char *hdr = malloc(hl + 1);
    memcpy(hdr, buf + 8, hl);
    hdr[hl] = '\0';
    char *at = strstr(hdr, pat);
    cr_assert_not_null(at, "no tensor %s", name);
    char *off = strstr(at, "\"data_offsets\":[");
    cr_assert_not_null(off);
    size_t begin = (size_t)strtoull(off + strlen("\"data_offsets\":["), NULL, 10);
    free(hdr);
    return 8 + hl + begin;
}

/* Copy src to dst with len bytes at byte off of tensor name's data replaced by bytes, signed
 * again. */
static void forge_tensor(const char *src, const char *dst, const char *name, size_t off,
                         const void *bytes, size_t len)
{
    size_t n;
    unsigned char *buf = slurp(src, &n);
    memcpy(buf + tensor_at(buf, name) + off, bytes, len);
    resign(buf, n);
    spit(dst, buf, n);
    free(buf);
}

/* Copy src to dst with the first from in the header replaced by to (the header re-padded to a
 * multiple of 8 and its length rewritten), signed again. */
static void forge_header(const char *src, const char *dst, const char *from, const char *to)
{
    size_t n;
    unsigned char *buf = slurp(src, &n);
    uint64_t hl = header_len(buf);
    while (hl > 0 && buf[8 + hl - 1] == ' ')
        hl--;
    unsigned char *at = memmem(buf + 8, hl, from, strlen(from));
    cr_assert_not_null(at, "no %s in the header", from);
    size_t pre = (size_t)(at - buf), fl = strlen(from), tl = strlen(to);
    uint64_t nhl = hl - fl + tl, data = 8 + header_len(buf);
    while (nhl % 8 != 0)
        nhl++;
    size_t nn = 8 + nhl + (n - data);
    unsigned char *out = malloc(nn);
    memcpy(out, &nhl, 8);
    memcpy(out + 8, buf + 8, pre - 8);
    memcpy(out + pre, to, tl);
    memcpy(out + pre + tl, at + fl, (size_t)(8 + hl - (pre + fl)));
    memset(out + 8 + hl - fl + tl, ' ', (size_t)(nhl - (hl - fl + tl)));
    memcpy(out + 8 + nhl, buf + data, n - data);
    resign(out, nn);
    spit(dst, out, nn);
    free(out);
    free(buf);
}

/* The forged file is a valid container whose checksums verify: only the checkpoint's own checks
 * can refuse it. */
static void assert_signed(const char *path)
{
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(path, &st, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_st_verify(st, &err), PRIMAL_OK, "%s", err.msg);
    primal_st_close(st);
}

Test(checkpoint, the_resign_helper_makes_files_that_verify_and_load)
{
    primal_model *a = make_model(1), *b = make_model(2);
    const char *src = tpath("rs.safetensors"), *dst = tpath("rs2.safetensors");
    save(src, a);
    /* Index 12 (the top of prime13) at [0][0] of a 4-bit matrix: a legal edit. */
    static const unsigned char c12 = 0xCC;
    forge_tensor(src, dst, "index.model.layers.0.mlp.up_proj.weight", 0, &c12, 1);
    assert_signed(dst);
    forge_header(dst, dst, "steps = 10", "steps = 100000");
    assert_signed(dst);
    primal_ckpt *c;
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_open(dst, &c, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_str_eq(primal_ckpt_config_ini(c), "[run]\nsteps = 100000\n");
    cr_assert_eq(primal_ckpt_load_model(c, b, &err), PRIMAL_OK, "%s", err.msg);
    primal_param *up = primal_model_find(b, "model.layers.0.mlp.up_proj.weight");
    cr_assert_eq(primal_index_get(&up->q, 0, 0), 12);
    cr_assert_eq(primal_index_get(&up->q, 0, 1), 12);
    primal_ckpt_close(c);
    primal_model_free(a);
    primal_model_free(b);
}

Test(checkpoint, an_index_past_its_grid_is_refused_on_open_with_file_tensor_and_position)
{
    primal_model *a = make_model(1);
    const char *src = tpath("ix.safetensors"), *dst = tpath("ix-forged.safetensors");
    save(src, a);
    /* 4-bit over prime13 (13 values): 15 in the high nibble of row 3's byte 3 is [3][7].
     * up_proj is (23, 16): 8 bytes a row. */
    unsigned char b;
    size_t n;
    unsigned char *buf = slurp(src, &n);
    b = buf[tensor_at(buf, "index.model.layers.0.mlp.up_proj.weight") + 3 * 8 + 3];
    free(buf);
    b = (unsigned char)((b & 0x0F) | 0xF0);
    forge_tensor(src, dst, "index.model.layers.0.mlp.up_proj.weight", 3 * 8 + 3, &b, 1);
    assert_signed(dst);
    expect_open_refused(dst, "index.model.layers.0.mlp.up_proj.weight: index 15 at [3][7] is "
                             "outside the 13-entry grid prime13");
    /* 13, the first value past the grid, in a low nibble: [0][0]. */
    b = 0x0D;
    forge_tensor(src, dst, "index.model.layers.0.mlp.up_proj.weight", 0, &b, 1);
    expect_open_refused(dst, "index 13 at [0][0] is outside the 13-entry grid");
    /* 8-bit over 100 values: 100 at [2][5] of o_proj (16, 16). */
    b = 100;
    forge_tensor(src, dst, "index.model.layers.0.self_attn.o_proj.weight", 2 * 16 + 5, &b, 1);
    expect_open_refused(dst, "index.model.layers.0.self_attn.o_proj.weight: index 100 at [2][5] "
                             "is outside the 100-entry grid u100");
    /* 16-bit over 300 values: 65535 at [31][15] of lm_head (32, 16), the last element. */
    static const uint16_t big = 65535;
    forge_tensor(src, dst, "index.lm_head.weight", (31 * 16 + 15) * 2, &big, 2);
    expect_open_refused(dst, "index.lm_head.weight: index 65535 at [31][15] is outside the "
                             "300-entry grid u300");
    primal_model_free(a);
}

Test(checkpoint, the_padding_nibble_of_an_odd_row_is_not_an_index)
{
    /* down_proj of layer 0 has 23 columns: the high nibble of each row's byte 11 is padding,
     * which the format leaves free (docs/FORMAT.md), so 15 there is no index at all. */
    primal_model *a = make_model(1), *b = make_model(2);
    const char *src = tpath("pad.safetensors"), *dst = tpath("pad-forged.safetensors");
    save(src, a);
    size_t n;
    unsigned char *buf = slurp(src, &n);
    unsigned char v = buf[tensor_at(buf, "index.model.layers.0.mlp.down_proj.weight") + 11];
    free(buf);
    v = (unsigned char)((v & 0x0F) | 0xF0);
    forge_tensor(src, dst, "index.model.layers.0.mlp.down_proj.weight", 11, &v, 1);
    primal_ckpt *c;
    primal_err err = { 0 };
    cr_assert_eq(primal_ckpt_open(dst, &c, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_ckpt_load_model(c, b, &err), PRIMAL_OK, "%s", err.msg);
    primal_ckpt_close(c);
    primal_model_free(a);
    primal_model_free(b);
}

Test(checkpoint, a_forged_model_config_is_refused_on_open_before_any_allocation)
{
    primal_model *a = make_model(1);
    const char *src = tpath("cf.safetensors"), *dst = tpath("cf-forged.safetensors");
    save(src, a);
    /* primal.model is JSON inside a JSON string: its quotes are escaped in the header.
     * Past the [model] limits: refused from the config alone. */
    forge_header(src, dst, "\\\"vocab\\\":32", "\\\"vocab\\\":2147483647");
    assert_signed(dst);
    expect_open_refused(dst, "__metadata__ primal.model: model: vocab 2147483647");
    forge_header(src, dst, "\\\"layers\\\":2", "\\\"layers\\\":2000000");
    expect_open_refused(dst, "layers 2000000");
    /* Within the limits, but more than the file holds: the first tensor that disagrees. */
    forge_header(src, dst, "\\\"vocab\\\":32", "\\\"vocab\\\":16000000");
    expect_open_refused(dst, "tensor index.model.embed_tokens.weight: U8 [32,8], expected U8 "
                             "[16000000,8]");
    forge_header(src, dst, "\\\"ffn\\\":23", "\\\"ffn\\\":1048576");
    expect_open_refused(dst, "tensor index.model.layers.0.mlp.gate_proj.weight: U8 [23,8], "
                             "expected U8 [1048576,8]");
    forge_header(src, dst, "\\\"layers\\\":2", "\\\"layers\\\":3");
    expect_open_refused(dst, "tensor model.layers.2.self_attn.q_proj.weight: missing");
    primal_model_free(a);
}

Test(checkpoint, a_non_finite_float_parameter_is_refused_on_open_naming_the_tensor)
{
    primal_model *a = make_model(1);
    const char *src = tpath("nf.safetensors"), *dst = tpath("nf-forged.safetensors");
    save(src, a);
    const float nan = __builtin_nanf(""), inf = __builtin_inff();
    forge_tensor(src, dst, "model.norm.weight", 5 * 4, &nan, 4);
    assert_signed(dst);
    expect_open_refused(dst, "model.norm.weight: value at [5] is nan, not finite");
    forge_tensor(src, dst, "model.layers.1.self_attn.k_proj.bias", 0, &inf, 4);
    expect_open_refused(dst, "model.layers.1.self_attn.k_proj.bias: value at [0] is inf");
    forge_tensor(src, dst, "scale.model.layers.0.mlp.up_proj.weight", 22 * 4, &inf, 4);
    expect_open_refused(dst, "scale.model.layers.0.mlp.up_proj.weight: value at [22] is inf");
    /* the dense matrix (16, 23): [2][3] */
    forge_tensor(src, dst, "model.layers.1.mlp.down_proj.weight", (2 * 23 + 3) * 4, &nan, 4);
    expect_open_refused(dst, "model.layers.1.mlp.down_proj.weight: value at [2][3] is nan");
    primal_model_free(a);
}

Test(checkpoint, a_grid_with_a_nan_or_out_of_order_values_is_refused_on_open)
{
    primal_model *a = make_model(1);
    const char *src = tpath("gv.safetensors"), *dst = tpath("gv-forged.safetensors");
    save(src, a);
    float bad[100];
    memcpy(bad, u100, sizeof bad);
    bad[7] = __builtin_nanf("");
    char hex[65], old[65];
    primal_sha256_hex(u100, sizeof u100, old);
    primal_sha256_hex(bad, sizeof bad, hex);
    /* the values and their hash in primal.grid_sha256, both replaced */
    forge_tensor(src, dst, "grid.u100", 0, bad, sizeof bad);
    forge_header(dst, dst, old, hex);
    assert_signed(dst);
    expect_open_refused(dst, "grid.u100: value 7 is nan, not finite");
    memcpy(bad, u100, sizeof bad);
    bad[7] = bad[6];
    primal_sha256_hex(bad, sizeof bad, hex);
    forge_tensor(src, dst, "grid.u100", 0, bad, sizeof bad);
    forge_header(dst, dst, old, hex);
    expect_open_refused(dst, "grid.u100: values 6 and 7");
    primal_model_free(a);
}

/* ------------------------------------------------------------------------------------------ */
/* Hugging Face directories: a copy of the tiny Qwen2 fixture with one edit. */

#define HF_TINY PRIMAL_TEST_FIXTURES "/hf-qwen2-tiny"

/* tmpdir/hf holding the fixture's config.json (with from replaced by to when from is not NULL)
 * and model.safetensors; the caller edits and removes them (hf_remove). */
static const char *hf_copy(const char *from, const char *to)
{
    const char *dir = tpath("hf");
    static char d[512];
    snprintf(d, sizeof d, "%s", dir);
    cr_assert_eq(mkdir(d, 0700), 0);
    char p[600];
    size_t n;
    unsigned char *buf = slurp(HF_TINY "/model.safetensors", &n);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    spit(p, buf, n);
    free(buf);
    buf = slurp(HF_TINY "/config.json", &n);
    buf[n] = '\0';
    snprintf(p, sizeof p, "%s/config.json", d);
    FILE *f = fopen(p, "w");
    char *at = from != NULL ? strstr((char *)buf, from) : NULL;
    if (from != NULL)
        cr_assert_not_null(at, "no %s in config.json", from);
    if (at != NULL)
        fprintf(f, "%.*s%s%s", (int)(at - (char *)buf), buf, to, at + strlen(from));
    else
        fputs((char *)buf, f);
    fclose(f);
    free(buf);
    return d;
}

static void hf_remove(const char *d)
{
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", d);
    unlink(p);
    rmdir(d);
}

static void expect_hf_refused(const char *d, const char *fragment)
{
    primal_model *m = (primal_model *)0x1;
    primal_err err = { 0 };
    int rc = primal_hf_load_model(d, all13, NULL, &m, &err);
    cr_assert_neq(rc, PRIMAL_OK, "loaded");
    cr_assert_null(m);
    cr_assert(strstr(err.msg, fragment) != NULL, "message lacks \"%s\": %s", fragment, err.msg);
}

Test(checkpoint, a_hugging_face_nan_or_inf_is_refused_naming_the_file_and_tensor)
{
    const char *d = hf_copy(NULL, NULL);
    char p[600], want[800];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    const float nan = __builtin_nanf(""), inf = __builtin_inff();
    size_t n;
    unsigned char *buf = slurp(p, &n), *orig = malloc(n);
    memcpy(orig, buf, n);
    /* a matrix, snapped onto the grid: up_proj (176, 64), [1][2] */
    memcpy(buf + tensor_at(buf, "model.layers.0.mlp.up_proj.weight") + (64 + 2) * 4, &nan, 4);
    spit(p, buf, n);
    snprintf(want, sizeof want, "%s: tensor model.layers.0.mlp.up_proj.weight: value at [1][2] "
                                "is nan, not finite", p);
    expect_hf_refused(d, want);
    /* a vector, copied as it is: model.norm.weight [3] */
    memcpy(buf, orig, n);
    memcpy(buf + tensor_at(buf, "model.norm.weight") + 3 * 4, &inf, 4);
    spit(p, buf, n);
    snprintf(want, sizeof want, "%s: tensor model.norm.weight: value at [3] is inf, not finite",
             p);
    expect_hf_refused(d, want);
    free(buf);
    free(orig);
    hf_remove(d);
}

Test(checkpoint, a_hugging_face_config_larger_than_its_weights_is_refused_before_allocating)
{
    const char *d = hf_copy("\"vocab_size\": 512", "\"vocab_size\": 16000000");
    expect_hf_refused(d, "model.safetensors: tensor model.embed_tokens.weight: shape [512, 64], "
                         "config.json gives [16000000, 64]");
    hf_remove(d);
    d = hf_copy("\"vocab_size\": 512", "\"vocab_size\": 2000000000");
    expect_hf_refused(d, "/config.json: model: vocab 2000000000");
    hf_remove(d);
}
