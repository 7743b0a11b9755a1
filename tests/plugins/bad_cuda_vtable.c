/* A flip policy the loader must refuse (CUDA vtable): its CPU vtable is complete, but its GPU
 * entry points (.cuda, primal/policy_cuda.h) lack state_download, which the core calls for every
 * checkpoint of a GPU run; built with -DPRIMAL_BAD_CUDA_SIZE (bad_cuda_size.la), every member
 * is set but .size is 0.  See tests/registry_test.c.  Plain C: nothing here needs CUDA. */
#include <primal/plugin.h>
#include <primal/policy_cuda.h>

static int create(const primal_config *cfg, const primal_policy_info *info, void **ctx,
                  primal_err *err)
{
    (void)cfg, (void)info, (void)err;
    *ctx = NULL;
    return PRIMAL_OK;
}

static int tensor_init(void *ctx, const primal_qtensor *t, void **state, primal_err *err)
{
    (void)ctx, (void)t, (void)err;
    *state = NULL;
    return PRIMAL_OK;
}

static size_t state_bytes(void *ctx, const primal_qtensor *t, const void *state)
{
    (void)ctx, (void)t, (void)state;
    return 0;
}

static int accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G, int64_t r0,
                      int64_t nrows, const primal_accum_info *ai, primal_err *err)
{
    (void)ctx, (void)state, (void)t, (void)G, (void)r0, (void)nrows, (void)ai, (void)err;
    return PRIMAL_OK;
}

static int step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                primal_step_stats *stats, primal_err *err)
{
    (void)ctx, (void)state, (void)t, (void)si, (void)stats, (void)err;
    return PRIMAL_OK;
}

static int state_save(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                      primal_err *err)
{
    (void)ctx, (void)t, (void)state, (void)buf, (void)err;
    return PRIMAL_OK;
}

static int state_load(void *ctx, const primal_qtensor *t, void *state, const void *buf, size_t n,
                      primal_err *err)
{
    (void)ctx, (void)t, (void)state, (void)buf, (void)n, (void)err;
    return PRIMAL_OK;
}

/* The GPU half: host stubs with the entry points' signatures (never called). */
static int cu_tensor_init(void *ctx, const primal_qtensor *t, void **state, void *stream,
                          primal_err *err)
{
    (void)ctx, (void)t, (void)stream, (void)err;
    *state = NULL;
    return PRIMAL_OK;
}

static int cu_accumulate(void *ctx, void *state, const primal_qtensor *t, const float *G,
                         int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                         primal_err *err)
{
    (void)ctx, (void)state, (void)t, (void)G, (void)r0, (void)nrows, (void)ai, (void)stream,
        (void)err;
    return PRIMAL_OK;
}

static int cu_step(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                   primal_step_stats *stats, void *stream, primal_err *err)
{
    (void)ctx, (void)state, (void)t, (void)si, (void)stats, (void)stream, (void)err;
    return PRIMAL_OK;
}

#ifdef PRIMAL_BAD_CUDA_SIZE
static int cu_state_download(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                             void *stream, primal_err *err)
{
    (void)ctx, (void)t, (void)state, (void)buf, (void)stream, (void)err;
    return PRIMAL_OK;
}
#endif

static int cu_state_upload(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                           size_t n, void *stream, primal_err *err)
{
    (void)ctx, (void)t, (void)state, (void)buf, (void)n, (void)stream, (void)err;
    return PRIMAL_OK;
}

static const primal_policy_cuda_vt cuda_vt = {
#ifdef PRIMAL_BAD_CUDA_SIZE
    .size = 0,
    .state_download = cu_state_download,
#else
    .size = sizeof(primal_policy_cuda_vt),
    .state_download = NULL,
#endif
    .tensor_init = cu_tensor_init,
    .accumulate = cu_accumulate,
    .step = cu_step,
    .state_upload = cu_state_upload,
};

static const primal_policy_vt vt = {
    .size = sizeof(primal_policy_vt),
    .storage = PRIMAL_STORAGE_INDEXED,
    .create = create,
    .tensor_init = tensor_init,
    .state_bytes = state_bytes,
    .accumulate = accumulate,
    .step = step,
    .state_save = state_save,
    .state_load = state_load,
    .cuda = &cuda_vt,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_POLICY,
#ifdef PRIMAL_BAD_CUDA_SIZE
        .name = "bad_cuda_size",
        .description = "refused by the loader (CUDA vtable of size 0)",
#else
        .name = "bad_cuda_vtable",
        .description = "refused by the loader (CUDA vtable without state_download)",
#endif
        .vtable = &vt,
    };
    return &d;
}
