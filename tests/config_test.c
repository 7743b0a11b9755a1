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

/* inih cuts a section name at 49 characters (its MAX_SECTION), so a longer [header] made two
 * sections: the whole name, empty, and the cut one with the header's keys (an override with
 * [grid]'s plugin instead of its own).  It is refused, naming the line and the section. */
Test(config, refuses_a_section_name_longer_than_49_characters)
{
    static const char name[] = "grid.model.layers.*.self_attn.q_proj.weight*************"; /* 56 */
    char text[300];
    snprintf(text, sizeof text, "[grid]\nplugin = prime13\n\n[%s]\nplugin = uniform\n", name);
    primal_err err;
    int rc;
    primal_ini *ini = load_text(text, &err, &rc);
    cr_assert_null(ini);
    cr_assert_eq(rc, PRIMAL_ECONFIG);
    char want[600];
    snprintf(want, sizeof want, "%s:4: [%.49s...]: section name longer than 49 characters", path,
             name);
    cr_assert_str_eq(err.msg, want);
    /* 49 characters are read whole, with their keys */
    snprintf(text, sizeof text, "[%.49s]\nplugin = uniform\n", name);
    ini = load_text(text, &err, &rc);
    cr_assert_eq(rc, PRIMAL_OK, "%s", err.msg);
    char cut[50];
    snprintf(cut, sizeof cut, "%.49s", name);
    cr_assert_eq(primal_ini_nsections(ini), 1);
    cr_assert_str_eq(primal_ini_get(ini, cut, "plugin", NULL), "uniform");
    primal_ini_free(ini);
}

Test(config, set_refuses_a_section_name_a_header_could_not_hold)
{
    primal_err err;
    primal_ini *ini = primal_ini_new("x.ini");
    cr_assert_eq(primal_ini_set(ini, "grid.model.layers.*.self_attn.q_proj.weight*************."
                                     "plugin=uniform", &err), PRIMAL_ECONFIG);
    cr_assert_str_eq(err.msg, "--set: [grid.model.layers.*.self_attn.q_proj.weight******...]: "
                              "section name longer than 49 characters");
    cr_assert_eq(primal_ini_set(ini, "grid.a]b.plugin=uniform", &err), PRIMAL_ECONFIG);
    cr_assert_str_eq(err.msg, "--set: [grid.a]b]: section name holds ']', which ends it");
    cr_assert_eq(primal_ini_set(ini, "grid.a ;b.plugin=uniform", &err), PRIMAL_ECONFIG);
    cr_assert(strstr(err.msg, "--set: [grid.a ;b]: section name holds a ';' after white space"),
              "%s", err.msg);
    cr_assert_eq(primal_ini_nsections(ini), 0);
    /* 49 characters pass */
    cr_assert_eq(primal_ini_set(ini, "grid.model.layers.*.self_attn.q_proj.weight******.plugin=u",
                                &err), PRIMAL_OK, "%s", err.msg);
    primal_ini_free(ini);
}

/* A --set value is read as the same text on a file's line would be: cut at an inline comment
 * (';' after white space), without trailing white space; before, --set kept "Hi ;there " while
 * config.ini read back "Hi". */
Test(config, set_reads_a_value_as_a_files_line_does)
{
    static const char *const values[] = {"Hi ;there ", "a b\t ", "x;y", "  ;v", "", "p ; q ;r",
                                         "tab\t;c"};
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        char text[200], set[200];
        snprintf(text, sizeof text, "[run]\nnote =%s\n", values[i]);
        primal_err err;
        int rc;
        primal_ini *file = load_text(text, &err, &rc);
        cr_assert_eq(rc, PRIMAL_OK, "%s: %s", values[i], err.msg);
        primal_ini *ini = primal_ini_new("x.ini");
        snprintf(set, sizeof set, "run.note=%s", values[i]);
        cr_assert_eq(primal_ini_set(ini, set, &err), PRIMAL_OK, "%s", err.msg);
        cr_assert_str_eq(primal_ini_get(ini, "run", "note", NULL),
                         primal_ini_get(file, "run", "note", NULL), "value \"%s\"", values[i]);
        primal_ini_free(ini);
        primal_ini_free(file);
    }
    primal_ini *ini = primal_ini_new("x.ini");
    primal_err err;
    cr_assert_eq(primal_ini_set(ini, "run.sample_prompt=Hi ;there ", &err), PRIMAL_OK);
    cr_assert_str_eq(primal_ini_get(ini, "run", "sample_prompt", NULL), "Hi");
    cr_assert_eq(primal_ini_set(ini, "run.sample_prompt=a\nb", &err), PRIMAL_ECONFIG);
    cr_assert_str_eq(err.msg, "--set: [run] sample_prompt: a value may not hold a line break");
    primal_ini_free(ini);
}

