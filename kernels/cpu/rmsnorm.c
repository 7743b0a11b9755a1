/* rmsnorm.c: y = x / sqrt(mean(x^2) + eps) * w per row, as Hugging Face's LlamaRMSNorm /
 * Qwen2RMSNorm compute it in float32: (x * rstd) then * w.  SPEC.md, "Models".
 *
 * Backward, with r = rstd:  dx_i = r·w_i·dy_i − (r³/C)·x_i·Σ_j dy_j·w_j·x_j,  dw_i = Σ_n dy_i·x_i·r.
 * The _ref twins are plain loops in double.  No keys. */
#include "rmsnorm.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Below this many elements a loop runs on one thread: waking the others costs more. */
#define PAR_MIN (1 << 15)

void rmsnorm_forward(float *out,          /* (N, C) */
                     float *rstd,         /* (N) 1/sqrt(mean(x^2) + eps), kept for backward */
                     const float *inp,    /* (N, C) */
                     const float *weight, /* (C) */
                     int N, int C, double eps)
{
#pragma omp parallel for schedule(static) if ((int64_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (int64_t)n * C;
        float *y = out + (int64_t)n * C;
        double ss = 0.0;
        for (int i = 0; i < C; i++)
            ss += (double)x[i] * x[i];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int i = 0; i < C; i++)
            y[i] = weight[i] * (x[i] * r);
        rstd[n] = r;
    }
}

/* dinp and dweight are accumulated into; either may be NULL (not wanted). */
void rmsnorm_backward(float *dinp,         /* (N, C) */
                      float *dweight,      /* (C) */
                      const float *dout,   /* (N, C) */
                      const float *inp,    /* (N, C) */
                      const float *weight, /* (C) */
                      const float *rstd,   /* (N) from forward */
                      int N, int C)
{
    if (dinp != NULL) {
#pragma omp parallel for schedule(static) if ((int64_t)N * C >= PAR_MIN)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (int64_t)n * C, *dy = dout + (int64_t)n * C;
            float *dx = dinp + (int64_t)n * C;
            float r = rstd[n];
            double dot = 0.0;
            for (int i = 0; i < C; i++)
                dot += (double)dy[i] * weight[i] * x[i];
            float k = (float)(dot * r * r * r / C);
            for (int i = 0; i < C; i++)
                dx[i] += r * weight[i] * dy[i] - k * x[i];
        }
    }
    if (dweight != NULL) {
        /* Columns in parallel so that no two threads add into the same dweight[i]. */
#pragma omp parallel for schedule(static) if ((int64_t)N * C >= PAR_MIN)
        for (int i = 0; i < C; i++) {
            double s = 0.0;
            for (int n = 0; n < N; n++)
                s += (double)dout[(int64_t)n * C + i] * inp[(int64_t)n * C + i] * rstd[n];
            dweight[i] += (float)s;
        }
    }
}

void rmsnorm_forward_ref(double *out,          /* (N, C) */
                         const double *inp,    /* (N, C) */
                         const double *weight, /* (C) */
                         int N, int C, double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (int64_t)n * C;
        double ss = 0.0;
        for (int i = 0; i < C; i++)
            ss += x[i] * x[i];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int i = 0; i < C; i++)
            out[(int64_t)n * C + i] = weight[i] * x[i] * r;
    }
}

/* Accumulates into dinp and dweight (either may be NULL); recomputes rstd from inp. */
void rmsnorm_backward_ref(double *dinp,          /* (N, C) */
                          double *dweight,       /* (C) */
                          const double *dout,    /* (N, C) */
                          const double *inp,     /* (N, C) */
                          const double *weight,  /* (C) */
                          int N, int C, double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (int64_t)n * C, *dy = dout + (int64_t)n * C;
        double ss = 0.0, dot = 0.0;
        for (int i = 0; i < C; i++) {
            ss += x[i] * x[i];
            dot += dy[i] * weight[i] * x[i];
        }
        double r = 1.0 / sqrt(ss / C + eps);
        for (int i = 0; i < C; i++) {
            if (dinp != NULL)
                dinp[(int64_t)n * C + i] += r * weight[i] * dy[i] - r * r * r / C * dot * x[i];
            if (dweight != NULL)
                dweight[i] += dy[i] * x[i] * r;
        }
    }
}
