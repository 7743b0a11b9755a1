/* Tests of the experiment file reader and key binding (core/config.c): every bad input is
 * refused with file:line, section and key; and of the rule of paths of an experiment
 * (core/experiment.c): relative to the file's directory when the file gives them, to the
 * current directory when --set does. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "config.h"
#include "experiment.h"

static const primal_key keys[] = {
    {"threshold", PRIMAL_KEY_INT, NULL, "required", "[1,32760]"},
    {"decay", PRIMAL_KEY_FLOAT, "0.95", "decay", "(0,1)"},
    {"stride", PRIMAL_KEY_ENUM, "one", "stride", "one|dynamic"},
    {"on", PRIMAL_KEY_BOOL, "false", "flag", NULL},
    {"note", PRIMAL_KEY_STRING, "", "text", NULL},
    {0},
};

static char path[256];

static primal_ini *load_text(const char *text, primal_err *err, int *rc)
{
    snprintf(path, sizeof path, "/tmp/primal-config-test-%d.ini", (int)getpid());
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    primal_ini *ini = NULL;
    *rc = primal_ini_load(path, &ini, err);
    unlink(path);
    return ini;
}

static int bind_text(const char *text, primal_config **cfg, primal_err *err)
{
    int rc;
    primal_ini *ini = load_text(text, err, &rc);
    if (rc != PRIMAL_OK)
        return rc;
    static const char *const ignore[] = {"plugin", NULL};
    rc = primal_config_bind(ini, "flip", keys, "tc", ignore, cfg, err);
    primal_ini_free(ini);
    return rc;
}

Test(config, reads_values_and_fills_defaults)
{
    primal_config *c = NULL;
    primal_err err;
    int rc = bind_text("[flip]\nplugin = tc\nthreshold = 7\non = yes\n", &c, &err);
    cr_assert_eq(rc, PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_cfg_int(c, "threshold"), 7);
    cr_assert_float_eq(primal_cfg_float(c, "decay"), 0.95, 1e-12);
    cr_assert_str_eq(primal_cfg_str(c, "stride"), "one");
    cr_assert_eq(primal_cfg_bool(c, "on"), 1);
    cr_assert_eq(primal_cfg_is_set(c, "threshold"), 1);
    cr_assert_eq(primal_cfg_is_set(c, "decay"), 0);
    primal_config_free(c);
}

Test(config, names_file_line_section_and_key_for_a_bad_integer)
{
    primal_config *c = NULL;
    primal_err err;
    int rc = bind_text("[run]\n\n[flip]\nplugin = tc\nthreshold = abc\n", &c, &err);
    cr_assert_eq(rc, PRIMAL_ECONFIG);
    char want[512];
    snprintf(want, sizeof want,
             "%s:5: [flip] threshold: expected an integer, got \"abc\"", path);
    cr_assert_str_eq(err.msg, want);
}

Test(config, refuses_an_unknown_key_listing_the_valid_ones)
{
    primal_config *c = NULL;
    primal_err err;
    int rc = bind_text("[flip]\nthreshold = 3\nthreshhold = 4\n", &c, &err);
    cr_assert_eq(rc, PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, ":3: [flip] threshhold: unknown key (tc accepts: threshold, "
                              "decay, stride, on, note)") != NULL, "%s", err.msg);
}

Test(config, refuses_out_of_range_values)
{
    primal_config *c = NULL;
    primal_err err;
    cr_assert_eq(bind_text("[flip]\nthreshold = 0\n", &c, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, ":2: [flip] threshold: must be in [1,32760], got 0"), "%s",
              err.msg);
    cr_assert_eq(bind_text("[flip]\nthreshold = 3\ndecay = 1\n", &c, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, ":3: [flip] decay: must be in (0,1), got 1"), "%s", err.msg);
    cr_assert_eq(bind_text("[flip]\nthreshold = 3\ndecay = nan\n", &c, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "[flip] decay: expected a finite number"), "%s", err.msg);
    cr_assert_eq(bind_text("[flip]\nthreshold = 3\nstride = fast\n", &c, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "[flip] stride: expected one of one|dynamic, got \"fast\""), "%s",
              err.msg);
    cr_assert_eq(bind_text("[flip]\nthreshold = 3\non = maybe\n", &c, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "[flip] on: expected true or false"), "%s", err.msg);
}

Test(config, refuses_a_missing_required_key)
{
    primal_config *c = NULL;
    primal_err err;
    cr_assert_eq(bind_text("[flip]\ndecay = 0.5\n", &c, &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, ":1: [flip] threshold: required by tc, not given"), "%s", err.msg);
}

Test(config, refuses_a_line_without_equals_with_its_line)
{
    primal_err err;
    int rc;
    primal_ini *ini = load_text("[run]\nsteps = 3\nthis line is wrong\n", &err, &rc);
    cr_assert_null(ini);
    cr_assert_eq(rc, PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, ":3: syntax error"), "%s", err.msg);
}

Test(config, refuses_a_key_given_twice)
{
    primal_err err;
    int rc;
    primal_ini *ini = load_text("[run]\nsteps = 3\nsteps = 4\n", &err, &rc);
    cr_assert_null(ini);
    cr_assert(strstr(err.msg, ":3: steps: key given twice (first at line 2)"), "%s", err.msg);
}

Test(config, refuses_an_overlong_line)
{
    primal_err err;
    int rc;
    char text[600] = "[run]\nnote = ";
    memset(text + strlen(text), 'x', 400);
    strcat(text, "\n");
    primal_ini *ini = load_text(text, &err, &rc);
    cr_assert_null(ini);
    cr_assert(strstr(err.msg, ":2: line too long"), "%s", err.msg);
}

Test(config, set_overrides_the_file_and_says_so_in_errors)
{
    primal_err err;
    int rc;
    primal_ini *ini = load_text("[flip]\nthreshold = 3\n", &err, &rc);
    cr_assert_eq(rc, PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_ini_set(ini, "flip.threshold=9", &err), PRIMAL_OK);
    primal_config *c = NULL;
    cr_assert_eq(primal_config_bind(ini, "flip", keys, "tc", NULL, &c, &err), PRIMAL_OK);
    cr_assert_eq(primal_cfg_int(c, "threshold"), 9);
    primal_config_free(c);
    cr_assert_eq(primal_ini_set(ini, "flip.decay=2", &err), PRIMAL_OK);
    cr_assert_eq(primal_config_bind(ini, "flip", keys, "tc", NULL, &c, &err), PRIMAL_ECONFIG);
    cr_assert(strncmp(err.msg, "--set: [flip] decay: must be in (0,1), got 2", 44) == 0, "%s",
              err.msg);
    cr_assert_eq(primal_ini_set(ini, "nodot=1", &err), PRIMAL_ECONFIG);
    primal_ini_free(ini);
}

Test(config, set_splits_section_names_at_the_last_dot)
{
    primal_err err;
    primal_ini *ini = primal_ini_new("x.ini");
    cr_assert_eq(primal_ini_set(ini, "grid.model.layers.*.mlp.down_proj.weight.plugin=nf4",
                                &err), PRIMAL_OK);
    cr_assert_str_eq(primal_ini_get(ini, "grid.model.layers.*.mlp.down_proj.weight", "plugin",
                                    NULL), "nf4");
    primal_ini_free(ini);
}

Test(config, refuses_sections_nobody_claims)
{
    primal_err err;
    int rc;
    primal_ini *ini = load_text("[run]\n[flpi]\nthreshold = 3\n", &err, &rc);
    cr_assert_eq(rc, PRIMAL_OK, "%s", err.msg);
    primal_ini_claim(ini, "run");
    cr_assert_eq(primal_ini_check_unused(ini, "known: run, flip", &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, ":2: [flpi]: unknown section (known: run, flip)"), "%s", err.msg);
    primal_ini_free(ini);
}

Test(config, plugin_errors_point_at_the_key)
{
    primal_config *c = NULL;
    primal_err err;
    cr_assert_eq(bind_text("[flip]\n\nthreshold = 3\n", &c, &err), PRIMAL_OK);
    int rc = primal_cfg_errf(c, "threshold", &err, PRIMAL_ECONFIG, "must be odd, got %d", 3);
    cr_assert_eq(rc, PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, ":3: [flip] threshold: must be odd, got 3"), "%s", err.msg);
    primal_config_free(c);
}

Test(config, refuses_a_directory_as_an_ini_file)
{
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/primal-config-test-dir-%d", (int)getpid());
    cr_assert_eq(mkdir(dir, 0700), 0);
    primal_ini *ini = NULL;
    primal_err err;
    int rc = primal_ini_load(dir, &ini, &err);
    rmdir(dir);
    cr_assert_eq(rc, PRIMAL_EIO);
    cr_assert_null(ini);
    char want[300];
    snprintf(want, sizeof want, "%s: is a directory, not an INI file", dir);
    cr_assert_str_eq(err.msg, want);
}

/* An experiment file at DIR/sub/NAME.ini (DIR a fresh directory under /tmp) with the given
 * text, loaded with sets from cwd; the plugins come from the build tree. */
