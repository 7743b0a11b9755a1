/* matmul.c: y = x·Wᵀ (+ b) and its backward, W stored as index + per-row scale over a grid
 * (W[r][c] = grid[index[r][c]] * scale[r]) or as dense float32.  SPEC.md, "The forward and
 * backward pass of an indexed matrix".
 *
 * W is dequantised MATMUL_TILE_ROWS rows at a time into a per-thread tile that stays in cache,
 * and every product goes through cblas_sgemm, so no float copy of W (or of the model) is ever
 * made.  The weight gradient G = dYᵀ·X is produced per row range for the caller to consume
 * (scale gradient, flip policy) and drop.
 *
 * Threads: each product is split among the OpenMP threads (forward and dX by rows of X, G by
 * rows of W), every thread calling a single-threaded sgemm on its share.  With OpenBLAS's own
 * thread pool beside OpenMP's, both pools spin-wait on the same cores and a 2-core training
 * step ran 3 to 5 times slower; so the model sets openblas_set_num_threads(1) and OpenMP is the
 * only pool.  The _ref twins are plain loops in double over a dense W: the tests' oracle.
 * No keys; MATMUL_TILE_ROWS (matmul.h) is a compile-time tunable. */
#include "matmul.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

/* Below these sizes a product or loop runs on one thread: waking the others costs more. */
#define PAR_MIN_MACS (1 << 20)
#define PAR_MIN (1 << 15)

/* out is (nrows, C) float32: rows [r0, r0 + nrows) of W. */
void matmul_dequant_rows(float *out, const primal_qtensor *w, int64_t r0, int64_t nrows)
{
    int64_t C = w->cols;
    if (w->bits == 32) {
        memcpy(out, w->dense + r0 * C, (size_t)(nrows * C) * sizeof(float));
        return;
    }
    const float *grid = w->grid;
    for (int64_t r = 0; r < nrows; r++) {
        float s = w->scale[r0 + r];
        float *o = out + r * C;
        const uint8_t *row = (const uint8_t *)w->index + (r0 + r) * w->row_stride;
        if (w->bits == 4) {
            int64_t c = 0;
            for (; c + 1 < C; c += 2) {
                uint8_t b = row[c >> 1];
                o[c] = grid[b & 0xF] * s;
                o[c + 1] = grid[b >> 4] * s;
            }
            if (c < C)
                o[c] = grid[row[c >> 1] & 0xF] * s;
        } else if (w->bits == 8) {
            for (int64_t c = 0; c < C; c++)
                o[c] = grid[row[c]] * s;
        } else {
            const uint16_t *r16 = (const uint16_t *)row;
            for (int64_t c = 0; c < C; c++)
                o[c] = grid[r16[c]] * s;
        }
    }
}

/* Each OpenMP thread takes the contiguous share [*lo, *hi) of n items. */
static void share(int64_t n, int64_t *lo, int64_t *hi)
{
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

void matmul_forward(float *out,              /* (N, OC) */
                    const float *inp,        /* (N, C) */
                    const primal_qtensor *w, /* (OC, C) */
                    const float *bias,       /* (OC) or NULL */
                    float *tile,             /* (threads, MATMUL_TILE_ROWS, C) scratch */
                    int N, int C, int OC)
{
#pragma omp parallel if ((int64_t)N * C * OC >= PAR_MIN_MACS)
    {
        int64_t n0, n1;
        share(N, &n0, &n1);
        int nn = (int)(n1 - n0);
        float *tl = tile + (int64_t)omp_get_thread_num() * MATMUL_TILE_ROWS * C;
        const float *x = inp + n0 * C;
        float *y = out + n0 * OC;
        /* The bias is laid down first so that sgemm adds onto it (beta 1) in one pass. */
        float beta = 0.0f;
        if (bias != NULL) {
            for (int n = 0; n < nn; n++)
                memcpy(y + (int64_t)n * OC, bias, (size_t)OC * sizeof(float));
            beta = 1.0f;
        }
        if (nn > 0 && w->bits == 32)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nn, OC, C, 1.0f, x, C, w->dense,
                        C, beta, y, OC);
        for (int r0 = 0; nn > 0 && w->bits != 32 && r0 < OC; r0 += MATMUL_TILE_ROWS) {
            int nr = OC - r0 < MATMUL_TILE_ROWS ? OC - r0 : MATMUL_TILE_ROWS;
            matmul_dequant_rows(tl, w, r0, nr);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nn, nr, C, 1.0f, x, C, tl, C,
                        beta, y + r0, OC);
        }
    }
}

