/* momentum_carry_test.c: the momentum_carry flip policy through the mock host (SPEC.md, "Flip
 * policies", momentum_carry).  The state is read and written in its documented checkpoint
 * layout (residuals, momenta, per-row momentum scale, v, S, t, t's step), decoded here
 * independently of the plugin.  Expected values are worked by hand in the comments. */
#include <math.h>

#include "policy_harness.h"

static void teardown(void) { mockhost_unload_all(); }
TestSuite(momentum_carry, .fini = teardown);

/* 17 values -1, -7/8, ..., 1 (gap 1/8, 8-bit indices) and 16 values -1 .. 7/8 (4-bit). */
static float u17[17], u16[16];
static void grids(void)
{
    for (int i = 0; i < 17; i++)
        u17[i] = (float)(i - 8) / 8.0f;
    for (int i = 0; i < 16; i++)
        u16[i] = (float)(i - 8) / 8.0f;
}

/* A decoded view of the saved state. */
typedef struct mcv {
    int rbits, mbits;
    int64_t rows, cols, rs, ms;
    uint8_t *buf;
    size_t n;
} mcv;

static int64_t stride_of(int bits, int64_t cols) { return bits == 4 ? (cols + 1) / 2 : cols; }

static mcv mc_dump(policy_fx *f, const primal_qtensor *t, const void *st, int rbits, int mbits)
{
    mcv v = {.rbits = rbits, .mbits = mbits, .rows = t->rows, .cols = t->cols};
    v.rs = stride_of(rbits, t->cols);
    v.ms = stride_of(mbits, t->cols);
    v.buf = state_dump(f, t, st, &v.n);
    cr_assert_eq(v.n, (size_t)(v.rows * (v.rs + v.ms)) + (size_t)v.rows * 20 + 16);
    return v;
}

static int nib(const uint8_t *row, int bits, int64_t c)
{
    if (bits == 8)
        return (int8_t)row[c];
    int x = c % 2 == 0 ? row[c / 2] & 0x0F : row[c / 2] >> 4;
    return x < 8 ? x : x - 16;
}

static void set_nib(uint8_t *row, int bits, int64_t c, int val)
{
    if (bits == 8) {
        row[c] = (uint8_t)(int8_t)val;
        return;
    }
    uint8_t x = (uint8_t)(val & 0x0F);
    if (c % 2 == 0)
        row[c / 2] = (uint8_t)((row[c / 2] & 0xF0) | x);
    else
        row[c / 2] = (uint8_t)((row[c / 2] & 0x0F) | x << 4);
}

static int resid(const mcv *v, int64_t r, int64_t c)
{
    return nib(v->buf + r * v->rs, v->rbits, c);
}
static int mom(const mcv *v, int64_t r, int64_t c)
{
    return nib(v->buf + v->rows * v->rs + r * v->ms, v->mbits, c);
}
static float mscale(const mcv *v, int64_t r)
{
    float x;
    memcpy(&x, v->buf + v->rows * (v->rs + v->ms) + r * 4, 4);
    return x;
}
static double vrow(const mcv *v, int64_t r)
{
    double x;
    memcpy(&x, v->buf + v->rows * (v->rs + v->ms + 4) + r * 8, 8);
    return x;
}
static void set_resid(mcv *v, int64_t r, int64_t c, int val)
{
    set_nib(v->buf + r * v->rs, v->rbits, c, val);
}

