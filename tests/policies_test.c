/* policies_test.c: threshold_consensus, stochastic_zscore, adamw and latent_adamw through the
 * mock host (SPEC.md, "Flip policies" and the baselines).  Expected values are worked by hand
 * in the comments; gradients are chosen so that the float arithmetic is exact (max|G| = 100,
 * so pressure = G). */
#include <math.h>
#include <stdio.h>

#include "policy_harness.h"

static void teardown(void) { mockhost_unload_all(); }

TestSuite(threshold_consensus, .fini = teardown);
TestSuite(stochastic_zscore, .fini = teardown);
TestSuite(adamw, .fini = teardown);
TestSuite(latent_adamw, .fini = teardown);
TestSuite(policies, .fini = teardown);

/* The int16 votes of a threshold_consensus state. */
static int16_t tc_vote(policy_fx *f, const primal_qtensor *t, const void *st, int64_t i)
{
    size_t n;
    uint8_t *buf = state_dump(f, t, st, &n);
    int16_t v;
    memcpy(&v, buf + i * 2, 2);
    free(buf);
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* threshold_consensus                                                                        */

Test(threshold_consensus, describes_its_keys_and_defaults)
{
    policy_fx f;
    pfx_open(&f, "threshold_consensus", NULL);
    cr_expect_str_eq(f.d->name, "threshold_consensus");
    cr_expect_eq(f.d->kind, PRIMAL_KIND_POLICY);
    cr_expect_eq(f.vt->storage, PRIMAL_STORAGE_INDEXED);
    static const char *want[][2] = {{"threshold", "20"}, {"decay", "0.95"}, {"stride", "1"},
                                    {"block", "1"},      {"max_flip_fraction", "1"},
                                    {"cooldown", "0"}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const primal_key *k = f.d->keys;
        while (k->name && strcmp(k->name, want[i][0]) != 0)
            k++;
        cr_assert_not_null(k->name, "key %s missing", want[i][0]);
        cr_expect_str_eq(k->def, want[i][1], "%s", want[i][0]);
    }
    cr_expect_eq(primal_cfg_int(f.cfg, "threshold"), 20);
    pfx_close(&f);
}

Test(threshold_consensus, moves_down_on_positive_g_and_reverses_for_a_negative_scale)
{
    policy_fx f;
    pfx_open(&f, "threshold_consensus", (const char *[]){"threshold=50", NULL});
    primal_qtensor t;
    tensor_make(&t, 2, 4, prime13, 13, P13_ZERO);
    t.scale[0] = 0.5f;
    t.scale[1] = -0.5f;
    void *st = state_init(&f, &t);
    /* max|G| = 100: pressures equal G.  Row 1's scale is negative, so its g = -G. */
    const float G[8] = {100, -100, 50, 0, 100, -100, 50, 0};
    feed(&f, st, &t, G, 0, 0, 1);
    primal_step_stats s = step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){5, 7, 5, 6, 7, 5, 7, 6});
    cr_expect_eq(s.flips, 6);
    cr_expect_eq(s.weights, 8);
    /* votes were reset: a step without new gradient moves nothing */
    s = step_once(&f, st, &t, 1);
    cr_expect_eq(s.flips, 0);
    expect_indices(&t, (const uint32_t[]){5, 7, 5, 6, 7, 5, 7, 6});
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(threshold_consensus, fires_at_the_threshold_resets_and_decays_the_rest_by_truncation)
{
    policy_fx f;
    pfx_open(&f, "threshold_consensus", (const char *[]){"threshold=20", "decay=0.5", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 4, prime13, 13, P13_ZERO);
    void *st = state_init(&f, &t);
    const float G[4] = {100, 15, -15, 19};
    feed(&f, st, &t, G, 0, 0, 1);
    step_once(&f, st, &t, 0);
    /* 100 fires; 15 -> trunc(7.5) = 7; -15 -> trunc(-7.5) = -7 (toward zero); 19 -> 9 */
    expect_indices(&t, (const uint32_t[]){5, 6, 6, 6});
    cr_expect_eq(tc_vote(&f, &t, st, 0), 0);
    cr_expect_eq(tc_vote(&f, &t, st, 1), 7);
    cr_expect_eq(tc_vote(&f, &t, st, 2), -7);
    cr_expect_eq(tc_vote(&f, &t, st, 3), 9);
    feed(&f, st, &t, G, 1, 0, 1);
    step_once(&f, st, &t, 1);
    /* 100 fires again; 7 + 15 = 22 >= 20 fires; -7 - 15 = -22 fires (up); 9 + 19 = 28 fires */
    expect_indices(&t, (const uint32_t[]){4, 5, 7, 5});
    for (int i = 0; i < 4; i++)
        cr_expect_eq(tc_vote(&f, &t, st, i), 0);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(threshold_consensus, normalises_pressure_by_the_tensor_wide_max_across_row_chunks)
{
    policy_fx f;
    pfx_open(&f, "threshold_consensus", (const char *[]){"threshold=1000", NULL});
    primal_qtensor t;
    tensor_make(&t, 2, 2, prime13, 13, P13_ZERO);
    void *st = state_init(&f, &t);
    const float G[4] = {40, 4, 20, 3}; /* max over the tensor 40: pressures 100, 10, 50, 7.5->7 */
    primal_accum_info ai = {.step = 0, .micro = 0, .n_micro = 2, .lr_mult = 1};
    for (int r = 0; r < 2; r++)
        cr_assert_eq(f.vt->observe(f.ctx, st, &t, G + 2 * r, r, 1, &ai, &f.err), PRIMAL_OK);
    for (int r = 0; r < 2; r++)
        cr_assert_eq(f.vt->accumulate(f.ctx, st, &t, G + 2 * r, r, 1, &ai, &f.err), PRIMAL_OK);
    cr_expect_eq(tc_vote(&f, &t, st, 0), 100);
    cr_expect_eq(tc_vote(&f, &t, st, 1), 10);
    cr_expect_eq(tc_vote(&f, &t, st, 2), 50);
    cr_expect_eq(tc_vote(&f, &t, st, 3), 7);
    /* the next micro-batch has its own maximum (2): pressures 50, 100, 0, 0 */
    const float G2[4] = {1, 2, 0, 0};
    feed(&f, st, &t, G2, 0, 1, 2);
    cr_expect_eq(tc_vote(&f, &t, st, 0), 150);
    cr_expect_eq(tc_vote(&f, &t, st, 1), 110);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(threshold_consensus, saturates_votes_at_32760_and_breaks_ties_by_lower_index)
{
    policy_fx f;
    pfx_open(&f, "threshold_consensus",
             (const char *[]){"threshold=32760", "decay=1", "max_flip_fraction=0.5", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 2, prime13, 13, P13_ZERO);
    void *st = state_init(&f, &t);
    const float G[2] = {100, -100};
    for (int i = 0; i < 330; i++) /* 330 * 100 = 33000 > 32760 */
        feed(&f, st, &t, G, 0, i, 330);
    cr_expect_eq(tc_vote(&f, &t, st, 0), 32760);
    cr_expect_eq(tc_vote(&f, &t, st, 1), -32760);
    /* both reach the threshold with equal |votes|; the cap (1 of 2) keeps the lower index */
    primal_step_stats s = step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){5, 6});
    cr_expect_eq(s.flips, 1);
    cr_expect_eq(s.saturated, 1);
    cr_expect_eq(tc_vote(&f, &t, st, 1), -32760);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(threshold_consensus, cooldown_holds_a_moved_weight_for_that_many_steps)
{
    policy_fx f;
    pfx_open(&f, "threshold_consensus",
             (const char *[]){"threshold=10", "decay=1", "cooldown=2", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 1, prime13, 13, P13_ZERO);
    void *st = state_init(&f, &t);
    const float G[1] = {100};
    const uint32_t want[5] = {5, 5, 5, 4, 4};
    for (int s = 0; s < 4; s++) {
        feed(&f, st, &t, G, s, 0, 1);
        step_once(&f, st, &t, s);
        cr_expect_eq(primal_index_get(&t, 0, 0), want[s], "after step %d", s);
    }
    cr_expect_eq(tc_vote(&f, &t, st, 0), 0); /* the waiting votes (300) fired at step 3 */
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(threshold_consensus, max_flip_fraction_keeps_the_highest_pressure)
{
    policy_fx f;
    pfx_open(&f, "threshold_consensus",
             (const char *[]){"threshold=5", "decay=1", "max_flip_fraction=0.3", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 8, prime13, 13, P13_ZERO);
    void *st = state_init(&f, &t);
    const float G[8] = {10, -90, 50, 100, 30, -70, 20, 60};
    feed(&f, st, &t, G, 0, 0, 1);
    /* cap floor(0.3 * 8) = 2: the |votes| 100 (down) and 90 (up) move */
    primal_step_stats s = step_once(&f, st, &t, 0);
    cr_expect_eq(s.flips, 2);
    expect_indices(&t, (const uint32_t[]){6, 7, 6, 5, 6, 6, 6, 6});
    cr_expect_eq(tc_vote(&f, &t, st, 5), -70); /* capped out: kept (decay 1) */
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(threshold_consensus, block_mode_decides_by_the_mean_and_moves_each_weight_its_own_way)
{
    policy_fx f;
    pfx_open(&f, "threshold_consensus",
             (const char *[]){"threshold=30", "decay=0.5", "block=4", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 10, prime13, 13, P13_ZERO);
    void *st = state_init(&f, &t);
    /* block 0: mean |v| 130/4 = 32.5 >= 30 fires; block 1: 110/4 = 27.5 does not, although 50
     * alone would; block 2 (the row's last 2 columns): mean 30 fires */
    const float G[10] = {100, -20, 10, 0, 50, 30, 20, 10, -40, 20};
    feed(&f, st, &t, G, 0, 0, 1);
    primal_step_stats s = step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){5, 7, 5, 6, 6, 6, 6, 6, 7, 5});
    cr_expect_eq(s.flips, 5);
    cr_expect_eq(tc_vote(&f, &t, st, 4), 25);
    cr_expect_eq(tc_vote(&f, &t, st, 5), 15);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(threshold_consensus, clamps_moves_at_the_grid_ends)
{
    policy_fx f;
    pfx_open(&f, "threshold_consensus", (const char *[]){"threshold=10", "stride=3", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 4, prime13, 13, 0);
    const uint32_t start[4] = {0, 12, 1, 11};
    for (int c = 0; c < 4; c++)
        primal_index_set(&t, 0, c, start[c]);
    void *st = state_init(&f, &t);
    const float G[4] = {100, -100, 100, -100};
    feed(&f, st, &t, G, 0, 0, 1);
    primal_step_stats s = step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){0, 12, 0, 12});
    cr_expect_eq(s.flips, 2);
    cr_expect_eq(tc_vote(&f, &t, st, 0), 0); /* fired, although it could not move */
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(threshold_consensus, dynamic_stride_follows_the_mean_distance_from_the_centre)
{
    static float grid[65536];
    for (int i = 0; i < 65536; i++)
        grid[i] = -1.0f + 2.0f * (float)i / 65535.0f;
    policy_fx f;
    pfx_open(&f, "threshold_consensus", (const char *[]){"threshold=10", "stride=dynamic", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 4, grid, 65536, 32768);
    cr_assert_eq(t.bits, 16);
    /* mean |i - 32768| = (0 + 16384 + 16384 + 0) / 4 = 8192: trunc(8 * (1 - 0.25)) = 6 */
    primal_index_set(&t, 0, 1, 49152);
    primal_index_set(&t, 0, 2, 16384);
    void *st = state_init(&f, &t);
    const float G[4] = {100, -100, 100, 0};
    feed(&f, st, &t, G, 0, 0, 1);
    step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){32762, 49158, 16378, 32768});
    /* all at the centre: stride 8 */
    for (int c = 0; c < 4; c++)
        primal_index_set(&t, 0, c, 32768);
    feed(&f, st, &t, G, 1, 0, 1);
    step_once(&f, st, &t, 1);
    expect_indices(&t, (const uint32_t[]){32760, 32776, 32760, 32768});
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

/* ------------------------------------------------------------------------------------------ */
/* stochastic_zscore                                                                          */

static int8_t sz_vote(policy_fx *f, const primal_qtensor *t, const void *st, int64_t i)
{
    size_t n;
    uint8_t *buf = state_dump(f, t, st, &n);
    int8_t v = (int8_t)buf[i];
    free(buf);
    return v;
}

Test(stochastic_zscore, describes_its_keys_and_defaults)
{
    policy_fx f;
    pfx_open(&f, "stochastic_zscore", NULL);
    cr_expect_str_eq(f.d->name, "stochastic_zscore");
    cr_expect_float_eq(primal_cfg_float(f.cfg, "z"), 0.5, 1e-12);
    cr_expect_eq(primal_cfg_int(f.cfg, "cooldown"), 100);
    cr_expect_float_eq(primal_cfg_float(f.cfg, "base_p"), 0.002, 1e-12);
    pfx_close(&f);
}

/* A row whose centred |G| is {3,3,1,1,0,0,2,2} + 10 (the offset is removed by centring):
 * mean 1.5, sample variance 10/7, std 1.19523. */
static const float zrow[8] = {13, 7, 11, 9, 10, 10, 12, 8};

static void expect_zvotes(const char *z, float scale, const int8_t *want)
{
    policy_fx f;
    char key[32];
    snprintf(key, sizeof key, "z=%s", z);
    pfx_open(&f, "stochastic_zscore", (const char *[]){key, NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 8, prime13, 13, P13_ZERO);
    t.scale[0] = scale;
    void *st = state_init(&f, &t);
    feed(&f, st, &t, zrow, 0, 0, 1);
    for (int i = 0; i < 8; i++)
        cr_expect_eq(sz_vote(&f, &t, st, i), want[i], "z=%s scale %g: vote %d", z, scale, i);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(stochastic_zscore, votes_only_above_mean_plus_z_std_against_the_gradient_sign)
{
    /* z 0.5: t = 1.5 + 0.598 = 2.098, only the 3s vote; g > 0 votes -1 (down) */
    expect_zvotes("0.5", 1.0f, (const int8_t[]){-1, 1, 0, 0, 0, 0, 0, 0});
    /* z 0.43: t = 1.5 + 0.514 = 2.014 with the sample std (2.0 would vote with the population
     * std: 1.5 + 0.481 = 1.981) */
    expect_zvotes("0.43", 1.0f, (const int8_t[]){-1, 1, 0, 0, 0, 0, 0, 0});
    /* z 0: t = 1.5, the 2s vote too */
    expect_zvotes("0", 1.0f, (const int8_t[]){-1, 1, 0, 0, 0, 0, -1, 1});
    /* a negative scale reverses every vote */
    expect_zvotes("0", -2.0f, (const int8_t[]){1, -1, 0, 0, 0, 0, 1, -1});
}

/* Flip counts of n weights all holding `votes`, in a 256-entry grid at index 128. */
static int64_t sz_flips(int votes, float scale, int64_t *moved_up)
{
    static float grid[256];
    for (int i = 0; i < 256; i++)
        grid[i] = -1.0f + 2.0f * (float)i / 255.0f;
    policy_fx f;
    pfx_open(&f, "stochastic_zscore", (const char *[]){"cooldown=0", NULL});
    primal_qtensor t;
    const int64_t rows = 100, cols = 200;
    tensor_make(&t, rows, cols, grid, 256, 128);
    for (int64_t r = 0; r < rows; r++)
        t.scale[r] = scale;
    void *st = state_init(&f, &t);
    size_t n;
    uint8_t *buf = state_dump(&f, &t, st, &n);
    cr_assert_eq(n, (size_t)(rows * cols)); /* int8 votes only, no cooldown counters */
    memset(buf, (uint8_t)(int8_t)votes, n);
    state_put(&f, &t, st, buf, n);
    primal_step_stats s = step_once(&f, st, &t, 7);
    int64_t up = 0, down = 0, stepped = 0;
    free(buf);
    buf = state_dump(&f, &t, st, &n);
    int toward0 = votes > 0 ? votes - 1 : votes + 1;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            uint32_t i = primal_index_get(&t, r, c);
            int8_t v = (int8_t)buf[r * cols + c];
            up += i == 129;
            down += i == 127;
            cr_assert(i == 128 ? v == toward0 : v == 0, "flipped votes reset, others step to 0");
            stepped += i == 128;
        }
    cr_expect_eq(up + down, s.flips);
    cr_expect_eq(up + down + stepped, rows * cols);
    *moved_up = up;
    free(buf);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
    return up + down;
}

Test(stochastic_zscore, flips_with_probability_one_tenth_and_p_by_vote_strength)
{
    const double n = 20000;
    int64_t up;
    /* |votes| >= 127: always, in the votes' direction */
    cr_expect_eq(sz_flips(127, 1.0f, &up), 20000);
    cr_expect_eq(up, 20000);
    cr_expect_eq(sz_flips(-127, 1.0f, &up), 20000);
    cr_expect_eq(up, 0);
    /* |votes| >= 32: 0.1 */
    double k = (double)sz_flips(-40, 1.0f, &up), sd = sqrt(n * 0.1 * 0.9);
    cr_expect(fabs(k - n * 0.1) < 4 * sd, "%g flips, expected %g +- %g", k, n * 0.1, 4 * sd);
    cr_expect_eq(up, 0);
    /* weaker: p = clamp(0.002 / (|mean scale| + 1e-6), 1e-4, 0.05) */
    struct {
        float scale;
        double p;
    } cases[] = {{0.1f, 0.002 / 0.100001}, {1.0f, 0.002 / 1.000001}, {-0.01f, 0.05},
                 {100.0f, 1e-4}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        k = (double)sz_flips(5, cases[i].scale, &up);
        sd = sqrt(n * cases[i].p * (1 - cases[i].p));
        cr_expect(fabs(k - n * cases[i].p) < 4 * sd + 0.5, "scale %g: %g flips, expected %g",
                  cases[i].scale, k, n * cases[i].p);
        cr_expect_eq(up, (int64_t)k);
    }
}

Test(stochastic_zscore, triples_the_cooldown_when_more_than_a_thousandth_flipped)
{
    policy_fx f;
    pfx_open(&f, "stochastic_zscore", (const char *[]){"cooldown=10", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 1000, prime13, 13, P13_ZERO);
    void *st = state_init(&f, &t);
    size_t n;
    uint8_t *buf = state_dump(&f, &t, st, &n);
    cr_assert_eq(n, 1000 * 3); /* int8 votes + uint16 counters */
    uint16_t cool;
    /* 2 of 1000 flip (0.2%): cooldown 30 */
    buf[0] = 127;
    buf[1] = (uint8_t)(int8_t)-127;
    state_put(&f, &t, st, buf, n);
    primal_step_stats s = step_once(&f, st, &t, 0);
    cr_expect_eq(s.flips, 2);
    free(buf);
    buf = state_dump(&f, &t, st, &n);
    memcpy(&cool, buf + 1000, 2);
    cr_expect_eq(cool, 30);
    memcpy(&cool, buf + 1000 + 2, 2);
    cr_expect_eq(cool, 30);
    /* weight 0 is cooling: strong votes do not move it, its counter counts down; weight 2 flips
     * alone (0.1%, not more): cooldown 10 */
    buf[0] = 127;
    buf[2] = 127;
    state_put(&f, &t, st, buf, n);
    s = step_once(&f, st, &t, 1);
    cr_expect_eq(s.flips, 1);
    cr_expect_eq(primal_index_get(&t, 0, 0), P13_ZERO + 1);
    cr_expect_eq(primal_index_get(&t, 0, 2), P13_ZERO + 1);
    free(buf);
    buf = state_dump(&f, &t, st, &n);
    cr_expect_eq((int8_t)buf[0], 126);
    memcpy(&cool, buf + 1000, 2);
    cr_expect_eq(cool, 29);
    memcpy(&cool, buf + 1000 + 4, 2);
    cr_expect_eq(cool, 10);
    free(buf);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

/* ------------------------------------------------------------------------------------------ */
/* adamw and latent_adamw                                                                     */

Test(adamw, one_step_matches_torch_adamw_by_hand)
{
    policy_fx f;
    pfx_open(&f, "adamw", (const char *[]){"lr=0.01", "eps=0.1", NULL});
    cr_assert_eq(f.vt->storage, PRIMAL_STORAGE_DENSE);
    primal_qtensor t = {.name = "dense.weight", .rows = 1, .cols = 2, .bits = 32};
    t.dense = malloc(2 * sizeof(float));
    t.dense[0] = 0.5f;
    t.dense[1] = -0.25f;
    void *st = state_init(&f, &t);
    /* two micro-batches summing to g = (0.2, -0.4); clip 0.5 -> (0.1, -0.2); lr 0.01 * 0.5.
     * At t = 1, m^ = g and v^ = g^2, so W = W (1 - lr wd) - lr g / (|g| + eps):
     *   W0 = 0.5 (1 - 0.005 * 0.1) - 0.005 * 0.1 / 0.2 = 0.49975 - 0.0025 = 0.49725
     *   W1 = -0.25 (1 - 0.0005) + 0.005 * 0.2 / 0.3 = -0.249875 + 0.00333333 = -0.24654167 */
    const float G1[2] = {0.05f, -0.1f}, G2[2] = {0.15f, -0.3f};
    feed(&f, st, &t, G1, 0, 0, 2);
    feed(&f, st, &t, G2, 0, 1, 2);
    primal_step_stats s = step_with(&f, st, &t, 0, 0.5, 0.5);
    cr_expect_float_eq(t.dense[0], 0.49725f, 1e-6);
    cr_expect_float_eq(t.dense[1], -0.24654167f, 1e-6);
    cr_expect_eq(s.weights, 2);
    /* step 2, same gradient: m = 0.19 g, v = 0.0975 g^2, bias corrections 0.19 and 0.0975,
     * so again m^ = g, v^ = g^2 (the gradient sum was zeroed by step 1) */
    feed(&f, st, &t, G1, 1, 0, 2);
    feed(&f, st, &t, G2, 1, 1, 2);
    step_with(&f, st, &t, 1, 0.5, 0.5);
    cr_expect_float_eq(t.dense[0], 0.49725f * 0.9995f - 0.0025f, 1e-6);
    cr_expect_float_eq(t.dense[1], -0.24654167f * 0.9995f + 0.005f * 0.2f / 0.3f, 1e-6);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(latent_adamw, updates_the_shadow_and_resnaps_to_the_nearest_grid_value)
{
    policy_fx f;
    pfx_open(&f, "latent_adamw", (const char *[]){"lr=0.3", "weight_decay=0", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 3, prime13, 13, 0);
    t.scale[0] = 0.5f;
    const uint32_t start[3] = {6, 12, 9}; /* W = 0, 0.5, 0.1 */
    for (int c = 0; c < 3; c++)
        primal_index_set(&t, 0, c, start[c]);
    void *st = state_init(&f, &t);
    /* t = 1: each step is -lr sign(g) (|g| / (|g| + 1e-8)): shadow 0.3, 0.2, 0.1 (g = 0 keeps
     * it); / scale: 0.6 -> 1/2 (idx 11), 0.4 -> 1/3 (idx 10), 0.2 -> 1/5 (idx 9) */
    const float G[3] = {-1, 1, 0};
    feed(&f, st, &t, G, 0, 0, 1);
    primal_step_stats s = step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){11, 10, 9});
    cr_expect_eq(s.flips, 2);
    size_t n;
    float *buf = (float *)state_dump(&f, &t, st, &n);
    cr_assert_eq(n, 3 * 16 + 8);
    cr_expect_float_eq(buf[0], 0.3f, 1e-6);
    cr_expect_float_eq(buf[1], 0.2f, 1e-6);
    cr_expect_float_eq(buf[2], 0.1f, 1e-6);
    /* a shadow exactly between two grid values goes to the lower one: -0.75 between -1 and
     * -1/2, 0.75 between 1/2 and 1 (scale 1, no gradient, no decay: the shadow stays) */
    t.scale[0] = 1.0f;
    buf[0] = -0.75f;
    buf[1] = 0.75f;
    memset(buf + 3, 0, 3 * 3 * sizeof(float) + 8); /* m, v, gradient sum, t */
    state_put(&f, &t, st, buf, n);
    step_once(&f, st, &t, 1);
    expect_indices(&t, (const uint32_t[]){0, 11, 7}); /* 0.1 -> 1/11 */
    free(buf);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

/* ------------------------------------------------------------------------------------------ */
/* All policies                                                                               */

/* Run a policy for 3 steps, checkpoint, then run 3 more on both the original and a restored
 * copy: indices and states must stay bit-identical. */
static void check_resume(const char *name, const char *const *kv, int dense)
{
    policy_fx f;
    pfx_open(&f, name, kv);
    primal_qtensor a, b;
    const int64_t rows = 3, cols = 7;
    if (dense) {
        a = (primal_qtensor){.name = "d", .rows = rows, .cols = cols, .bits = 32};
        a.dense = calloc((size_t)(rows * cols), sizeof(float));
    } else {
        tensor_make(&a, rows, cols, prime13, 13, P13_ZERO);
        a.scale[1] = -0.5f;
    }
    void *sa = state_init(&f, &a);
    float G[3 * 7];
    for (int s = 0; s < 6; s++) {
        if (s == 3) {
            if (dense) {
                b = a;
                b.dense = malloc(sizeof G);
                memcpy(b.dense, a.dense, sizeof G);
            } else {
                tensor_copy(&b, &a);
            }
            size_t n;
            uint8_t *buf = state_dump(&f, &a, sa, &n);
            void *sb = state_init(&f, &b);
            state_put(&f, &b, sb, buf, n);
            primal_err e;
            cr_expect_eq(f.vt->state_load(f.ctx, &b, sb, buf, n - 1, &e), PRIMAL_EIO,
                         "%s: a short state is refused", name);
            free(buf);
            for (int s2 = 3; s2 < 6; s2++) {
                for (int i = 0; i < rows * cols; i++)
                    G[i] = (float)(((i * 7 + s2 * 13) % 11) - 5) * (i % 3 == 0 ? 10.0f : 1.0f);
                for (int m = 0; m < 2; m++) {
                    feed(&f, sa, &a, G, s2, m, 2);
                    feed(&f, sb, &b, G, s2, m, 2);
                }
                step_once(&f, sa, &a, s2);
                step_once(&f, sb, &b, s2);
            }
            size_t na, nb;
            uint8_t *ba = state_dump(&f, &a, sa, &na), *bb = state_dump(&f, &b, sb, &nb);
            cr_assert_eq(na, nb);
            cr_expect_eq(memcmp(ba, bb, na), 0, "%s: states differ after resume", name);
            if (dense)
                cr_expect_eq(memcmp(a.dense, b.dense, sizeof G), 0, "%s: weights differ", name);
            else
                cr_expect_eq(memcmp(a.index, b.index, (size_t)(rows * a.row_stride)), 0,
                             "%s: indices differ", name);
            free(ba);
            free(bb);
            state_free(&f, &b, sb);
            tensor_free(&b);
            break;
        }
        for (int i = 0; i < rows * cols; i++)
            G[i] = (float)(((i * 5 + s * 3) % 9) - 4) * (i % 2 ? 10.0f : 1.0f);
        for (int m = 0; m < 2; m++)
            feed(&f, sa, &a, G, s, m, 2);
        step_once(&f, sa, &a, s);
    }
    state_free(&f, &a, sa);
    tensor_free(&a);
    pfx_close(&f);
}

Test(policies, resume_from_saved_state_is_bit_identical)
{
    check_resume("threshold_consensus",
                 (const char *[]){"threshold=30", "cooldown=2", "block=2",
                                  "max_flip_fraction=0.5", NULL},
                 0);
    check_resume("threshold_consensus", (const char *[]){"threshold=20", "cooldown=300", NULL},
                 0);
    check_resume("stochastic_zscore", (const char *[]){"z=0.1", "cooldown=2", NULL}, 0);
    check_resume("momentum_carry", (const char *[]){"lr=0.05", NULL}, 0);
    check_resume("momentum_carry",
                 (const char *[]){"lr=0.05", "residual_bits=4", "momentum_bits=4", NULL}, 0);
    check_resume("latent_adamw", (const char *[]){"lr=0.05", NULL}, 0);
    check_resume("adamw", NULL, 1);
}

static void expect_bad_key(const char *name, const char *kv, const char *where)
{
    policy_fx f;
    int rc = pfx_try(&f, name, (const char *[]){kv, NULL});
    cr_expect_eq(rc, PRIMAL_ECONFIG, "%s %s: got %d", name, kv, rc);
    cr_expect(strstr(f.err.msg, where) != NULL, "%s %s: message \"%s\" lacks \"%s\"", name, kv,
              f.err.msg, where);
    mockhost_unload_all();
}

Test(policies, a_bad_key_value_is_a_config_error_naming_the_key)
{
    expect_bad_key("threshold_consensus", "decay=1.5", "[flip] decay");
    expect_bad_key("threshold_consensus", "decay=0", "[flip] decay");
    expect_bad_key("threshold_consensus", "threshold=0", "[flip] threshold");
    expect_bad_key("threshold_consensus", "stride=fast", "[flip] stride");
    expect_bad_key("threshold_consensus", "stride=0", "[flip] stride");
    expect_bad_key("threshold_consensus", "block=4097", "[flip] block");
    expect_bad_key("threshold_consensus", "thresold=5", "[flip] thresold");
    expect_bad_key("stochastic_zscore", "z=11", "[flip] z");
    expect_bad_key("momentum_carry", "residual_bits=6", "[flip] residual_bits");
    expect_bad_key("momentum_carry", "momentum_bits=5", "[flip] momentum_bits");
    expect_bad_key("momentum_carry", "beta1=1", "[flip] beta1");
    expect_bad_key("adamw", "lr=0", "[flip] lr");
    expect_bad_key("latent_adamw", "weight_decay=-1", "[flip] weight_decay");
}
