/* primal/policy_cuda.h: the GPU entry points of a flip policy (primal_policy_vt.cuda).
 *
 * On a run with [run] device = cuda, the core keeps every tensor on the GPU and calls these
 * instead of the CPU members.  The primal_qtensor passed here has DEVICE pointers in index,
 * scale, dense and grid (rows, cols, bits, row_stride, grid_size are as on the CPU), and G is a
 * device pointer to a float32 (nrows, cols) gradient tile, valid until the stream reaches the
 * end of the call's work.  stream is a cudaStream_t; every kernel a policy launches goes on it,
 * and no entry point may synchronise the device except step(), which returns host-side stats
 * (step_async, ABI 1.3, leaves them on the device instead, so the core steps every tensor and
 * then waits once).  The stream may differ from call to call (observe and accumulate run on the
 * core's gradient stream, beside its GEMMs); the core orders the streams so that one call's
 * work has finished before work of a later call on another stream starts.
 * A policy must produce the same flips on the GPU as on the CPU given the same votes: draw
 * random numbers with primal/rng.h (it compiles for the device too).
 *
 * State lives in device memory allocated by tensor_init.  For checkpoints the core calls
 * state_download (device -> host bytes, exactly the CPU state_save layout) and state_upload, so a
 * checkpoint written on the GPU resumes on the CPU and back. */
#ifndef PRIMAL_POLICY_CUDA_H
#define PRIMAL_POLICY_CUDA_H

#include <stddef.h>

#include <primal/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct primal_policy_cuda_vt {
    size_t size; /* sizeof(primal_policy_cuda_vt) */
    int (*tensor_init)(void *ctx, const primal_qtensor *t, void **state, void *stream,
                       primal_err *err);
    void (*tensor_free)(void *ctx, const primal_qtensor *t, void *state); /* optional */
    /* optional, as on the CPU: the first pass over a micro-batch's G chunks */
    int (*observe)(void *ctx, void *state, const primal_qtensor *t, const float *G, int64_t r0,
                   int64_t nrows, const primal_accum_info *ai, void *stream, primal_err *err);
    int (*accumulate)(void *ctx, void *state, const primal_qtensor *t, const float *G,
                      int64_t r0, int64_t nrows, const primal_accum_info *ai, void *stream,
                      primal_err *err);
    int (*step)(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                primal_step_stats *stats, void *stream, primal_err *err);
    /* host buf of state_bytes() bytes, the CPU state_save layout */
    int (*state_download)(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                          void *stream, primal_err *err);
    int (*state_upload)(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                        size_t n, void *stream, primal_err *err);
    /* ABI 1.3, optional: step() without its synchronisation.  The counts go, by work queued on
     * stream, into *dstats, a DEVICE primal_step_stats; the core reads every tensor's once all
     * have stepped.  Since ABI 1.4 the core zeroes every slot before the step, so the policy
     * may write the three fields or add into them straight from its kernels (no counters of its
     * own to clear and copy: two launches a tensor fewer).  NULL: the core calls step(), and
     * waits once per tensor. */
    int (*step_async)(void *ctx, void *state, const primal_qtensor *t,
                      const primal_step_info *si, primal_step_stats *dstats, void *stream,
                      primal_err *err);
} primal_policy_cuda_vt;

#ifdef __cplusplus
}
#endif
#endif
