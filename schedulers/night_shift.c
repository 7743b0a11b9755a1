/* night_shift.c: the prototype's V7 "layer peel" scheduler.
 *
 * SPEC.md, "Schedulers", night_shift.  Steps < warmup: only the embedding, the final norm and
 * the LM head train (tensor_layer -1, -2, -3).  From step warmup on, every `every` steps `count`
 * more transformer blocks become trainable, from the last block toward the first, cumulatively:
 * at step s >= warmup the blocks L - n .. L - 1 train, n = min(L, count * (1 + (s - warmup) /
 * every)).  If seq_len > 0, from step warmup on the sequence length becomes seq_len and
 * grad_accum is scaled by old/new seq_len, rounded up (the prototype's 512 -> 384 with
 * accumulation x512/384), so the tokens per step do not shrink.
 *
 * Keys ([night_shift]):
 *   warmup   INT  200  [0,inf)  steps that train only embedding, final norm and LM head
 *   every    INT  50   [1,inf)  steps between two unfreezings
 *   count    INT  2    [1,inf)  blocks unfrozen each time
 *   seq_len  INT  0    [0,inf)  sequence length from step warmup on; 0 keeps it
 *
 * It only freezes (never sets a tensor trainable that an earlier scheduler froze), and it is a
 * pure function of the step and the view's incoming values. */
#include <limits.h>
#include <stdlib.h>

#include <primal/plugin.h>

static const primal_key ns_keys[] = {
    {"warmup", PRIMAL_KEY_INT, "200", "steps that train only the embedding, final norm and head",
     "[0,inf)"},
    {"every", PRIMAL_KEY_INT, "50", "steps between two unfreezings", "[1,inf)"},
    {"count", PRIMAL_KEY_INT, "2", "transformer blocks unfrozen each time, last block first",
     "[1,inf)"},
    {"seq_len", PRIMAL_KEY_INT, "0",
     "sequence length from step warmup on (grad_accum scaled up to match); 0 keeps it",
     "[0,inf)"},
    {NULL, 0, NULL, NULL, NULL},
};

typedef struct ns_ctx {
    int64_t warmup, every, count, seq_len;
} ns_ctx;

static int ns_create(const primal_config *cfg, void **ctx, primal_err *err)
{
    ns_ctx *c = malloc(sizeof *c);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "night_shift: out of memory");
    c->warmup = primal_cfg_int(cfg, "warmup");
    c->every = primal_cfg_int(cfg, "every");
    c->count = primal_cfg_int(cfg, "count");
    c->seq_len = primal_cfg_int(cfg, "seq_len");
    if (c->seq_len > INT_MAX) {
        free(c);
        return primal_cfg_errf(cfg, "seq_len", err, PRIMAL_ECONFIG, "must be at most %d",
                               INT_MAX);
    }
    *ctx = c;
    return PRIMAL_OK;
}

static void ns_destroy(void *ctx) { free(ctx); }

static int ns_apply(void *ctx, primal_sched_view *v, primal_err *err)
{
    const ns_ctx *c = ctx;
    const int64_t L = v->n_layers;
    int64_t open = 0; /* blocks trainable, counted from the last */
    if (v->step >= c->warmup) {
        int64_t rounds = (v->step - c->warmup) / c->every + 1;
        open = rounds > L / c->count + 1 ? L : rounds * c->count;
        if (open > L)
            open = L;
    }
    for (int i = 0; i < v->n_tensors; i++) {
        int layer = v->tensor_layer[i];
        if (layer >= 0 && layer < L - open)
            v->trainable[i] = 0;
    }
    if (c->seq_len > 0 && v->step >= c->warmup && v->seq_len != c->seq_len) {
        int64_t ga = ((int64_t)v->grad_accum * v->seq_len + c->seq_len - 1) / c->seq_len;
        if (ga > INT_MAX)
            return primal_errf(err, PRIMAL_ECONFIG,
                               "night_shift: step %lld: grad_accum %d x %d / %lld overflows",
                               (long long)v->step, v->grad_accum, v->seq_len,
                               (long long)c->seq_len);
        v->grad_accum = ga < 1 ? 1 : (int)ga;
        v->seq_len = (int)c->seq_len;
    }
    return PRIMAL_OK;
}

static const primal_scheduler_vt ns_vt = {
    .size = sizeof(primal_scheduler_vt),
    .create = ns_create,
    .destroy = ns_destroy,
    .apply = ns_apply,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_SCHEDULER,
        .name = "night_shift",
        .description = "train the head first, then unfreeze blocks from the output toward the "
                       "input",
        .keys = ns_keys,
        .vtable = &ns_vt,
    };
    return &d;
}
