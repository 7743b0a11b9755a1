/* schedulers_test.c: constant, night_shift and sealing through the mock host (SPEC.md,
 * "Schedulers").  A model of 8 blocks with two tensors each, plus the embedding (-1), final norm
 * (-2) and LM head (-3); the view is reset to the base values before every step, as the core
 * does, and the schedulers applied in order. */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include <primal/plugin.h>

#include "config.h"
#include "mockhost.h"
#include "registry.h"

#define NT 19 /* embedding, 8 x 2 block tensors, final norm, head */

static int layer_of[NT];
static const char *names[NT];

typedef struct sched {
    const primal_plugin *d;
    const primal_scheduler_vt *vt;
    primal_config *cfg;
    void *ctx;
} sched;

static void teardown(void) { mockhost_unload_all(); }
TestSuite(schedulers, .fini = teardown);

static void model(void)
{
    layer_of[0] = -1;
    names[0] = "model.embed_tokens.weight";
    for (int i = 0; i < 16; i++) {
        layer_of[1 + i] = i / 2;
        names[1 + i] = i % 2 ? "model.layers.N.mlp.down_proj.weight"
                             : "model.layers.N.self_attn.q_proj.weight";
    }
    layer_of[17] = -2;
    names[17] = "model.norm.weight";
    layer_of[18] = -3;
    names[18] = "lm_head.weight";
}