Test(momentum_carry, describes_its_keys_and_holds_2_bytes_per_weight_at_8_bits_1_at_4)
{
    grids();
    policy_fx f;
    pfx_open(&f, "momentum_carry", NULL);
    cr_expect_str_eq(f.d->name, "momentum_carry");
    cr_expect_float_eq(primal_cfg_float(f.cfg, "lr"), 1e-3, 1e-15);
    cr_expect_float_eq(primal_cfg_float(f.cfg, "beta1"), 0.9, 1e-15);
    cr_expect_float_eq(primal_cfg_float(f.cfg, "beta2"), 0.999, 1e-15);
    cr_expect_eq(primal_cfg_int(f.cfg, "residual_bits"), 8);
    cr_expect_eq(primal_cfg_int(f.cfg, "momentum_bits"), 8);
    primal_qtensor t;
    tensor_make(&t, 4, 6, u17, 17, 8);
    void *st = state_init(&f, &t);
    /* 24 weights x 2 B, plus per row a float scale and two doubles, plus two int64 */
    cr_expect_eq(f.vt->state_bytes(f.ctx, &t, st), 48u + 4 * 20 + 16);
    state_free(&f, &t, st);
    pfx_close(&f);
    pfx_open(&f, "momentum_carry", (const char *[]){"residual_bits=4", "momentum_bits=4", NULL});
    st = state_init(&f, &t);
    cr_expect_eq(f.vt->state_bytes(f.ctx, &t, st), 24u + 4 * 20 + 16);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(momentum_carry, carries_at_plus_minus_h_and_keeps_the_remainder)
{
    grids();
    policy_fx f;
    pfx_open(&f, "momentum_carry", NULL);
    primal_qtensor t;
    tensor_make(&t, 1, 8, u17, 17, 8);
    void *st = state_init(&f, &t);
    mcv v = mc_dump(&f, &t, st, 8, 8);
    /* R = 127, h = 64 */
    const int r0[8] = {64, 63, -64, -63, 127, -127, 0, 100};
    for (int c = 0; c < 8; c++)
        set_resid(&v, 0, c, r0[c]);
    state_put(&f, &t, st, v.buf, v.n);
    primal_step_stats s = step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){9, 8, 7, 8, 9, 7, 8, 9});
    cr_expect_eq(s.flips, 5);
    cr_expect_eq(s.saturated, 0);
    free(v.buf);
    v = mc_dump(&f, &t, st, 8, 8);
    const int want[8] = {-63, 63, 63, -63, 0, 0, 0, -27};
    for (int c = 0; c < 8; c++)
        cr_expect_eq(resid(&v, 0, c), want[c], "residual %d: %d, expected %d", c, resid(&v, 0, c),
                     want[c]);
    free(v.buf);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(momentum_carry, never_moves_past_either_grid_end)
{
    grids();
    policy_fx f;
    pfx_open(&f, "momentum_carry", (const char *[]){"beta1=0", "lr=0.5", NULL});
    primal_qtensor t;
    tensor_make(&t, 1, 4, u17, 17, 0);
    primal_index_set(&t, 0, 1, 16);
    primal_index_set(&t, 0, 3, 16);
    void *st = state_init(&f, &t);
    mcv v = mc_dump(&f, &t, st, 8, 8);
    const int r0[4] = {-100, 100, 100, -64};
    for (int c = 0; c < 4; c++)
        set_resid(&v, 0, c, r0[c]);
    state_put(&f, &t, st, v.buf, v.n);
    primal_step_stats s = step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){0, 16, 1, 15});
    cr_expect_eq(s.flips, 2);
    cr_expect_eq(s.saturated, 2); /* the two pushing outward, clamped to +-h */
    free(v.buf);
    v = mc_dump(&f, &t, st, 8, 8);
    const int want[4] = {-64, 64, -27, 63};
    for (int c = 0; c < 4; c++)
        cr_expect_eq(resid(&v, 0, c), want[c], "residual %d", c);
    free(v.buf);
    /* a gradient pushing outward at the ends (index 0 down, index 16 up) saturates the
     * residual at -+R; the step still does not move them */
    primal_index_set(&t, 0, 2, 0);
    primal_index_set(&t, 0, 3, 16);
    const float G[4] = {1, -1, 1, -1};
    feed(&f, st, &t, G, 1, 0, 1);
    v = mc_dump(&f, &t, st, 8, 8);
    cr_expect_eq(resid(&v, 0, 0), -127);
    cr_expect_eq(resid(&v, 0, 1), 127);
    free(v.buf);
    step_once(&f, st, &t, 1);
    expect_indices(&t, (const uint32_t[]){0, 16, 0, 16});
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(momentum_carry, uses_the_gap_in_the_direction_of_the_move_on_a_nonuniform_grid)
{
    policy_fx f;
    pfx_open(&f, "momentum_carry", (const char *[]){"beta1=0", "lr=0.01", NULL});
    primal_qtensor t;
    const int64_t rows = 4, cols = 500;
    tensor_make(&t, rows, cols, prime13, 13, 8); /* 1/7 */
    void *st = state_init(&f, &t);
    /* beta1 0, |G| = 1 everywhere: rho = 1, m = g, u = -0.01 g.  Up (g = -1): gap 1/5 - 1/7 =
     * 2/35, u R / gap = 0.01 * 127 * 35/2 = 22.225.  Down (g = +1): gap 1/7 - 1/11 = 4/77,
     * -0.01 * 127 * 77/4 = -24.4475.  (With the other direction's gap: 24.4475 and -22.225.) */
    float *G = malloc((size_t)(rows * cols) * sizeof *G);
    for (int64_t i = 0; i < rows * cols; i++)
        G[i] = i % 2 ? 1.0f : -1.0f;
    feed(&f, st, &t, G, 0, 0, 1);
    mcv v = mc_dump(&f, &t, st, 8, 8);
    double sum_up = 0, sum_down = 0;
    int64_t n_up = 0, n_down = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            int x = resid(&v, r, c);
            if (G[r * cols + c] < 0) {
                cr_assert(x == 22 || x == 23, "up residual %d", x);
                sum_up += x;
                n_up++;
            } else {
                cr_assert(x == -25 || x == -24, "down residual %d", x);
                sum_down += x;
                n_down++;
            }
        }
    /* stochastic rounding is unbiased: means within 3 sigma (sigma = sqrt(f(1-f)/n)) */
    double mu = sum_up / n_up, sd = sqrt(0.225 * 0.775 / n_up);
    cr_expect(fabs(mu - 22.225) < 3 * sd, "mean up %g, expected 22.225 +- %g", mu, 3 * sd);
    mu = sum_down / n_down;
    sd = sqrt(0.4475 * 0.5525 / n_down);
    cr_expect(fabs(mu + 24.4475) < 3 * sd, "mean down %g, expected -24.4475 +- %g", mu, 3 * sd);
    free(v.buf);
    free(G);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

