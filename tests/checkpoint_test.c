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

Test(checkpoint, load_refuses_a_checkpoint_missing_a_parameter)
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

    primal_ckpt *c;
    cr_assert_eq(primal_ckpt_open(dst, &c, &err), PRIMAL_OK, "%s", err.msg);
    primal_model *b = make_model(2);
    cr_assert_eq(primal_ckpt_load_model(c, b, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "tensor scale.model.layers.1.self_attn.q_proj.weight: missing") !=
                  NULL,
              "%s", err.msg);
    primal_ckpt_close(c);
    primal_model_free(a);
    primal_model_free(b);
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
