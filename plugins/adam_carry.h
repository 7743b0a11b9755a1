/* adam_carry.h: what adam_carry.c and adam_carry_cuda.cu share: the context the [flip] keys
 * fill, the state's sizes and checkpoint layout, its validation, and the per-weight arithmetic,
 * written once for the host and the device so that both halves compute the same bits.
 *
 * The device half follows the CPU's order of every float operation: AC_MUL, AC_ADD, AC_DIV and
 * AC_SQRT are __fmul_rn, __fadd_rn, __fdiv_rn and __fsqrt_rn on the device (nvcc cannot contract
 * them into FMAs) and plain operators on the host (C11 on x86-64 does not contract either).  Sums
 * whose order matters are taken in one fixed tree on both (ac_warp_sum, AC_TB, AC_RPB). */
#ifndef PRIMAL_PLUGINS_ADAM_CARRY_H
#define PRIMAL_PLUGINS_ADAM_CARRY_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <primal/plugin.h>

#if defined(__CUDACC__)
#define AC_HD __host__ __device__ __forceinline__
#else
#define AC_HD static inline
#endif

#if defined(__CUDA_ARCH__)
#define AC_MUL(a, b) __fmul_rn((a), (b))
#define AC_ADD(a, b) __fadd_rn((a), (b))
#define AC_DIV(a, b) __fdiv_rn((a), (b))
#define AC_SQRT(a) __fsqrt_rn(a)
#else
#define AC_MUL(a, b) ((a) * (b))
#define AC_ADD(a, b) ((a) + (b))
#define AC_DIV(a, b) ((a) / (b))
#define AC_SQRT(a) sqrtf(a)
#endif
#define AC_SUB(a, b) AC_ADD((a), -(b))

#define AC_Q 127     /* momentum levels each side of zero (int8) */
#define AC_R 127     /* residual units per grid gap of the high byte (int8) */
#define AC_H 64      /* the high byte lies in [-AC_H, AC_H] between steps */
#define AC_TB 256    /* columns per partial row sum (the device's thread block) */
#define AC_RPB 32    /* rows per partial column sum */
#define AC_RNG_MOMENTUM 0x41 /* primal_rng_stream purposes */
#define AC_RNG_RESIDUAL 0x42

/* create() fills it; both halves read it.  gpu: the device half's scratch (NULL on the CPU). */
typedef struct ac_ctx {
    double lr, beta1, beta2, eps, wd;
    int block;    /* momentum block, columns */
    int factored; /* 1: row x column second moment; 0: per row */
    int rbits;    /* residual bits: 8, 12 or 16 (an int8 high part and 0, 4 or 8 low bits) */
    void *gpu;
} ac_ctx;

static inline int64_t ac_nblk(const ac_ctx *c, int64_t cols) { return (cols + c->block - 1) / c->block; }

/* The residual of a weight is v = hi L + lo with hi the int8 `resid` and lo in [0, L) its low
 * bits, L = 2^(rbits - 8): 1 (no low bits), 16 (a nibble, two weights of a row to a byte: column
 * c in byte c/2 of its row, the even column in the low nibble) or 256 (a byte).  v counts
 * AC_R L units per grid gap and lies in [-AC_H L, AC_H L]. */
static inline int ac_lo_shift(const ac_ctx *c) { return c->rbits - 8; }
static inline int64_t ac_lo_bytes(const ac_ctx *c, int64_t rows, int64_t cols)
{
    return c->rbits == 12 ? rows * ((cols + 1) / 2) : c->rbits == 16 ? rows * cols : 0;
}

/* The checkpoint layout, in order: resid (int8, rows*cols), rlo (the low bits, ac_lo_bytes), mom
 * (int8, rows*cols), mscale (f32, rows*nblk), vr (f32, rows), vc (f32, cols), racc (f32, rows),
 * cacc (f32, cols), invS (f32, 1: 1/mean(vr)), t, t_step (int64); native byte order. */
static inline size_t ac_state_bytes(const ac_ctx *c, int64_t rows, int64_t cols)
{
    return (size_t)(2 * rows * cols + ac_lo_bytes(c, rows, cols)) +
           sizeof(float) * (size_t)(rows * ac_nblk(c, cols) + 2 * rows + 2 * cols + 1) +
           2 * sizeof(int64_t);
}

