/* swiglu.c: out = silu(gate) · up with silu(g) = g·sigmoid(g), elementwise, as the Llama/Qwen2
 * MLP computes down(silu(gate(x)) * up(x)).  SPEC.md, "Models".
 *
 * Backward: with s = sigmoid(g), d silu/dg = s·(1 + g·(1 − s)).  The _ref twins work in
 * double.  No keys. */
#include "swiglu.h"

#include <math.h>

/* Below this many elements a loop runs on one thread: waking the others costs more. */
#define PAR_MIN (1 << 15)

void swiglu_forward(float *out,        /* (n) */
                    const float *gate, /* (n) */
                    const float *up,   /* (n) */
                    int64_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* dgate and dup are written (not accumulated). */
void swiglu_backward(float *dgate,      /* (n) */
                     float *dup,        /* (n) */
                     const float *dout, /* (n) */
                     const float *gate, /* (n) */
                     const float *up,   /* (n) */
                     int64_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        float s = 1.0f / (1.0f + expf(-g));
        dgate[i] = dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
        dup[i] = dout[i] * g * s;
    }
}

void swiglu_forward_ref(double *out,        /* (n) */
                        const double *gate, /* (n) */
                        const double *up,   /* (n) */
                        int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = gate[i] / (1.0 + exp(-gate[i])) * up[i];
}

void swiglu_backward_ref(double *dgate,      /* (n) accumulated into */
                         double *dup,        /* (n) accumulated into */
                         const double *dout, /* (n) */
                         const double *gate, /* (n) */
                         const double *up,   /* (n) */
                         int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double s = 1.0 / (1.0 + exp(-gate[i]));
        dgate[i] += dout[i] * up[i] * (s + gate[i] * s * (1.0 - s));
        dup[i] += dout[i] * gate[i] * s;
    }
}