/* "key =;v" reads as ";v" (no white space before the ';'), but config.ini writes it back as
 * "key = ;v", which reads as empty: a value starting with ';' is refused, from the file and from
 * --set. */
Test(config, refuses_a_value_starting_with_a_semicolon)
{
    primal_err err;
    int rc;
    primal_ini *ini = load_text("[run]\nsteps = 3\nsample_prompt =;Hi\n", &err, &rc);
    cr_assert_null(ini);
    cr_assert_eq(rc, PRIMAL_ECONFIG);
    char want[600];
    snprintf(want, sizeof want,
             "%s:3: [run] sample_prompt: a value may not start with ';' (written back as "
             "\"sample_prompt = ;...\" in the resolved configuration, it would read as a "
             "comment)", path);
    cr_assert_str_eq(err.msg, want);
    ini = primal_ini_new("x.ini");
    cr_assert_eq(primal_ini_set(ini, "run.sample_prompt=;Hi", &err), PRIMAL_ECONFIG);
    cr_assert(strncmp(err.msg, "--set: [run] sample_prompt: a value may not start with ';'", 58)
                  == 0, "%s", err.msg);
    /* after white space it is a comment, in the file and in --set alike */
    cr_assert_eq(primal_ini_set(ini, "run.sample_prompt= ;Hi", &err), PRIMAL_OK);
    cr_assert_str_eq(primal_ini_get(ini, "run", "sample_prompt", NULL), "");
    primal_ini_free(ini);
}