/* The residual of weight (r, c) from hi (rows*cols) and lo (ac_lo_bytes) with shift 0, 4 or 8. */
AC_HD int ac_resid_get(const int8_t *hi, const uint8_t *lo, int shift, int64_t r, int64_t cols,
                       int64_t c)
{
    const int h = hi[r * cols + c];
    if (shift == 0)
        return h;
    if (shift == 8)
        return h * 256 + lo[r * cols + c];
    const uint8_t b = lo[r * ((cols + 1) / 2) + c / 2];
    return h * 16 + ((c & 1) ? b >> 4 : b & 15);
}

/* v split into its high part (floor(v / L)) and low bits (v - hi L). */
AC_HD int ac_resid_hi(int v, int shift)
{
    const int L = 1 << shift, lo = ((v % L) + L) % L;
    return (v - lo) / L;
}

AC_HD int ac_resid_lo(int v, int shift)
{
    const int L = 1 << shift;
    return ((v % L) + L) % L;
}

/* A checkpoint's state is untrusted: residuals and momenta within their ranges, every float
 * finite and not negative, the counters sane.  0, or -1 with *what naming the field. */
static inline int ac_state_check(const ac_ctx *c, int64_t rows, int64_t cols, const void *buf,
                                 const char **what)
{
    const int8_t *p = (const int8_t *)buf;
    const int64_t n = rows * cols, nf = rows * ac_nblk(c, cols) + 2 * rows + 2 * cols + 1;
    const int64_t nlo = ac_lo_bytes(c, rows, cols);
    const int shift = ac_lo_shift(c), H = AC_H << shift;
    const uint8_t *lo = (const uint8_t *)buf + n;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t col = 0; col < cols; col++) {
            const int v = ac_resid_get(p, lo, shift, r, cols, col);
            if (v < -H || v > H)
                return *what = shift == 0 ? "a residual outside [-64, 64]"
                                          : "a residual outside [-64, 64] grid-gap units / 127",
                       -1;
        }
    if (shift == 4 && (cols & 1))
        for (int64_t r = 0; r < rows; r++)
            if (lo[r * ((cols + 1) / 2) + cols / 2] >> 4)
                return *what = "residual low bits past the last column", -1;
    for (int64_t i = 0; i < n; i++)
        if (p[n + nlo + i] < -AC_Q)
            return *what = "a momentum of -128", -1;
    const uint8_t *f = (const uint8_t *)buf + 2 * n + nlo;
    for (int64_t i = 0; i < nf; i++) {
        float x;
        memcpy(&x, f + 4 * i, sizeof x);
        if (!(x >= 0.0f && x <= 3.0e38f))
            return *what = "a momentum scale or second moment that is negative or not finite", -1;
    }
    int64_t t, t_step;
    memcpy(&t, f + 4 * nf, sizeof t);
    memcpy(&t_step, f + 4 * nf + sizeof t, sizeof t_step);
    if (t < 0 || t_step < -1)
        return *what = "a negative step counter", -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Per-weight arithmetic                                                                       */

/* The gap above / below grid[i] (the inner gap at either end). */
AC_HD float ac_gap_up(const float *g, int n, int i)
{
    return i < n - 1 ? AC_SUB(g[i + 1], g[i]) : AC_SUB(g[n - 1], g[n - 2]);
}

AC_HD float ac_gap_dn(const float *g, int n, int i)
{
    (void)n;
    return i > 0 ? AC_SUB(g[i], g[i - 1]) : AC_SUB(g[1], g[0]);
}

/* The index of the grid value nearest x, ties to the lower index. */
AC_HD int ac_nearest(const float *g, int n, float x)
{
    if (x <= g[0])
        return 0;
    if (x >= g[n - 1])
        return n - 1;
    int lo = 0, hi = n - 1; /* g[lo] < x <= g[hi] */
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (g[mid] < x)
            lo = mid;
        else
            hi = mid;
    }
    return AC_SUB(x, g[lo]) <= AC_SUB(g[hi], x) ? lo : hi;
}

