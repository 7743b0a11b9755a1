/* policy_harness.h: what policies_test.c and momentum_carry_test.c share.  It acts as the core
 * around a flip policy loaded through the mock host: config from "key=value" strings, create,
 * small hand-made tensors over a hand-made grid, observe + accumulate of one micro-batch, and
 * step, asserting that each call succeeds. */
#ifndef PRIMAL_TEST_POLICY_HARNESS_H
#define PRIMAL_TEST_POLICY_HARNESS_H

#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include <primal/plugin.h>

#include "config.h"
#include "mockhost.h"
#include "registry.h"

/* SPEC.md, "Grids": prime13 ascending. */
static const float prime13[13] = {
    -1.0f,        -1.0f / 2, -1.0f / 3, -1.0f / 5, -1.0f / 7, -1.0f / 11, 0.0f,
    1.0f / 11,    1.0f / 7,  1.0f / 5,  1.0f / 3,  1.0f / 2,  1.0f,
};
#define P13_ZERO 6 /* index of 0 in prime13 */

typedef struct policy_fx {
    const primal_plugin *d;
    const primal_policy_vt *vt;
    primal_config *cfg;
    void *ctx;
    primal_err err;
} policy_fx;

/* Load plugin `name`, check its descriptor as the core does, bind kv and create it. */
static inline void pfx_open(policy_fx *f, const char *name, const char *const *kv)
{
    memset(f, 0, sizeof *f);
    const char *path = NULL;
    f->d = mockhost_load(name, &path, &f->err);
    cr_assert_not_null(f->d, "%s", f->err.msg);
    cr_assert_eq(primal_plugin_check(f->d, path, PRIMAL_KIND_POLICY, name, &f->err), PRIMAL_OK,
                 "%s", f->err.msg);
    f->vt = f->d->vtable;
    cr_assert_eq(primal_config_from_kv(f->d, "flip", kv, &f->cfg, &f->err), PRIMAL_OK, "%s",
                 f->err.msg);
    primal_policy_info info = {.seed = 1, .total_steps = 100, .device = PRIMAL_DEVICE_CPU};
    cr_assert_eq(f->vt->create(f->cfg, &info, &f->ctx, &f->err), PRIMAL_OK, "%s", f->err.msg);
}

/* The code config binding or create returns for kv (the message is in f->err). */
static inline int pfx_try(policy_fx *f, const char *name, const char *const *kv)
{
    memset(f, 0, sizeof *f);
    f->d = mockhost_load(name, NULL, &f->err);
    cr_assert_not_null(f->d, "%s", f->err.msg);
    f->vt = f->d->vtable;
    int rc = primal_config_from_kv(f->d, "flip", kv, &f->cfg, &f->err);
    if (rc == PRIMAL_OK) {
        primal_policy_info info = {.seed = 1, .total_steps = 100};
        rc = f->vt->create(f->cfg, &info, &f->ctx, &f->err);
        if (rc == PRIMAL_OK && f->vt->destroy)
            f->vt->destroy(f->ctx);
    }
    primal_config_free(f->cfg);
    f->cfg = NULL;
    return rc;
}

static inline void pfx_close(policy_fx *f)
{
    if (f->vt != NULL && f->vt->destroy != NULL)
        f->vt->destroy(f->ctx);
    primal_config_free(f->cfg);
    mockhost_unload_all();
}

/* A (rows, cols) indexed tensor over grid, every index `fill`, every scale 1. */
static inline void tensor_make(primal_qtensor *t, int64_t rows, int64_t cols, const float *grid,
                               int grid_size, uint32_t fill)
{
    memset(t, 0, sizeof *t);
    t->name = "test.weight";
    t->id = 3;
    t->rows = rows;
    t->cols = cols;
    t->bits = grid_size <= 16 ? 4 : grid_size <= 256 ? 8 : 16;
    t->row_stride = t->bits == 4 ? (cols + 1) / 2 : cols * (t->bits / 8);
    t->index = calloc((size_t)(rows * t->row_stride), 1);
    t->scale = malloc((size_t)rows * sizeof(float));
    cr_assert(t->index != NULL && t->scale != NULL);
    for (int64_t r = 0; r < rows; r++) {
        t->scale[r] = 1.0f;
        for (int64_t c = 0; c < cols; c++)
            primal_index_set(t, r, c, fill);
    }
    t->grid = grid;
    t->grid_size = grid_size;
}

