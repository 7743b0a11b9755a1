/* adam_carry_test.c: the adam_carry flip policy through the mock host (plugins/adam_carry.c).
 * The state is read in its documented checkpoint layout (resid, rlo, mom, mscale, vr, vc, racc,
 * cacc, t, t_step), decoded here. */
#include <math.h>
#include <stdio.h>

#include "policy_harness.h"

static void teardown(void) { mockhost_unload_all(); }
TestSuite(adam_carry, .fini = teardown);

/* 255 values evenly spaced over [-1, 1] (gap 1/127, 8-bit indices; 127 is zero). */
static float u255[255];
static void grids(void)
{
    for (int i = 0; i < 255; i++)
        u255[i] = (float)(i - 127) / 127.0f;
}

static size_t bytes_for(int64_t rows, int64_t cols, int block)
{
    int64_t nblk = (cols + block - 1) / block;
    return (size_t)(2 * rows * cols) + 4 * (size_t)(rows * nblk + 2 * rows + 2 * cols + 1) + 16;
}

Test(adam_carry, holds_about_2_bytes_per_weight_and_describes_its_keys)
{
    grids();
    policy_fx f;
    pfx_open(&f, "adam_carry", NULL);
    primal_qtensor t;
    tensor_make(&t, 256, 512, u255, 255, 127);
    void *st = state_init(&f, &t);
    size_t n = f.vt->state_bytes(f.ctx, &t, st);
    cr_expect_eq(n, bytes_for(256, 512, 64));
    cr_expect_lt((double)n / (256.0 * 512.0), 2.15, "%zu bytes for 131072 weights", n);
    int seen = 0;
    for (const primal_key *k = f.d->keys; k->name != NULL; k++)
        seen += !strcmp(k->name, "second_moment") || !strcmp(k->name, "block") ||
                !strcmp(k->name, "weight_decay");
    cr_expect_eq(seen, 3);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(adam_carry, refuses_a_block_that_is_not_a_power_of_two)
{
    static const char *const kv[] = {"block=48", NULL};
    policy_fx f;
    cr_expect_eq(pfx_try(&f, "adam_carry", kv), PRIMAL_ECONFIG);
    cr_expect(strstr(f.err.msg, "block") != NULL && strstr(f.err.msg, "48") != NULL, "%s",
              f.err.msg);
    mockhost_unload_all();
}

/* G[r][c] = a_r b_c with b spanning 1000x, the same twice: Adam's second step is lr per weight
 * whatever the magnitude, which a factored second moment reproduces exactly for a rank-one G^2;
 * a per-row one moves small columns less and large ones more. */
static void first_step_moves(const char *mode, int *min_move, int *max_move)
{
    grids();
    const char *kv[] = {"lr=0.05", mode, NULL};
    policy_fx f;
    pfx_open(&f, "adam_carry", kv);
    primal_qtensor t;
    const int64_t rows = 8, cols = 96;
    tensor_make(&t, rows, cols, u255, 255, 127);
    void *st = state_init(&f, &t);
    float *G = malloc(sizeof(float) * rows * cols);
    cr_assert_not_null(G);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            G[r * cols + c] = (float)((1.0 + r) * 1e-3 * pow(10.0, 3.0 * (double)c / cols));
    /* the first step is sign(g) either way (Adam's own first step); the second is normalised by
     * the second moment */
    feed(&f, st, &t, G, 0, 0, 1);
    step_once(&f, st, &t, 0);
    uint32_t *before = malloc(sizeof(uint32_t) * rows * cols);
    cr_assert_not_null(before);
    for (int64_t k = 0; k < rows * cols; k++)
        before[k] = primal_index_get(&t, k / cols, k % cols);
    feed(&f, st, &t, G, 1, 0, 1);
    step_once(&f, st, &t, 1);
    *min_move = 1000;
    *max_move = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            int mv = (int)before[r * cols + c] - (int)primal_index_get(&t, r, c);
            *min_move = mv < *min_move ? mv : *min_move;
            *max_move = mv > *max_move ? mv : *max_move;
        }
    free(before);
    free(G);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(adam_carry, a_factored_second_moment_moves_every_column_alike_and_a_per_row_one_does_not)
{
    int lo, hi;
    /* lr 0.05 = 6.35 gaps of 1/127: every weight moves down 6 or 7 entries in one step */
    first_step_moves("second_moment=factored", &lo, &hi);
    cr_expect(lo >= 6 && hi <= 7, "factored: moves from %d to %d entries", lo, hi);
    first_step_moves("second_moment=row", &lo, &hi);
    cr_expect(lo <= 4 && hi >= 10, "row: moves from %d to %d entries", lo, hi);
}

/* min |W - T| descent on W = grid[index] (scale 1): G = W - T. */
static double descend(const char *const *kv, int steps, int64_t *saturated)
{
    grids();
    policy_fx f;
    pfx_open(&f, "adam_carry", kv);
    primal_qtensor t;
    const int64_t rows = 16, cols = 100;
    tensor_make(&t, rows, cols, u255, 255, 127);
    void *st = state_init(&f, &t);
    float *G = malloc(sizeof(float) * rows * cols), *T = malloc(sizeof(float) * rows * cols);
    cr_assert(G != NULL && T != NULL);
    for (int64_t k = 0; k < rows * cols; k++)
        T[k] = (float)(0.8 * sin(0.37 * (double)k)) * (k % 7 == 0 ? 1.5f : 1.0f);
    *saturated = 0;
    for (int s = 0; s < steps; s++) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                G[r * cols + c] = u255[primal_index_get(&t, r, c)] - T[r * cols + c];
        feed(&f, st, &t, G, s, 0, 1);
        double mult = 0.5 * (1.0 + cos(M_PI * s / steps)); /* cosine to 0 */
        *saturated = step_with(&f, st, &t, s, mult, 1.0).saturated;
    }
    double err = 0.0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double want = fmax(-1.0, fmin(1.0, T[r * cols + c]));
            err += fabs(u255[primal_index_get(&t, r, c)] - want);
        }
    free(G);
    free(T);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
    return err / (double)(rows * cols);
}

