/* Tests of the grid plugins against SPEC.md's definitions and its SHA-256. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>
#include <openssl/sha.h>

#include "grid.h"

static primal_search search;
static void setup(void)
{
    primal_err err;
    cr_assert_eq(primal_search_init(&search, NULL, &err), PRIMAL_OK);
}
static void teardown(void) { primal_search_free(&search); }
TestSuite(grid, .init = setup, .fini = teardown);

static primal_grid *make(const char *name, const char *const *kv)
{
    primal_grid *g = NULL;
    primal_err err;
    cr_assert_eq(primal_grid_from_name(&search, name, kv, &g, &err), PRIMAL_OK, "%s", err.msg);
    return g;
}

Test(grid, prime13_has_13_ascending_prime_reciprocals)
{
    primal_grid *g = make("prime13", NULL);
    const double want[13] = {-1, -1. / 2, -1. / 3, -1. / 5, -1. / 7, -1. / 11, 0,
                             1. / 11, 1. / 7, 1. / 5, 1. / 3, 1. / 2, 1};
    cr_assert_eq(g->size, 13);
    for (int i = 0; i < 13; i++)
        cr_assert_eq(g->values[i], (float)want[i], "value %d", i);
    primal_grid_free(g);
}

Test(grid, prime23_adds_the_ten_fine_values)
{
    primal_grid *g = make("prime23", NULL);
    cr_assert_eq(g->size, 23);
    const double extra[] = {2. / 3, 1. / 4, 1. / 6, 1. / 8, 1. / 12};
    for (int i = 0; i < 5; i++) {
        int found = 0;
        for (int j = 0; j < g->size; j++)
            found += g->values[j] == (float)extra[i] || g->values[j] == (float)-extra[i];
        cr_assert_eq(found, 2, "±%g", extra[i]);
    }
    for (int j = 1; j < g->size; j++)
        cr_assert_gt(g->values[j], g->values[j - 1]);
    primal_grid_free(g);
}

Test(grid, prime_harmonic65k_matches_the_spec_sha256)
{
    primal_grid *g = make("prime_harmonic65k", NULL);
    cr_assert_eq(g->size, 65536);
    unsigned char md[32];
    SHA256((const unsigned char *)g->values, 65536 * sizeof(float), md);
    char hex[65];
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", md[i]);
    cr_assert_str_eq(hex, "88471695c0e83cdfa9cba2ff802767cf4bd37210ec4675866d28d27574342657");
    cr_assert_eq(g->values[0], -1.0f);
    cr_assert_float_eq(g->values[1], -0.9999695f, 1e-7);
    cr_assert_float_eq(g->values[2], -0.99993896f, 1e-7);
    primal_grid_free(g);
}

Test(grid, uniform_spans_minus_one_to_one_with_an_exact_zero_when_odd)
{
    const char *kv[] = {"size=5", NULL};
    primal_grid *g = make("uniform", kv);
    const float want[5] = {-1.0f, -0.5f, 0.0f, 0.5f, 1.0f};
    cr_assert_eq(g->size, 5);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(g->values[i], want[i]);
    cr_assert_str_eq(g->name, "uniform(size=5)");
    primal_grid_free(g);
}

Test(grid, uniform_refuses_a_size_of_one)
{
    const char *kv[] = {"size=1", NULL};
    primal_grid *g = NULL;
    primal_err err;
    cr_assert_eq(primal_grid_from_name(&search, "uniform", kv, &g, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "[grid] size: must be in [2,65536], got 1"), "%s", err.msg);
}

Test(grid, nf4_is_the_qlora_table)
{
    primal_grid *g = make("nf4", NULL);
    cr_assert_eq(g->size, 16);
    cr_assert_eq(g->values[7], 0.0f);
    cr_assert_float_eq(g->values[1], -0.6961928f, 1e-7);
    cr_assert_float_eq(g->values[14], 0.7229568f, 1e-7);
    primal_grid_free(g);
}

Test(grid, fp8_e4m3_has_253_values_with_the_subnormals)
{
    primal_grid *g = make("fp8_e4m3", NULL);
    cr_assert_eq(g->size, 253);
    cr_assert_eq(g->values[126], 0.0f);
    /* smallest subnormal 2^-9, next 2^-8; largest normal below 448 is 416 */
    cr_assert_eq(g->values[127], (float)(ldexp(1, -9) / 448.0));
    cr_assert_eq(g->values[128], (float)(ldexp(1, -8) / 448.0));
    cr_assert_eq(g->values[251], (float)(416.0 / 448.0));
    cr_assert_eq(g->values[252], 1.0f);
    primal_grid_free(g);
}

