/* hfconfig_test.c: core/hfconfig.c on the Hugging Face fixture (tests/fixtures/hf-qwen2-tiny,
 * whose README gives the config: vocab 512, hidden 64, 2 layers, 4 heads, 2 KV heads,
 * intermediate 176, theta 10000, eps 1e-6, q/k/v biases, untied) and on hand-written configs
 * in the forms transformers 4 and 5 write; a sharded copy of the tiny model is made with our
 * own writer. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include <primal/safetensors.h>

#include "hfconfig.h"

#define TINY_DIR PRIMAL_TEST_FIXTURES "/hf-qwen2-tiny"

static char tmpdir[256];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/primal_hf_test.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
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

TestSuite(hfconfig, .init = setup, .fini = teardown);

static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

#define LLAMA_BASE                                                                             \
    "\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 32, "                    \
    "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"intermediate_size\": 80"

static void expect_refused(const char *json, const char *fragment)
{
    const char *path = write_file("config.json", json);
    primal_model_config mc;
    primal_err err = { 0 };
    int rc = primal_hfconfig_load(path, &mc, &err);
    cr_assert_eq(rc, PRIMAL_ECONFIG, "rc %d: %s", rc, err.msg);
    cr_assert(strstr(err.msg, path) != NULL, "message lacks the path: %s", err.msg);
    cr_assert(strstr(err.msg, fragment) != NULL, "message lacks \"%s\": %s", fragment, err.msg);
}

Test(hfconfig, reads_the_tiny_qwen2_config_written_by_transformers_5)
{
    primal_model_config mc;
    primal_err err = { 0 };
    cr_assert_eq(primal_hfconfig_load(TINY_DIR, &mc, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(mc.arch, PRIMAL_ARCH_QWEN2);
    cr_assert_eq(mc.vocab, 512);
    cr_assert_eq(mc.dim, 64);
    cr_assert_eq(mc.layers, 2);
    cr_assert_eq(mc.heads, 4);
    cr_assert_eq(mc.kv_heads, 2);
    cr_assert_eq(mc.ffn, 176);
    cr_assert_eq(mc.rope_theta, 10000.0);
    cr_assert_eq(mc.norm_eps, 1e-6);
    cr_assert_eq(mc.tied, 0);
    cr_assert_eq(mc.qkv_bias, 1);
    /* The file itself, not only its directory. */
    primal_model_config m2;
    cr_assert_eq(primal_hfconfig_load(TINY_DIR "/config.json", &m2, &err), PRIMAL_OK);
    cr_assert_eq(memcmp(&mc, &m2, sizeof mc), 0);
}