static void check_requant(int mbits)
{
    grids();
    policy_fx f;
    char key[32];
    snprintf(key, sizeof key, "momentum_bits=%d", mbits);
    pfx_open(&f, "momentum_carry", (const char *[]){"beta1=0", key, NULL});
    primal_qtensor t;
    tensor_make(&t, 2, 4, u17, 17, 8);
    void *st = state_init(&f, &t);
    /* Row 0: mean G^2 = 21/4, rho = sqrt(5.25) = 2.291288; m = G/rho, max|m| = 1.745743.
     * Row 1: mean G^2 = 2.5e-6, rho = 0.001581139; max|m| = 1.897367.
     * In units of s = max|m|/q: row 0 (q, -q/2, q/4, 0), row 1 (0, q/3, 0, -q). */
    const float G[8] = {4, -2, 1, 0, 0, 0.001f, 0, -0.003f};
    feed(&f, st, &t, G, 0, 0, 1);
    mcv v = mc_dump(&f, &t, st, 8, mbits);
    const int q = mbits == 8 ? 127 : 7;
    cr_expect_float_eq(mscale(&v, 0), 1.745743f / q, 1e-5 / q);
    cr_expect_float_eq(mscale(&v, 1), 1.897367f / q, 1e-5 / q);
    cr_expect_eq(mom(&v, 0, 0), q);
    cr_expect(mom(&v, 0, 1) == -q / 2 || mom(&v, 0, 1) == -q / 2 - 1, "%d", mom(&v, 0, 1));
    cr_expect(mom(&v, 0, 2) == q / 4 || mom(&v, 0, 2) == q / 4 + 1, "%d", mom(&v, 0, 2));
    cr_expect_eq(mom(&v, 0, 3), 0);
    cr_expect_eq(mom(&v, 1, 0), 0);
    cr_expect(mom(&v, 1, 1) == q / 3 || mom(&v, 1, 1) == q / 3 + 1, "%d", mom(&v, 1, 1));
    cr_expect_eq(mom(&v, 1, 2), 0);
    cr_expect_eq(mom(&v, 1, 3), -q);
    /* v = (1 - 0.999) mean G^2 */
    cr_expect_float_eq(vrow(&v, 0), 0.001 * 5.25, 1e-12);
    cr_expect_float_eq(vrow(&v, 1), 0.001 * 2.5e-6, 1e-15);
    free(v.buf);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(momentum_carry, requantises_the_momentum_per_row_at_8_and_4_bits)
{
    check_requant(8);
    check_requant(4);
}

Test(momentum_carry, rounds_the_momentum_stochastically_without_bias)
{
    grids();
    policy_fx f;
    pfx_open(&f, "momentum_carry", (const char *[]){"beta1=0", NULL});
    primal_qtensor t;
    const int64_t cols = 4001;
    tensor_make(&t, 1, cols, u17, 17, 8);
    void *st = state_init(&f, &t);
    /* max|m| comes from G = 127; every other weight is at 0.3 s */
    float *G = malloc((size_t)cols * sizeof *G);
    G[0] = 127.0f;
    for (int64_t c = 1; c < cols; c++)
        G[c] = 0.3f;
    feed(&f, st, &t, G, 0, 0, 1);
    mcv v = mc_dump(&f, &t, st, 8, 8);
    cr_expect_eq(mom(&v, 0, 0), 127);
    double sum = 0;
    for (int64_t c = 1; c < cols; c++) {
        int m = mom(&v, 0, c);
        cr_assert(m == 0 || m == 1, "%d", m);
        sum += m;
    }
    double mu = sum / (double)(cols - 1), sd = sqrt(0.3 * 0.7 / (double)(cols - 1));
    cr_expect(fabs(mu - 0.3) < 3 * sd, "mean %g, expected 0.3 +- %g", mu, 3 * sd);
    free(v.buf);
    free(G);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(momentum_carry, packs_4_bit_values_two_per_byte_and_round_trips_them)
{
    grids();
    policy_fx f;
    pfx_open(&f, "momentum_carry", (const char *[]){"residual_bits=4", "momentum_bits=4", NULL});
    primal_qtensor t;
    tensor_make(&t, 2, 5, u16, 16, 8);
    cr_assert_eq(t.bits, 4);
    void *st = state_init(&f, &t);
    mcv v = mc_dump(&f, &t, st, 4, 4);
    cr_assert_eq(v.rs, 3);
    const int r0[10] = {-7, -4, -1, 0, 3, 7, 4, -3, 2, -5};
    for (int i = 0; i < 10; i++)
        set_resid(&v, i / 5, i % 5, r0[i]);
    state_put(&f, &t, st, v.buf, v.n);
    mcv w = mc_dump(&f, &t, st, 4, 4);
    cr_expect_eq(memcmp(v.buf, w.buf, v.n), 0, "save after load gives the same bytes");
    free(w.buf);
    /* R = 7, h = 4: -7 -> down, 0; -4 -> down, 3; 7 -> up, 0; 4 -> up, -3; -5 -> down, 2 */
    step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){7, 7, 8, 8, 8, 9, 9, 8, 8, 7});
    free(v.buf);
    v = mc_dump(&f, &t, st, 4, 4);
    const int want[10] = {0, 3, -1, 0, 3, 0, -3, -3, 2, 2};
    for (int i = 0; i < 10; i++)
        cr_expect_eq(resid(&v, i / 5, i % 5), want[i], "residual %d: %d, expected %d", i,
                     resid(&v, i / 5, i % 5), want[i]);
    free(v.buf);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}