Test(grid, validation_refuses_unsorted_out_of_range_and_tiny_grids)
{
    primal_err err;
    const float unsorted[3] = {0.0f, -1.0f, 1.0f};
    cr_assert_eq(primal_grid_validate(unsorted, 3, "x", &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "not ascending and distinct"), "%s", err.msg);
    const float dup[3] = {-1.0f, 0.0f, 0.0f};
    cr_assert_eq(primal_grid_validate(dup, 3, "x", &err), PRIMAL_ECONFIG);
    const float wide[2] = {-1.0f, 1.5f};
    cr_assert_eq(primal_grid_validate(wide, 2, "x", &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "within [-1, 1]"), "%s", err.msg);
    const float one[1] = {0.0f};
    cr_assert_eq(primal_grid_validate(one, 1, "x", &err), PRIMAL_ECONFIG);
    const float nan2[2] = {-1.0f, NAN};
    cr_assert_eq(primal_grid_validate(nan2, 2, "x", &err), PRIMAL_ECONFIG);
}

/* lloyd_max.  The plugin divides the unit-variance levels by the outermost one; the outermost
 * level's own condition (it is the centroid E[X | X > t] of its cell [t, inf), t the midpoint of
 * the two outermost levels) gives that divisor s back, so the tests can compare the levels
 * before scaling with Max's Table I and check every cell's centroid condition. */

static double std_pdf(double x) { return exp(-0.5 * x * x) / sqrt(2.0 * M_PI); }
static double std_tail(double x) { return 0.5 * erfc(x / sqrt(2.0)); }

/* s such that E[X | X > s m] = s for the standard normal, m = (v[n-2] + v[n-1]) / 2 */
static double lm_outer(const float *v, int n)
{
    double m = 0.5 * ((double)v[n - 2] + (double)v[n - 1]), lo = 1e-3, hi = 20.0;
    for (int k = 0; k < 200; k++) {
        double s = 0.5 * (lo + hi);
        if (std_pdf(s * m) / std_tail(s * m) > s)
            lo = s;
        else
            hi = s;
    }
    return 0.5 * (lo + hi);
}

/* max over the cells of |level - centroid| / cell width, for the levels s v (normal) */
static double lm_centroid_error(const float *v, int n, double s)
{
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        double a = i > 0 ? s * 0.5 * ((double)v[i - 1] + v[i]) : -INFINITY;
        double b = i + 1 < n ? s * 0.5 * ((double)v[i] + v[i + 1]) : INFINITY;
        double mass = std_tail(a) - std_tail(b), c = (std_pdf(a) - std_pdf(b)) / mass;
        double width = isinf(a) ? 2.0 * (b - s * v[i]) : isinf(b) ? 2.0 * (s * v[i] - a) : b - a;
        worst = fmax(worst, fabs(s * v[i] - c) / width);
    }
    return worst;
}

static void lm_check_table(int size, const double *pos, int npos)
{
    char key[32];
    snprintf(key, sizeof key, "size=%d", size);
    const char *kv[] = {key, NULL};
    primal_grid *g = make("lloyd_max", kv);
    cr_assert_eq(g->size, size);
    cr_assert_eq(g->values[0], -1.0f);
    cr_assert_eq(g->values[size - 1], 1.0f);
    for (int i = 0; i < size; i++)
        cr_assert_eq(g->values[i], -g->values[size - 1 - i], "size %d: value %d not symmetric",
                     size, i);
    for (int i = 1; i < size; i++)
        cr_assert_gt(g->values[i], g->values[i - 1], "size %d: value %d", size, i);
    double s = lm_outer(g->values, size);
    /* Max's table has four significant digits */
    for (int i = 0; i < npos; i++)
        cr_assert_float_eq(s * g->values[size / 2 + i], pos[i], 6e-4 * pos[i],
                           "size %d: level %d is %.5f before scaling, Max: %.4f", size, i,
                           s * g->values[size / 2 + i], pos[i]);
    cr_assert_lt(lm_centroid_error(g->values, size, s), 1e-5, "size %d", size);
    primal_grid_free(g);
}

/* Two levels scale to exactly ±1 whatever the solver does, so this checks only that size 2 is
 * accepted and symmetric; lm_outer then gives Max's 0.7979 by construction. */
