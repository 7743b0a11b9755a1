/* Tests of plugin loading (core/registry.c): real plugins load by name along the search path;
 * every kind of bad .so is refused with its path and the reason. */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "registry.h"

static primal_search search;

static void setup(void)
{
    primal_err err;
    cr_assert_eq(primal_search_init(&search, NULL, &err), PRIMAL_OK);
}

static void teardown(void) { primal_search_free(&search); }

static int load_bad(const char *name, primal_kind kind, primal_err *err)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/plugins/.libs/%s.so", PRIMAL_TEST_BUILDDIR, name);
    primal_loaded *p = NULL;
    int rc = primal_plugin_load(&search, path, kind, &p, err);
    cr_assert_null(p);
    cr_assert(strstr(err->msg, path) != NULL, "message does not name the file: %s", err->msg);
    return rc;
}

TestSuite(registry, .init = setup, .fini = teardown);

Test(registry, loads_a_grid_plugin_by_name_from_the_build_tree)
{
    primal_loaded *p = NULL;
    primal_err err;
    cr_assert_eq(primal_plugin_load(&search, "prime13", PRIMAL_KIND_GRID, &p, &err), PRIMAL_OK,
                 "%s", err.msg);
    cr_assert_str_eq(p->desc->name, "prime13");
    cr_assert(strstr(p->path, "/grids/.libs/prime13.so") != NULL, "%s", p->path);
    primal_plugin_unload(p);
}

Test(registry, refuses_an_unknown_name_listing_where_it_looked)
{
    primal_loaded *p = NULL;
    primal_err err;
    cr_assert_eq(primal_plugin_load(&search, "prime14", PRIMAL_KIND_GRID, &p, &err),
                 PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "no grid plugin named 'prime14' (searched ") != NULL, "%s",
              err.msg);
}

Test(registry, refuses_a_plugin_of_the_wrong_kind)
{
    primal_err err;
    cr_assert_eq(load_bad("bad_kind", PRIMAL_KIND_GRID, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "'bad_kind' is a scheduler plugin, a grid is needed here"), "%s",
              err.msg);
}

Test(registry, refuses_a_plugin_built_for_another_abi)
{
    primal_err err;
    cr_assert_eq(load_bad("bad_abi", PRIMAL_KIND_GRID, &err), PRIMAL_EABI);
    char want[96];
    snprintf(want, sizeof want, "built for plugin ABI 2.0, this PRIMAL has ABI %d.%d",
             PRIMAL_ABI_MAJOR, PRIMAL_ABI_MINOR);
    cr_assert(strstr(err.msg, want), "%s", err.msg);
}

Test(registry, refuses_a_shared_object_that_is_not_a_plugin)
{
    primal_err err;
    cr_assert_eq(load_bad("bad_nosym", PRIMAL_KIND_GRID, &err), PRIMAL_EABI);
    cr_assert(strstr(err.msg, "not a PRIMAL plugin (no primal_plugin_descriptor symbol)"), "%s",
              err.msg);
}

Test(registry, refuses_a_vtable_missing_a_required_member)
{
    primal_err err;
    cr_assert_eq(load_bad("bad_vtable", PRIMAL_KIND_GRID, &err), PRIMAL_EABI);
    cr_assert(strstr(err.msg, "grid vtable lacks the required member generate"), "%s",
              err.msg);
}

Test(registry, refuses_a_default_outside_its_own_range)
{
    primal_err err;
    cr_assert_eq(load_bad("bad_default", PRIMAL_KIND_GRID, &err), PRIMAL_EABI);
    cr_assert(strstr(err.msg, "key 'size' default: must be in [1,10], got 0"), "%s", err.msg);
}

Test(registry, refuses_a_file_that_is_not_a_shared_object)
{
    primal_err err;
    char path[1024];
    snprintf(path, sizeof path, "%s/../registry_test.c", PRIMAL_TEST_FIXTURES);
    primal_loaded *p = NULL;
    cr_assert_eq(primal_plugin_load(&search, path, PRIMAL_KIND_GRID, &p, &err), PRIMAL_EABI);
    cr_assert(strstr(err.msg, "cannot load") != NULL, "%s", err.msg);
}

Test(registry, refuses_a_path_that_does_not_exist)
{
    primal_err err;
    primal_loaded *p = NULL;
    cr_assert_eq(primal_plugin_load(&search, "/no/such/plugin.so", PRIMAL_KIND_GRID, &p, &err),
                 PRIMAL_ECONFIG);
    cr_assert_str_eq(err.msg, "/no/such/plugin.so: no such file");
}

static int seen_prime13, seen_bad;
static void count(void *user, const char *path, const primal_plugin *d, const char *msg)
{
    (void)user;
    (void)path;
    if (d != NULL && strcmp(d->name, "prime13") == 0)
        seen_prime13++;
    if (d == NULL && msg != NULL)
        seen_bad++;
}

Test(registry, lists_every_plugin_once)
{
    primal_search s2;
    primal_err err;
    const char *extra[] = {PRIMAL_TEST_BUILDDIR "/grids/.libs", NULL};
    cr_assert_eq(primal_search_init(&s2, extra, &err), PRIMAL_OK);
    primal_plugin_list(&s2, count, NULL);
    cr_assert_eq(seen_prime13, 1);
    primal_search_free(&s2);
}