Test(adam_carry, descends_to_the_target_and_holds_targets_past_the_grid_at_its_ends)
{
    static const char *const kv[] = {"lr=0.02", "weight_decay=0", NULL};
    int64_t sat;
    double err = descend(kv, 400, &sat);
    /* from about 0.5 to the grid's resolution (half a gap is 0.004) */
    cr_expect_lt(err, 0.01, "mean |W - T| %.4f after 400 steps", err);
    cr_expect_gt(sat, 0, "targets of +-1.2 hold their weights at the grid's ends");
}

Test(adam_carry, weight_decay_pulls_the_position_towards_zero)
{
    static const char *const kv0[] = {"lr=0.02", "weight_decay=0", NULL};
    static const char *const kv1[] = {"lr=0.02", "weight_decay=5", NULL};
    int64_t sat0, sat1;
    double e0 = descend(kv0, 200, &sat0), e1 = descend(kv1, 200, &sat1);
    cr_expect_gt(e1, e0 + 0.01, "decay should keep W short of T: %.4f vs %.4f", e1, e0);
}

/* Save after 5 steps, load into fresh state, and both copies go on identically. */
static void resume_case(const char *const *kv, int64_t cols, int64_t nlo)
{
    grids();
    policy_fx f;
    pfx_open(&f, "adam_carry", kv);
    primal_qtensor a, b;
    const int64_t rows = 9;
    tensor_make(&a, rows, cols, u255, 255, 127);
    void *sa = state_init(&f, &a);
    float *G = malloc(sizeof(float) * rows * cols);
    cr_assert_not_null(G);
    for (int s = 0; s < 10; s++) {
        if (s == 5) {
            tensor_copy(&b, &a);
            size_t n;
            uint8_t *buf = state_dump(&f, &a, sa, &n);
            void *sb = state_init(&f, &b);
            state_put(&f, &b, sb, buf, n);
            /* corruptions: a residual past +-64, a NaN second moment, a wrong size */
            uint8_t *bad = malloc(n);
            cr_assert_not_null(bad);
            memcpy(bad, buf, n);
            bad[3] = 100;
            cr_expect_eq(f.vt->state_load(f.ctx, &b, sb, bad, n, &f.err), PRIMAL_EIO);
            cr_expect(strstr(f.err.msg, "residual") && strstr(f.err.msg, "test.weight"), "%s",
                      f.err.msg);
            memcpy(bad, buf, n);
            float nan = NAN;
            memcpy(bad + 2 * rows * cols + nlo + 4 * rows * 2, &nan, 4); /* vr[0] (nblk = 2) */
            cr_expect_eq(f.vt->state_load(f.ctx, &b, sb, bad, n, &f.err), PRIMAL_EIO);
            cr_expect_eq(f.vt->state_load(f.ctx, &b, sb, buf, n - 1, &f.err), PRIMAL_EIO);
            if (nlo == rows * ((cols + 1) / 2) && (cols & 1)) {
                /* 12 bits: the unused high nibble after an odd row's last column */
                memcpy(bad, buf, n);
                bad[rows * cols + cols / 2] |= 0x10;
                cr_expect_eq(f.vt->state_load(f.ctx, &b, sb, bad, n, &f.err), PRIMAL_EIO);
                cr_expect(strstr(f.err.msg, "low bits"), "%s", f.err.msg);
            }
            if (nlo > 0) {
                /* high part 64 with low bits above 0: past +64 units of the high byte */
                memcpy(bad, buf, n);
                bad[0] = 64;
                bad[rows * cols] = 1;
                cr_expect_eq(f.vt->state_load(f.ctx, &b, sb, bad, n, &f.err), PRIMAL_EIO);
                cr_expect(strstr(f.err.msg, "residual"), "%s", f.err.msg);
            }
            free(bad);
            free(buf);
            for (int s2 = 5; s2 < 10; s2++) {
                for (int64_t k = 0; k < rows * cols; k++)
                    G[k] = (float)sin(0.1 * (double)(k * (s2 + 1)));
                feed(&f, sb, &b, G, s2, 0, 1);
                step_once(&f, sb, &b, s2);
            }
            size_t nb;
            uint8_t *bb = state_dump(&f, &b, sb, &nb);
            state_free(&f, &b, sb);
            for (; s < 10; s++) {
                for (int64_t k = 0; k < rows * cols; k++)
                    G[k] = (float)sin(0.1 * (double)(k * (s + 1)));
                feed(&f, sa, &a, G, s, 0, 1);
                step_once(&f, sa, &a, s);
            }
            size_t na;
            uint8_t *ba = state_dump(&f, &a, sa, &na);
            cr_expect_eq(na, nb);
            cr_expect(memcmp(ba, bb, na) == 0, "the resumed state differs");
            cr_expect(memcmp(a.index, b.index, (size_t)(rows * a.row_stride)) == 0,
                      "the resumed indices differ");
            free(ba);
            free(bb);
            tensor_free(&b);
            break;
        }
        for (int64_t k = 0; k < rows * cols; k++)
            G[k] = (float)sin(0.1 * (double)(k * (s + 1)));
        feed(&f, sa, &a, G, s, 0, 1);
        step_once(&f, sa, &a, s);
    }
    free(G);
    state_free(&f, &a, sa);
    tensor_free(&a);
    pfx_close(&f);
}

