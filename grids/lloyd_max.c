/* lloyd_max: the `size` levels that minimise the mean squared error of quantising a unit-variance
 * normal (or Laplace) variable, Lloyd's algorithm / Max (1960), divided by the outermost level so
 * that the ends are exactly ±1 (the row scale, the row's largest |w| at a snap, then maps the
 * outermost level onto it, as it does nf4's ±1).  Keys: size (default 16), distribution
 * (normal or laplace, default normal).
 *
 * The levels are symmetric, so only the K positive ones are solved for (K = size/2; an odd size
 * adds an exact 0 in the middle).  Level i's cell is [t(i-1), t(i)] with t(i) the midpoint of
 * levels i and i+1, t(0) = 0 (even size) or y(1)/2 (odd size), t(K) = +inf; at the optimum each
 * level is its cell's centroid: F(y) = y - c(y) = 0 (Max's conditions).  c(i) depends on
 * y(i-1..i+1) only, so the Jacobian of F is tridiagonal: Newton's method with a tridiagonal
 * solve (a step halved until the levels stay ascending and |F| shrinks), from the asymptotic
 * Panter-Dite placement (point density ∝ p^(1/3): for the normal, the quantiles of N(0, 3)), to
 * max |F(i)| < 1e-10 of cell i's width.  Plain Lloyd iterations (y = c(y)) would need O(size²)
 * of them at 65,536; Newton takes four at every size from 4 to 65,536 (0.2 s at 65,536).  All
 * in double: a cell's mass and moment by 16-point Gauss-Legendre when it is narrower than 1 (a
 * difference of two tail masses near 0.5 would lose the digits a cell of width 1e-4 needs),
 * else by erfc (normal) or exp (Laplace) in closed form; no random draws, so the result depends
 * only on size, distribution and the libm.  Unit-variance outermost level: 1.510 (size 4),
 * 2.733 (16), 7.208 (65,536).
 *
 * Unit-variance levels before the division (Max 1960, Table I; the tests check them): size 2:
 * ±0.7979; 4: ±0.4528, ±1.510; 8: ±0.2451, ±0.7560, ±1.344, ±2.152. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <primal/plugin.h>

static const primal_key lm_keys[] = {
    {"size", PRIMAL_KEY_INT, "16", "number of levels (MSE-optimal for the distribution)",
     "[2,65536]"},
    {"distribution", PRIMAL_KEY_ENUM, "normal",
     "unit-variance density the levels are fitted to: normal or laplace", "normal|laplace"},
    {0},
};

#define MAX_ITER 200
#define TOL 1e-10 /* on max |F(i)| / (the width of cell i) */
#define GL_N 16   /* Gauss-Legendre points for a narrow cell */
#define NARROW 1.0

static const double SQRT1_2 = 0.70710678118654752440; /* the Laplace scale b for unit variance */

/* The distribution on x >= 0 and the Gauss-Legendre rule on [-1, 1], computed at the start. */
typedef struct dist {
    int laplace;
    double x[GL_N], w[GL_N];
} dist;

static double d_pdf(const dist *d, double x)
{
    if (isinf(x))
        return 0.0;
    return d->laplace ? exp(-x / SQRT1_2) / (2.0 * SQRT1_2) : exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
}

/* P(X > x) for x >= 0 */
static double d_tail(const dist *d, double x)
{
    if (isinf(x))
        return 0.0;
    return d->laplace ? 0.5 * exp(-x / SQRT1_2) : 0.5 * erfc(x * SQRT1_2);
}

/* The mass m0 of [a, b] and its moment about a, mo = ∫ (x - a) p(x) dx, so that the centroid is
 * a + mo / m0.  A narrow cell by quadrature (a difference of two tail masses near 0.5 would lose
 * the digits that a cell of width 1e-4 needs), a wide or the infinite one in closed form. */
