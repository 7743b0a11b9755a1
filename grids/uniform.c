/* uniform: `size` evenly spaced values from -1 to 1, the plain baseline for grid ablations.
 * SPEC.md, "The four plugin kinds" (baselines).  Keys: size (default 16). */
#include <primal/plugin.h>

static const primal_key uniform_keys[] = {
    {"size", PRIMAL_KEY_INT, "16", "number of values, evenly spaced in [-1, 1]", "[2,65536]"},
    {0},
};

static int uniform_generate(const primal_config *cfg, float *values, size_t *n, primal_err *err)
{
    (void)err;
    int64_t size = primal_cfg_int(cfg, "size");
    /* Computed as an affine map of i in double so that the ends are exactly ±1 and an odd size
     * has an exact 0 in the middle. */
    for (int64_t i = 0; i < size; i++)
        values[i] = (float)((2.0 * (double)i - (double)(size - 1)) / (double)(size - 1));
    *n = (size_t)size;
    return PRIMAL_OK;
}

static const primal_grid_vt uniform_vt = {
    .size = sizeof(primal_grid_vt),
    .generate = uniform_generate,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_GRID,
        .name = "uniform",
        .description = "N evenly spaced values in [-1, 1]",
        .keys = uniform_keys,
        .vtable = &uniform_vt,
    };
    return &d;
}