Test(hfconfig, reads_a_transformers_4_llama_config_with_defaults)
{
    const char *path = write_file("config.json",
                                  "{" LLAMA_BASE ", \"rope_theta\": 500000.0, "
                                  "\"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": true, "
                                  "\"rope_scaling\": null, \"head_dim\": 8, "
                                  "\"hidden_act\": \"silu\"}");
    primal_model_config mc;
    primal_err err = { 0 };
    cr_assert_eq(primal_hfconfig_load(tmpdir, &mc, &err), PRIMAL_OK, "%s (%s)", err.msg, path);
    cr_assert_eq(mc.arch, PRIMAL_ARCH_LLAMA);
    cr_assert_eq(mc.kv_heads, 4); /* defaults to the head count */
    cr_assert_eq(mc.rope_theta, 500000.0);
    cr_assert_eq(mc.norm_eps, 1e-5);
    cr_assert_eq(mc.tied, 1);
    cr_assert_eq(mc.qkv_bias, 0); /* attention_bias defaults to false */

    write_file("config.json", "{" LLAMA_BASE ", \"attention_bias\": true}");
    cr_assert_eq(primal_hfconfig_load(tmpdir, &mc, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(mc.qkv_bias, 1);
    cr_assert_eq(mc.rope_theta, 10000.0);
    cr_assert_eq(mc.norm_eps, 1e-6);
    cr_assert_eq(mc.tied, 0);
}

Test(hfconfig, refuses_another_model_type_naming_it)
{
    expect_refused("{\"model_type\": \"mistral\", \"vocab_size\": 1}",
                   "model_type \"mistral\" is not supported (llama, qwen2)");
}

Test(hfconfig, refuses_rope_scaling)
{
    expect_refused("{" LLAMA_BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", "
                   "\"factor\": 8.0}}",
                   "rope_scaling: rope_type \"llama3\" is not supported (only default RoPE)");
    expect_refused("{" LLAMA_BASE ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}",
                   "rope_type \"linear\" is not supported");
    expect_refused("{" LLAMA_BASE ", \"rope_parameters\": {\"rope_type\": \"yarn\", "
                   "\"rope_theta\": 10000}}",
                   "rope_parameters: rope_type \"yarn\" is not supported");
}

Test(hfconfig, refuses_a_head_dim_other_than_hidden_over_heads)
{
    expect_refused("{" LLAMA_BASE ", \"head_dim\": 16}",
                   "head_dim 16 is not hidden_size / num_attention_heads = 8");
}

Test(hfconfig, refuses_missing_or_malformed_sizes)
{
    expect_refused("{\"model_type\": \"qwen2\", \"vocab_size\": 10}", "hidden_size: missing");
    expect_refused("{" LLAMA_BASE ", \"num_key_value_heads\": 3}",
                   "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
    expect_refused("{\"model_type\": \"llama\", \"vocab_size\": \"100\"}",
                   "vocab_size: expected a positive integer, got a string");
}

Test(hfconfig, refuses_a_missing_file_with_eio)
{
    primal_model_config mc;
    primal_err err = { 0 };
    cr_assert_eq(primal_hfconfig_load(tmpdir, &mc, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, tmpdir) != NULL, "%s", err.msg);
}

Test(hfconfig, opens_the_single_file_weights)
{
    primal_hf_weights *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_open_weights(TINY_DIR, &w, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_hf_weight_count(w), 27);
    const primal_st *st = NULL;
    const primal_st_tensor *t = primal_hf_weight(w, "model.layers.1.mlp.down_proj.weight", &st);
    cr_assert_not_null(t);
    cr_assert_eq(t->shape[0], 64);
    cr_assert_eq(t->shape[1], 176);
    cr_assert_str_eq(primal_st_path(st), TINY_DIR "/model.safetensors");
    cr_assert_null(primal_hf_weight(w, "model.layers.2.mlp.down_proj.weight", NULL));
    primal_hf_close_weights(w);

    cr_assert_eq(primal_hf_open_weights(tmpdir, &w, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "neither model.safetensors nor model.safetensors.index.json") !=
                  NULL,
              "%s", err.msg);
}

/* Split the tiny model: layer 0 and the embedding in shard 1, the rest in shard 2. */
static void make_shards(const char *index_extra)
{
    primal_st *st;
    primal_err err = { 0 };
    cr_assert_eq(primal_st_open(TINY_DIR "/model.safetensors", &st, &err), PRIMAL_OK);
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", tmpdir);
    snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", tmpdir);
    primal_stw *w1, *w2;
    cr_assert_eq(primal_stw_begin(p1, &w1, &err), PRIMAL_OK);
    cr_assert_eq(primal_stw_begin(p2, &w2, &err), PRIMAL_OK);
    size_t cap = 8192, n = 0;
    char *idx = malloc(cap);
    n += (size_t)snprintf(idx + n, cap - n, "{\"metadata\": {\"total_size\": 1}, "
                                            "\"weight_map\": {");
    for (int i = 0; i < primal_st_count(st); i++) {
        const primal_st_tensor *t = primal_st_at(st, i);
        int first = strstr(t->name, "layers.0.") != NULL || strstr(t->name, "embed") != NULL;
        cr_assert_eq(primal_stw_add(first ? w1 : w2, t->name, t->dtype, t->ndim, t->shape,
                                    t->data, &err),
                     PRIMAL_OK);
        n += (size_t)snprintf(idx + n, cap - n, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
                              i ? ", " : "", t->name, first ? 1 : 2);
    }
    snprintf(idx + n, cap - n, "%s}}", index_extra);
    cr_assert_eq(primal_stw_commit(w1, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_stw_commit(w2, &err), PRIMAL_OK, "%s", err.msg);
    write_file("model.safetensors.index.json", idx);
    free(idx);
    primal_st_close(st);
}

Test(hfconfig, opens_sharded_weights_through_the_index)
{
    make_shards("");
    primal_hf_weights *w, *one;
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_open_weights(tmpdir, &w, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_hf_open_weights(TINY_DIR, &one, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_hf_weight_count(w), 27);
    for (int i = 0; i < primal_hf_weight_count(one); i++) {
        const char *name = primal_hf_weight_name(one, i);
        const primal_st *st;
        const primal_st_tensor *a = primal_hf_weight(one, name, NULL);
        const primal_st_tensor *b = primal_hf_weight(w, name, &st);
        cr_assert_not_null(b, "%s", name);
        cr_assert_eq(a->nbytes, b->nbytes);
        cr_assert_eq(memcmp(a->data, b->data, a->nbytes), 0, "%s", name);
        int first = strstr(name, "layers.0.") != NULL || strstr(name, "embed") != NULL;
        cr_assert(strstr(primal_st_path(st), first ? "00001-of" : "00002-of") != NULL, "%s",
                  primal_st_path(st));
    }
    primal_hf_close_weights(w);
    primal_hf_close_weights(one);
}

Test(hfconfig, refuses_an_index_naming_a_tensor_its_shard_lacks)
{
    make_shards(", \"model.layers.9.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\"");
    primal_hf_weights *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_open_weights(tmpdir, &w, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "tensor model.layers.9.mlp.up_proj.weight: not in") != NULL, "%s",
              err.msg);
    cr_assert(strstr(err.msg, "model.safetensors.index.json") != NULL, "%s", err.msg);
}

Test(hfconfig, refuses_an_index_naming_a_missing_shard)
{
    make_shards(", \"x\": \"model-00003-of-00002.safetensors\"");
    primal_hf_weights *w;
    primal_err err = { 0 };
    cr_assert_eq(primal_hf_open_weights(tmpdir, &w, &err), PRIMAL_EIO);
    cr_assert(strstr(err.msg, "model-00003-of-00002.safetensors: cannot open") != NULL, "%s",
              err.msg);
}