static char exp_dir[256], exp_path[300];

static int load_exp(const char *name, const char *text, const char *const *sets,
                    primal_experiment **e, primal_err *err)
{
    snprintf(exp_dir, sizeof exp_dir, "/tmp/primal-config-test-exp-%d", (int)getpid());
    char sub[300];
    snprintf(sub, sizeof sub, "%s/sub", exp_dir);
    mkdir(exp_dir, 0700);
    mkdir(sub, 0700);
    snprintf(exp_path, sizeof exp_path, "%s/%s.ini", sub, name);
    FILE *f = fopen(exp_path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    static const char *const dirs[] = {
        PRIMAL_TEST_BUILDDIR "/grids/.libs", PRIMAL_TEST_BUILDDIR "/plugins/.libs",
        PRIMAL_TEST_BUILDDIR "/schedulers/.libs", PRIMAL_TEST_BUILDDIR "/loaders/.libs", NULL};
    int rc = primal_experiment_load(exp_path, sets, dirs, e, err);
    unlink(exp_path);
    rmdir(sub);
    rmdir(exp_dir);
    return rc;
}

static const char paths_ini[] = "[run]\nout = ../o\n\n[model]\ninit = ../m.safetensors\n\n"
                                "[data]\ntokenizer = ../t.json\npath = ../d.txt\n"
                                "val_path = v.txt, /abs/w.txt\n";

static const char *data_key(const primal_experiment *e, const char *key)
{
    return primal_cfg_str(e->loader_c, key);
}

Test(experiment, resolves_the_files_relative_paths_against_its_directory)
{
    primal_experiment *e = NULL;
    primal_err err;
    cr_assert_eq(load_exp("paths", paths_ini, NULL, &e, &err), PRIMAL_OK, "%s", err.msg);
    char want[600];
    snprintf(want, sizeof want, "%s/sub/../o", exp_dir);
    cr_assert_str_eq(e->run.out, want);
    snprintf(want, sizeof want, "%s/sub/../m.safetensors", exp_dir);
    cr_assert_str_eq(e->model_init, want);
    snprintf(want, sizeof want, "%s/sub/../t.json", exp_dir);
    cr_assert_str_eq(e->tokenizer, want);
    /* the loader joins its paths onto primal_cfg_dir itself (core/datafiles.c) */
    snprintf(want, sizeof want, "%s/sub", exp_dir);
    cr_assert_str_eq(primal_cfg_dir(e->loader_c), want);
    cr_assert_str_eq(data_key(e, "path"), "../d.txt");
    cr_assert_str_eq(data_key(e, "val_path"), "v.txt, /abs/w.txt");
    /* the resolved configuration shows the run directory */
    char *ini = primal_experiment_resolved(e);
    snprintf(want, sizeof want, "[run]\nout = %s/sub/../o\n", exp_dir);
    cr_assert(strncmp(ini, want, strlen(want)) == 0, "%s", ini);
    free(ini);
    primal_experiment_free(e);
}

Test(experiment, resolves_set_relative_paths_against_the_current_directory)
{
    static const char *const sets[] = {"run.out=o2", "model.init=m2", "data.tokenizer=t2.json",
                                       "data.path=d2.txt, /abs/d3.txt", "data.val_path=v2.txt",
                                       NULL};
    primal_experiment *e = NULL;
    primal_err err;
    cr_assert_eq(load_exp("paths", paths_ini, sets, &e, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_str_eq(e->run.out, "o2");
    cr_assert_str_eq(e->model_init, "m2");
    cr_assert_str_eq(e->tokenizer, "t2.json");
    char cwd[PATH_MAX], want[PATH_MAX + 64];
    cr_assert_not_null(getcwd(cwd, sizeof cwd));
    snprintf(want, sizeof want, "%s/d2.txt,/abs/d3.txt", cwd);
    cr_assert_str_eq(data_key(e, "path"), want);
    snprintf(want, sizeof want, "%s/v2.txt", cwd);
    cr_assert_str_eq(data_key(e, "val_path"), want);
    primal_experiment_free(e);
}

Test(experiment, puts_the_default_run_directory_in_the_current_directory)
{
    primal_experiment *e = NULL;
    primal_err err;
    cr_assert_eq(load_exp("my.exp", "[data]\npath = d.txt\n", NULL, &e, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_str_eq(e->run.out, "runs/my.exp"); /* the name less its last extension */
    cr_assert_str_eq(e->model_init, "random");
    cr_assert_str_eq(e->tokenizer, "bytes");
    primal_experiment_free(e);
}
