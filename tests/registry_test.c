/* Tests of plugin loading (core/registry.c): real plugins load by name along the search path;
 * every kind of bad .so is refused with its path and the reason; a plugin path resolves against
 * the experiment file's directory, must end in .so and must exist before anything is opened. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

Test(registry, refuses_a_cuda_vtable_missing_a_required_member)
{
    primal_err err;
    cr_assert_eq(load_bad("bad_cuda_vtable", PRIMAL_KIND_POLICY, &err), PRIMAL_EABI);
    cr_assert(strstr(err.msg, "flip policy CUDA vtable (.cuda) lacks the required member "
                              "state_download"),
              "%s", err.msg);
}

Test(registry, refuses_a_cuda_vtable_too_small_for_its_required_members)
{
    primal_err err;
    cr_assert_eq(load_bad("bad_cuda_size", PRIMAL_KIND_POLICY, &err), PRIMAL_EABI);
    cr_assert(strstr(err.msg, "flip policy CUDA vtable (.cuda) is 0 bytes, too small for its "
                              "required members"),
              "%s", err.msg);
}

Test(registry, refuses_a_default_outside_its_own_range)
{
    primal_err err;
    cr_assert_eq(load_bad("bad_default", PRIMAL_KIND_GRID, &err), PRIMAL_EABI);
    cr_assert(strstr(err.msg, "key 'size' default: must be in [1,10], got 0"), "%s", err.msg);
}

/* A fresh directory under TMPDIR (Criterion runs each test in its own process). */
static void tmpdir(char *dir, size_t n)
{
    const char *t = getenv("TMPDIR");
    snprintf(dir, n, "%s/primal-registry.XXXXXX", t && *t ? t : "/tmp");
    cr_assert_not_null(mkdtemp(dir));
}

Test(registry, refuses_a_file_that_is_not_a_shared_object)
{
    primal_err err;
    char dir[512], path[1024];
    tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/text.so", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("not an ELF file\n", f);
    fclose(f);
    primal_loaded *p = NULL;
    cr_assert_eq(primal_plugin_load(&search, path, PRIMAL_KIND_GRID, &p, &err), PRIMAL_EABI);
    cr_assert(strstr(err.msg, "cannot load") != NULL, "%s", err.msg);
    remove(path);
    rmdir(dir);
}

Test(registry, refuses_a_path_without_the_so_suffix_before_opening_it)
{
    /* a real plugin behind a name without .so: refused all the same */
    char dir[512], path[1024];
    tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/prime13", dir);
    cr_assert_eq(symlink(PRIMAL_TEST_BUILDDIR "/grids/.libs/prime13.so", path), 0);
    primal_err err;
    primal_loaded *p = NULL;
    cr_assert_eq(primal_plugin_load(&search, path, PRIMAL_KIND_GRID, &p, &err), PRIMAL_ECONFIG);
    cr_assert_null(p);
    char want[1200];
    snprintf(want, sizeof want, "'%s': a plugin path must name a .so file", path);
    cr_assert_str_eq(err.msg, want);
    remove(path);
    rmdir(dir);
}

Test(registry, resolves_a_relative_path_against_the_experiment_files_directory)
{
    /* the test runs elsewhere: only the experiment file's directory holds ./prime13.so */
    primal_err err;
    cr_assert_eq(chdir("/"), 0);
    cr_assert_eq(primal_search_relative_to(&search, PRIMAL_TEST_BUILDDIR "/grids/.libs/exp.ini",
                                           &err),
                 PRIMAL_OK);
    primal_loaded *p = NULL;
    cr_assert_eq(primal_plugin_load(&search, "./prime13.so", PRIMAL_KIND_GRID, &p, &err),
                 PRIMAL_OK, "%s", err.msg);
    cr_assert_str_eq(p->path, PRIMAL_TEST_BUILDDIR "/grids/.libs/prime13.so");
    primal_plugin_unload(p);
    /* and against the current directory once the value is the command line's */
    cr_assert_eq(primal_search_relative_to(&search, NULL, &err), PRIMAL_OK);
    cr_assert_eq(primal_plugin_load(&search, "./prime13.so", PRIMAL_KIND_GRID, &p, &err),
                 PRIMAL_ECONFIG);
    cr_assert_str_eq(err.msg, "./prime13.so: no such file");
    cr_assert_eq(chdir(PRIMAL_TEST_BUILDDIR "/grids"), 0);
    cr_assert_eq(primal_plugin_load(&search, ".libs/prime13.so", PRIMAL_KIND_GRID, &p, &err),
                 PRIMAL_OK, "%s", err.msg);
    primal_plugin_unload(p);
}

Test(registry, refuses_a_missing_relative_path_naming_the_file_it_looked_for)
{
    primal_err err;
    cr_assert_eq(primal_search_relative_to(&search, "/no/such/dir/exp.ini", &err), PRIMAL_OK);
    primal_loaded *p = NULL;
    cr_assert_eq(primal_plugin_load(&search, "plugins/mine.so", PRIMAL_KIND_GRID, &p, &err),
                 PRIMAL_ECONFIG);
    cr_assert_str_eq(err.msg, "/no/such/dir/plugins/mine.so: no such file");
}

Test(registry, refuses_a_directory_named_like_a_plugin)
{
    char dir[512], path[1024];
    tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/sub.so", dir);
    cr_assert_eq(mkdir(path, 0700), 0);
    primal_err err;
    primal_loaded *p = NULL;
    cr_assert_eq(primal_plugin_load(&search, path, PRIMAL_KIND_GRID, &p, &err), PRIMAL_ECONFIG);
    char want[1200];
    snprintf(want, sizeof want, "%s: not a regular file", path);
    cr_assert_str_eq(err.msg, want);
    rmdir(path);
    rmdir(dir);
}

Test(registry, the_uninstalled_library_searches_the_build_tree)
{
    /* this test runs the build tree's libprimal (core/.libs); an installed one does not search
     * the build tree (tests/install_test.sh) */
    cr_assert_eq(primal_search_in_build_tree(), 1);
    int found = 0;
    for (int i = 0; i < search.n; i++)
        found |= strcmp(search.dirs[i], PRIMAL_TEST_BUILDDIR "/grids/.libs") == 0;
    cr_assert(found, "the search path lacks the build tree's grids/.libs");
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
