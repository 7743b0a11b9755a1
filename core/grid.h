/* grid.h (private to libprimal): building a grid from a grid plugin and checking it.
 *
 * Every grid, whichever plugin made it, must be ascending, distinct, finite, within [-1, 1]
 * and of 2..65536 entries (SPEC.md, "Grids"); the core checks this, so a buggy plugin cannot
 * produce a table the kernels would misread. */
#ifndef PRIMAL_GRID_H
#define PRIMAL_GRID_H

#include <stddef.h>

#include "config.h"
#include "registry.h"

typedef struct primal_grid {
    char name[128];   /* the plugin name, plus its keys if any: "uniform(size=16)" */
    char plugin[64];  /* the plugin's name */
    char *plugin_ref; /* what config.ini names it by: the name, or the .so's absolute path */
    char *keys_ini;   /* its keys as resolved, "key = value\n" lines (for config.ini) */
    float *values;    /* ascending */
    int size;
} primal_grid;

/* Check values; who names the grid in the message. */
int primal_grid_validate(const float *values, size_t n, const char *who, primal_err *err);

/* [grid]'s key of the core, plugin; its default (primal_grid_core_keys[0].def) is the grid of a
 * section that names none, and of primal-import without --grid. */
extern const primal_key primal_grid_core_keys[];

/* Build the grid that section ([grid] or [grid.TENSOR]) of ini describes: plugin = NAME (the
 * default of primal_grid_core_keys when absent) and the plugin's keys.  Loads the plugin along
 * s. */
int primal_grid_from_ini(const primal_search *s, primal_ini *ini, const char *section,
                         primal_grid **out, primal_err *err);

/* Build a grid by plugin name and "key=value" assignments (primal-grid, primal-import). */
int primal_grid_from_name(const primal_search *s, const char *name, const char *const *kv,
                          primal_grid **out, primal_err *err);

void primal_grid_free(primal_grid *g);

#endif
