/* policies_cuda_test.c: the GPU versions of threshold_consensus, stochastic_zscore,
 * momentum_carry and the adamw / latent_adamw baselines (plugins/<policy>_cuda.cu,
 * primal/policy_cuda.h) against their CPU versions.
 *
 * Each plugin is loaded once through the mock host; the CPU members run on a host copy of a
 * random tensor and the .cuda members on a device copy, fed the same gradients in the same row
 * chunks.  After every step the two must agree exactly: the step counts, every index byte, and
 * the state (CPU state_save bytes against GPU state_download bytes), which also shows that a
 * checkpoint written on one resumes on the other; for adamw (dense storage) every weight's float
 * bits instead of the indices.  The state is compared once more right after tensor_init
 * (latent_adamw's shadow is the dequantised W).  Steps vary lr_mult and clip_scale.  The reference is the CPU plugin, whose own
 * tests (policies_test.c, momentum_carry_test.c) check it against hand-worked cases.
 *
 * Gradients are drawn to look like real ones (per-row and per-column magnitudes spread over four
 * decades, heavy tails, exact zeros), plus coarse values that make many votes tie (for the
 * max_flip_fraction cut).  Without a CUDA device, or with a plugin built without CUDA, every test
 * is skipped with a message. */
#include <math.h>
#include <stdio.h>

#include <cuda_runtime_api.h>

#include <primal/policy_cuda.h>

#include "policy_harness.h"

static void teardown(void) { mockhost_unload_all(); }

TestSuite(threshold_consensus_cuda, .fini = teardown);
TestSuite(stochastic_zscore_cuda, .fini = teardown);
TestSuite(momentum_carry_cuda, .fini = teardown);
TestSuite(adamw_cuda, .fini = teardown);
TestSuite(latent_adamw_cuda, .fini = teardown);
TestSuite(adam_carry_cuda, .fini = teardown);
TestSuite(policies_cuda, .fini = teardown);

#define CUDA_OK(call)                                                                          \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        cr_assert_eq(e_, cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));                \
    } while (0)

/* Skip the test unless a device is there and the plugin has its GPU half. */
static void need_gpu(const policy_fx *f)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n < 1)
        cr_skip_test("no CUDA device (%s): the GPU flip policies are not tested on this machine",
                     e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    if (f->vt->cuda == NULL)
        cr_skip_test("%s was built without CUDA (no PRIMAL_HAVE_CUDA)", f->d->name);
}

