/* safetensors_test.c: core/safetensors.c against hand-made files, the Hugging Face fixture
 * (tests/fixtures/hf-qwen2-tiny/model.safetensors, written by transformers) and published
 * SHA-256 test vectors.  Expected float bits come from reading the fixture with Python's struct
 * module, and F16/BF16 values are worked by hand from IEEE 754. */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include <primal/safetensors.h>

#ifndef PRIMAL_TEST_FIXTURES
#error "define PRIMAL_TEST_FIXTURES as the tests/fixtures directory"
#endif

#define TINY PRIMAL_TEST_FIXTURES "/hf-qwen2-tiny/model.safetensors"

static char tmpdir[256];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/primal_st_test.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
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

TestSuite(safetensors, .init = make_tmpdir, .fini = remove_tmpdir);

/* Write 8-byte length + header + data to tmpdir/name; returns the path (static buffer). */
static const char *raw_file(const char *name, const char *header, const void *data, size_t n)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    uint64_t hl = strlen(header);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(hl >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, hl, f);
    if (n)
        fwrite(data, 1, n, f);
    fclose(f);
    return path;
}

static void expect_refused(const char *path, const char *fragment)
{
    primal_st *st = (primal_st *)0x1;
    primal_err err = { 0 };
    int rc = primal_st_open(path, &st, &err);
    cr_assert_eq(rc, PRIMAL_EIO, "rc %d for %s (%s)", rc, fragment, err.msg);
    cr_assert_null(st);
    cr_assert(strstr(err.msg, path) != NULL, "message lacks the path: %s", err.msg);
    cr_assert(strstr(err.msg, fragment) != NULL, "message lacks \"%s\": %s", fragment, err.msg);
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static size_t file_size(const char *path)
{
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    return (size_t)sb.st_size;
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

/* ------------------------------------------------------------------------------------------ */

Test(safetensors, sha256_matches_the_published_test_vectors)
{
    char hex[65];
    primal_sha256_hex("", 0, hex);
    cr_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    primal_sha256_hex("abc", 3, hex);
    cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

Test(safetensors, reads_the_hugging_face_tiny_model)
{
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(TINY, &st, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_st_count(st), 27);
    cr_assert_str_eq(primal_st_meta(st, "format"), "pt");
    cr_assert_null(primal_st_meta(st, "absent"));
    cr_assert_str_eq(primal_st_at(st, 0)->name, "lm_head.weight"); /* header order */

    const primal_st_tensor *t = primal_st_get(st, "model.embed_tokens.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, PRIMAL_F32);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 512);
    cr_assert_eq(t->shape[1], 64);
    cr_assert_eq(t->numel, 512 * 64);
    cr_assert_eq(t->nbytes, 512 * 64 * 4);
    cr_assert_null(primal_st_get(st, "model.embed_tokens"));

    float v[64];
    int64_t shape[1] = { 64 };
    cr_assert_eq(primal_st_read_f32(st, "model.norm.weight", 1, shape, v, &err), PRIMAL_OK);
    cr_assert_eq(bits_of(v[0]), 0x3f653705u);
    cr_assert_eq(bits_of(v[1]), 0x3f85e532u);
    cr_assert_eq(bits_of(v[2]), 0x3f570574u);

    /* A file without our checksum cannot be verified. */
    cr_assert_eq(primal_st_verify(st, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "primal.data_sha256") != NULL, "%s", err.msg);
    primal_st_close(st);
}

Test(safetensors, read_f32_names_the_missing_tensor_the_wrong_shape_and_the_wrong_dtype)
{
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(TINY, &st, &err), PRIMAL_OK, "%s", err.msg);
    float v[64];
    int64_t shape[2] = { 4, 4 };
    cr_assert_eq(primal_st_read_f32(st, "model.nope", 1, shape, v, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, TINY ": tensor model.nope: not found") != NULL, "%s", err.msg);
    cr_assert_eq(primal_st_read_f32(st, "model.norm.weight", 2, shape, v, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "tensor model.norm.weight: shape [64], expected [4,4]") != NULL,
              "%s", err.msg);
    primal_st_close(st);

    int32_t ids[2] = { 1, 2 };
    const char *p = raw_file("i32.safetensors",
                             "{\"ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                             ids, sizeof ids);
    cr_assert_eq(primal_st_open(p, &st, &err), PRIMAL_OK, "%s", err.msg);
    int64_t s2[1] = { 2 };
    cr_assert_eq(primal_st_read_f32(st, "ids", 1, s2, v, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "tensor ids: dtype I32, expected a float type") != NULL, "%s",
              err.msg);
    primal_st_close(st);
}

Test(safetensors, converts_f16_exactly_including_subnormals_inf_and_nan)
{
    /* Worked by hand: value = (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m when e = 0. */
    const uint16_t h[] = { 0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400,
                           0x8000, 0x7C00, 0xFC00, 0x7E00, 0x3555, 0x8001 };
    const float want[] = { 1.0f, -2.0f, 65504.0f, 0x1p-24f, 1023 * 0x1p-24f, 0x1p-14f,
                           -0.0f, INFINITY, -INFINITY, NAN, 0.333251953125f, -0x1p-24f };
    const int n = (int)(sizeof h / sizeof h[0]);
    char hdr[128];
    snprintf(hdr, sizeof hdr, "{\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%d]}}",
             n, 2 * n);
    const char *p = raw_file("f16.safetensors", hdr, h, sizeof h);
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(p, &st, &err), PRIMAL_OK, "%s", err.msg);
    float out[12];
    cr_assert_eq(primal_st_to_f32(st, primal_st_get(st, "h"), out, &err), PRIMAL_OK);
    for (int i = 0; i < n; i++) {
        if (isnan(want[i]))
            cr_assert(isnan(out[i]), "h[%d] = %a", i, out[i]);
        else
            cr_assert_eq(bits_of(out[i]), bits_of(want[i]), "h[%d]: %a, want %a", i, out[i],
                         want[i]);
    }
    primal_st_close(st);
}

Test(safetensors, converts_bf16_and_f64)
{
    const uint16_t b[] = { 0x3F80, 0x4049, 0xBF00, 0x0001 };
    const double d[] = { 0.1, -1.5, 1e-300, 3.0 };
    unsigned char data[8 + 32];
    memcpy(data, b, 8);
    memcpy(data + 8, d, 32);
    const char *p = raw_file(
        "mix.safetensors",
        "{\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]},"
        "\"d\":{\"dtype\":\"F64\",\"shape\":[2,2],\"data_offsets\":[8,40]}}",
        data, sizeof data);
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(p, &st, &err), PRIMAL_OK, "%s", err.msg);
    float out[4];
    cr_assert_eq(primal_st_to_f32(st, primal_st_get(st, "b"), out, &err), PRIMAL_OK);
    cr_assert_eq(out[0], 1.0f);
    cr_assert_eq(out[1], 3.140625f);
    cr_assert_eq(out[2], -0.5f);
    cr_assert_eq(bits_of(out[3]), 0x00010000u); /* a float subnormal */
    cr_assert_eq(primal_st_to_f32(st, primal_st_get(st, "d"), out, &err), PRIMAL_OK);
    cr_assert_eq(bits_of(out[0]), 0x3DCCCCCDu); /* 0.1 rounded to nearest */
    cr_assert_eq(out[1], -1.5f);
    cr_assert_eq(bits_of(out[2]), 0u);         /* underflows to +0 */
    cr_assert_eq(out[3], 3.0f);
    primal_st_close(st);
}

Test(safetensors, rejects_a_file_shorter_than_8_bytes)
{
    char path[512];
    snprintf(path, sizeof path, "%s/short.safetensors", tmpdir);
    FILE *f = fopen(path, "wb");
    fwrite("abcde", 1, 5, f);
    fclose(f);
    expect_refused(path, "shorter than the 8-byte header length");
}

Test(safetensors, rejects_a_missing_file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/absent.safetensors", tmpdir);
    expect_refused(path, "cannot open");
}

Test(safetensors, rejects_a_header_length_beyond_the_file)
{
    const char *p = raw_file("beyond.safetensors", "{}", NULL, 0);
    /* Claim 3 header bytes where 2 exist. */
    int fd = open(p, O_WRONLY);
    unsigned char three = 3;
    cr_assert_eq(pwrite(fd, &three, 1, 0), 1);
    close(fd);
    expect_refused(p, "runs past the end of the file");
}

Test(safetensors, rejects_an_absurd_header_length)
{
    const char *p = raw_file("absurd.safetensors", "{}", NULL, 0);
    int fd = open(p, O_WRONLY);
    unsigned char big = 0x7F;
    cr_assert_eq(pwrite(fd, &big, 1, 7), 1);
    close(fd);
    expect_refused(p, "is absurd");
}

Test(safetensors, rejects_invalid_json)
{
    expect_refused(raw_file("bad.safetensors", "{\"a\":", NULL, 0), "header is not valid JSON");
    expect_refused(raw_file("arr.safetensors", "[1,2]", NULL, 0), "not a JSON object");
}

Test(safetensors, rejects_an_unknown_dtype)
{
    expect_refused(raw_file("dt.safetensors",
                            "{\"x\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                            "a", 1),
                   "tensor x: unknown dtype \"F8\"");
}

Test(safetensors, rejects_a_shape_that_is_not_a_list_of_non_negative_integers)
{
    const char *frag = "shape is not a list of non-negative integers";
    expect_refused(raw_file("s1.safetensors",
                            "{\"x\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}",
                            NULL, 0),
                   frag);
    expect_refused(raw_file("s2.safetensors",
                            "{\"x\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}",
                            "a", 1),
                   frag);
    expect_refused(raw_file("s3.safetensors",
                            "{\"x\":{\"dtype\":\"U8\",\"shape\":3,\"data_offsets\":[0,3]}}",
                            "abc", 3),
                   "shape missing or not a list");
}

Test(safetensors, rejects_a_byte_range_outside_the_data_section)
{
    expect_refused(raw_file("r1.safetensors",
                            "{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
                            "abc", 3),
                   "tensor x: byte range [0, 4) outside the data section (3 bytes)");
    expect_refused(raw_file("r2.safetensors",
                            "{\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,1]}}",
                            "abc", 3),
                   "outside the data section");
}

Test(safetensors, rejects_a_range_whose_length_does_not_match_the_shape)
{
    expect_refused(raw_file("len.safetensors",
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",
                            "abcdefgh", 8),
                   "tensor x: byte range holds 4 bytes, shape [2] of F32 needs 8");
}

Test(safetensors, rejects_overlapping_tensors)
{
    expect_refused(raw_file("ov.safetensors",
                            "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                            "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
                            "abcdefgh", 8),
                   "tensors a and b overlap");
}

Test(safetensors, rejects_duplicate_names)
{
    expect_refused(raw_file("dup.safetensors",
                            "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                            "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                            "ab", 2),
                   "duplicate");
}

Test(safetensors, rejects_metadata_that_is_not_string_to_string)
{
    expect_refused(raw_file("meta.safetensors", "{\"__metadata__\":{\"k\":1}}", NULL, 0),
                   "__metadata__: k: value is not a string");
}

Test(safetensors, writer_round_trips_aligned_contiguous_and_checksummed)
{
    char path[512];
    snprintf(path, sizeof path, "%s/w.safetensors", tmpdir);
    const float f[3] = { 1.5f, -2.25f, 0x1p-130f };
    const uint16_t u16[2][2] = { { 1, 65535 }, { 300, 7 } };
    const char abc[3] = { 'a', 'b', 'c' };
    primal_stw *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_stw_begin(path, &w, &err), PRIMAL_OK);
    int64_t s3[1] = { 3 }, s22[2] = { 2, 2 };
    /* "abc" alone in the data section: its checksum is the published vector. */
    cr_assert_eq(primal_stw_add(w, "abc", PRIMAL_U8, 1, s3, abc, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_meta(w, "note", "a \"quoted\" value", &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_commit(w, &err), PRIMAL_OK, "%s", err.msg);

    primal_st *st;
    cr_assert_eq(primal_st_open(path, &st, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_str_eq(primal_st_meta(st, "primal.data_sha256"),
                     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    cr_assert_str_eq(primal_st_meta(st, "note"), "a \"quoted\" value");
    cr_assert_eq(primal_st_verify(st, &err), PRIMAL_OK, "%s", err.msg);
    primal_st_close(st);

    cr_assert_eq(primal_stw_begin(path, &w, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_add(w, "f", PRIMAL_F32, 1, s3, f, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_add(w, "u", PRIMAL_U16, 2, s22, u16, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_add(w, "empty", PRIMAL_U8, 1, (int64_t[]){ 0 }, NULL, &err),
                 PRIMAL_OK);
    cr_assert_eq(primal_stw_add(w, "scalar", PRIMAL_F32, 0, NULL, &f[1], &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_commit(w, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(count_tmp_files(), 0);

    /* Header length a multiple of 8, data section exactly the tensors back to back. */
    FILE *fp = fopen(path, "rb");
    uint64_t hl = 0;
    cr_assert_eq(fread(&hl, 8, 1, fp), 1);
    fclose(fp);
    cr_assert_eq(hl % 8, 0);
    cr_assert_eq(file_size(path), 8 + hl + 12 + 8 + 0 + 4);

    cr_assert_eq(primal_st_open(path, &st, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_st_count(st), 4);
    cr_assert_str_eq(primal_st_at(st, 0)->name, "f");
    cr_assert_str_eq(primal_st_at(st, 3)->name, "scalar");
    const primal_st_tensor *t = primal_st_get(st, "f");
    cr_assert_eq(memcmp(t->data, f, sizeof f), 0);
    t = primal_st_get(st, "u");
    cr_assert_eq(t->dtype, PRIMAL_U16);
    cr_assert_eq(t->shape[0], 2);
    cr_assert_eq(t->shape[1], 2);
    cr_assert_eq(memcmp(t->data, u16, sizeof u16), 0);
    cr_assert_eq(primal_st_get(st, "empty")->nbytes, 0);
    cr_assert_eq(primal_st_get(st, "scalar")->ndim, 0);
    cr_assert_eq(primal_st_get(st, "scalar")->numel, 1);
    cr_assert_eq(primal_st_verify(st, &err), PRIMAL_OK, "%s", err.msg);
    primal_st_close(st);
}

/* Write a small file and return its size. */
static size_t small_file(const char *path)
{
    static const float f[4] = { 1, 2, 3, 4 };
    primal_stw *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_stw_begin(path, &w, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_add(w, "f", PRIMAL_F32, 1, (int64_t[]){ 4 }, f, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_meta(w, "text", "hello", &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_commit(w, &err), PRIMAL_OK, "%s", err.msg);
    return file_size(path);
}

static void flip_byte(const char *path, size_t off)
{
    int fd = open(path, O_RDWR);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, (off_t)off), 1);
    c ^= 0x01;
    cr_assert_eq(pwrite(fd, &c, 1, (off_t)off), 1);
    close(fd);
}

Test(safetensors, verify_catches_a_flipped_data_byte)
{
    char path[512];
    snprintf(path, sizeof path, "%s/flip.safetensors", tmpdir);
    size_t n = small_file(path);
    flip_byte(path, n - 3);
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(path, &st, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_st_verify(st, &err), PRIMAL_EIO);
    char want[600];
    snprintf(want, sizeof want, "%s: checksum mismatch: data section is corrupt", path);
    cr_assert_str_eq(err.msg, want);
    primal_st_close(st);
}

Test(safetensors, verify_catches_a_flipped_byte_in_a_metadata_string)
{
    char path[512];
    snprintf(path, sizeof path, "%s/fliph.safetensors", tmpdir);
    small_file(path);
    /* "hello" -> "helln": still valid JSON, only the header checksum can notice. */
    FILE *f = fopen(path, "rb");
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    char *at = memmem(buf, n, "hello", 5);
    cr_assert_not_null(at);
    flip_byte(path, (size_t)(at - buf) + 4);
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(path, &st, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_str_eq(primal_st_meta(st, "text"), "helln");
    cr_assert_eq(primal_st_verify(st, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, path) != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "checksum mismatch: header is corrupt") != NULL, "%s", err.msg);
    primal_st_close(st);
}

Test(safetensors, a_truncated_file_is_refused_at_open)
{
    char path[512];
    snprintf(path, sizeof path, "%s/trunc.safetensors", tmpdir);
    size_t n = small_file(path);
    cr_assert_eq(truncate(path, (off_t)(n - 1)), 0);
    expect_refused(path, "outside the data section");
}

Test(safetensors, writer_overwrites_an_existing_file_atomically)
{
    char path[512];
    snprintf(path, sizeof path, "%s/over.safetensors", tmpdir);
    FILE *f = fopen(path, "wb");
    fputs("old contents", f);
    fclose(f);
    small_file(path);
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(path, &st, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_st_verify(st, &err), PRIMAL_OK, "%s", err.msg);
    primal_st_close(st);
    cr_assert_eq(count_tmp_files(), 0);
}

Test(safetensors, writer_into_a_missing_directory_fails_cleanly)
{
    char path[512];
    snprintf(path, sizeof path, "%s/no/such/dir/x.safetensors", tmpdir);
    static const float f[1] = { 1 };
    primal_stw *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_stw_begin(path, &w, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_add(w, "f", PRIMAL_F32, 1, (int64_t[]){ 1 }, f, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_commit(w, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, path) != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "No such file or directory") != NULL, "%s", err.msg);
    cr_assert_eq(count_tmp_files(), 0);
}

Test(safetensors, writer_rejects_duplicates_and_reserved_keys)
{
    char path[512];
    snprintf(path, sizeof path, "%s/dupw.safetensors", tmpdir);
    static const float f[1] = { 1 };
    primal_stw *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_stw_begin(path, &w, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_add(w, "f", PRIMAL_F32, 1, (int64_t[]){ 1 }, f, &err), PRIMAL_OK);
    cr_assert_neq(primal_stw_add(w, "f", PRIMAL_F32, 1, (int64_t[]){ 1 }, f, &err), PRIMAL_OK);
    cr_assert(strstr(err.msg, "tensor f: added twice") != NULL, "%s", err.msg);
    cr_assert_neq(primal_stw_add(w, "__metadata__", PRIMAL_F32, 1, (int64_t[]){ 1 }, f, &err),
                  PRIMAL_OK);
    cr_assert_neq(primal_stw_meta(w, "primal.data_sha256", "x", &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_meta(w, "k", "x", &err), PRIMAL_OK);
    cr_assert_neq(primal_stw_meta(w, "k", "y", &err), PRIMAL_OK);
    primal_stw_abort(w);
    cr_assert_eq(access(path, F_OK), -1);
}
