/* cpu_step.c: times one training step of the CPU model (forward + backward + a gradient hook)
 * on random tokens and prints one JSON line.  SPEC.md, "Figures to beat" (the CPU row: dim 512,
 * 8 layers, 8 heads, ffn 1376, byte vocabulary, seq 256, batch 8).
 *
 * Flags (defaults): --dim 512 --layers 8 --heads 8 --kv-heads (= heads) --ffn 1376 --vocab 256
 * --seq 256 --batch 8 --grid prime13|dense (prime13) --threads (online CPUs) --steps 5
 * --warmup 1 (untimed steps) --recompute 0|1 (0).
 *
 * The hook reads every element of G once (as a flip policy's accumulate must), so the figure
 * includes handing G over but no policy arithmetic.  Output:
 *   {"machine": ..., "threads": .., "shape": {...}, "steps": .., "tokens_per_s": ..,
 *    "forward_s": .., "backward_s": .., "peak_rss_bytes": ..} */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <primal/rng.h>

#include "../core/model.h"
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

static double g_sink;

static int touch_hook(void *user, primal_param *p, const float *G, int64_t r0, int64_t nrows,
                      primal_err *err)
{
    (void)user;
    (void)r0;
    (void)err;
    double s = 0.0;
    for (int64_t i = 0; i < nrows * p->q.cols; i++)
        s += G[i] < 0 ? -G[i] : G[i];
    g_sink += s;
    return PRIMAL_OK;
}

static void cpu_model(char *out, size_t n)
{
    snprintf(out, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL)
        return;
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "model name", 10) == 0) {
            char *v = strchr(line, ':');
            if (v != NULL) {
                v += 1 + (v[1] == ' ');
                v[strcspn(v, "\n")] = '\0';
                snprintf(out, n, "%s", v);
            }
            break;
        }
    }
    fclose(f);
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--dim N] [--layers N] [--heads N] [--kv-heads N] [--ffn N] [--vocab N] "
            "[--seq N] [--batch N] [--grid prime13|dense] [--threads N] [--steps N] "
            "[--warmup N] [--recompute 0|1]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    primal_model_config mc = {.arch = PRIMAL_ARCH_LLAMA, .vocab = 256, .dim = 512, .layers = 8,
                              .heads = 8, .kv_heads = 0, .ffn = 1376, .rope_theta = 10000.0,
                              .norm_eps = 1e-5, .tied = 0, .qkv_bias = 0};
    int seq = 256, batch = 8, steps = 5, warmup = 1, recompute = 0;
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    const char *grid = "prime13";
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage(argv[0]);
        const char *k = argv[i], *v = argv[++i];
        int x = strcmp(k, "--grid") != 0 ? bench_int_arg("cpu_step", k, v) : 0;
        if (strcmp(k, "--dim") == 0) mc.dim = x;
        else if (strcmp(k, "--layers") == 0) mc.layers = x;
        else if (strcmp(k, "--heads") == 0) mc.heads = x;
        else if (strcmp(k, "--kv-heads") == 0) mc.kv_heads = x;
        else if (strcmp(k, "--ffn") == 0) mc.ffn = x;
        else if (strcmp(k, "--vocab") == 0) mc.vocab = x;
        else if (strcmp(k, "--seq") == 0) seq = x;
        else if (strcmp(k, "--batch") == 0) batch = x;
        else if (strcmp(k, "--threads") == 0) threads = x;
        else if (strcmp(k, "--steps") == 0) steps = x;
        else if (strcmp(k, "--warmup") == 0) warmup = x;
        else if (strcmp(k, "--recompute") == 0) recompute = x;
        else if (strcmp(k, "--grid") == 0 && (strcmp(v, "prime13") == 0 || strcmp(v, "dense") == 0))
            grid = v;
        else
            usage(argv[0]);
    }
    if (mc.kv_heads == 0)
        mc.kv_heads = mc.heads;
    if (seq < 1 || batch < 1 || steps < 1 || warmup < 0)
        usage(argv[0]);

    static const int den[] = {1, 2, 3, 5, 7, 11};
    for (int i = 0; i < 6; i++) {
        prime13_values[i] = (float)(-1.0 / den[i]);
        prime13_values[12 - i] = (float)(1.0 / den[i]);
    }
    prime13_values[6] = 0.0f;
    primal_grid_ref p13 = {"prime13", prime13_values, 13};

    primal_err err;
    primal_model *m;
    int rc = primal_model_create(&mc, grid_for, strcmp(grid, "dense") == 0 ? NULL : &p13, &m,
                                 &err);
    if (rc == PRIMAL_OK)
        rc = primal_model_init_random(m, 1, 0.02f, &err);
    if (rc != PRIMAL_OK) {
        fprintf(stderr, "cpu_step: %s\n", err.msg);
        return 1;
    }
    primal_model_opts o = {.threads = threads, .recompute = recompute};
    primal_model_set_opts(m, &o);

    int32_t *tok = malloc((size_t)batch * (seq + 1) * sizeof(int32_t));
    double tf = 0.0, tb = 0.0;
    float loss = 0.0f;
    for (int s = 0; s < warmup + steps; s++) {
        for (int i = 0; i < batch * (seq + 1); i++)
            tok[i] = (int32_t)(primal_rng_u64(7, (uint64_t)s, (uint64_t)i) % (uint64_t)mc.vocab);
        primal_model_zero_grad(m);
        double t0 = now();
        rc = primal_model_forward(m, tok, NULL, batch, seq, &loss, NULL, &err);
        double t1 = now();
        if (rc == PRIMAL_OK)
            rc = primal_model_backward(m, 1.0f, touch_hook, NULL, &err);
        double t2 = now();
        if (rc != PRIMAL_OK) {
            fprintf(stderr, "cpu_step: %s\n", err.msg);
            return 1;
        }
        if (s >= warmup) {
            tf += t1 - t0;
            tb += t2 - t1;
        }
    }

    struct utsname u;
    uname(&u);
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    primal_model_mem mem;
    primal_model_memory(m, &mem);
    printf("{\"machine\": \"%s %s %s, %s\", \"threads\": %d, "
           "\"shape\": {\"dim\": %d, \"layers\": %d, \"heads\": %d, \"kv_heads\": %d, "
           "\"ffn\": %d, \"vocab\": %d, \"seq\": %d, \"batch\": %d, \"grid\": \"%s\", "
           "\"recompute\": %d}, \"steps\": %d, \"loss\": %.4f, \"tokens_per_s\": %.1f, "
           "\"forward_s\": %.4f, \"backward_s\": %.4f, \"model_bytes\": {\"weights\": %zu, "
           "\"grads\": %zu, \"activations\": %zu, \"workspace\": %zu}, "
           "\"peak_rss_bytes\": %ld}\n",
           u.sysname, u.release, u.machine, cpu, threads, mc.dim, mc.layers, mc.heads,
           mc.kv_heads, mc.ffn, mc.vocab, seq, batch, grid, recompute, steps, loss,
           (double)batch * seq * steps / (tf + tb), tf / steps, tb / steps, mem.weights,
           mem.grads, mem.activations, mem.workspace, ru.ru_maxrss * 1024L);
    free(tok);
    primal_model_free(m);
    return g_sink < 0.0; /* keeps the hook's reads */
}
