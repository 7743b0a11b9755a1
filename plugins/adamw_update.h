/* adamw_update.h: the AdamW step (torch.optim.AdamW) of the two plugins that run it, adamw.c on
 * dense weights and latent_adamw.c on its float shadow, in one place; their CUDA halves
 * (adamw_update.cuh) take the step's constants from here too, so the GPU repeats the CPU's
 * float operations in the same order.  Each plugin includes it into its own module.  No keys. */
#ifndef PRIMAL_PLUGINS_ADAMW_UPDATE_H
#define PRIMAL_PLUGINS_ADAMW_UPDATE_H

#include <math.h>
#include <stdint.h>

/* One step's constants, formed in double. */
typedef struct adamw_consts {
    float b1, b2, eps, decay, step, rbc2, clip;
} adamw_consts;

/* lr: the step's learning rate (base × schedule); t: this tensor's step count, this step
 * included; clip: the clipping factor applied to the gradient sum. */
static inline adamw_consts adamw_consts_for(double lr, double beta1, double beta2, double eps,
                                            double wd, int64_t t, double clip)
{
    adamw_consts k;
    k.b1 = (float)beta1;
    k.b2 = (float)beta2;
    k.eps = (float)eps;
    k.decay = (float)(1.0 - lr * wd);
    k.step = (float)(lr / (1.0 - pow(beta1, (double)t)));
    k.rbc2 = (float)sqrt(1.0 - pow(beta2, (double)t));
    k.clip = (float)clip;
    return k;
}

/* One AdamW update of n weights: m, v the moments, gsum the gradient sum (read, then zeroed). */
static inline void adamw_update(float *w, float *m, float *v, float *gsum, const adamw_consts *k,
                                int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float g = gsum[i] * k->clip;
        m[i] = k->b1 * m[i] + (1.0f - k->b1) * g;
        v[i] = k->b2 * v[i] + (1.0f - k->b2) * g * g;
        w[i] *= k->decay;
        w[i] -= k->step * m[i] / (sqrtf(v[i]) / k->rbc2 + k->eps);
        gsum[i] = 0.0f;
    }
}

#endif