Test(config, value_and_section_problems)
{
    cr_assert_null(primal_ini_value_problem("a;b c"));
    cr_assert_null(primal_ini_value_problem(""));
    cr_assert_not_null(primal_ini_value_problem(";a"));
    cr_assert_not_null(primal_ini_value_problem("a ;b"));
    cr_assert_not_null(primal_ini_value_problem(" a"));
    cr_assert_not_null(primal_ini_value_problem("a\t"));
    cr_assert_not_null(primal_ini_value_problem("a\nb"));
    cr_assert_null(primal_ini_section_problem("grid.model.layers.*.mlp.down_proj.weight"));
    cr_assert_not_null(primal_ini_section_problem("grid.a]"));
    cr_assert_not_null(primal_ini_section_problem("grid.a\t;b"));
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
    char cwd[PATH_MAX], want[PATH_MAX + 64];
    cr_assert_not_null(getcwd(cwd, sizeof cwd));
    /* the tokenizer made absolute, as the data paths: config.ini names the same file when it is
     * read again, from elsewhere */
    snprintf(want, sizeof want, "%s/t2.json", cwd);
    cr_assert_str_eq(e->tokenizer, want);
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

/* text without its "out = " line ([run]'s: a relative default resolves otherwise from a file) */
static void drop_out(char *text)
{
    char *o = strstr(text, "\nout = ");
    if (o != NULL) {
        char *nl = strchr(o + 1, '\n');
        memmove(o, nl, strlen(nl) + 1);
    }
}

/* The resolved configuration (config.ini) of e loads again, as a file in /tmp, and resolves to
 * the same text ([run] out aside). */
static void expect_round_trip(primal_experiment *e)
{
    char *text = primal_experiment_resolved(e);
    cr_assert_not_null(text);
    char again_path[400];
    snprintf(again_path, sizeof again_path, "/tmp/primal-config-test-again-%d.ini",
             (int)getpid());
    FILE *f = fopen(again_path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    static const char *const dirs[] = {
        PRIMAL_TEST_BUILDDIR "/grids/.libs", PRIMAL_TEST_BUILDDIR "/plugins/.libs",
        PRIMAL_TEST_BUILDDIR "/schedulers/.libs", PRIMAL_TEST_BUILDDIR "/loaders/.libs", NULL};
    primal_experiment *e2 = NULL;
    primal_err err;
    int rc = primal_experiment_load(again_path, NULL, dirs, &e2, &err);
    unlink(again_path);
    cr_assert_eq(rc, PRIMAL_OK, "config.ini does not load again: %s\n%s", err.msg, text);
    char *text2 = primal_experiment_resolved(e2);
    drop_out(text);
    drop_out(text2);
    cr_assert_str_eq(text2, text);
    free(text2);
    free(text);
    primal_experiment_free(e2);
}

/* --set run.sample_prompt="Hi ;there ": the run used "Hi ;there " and config.ini read back "Hi";
 * now --set reads it as the file would, "Hi", and config.ini gives the same. */
Test(experiment, set_values_read_back_from_the_resolved_configuration)
{
    static const char *const sets[] = {"run.sample_prompt=Hi ;there ", "run.out=/tmp/o",
                                       "data.tokenizer=" PRIMAL_TEST_FIXTURES
                                       "/qwen-tokenizer/tokenizer.json\t",
                                       "data.path=/tmp/d.txt ", NULL};
    primal_experiment *e = NULL;
    primal_err err;
    cr_assert_eq(load_exp("set", "[data]\npath = d.txt\n", sets, &e, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_str_eq(e->run.sample_prompt, "Hi");
    cr_assert_str_eq(e->tokenizer, PRIMAL_TEST_FIXTURES "/qwen-tokenizer/tokenizer.json");
    cr_assert_str_eq(data_key(e, "path"), "/tmp/d.txt");
    expect_round_trip(e);
    primal_experiment_free(e);
}

/* A 49-character [grid.PATTERN] override keeps its own plugin, and config.ini holds it. */
Test(experiment, a_49_character_override_round_trips)
{
    primal_experiment *e = NULL;
    primal_err err;
    cr_assert_eq(load_exp("o49", "[grid]\nplugin = prime13\n\n"
                                 "[grid.model.layers.*.self_attn.q_proj.weight******]\n"
                                 "plugin = uniform\nsize = 16\n\n[data]\npath = d.txt\n",
                          NULL, &e, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(e->n_overrides, 1);
    cr_assert_eq(e->overrides[0].grid->size, 16);
    expect_round_trip(e);
    primal_experiment_free(e);
}

/* The reader takes lines of at most 198 characters, but resolving joins a relative path onto
 * the file's directory: a path that config.ini could not hold is refused when the file is read,
 * with its line, rather than when config.ini is read again. */
Test(experiment, refuses_a_path_too_long_for_config_ini_once_made_absolute)
{
    char text[400], tok[200];
    memset(tok, 't', 180);
    strcpy(tok + 180, ".json"); /* 185: the line "tokenizer = ..." is 197 characters */
    snprintf(text, sizeof text, "[run]\nsteps = 1\n\n[data]\npath = d.txt\ntokenizer = %s\n",
             tok);
    primal_experiment *e = NULL;
    primal_err err;
    cr_assert_eq(load_exp("long", text, NULL, &e, &err), PRIMAL_ECONFIG, "%s", err.msg);
    cr_assert_null(e);
    char want[600], value[400];
    snprintf(value, sizeof value, "%s/sub/%s", exp_dir, tok);
    snprintf(want, sizeof want, "%s:6: [data] tokenizer: path longer than 186 characters once "
             "made absolute (%zu: %.40s...), more than a line of the resolved configuration "
             "(config.ini) holds (198)", exp_path, strlen(value), value);
    cr_assert_str_eq(err.msg, want);
    /* [model] init and [data] path are written as given: 185 characters pass */
    snprintf(text, sizeof text, "[model]\ninit = %s\n\n[data]\npath = %s\n", tok, tok);
    cr_assert_eq(load_exp("long", text, NULL, &e, &err), PRIMAL_OK, "%s", err.msg);
    primal_experiment_free(e);
}

/* "key=value" comes back as "key = value", and a --set value has no line to keep to: a value
 * config.ini could not hold is refused, naming where it came from. */
Test(experiment, refuses_a_value_too_long_for_config_ini)
{
    char text[400], set[400];
    char v[200];
    memset(v, 'x', 184);
    v[184] = '\0';
    /* "sample_prompt=" + 184 = 198 characters: the file's line holds, config.ini's would not */
    snprintf(text, sizeof text, "[run]\nsample_prompt=%s\n\n[data]\npath = d.txt\n", v);
    primal_experiment *e = NULL;
    primal_err err;
    cr_assert_eq(load_exp("long", text, NULL, &e, &err), PRIMAL_ECONFIG);
    char want[600];
    snprintf(want, sizeof want, "%s:2: [run] sample_prompt: value longer than 182 characters "
             "(184: %.40s...), more than a line of the resolved configuration (config.ini) "
             "holds (198)", exp_path, v);
    cr_assert_str_eq(err.msg, want);
    snprintf(set, sizeof set, "run.sample_prompt=%s", v);
    const char *const sets[] = {set, NULL};
    cr_assert_eq(load_exp("long", "[data]\npath = d.txt\n", sets, &e, &err), PRIMAL_ECONFIG);
    cr_assert(strncmp(err.msg, "--set: [run] sample_prompt: value longer than 182 characters",
                      60) == 0, "%s", err.msg);
    /* 182 pass, and round-trip */
    v[182] = '\0';
    snprintf(set, sizeof set, "run.sample_prompt=%s", v);
    cr_assert_eq(load_exp("long", "[data]\npath = d.txt\n", sets, &e, &err), PRIMAL_OK, "%s",
                 err.msg);
    expect_round_trip(e);
    primal_experiment_free(e);
}

/* [data] tokenizer naming a directory: --check said "DIR:1:0: not valid JSON"; it says what
 * the path is, after the experiment file's line (issue 25). */
Test(experiment, check_names_a_tokenizer_directory_and_its_line)
{
    static const char *const sets[] = {"data.tokenizer=" PRIMAL_TEST_FIXTURES "/qwen-tokenizer",
                                       NULL};
    primal_experiment *e = NULL;
    primal_err err;
    char text[400];
    snprintf(text, sizeof text, "[data]\npath = d.txt\ntokenizer = %s/qwen-tokenizer\n",
             PRIMAL_TEST_FIXTURES);
    cr_assert_eq(load_exp("tokdir", text, NULL, &e, &err), PRIMAL_OK, "%s", err.msg);
    cr_assert_eq(primal_experiment_check(e, &err), PRIMAL_EIO);
    char want[700];
    snprintf(want, sizeof want, "%s:3: [data] tokenizer: %s/qwen-tokenizer: is a directory, not a "
             "tokenizer.json", exp_path, PRIMAL_TEST_FIXTURES);
    cr_assert_str_eq(err.msg, want);
    primal_experiment_free(e);
    cr_assert_eq(load_exp("tokdir", "[data]\npath = d.txt\n", sets, &e, &err), PRIMAL_OK, "%s",
                 err.msg);
    cr_assert_eq(primal_experiment_check(e, &err), PRIMAL_EIO);
    snprintf(want, sizeof want, "--set: [data] tokenizer: %s/qwen-tokenizer: is a directory, not "
             "a tokenizer.json", PRIMAL_TEST_FIXTURES);
    cr_assert_str_eq(err.msg, want);
    primal_experiment_free(e);
}
