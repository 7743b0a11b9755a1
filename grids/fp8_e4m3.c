/* fp8_e4m3: every finite FP8 E4M3 value (OCP FP8 spec: bias 7, no infinities, S.1111.111 is
 * NaN, so the largest is 448), ±0 merged, divided by 448 so that the grid spans [-1, 1]:
 * 253 values.  SPEC.md, "The four plugin kinds" (baselines).  No keys. */
#include <math.h>

#include <primal/plugin.h>

static int fp8_generate(const primal_config *cfg, float *values, size_t *n, primal_err *err)
{
    (void)cfg;
    (void)err;
    float pos[127];
    int k = 0;
    for (int e = 0; e < 16; e++)
        for (int m = 0; m < 8; m++) {
            if (e == 15 && m == 7)
                continue; /* NaN */
            if (e == 0 && m == 0)
                continue; /* zero, added once below */
            double v = e == 0 ? ldexp(m / 8.0, -6) : ldexp(1.0 + m / 8.0, e - 7);
            pos[k++] = (float)(v / 448.0);
        }
    /* codes ascend with value, so pos is already ascending */
    size_t j = 0;
    for (int i = k - 1; i >= 0; i--)
        values[j++] = -pos[i];
    values[j++] = 0.0f;
    for (int i = 0; i < k; i++)
        values[j++] = pos[i];
    *n = j;
    return PRIMAL_OK;
}

static const primal_grid_vt fp8_vt = {
    .size = sizeof(primal_grid_vt),
    .generate = fp8_generate,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_GRID,
        .name = "fp8_e4m3",
        .description = "all 253 finite FP8 E4M3 values, divided by 448",
        .keys = NULL,
        .vtable = &fp8_vt,
    };
    return &d;
}
