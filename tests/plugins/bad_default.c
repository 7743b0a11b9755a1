/* A plugin the loader must refuse (default): see tests/registry_test.c. */
#include <primal/plugin.h>

static int gen(const primal_config *cfg, float *values, size_t *n, primal_err *err)
{
    (void)cfg;
    (void)err;
    values[0] = -1.0f;
    values[1] = 1.0f;
    *n = 2;
    return PRIMAL_OK;
}

static const primal_key keys[] = {
    {"size", PRIMAL_KEY_INT, "0", "a key", "[1,10]"},
    {0},
};

static const primal_grid_vt vt = {
    .size = sizeof(primal_grid_vt),
    .generate = gen,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_GRID,
        .name = "bad_default",
        .description = "refused by the loader (default)",
        .keys = keys,
        .vtable = &vt,
    };
    return &d;
}