static void cell(const dist *d, double a, double b, double *m0, double *mo)
{
    if (!isinf(b) && b - a <= NARROW) {
        double h = 0.5 * (b - a), s0 = 0.0, s1 = 0.0;
        for (int k = 0; k < GL_N; k++) {
            double u = h * (1.0 + d->x[k]); /* x - a */
            double pw = d->w[k] * d_pdf(d, a + u);
            s0 += pw;
            s1 += pw * u;
        }
        *m0 = h * s0;
        *mo = h * s1;
        return;
    }
    *m0 = d_tail(d, a) - d_tail(d, b);
    if (d->laplace) /* ∫_a^b (x - a) e^{-x/s}/(2s) dx, s = SQRT1_2 */
        *mo = 0.5 * (SQRT1_2 * exp(-a / SQRT1_2) -
                     (isinf(b) ? 0.0 : (b - a + SQRT1_2) * exp(-b / SQRT1_2)));
    else /* ∫_a^b x p = p(a) - p(b) */
        *mo = d_pdf(d, a) - d_pdf(d, b) - a * *m0;
}

/* Gauss-Legendre nodes and weights on [-1, 1] by Newton on P_n (Numerical Recipes' gauleg). */
static void gauss_legendre(dist *d)
{
    const int n = GL_N;
    for (int i = 0; i < (n + 1) / 2; i++) {
        double z = cos(M_PI * (i + 0.75) / (n + 0.5)), pp = 1.0;
        for (int it = 0; it < 100; it++) {
            double p1 = 1.0, p2 = 0.0;
            for (int j = 0; j < n; j++) {
                double p3 = p2;
                p2 = p1;
                p1 = ((2.0 * j + 1.0) * z * p2 - j * p3) / (j + 1.0);
            }
            pp = n * (z * p1 - p2) / (z * z - 1.0);
            double z1 = z;
            z = z1 - p1 / pp;
            if (fabs(z - z1) < 1e-15)
                break;
        }
        d->x[i] = -z;
        d->x[n - 1 - i] = z;
        d->w[i] = d->w[n - 1 - i] = 2.0 / ((1.0 - z * z) * pp * pp);
    }
}

/* Cell bounds of the K positive levels y[0..K-1]: cell i is [t[i], t[i+1]]. */
static void bounds(const double *y, int K, int odd, double *t)
{
    t[0] = odd ? 0.5 * y[0] : 0.0;
    for (int i = 1; i < K; i++)
        t[i] = 0.5 * (y[i - 1] + y[i]);
    t[K] = INFINITY;
}

/* F = y - c(y) into f and max |F(i)| / width(i) as the result (the last cell's width taken as
 * 2 (y - t)); with jd non-NULL also the Jacobian's three diagonals (jl[i] = dF_i/dy_{i-1},
 * jd[i] = dF_i/dy_i, ju[i] = dF_i/dy_{i+1}).  NAN when a cell has no mass. */
static double residual(const dist *d, const double *y, int K, int odd, double *t, double *f,
                       double *jl, double *jd, double *ju)
{
    bounds(y, K, odd, t);
    double worst = 0.0;
    for (int i = 0; i < K; i++) {
        double a = t[i], b = t[i + 1], m0, mo;
        cell(d, a, b, &m0, &mo);
        if (!(m0 > 0.0))
            return NAN;
        double ca = mo / m0; /* centroid - a */
        f[i] = (y[i] - a) - ca;
        double width = isinf(b) ? 2.0 * (y[i] - a) : b - a;
        worst = fmax(worst, fabs(f[i]) / width);
        if (jd == NULL)
            continue;
        /* dc/da = p(a)(c - a)/m0, dc/db = p(b)(b - c)/m0 (0 at b = inf); a = (y[i-1] + y[i])/2
         * except the first cell, whose a is 0 (even) or y[0]/2 (odd) */
        double dca = d_pdf(d, a) * ca / m0;
        double dcb = isinf(b) ? 0.0 : d_pdf(d, b) * ((b - a) - ca) / m0;
        double da_self = i > 0 || odd ? 0.5 : 0.0;
        jl[i] = i > 0 ? -0.5 * dca : 0.0;
        ju[i] = i + 1 < K ? -0.5 * dcb : 0.0;
        jd[i] = 1.0 - da_self * dca - (i + 1 < K ? 0.5 * dcb : 0.0);
    }
    return worst;
}

/* Solves the tridiagonal system (jl, jd, ju) x = r in place of r (Thomas; jd and ju are
 * overwritten).  Returns 0 on a zero pivot. */
