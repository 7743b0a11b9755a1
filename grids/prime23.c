/* prime23: the prototype's "fine" grid for sensitive layers: prime13 plus ±2/3, ±1/4, ±1/6,
 * ±1/8, ±1/12 (23 values), ascending.  SPEC.md, "Grids".  No keys. */
#include <stdlib.h>

#include <primal/plugin.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int prime23_generate(const primal_config *cfg, float *values, size_t *n, primal_err *err)
{
    (void)cfg;
    (void)err;
    static const double pos[] = {1.0,       1.0 / 2,  1.0 / 3, 1.0 / 5,  1.0 / 7, 1.0 / 11,
                                 2.0 / 3,   1.0 / 4,  1.0 / 6, 1.0 / 8,  1.0 / 12};
    double v[23];
    size_t k = 0;
    v[k++] = 0.0;
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) {
        v[k++] = pos[i];
        v[k++] = -pos[i];
    }
    qsort(v, k, sizeof v[0], cmp_double);
    for (size_t i = 0; i < k; i++)
        values[i] = (float)v[i];
    *n = k;
    return PRIMAL_OK;
}

static const primal_grid_vt prime23_vt = {
    .size = sizeof(primal_grid_vt),
    .generate = prime23_generate,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_GRID,
        .name = "prime23",
        .description = "prime13 plus ±2/3, ±1/4, ±1/6, ±1/8, ±1/12 (the prototype's fine grid)",
        .keys = NULL,
        .vtable = &prime23_vt,
    };
    return &d;
}