Test(adam_carry, a_saved_state_resumes_bit_for_bit_and_a_corrupted_one_is_refused)
{
    static const char *const kv[] = {"lr=0.01", NULL};
    resume_case(kv, 70, 0);
}

Test(adam_carry, a_12_bit_state_resumes_bit_for_bit_on_odd_rows)
{
    static const char *const kv[] = {"lr=0.01", "residual_bits=12", NULL};
    resume_case(kv, 71, 9 * 36);
}

Test(adam_carry, a_16_bit_state_resumes_bit_for_bit)
{
    static const char *const kv[] = {"lr=0.01", "residual_bits=16", "second_moment=row", NULL};
    resume_case(kv, 70, 9 * 70);
}

Test(adam_carry, refuses_residual_bits_other_than_8_12_16)
{
    static const char *const kv[] = {"residual_bits=10", NULL};
    policy_fx f;
    cr_expect_eq(pfx_try(&f, "adam_carry", kv), PRIMAL_ECONFIG);
    cr_expect(strstr(f.err.msg, "residual_bits") != NULL && strstr(f.err.msg, "10") != NULL,
              "%s", f.err.msg);
    mockhost_unload_all();
}

Test(adam_carry, finer_residuals_cost_half_or_one_byte_more_per_weight)
{
    grids();
    static const char *const k12[] = {"residual_bits=12", NULL};
    static const char *const k16[] = {"residual_bits=16", NULL};
    const char *const *kv[] = {k12, k16};
    const size_t extra[] = {256 * 256, 256 * 511};
    for (int m = 0; m < 2; m++) {
        policy_fx f;
        pfx_open(&f, "adam_carry", kv[m]);
        primal_qtensor t;
        tensor_make(&t, 256, 511, u255, 255, 127);
        void *st = state_init(&f, &t);
        cr_expect_eq(f.vt->state_bytes(f.ctx, &t, st), bytes_for(256, 511, 64) + extra[m]);
        state_free(&f, &t, st);
        tensor_free(&t);
        pfx_close(&f);
    }
}

