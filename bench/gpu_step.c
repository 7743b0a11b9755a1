/* gpu_step.c: times one training step of the CUDA model (forward + backward with a gradient
 * hook that does nothing; the flip policy's work is measured separately) on random tokens and
 * prints one JSON line.  SPEC.md, "Figures to beat" (GPT-2-124M shape, batch 32 x 1024).
 *
 * Flags (defaults, the target shape): --dim 768 --layers 12 --heads 12 --kv-heads (= heads)
 * --ffn 2048 --vocab 50304 --seq 1024 --batch 32 --grid prime13|dense (prime13)
 * --precision bf16|fp32 (bf16) --chunk 8192 (rows per G tile of the embedding and head)
 * --steps 10 --warmup 2 (untimed steps) --tied 0|1 (0) --attn fused|unfused (fused: bf16
 * attention through the fused kernels where the head size allows) --recompute 0|1|2 (0: keep
 * every block's activations, 1: recompute blocks, 2: recompute the MLP's gate|up)
 * --recompute-blocks K (with 2: only the first K blocks recompute; 0: all) --head-ahead 0|1|-1
 * (0: auto; primal_cuda_opts.head_ahead, whether the training forward runs the LM head's
 * backward) --grads-inline 0|1 (0; 1: scale gradients in line, not on the gradient stream)
 * --logits fp32|bf16 (fp32; bf16: the training forward's logits rounded to bfloat16)
 * --recompute-residual 0|1 (0; 1: the blocks' residual after attention made again in backward)
 * --norm-input fp32|bf16 (fp32; bf16: the blocks' norms read their input rounded to bfloat16,
 * and backward keeps that copy, not the float32 residual stream) --gemm heuristic|timed
 * (heuristic; timed: each GEMM shape's algorithm timed on its first call, in the warm-up).
 *
 * Output: {"gpu": .., "shape": {...}, "precision": .., "steps": .., "loss": ..,
 *   "tokens_per_s": .., "step_s": .., "forward_s": .., "backward_s": ..,
 *   "model_bytes": {"weights", "grads", "activations", "workspace", "peak"},
 *   "device_used_bytes": .., "device_total_bytes": ..}
 * device_used is total − free after the run (includes the CUDA context and cuBLAS). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <primal/rng.h>

#include "../core/model.h"
#include "../core/model_cuda.h"
#include "args.h"

static float prime13_values[13];

static const primal_grid_ref *grid_for(void *user, const char *name)
{
    (void)name;
    return user;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int noop_hook(void *user, primal_cuda_param *p, const float *G, int64_t r0,
                     int64_t nrows, void *stream, primal_err *err)
{
    (void)user, (void)p, (void)G, (void)r0, (void)nrows, (void)stream, (void)err;
    return PRIMAL_OK;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--dim N] [--layers N] [--heads N] [--kv-heads N] [--ffn N] [--vocab N] "
            "[--seq N] [--batch N] [--grid prime13|dense] [--precision bf16|fp32] [--chunk N] "
            "[--steps N] [--warmup N] [--tied 0|1] [--attn fused|unfused] "
            "[--recompute 0|1|2] [--recompute-blocks K] [--head-ahead 0|1|-1] "
            "[--grads-inline 0|1] [--logits fp32|bf16] [--recompute-residual 0|1] [--norm-input fp32|bf16] [--gemm heuristic|timed]\n",
            argv0);
    exit(2);
}

static int fail(const primal_err *err)
{
    fprintf(stderr, "gpu_step: %s\n", err->msg);
    return 1;
}

int main(int argc, char **argv)
{
    primal_model_config mc = {.arch = PRIMAL_ARCH_LLAMA, .vocab = 50304, .dim = 768,
                              .layers = 12, .heads = 12, .kv_heads = 0, .ffn = 2048,
                              .rope_theta = 10000.0, .norm_eps = 1e-5, .tied = 0,
                              .qkv_bias = 0};
    int seq = 1024, batch = 32, steps = 10, warmup = 2, chunk = 8192, recompute = 0, ahead = 0;
    int rblocks = 0, inl = 0, lbf16 = 0, rres = 0, nbf16 = 0, timed = 0;
    const char *grid = "prime13", *prec = "bf16", *attn = "fused";
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage(argv[0]);
        const char *k = argv[i], *v = argv[++i];
        int numeric = strcmp(k, "--grid") != 0 && strcmp(k, "--attn") != 0 &&
                      strcmp(k, "--precision") != 0 && strcmp(k, "--logits") != 0 &&
                      strcmp(k, "--norm-input") != 0 && strcmp(k, "--gemm") != 0;
        int x = numeric ? bench_int_arg("gpu_step", k, v) : 0;
        if (strcmp(k, "--dim") == 0) mc.dim = x;
        else if (strcmp(k, "--layers") == 0) mc.layers = x;
        else if (strcmp(k, "--heads") == 0) mc.heads = x;
        else if (strcmp(k, "--kv-heads") == 0) mc.kv_heads = x;
        else if (strcmp(k, "--ffn") == 0) mc.ffn = x;
        else if (strcmp(k, "--vocab") == 0) mc.vocab = x;
        else if (strcmp(k, "--seq") == 0) seq = x;
        else if (strcmp(k, "--batch") == 0) batch = x;
        else if (strcmp(k, "--steps") == 0) steps = x;
        else if (strcmp(k, "--warmup") == 0) warmup = x;
        else if (strcmp(k, "--chunk") == 0) chunk = x;
        else if (strcmp(k, "--tied") == 0) mc.tied = x;
        else if (strcmp(k, "--recompute") == 0) recompute = x;
        else if (strcmp(k, "--recompute-blocks") == 0) rblocks = x;
        else if (strcmp(k, "--recompute-residual") == 0) rres = x;
        else if (strcmp(k, "--head-ahead") == 0) ahead = x;
        else if (strcmp(k, "--grads-inline") == 0) inl = x;
        else if (strcmp(k, "--grid") == 0 &&
                 (strcmp(v, "prime13") == 0 || strcmp(v, "dense") == 0))
            grid = v;
        else if (strcmp(k, "--attn") == 0 &&
                 (strcmp(v, "fused") == 0 || strcmp(v, "unfused") == 0))
            attn = v;
        else if (strcmp(k, "--precision") == 0 &&
                 (strcmp(v, "bf16") == 0 || strcmp(v, "fp32") == 0))
            prec = v;
        else if (strcmp(k, "--logits") == 0 &&
                 (strcmp(v, "bf16") == 0 || strcmp(v, "fp32") == 0))
            lbf16 = strcmp(v, "bf16") == 0;
        else if (strcmp(k, "--norm-input") == 0 &&
                 (strcmp(v, "bf16") == 0 || strcmp(v, "fp32") == 0))
            nbf16 = strcmp(v, "bf16") == 0;
        else if (strcmp(k, "--gemm") == 0 &&
                 (strcmp(v, "heuristic") == 0 || strcmp(v, "timed") == 0))
            timed = strcmp(v, "timed") == 0;
        else
            usage(argv[0]);
    }
    if (mc.kv_heads == 0)
        mc.kv_heads = mc.heads;
    if (seq < 1 || batch < 1 || steps < 1 || warmup < 0 || ahead < -1 || ahead > 1 ||
        recompute < 0 || recompute > 2 || inl < 0 || inl > 1)
        usage(argv[0]);

    static const int den[] = {1, 2, 3, 5, 7, 11};
    for (int i = 0; i < 6; i++) {
        prime13_values[i] = (float)(-1.0 / den[i]);
        prime13_values[12 - i] = (float)(1.0 / den[i]);
    }
    prime13_values[6] = 0.0f;
    primal_grid_ref p13 = {"prime13", prime13_values, 13};

    char gpu[256];
    if (primal_cuda_device_count(gpu, sizeof gpu) < 1) {
        fprintf(stderr, "gpu_step: no CUDA device\n");
        return 1;
    }
    primal_err err;
    primal_model *m;
    int rc = primal_model_create(&mc, grid_for, strcmp(grid, "dense") == 0 ? NULL : &p13, &m,
                                 &err);
    if (rc == PRIMAL_OK)
        rc = primal_model_init_random(m, 1, 0.02f, &err);
    if (rc != PRIMAL_OK)
        return fail(&err);
    primal_cuda_opts o = {.precision = strcmp(prec, "bf16") == 0 ? PRIMAL_CUDA_BF16
                                                                 : PRIMAL_CUDA_FP32,
                          .device = 0, .chunk_rows = chunk, .attn_bytes = 0,
                          .attn_unfused = strcmp(attn, "unfused") == 0,
                          .recompute = recompute, .recompute_blocks = rblocks,
                          .recompute_residual = rres, .norm_bf16 = nbf16,
                          .head_ahead = ahead, .grads_inline = inl, .logits_bf16 = lbf16,
                          .gemm_timed = timed};
    primal_cuda_model *cm;
    if (primal_cuda_model_create(m, &o, &cm, &err) != PRIMAL_OK)
        return fail(&err);

    int32_t *tok = malloc((size_t)batch * (seq + 1) * sizeof(int32_t));
    double tf = 0.0, tb = 0.0;
    float loss = 0.0f;
    for (int s = 0; s < warmup + steps; s++) {
        for (int i = 0; i < batch * (seq + 1); i++)
            tok[i] = (int32_t)(primal_rng_u64(7, (uint64_t)s, (uint64_t)i) % (uint64_t)mc.vocab);
        if (primal_cuda_model_zero_grad(cm, &err) != PRIMAL_OK)
            return fail(&err);
        double t0 = now();
        rc = primal_cuda_model_forward_train(cm, tok, NULL, batch, seq, 1.0f, &loss, &err);
        double t1 = now();
        if (rc == PRIMAL_OK)
            rc = primal_cuda_model_backward(cm, 1.0f, noop_hook, NULL, &err);
        if (rc == PRIMAL_OK)
            rc = primal_cuda_model_sync(cm, &err);
        double t2 = now();
        if (rc != PRIMAL_OK)
            return fail(&err);
        if (s >= warmup) {
            tf += t1 - t0;
            tb += t2 - t1;
        }
    }
    primal_cuda_mem mem;
    if (primal_cuda_model_memory(cm, &mem, &err) != PRIMAL_OK)
        return fail(&err);
    double step = (tf + tb) / steps;
    printf("{\"gpu\": \"%s\", \"shape\": {\"dim\": %d, \"layers\": %d, \"heads\": %d, "
           "\"kv_heads\": %d, \"ffn\": %d, \"vocab\": %d, \"seq\": %d, \"batch\": %d, "
           "\"grid\": \"%s\", \"tied\": %d}, \"precision\": \"%s\", \"attn\": \"%s\", \"recompute\": %d, "
           "\"recompute_blocks\": %d, \"recompute_residual\": %d, \"norm_input\": \"%s\", "
           "\"head_ahead\": %d, "
           "\"grads_inline\": %d, "
           "\"logits\": \"%s\", \"gemm\": \"%s\", \"chunk\": %d, "
           "\"steps\": %d, \"loss\": %.4f, \"tokens_per_s\": %.1f, \"step_s\": %.4f, "
           "\"forward_s\": %.4f, \"backward_s\": %.4f, \"model_bytes\": {\"weights\": %zu, "
           "\"grads\": %zu, \"activations\": %zu, \"workspace\": %zu, \"peak\": %zu}, "
           "\"device_used_bytes\": %zu, \"device_total_bytes\": %zu}\n",
           gpu, mc.dim, mc.layers, mc.heads, mc.kv_heads, mc.ffn, mc.vocab, seq, batch, grid,
           mc.tied, prec, attn, recompute, rblocks, rres, nbf16 ? "bf16" : "fp32", ahead, inl, lbf16 ? "bf16" : "fp32",
           timed ? "timed" : "heuristic", chunk,
           steps, loss, (double)batch * seq / step, step, tf / steps,
           tb / steps, mem.weights, mem.grads, mem.activations, mem.workspace, mem.peak,
           mem.device_total - mem.device_free, mem.device_total);
    free(tok);
    primal_cuda_model_free(cm);
    primal_model_free(m);
    return 0;
}
