/* prime13: the 13 prime reciprocals {0, ±1, ±1/2, ±1/3, ±1/5, ±1/7, ±1/11}, ascending.
 * SPEC.md, "Grids".  No keys.  Zero is exact, so snapped weights can be exactly sparse. */
#include <primal/plugin.h>

static int prime13_generate(const primal_config *cfg, float *values, size_t *n, primal_err *err)
{
    (void)cfg;
    (void)err;
    static const int den[] = {1, 2, 3, 5, 7, 11};
    size_t k = 0;
    for (int i = 0; i < 6; i++)
        values[k++] = (float)(-1.0 / den[i]);
    values[k++] = 0.0f;
    for (int i = 5; i >= 0; i--)
        values[k++] = (float)(1.0 / den[i]);
    *n = k;
    return PRIMAL_OK;
}

static const primal_grid_vt prime13_vt = {
    .size = sizeof(primal_grid_vt),
    .generate = prime13_generate,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_GRID,
        .name = "prime13",
        .description = "13 prime reciprocals: 0, ±1, ±1/2, ±1/3, ±1/5, ±1/7, ±1/11",
        .keys = NULL,
        .vtable = &prime13_vt,
    };
    return &d;
}
