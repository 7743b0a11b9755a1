/* crossentropy.c: per-position loss = logsumexp(logits) − logits[target], and its backward
 * dlogits = (softmax(logits) − onehot(target)) · dloss.  The mean over the masked positions is
 * the model's business (dloss carries 1/count, or 0 for a masked-out position).
 * SPEC.md, "Models".  Sums are in double: V can be 150K.  The _ref twins work in double.
 * No keys. */
#include "crossentropy.h"

#include <math.h>
#include <string.h>

/* Below this many elements a loop runs on one thread: waking the others costs more. */
#define PAR_MIN (1 << 15)

void crossentropy_forward(float *losses,          /* (N) */
                          const float *logits,    /* (N, V) */
                          const int32_t *targets, /* (N) in [0, V) */
                          int N, int V)
{
#pragma omp parallel for schedule(static) if ((int64_t)N * V >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (int64_t)n * V;
        float mx = x[0];
        for (int i = 1; i < V; i++)
            mx = x[i] > mx ? x[i] : mx;
        double s = 0.0;
        for (int i = 0; i < V; i++)
            s += exp((double)x[i] - mx);
        losses[n] = (float)(log(s) + mx - x[targets[n]]);
    }
}

/* dlogits is written (not accumulated) and may be logits itself (in place).  Rows whose dloss
 * is 0 become zeros without a softmax. */
void crossentropy_backward(float *dlogits,         /* (N, V) */
                           const float *logits,    /* (N, V) */
                           const int32_t *targets, /* (N) */
                           const float *dloss,     /* (N) */
                           int N, int V)
{
#pragma omp parallel for schedule(static) if ((int64_t)N * V >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (int64_t)n * V;
        float *dx = dlogits + (int64_t)n * V;
        float d = dloss[n];
        if (d == 0.0f) {
            memset(dx, 0, (size_t)V * sizeof(float));
            continue;
        }
        float mx = x[0];
        for (int i = 1; i < V; i++)
            mx = x[i] > mx ? x[i] : mx;
        double s = 0.0;
        for (int i = 0; i < V; i++)
            s += exp((double)x[i] - mx);
        float inv = (float)(1.0 / s);
        for (int i = 0; i < V; i++)
            dx[i] = expf(x[i] - mx) * inv * d;
        dx[targets[n]] -= d;
    }
}

void crossentropy_forward_ref(double *losses,         /* (N) */
                              const double *logits,   /* (N, V) */
                              const int32_t *targets, /* (N) */
                              int N, int V)
{
    for (int n = 0; n < N; n++) {
        const double *x = logits + (int64_t)n * V;
        double mx = x[0], s = 0.0;
        for (int i = 1; i < V; i++)
            mx = fmax(mx, x[i]);
        for (int i = 0; i < V; i++)
            s += exp(x[i] - mx);
        losses[n] = log(s) + mx - x[targets[n]];
    }
}

void crossentropy_backward_ref(double *dlogits,        /* (N, V) accumulated into */
                               const double *logits,   /* (N, V) */
                               const int32_t *targets, /* (N) */
                               const double *dloss,    /* (N) */
                               int N, int V)
{
    for (int n = 0; n < N; n++) {
        const double *x = logits + (int64_t)n * V;
        double mx = x[0], s = 0.0;
        for (int i = 1; i < V; i++)
            mx = fmax(mx, x[i]);
        for (int i = 0; i < V; i++)
            s += exp(x[i] - mx);
        for (int i = 0; i < V; i++)
            dlogits[(int64_t)n * V + i] += (exp(x[i] - mx) / s - (i == targets[n])) * dloss[n];
    }
}
