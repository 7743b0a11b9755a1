/* embedding.c: out[n] = E[tokens[n]], E stored as index + per-row scale (or dense).  Only the
 * gathered rows are dequantised.  Backward scatters dout into the gradient rows of the tokens
 * seen (dL/dE, straight-through), for a row range so that the caller may chunk a large
 * vocabulary.  SPEC.md, "Models" and "The forward and backward pass of an indexed matrix".
 * The _ref twins work in double over a dense E.  No keys. */
#include "embedding.h"

#include "matmul.h"

/* Below this many elements a loop runs on one thread: waking the others costs more. */
#define PAR_MIN (1 << 15)

void embedding_forward(float *out,              /* (N, C) */
                       const int32_t *tokens,   /* (N) in [0, rows of E), checked by the caller */
                       const primal_qtensor *E, /* (V, C) */
                       int N)
{
    int64_t C = E->cols;
#pragma omp parallel for schedule(static) if (N * C >= PAR_MIN)
    for (int n = 0; n < N; n++)
        matmul_dequant_rows(out + n * C, E, tokens[n], 1);
}

/* G[r - r0] += dout[n] for every n whose token r lies in [r0, r0 + nrows).  Serial: two
 * positions with the same token add into one row. */
void embedding_backward(float *G,              /* (nrows, C) accumulated into */
                        const float *dout,     /* (N, C) */
                        const int32_t *tokens, /* (N) */
                        int64_t r0, int64_t nrows, int N, int C)
{
    for (int n = 0; n < N; n++) {
        int64_t r = tokens[n] - r0;
        if (r < 0 || r >= nrows)
            continue;
        float *g = G + r * C;
        const float *d = dout + (int64_t)n * C;
        for (int c = 0; c < C; c++)
            g[c] += d[c];
    }
}

void embedding_forward_ref(double *out,           /* (N, C) */
                           const int32_t *tokens, /* (N) */
                           const double *E,       /* (V, C) */
                           int N, int C)
{
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            out[(int64_t)n * C + c] = E[(int64_t)tokens[n] * C + c];
}

void embedding_backward_ref(double *dE,            /* (V, C) accumulated into */
                            const double *dout,    /* (N, C) */
                            const int32_t *tokens, /* (N) */
                            int N, int C)
{
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            dE[(int64_t)tokens[n] * C + c] += dout[(int64_t)n * C + c];
}
