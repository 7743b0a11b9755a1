/* sealing.c: the prototype's "sealing" phase.
 *
 * SPEC.md, "Schedulers", sealing.  From step `at` on: seq_len becomes `seq_len`, grad_accum is
 * multiplied by `accum_mult`, and every tensor becomes trainable (overriding an earlier
 * scheduler's freezing, which is why it is listed after night_shift).
 *
 * Keys ([sealing]):
 *   at          INT  900  [0,inf)  first sealed step
 *   seq_len     INT  128  [1,inf)  sequence length while sealed
 *   accum_mult  INT  6    [1,inf)  factor on grad_accum while sealed
 *
 * A pure function of the step and the view's incoming values. */
#include <limits.h>
#include <stdlib.h>

#include <primal/plugin.h>

static const primal_key seal_keys[] = {
    {"at", PRIMAL_KEY_INT, "900", "first sealed step", "[0,inf)"},
    {"seq_len", PRIMAL_KEY_INT, "128", "sequence length from step `at` on", "[1,inf)"},
    {"accum_mult", PRIMAL_KEY_INT, "6", "factor on grad_accum from step `at` on", "[1,inf)"},
    {NULL, 0, NULL, NULL, NULL},
};

typedef struct seal_ctx {
    int64_t at, seq_len, accum_mult;
} seal_ctx;

static int seal_create(const primal_config *cfg, void **ctx, primal_err *err)
{
    seal_ctx *c = malloc(sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "sealing: out of memory");
    c->at = primal_cfg_int(cfg, "at");
    c->seq_len = primal_cfg_int(cfg, "seq_len");
    c->accum_mult = primal_cfg_int(cfg, "accum_mult");
    const char *big = c->seq_len > INT_MAX ? "seq_len" : c->accum_mult > INT_MAX ? "accum_mult"
                                                                                   : NULL;
    if (big != NULL) {
        free(c);
        return primal_cfg_errf(cfg, big, err, PRIMAL_ECONFIG, "must be at most %d", INT_MAX);
    }
    *ctx = c;
    return PRIMAL_OK;
}

static void seal_destroy(void *ctx) { free(ctx); }

static int seal_apply(void *ctx, primal_sched_view *v, primal_err *err)
{
    const seal_ctx *c = ctx;
    if (v->step < c->at)
        return PRIMAL_OK;
    int64_t ga = (int64_t)v->grad_accum * c->accum_mult;
    if (ga > INT_MAX)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "sealing: step %lld: grad_accum %d x %lld overflows",
                           (long long)v->step, v->grad_accum, (long long)c->accum_mult);
    v->grad_accum = (int)ga;
    v->seq_len = (int)c->seq_len;
    for (int i = 0; i < v->n_tensors; i++)
        v->trainable[i] = 1;
    return PRIMAL_OK;
}

static const primal_scheduler_vt seal_vt = {
    .size = sizeof(primal_scheduler_vt),
    .create = seal_create,
    .destroy = seal_destroy,
    .apply = seal_apply,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_SCHEDULER,
        .name = "sealing",
        .description = "from a given step: shorter sequences, more accumulation, all layers train",
        .keys = seal_keys,
        .vtable = &seal_vt,
    };
    return &d;
}