/* ------------------------------------------------------------------------------------------ */
/* Test data                                                                                  */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rnext(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double runif(rng *r) { return (double)(rnext(r) >> 11) * 0x1p-53; }

static double rnorm(rng *r)
{
    double u = runif(r), v = runif(r);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* Grids: prime13 (4-bit indices, uneven gaps), 200 and 65536 evenly spaced (8 and 16 bits). */
static float g200[200], g65k[65536];
static void grids(void)
{
    for (int i = 0; i < 200; i++)
        g200[i] = -1.0f + 2.0f * (float)i / 199.0f;
    for (int i = 0; i < 65536; i++)
        g65k[i] = -1.0f + 2.0f * (float)i / 65535.0f;
}

enum { GRAD_REAL, GRAD_COARSE };

/* One micro-batch's G (rows, cols). */
static void gradient(float *G, int64_t rows, int64_t cols, int kind, rng *r)
{
    if (kind == GRAD_COARSE) { /* few distinct values: many equal pressures */
        for (int64_t i = 0; i < rows * cols; i++)
            G[i] = (float)((int)(rnext(r) % 9) - 4) * 0.25f;
        return;
    }
    float *cm = malloc((size_t)cols * sizeof *cm);
    cr_assert_not_null(cm);
    for (int64_t c = 0; c < cols; c++)
        cm[c] = (float)exp(runif(r) * 4.0 - 2.0);
    for (int64_t i = 0; i < rows; i++) {
        double rm = exp(runif(r) * 9.2 - 13.8); /* 1e-6 .. 1e-2 */
        for (int64_t c = 0; c < cols; c++) {
            double u = runif(r), x = rnorm(r) * rm * cm[c];
            if (u < 0.02)
                x = 0.0;
            else if (u < 0.03)
                x *= 20.0;
            G[i * cols + c] = (float)x;
        }
    }
    free(cm);
}

/* ------------------------------------------------------------------------------------------ */
/* A tensor held twice: host (CPU policy) and device (GPU policy)                             */

typedef struct twin {
    policy_fx *f;
    primal_qtensor h, d;
    void *hs, *ds;
    float *dG;
    cudaStream_t st;
} twin;

/* The dense form of w->h (adamw): W = random normal * 0.05 with exact zeros, no index or scale;
 * then its device copy and both states. */
static void twin_make_dense(twin *w, rng *r)
{
    policy_fx *f = w->f;
    const int64_t rows = w->h.rows, cols = w->h.cols, n = rows * cols;
    free(w->h.index);
    free(w->h.scale);
    w->h.index = NULL;
    w->h.scale = NULL;
    w->h.bits = 32;
    w->h.row_stride = cols * 4;
    w->h.dense = malloc((size_t)n * sizeof(float));
    cr_assert_not_null(w->h.dense);
    for (int64_t i = 0; i < n; i++)
        w->h.dense[i] = runif(r) < 0.05 ? 0.0f : (float)(rnorm(r) * 0.05);
    w->d = w->h;
    w->d.grid = NULL;
    CUDA_OK(cudaMalloc((void **)&w->d.dense, (size_t)n * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&w->dG, (size_t)n * sizeof(float)));
    CUDA_OK(cudaMemcpy(w->d.dense, w->h.dense, (size_t)n * sizeof(float),
                       cudaMemcpyHostToDevice));
    CUDA_OK(cudaStreamCreate(&w->st));
    w->hs = state_init(f, &w->h);
    cr_assert_eq(f->vt->cuda->tensor_init(f->ctx, &w->d, &w->ds, w->st, &f->err), PRIMAL_OK, "%s",
                 f->err.msg);
}

static void twin_make(twin *w, policy_fx *f, int64_t rows, int64_t cols, const float *grid,
                      int grid_size, rng *r)
{
    memset(w, 0, sizeof *w);
    w->f = f;
    tensor_make(&w->h, rows, cols, grid, grid_size, 0);
    for (int64_t i = 0; i < rows; i++) {
        float s = (float)exp(runif(r) * 3.0 - 4.6); /* 0.01 .. 0.2 */
        w->h.scale[i] = runif(r) < 0.25 ? -s : s;
        for (int64_t c = 0; c < cols; c++) {
            uint64_t u = rnext(r);
            uint32_t ix = (uint32_t)(u % (uint64_t)grid_size);
            if ((u >> 40) % 16 == 0) /* some at the ends of the grid */
                ix = (u >> 44) % 2 ? (uint32_t)grid_size - 1 : 0;
            primal_index_set(&w->h, i, c, ix);
        }
    }
    if (rows > 2)
        w->h.scale[1] = 0.0f; /* sign(0) = +1 */
    if (f->vt->storage == PRIMAL_STORAGE_DENSE) {
        twin_make_dense(w, r);
        return;
    }
    w->d = w->h;
    size_t ni = (size_t)(rows * w->h.row_stride);
    CUDA_OK(cudaMalloc(&w->d.index, ni));
    CUDA_OK(cudaMalloc((void **)&w->d.scale, (size_t)rows * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&w->d.grid, (size_t)grid_size * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&w->dG, (size_t)(rows * cols) * sizeof(float)));
    CUDA_OK(cudaMemcpy(w->d.index, w->h.index, ni, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(w->d.scale, w->h.scale, (size_t)rows * sizeof(float),
                       cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy((void *)w->d.grid, grid, (size_t)grid_size * sizeof(float),
                       cudaMemcpyHostToDevice));
    CUDA_OK(cudaStreamCreate(&w->st));
    w->hs = state_init(f, &w->h);
    cr_assert_eq(f->vt->cuda->tensor_init(f->ctx, &w->d, &w->ds, w->st, &f->err), PRIMAL_OK, "%s",
                 f->err.msg);
}

static void twin_free(twin *w)
{
    state_free(w->f, &w->h, w->hs);
    if (w->f->vt->cuda->tensor_free != NULL)
        w->f->vt->cuda->tensor_free(w->f->ctx, &w->d, w->ds);
    cudaFree(w->d.index);
    cudaFree(w->d.scale);
    cudaFree(w->d.dense);
    cudaFree((void *)w->d.grid);
    cudaFree(w->dG);
    cudaStreamDestroy(w->st);
    tensor_free(&w->h);
}

/* One micro-batch, as the core calls it: observe on every chunk (when asked and the policy has
 * it), then accumulate on every chunk.  chunk = rows per call (the last one shorter).  With
 * amax_times > 0, the GPU calls get, as a CUDA core hands them (ABI 1.5), max |G| of their tile
 * in device memory, times amax_times (1: the truth; anything else, to see that it is read). */
static void twin_feed_m(twin *w, const float *G, int64_t step, int micro, int n_micro,
                        int64_t chunk, int observe, double lr_mult, float amax_times)
{
    policy_fx *f = w->f;
    const primal_policy_cuda_vt *cu = f->vt->cuda;
    const int64_t rows = w->h.rows, cols = w->h.cols;
    CUDA_OK(cudaMemcpyAsync(w->dG, G, (size_t)(rows * cols) * sizeof(float),
                            cudaMemcpyHostToDevice, w->st));
    primal_accum_info ai = {.step = step, .micro = micro, .n_micro = n_micro, .seed = 42,
                            .lr = 1e-3 * lr_mult, .lr_mult = lr_mult};
    primal_accum_info gai = ai;
    float *dmax = NULL;
    if (amax_times > 0) {
        cr_assert_eq(chunk, rows, "the core's max |G| is tested on whole tensors");
        float m = 0.0f;
        for (int64_t i = 0; i < rows * cols; i++)
            m = fmaxf(m, fabsf(G[i]));
        m *= amax_times;
        CUDA_OK(cudaMalloc((void **)&dmax, sizeof(float)));
        CUDA_OK(cudaMemcpy(dmax, &m, sizeof m, cudaMemcpyHostToDevice));
        gai.g_absmax = dmax;
    }
    for (int pass = observe ? 0 : 1; pass < 2; pass++)
        for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
            int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
            const float *hg = G + r0 * cols;
            const float *dg = w->dG + r0 * cols;
            if (pass == 0 && f->vt->observe != NULL) {
                cr_assert_eq(f->vt->observe(f->ctx, w->hs, &w->h, hg, r0, n, &ai, &f->err),
                             PRIMAL_OK, "%s", f->err.msg);
                cr_assert_eq(cu->observe(f->ctx, w->ds, &w->d, dg, r0, n, &gai, w->st, &f->err),
                             PRIMAL_OK, "%s", f->err.msg);
            } else if (pass == 1) {
                cr_assert_eq(f->vt->accumulate(f->ctx, w->hs, &w->h, hg, r0, n, &ai, &f->err),
                             PRIMAL_OK, "%s", f->err.msg);
                cr_assert_eq(cu->accumulate(f->ctx, w->ds, &w->d, dg, r0, n, &gai, w->st,
                                            &f->err),
                             PRIMAL_OK, "%s", f->err.msg);
            }
        }
    if (dmax != NULL) {
        CUDA_OK(cudaStreamSynchronize(w->st));
        cudaFree(dmax);
    }
}

static void twin_feed(twin *w, const float *G, int64_t step, int micro, int n_micro,
                      int64_t chunk, int observe, double lr_mult)
{
    twin_feed_m(w, G, step, micro, n_micro, chunk, observe, lr_mult, 0.0f);
}

/* The GPU state as bytes (malloc'ed, *n bytes), sized by the CPU's state_bytes. */
static uint8_t *gpu_dump(twin *w, size_t *n)
{
    policy_fx *f = w->f;
    *n = f->vt->state_bytes(f->ctx, &w->d, w->ds);
    uint8_t *buf = malloc(*n ? *n : 1);
    cr_assert_not_null(buf);
    cr_assert_eq(f->vt->cuda->state_download(f->ctx, &w->d, w->ds, buf, w->st, &f->err),
                 PRIMAL_OK, "%s", f->err.msg);
    return buf;
}

/* Indices and state identical, or a message naming the first difference. */
static void twin_compare(twin *w, const char *what, int64_t step)
{
    const primal_qtensor *h = &w->h;
    if (h->dense != NULL) {
        size_t n = (size_t)(h->rows * h->cols);
        float *wd = malloc(n * sizeof *wd);
        cr_assert_not_null(wd);
        CUDA_OK(cudaMemcpy(wd, w->d.dense, n * sizeof *wd, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n; i++)
            if (memcmp(&wd[i], &h->dense[i], sizeof *wd) != 0)
                cr_assert_fail("%s, step %lld: W[%lld][%lld] is %.9g on the GPU, %.9g on the CPU",
                               what, (long long)step, (long long)(i / (size_t)h->cols),
                               (long long)(i % (size_t)h->cols), wd[i], h->dense[i]);
        free(wd);
        goto state;
    }
    size_t ni = (size_t)(h->rows * h->row_stride);
    uint8_t *idx = malloc(ni);
    cr_assert_not_null(idx);
    CUDA_OK(cudaMemcpy(idx, w->d.index, ni, cudaMemcpyDeviceToHost));
    if (memcmp(idx, h->index, ni) != 0) {
        primal_qtensor g = *h;
        g.index = idx;
        for (int64_t r = 0; r < h->rows; r++)
            for (int64_t c = 0; c < h->cols; c++)
                cr_assert_eq(primal_index_get(&g, r, c), primal_index_get(h, r, c),
                             "%s, step %lld: index [%lld][%lld] is %u on the GPU, %u on the CPU",
                             what, (long long)step, (long long)r, (long long)c,
                             primal_index_get(&g, r, c), primal_index_get(h, r, c));
        cr_assert_fail("%s, step %lld: index storage differs outside the indices", what,
                       (long long)step);
    }
    free(idx);
state:;
    size_t nc, ng;
    uint8_t *cpu = state_dump(w->f, h, w->hs, &nc);
    uint8_t *gpu = gpu_dump(w, &ng);
    cr_assert_eq(ng, nc, "%s: state_bytes %zu for the GPU state, %zu for the CPU's", what, ng, nc);
    for (size_t i = 0; i < nc; i++)
        if (cpu[i] != gpu[i])
            cr_assert_fail("%s, step %lld: state byte %zu of %zu is %u on the GPU, %u on the CPU",
                           what, (long long)step, i, nc, gpu[i], cpu[i]);
    free(cpu);
    free(gpu);
}

static primal_step_stats twin_step(twin *w, int64_t step, int n_micro, const char *what,
                                   double lr_mult, double clip)
{
    policy_fx *f = w->f;
    primal_step_info si = {.step = step, .n_micro = n_micro, .seed = 42, .lr_mult = lr_mult,
                           .clip_scale = clip};
    primal_step_stats hc = {-1, -1, -1}, gc = {-2, -2, -2};
    cr_assert_eq(f->vt->step(f->ctx, w->hs, &w->h, &si, &hc, &f->err), PRIMAL_OK, "%s",
                 f->err.msg);
    /* odd steps through step_async (ABI 1.3): the counts left in device memory, read here; the
     * slot zeroed first, as the core does (ABI 1.4) */
    const primal_policy_cuda_vt *cv = f->vt->cuda;
    if (step % 2 == 1) {
        cr_assert(cv->size >= offsetof(primal_policy_cuda_vt, step_async) + sizeof cv->step_async &&
                      cv->step_async != NULL,
                  "%s: no step_async", what);
        primal_step_stats *dst = NULL;
        cr_assert_eq(cudaMalloc((void **)&dst, sizeof *dst), cudaSuccess);
        cr_assert_eq(cudaMemset(dst, 0, sizeof *dst), cudaSuccess);
        cr_assert_eq(cv->step_async(f->ctx, w->ds, &w->d, &si, dst, w->st, &f->err), PRIMAL_OK,
                     "%s", f->err.msg);
        cr_assert_eq(cudaMemcpyAsync(&gc, dst, sizeof gc, cudaMemcpyDeviceToHost,
                                     (cudaStream_t)w->st), cudaSuccess);
        cr_assert_eq(cudaStreamSynchronize((cudaStream_t)w->st), cudaSuccess);
        cudaFree(dst);
    } else {
        cr_assert_eq(cv->step(f->ctx, w->ds, &w->d, &si, &gc, w->st, &f->err), PRIMAL_OK, "%s",
                     f->err.msg);
    }
    cr_assert_eq(gc.flips, hc.flips, "%s, step %lld: %lld flips on the GPU, %lld on the CPU",
                 what, (long long)step, (long long)gc.flips, (long long)hc.flips);
    cr_assert_eq(gc.saturated, hc.saturated, "%s, step %lld: saturated %lld vs %lld", what,
                 (long long)step, (long long)gc.saturated, (long long)hc.saturated);
    cr_assert_eq(gc.weights, hc.weights);
    twin_compare(w, what, step);
    return hc;
}

/* One run: `steps` steps of n_micro micro-batches, compared after each step.  Returns the
 * flips summed over the run (so that a test can insist that something moved). */
typedef struct run_spec {
    int64_t rows, cols;
    const float *grid;
    int grid_size;
    int steps, n_micro;
    int64_t chunk; /* rows per observe/accumulate call */
    int observe;
    int grad;
    int rescale; /* move the scales between steps, as the core's scale training does */
} run_spec;

/* scale[r] *= 1 + 0.01 * (r % 5 - 2) on both copies. */
static void twin_rescale(twin *w)
{
    for (int64_t r = 0; r < w->h.rows; r++)
        w->h.scale[r] *= 1.0f + 0.01f * (float)(r % 5 - 2);
    CUDA_OK(cudaMemcpy(w->d.scale, w->h.scale, (size_t)w->h.rows * sizeof(float),
                       cudaMemcpyHostToDevice));
}

static int64_t run_twin(policy_fx *f, const run_spec *rs, uint64_t seed, const char *what)
{
    rng r = {seed};
    twin w;
    twin_make(&w, f, rs->rows, rs->cols, rs->grid, rs->grid_size, &r);
    float *G = malloc((size_t)(rs->rows * rs->cols) * sizeof *G);
    cr_assert_not_null(G);
    int64_t flips = 0;
    char label[256];
    snprintf(label, sizeof label, "%s [%lld,%lld] grid %d, %d micro, chunk %lld%s", what,
             (long long)rs->rows, (long long)rs->cols, rs->grid_size, rs->n_micro,
             (long long)rs->chunk, rs->observe ? "" : ", no observe");
    twin_compare(&w, label, -1); /* the state tensor_init made */
    for (int s = 0; s < rs->steps; s++) {
        double lr_mult = s % 3 == 2 ? 0.5 : 1.0, clip = s % 4 == 3 ? 0.37 : 1.0;
        for (int m = 0; m < rs->n_micro; m++) {
            gradient(G, rs->rows, rs->cols, rs->grad, &r);
            twin_feed(&w, G, s, m, rs->n_micro, rs->chunk, rs->observe, lr_mult);
        }
        flips += twin_step(&w, s, rs->n_micro, label, lr_mult, clip).flips;
        if (rs->rescale)
            twin_rescale(&w);
    }
    free(G);
    twin_free(&w);
    return flips;
}

/* Run one configuration of a policy over the standard shapes. */
static int64_t run_shapes_r(const char *policy, const char *const *kv, int steps, int n_micro,
                            int grad, int observe, int rescale, uint64_t seed)
{
    grids();
    policy_fx f;
    pfx_open(&f, policy, kv);
    need_gpu(&f);
    char what[160];
    int o = snprintf(what, sizeof what, "%s", policy);
    for (int i = 0; kv != NULL && kv[i] != NULL && o < (int)sizeof what; i++)
        o += snprintf(what + o, sizeof what - (size_t)o, " %s", kv[i]);
    const run_spec shapes[] = {
        {1, 1, prime13, 13, steps, n_micro, 1, observe, grad, rescale},
        {7, 13, prime13, 13, steps, n_micro, 3, observe, grad, rescale},
        {300, 257, prime13, 13, steps, n_micro, 128, observe, grad, rescale},
        {64, 301, g200, 200, steps, n_micro, 64, observe, grad, rescale},
        {33, 1024, g65k, 65536, steps, n_micro, 10, observe, grad, rescale},
        {130, 96, g200, 200, steps, n_micro, 130, observe, grad, rescale},
        /* 4-bit rows of a multiple of 8 columns: the kernels' 16-byte paths, as at the model
         * shapes */
        {40, 200, prime13, 13, steps, n_micro, 16, observe, grad, rescale},
    };
    int64_t flips = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        flips += run_twin(&f, &shapes[i], seed + i, what);
    pfx_close(&f);
    return flips;
}

static int64_t run_shapes(const char *policy, const char *const *kv, int steps, int n_micro,
                          int grad, int observe, uint64_t seed)
{
    return run_shapes_r(policy, kv, steps, n_micro, grad, observe, 0, seed);
}

/* ------------------------------------------------------------------------------------------ */
/* threshold_consensus                                                                        */

Test(threshold_consensus_cuda, matches_the_cpu_with_the_default_keys)
{
    cr_expect_gt(run_shapes("threshold_consensus", NULL, 6, 2, GRAD_REAL, 1, 100), 0);
}

Test(threshold_consensus_cuda, matches_the_cpu_with_decay_stride_and_cooldowns)
{
    static const char *const kv1[] = {"threshold=5", "decay=0.9", "cooldown=3", NULL};
    static const char *const kv2[] = {"threshold=12", "decay=0.7", "cooldown=300", "stride=3",
                                      NULL};
    cr_expect_gt(run_shapes("threshold_consensus", kv1, 6, 2, GRAD_REAL, 1, 200), 0);
    cr_expect_gt(run_shapes("threshold_consensus", kv2, 6, 3, GRAD_REAL, 1, 300), 0);
}

Test(threshold_consensus_cuda, matches_the_cpu_in_block_mode)
{
    static const char *const kv1[] = {"threshold=30", "block=32", "decay=0.5", NULL};
    static const char *const kv2[] = {"threshold=20", "block=5", "cooldown=2", NULL};
    cr_expect_gt(run_shapes("threshold_consensus", kv1, 5, 2, GRAD_REAL, 1, 400), 0);
    cr_expect_gt(run_shapes("threshold_consensus", kv2, 5, 2, GRAD_REAL, 1, 500), 0);
}

Test(threshold_consensus_cuda, matches_the_cpu_cut_of_max_flip_fraction_including_ties)
{
    /* coarse gradients make thousands of equal |votes|: the cut must keep the lower indices */
    static const char *const kv1[] = {"threshold=8", "max_flip_fraction=0.01", "decay=1", NULL};
    static const char *const kv2[] = {"threshold=10", "block=4", "max_flip_fraction=0.05",
                                      "cooldown=2", NULL};
    static const char *const kv3[] = {"threshold=3", "max_flip_fraction=0.2", NULL};
    cr_expect_gt(run_shapes("threshold_consensus", kv1, 5, 2, GRAD_COARSE, 1, 600), 0);
    cr_expect_gt(run_shapes("threshold_consensus", kv2, 5, 2, GRAD_COARSE, 1, 700), 0);
    cr_expect_gt(run_shapes("threshold_consensus", kv3, 5, 1, GRAD_REAL, 1, 800), 0);
}

Test(threshold_consensus_cuda, matches_the_cpu_dynamic_stride_on_a_65k_grid)
{
    grids();
    static const char *const kv[] = {"threshold=10", "stride=dynamic", NULL};
    policy_fx f;
    pfx_open(&f, "threshold_consensus", kv);
    need_gpu(&f);
    const run_spec rs = {48, 500, g65k, 65536, 6, 2, 16, 1, GRAD_REAL, 0};
    cr_expect_gt(run_twin(&f, &rs, 900, "threshold_consensus stride=dynamic"), 0);
    pfx_close(&f);
}

/* ABI 1.5: given the core's max |G| of a whole tensor, threshold_consensus votes with it (the
 * same votes as the CPU's, which finds it itself), and does read it: a wrong one changes the
 * votes. */
Test(threshold_consensus_cuda, votes_with_the_cores_max_abs_G_when_given)
{
    grids();
    policy_fx f;
    pfx_open(&f, "threshold_consensus", NULL);
    need_gpu(&f);
    static const int64_t shp[2][2] = {{130, 96}, {40, 200}};
    for (int k = 0; k < 2; k++)
        for (int observe = 0; observe < 2; observe++) {
            rng r = {1500 + (uint64_t)k};
            int64_t rows = shp[k][0], cols = shp[k][1];
            float *G = malloc((size_t)(rows * cols) * sizeof *G);
            twin w;
            twin_make(&w, &f, rows, cols, prime13, 13, &r);
            char what[96];
            snprintf(what, sizeof what, "core max |G|, [%lld,%lld]%s", (long long)rows,
                     (long long)cols, observe ? "" : ", no observe");
            for (int s = 0; s < 4; s++) {
                for (int m = 0; m < 2; m++) {
                    gradient(G, rows, cols, GRAD_REAL, &r);
                    twin_feed_m(&w, G, s, m, 2, rows, observe, 1.0, 1.0f);
                }
                twin_step(&w, s, 2, what, 1.0, 1.0);
            }
            /* twice the maximum halves every vote: the GPU state leaves the CPU's */
            gradient(G, rows, cols, GRAD_REAL, &r);
            twin_feed_m(&w, G, 4, 0, 1, rows, observe, 1.0, 2.0f);
            size_t nc, ng;
            uint8_t *cpu = state_dump(&f, &w.h, w.hs, &nc), *gpu = gpu_dump(&w, &ng);
            cr_assert_eq(nc, ng);
            cr_expect(memcmp(cpu, gpu, nc) != 0, "%s: a doubled max |G| changed no vote", what);
            free(cpu);
            free(gpu);
            free(G);
            twin_free(&w);
        }
    pfx_close(&f);
}

Test(threshold_consensus_cuda, matches_the_cpu_when_the_core_skips_observe)
{
    /* each chunk is then normalised by its own max|G| */
    cr_expect_gt(run_shapes("threshold_consensus", NULL, 4, 2, GRAD_REAL, 0, 1000), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* stochastic_zscore                                                                          */

Test(stochastic_zscore_cuda, matches_the_cpu_with_the_default_keys)
{
    cr_expect_gt(run_shapes("stochastic_zscore", NULL, 8, 2, GRAD_REAL, 1, 1100), 0);
}

Test(stochastic_zscore_cuda, matches_the_cpu_with_a_low_z_and_no_cooldown)
{
    static const char *const kv[] = {"z=0.09", "cooldown=0", NULL};
    cr_expect_gt(run_shapes("stochastic_zscore", kv, 8, 3, GRAD_REAL, 1, 1200), 0);
}

Test(stochastic_zscore_cuda, matches_the_cpu_through_avalanches_and_tripled_cooldowns)
{
    /* z = 0 votes on about half the weights; base_p 1 makes p 0.05, so more than 0.1% flip */
    static const char *const kv[] = {"z=0", "cooldown=4", "base_p=1", NULL};
    cr_expect_gt(run_shapes("stochastic_zscore", kv, 10, 1, GRAD_REAL, 1, 1300), 0);
}

Test(stochastic_zscore_cuda, matches_the_cpu_when_the_core_skips_observe)
{
    static const char *const kv[] = {"z=0.3", "cooldown=2", "base_p=0.01", NULL};
    cr_expect_gt(run_shapes("stochastic_zscore", kv, 6, 2, GRAD_REAL, 0, 1400), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* momentum_carry                                                                             */

static void mc_bits(const char *rbits, const char *mbits, uint64_t seed)
{
    const char *kv[] = {"lr=0.05", rbits, mbits, NULL};
    /* one micro-batch per step, then three */
    cr_expect_gt(run_shapes("momentum_carry", kv, 6, 1, GRAD_REAL, 1, seed), 0);
    cr_expect_gt(run_shapes("momentum_carry", kv, 5, 3, GRAD_REAL, 1, seed + 50), 0);
}

Test(momentum_carry_cuda, matches_the_cpu_at_8_bit_residual_and_momentum)
{
    mc_bits("residual_bits=8", "momentum_bits=8", 2000);
}

Test(momentum_carry_cuda, matches_the_cpu_at_4_bit_residual_and_momentum)
{
    mc_bits("residual_bits=4", "momentum_bits=4", 2100);
}

Test(momentum_carry_cuda, matches_the_cpu_with_mixed_widths)
{
    mc_bits("residual_bits=8", "momentum_bits=4", 2200);
    mc_bits("residual_bits=4", "momentum_bits=8", 2300);
}

Test(momentum_carry_cuda, matches_the_cpu_without_momentum_and_with_the_default_lr)
{
    static const char *const kv1[] = {"beta1=0", "lr=0.02", NULL};
    cr_expect_gt(run_shapes("momentum_carry", kv1, 6, 2, GRAD_REAL, 1, 2400), 0);
    /* lr 1e-3: few carries in 4 steps, but the residuals and momenta must still agree */
    run_shapes("momentum_carry", NULL, 4, 2, GRAD_REAL, 1, 2500);
}

/* ------------------------------------------------------------------------------------------ */
/* adamw and latent_adamw                                                                     */

Test(adamw_cuda, matches_the_cpu_weights_and_moments_bit_for_bit)
{
    static const char *const kv[] = {"lr=0.01", "beta1=0.8", "beta2=0.99", "eps=1e-6",
                                     "weight_decay=0.3", NULL};
    /* adamw moves no index: the flips are 0 on both, and the weights are compared instead */
    cr_expect_eq(run_shapes("adamw", NULL, 6, 3, GRAD_REAL, 1, 3000), 0);
    cr_expect_eq(run_shapes("adamw", kv, 5, 1, GRAD_REAL, 1, 3100), 0);
    cr_expect_eq(run_shapes("adamw", kv, 4, 2, GRAD_COARSE, 1, 3200), 0);
}

Test(latent_adamw_cuda, matches_the_cpu_shadow_and_resnapped_indices)
{
    static const char *const kv[] = {"lr=0.01", "beta1=0.5", "weight_decay=0", NULL};
    cr_expect_gt(run_shapes("latent_adamw", NULL, 6, 3, GRAD_REAL, 1, 3300), 0);
    cr_expect_gt(run_shapes("latent_adamw", kv, 5, 1, GRAD_REAL, 1, 3400), 0);
}

Test(latent_adamw_cuda, matches_the_cpu_while_the_scales_move_and_on_coarse_gradients)
{
    /* the re-snap divides by the current scale, so a moved scale moves indices by itself;
     * coarse gradients give whole groups of weights the same update */
    static const char *const kv[] = {"lr=0.02", NULL};
    cr_expect_gt(run_shapes_r("latent_adamw", kv, 6, 2, GRAD_REAL, 1, 1, 3500), 0);
    cr_expect_gt(run_shapes_r("latent_adamw", kv, 4, 2, GRAD_COARSE, 1, 1, 3600), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* adam_carry                                                                                 */

Test(adam_carry_cuda, matches_the_cpu_with_the_default_keys)
{
    static const char *const kv[] = {"lr=0.02", NULL};
    cr_expect_gt(run_shapes_r("adam_carry", kv, 5, 1, GRAD_REAL, 1, 1, 910), 0);
}

Test(adam_carry_cuda, matches_the_cpu_per_row_with_weight_decay_and_micro_batches)
{
    static const char *const kv[] = {"lr=0.05", "second_moment=row", "weight_decay=0.1",
                                     "block=32", NULL};
    cr_expect_gt(run_shapes("adam_carry", kv, 4, 3, GRAD_REAL, 1, 920), 0);
}

Test(adam_carry_cuda, matches_the_cpu_with_wide_blocks_and_coarse_gradients)
{
    static const char *const kv[] = {"lr=0.1", "block=256", "beta2=0.999", NULL};
    cr_expect_gt(run_shapes("adam_carry", kv, 4, 2, GRAD_COARSE, 1, 930), 0);
}

Test(adam_carry_cuda, matches_the_cpu_with_12_and_16_bit_residuals)
{
    /* 12 bits: two weights' low nibbles share a byte (odd column counts among the shapes) */
    static const char *const k12[] = {"lr=0.02", "residual_bits=12", NULL};
    static const char *const k16[] = {"lr=0.003", "residual_bits=16", "weight_decay=0.1", NULL};
    cr_expect_gt(run_shapes_r("adam_carry", k12, 5, 1, GRAD_REAL, 1, 1, 940), 0);
    cr_expect_gt(run_shapes("adam_carry", k12, 4, 2, GRAD_COARSE, 1, 950), 0);
    cr_expect_gt(run_shapes_r("adam_carry", k16, 5, 1, GRAD_REAL, 1, 1, 960), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* All five                                                                                  */

/* Train a few steps on both, then swap: the GPU continues from the CPU's saved state and the CPU
 * from the GPU's downloaded one, each into freshly initialised state. */
static void swap_states(const char *policy, const char *const *kv)
{
    grids();
    policy_fx f;
    pfx_open(&f, policy, kv);
    need_gpu(&f);
    rng r = {77};
    twin w;
    twin_make(&w, &f, 40, 150, g200, 200, &r);
    float *G = malloc(40 * 150 * sizeof *G);
    cr_assert_not_null(G);
    int64_t flips = 0;
    for (int s = 0; s < 8; s++) {
        if (s == 4) {
            size_t nc, ng;
            uint8_t *cpu = state_dump(&f, &w.h, w.hs, &nc);
            uint8_t *gpu = gpu_dump(&w, &ng);
            void *hs2 = state_init(&f, &w.h), *ds2 = NULL;
            cr_assert_eq(f.vt->cuda->tensor_init(f.ctx, &w.d, &ds2, w.st, &f.err), PRIMAL_OK,
                         "%s", f.err.msg);
            state_put(&f, &w.h, hs2, gpu, ng);
            cr_assert_eq(f.vt->cuda->state_upload(f.ctx, &w.d, ds2, cpu, nc, w.st, &f.err),
                         PRIMAL_OK, "%s", f.err.msg);
            state_free(&f, &w.h, w.hs);
            f.vt->cuda->tensor_free(f.ctx, &w.d, w.ds);
            w.hs = hs2;
            w.ds = ds2;
            free(cpu);
            free(gpu);
        }
        for (int m = 0; m < 2; m++) {
            gradient(G, 40, 150, GRAD_REAL, &r);
            twin_feed(&w, G, s, m, 2, 16, 1, 1.0);
        }
        flips += twin_step(&w, s, 2, policy, s == 5 ? 0.5 : 1.0, s == 6 ? 0.37 : 1.0).flips;
    }
    if (f.vt->storage == PRIMAL_STORAGE_INDEXED)
        cr_expect_gt(flips, 0, "%s", policy);
    free(G);
    twin_free(&w);
    pfx_close(&f);
}

Test(policies_cuda, a_checkpoint_moves_between_cpu_and_gpu_and_training_goes_on_identically)
{
    static const char *const tc[] = {"threshold=10", "cooldown=3", NULL};
    static const char *const sz[] = {"z=0.2", "cooldown=3", "base_p=0.05", NULL};
    static const char *const mc[] = {"lr=0.05", "residual_bits=4", NULL};
    swap_states("threshold_consensus", tc);
    swap_states("stochastic_zscore", sz);
    swap_states("momentum_carry", mc);
    swap_states("adamw", NULL);
    swap_states("latent_adamw", NULL);
    static const char *const ac[] = {"lr=0.05", NULL};
    swap_states("adam_carry", ac);
}

Test(policies_cuda, refuses_a_state_of_the_wrong_size_and_rows_outside_the_tensor)
{
    static const char *const names[] = {"threshold_consensus", "stochastic_zscore",
                                        "momentum_carry", "adamw", "latent_adamw",
                                        "adam_carry"};
    grids();
    for (int i = 0; i < 6; i++) {
        policy_fx f;
        pfx_open(&f, names[i], NULL);
        need_gpu(&f);
        rng r = {5};
        twin w;
        twin_make(&w, &f, 4, 6, g200, 200, &r);
        size_t n;
        uint8_t *buf = gpu_dump(&w, &n);
        cr_expect_eq(f.vt->cuda->state_upload(f.ctx, &w.d, w.ds, buf, n - 1, w.st, &f.err),
                     PRIMAL_EIO, "%s", names[i]);
        cr_expect(strstr(f.err.msg, "test.weight") != NULL, "%s", f.err.msg);
        primal_accum_info ai = {.step = 0, .micro = 0, .n_micro = 1, .seed = 42, .lr_mult = 1};
        cr_expect_eq(f.vt->cuda->accumulate(f.ctx, w.ds, &w.d, w.dG, 3, 2, &ai, w.st, &f.err),
                     PRIMAL_ERROR, "%s", names[i]);
        cr_expect(strstr(f.err.msg, "rows [3,5) outside [0,4)") != NULL, "%s", f.err.msg);
        free(buf);
        twin_free(&w);
        pfx_close(&f);
    }
}
