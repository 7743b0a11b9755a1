/* fuzz_experiment.c: the experiment file (core/config.c, core/experiment.c, core/registry.c,
 * core/grid.c) as primal-run reads it, without training.
 *
 * The input is an INI text, optionally followed by a NUL byte and up to 8 `--set` assignments
 * ("section.key=value"), one a line.  The text is written to exp.ini in the harness's scratch
 * directory, which also holds d.txt, v.txt and s.jsonl (small files for the loaders), and loaded
 * with primal_experiment_load, the sanitised plugins of the harness build on the search path.
 * A refusal must come with a message.  A file that loads is then:
 *   - resolved (primal_experiment_resolved, the text primal-run writes to config.ini), and that
 *     text loaded again: it must load, and resolve to the same text ([run] out aside, which a
 *     relative default resolves differently from a file);
 *   - checked as primal-run starts a run (primal_experiment_check_run for one rank), and its grid
 *     for a few tensor names looked up ([grid.PATTERN] overrides are fnmatch patterns);
 *   - checked as primal-run --check does (primal_experiment_check: the policy and schedulers
 *     created with the fuzzed keys, the loader's splits opened), only where that reads nothing
 *     outside the scratch directory: tokenizer "bytes", [model] init random, and [data] path and
 *     val_path plain file names. */
#include <stdlib.h>
#include <string.h>

#include "experiment.h"
#include "fuzz.h"

#define MAX_SETS 8

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    unsetenv("PRIMAL_PLUGIN_PATH"); /* only the harness build's plugins */
    fuzz_pin_plugins();
    static const char d[] = "In the beginning God created the heaven and the earth.\n"
                            "And the earth was without form, and void.\n\n"
                            "And God said, Let there be light: and there was light.\n";
    static const char v[] = "And God saw the light, that it was good.\n";
    static const char sft[] = "{\"prompt\": \"Hi\", \"response\": \"Yo\"}\n"
                              "{\"prompt\": \"Who?\", \"response\": \"Moses\"}\n";
    fuzz_write("d.txt", d, sizeof d - 1);
    fuzz_write("v.txt", v, sizeof v - 1);
    fuzz_write("s.jsonl", sft, sizeof sft - 1);
    return 0;
}

static const char *const plugin_dirs[] = {FUZZ_PLUGIN_DIR, NULL};

/* A [data] path value that names files of the scratch directory only: no '/', no glob. */
static int plain_names(const char *v)
{
    if (v == NULL)
        return 1;
    for (const char *c = v; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '.' || *c == '_' || *c == '-' || *c == ',' || *c == ' '))
            return 0;
    return strstr(v, "..") == NULL;
}

/* text without its "out = " lines (the first of each section is [run]'s). */
static char *without_out(const char *text)
{
    char *s = strdup(text);
    if (s == NULL)
        fuzz_fail("out of memory");
    char *w = s;
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) + 1 : strlen(line);
        if (strncmp(line, "out = ", 6) != 0) {
            memcpy(w, line, n);
            w += n;
        }
        line += n;
    }
    *w = '\0';
    return s;
}

static void reload(const char *resolved)
{
    char path[1024];
    fuzz_path("resolved.ini", path, sizeof path);
    fuzz_write("resolved.ini", resolved, strlen(resolved));
    primal_experiment *e2 = NULL;
    primal_err err = {0};
    int rc = primal_experiment_load(path, NULL, plugin_dirs, &e2, &err);
    if (rc != PRIMAL_OK)
        fuzz_fail("the resolved configuration does not load again: %s\n--- resolved:\n%s",
                  err.msg, resolved);
    char *again = primal_experiment_resolved(e2);
    if (again == NULL)
        fuzz_fail("primal_experiment_resolved returned NULL");
    char *a = without_out(resolved), *b = without_out(again);
    if (strcmp(a, b) != 0)
        fuzz_fail("the resolved configuration resolves to another text\n--- first:\n%s\n"
                  "--- second:\n%s", resolved, again);
    free(a);
    free(b);
    free(again);
    primal_experiment_free(e2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, '\0', size);
    size_t ini_n = nul ? (size_t)(nul - data) : size;
    const char *path = fuzz_write("exp.ini", data, ini_n);
    char pathbuf[1024];
    snprintf(pathbuf, sizeof pathbuf, "%s", path);

    /* the --set lines after the NUL, as NUL-terminated strings */
    char *sets_text = NULL;
    const char *sets[MAX_SETS + 1] = {0};
    if (nul != NULL) {
        size_t n = size - ini_n - 1;
        sets_text = malloc(n + 1);
        if (sets_text == NULL)
            return 0;
        memcpy(sets_text, nul + 1, n);
        sets_text[n] = '\0';
        int k = 0;
        for (char *line = sets_text; line != NULL && k < MAX_SETS;) {
            char *nl = strchr(line, '\n');
            if (nl != NULL)
                *nl = '\0';
            if (line[0] != '\0')
                sets[k++] = line;
            line = nl ? nl + 1 : NULL;
        }
    }

    primal_experiment *e = NULL;
    primal_err err = {0};
    int rc = primal_experiment_load(pathbuf, sets, plugin_dirs, &e, &err);
    fuzz_check_err(rc, &err, "primal_experiment_load");
    if (rc != PRIMAL_OK) {
        if (e != NULL)
            fuzz_fail("primal_experiment_load failed but left *out set");
        free(sets_text);
        return 0;
    }

    char *resolved = primal_experiment_resolved(e);
    if (resolved == NULL)
        fuzz_fail("primal_experiment_resolved returned NULL");
    reload(resolved);
    free(resolved);

    rc = primal_experiment_check_run(e, 1, &err);
    fuzz_check_err(rc, &err, "primal_experiment_check_run");
    static const char *const names[] = {
        "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight", "lm_head.weight",
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const primal_grid_ref *g = primal_experiment_grid_for(e, names[i]);
        if (g != NULL && (g->size < 2 || g->size > 65536 || g->values == NULL))
            fuzz_fail("grid_for(%s): a grid of %d values", names[i], g->size);
    }

    if (strcmp(e->tokenizer, "bytes") == 0 && strcmp(e->model_init, "random") == 0 &&
        plain_names(primal_cfg_str(e->loader_c, "path")) &&
        plain_names(primal_cfg_str(e->loader_c, "val_path"))) {
        rc = primal_experiment_check(e, &err);
        fuzz_check_err(rc, &err, "primal_experiment_check");
    }
    primal_experiment_free(e);
    free(sets_text);
    return 0;
}
