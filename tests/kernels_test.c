/* kernels_test.c: the CPU kernels (kernels/cpu/): every fast float kernel against its double
 * _ref twin on random shapes, finite differences in double of every _ref backward, hand-worked
 * values, and the indexed matmul at 4-, 8- and 16-bit storage. */
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include <primal/rng.h>

#include "../kernels/cpu/attention.h"
#include "../kernels/cpu/crossentropy.h"
#include "../kernels/cpu/embedding.h"
#include "../kernels/cpu/matmul.h"
#include "../kernels/cpu/rmsnorm.h"
#include "../kernels/cpu/rope.h"
#include "../kernels/cpu/swiglu.h"

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

static uint64_t g_stream = 1;

static float *frand(int64_t n, float lo, float hi)
{
    float *x = malloc((size_t)n * sizeof(float));
    uint64_t s = g_stream++;
    for (int64_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * primal_rng_u01(42, s, (uint64_t)i);
    return x;
}

static double *to_d(const float *x, int64_t n)
{
    double *y = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i];
    return y;
}

static double *dzeros(int64_t n) { return calloc((size_t)n, sizeof(double)); }
static float *fzeros(int64_t n) { return calloc((size_t)n, sizeof(float)); }

/* ||a - b|| / ||b||, a float, b double */
static double relerr(const float *a, const double *b, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num) / (sqrt(den) + 1e-30);
}

static double relerr_dd(const double *a, const double *b, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num) / (sqrt(den) + 1e-30);
}

/* A scalar loss of a _ref forward: Σ out · R for a fixed random R, so dL/dout = R. */
typedef double (*loss_fn)(void *ctx);

/* Central differences of L with respect to every element of x (n of them) into g. */
static void fd_grad(loss_fn L, void *ctx, double *x, int64_t n, double *g)
{
    const double h = 1e-6;
    for (int64_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + h;
        double lp = L(ctx);
        x[i] = x0 - h;
        double lm = L(ctx);
        x[i] = x0;
        g[i] = (lp - lm) / (2 * h);
    }
}