/* The momentum before re-quantising: decay * (mi * s_old) + (1 - beta1) * g. */
AC_HD float ac_mom(float decay, int mi, float s_old, float omb1, float g)
{
    return AC_ADD(AC_MUL(decay, AC_MUL((float)mi, s_old)), AC_MUL(omb1, g));
}

/* m quantised with its block's maximum gmax and inv = AC_Q / gmax, rounding stochastically with
 * u in [0, 1); the entry equal to gmax maps exactly to +-AC_Q. */
AC_HD int ac_quant(float m, float gmax, float inv, float u)
{
    if (!(gmax > 0.0f))
        return 0;
    if (fabsf(m) == gmax)
        return m > 0.0f ? AC_Q : -AC_Q;
    float f = floorf(AC_ADD(AC_MUL(m, inv), u));
    return f > AC_Q ? AC_Q : f < -AC_Q ? -AC_Q : f == f ? (int)f : 0;
}

/* g normalised by the second moment from the step before, vhat = vr vc / mean(vr) (or vr),
 * bias-corrected with inv_bc2: g / (sqrt(vhat inv_bc2) + eps), clamped to +-clip.  At the first
 * step (first != 0) no second moment exists yet, and the result is sign(g), which is Adam's own
 * first step. */
AC_HD float ac_norm(float g, float vhat, float inv_bc2, float eps, float clip, int first)
{
    if (first)
        return g > 0.0f ? 1.0f : g < 0.0f ? -1.0f : 0.0f;
    const float x = AC_DIV(g, AC_ADD(AC_SQRT(AC_MUL(vhat, inv_bc2)), eps));
    return x > clip ? clip : x < -clip ? -clip : x;
}

/* The move of one weight in grid units: -lrs mhat, mhat = mi s / (1 - beta1^t), with
 * lrs = lr / max(|scale|, 1e-12) for the row. */
AC_HD float ac_direction(int mi, float s, float inv_bc1, float lrs)
{
    return -AC_MUL(lrs, AC_MUL(AC_MUL((float)mi, s), inv_bc1));
}

/* One weight's move at step(): its position grid[i] + rv/R gaps (R = AC_R << shift) goes by ug
 * (the Adam direction) minus lrwd times itself (decoupled weight decay), then is split again
 * into the nearest grid index, returned, and a residual *rv rounded stochastically with u.  A
 * position past either end of the grid keeps its residual at +-H (AC_H << shift) and sets
 * *sat. */
AC_HD int ac_move(const float *grid, int n, int i, int *rv, float ug, float lrwd, float u,
                  int shift, int *sat)
{
    const int R = AC_R << shift, H = AC_H << shift;
    const float gap = *rv > 0 ? ac_gap_up(grid, n, i) : ac_gap_dn(grid, n, i);
    const float pos = AC_ADD(grid[i], AC_MUL((float)*rv, AC_DIV(gap, (float)R)));
    const float p = AC_ADD(pos, AC_SUB(ug, AC_MUL(lrwd, pos)));
    *sat = 0;
    if (!(p == p))
        return i;
    const int j = ac_nearest(grid, n, p);
    const float d = AC_SUB(p, grid[j]);
    const float gj = d > 0.0f ? ac_gap_up(grid, n, j) : ac_gap_dn(grid, n, j);
    float x = AC_MUL(AC_DIV(d, gj), (float)R);
    const float lim = (float)(H + 1);
    x = x > lim ? lim : x < -lim ? -lim : x;
    int r = (int)floorf(AC_ADD(x, u));
    if (r > H) {
        r = H;
        *sat = 1;
    } else if (r < -H) {
        r = -H;
        *sat = 1;
    }
    *rv = r;
    return j;
}

/* The second-moment EMA of one row or column: b2 v + (1 - b2) k acc / count. */
AC_HD float ac_ema(float v, float b2, float omb2, float k, float acc, float count)
{
    return AC_ADD(AC_MUL(b2, v), AC_MUL(omb2, AC_DIV(AC_MUL(k, acc), count)));
}

#endif