/* dinp += dout · W. */
void matmul_backward_inp(float *dinp,             /* (N, C) accumulated into */
                         const float *dout,       /* (N, OC) */
                         const primal_qtensor *w, /* (OC, C) */
                         float *tile,             /* (threads, MATMUL_TILE_ROWS, C) scratch */
                         int N, int C, int OC)
{
#pragma omp parallel if ((int64_t)N * C * OC >= PAR_MIN_MACS)
    {
        int64_t n0, n1;
        share(N, &n0, &n1);
        int nn = (int)(n1 - n0);
        float *tl = tile + (int64_t)omp_get_thread_num() * MATMUL_TILE_ROWS * C;
        const float *dy = dout + n0 * OC;
        float *dx = dinp + n0 * C;
        if (nn > 0 && w->bits == 32)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nn, C, OC, 1.0f, dy, OC,
                        w->dense, C, 1.0f, dx, C);
        for (int r0 = 0; nn > 0 && w->bits != 32 && r0 < OC; r0 += MATMUL_TILE_ROWS) {
            int nr = OC - r0 < MATMUL_TILE_ROWS ? OC - r0 : MATMUL_TILE_ROWS;
            matmul_dequant_rows(tl, w, r0, nr);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nn, C, nr, 1.0f, dy + r0, OC,
                        tl, C, 1.0f, dx, C);
        }
    }
}

/* G = dout[:, r0:r0+nrows]ᵀ · inp: the straight-through dL/dW of those rows (overwritten). */
void matmul_backward_weight(float *G,          /* (nrows, C) */
                            const float *dout, /* (N, OC) */
                            const float *inp,  /* (N, C) */
                            int64_t r0, int64_t nrows, int N, int C, int OC)
{
#pragma omp parallel if (nrows * C * N >= PAR_MIN_MACS)
    {
        int64_t o0, o1;
        share(nrows, &o0, &o1);
        if (o1 > o0)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(o1 - o0), C, N, 1.0f,
                        dout + r0 + o0, OC, inp, C, 0.0f, G + o0 * C, C);
    }
}

void matmul_backward_bias(float *dbias,      /* (OC) accumulated into */
                          const float *dout, /* (N, OC) */
                          int N, int OC)
{
    /* Column sums in double: N can be thousands of positions. */
#pragma omp parallel for schedule(static) if ((int64_t)N * OC >= PAR_MIN)
    for (int o = 0; o < OC; o++) {
        double s = 0.0;
        for (int n = 0; n < N; n++)
            s += dout[(int64_t)n * OC + o];
        dbias[o] += (float)s;
    }
}

/* dscale[r] += Σ_c G[r][c] · grid[index[r][c]] (indexed W only: W = grid[index] · scale). */
void matmul_scale_grad(float *dscale,           /* (rows of W), rows [r0, r0+nrows) updated */
                       const float *G,          /* (nrows, C) */
                       const primal_qtensor *w, /* (rows, C) indexed */
                       int64_t r0, int64_t nrows)
{
    int64_t C = w->cols;
#pragma omp parallel for schedule(static) if (nrows * C >= PAR_MIN)
    for (int64_t r = 0; r < nrows; r++) {
        const float *g = G + r * C;
        double s = 0.0;
        for (int64_t c = 0; c < C; c++)
            s += (double)g[c] * w->grid[primal_index_get(w, r0 + r, c)];
        dscale[r0 + r] += (float)s;
    }
}

void matmul_forward_ref(double *out,        /* (N, OC) */
                        const double *inp,  /* (N, C) */
                        const double *w,    /* (OC, C) */
                        const double *bias, /* (OC) or NULL */
                        int N, int C, int OC)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias != NULL ? bias[o] : 0.0;
            for (int c = 0; c < C; c++)
                s += inp[(int64_t)n * C + c] * w[(int64_t)o * C + c];
            out[(int64_t)n * OC + o] = s;
        }
}

/* All three gradients are accumulated into; any may be NULL. */
void matmul_backward_ref(double *dinp,       /* (N, C) */
                         double *dweight,    /* (OC, C) */
                         double *dbias,      /* (OC) */
                         const double *dout, /* (N, OC) */
                         const double *inp,  /* (N, C) */
                         const double *w,    /* (OC, C) */
                         int N, int C, int OC)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double d = dout[(int64_t)n * OC + o];
            for (int c = 0; c < C; c++) {
                if (dinp != NULL)
                    dinp[(int64_t)n * C + c] += d * w[(int64_t)o * C + c];
                if (dweight != NULL)
                    dweight[(int64_t)o * C + c] += d * inp[(int64_t)n * C + c];
            }
            if (dbias != NULL)
                dbias[o] += d;
        }
}