/* The positions (index + residual / R, in grid gaps) of 512 weights that get the same small
 * move every step: 0.3 units of the 8-bit residual, 300 steps.  Each stochastic rounding adds
 * variance, so the 8-bit positions spread by about sqrt(300 x 0.21) = 8 units = 0.063 gap, and
 * the 16-bit ones 256 times less in variance.  Returns the standard deviation in gaps. */
static double spread(int rbits)
{
    grids();
    char rb[32];
    snprintf(rb, sizeof rb, "residual_bits=%d", rbits);
    const char *const kv[] = {"lr=1.86e-5", "beta1=0", "weight_decay=0", rb, NULL};
    policy_fx f;
    pfx_open(&f, "adam_carry", kv);
    primal_qtensor t;
    const int64_t rows = 8, cols = 64, n = rows * cols;
    tensor_make(&t, rows, cols, u255, 255, 127);
    void *st = state_init(&f, &t);
    float *G = malloc(sizeof(float) * (size_t)n);
    cr_assert_not_null(G);
    for (int64_t k = 0; k < n; k++)
        G[k] = -1.0f; /* normalised to 1: every weight moves up alike */
    for (int s = 0; s < 300; s++) {
        feed(&f, st, &t, G, s, 0, 1);
        step_once(&f, st, &t, s);
    }
    size_t nb;
    uint8_t *buf = state_dump(&f, &t, st, &nb);
    const int L = 1 << (rbits - 8);
    double sum = 0.0, sum2 = 0.0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            const int64_t k = r * cols + c;
            int v = (int8_t)buf[k] * L;
            if (rbits == 16)
                v += buf[n + k];
            else if (rbits == 12)
                v += (buf[n + r * (cols / 2) + c / 2] >> (4 * (c & 1))) & 15;
            const double pos = (double)primal_index_get(&t, r, c) + (double)v / (127.0 * L);
            sum += pos;
            sum2 += pos * pos;
        }
    const double mean = sum / (double)n, sd = sqrt(fmax(0.0, sum2 / (double)n - mean * mean));
    cr_expect(mean > 127.4 && mean < 127.95, "%d bits: mean position %.4f, want ~127.7", rbits,
              mean);
    free(buf);
    free(G);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
    return sd;
}

Test(adam_carry, finer_residuals_spread_equal_small_moves_less)
{
    const double s8 = spread(8), s12 = spread(12), s16 = spread(16);
    cr_expect(s8 > 0.04 && s8 < 0.09, "8 bits: spread %.4f gap, want ~0.063", s8);
    cr_expect(s12 < 0.025, "12 bits: spread %.4f gap, want ~0.016", s12);
    cr_expect(s16 < 0.006, "16 bits: spread %.4f gap, want ~0.004", s16);
}
