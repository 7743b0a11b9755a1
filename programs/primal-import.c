/* primal-import: a Hugging Face model directory into a PRIMAL checkpoint (SPEC.md, "Models",
 * "Snapping a float matrix onto a grid"; the file format is docs/FORMAT.md).
 *   primal-import HF_DIR -o OUT.safetensors [--grid NAME|PATH.so|dense] [--set key=value]...
 *                 [--plugin-path DIR]...
 * The grid (default prime13) comes from a grid plugin; "dense" keeps float32 matrices.  The
 * weights (F32/F16/BF16, one file or shards) are read one tensor at a time (core/hfimport.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grid.h"
#include "hfimport.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: primal-import HF_DIR -o OUT.safetensors [--grid NAME|PATH.so|dense]\n"
            "                     [--set key=value]... [--plugin-path DIR]...\n"
            "Reads HF_DIR/config.json and model.safetensors (or the shards of\n"
            "model.safetensors.index.json), snaps every matrix onto the grid (default %s;\n"
            "dense keeps float32) and writes a PRIMAL checkpoint.\n",
            primal_grid_core_keys[0].def);
}

static int run_main(int argc, char **argv, const char **kv, const char **dirs)
{
    const char *dir = NULL, *out = NULL, *gname = primal_grid_core_keys[0].def;
    int nkv = 0, ndirs = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(argv[i], "--grid") == 0 && i + 1 < argc) {
            gname = argv[++i];
        } else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            kv[nkv++] = argv[++i];
        } else if (strcmp(argv[i], "--plugin-path") == 0 && i + 1 < argc) {
            dirs[ndirs++] = argv[++i];
        } else if (argv[i][0] == '-' || dir != NULL) {
            fprintf(stderr, "primal-import: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else {
            dir = argv[i];
        }
    }
    if (dir == NULL || out == NULL) {
        usage(stderr);
        return 2;
    }
    int dense = strcmp(gname, "dense") == 0;
    if (dense && nkv > 0) {
        fprintf(stderr, "primal-import: --set: dense has no keys\n");
        return 2;
    }

    primal_err err = { 0 };
    primal_search s = { 0 };
    primal_grid *g = NULL;
    char *ini = NULL;
    size_t inilen = 0;
    int rc = PRIMAL_OK;
    if (!dense) {
        rc = primal_search_init(&s, dirs, &err);
        if (rc == PRIMAL_OK)
            rc = primal_grid_from_name(&s, gname, kv, &g, &err);
    }
    /* primal.config records how the checkpoint was made, in experiment-file terms. */
    FILE *f = open_memstream(&ini, &inilen);
    if (rc == PRIMAL_OK && f == NULL)
        rc = primal_errf(&err, PRIMAL_ENOMEM, "out of memory");
    if (rc == PRIMAL_OK) {
        fprintf(f, "; written by primal-import from %s\n[model]\ninit = %s\n", dir, dir);
        if (dense)
            fprintf(f, "; dense: float32 matrices, for the adamw baseline\n");
        else
            fprintf(f, "\n[grid]\nplugin = %s\n%s", g->plugin, g->keys_ini ? g->keys_ini : "");
        fclose(f);
        f = NULL;
        primal_grid_ref ref = { 0 };
        if (!dense)
            ref = (primal_grid_ref){ g->name, g->values, g->size };
        rc = primal_hf_import(dir, dense ? NULL : &ref, out, ini, &err);
    }
    if (f != NULL)
        fclose(f);
    if (rc != PRIMAL_OK)
        fprintf(stderr, "primal-import: %s\n", err.msg);
    else
        fprintf(stderr, "primal-import: wrote %s (%s)\n", out, dense ? "dense" : g->name);
    free(ini);
    primal_grid_free(g);
    if (!dense)
        primal_search_free(&s);
    return rc == PRIMAL_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    /* --set and --plugin-path arguments, at most one per argument; freed on every path */
    const char **kv = calloc((size_t)argc + 1, sizeof *kv);
    const char **dirs = calloc((size_t)argc + 1, sizeof *dirs);
    int rc = kv && dirs ? run_main(argc, argv, kv, dirs) : 1;
    free(kv);
    free(dirs);
    return rc;
}
