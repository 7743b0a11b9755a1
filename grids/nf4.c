/* nf4: the 16 NormalFloat-4 values of QLoRA (Dettmers et al. 2023, bitsandbytes' NF4 table),
 * the usual 4-bit baseline.  SPEC.md, "The four plugin kinds" (baselines).  No keys. */
#include <primal/plugin.h>

static int nf4_generate(const primal_config *cfg, float *values, size_t *n, primal_err *err)
{
    (void)cfg;
    (void)err;
    /* bitsandbytes, functional.py, get_4bit_type("nf4") */
    static const float nf4[16] = {
        -1.0f,
        -0.6961928009986877f,
        -0.5250730514526367f,
        -0.39491748809814453f,
        -0.28444138169288635f,
        -0.18477343022823334f,
        -0.09105003625154495f,
        0.0f,
        0.07958029955625534f,
        0.16093020141124725f,
        0.24611230194568634f,
        0.33791524171829224f,
        0.44070982933044434f,
        0.5626170039176941f,
        0.7229568362236023f,
        1.0f,
    };
    for (int i = 0; i < 16; i++)
        values[i] = nf4[i];
    *n = 16;
    return PRIMAL_OK;
}

static const primal_grid_vt nf4_vt = {
    .size = sizeof(primal_grid_vt),
    .generate = nf4_generate,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_GRID,
        .name = "nf4",
        .description = "the 16 NormalFloat-4 values of QLoRA",
        .keys = NULL,
        .vtable = &nf4_vt,
    };
    return &d;
}