Test(grid, lloyd_max_size_2_is_plus_and_minus_one)
{
    const double pos[] = {0.7979};
    lm_check_table(2, pos, 1);
}

Test(grid, lloyd_max_size_4_matches_max_1960)
{
    const double pos[] = {0.4528, 1.510};
    lm_check_table(4, pos, 2);
}

Test(grid, lloyd_max_size_8_matches_max_1960)
{
    const double pos[] = {0.2451, 0.7560, 1.344, 2.152};
    lm_check_table(8, pos, 4);
}

Test(grid, lloyd_max_size_16_matches_max_1960)
{
    const double pos[] = {0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733};
    lm_check_table(16, pos, 8);
}

Test(grid, lloyd_max_default_is_16_and_odd_sizes_have_an_exact_zero)
{
    primal_grid *g = make("lloyd_max", NULL);
    cr_assert_eq(g->size, 16);
    cr_assert_str_eq(g->name, "lloyd_max(size=16,distribution=normal)");
    primal_grid_free(g);
    const int sizes[] = {3, 13, 255};
    for (int k = 0; k < 3; k++) {
        char key[32];
        snprintf(key, sizeof key, "size=%d", sizes[k]);
        const char *kv[] = {key, NULL};
        g = make("lloyd_max", kv);
        cr_assert_eq(g->size, sizes[k]);
        cr_assert_eq(g->values[sizes[k] / 2], 0.0f);
        for (int i = 1; i < g->size; i++)
            cr_assert_gt(g->values[i], g->values[i - 1], "size %d: value %d", sizes[k], i);
        double s = lm_outer(g->values, g->size);
        cr_assert_lt(lm_centroid_error(g->values, g->size, s), 1e-4, "size %d", sizes[k]);
        primal_grid_free(g);
    }
}

Test(grid, lloyd_max_65536_is_ascending_and_symmetric)
{
    const char *kv[] = {"size=65536", NULL};
    primal_grid *g = make("lloyd_max", kv);
    cr_assert_eq(g->size, 65536);
    for (int i = 1; i < g->size; i++)
        cr_assert_gt(g->values[i], g->values[i - 1], "value %d", i);
    for (int i = 0; i < g->size; i++)
        cr_assert_eq(g->values[i], -g->values[g->size - 1 - i], "value %d", i);
    /* the outermost unit-normal level for 65,536 levels: 7.2085 (mpmath, from the last cell) */
    cr_assert_float_eq(lm_outer(g->values, g->size), 7.2085, 1e-3);
    primal_grid_free(g);
}

Test(grid, lloyd_max_laplace_matches_adams_giesler_1978)
{
    /* unit-variance Laplace: size 4: ±0.4198, ±1.834; size 8: ±0.233, ±0.833, ±1.673, ±3.087
     * (Adams & Giesler 1978; Jayant & Noll, Table 4.4), here as ratios to the outermost */
    const char *kv4[] = {"size=4", "distribution=laplace", NULL};
    primal_grid *g = make("lloyd_max", kv4);
    cr_assert_float_eq(g->values[2], 0.4198 / 1.834, 3e-4);
    cr_assert_str_eq(g->name, "lloyd_max(size=4,distribution=laplace)");
    primal_grid_free(g);
    const char *kv8[] = {"size=8", "distribution=laplace", NULL};
    g = make("lloyd_max", kv8);
    const double pos[] = {0.233, 0.833, 1.673, 3.087};
    for (int i = 0; i < 4; i++)
        cr_assert_float_eq(g->values[4 + i], pos[i] / 3.087, 5e-4, "level %d", i);
    primal_grid_free(g);
}

Test(grid, lloyd_max_refuses_a_bad_size_or_distribution)
{
    primal_grid *g = NULL;
    primal_err err;
    const char *one[] = {"size=1", NULL};
    cr_assert_eq(primal_grid_from_name(&search, "lloyd_max", one, &g, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "[grid] size: must be in [2,65536], got 1"), "%s", err.msg);
    const char *big[] = {"size=65537", NULL};
    cr_assert_eq(primal_grid_from_name(&search, "lloyd_max", big, &g, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "[grid] size:"), "%s", err.msg);
    const char *dist[] = {"distribution=cauchy", NULL};
    cr_assert_eq(primal_grid_from_name(&search, "lloyd_max", dist, &g, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "distribution"), "%s", err.msg);
}