Test(momentum_carry, k_micro_batches_of_identical_rows_equal_one_batch)
{
    grids();
    policy_fx f;
    /* dyadic betas so that rho is exact: one batch of G, or 4 micro-batches of G/4 (the core
     * divides each by k), give v = 0.75 v + 0.25 mean G^2 and the same momentum */
    pfx_open(&f, "momentum_carry", (const char *[]){"beta1=0.5", "beta2=0.75", "lr=0.03", NULL});
    primal_qtensor a, b;
    tensor_make(&a, 2, 6, u17, 17, 8);
    a.scale[1] = -0.5f;
    tensor_copy(&b, &a);
    void *sa = state_init(&f, &a), *sb = state_init(&f, &b);
    const float G[12] = {1, -1, 1, 1, -1, -1, 0.5f, 0.5f, -0.5f, 0.5f, -0.5f, -0.5f};
    float Gq[12];
    for (int i = 0; i < 12; i++)
        Gq[i] = G[i] / 4;
    int64_t moved = 0;
    for (int s = 0; s < 4; s++) {
        feed(&f, sa, &a, G, s, 0, 1);
        for (int j = 0; j < 4; j++)
            feed(&f, sb, &b, Gq, s, j, 4);
        moved += step_once(&f, sa, &a, s).flips;
        step_once(&f, sb, &b, s);
        cr_assert_eq(memcmp(a.index, b.index, (size_t)(2 * a.row_stride)), 0, "step %d", s);
        mcv va = mc_dump(&f, &a, sa, 8, 8), vb = mc_dump(&f, &b, sb, 8, 8);
        for (int r = 0; r < 2; r++) {
            for (int c = 0; c < 6; c++) {
                cr_expect_eq(resid(&va, r, c), resid(&vb, r, c), "step %d residual %d,%d", s, r, c);
                cr_expect_eq(mom(&va, r, c), mom(&vb, r, c), "step %d momentum %d,%d", s, r, c);
            }
            cr_expect_eq(vrow(&va, r), vrow(&vb, r), "step %d v %d", s, r);
            cr_expect_float_eq(mscale(&va, r), mscale(&vb, r), 1e-6 * mscale(&va, r));
        }
        free(va.buf);
        free(vb.buf);
    }
    /* row 0's m grows 0.5, 0.75, 0.875, 0.9375: residual -15.24, -22.86, ... carries */
    cr_expect_gt(moved, 0);
    state_free(&f, &a, sa);
    state_free(&f, &b, sb);
    tensor_free(&a);
    tensor_free(&b);
    pfx_close(&f);
}

