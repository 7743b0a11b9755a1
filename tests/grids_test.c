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
