/* primal-grid: write a grid's values, one %.9g per line or as raw little-endian float32.
 *   primal-grid NAME [--set key=value]... [--format text|f32] [--plugin-path DIR]... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grid.h"

static void usage(FILE *f)
{
    fputs("usage: primal-grid NAME|PATH.so [--set key=value]... [--format text|f32]\n"
          "                   [--plugin-path DIR]...\n"
          "Writes the values of grid NAME to standard output, ascending: one %.9g per line\n"
          "(text, the default) or raw little-endian float32 (f32).\n",
          f);
}

static int run_main(int argc, char **argv, const char **kv, const char **dirs)
{
    const char *name = NULL, *format = "text";
    int nkv = 0, ndirs = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            kv[nkv++] = argv[++i];
        } else if (strcmp(argv[i], "--format") == 0 && i + 1 < argc) {
            format = argv[++i];
        } else if (strcmp(argv[i], "--plugin-path") == 0 && i + 1 < argc) {
            dirs[ndirs++] = argv[++i];
        } else if (argv[i][0] == '-' || name != NULL) {
            fprintf(stderr, "primal-grid: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else {
            name = argv[i];
        }
    }
    if (name == NULL) {
        usage(stderr);
        return 2;
    }
    if (strcmp(format, "text") != 0 && strcmp(format, "f32") != 0) {
        fprintf(stderr, "primal-grid: --format: expected text or f32, got \"%s\"\n", format);
        return 2;
    }
    primal_search s;
    primal_err err;
    primal_grid *g = NULL;
    int rc = primal_search_init(&s, dirs, &err);
    if (rc == PRIMAL_OK)
        rc = primal_grid_from_name(&s, name, kv, &g, &err);
    if (rc != PRIMAL_OK) {
        fprintf(stderr, "primal-grid: %s\n", err.msg);
        return 1;
    }
    if (strcmp(format, "text") == 0) {
        for (int i = 0; i < g->size; i++)
            printf("%.9g\n", (double)g->values[i]);
    } else {
        /* x86-64 and aarch64 are little-endian; a big-endian host would need a byte swap */
        fwrite(g->values, sizeof(float), (size_t)g->size, stdout);
    }
    primal_grid_free(g);
    primal_search_free(&s);
    return fflush(stdout) == 0 ? 0 : 1;
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
