/* constant.c: the scheduler that changes nothing (the baseline for ablations).
 *
 * SPEC.md, "Schedulers" and the baselines of "The four plugin kinds".  Every step keeps the
 * experiment's base values: everything trainable, [run] seq_len and grad_accum, lr_mult 1.
 * Keys: none. */
#include <stddef.h>

#include <primal/plugin.h>

static int constant_create(const primal_config *cfg, void **ctx, primal_err *err)
{
    (void)cfg;
    (void)err;
    *ctx = NULL;
    return PRIMAL_OK;
}

static int constant_apply(void *ctx, primal_sched_view *v, primal_err *err)
{
    (void)ctx;
    (void)v;
    (void)err;
    return PRIMAL_OK;
}

static const primal_scheduler_vt constant_vt = {
    .size = sizeof(primal_scheduler_vt),
    .create = constant_create,
    .destroy = NULL,
    .apply = constant_apply,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_SCHEDULER,
        .name = "constant",
        .description = "changes nothing: everything trains at the base seq_len and grad_accum",
        .keys = NULL,
        .vtable = &constant_vt,
    };
    return &d;
}