static sched open_sched(const char *name, const char *const *kv)
{
    sched s = {0};
    primal_err err;
    const char *path = NULL;
    s.d = mockhost_load(name, &path, &err);
    cr_assert_not_null(s.d, "%s", err.msg);
    cr_assert_eq(primal_plugin_check(s.d, path, PRIMAL_KIND_SCHEDULER, name, &err), PRIMAL_OK,
                 "%s", err.msg);
    s.vt = s.d->vtable;
    cr_assert_eq(primal_config_from_kv(s.d, name, kv, &s.cfg, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(s.vt->create(s.cfg, &s.ctx, &err), PRIMAL_OK, "%s", err.msg);
    return s;
}

static void close_sched(sched *s)
{
    if (s->vt->destroy != NULL)
        s->vt->destroy(s->ctx);
    primal_config_free(s->cfg);
}

/* The view after resetting to base (all trainable, seq_len, grad_accum, lr_mult 1) and applying
 * the n schedulers in order. */
static primal_sched_view run(sched *list, int n, int64_t step, int seq_len, int grad_accum,
                             uint8_t *trainable)
{
    memset(trainable, 1, NT);
    primal_sched_view v = {.step = step, .total_steps = 2000, .n_layers = 8, .n_tensors = NT,
                           .tensor_names = names, .tensor_layer = layer_of,
                           .trainable = trainable, .seq_len = seq_len,
                           .grad_accum = grad_accum, .lr_mult = 1.0};
    primal_err err;
    for (int i = 0; i < n; i++)
        cr_assert_eq(list[i].vt->apply(list[i].ctx, &v, &err), PRIMAL_OK, "%s", err.msg);
    return v;
}

/* Expect exactly: embedding/norm/head as `outer`, blocks >= first_block trainable. */
static void expect_trainable(const uint8_t *tr, int first_block, int outer, int64_t step)
{
    for (int i = 0; i < NT; i++) {
        int want = layer_of[i] < 0 ? outer : layer_of[i] >= first_block;
        cr_expect_eq(tr[i], want, "step %lld: tensor %d (layer %d) trainable %d, expected %d",
                     (long long)step, i, layer_of[i], tr[i], want);
    }
}

Test(schedulers, constant_changes_nothing)
{
    model();
    sched s = open_sched("constant", NULL);
    uint8_t tr[NT];
    for (int64_t step = 0; step < 1000; step += 333) {
        primal_sched_view v = run(&s, 1, step, 256, 3, tr);
        expect_trainable(tr, 0, 1, step);
        cr_expect_eq(v.seq_len, 256);
        cr_expect_eq(v.grad_accum, 3);
        cr_expect_eq(v.lr_mult, 1.0);
    }
    close_sched(&s);
}

Test(schedulers, night_shift_unfreezes_two_blocks_every_50_steps_from_the_last)
{
    model();
    sched s = open_sched("night_shift", NULL); /* warmup 200, every 50, count 2 */
    uint8_t tr[NT];
    const struct {
        int64_t step;
        int first_block; /* 8: none */
    } cases[] = {{0, 8},   {199, 8}, {200, 6}, {249, 6}, {250, 4}, {299, 4},
                 {300, 2}, {349, 2}, {350, 0}, {399, 0}, {5000, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        primal_sched_view v = run(&s, 1, cases[i].step, 512, 1, tr);
        expect_trainable(tr, cases[i].first_block, 1, cases[i].step);
        cr_expect_eq(v.seq_len, 512, "seq_len 0 keeps it");
        cr_expect_eq(v.grad_accum, 1);
    }
    close_sched(&s);
}

Test(schedulers, night_shift_switches_seq_len_and_scales_grad_accum_up)
{
    model();
    sched s = open_sched("night_shift", (const char *[]){"seq_len=384", "count=3", NULL});
    uint8_t tr[NT];
    primal_sched_view v = run(&s, 1, 199, 512, 1, tr);
    cr_expect_eq(v.seq_len, 512);
    cr_expect_eq(v.grad_accum, 1);
    v = run(&s, 1, 200, 512, 1, tr); /* ceil(1 * 512 / 384) = 2 */
    cr_expect_eq(v.seq_len, 384);
    cr_expect_eq(v.grad_accum, 2);
    expect_trainable(tr, 5, 1, 200);
    v = run(&s, 1, 250, 512, 3, tr); /* ceil(3 * 512 / 384) = 4 */
    cr_expect_eq(v.grad_accum, 4);
    expect_trainable(tr, 2, 1, 250);
    v = run(&s, 1, 300, 512, 3, tr); /* 3 * 3 = 9 > 8 blocks: all */
    expect_trainable(tr, 0, 1, 300);
    close_sched(&s);
}

Test(schedulers, sealing_starts_at_step_900)
{
    model();
    sched s = open_sched("sealing", NULL); /* at 900, seq_len 128, accum_mult 6 */
    uint8_t tr[NT];
    primal_sched_view v = run(&s, 1, 899, 512, 2, tr);
    cr_expect_eq(v.seq_len, 512);
    cr_expect_eq(v.grad_accum, 2);
    v = run(&s, 1, 900, 512, 2, tr);
    cr_expect_eq(v.seq_len, 128);
    cr_expect_eq(v.grad_accum, 12);
    expect_trainable(tr, 0, 1, 900);
    v = run(&s, 1, 1500, 512, 2, tr); /* a function of the step: no compounding */
    cr_expect_eq(v.grad_accum, 12);
    close_sched(&s);
}

Test(schedulers, night_shift_then_sealing_compose_in_order)
{
    model();
    sched list[2] = {open_sched("night_shift", (const char *[]){"seq_len=384", NULL}),
                     open_sched("sealing", (const char *[]){"at=260", NULL})};
    uint8_t tr[NT];
    primal_sched_view v = run(list, 2, 100, 512, 1, tr);
    expect_trainable(tr, 8, 1, 100);
    cr_expect_eq(v.seq_len, 512);
    v = run(list, 2, 259, 512, 1, tr);
    expect_trainable(tr, 4, 1, 259);
    cr_expect_eq(v.seq_len, 384);
    cr_expect_eq(v.grad_accum, 2);
    /* sealing sees night_shift's 384 / 2 and unfreezes what night_shift froze */
    v = run(list, 2, 260, 512, 1, tr);
    expect_trainable(tr, 0, 1, 260);
    cr_expect_eq(v.seq_len, 128);
    cr_expect_eq(v.grad_accum, 12);
    close_sched(&list[0]);
    close_sched(&list[1]);
}

Test(schedulers, night_shift_only_freezes_what_an_earlier_scheduler_left_trainable)
{
    model();
    sched s = open_sched("night_shift", NULL);
    uint8_t tr[NT];
    memset(tr, 1, NT);
    tr[18] = 0; /* an earlier scheduler froze the head */
    primal_sched_view v = {.step = 0, .n_layers = 8, .n_tensors = NT, .tensor_names = names,
                           .tensor_layer = layer_of, .trainable = tr, .seq_len = 64,
                           .grad_accum = 1, .lr_mult = 0.5};
    primal_err err;
    cr_assert_eq(s.vt->apply(s.ctx, &v, &err), PRIMAL_OK);
    cr_expect_eq(tr[18], 0);
    cr_expect_eq(tr[0], 1);
    cr_expect_eq(v.lr_mult, 0.5);
    close_sched(&s);
}

static void expect_bad(const char *name, const char *kv, const char *where)
{
    const primal_plugin *d;
    primal_err err = {0};
    d = mockhost_load(name, NULL, &err);
    cr_assert_not_null(d, "%s", err.msg);
    primal_config *cfg = NULL;
    int rc = primal_config_from_kv(d, name, (const char *[]){kv, NULL}, &cfg, &err);
    void *ctx = NULL;
    if (rc == PRIMAL_OK) {
        const primal_scheduler_vt *vt = d->vtable;
        rc = vt->create(cfg, &ctx, &err);
        if (rc == PRIMAL_OK && vt->destroy)
            vt->destroy(ctx);
    }
    primal_config_free(cfg);
    cr_expect_eq(rc, PRIMAL_ECONFIG, "%s %s", name, kv);
    cr_expect(strstr(err.msg, where) != NULL, "\"%s\" lacks \"%s\"", err.msg, where);
}

Test(schedulers, a_bad_key_value_is_a_config_error_naming_the_key)
{
    expect_bad("night_shift", "every=0", "[night_shift] every");
    expect_bad("night_shift", "count=-1", "[night_shift] count");
    expect_bad("sealing", "accum_mult=0", "[sealing] accum_mult");
    expect_bad("sealing", "seq_len=3000000000", "[sealing] seq_len");
    expect_bad("constant", "x=1", "[constant] x");
}