Test(momentum_carry, row_chunks_give_the_same_state_as_the_whole_tensor)
{
    grids();
    policy_fx f;
    pfx_open(&f, "momentum_carry", (const char *[]){"lr=0.05", NULL});
    primal_qtensor a, b;
    tensor_make(&a, 3, 5, u17, 17, 8);
    tensor_copy(&b, &a);
    void *sa = state_init(&f, &a), *sb = state_init(&f, &b);
    float G[15];
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < 15; i++)
            G[i] = (float)((i * 7 + s) % 5) - 2.0f;
        feed(&f, sa, &a, G, s, 0, 1);
        for (int r = 0; r < 3; r++)
            feed_rows(&f, sb, &b, G + 5 * r, r, 1, s, 0, 1);
        step_once(&f, sa, &a, s);
        step_once(&f, sb, &b, s);
    }
    size_t na, nb;
    uint8_t *ba = state_dump(&f, &a, sa, &na), *bb = state_dump(&f, &b, sb, &nb);
    cr_expect_eq(memcmp(ba, bb, na), 0);
    int64_t t;
    memcpy(&t, ba + na - 16, 8);
    cr_expect_eq(t, 3, "t counts steps, not chunks");
    free(ba);
    free(bb);
    state_free(&f, &a, sa);
    state_free(&f, &b, sb);
    tensor_free(&a);
    tensor_free(&b);
    pfx_close(&f);
}

Test(momentum_carry, a_negative_row_scale_reverses_the_direction)
{
    grids();
    policy_fx f;
    pfx_open(&f, "momentum_carry", (const char *[]){"beta1=0", "lr=0.5", NULL});
    primal_qtensor t;
    tensor_make(&t, 2, 3, u17, 17, 8);
    t.scale[0] = 0.5f;
    t.scale[1] = -0.5f;
    void *st = state_init(&f, &t);
    /* G > 0: u = -0.5 * sign(scale) / 0.5 = -+1, i.e. 8 grid gaps: the residual saturates at
     * -+R and the step moves row 0 down, row 1 up, leaving 0 */
    const float G[6] = {1, 1, 1, 1, 1, 1};
    feed(&f, st, &t, G, 0, 0, 1);
    primal_step_stats s = step_once(&f, st, &t, 0);
    expect_indices(&t, (const uint32_t[]){7, 7, 7, 9, 9, 9});
    cr_expect_eq(s.flips, 6);
    mcv v = mc_dump(&f, &t, st, 8, 8);
    for (int i = 0; i < 6; i++)
        cr_expect_eq(resid(&v, i / 3, i % 3), 0);
    free(v.buf);
    state_free(&f, &t, st);
    tensor_free(&t);
    pfx_close(&f);
}