static int tridiag(double *jl, double *jd, double *ju, double *r, int K)
{
    for (int i = 1; i < K; i++) {
        if (jd[i - 1] == 0.0)
            return 0;
        double w = jl[i] / jd[i - 1];
        jd[i] -= w * ju[i - 1];
        r[i] -= w * r[i - 1];
    }
    if (jd[K - 1] == 0.0)
        return 0;
    r[K - 1] /= jd[K - 1];
    for (int i = K - 2; i >= 0; i--)
        r[i] = (r[i] - ju[i] * r[i + 1]) / jd[i];
    return 1;
}

/* The inverse of the standard normal CDF by bisection on erfc: only the start needs it, and
 * bisection is exact enough and has no constants to get wrong. */
static double norm_quantile(double p)
{
    double lo = -40.0, hi = 40.0;
    for (int k = 0; k < 200 && hi - lo > 1e-15; k++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * erfc(-mid * SQRT1_2) < p)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* The positive levels for `size` into y[0..K-1]; 0 if Newton did not converge. */
static int solve(const dist *d, int size, double *y, double *work)
{
    int K = size / 2, odd = size & 1;
    double *t = work, *f = t + K + 1, *jl = f + K, *jd = jl + K, *ju = jd + K, *ny = ju + K;
    /* Panter-Dite: level j of size (j = 0..size-1) at the (j + 1/2)/size quantile of the
     * density ∝ p^(1/3): N(0, 3) for the normal, Laplace of scale 3b for the Laplace. */
    for (int i = 0; i < K; i++) {
        double q = ((double)(size - K + i) + 0.5) / (double)size; /* upper half, ascending */
        y[i] = d->laplace ? -3.0 * SQRT1_2 * log(2.0 * (1.0 - q)) : sqrt(3.0) * norm_quantile(q);
    }
    double err = residual(d, y, K, odd, t, f, jl, jd, ju);
    for (int it = 0; it < MAX_ITER && err > TOL; it++) {
        if (isnan(err) || !tridiag(jl, jd, ju, f, K))
            return 0;
        /* y - lambda * delta, lambda halved until ascending, positive and |F| no larger */
        double lambda = 1.0, nerr = NAN;
        for (int h = 0; h < 60; h++, lambda *= 0.5) {
            int ok = 1;
            for (int i = 0; i < K && ok; i++) {
                ny[i] = y[i] - lambda * f[i];
                ok = ny[i] > (i > 0 ? ny[i - 1] : 0.0);
            }
            if (!ok)
                continue;
            nerr = residual(d, ny, K, odd, t, jl, NULL, NULL, NULL); /* jl as scratch */
            if (!isnan(nerr) && nerr < err)
                break;
            nerr = NAN;
        }
        if (isnan(nerr))
            return 0;
        memcpy(y, ny, (size_t)K * sizeof *y);
        err = residual(d, y, K, odd, t, f, jl, jd, ju);
    }
    return err <= TOL;
}

static int lm_generate(const primal_config *cfg, float *values, size_t *n, primal_err *err)
{
    int size = (int)primal_cfg_int(cfg, "size");
    dist d = {.laplace = strcmp(primal_cfg_str(cfg, "distribution"), "laplace") == 0};
    gauss_legendre(&d);
    int K = size / 2;
    double *y = malloc((size_t)K * 7 * sizeof *y + sizeof *y);
    if (y == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "lloyd_max: out of memory");
    if (!solve(&d, size, y, y + K)) {
        free(y);
        return primal_cfg_errf(cfg, "size", err, PRIMAL_ECONFIG,
                               "lloyd_max: the iteration did not converge for size %d", size);
    }
    double top = y[K - 1];
    size_t k = 0;
    for (int i = K - 1; i >= 0; i--)
        values[k++] = (float)(-y[i] / top);
    if (size & 1)
        values[k++] = 0.0f;
    for (int i = 0; i < K; i++)
        values[k++] = (float)(y[i] / top);
    *n = k;
    free(y);
    return PRIMAL_OK;
}

static const primal_grid_vt lm_vt = {
    .size = sizeof(primal_grid_vt),
    .generate = lm_generate,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_GRID,
        .name = "lloyd_max",
        .description = "N MSE-optimal levels for a normal (or Laplace) variable, ends at ±1",
        .keys = lm_keys,
        .vtable = &lm_vt,
    };
    return &d;
}