static double dotd(const double *a, const double *b, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

#define FD_TOL 1e-6
#define FAST_TOL 2e-5

/* ------------------------------------------------------------------------------------------ */
/* matmul                                                                                     */

typedef struct qmat {
    primal_qtensor q;
    float *grid;
} qmat;

/* A random W over a random ascending grid of gsize values, stored at the width gsize implies
 * (bits 32: dense). */
static void qmat_make(qmat *m, int64_t rows, int64_t cols, int gsize, int bits)
{
    memset(m, 0, sizeof *m);
    primal_qtensor *q = &m->q;
    q->rows = rows;
    q->cols = cols;
    q->bits = bits;
    if (bits == 32) {
        q->dense = frand(rows * cols, -1, 1);
        return;
    }
    m->grid = malloc((size_t)gsize * sizeof(float));
    for (int i = 0; i < gsize; i++)
        m->grid[i] = -1.0f + 2.0f * (float)i / (float)(gsize - 1);
    q->grid = m->grid;
    q->grid_size = gsize;
    q->row_stride = bits == 4 ? (cols + 1) / 2 : cols * (bits / 8);
    q->index = calloc((size_t)(rows * q->row_stride), 1);
    q->scale = frand(rows, -0.5f, 1.5f);
    uint64_t s = g_stream++;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            primal_index_set(q, r, c,
                             (uint32_t)(primal_rng_u64(7, s, (uint64_t)(r * cols + c)) % gsize));
}

/* W in double, from the definition W[r][c] = grid[index] * scale[r] (float product). */
static double *qmat_dense(const qmat *m)
{
    const primal_qtensor *q = &m->q;
    double *w = malloc((size_t)(q->rows * q->cols) * sizeof(double));
    for (int64_t r = 0; r < q->rows; r++)
        for (int64_t c = 0; c < q->cols; c++)
            w[r * q->cols + c] = q->bits == 32
                                     ? q->dense[r * q->cols + c]
                                     : (double)(q->grid[primal_index_get(q, r, c)] * q->scale[r]);
    return w;
}

static void qmat_free(qmat *m)
{
    free(m->q.index);
    free(m->q.scale);
    free(m->q.dense);
    free(m->grid);
}

static void check_matmul(int N, int C, int OC, int gsize, int bits)
{
    openblas_set_num_threads(1); /* the kernels split products among OpenMP threads */
    qmat W;
    qmat_make(&W, OC, C, gsize, bits);
    double *wd = qmat_dense(&W);
    float *inp = frand((int64_t)N * C, -1, 1), *bias = frand(OC, -1, 1);
    float *dout = frand((int64_t)N * OC, -1, 1);
    double *inpd = to_d(inp, (int64_t)N * C), *biasd = to_d(bias, OC);
    double *doutd = to_d(dout, (int64_t)N * OC);
    float *tile = malloc((size_t)omp_get_max_threads() * MATMUL_TILE_ROWS * C * sizeof(float));

    /* dequantisation against the definition */
    float *rows = malloc((size_t)OC * C * sizeof(float));
    matmul_dequant_rows(rows, &W.q, 0, OC);
    for (int64_t i = 0; i < (int64_t)OC * C; i++)
        cr_assert_eq(rows[i], (float)wd[i], "bits %d: dequantised W[%lld] = %g, expected %g",
                     bits, (long long)i, rows[i], wd[i]);

    float *out = malloc((size_t)N * OC * sizeof(float));
    double *outd = malloc((size_t)N * OC * sizeof(double));
    matmul_forward(out, inp, &W.q, bias, tile, N, C, OC);
    matmul_forward_ref(outd, inpd, wd, biasd, N, C, OC);
    cr_assert_lt(relerr(out, outd, (int64_t)N * OC), FAST_TOL, "bits %d forward (%d,%d,%d)", bits,
                 N, C, OC);

    /* backward: dinp accumulates onto what is there; G of a row range; bias; scale grad */
    float *dinp = frand((int64_t)N * C, -1, 1);
    double *dinpd = to_d(dinp, (int64_t)N * C);
    double *dwd = dzeros((int64_t)OC * C), *dbd = dzeros(OC);
    matmul_backward_inp(dinp, dout, &W.q, tile, N, C, OC);
    matmul_backward_ref(dinpd, dwd, dbd, doutd, inpd, wd, N, C, OC);
    cr_assert_lt(relerr(dinp, dinpd, (int64_t)N * C), FAST_TOL, "bits %d dinp", bits);
    int64_t r0 = OC / 3, nr = OC - OC / 3;
    float *G = malloc((size_t)nr * C * sizeof(float));
    matmul_backward_weight(G, dout, inp, r0, nr, N, C, OC);
    cr_assert_lt(relerr(G, dwd + r0 * C, nr * C), FAST_TOL, "bits %d G rows [%lld, %d)", bits,
                 (long long)r0, OC);
    float *db = fzeros(OC);
    matmul_backward_bias(db, dout, N, OC);
    cr_assert_lt(relerr(db, dbd, OC), FAST_TOL, "bits %d dbias", bits);
    if (bits != 32) {
        float *ds = fzeros(OC);
        double *dsd = dzeros(OC);
        matmul_scale_grad(ds, G, &W.q, r0, nr);
        for (int64_t r = r0; r < OC; r++)
            for (int64_t c = 0; c < C; c++)
                dsd[r] += dwd[r * C + c] * W.q.grid[primal_index_get(&W.q, r, c)];
        cr_assert_lt(relerr(ds + r0, dsd + r0, nr), FAST_TOL, "bits %d dscale", bits);
        for (int64_t r = 0; r < r0; r++)
            cr_assert_eq(ds[r], 0.0f, "dscale row %lld outside the range was touched",
                         (long long)r);
        free(ds);
        free(dsd);
    }
    free(G);
    free(db);
    free(dinp);
    free(dinpd);
    free(dwd);
    free(dbd);
    free(out);
    free(outd);
    free(rows);
    free(tile);
    free(inp);
    free(bias);
    free(dout);
    free(inpd);
    free(biasd);
    free(doutd);
    free(wd);
    qmat_free(&W);
}

Test(matmul, indexed_4_bit_matches_the_reference_on_random_shapes)
{
    check_matmul(7, 33, 300, 13, 4); /* odd cols: the last nibble of a row; 3 tiles */
    check_matmul(16, 64, 128, 16, 4);
    check_matmul(5, 20, 1, 2, 4);
    check_matmul(64, 129, 300, 13, 4); /* large enough to be split among threads */
}

Test(matmul, indexed_8_bit_matches_the_reference_on_random_shapes)
{
    check_matmul(9, 40, 257, 200, 8);
    check_matmul(3, 17, 5, 256, 8);
    check_matmul(70, 128, 200, 256, 8);
}

Test(matmul, indexed_16_bit_matches_the_reference_on_random_shapes)
{
    check_matmul(6, 31, 130, 65536, 16);
    check_matmul(11, 8, 3, 257, 16);
    check_matmul(50, 100, 260, 4000, 16);
}

Test(matmul, dense_matches_the_reference_on_random_shapes)
{
    check_matmul(10, 24, 50, 0, 32);
    check_matmul(66, 128, 150, 0, 32);
}

typedef struct mm_ctx {
    double *inp, *w, *bias, *R, *out;
    int N, C, OC;
} mm_ctx;

static double mm_loss(void *p)
{
    mm_ctx *c = p;
    matmul_forward_ref(c->out, c->inp, c->w, c->bias, c->N, c->C, c->OC);
    return dotd(c->out, c->R, (int64_t)c->N * c->OC);
}

Test(matmul, reference_backward_matches_finite_differences)
{
    mm_ctx c = {.N = 3, .C = 5, .OC = 4};
    float *f = frand(100, -1, 1);
    c.inp = to_d(f, 15);
    c.w = to_d(f + 15, 20);
    c.bias = to_d(f + 35, 4);
    c.R = to_d(f + 40, 12);
    c.out = dzeros(12);
    double *di = dzeros(15), *dw = dzeros(20), *db = dzeros(4), *g = dzeros(20);
    matmul_backward_ref(di, dw, db, c.R, c.inp, c.w, c.N, c.C, c.OC);
    fd_grad(mm_loss, &c, c.inp, 15, g);
    cr_assert_lt(relerr_dd(di, g, 15), FD_TOL);
    fd_grad(mm_loss, &c, c.w, 20, g);
    cr_assert_lt(relerr_dd(dw, g, 20), FD_TOL);
    fd_grad(mm_loss, &c, c.bias, 4, g);
    cr_assert_lt(relerr_dd(db, g, 4), FD_TOL);
    free(f);
    free(c.inp);
    free(c.w);
    free(c.bias);
    free(c.R);
    free(c.out);
    free(di);
    free(dw);
    free(db);
    free(g);
}

/* ------------------------------------------------------------------------------------------ */
/* rmsnorm                                                                                    */

Test(rmsnorm, normalises_a_hand_worked_row)
{
    /* [3, 4]: mean square 12.5, eps 0: y = x / sqrt(12.5) * w */
    float x[2] = {3, 4}, w[2] = {1, 2}, y[2], r;
    rmsnorm_forward(y, &r, x, w, 1, 2, 0.0);
    cr_assert_float_eq(y[0], 3.0 / sqrt(12.5), 1e-6);
    cr_assert_float_eq(y[1], 8.0 / sqrt(12.5), 1e-6);
    cr_assert_float_eq(r, 1.0 / sqrt(12.5), 1e-7);
}

Test(rmsnorm, fast_matches_the_reference_on_random_shapes)
{
    int shapes[][2] = {{1, 7}, {13, 64}, {40, 100}, {300, 128}}; /* the last one threaded */
    for (int s = 0; s < 4; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        int64_t nc = (int64_t)N * C;
        float *x = frand(nc, -2, 2), *w = frand(C, 0.5f, 1.5f), *dy = frand(nc, -1, 1);
        double *xd = to_d(x, nc), *wd = to_d(w, C), *dyd = to_d(dy, nc);
        float *y = malloc((size_t)nc * sizeof(float)), *r = malloc((size_t)N * sizeof(float));
        double *yd = malloc((size_t)nc * sizeof(double));
        rmsnorm_forward(y, r, x, w, N, C, 1e-6);
        rmsnorm_forward_ref(yd, xd, wd, N, C, 1e-6);
        cr_assert_lt(relerr(y, yd, nc), FAST_TOL);
        float *dx = fzeros(nc), *dw = fzeros(C);
        double *dxd = dzeros(nc), *dwd = dzeros(C);
        rmsnorm_backward(dx, dw, dy, x, w, r, N, C);
        rmsnorm_backward_ref(dxd, dwd, dyd, xd, wd, N, C, 1e-6);
        cr_assert_lt(relerr(dx, dxd, nc), FAST_TOL);
        cr_assert_lt(relerr(dw, dwd, C), FAST_TOL);
        free(x); free(w); free(dy); free(xd); free(wd); free(dyd); free(y); free(r);
        free(yd); free(dx); free(dw); free(dxd); free(dwd);
    }
}

typedef struct rn_ctx {
    double *x, *w, *R, *y;
    int N, C;
} rn_ctx;

static double rn_loss(void *p)
{
    rn_ctx *c = p;
    rmsnorm_forward_ref(c->y, c->x, c->w, c->N, c->C, 1e-5);
    return dotd(c->y, c->R, (int64_t)c->N * c->C);
}

Test(rmsnorm, reference_backward_matches_finite_differences)
{
    rn_ctx c = {.N = 3, .C = 6};
    float *f = frand(60, -1, 1);
    c.x = to_d(f, 18);
    c.w = to_d(f + 18, 6);
    c.R = to_d(f + 24, 18);
    c.y = dzeros(18);
    double *dx = dzeros(18), *dw = dzeros(6), *g = dzeros(18);
    rmsnorm_backward_ref(dx, dw, c.R, c.x, c.w, c.N, c.C, 1e-5);
    fd_grad(rn_loss, &c, c.x, 18, g);
    cr_assert_lt(relerr_dd(dx, g, 18), FD_TOL);
    fd_grad(rn_loss, &c, c.w, 6, g);
    cr_assert_lt(relerr_dd(dw, g, 6), FD_TOL);
    free(f); free(c.x); free(c.w); free(c.R); free(c.y); free(dx); free(dw); free(g);
}

/* ------------------------------------------------------------------------------------------ */
/* rope                                                                                       */

Test(rope, rotates_first_and_second_halves_by_position_times_inverse_frequency)
{
    /* hd 4, theta 100: inv_freq = {1, 1/10}; position 1 rotates pair (x0, x2) by 1 radian and
     * (x1, x3) by 0.1; position 0 is the identity. */
    float x[2 * 4] = {1, 2, 3, 4, 1, 2, 3, 4}, y[8], cs[4], sn[4];
    rope_table(cs, sn, 2, 4, 100.0);
    rope_forward(y, x, cs, sn, 1, 2, 1, 4);
    for (int i = 0; i < 4; i++)
        cr_assert_float_eq(y[i], x[i], 1e-7);
    cr_assert_float_eq(y[4], 1 * cos(1.0) - 3 * sin(1.0), 1e-6);
    cr_assert_float_eq(y[6], 3 * cos(1.0) + 1 * sin(1.0), 1e-6);
    cr_assert_float_eq(y[5], 2 * cos(0.1) - 4 * sin(0.1), 1e-6);
    cr_assert_float_eq(y[7], 4 * cos(0.1) + 2 * sin(0.1), 1e-6);
}

Test(rope, fast_matches_the_reference_on_random_shapes)
{
    int shapes[][4] = {{1, 5, 1, 2}, {2, 9, 3, 8}, {3, 17, 2, 64}, {4, 64, 4, 32}}; /* B T nh hd */
    for (int s = 0; s < 4; s++) {
        int B = shapes[s][0], T = shapes[s][1], nh = shapes[s][2], hd = shapes[s][3];
        int64_t n = (int64_t)B * T * nh * hd;
        float *x = frand(n, -1, 1), *cs = malloc((size_t)T * hd / 2 * sizeof(float));
        float *sn = malloc((size_t)T * hd / 2 * sizeof(float)), *y = malloc((size_t)n * 4);
        double *xd = to_d(x, n), *yd = dzeros(n);
        rope_table(cs, sn, T, hd, 10000.0);
        rope_forward(y, x, cs, sn, B, T, nh, hd);
        rope_forward_ref(yd, xd, B, T, nh, hd, 10000.0);
        cr_assert_lt(relerr(y, yd, n), FAST_TOL);
        rope_backward(y, x, cs, sn, B, T, nh, hd);
        rope_backward_ref(yd, xd, B, T, nh, hd, 10000.0);
        cr_assert_lt(relerr(y, yd, n), FAST_TOL);
        rope_forward(x, x, cs, sn, B, T, nh, hd); /* in place */
        rope_forward_ref(xd, xd, B, T, nh, hd, 10000.0);
        cr_assert_lt(relerr(x, xd, n), FAST_TOL);
        free(x); free(cs); free(sn); free(y); free(xd); free(yd);
    }
}

typedef struct rp_ctx {
    double *x, *R, *y;
    int B, T, nh, hd;
} rp_ctx;

static double rp_loss(void *p)
{
    rp_ctx *c = p;
    rope_forward_ref(c->y, c->x, c->B, c->T, c->nh, c->hd, 500.0);
    return dotd(c->y, c->R, (int64_t)c->B * c->T * c->nh * c->hd);
}

Test(rope, reference_backward_matches_finite_differences)
{
    rp_ctx c = {.B = 2, .T = 3, .nh = 2, .hd = 4};
    int64_t n = 48;
    float *f = frand(2 * n, -1, 1);
    c.x = to_d(f, n);
    c.R = to_d(f + n, n);
    c.y = dzeros(n);
    double *dx = dzeros(n), *g = dzeros(n);
    rope_backward_ref(dx, c.R, c.B, c.T, c.nh, c.hd, 500.0);
    fd_grad(rp_loss, &c, c.x, n, g);
    cr_assert_lt(relerr_dd(dx, g, n), FD_TOL);
    free(f); free(c.x); free(c.R); free(c.y); free(dx); free(g);
}

/* ------------------------------------------------------------------------------------------ */
/* attention                                                                                  */

Test(attention, first_position_returns_its_own_value)
{
    float q[4] = {1, 2, 3, 4}, k[4] = {5, 6, 7, 8}, v[4] = {0.5f, -1, 2, 3}, out[4], att[1];
    attention_forward(out, att, q, k, v, 1, 1, 1, 1, 4);
    cr_assert_float_eq(att[0], 1.0f, 0);
    for (int i = 0; i < 4; i++)
        cr_assert_float_eq(out[i], v[i], 0);
}

static void check_attention(int B, int T, int H, int KVH, int hd)
{
    openblas_set_num_threads(1);
    int64_t nq = (int64_t)B * T * H * hd, nk = (int64_t)B * T * KVH * hd;
    float *q = frand(nq, -1.5f, 1.5f), *k = frand(nk, -1.5f, 1.5f), *v = frand(nk, -1, 1);
    float *dout = frand(nq, -1, 1);
    double *qd = to_d(q, nq), *kd = to_d(k, nk), *vd = to_d(v, nk), *doutd = to_d(dout, nq);
    float *out = fzeros(nq), *att = fzeros((int64_t)B * H * T * T);
    double *outd = dzeros(nq);
    attention_forward(out, att, q, k, v, B, T, H, KVH, hd);
    attention_forward_ref(outd, qd, kd, vd, B, T, H, KVH, hd);
    cr_assert_lt(relerr(out, outd, nq), FAST_TOL, "forward B%d T%d H%d KVH%d hd%d", B, T, H,
                 KVH, hd);
    float *dq = frand(nq, 5, 6), *dk = frand(nk, 5, 6), *dv = frand(nk, 5, 6); /* overwritten */
    float *scratch = fzeros((int64_t)omp_get_max_threads() * T * T);
    double *dqd = dzeros(nq), *dkd = dzeros(nk), *dvd = dzeros(nk);
    attention_backward(dq, dk, dv, scratch, dout, att, q, k, v, B, T, H, KVH, hd);
    attention_backward_ref(dqd, dkd, dvd, doutd, qd, kd, vd, B, T, H, KVH, hd);
    cr_assert_lt(relerr(dq, dqd, nq), FAST_TOL, "dq H%d KVH%d", H, KVH);
    cr_assert_lt(relerr(dk, dkd, nk), FAST_TOL, "dk H%d KVH%d", H, KVH);
    cr_assert_lt(relerr(dv, dvd, nk), FAST_TOL, "dv H%d KVH%d", H, KVH);
    free(q); free(k); free(v); free(dout); free(qd); free(kd); free(vd); free(doutd);
    free(out); free(att); free(outd); free(dq); free(dk); free(dv); free(scratch);
    free(dqd); free(dkd); free(dvd);
}

Test(attention, fast_matches_the_reference_with_grouped_query_heads)
{
    check_attention(2, 7, 4, 2, 8);  /* GQA */
    check_attention(1, 12, 4, 1, 16); /* MQA */
    check_attention(3, 5, 2, 2, 4);  /* MHA */
    check_attention(2, 33, 6, 3, 64);
    check_attention(2, 150, 4, 2, 16); /* several row blocks, the last one partial */
}

typedef struct at_ctx {
    double *q, *k, *v, *R, *out;
    int B, T, H, KVH, hd;
} at_ctx;

static double at_loss(void *p)
{
    at_ctx *c = p;
    attention_forward_ref(c->out, c->q, c->k, c->v, c->B, c->T, c->H, c->KVH, c->hd);
    return dotd(c->out, c->R, (int64_t)c->B * c->T * c->H * c->hd);
}

static void fd_attention(int B, int T, int H, int KVH, int hd)
{
    at_ctx c = {.B = B, .T = T, .H = H, .KVH = KVH, .hd = hd};
    int64_t nq = (int64_t)B * T * H * hd, nk = (int64_t)B * T * KVH * hd;
    float *f = frand(2 * nq + 2 * nk, -1, 1);
    c.q = to_d(f, nq);
    c.k = to_d(f + nq, nk);
    c.v = to_d(f + nq + nk, nk);
    c.R = to_d(f + nq + 2 * nk, nq);
    c.out = dzeros(nq);
    double *dq = dzeros(nq), *dk = dzeros(nk), *dv = dzeros(nk), *g = dzeros(nq);
    attention_backward_ref(dq, dk, dv, c.R, c.q, c.k, c.v, B, T, H, KVH, hd);
    fd_grad(at_loss, &c, c.q, nq, g);
    cr_assert_lt(relerr_dd(dq, g, nq), FD_TOL, "dq H%d KVH%d", H, KVH);
    fd_grad(at_loss, &c, c.k, nk, g);
    cr_assert_lt(relerr_dd(dk, g, nk), FD_TOL, "dk H%d KVH%d", H, KVH);
    fd_grad(at_loss, &c, c.v, nk, g);
    cr_assert_lt(relerr_dd(dv, g, nk), FD_TOL, "dv H%d KVH%d", H, KVH);
    free(f); free(c.q); free(c.k); free(c.v); free(c.R); free(c.out);
    free(dq); free(dk); free(dv); free(g);
}

Test(attention, reference_backward_matches_finite_differences_with_gqa_and_mqa)
{
    fd_attention(2, 4, 4, 2, 4);
    fd_attention(1, 5, 3, 1, 2);
}

/* ------------------------------------------------------------------------------------------ */
/* swiglu                                                                                     */

Test(swiglu, fast_matches_the_reference_and_a_hand_value)
{
    float g1 = 1.0f, u1 = 2.0f, o1;
    swiglu_forward(&o1, &g1, &u1, 1);
    cr_assert_float_eq(o1, 2.0 / (1.0 + exp(-1.0)), 1e-6);
    int64_t n = 40001; /* threaded */
    float *g = frand(n, -6, 6), *u = frand(n, -2, 2), *dy = frand(n, -1, 1), *o = fzeros(n);
    double *gd = to_d(g, n), *ud = to_d(u, n), *dyd = to_d(dy, n), *od = dzeros(n);
    swiglu_forward(o, g, u, n);
    swiglu_forward_ref(od, gd, ud, n);
    cr_assert_lt(relerr(o, od, n), FAST_TOL);
    float *dg = fzeros(n), *du = fzeros(n);
    double *dgd = dzeros(n), *dud = dzeros(n);
    swiglu_backward(dg, du, dy, g, u, n);
    swiglu_backward_ref(dgd, dud, dyd, gd, ud, n);
    cr_assert_lt(relerr(dg, dgd, n), FAST_TOL);
    cr_assert_lt(relerr(du, dud, n), FAST_TOL);
    free(g); free(u); free(dy); free(o); free(gd); free(ud); free(dyd); free(od);
    free(dg); free(du); free(dgd); free(dud);
}

typedef struct sw_ctx {
    double *g, *u, *R, *o;
    int64_t n;
} sw_ctx;

static double sw_loss(void *p)
{
    sw_ctx *c = p;
    swiglu_forward_ref(c->o, c->g, c->u, c->n);
    return dotd(c->o, c->R, c->n);
}

Test(swiglu, reference_backward_matches_finite_differences)
{
    sw_ctx c = {.n = 20};
    float *f = frand(60, -4, 4);
    c.g = to_d(f, 20);
    c.u = to_d(f + 20, 20);
    c.R = to_d(f + 40, 20);
    c.o = dzeros(20);
    double *dg = dzeros(20), *du = dzeros(20), *g = dzeros(20);
    swiglu_backward_ref(dg, du, c.R, c.g, c.u, c.n);
    fd_grad(sw_loss, &c, c.g, 20, g);
    cr_assert_lt(relerr_dd(dg, g, 20), FD_TOL);
    fd_grad(sw_loss, &c, c.u, 20, g);
    cr_assert_lt(relerr_dd(du, g, 20), FD_TOL);
    free(f); free(c.g); free(c.u); free(c.R); free(c.o); free(dg); free(du); free(g);
}

/* ------------------------------------------------------------------------------------------ */
/* crossentropy                                                                               */

Test(crossentropy, uniform_logits_cost_log_v)
{
    float logits[8] = {3, 3, 3, 3, 3, 3, 3, 3}, loss, d[8], dl = 1.0f;
    int32_t t = 5;
    crossentropy_forward(&loss, logits, &t, 1, 8);
    cr_assert_float_eq(loss, log(8.0), 1e-6);
    crossentropy_backward(d, logits, &t, &dl, 1, 8);
    for (int i = 0; i < 8; i++)
        cr_assert_float_eq(d[i], i == 5 ? 1.0 / 8 - 1 : 1.0 / 8, 1e-7);
}

Test(crossentropy, fast_matches_the_reference_and_skips_rows_with_zero_weight)
{
    int N = 117, V = 300; /* threaded */
    int64_t nv = (int64_t)N * V;
    float *x = frand(nv, -8, 8), *dl = frand(N, 0.1f, 1), *l = fzeros(N);
    dl[3] = 0.0f;
    int32_t t[117];
    for (int n = 0; n < N; n++)
        t[n] = (n * 37) % V;
    double *xd = to_d(x, nv), *dld = to_d(dl, N), *ld = dzeros(N), *dxd = dzeros(nv);
    crossentropy_forward(l, x, t, N, V);
    crossentropy_forward_ref(ld, xd, t, N, V);
    cr_assert_lt(relerr(l, ld, N), FAST_TOL);
    crossentropy_backward_ref(dxd, xd, t, dld, N, V);
    crossentropy_backward(x, x, t, dl, N, V); /* in place */
    cr_assert_lt(relerr(x, dxd, nv), FAST_TOL);
    for (int i = 0; i < V; i++)
        cr_assert_eq(x[3 * V + i], 0.0f);
    free(x); free(dl); free(l); free(xd); free(dld); free(ld); free(dxd);
}

typedef struct ce_ctx {
    double *x, *R, *l;
    int32_t *t;
    int N, V;
} ce_ctx;

static double ce_loss(void *p)
{
    ce_ctx *c = p;
    crossentropy_forward_ref(c->l, c->x, c->t, c->N, c->V);
    return dotd(c->l, c->R, c->N);
}

Test(crossentropy, reference_backward_matches_finite_differences)
{
    int32_t t[3] = {0, 4, 2};
    ce_ctx c = {.N = 3, .V = 5, .t = t};
    float *f = frand(18, -2, 2);
    c.x = to_d(f, 15);
    c.R = to_d(f + 15, 3);
    c.l = dzeros(3);
    double *dx = dzeros(15), *g = dzeros(15);
    crossentropy_backward_ref(dx, c.x, t, c.R, c.N, c.V);
    fd_grad(ce_loss, &c, c.x, 15, g);
    cr_assert_lt(relerr_dd(dx, g, 15), FD_TOL);
    free(f); free(c.x); free(c.R); free(c.l); free(dx); free(g);
}

/* ------------------------------------------------------------------------------------------ */
/* embedding                                                                                  */

Test(embedding, gathers_dequantised_rows_and_scatters_gradients_by_row_range)
{
    int V = 50, C = 21, N = 9;
    int32_t tok[9] = {3, 49, 3, 0, 17, 17, 17, 25, 48};
    for (int bits = 4; bits <= 16; bits *= 2) {
        qmat E;
        qmat_make(&E, V, C, bits == 4 ? 13 : bits == 8 ? 100 : 1000, bits);
        double *ed = qmat_dense(&E);
        float *out = fzeros((int64_t)N * C), *dout = frand((int64_t)N * C, -1, 1);
        double *outd = dzeros((int64_t)N * C), *doutd = to_d(dout, (int64_t)N * C);
        embedding_forward(out, tok, &E.q, N);
        embedding_forward_ref(outd, tok, ed, N, C);
        for (int64_t i = 0; i < (int64_t)N * C; i++)
            cr_assert_eq(out[i], (float)outd[i], "bits %d element %lld", bits, (long long)i);
        double *dEd = dzeros((int64_t)V * C);
        embedding_backward_ref(dEd, doutd, tok, N, C);
        float *G = fzeros((int64_t)V * C);
        embedding_backward(G, dout, tok, 0, 20, N, C); /* two chunks: [0,20), [20,50) */
        embedding_backward(G + 20 * C, dout, tok, 20, 30, N, C);
        cr_assert_lt(relerr(G, dEd, (int64_t)V * C), 1e-7);
        free(ed); free(out); free(dout); free(outd); free(doutd); free(dEd); free(G);
        qmat_free(&E);
    }
}