/* A copy of t with its own index and scale buffers. */
static inline void tensor_copy(primal_qtensor *dst, const primal_qtensor *src)
{
    *dst = *src;
    size_t ni = (size_t)(src->rows * src->row_stride), ns = (size_t)src->rows * sizeof(float);
    dst->index = malloc(ni);
    dst->scale = malloc(ns);
    cr_assert(dst->index != NULL && dst->scale != NULL);
    memcpy(dst->index, src->index, ni);
    memcpy(dst->scale, src->scale, ns);
}

static inline void tensor_free(primal_qtensor *t)
{
    free(t->index);
    free(t->scale);
    free(t->dense);
}

static inline void *state_init(policy_fx *f, const primal_qtensor *t)
{
    void *st = NULL;
    cr_assert_eq(f->vt->tensor_init(f->ctx, t, &st, &f->err), PRIMAL_OK, "%s", f->err.msg);
    return st;
}

static inline void state_free(policy_fx *f, const primal_qtensor *t, void *st)
{
    if (f->vt->tensor_free != NULL)
        f->vt->tensor_free(f->ctx, t, st);
}

/* One micro-batch of G for rows [r0, r0 + nrows), as the core calls it: observe (if the policy
 * has it) then accumulate. */
static inline void feed_rows(policy_fx *f, void *st, const primal_qtensor *t, const float *G,
                             int64_t r0, int64_t nrows, int64_t step, int micro, int n_micro)
{
    primal_accum_info ai = {.step = step, .micro = micro, .n_micro = n_micro, .seed = 42,
                            .lr = 1e-3, .lr_mult = 1.0};
    if (f->vt->observe != NULL)
        cr_assert_eq(f->vt->observe(f->ctx, st, t, G, r0, nrows, &ai, &f->err), PRIMAL_OK, "%s",
                     f->err.msg);
    cr_assert_eq(f->vt->accumulate(f->ctx, st, t, G, r0, nrows, &ai, &f->err), PRIMAL_OK, "%s",
                 f->err.msg);
}

/* One micro-batch of the whole tensor's G ((rows, cols)). */
static inline void feed(policy_fx *f, void *st, const primal_qtensor *t, const float *G,
                        int64_t step, int micro, int n_micro)
{
    feed_rows(f, st, t, G, 0, t->rows, step, micro, n_micro);
}

static inline primal_step_stats step_with(policy_fx *f, void *st, const primal_qtensor *t,
                                          int64_t step, double lr_mult, double clip)
{
    primal_step_info si = {.step = step, .n_micro = 1, .seed = 42, .lr_mult = lr_mult,
                           .clip_scale = clip};
    primal_step_stats stats = {-1, -1, -1};
    cr_assert_eq(f->vt->step(f->ctx, st, t, &si, &stats, &f->err), PRIMAL_OK, "%s", f->err.msg);
    return stats;
}

static inline primal_step_stats step_once(policy_fx *f, void *st, const primal_qtensor *t,
                                          int64_t step)
{
    return step_with(f, st, t, step, 1.0, 1.0);
}

/* The state serialised (malloc'ed, *n bytes). */
static inline uint8_t *state_dump(policy_fx *f, const primal_qtensor *t, const void *st,
                                  size_t *n)
{
    *n = f->vt->state_bytes(f->ctx, t, st);
    uint8_t *buf = malloc(*n ? *n : 1);
    cr_assert_not_null(buf);
    cr_assert_eq(f->vt->state_save(f->ctx, t, st, buf, &f->err), PRIMAL_OK, "%s", f->err.msg);
    return buf;
}

static inline void state_put(policy_fx *f, const primal_qtensor *t, void *st, const void *buf,
                             size_t n)
{
    cr_assert_eq(f->vt->state_load(f->ctx, t, st, buf, n, &f->err), PRIMAL_OK, "%s", f->err.msg);
}

static inline void expect_indices(const primal_qtensor *t, const uint32_t *want)
{
    for (int64_t r = 0; r < t->rows; r++)
        for (int64_t c = 0; c < t->cols; c++)
            cr_expect_eq(primal_index_get(t, r, c), want[r * t->cols + c],
                         "index [%lld][%lld] is %u, expected %u", (long long)r, (long long)c,
                         primal_index_get(t, r, c), want[r * t->cols + c]);
}

#endif
