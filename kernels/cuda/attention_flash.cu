/* attention_flash.cu: fused causal attention (FlashAttention-2's tiling, Dao 2023) for bf16
 * operands and head sizes 32, 64 and 128, on the tensor cores through mma.sync m16n8k16.
 * attention.cu calls these for bf16 runs and keeps its cuBLAS path for float32 and other head
 * sizes.  The math is attention.cu's (SPEC.md, "Models"): scores q·k / sqrt(hd), causal
 * softmax, P·V; nothing of (T, T) size ever reaches memory.
 *
 * Tiles: a CTA of 4 warps takes 64 rows (queries in forward and dQ, keys in dK/dV), each warp
 * 16 of them, and walks the other side in blocks of 64, whose tiles arrive by cp.async into a
 * second buffer while the first is used.  Tiles stay row-major in shared memory: where a
 * product needs one transposed (P·V, dS·K, Pᵀ·dO, dSᵀ·Q), ldmatrix.trans reads it so.  Register
 * fragments follow the PTX layout of m16n8k16: the accumulator of S (rows × 8 keys) is, pair for
 * pair, the A operand of the next product, so P and dS never leave registers.  Softmax runs in
 * base 2 (2^(s·c − m·c), c = log2(e)/sqrt(hd), one FFMA and one MUFU.EX2 a score); lse is
 * stored in natural log, as attention.cu's.
 *
 * Backward is split in two kernels so that every sum has one owner and a fixed order (runs
 * are reproducible bit for bit; no atomics): dK, dV per key block, summing over the group's
 * query heads and the query blocks in order; dQ per query block, over the key blocks in order.
 * The price is computing S and dP twice.  The dQ kernel makes D = rowsum(dO ∘ O) for both.
 * Backward's epilogues write dq, dk, dv token-major, rotated back through RoPE, in the layout of
 * the projections' outputs: a thread's accumulators hold column c and its rotary partner
 * c + hd/2 alike (tiles d and d + hd/16 of the same lane), so the rotation needs no exchange,
 * and no head-major float32 copy of the gradients is ever written and read again.
 * No keys. */
#include "attention_flash.h"

#include <cuda_bf16.h>

namespace {

typedef __nv_bfloat16 bf16;

constexpr int kRows = 64;  /* rows of a CTA (4 warps x 16) */
constexpr int kBlock = 64; /* the other side's block */
constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/* 16 bytes global -> shared without passing through registers; zeros when !valid. */
__device__ __forceinline__ void cp16(void *sdst, const void *gsrc, bool valid)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned d = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(gsrc),
                 "r"(valid ? 16 : 0));
#endif
}

__device__ __forceinline__ void cp4(void *sdst, const void *gsrc, bool valid)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned d = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(gsrc),
                 "r"(valid ? 4 : 0));
#endif
}

__device__ __forceinline__ void cp_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

/* Wait until at most N groups of this thread's copies are in flight. */
template <int N>
__device__ __forceinline__ void cp_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/* 2^x, flushing subnormal results to zero: exp2f without -ftz wraps MUFU.EX2 in a rescale for
 * subnormal inputs and outputs, three instructions where one does, and every argument here is
 * a score minus its row's maximum or log-sum-exp, whose subnormal powers are zero anyway. */
__device__ __forceinline__ float exp2_ftz(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Two floats as the bf16 pair of one fragment register: the lower column in the low half. */
__device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ uint32_t ld2(const bf16 *p)
{
    return *reinterpret_cast<const uint32_t *>(p);
}

/* Starts copying rows [r0, r0 + 64) of a (T, HD) matrix, rows ld apart, into s (row stride
 * LD); rows past T read as zeros. */
template <int HD, int LD>
__device__ __forceinline__ void tile_async(bf16 *s, const bf16 *g, int r0, int T,
                                           size_t ld = HD)
{
    constexpr int V = HD / 8, RS = kThreads / V; /* 16-byte vectors a row; rows a pass */
    const int r = (int)threadIdx.x / V, c = ((int)threadIdx.x % V) * 8;
    const bf16 *gp = g + (size_t)(r0 + r) * ld + c;
    bf16 *sp = s + r * LD + c;
#pragma unroll
    for (int it = 0; it < kRows / RS; it++) {
        bool ok = r0 + r + it * RS < T;
        cp16(sp + it * RS * LD, ok ? gp + (size_t)it * RS * ld : g, ok);
    }
}

/* Starts copying n = 64 floats v[t0 ..] into s; entries past T read as zeros. */
__device__ __forceinline__ void vec_async(float *s, const float *v, int t0, int T)
{
    int i = (int)threadIdx.x;
    if (i < kBlock)
        cp4(s + i, t0 + i < T ? v + t0 + i : v, t0 + i < T);
}

/* The A fragment (16 rows from row0, k-step kk) of a row-major bf16 matrix with stride ld. */
__device__ __forceinline__ void frag_a(uint32_t a[4], const bf16 *m, int ld, int row0, int kk,
                                       int lane)
{
    const bf16 *p = m + (size_t)(row0 + lane / 4) * ld + kk * 16 + (lane % 4) * 2;
    a[0] = ld2(p);
    a[1] = ld2(p + 8 * ld);
    a[2] = ld2(p + 8);
    a[3] = ld2(p + 8 * ld + 8);
}

/* The B fragment of n-tile j, k-step kk, from a matrix stored n-major (s[n][k], stride ld). */
__device__ __forceinline__ void frag_b(uint32_t &b0, uint32_t &b1, const bf16 *s, int ld, int j,
                                       int kk, int lane)
{
    const bf16 *p = s + (j * 8 + lane / 4) * ld + kk * 16 + (lane % 4) * 2;
    b0 = ld2(p);
    b1 = ld2(p + 8);
}

/* The B fragments of n-tiles n0/8 and n0/8 + 1 at k rows [k0, k0 + 16) of a matrix stored
 * k-major (m[k][n], stride ld): ldmatrix.trans hands each thread the pairs (k, k + 1) of its
 * column.  Matrices 0..3 are (k0, n0), (k0 + 8, n0), (k0, n0 + 8), (k0 + 8, n0 + 8). */
__device__ __forceinline__ void frag_bt(uint32_t b[4], const bf16 *m, int ld, int k0, int n0,
                                        int lane)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    int i = lane / 8, r = lane % 8;
    const bf16 *p = m + (k0 + r + 8 * (i & 1)) * ld + n0 + 8 * (i >> 1);
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
                 : "r"(a));
#endif
}

/* The accumulators of n-tiles 2kk and 2kk+1 as the A fragment of k-step kk. */
__device__ __forceinline__ void c_to_a(uint32_t a[4], const float c0[4], const float c1[4])
{
    a[0] = pack2(c0[0], c0[1]);
    a[1] = pack2(c0[2], c0[3]);
    a[2] = pack2(c1[0], c1[1]);
    a[3] = pack2(c1[2], c1[3]);
}

__device__ __forceinline__ float quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* S (16 rows x 64 columns) of one warp: its A fragments times the rows of s (an n-major tile:
 * s[column][k]), i.e. A·sᵀ. */
template <int HD, int LD>
__device__ __forceinline__ void scores(float acc[8][4], const uint32_t (*a)[4], const bf16 *s,
                                       int lane)
{
#pragma unroll
    for (int j = 0; j < 8; j++)
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
        for (int j = 0; j < 8; j++) {
            uint32_t b0, b1;
            frag_b(b0, b1, s, LD, j, kk, lane);
            mma(acc[j], a[kk], b0, b1);
        }
}

/* acc (16 x HD) += P (16 x 64, accumulators) · m, m a row-major (64 x HD) tile. */
template <int HD, int LD>
__device__ __forceinline__ void accumulate(float acc[][4], const float p[8][4], const bf16 *m,
                                           int lane)
{
#pragma unroll
    for (int kk = 0; kk < kBlock / 16; kk++) {
        uint32_t a[4];
        c_to_a(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
        for (int d = 0; d < HD / 8; d += 2) {
            uint32_t b[4];
            frag_bt(b, m, LD, kk * 16, d * 8, lane);
            mma(acc[d], a, b[0], b[1]);
            mma(acc[d + 1], a, b[2], b[3]);
        }
    }
}

/* A warp's 16 rows of a (T, HD) matrix, rows ld apart, as A fragments, straight from global
 * memory. */
template <int HD>
__device__ __forceinline__ void rows_a(uint32_t (*a)[4], const bf16 *g, int row0, int row1,
                                       int T, int qi, size_t ld = HD)
{
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        int c = kk * 16 + qi * 2;
        a[kk][0] = row0 < T ? ld2(g + (size_t)row0 * ld + c) : 0u;
        a[kk][1] = row1 < T ? ld2(g + (size_t)row1 * ld + c) : 0u;
        a[kk][2] = row0 < T ? ld2(g + (size_t)row0 * ld + c + 8) : 0u;
        a[kk][3] = row1 < T ? ld2(g + (size_t)row1 * ld + c + 8) : 0u;
    }
}

/* Σ of the products of two bf16 pairs, in float32. */
__device__ __forceinline__ float dot2(uint32_t a, uint32_t b)
{
    float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&a));
    float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&b));
    return x.x * y.x + x.y * y.y;
}

/* Forward: one CTA per (query block, b·H + h).  out token-major bf16, lse (B, H, T). */
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(bf16 *out, float *lse,
                                                                 const bf16 *q, const bf16 *k,
                                                                 const bf16 *v, int T, int H,
                                                                 int KVH, float sl2)
{
    constexpr int LD = HD + 8, KS = HD / 16, NO = HD / 8, TILE = kBlock * LD;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(smem); /* [2][64][LD] */
    bf16 *Vs = Ks + 2 * TILE;                  /* [2][64][LD] */
    int nqb = (T + kRows - 1) / kRows, qb = nqb - 1 - (int)blockIdx.x; /* longest rows first */
    int bh = blockIdx.y, b = bh / H, h = bh % H, kvh = h / (H / KVH);
    const bf16 *qp = q + (size_t)bh * T * HD;
    const bf16 *kp = k + ((size_t)b * KVH + kvh) * T * HD;
    const bf16 *vp = v + ((size_t)b * KVH + kvh) * T * HD;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, qi = lane % 4;
    int row0 = qb * kRows + warp * 16 + lane / 4, row1 = row0 + 8;

    tile_async<HD, LD>(Ks, kp, 0, T);
    tile_async<HD, LD>(Vs, vp, 0, T);
    cp_commit();
    uint32_t qa[KS][4];
    rows_a<HD>(qa, qp, row0, row1, T, qi);
    float o[NO][4];
#pragma unroll
    for (int d = 0; d < NO; d++)
        o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    for (int kb = 0; kb <= qb; kb++) {
        const bf16 *Kc = Ks + (kb & 1) * TILE, *Vc = Vs + (kb & 1) * TILE;
        if (kb < qb) { /* the next block streams in while this one is used */
            tile_async<HD, LD>(Ks + ((kb + 1) & 1) * TILE, kp, (kb + 1) * kBlock, T);
            tile_async<HD, LD>(Vs + ((kb + 1) & 1) * TILE, vp, (kb + 1) * kBlock, T);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        float s[8][4];
        scores<HD, LD>(s, qa, Kc, lane);
        if (kb == qb) /* the diagonal block: keys after the query are masked */
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int key = kb * kBlock + j * 8 + qi * 2 + e;
                    s[j][e] = key > row0 ? -INFINITY : s[j][e];
                    s[j][2 + e] = key > row1 ? -INFINITY : s[j][2 + e];
                }
        /* m0, m1 are maxima of the unscaled scores (the scale is positive), so each power is
         * one FFMA and one MUFU: 2^(s·sl2 − m·sl2) */
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
        /* key 0 of block 0 is never masked, so the maxima are finite from the first block */
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        float a0 = exp2_ftz((m0 - mx0) * sl2), a1 = exp2_ftz((m1 - mx1) * sl2);
        m0 = mx0;
        m1 = mx1;
        const float ms0 = m0 * sl2, ms1 = m1 * sl2;
        float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            s[j][0] = exp2_ftz(fmaf(s[j][0], sl2, -ms0));
            s[j][1] = exp2_ftz(fmaf(s[j][1], sl2, -ms0));
            s[j][2] = exp2_ftz(fmaf(s[j][2], sl2, -ms1));
            s[j][3] = exp2_ftz(fmaf(s[j][3], sl2, -ms1));
            ps0 += s[j][0] + s[j][1];
            ps1 += s[j][2] + s[j][3];
        }
        l0 = l0 * a0 + ps0; /* each thread's share; the quad's shares are summed at the end */
        l1 = l1 * a1 + ps1;
#pragma unroll
        for (int d = 0; d < NO; d++) {
            o[d][0] *= a0;
            o[d][1] *= a0;
            o[d][2] *= a1;
            o[d][3] *= a1;
        }
        accumulate<HD, LD>(o, s, Vc, lane);
        __syncthreads(); /* this buffer is refilled next-but-one */
    }
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    float r0 = 1.0f / l0, r1 = 1.0f / l1;
#pragma unroll
    for (int d = 0; d < NO; d++) {
        int c = d * 8 + qi * 2;
        if (row0 < T)
            *reinterpret_cast<uint32_t *>(out + (((size_t)b * T + row0) * H + h) * HD + c) =
                pack2(o[d][0] * r0, o[d][1] * r0);
        if (row1 < T)
            *reinterpret_cast<uint32_t *>(out + (((size_t)b * T + row1) * H + h) * HD + c) =
                pack2(o[d][2] * r1, o[d][3] * r1);
    }
    if (qi == 0) {
        if (row0 < T)
            lse[(size_t)bh * T + row0] = (m0 * sl2 + log2f(l0)) * kLn2;
        if (row1 < T)
            lse[(size_t)bh * T + row1] = (m1 * sl2 + log2f(l1)) * kLn2;
    }
}

/* The gradients' destinations: token-major rows of ld (the projections' layout), float32
 * and/or bf16 (either may be NULL), and the RoPE tables to rotate dq and dk back with.  stage:
 * the bf16 rows go out through shared memory as whole 16-byte vectors (ld % 8 == 0 and
 * 16-byte aligned bases), else as pairs straight from the registers. */
struct grads_out {
    float *qf, *kf, *vf;
    bf16 *qb, *kb, *vb;
    int64_t ld;
    const float *cosv, *sinv; /* (>= T, HD/2) */
    int stage;
};

/* The cos and sin rows of a 64-row tile: in shared memory where the kernels have room to copy
 * them in with their first tiles (a float row of HD/2 is as long as a bf16 row of HD, so
 * tile_async moves it; rows LD/2 floats apart), else read from the table in global memory. */
template <int HD>
constexpr bool kRopeSmem = HD <= 64;

/* Whether flash_dkv_kernel keeps its K and V fragments in registers across the loop. */
template <int HD>
constexpr bool kHoistKV = HD <= 64;

struct rope_rows {
    const float *cs, *sn; /* NULL: no rotation */
    int stride;
};

template <int HD, int LD>
__device__ __forceinline__ rope_rows rope_of(const bf16 *Cs, const grads_out &go, int row0)
{
    if (kRopeSmem<HD>)
        return rope_rows{reinterpret_cast<const float *>(Cs),
                         reinterpret_cast<const float *>(Cs + kRows * LD), LD / 2};
    return rope_rows{go.cosv + (size_t)row0 * (HD / 2), go.sinv + (size_t)row0 * (HD / 2),
                     HD / 2};
}

/* A warp's 16 rows of a CTA's 64-row gradient tile (accumulators acc, times scale), rotated
 * back by rope_unpack_grad's expressions when rr.cs != NULL, into the bf16 tile st (row stride
 * LD) or straight to bg, and to fg (float32): rows row_base + [0, nvalid) of the global
 * matrices, from column col0.  A lane holds column c and its rotary partner c + HD/2 (n-tiles
 * d and d + HD/16), so the rotation needs no exchange. */
template <int HD, int LD>
__device__ __forceinline__ void rotate_out(const float acc[][4], float scale, rope_rows rr,
                                           bf16 *st, bf16 *bg, float *fg, int64_t ld,
                                           size_t row_base, int col0, int nvalid, int lane)
{
    constexpr int NO = HD / 8;
    int warp = threadIdx.x / 32, qi = lane % 4;
#pragma unroll
    for (int d = 0; d < NO / 2; d++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int c = d * 8 + qi * 2, rl = warp * 16 + lane / 4 + 8 * r;
            float e1[2], e2[2];
#pragma unroll
            for (int k = 0; k < 2; k++) {
                float d1 = acc[d][2 * r + k] * scale, d2 = acc[d + NO / 2][2 * r + k] * scale;
                if (rr.cs != nullptr) {
                    float co = rr.cs[rl * rr.stride + c + k], si = rr.sn[rl * rr.stride + c + k];
                    e1[k] = __fmaf_rn(d1, co, __fmul_rn(d2, si));
                    e2[k] = __fmaf_rn(d2, co, -__fmul_rn(d1, si));
                } else {
                    e1[k] = d1, e2[k] = d2;
                }
            }
            if (st != nullptr) {
                *reinterpret_cast<__nv_bfloat162 *>(st + rl * LD + c) =
                    __floats2bfloat162_rn(e1[0], e1[1]);
                *reinterpret_cast<__nv_bfloat162 *>(st + rl * LD + c + HD / 2) =
                    __floats2bfloat162_rn(e2[0], e2[1]);
            }
            if (rl >= nvalid)
                continue;
            size_t o = (row_base + rl) * (size_t)ld + col0 + c;
            if (bg != nullptr && st == nullptr) {
                *reinterpret_cast<__nv_bfloat162 *>(bg + o) = __floats2bfloat162_rn(e1[0], e1[1]);
                *reinterpret_cast<__nv_bfloat162 *>(bg + o + HD / 2) =
                    __floats2bfloat162_rn(e2[0], e2[1]);
            }
            if (fg != nullptr) {
                *reinterpret_cast<float2 *>(fg + o) = make_float2(e1[0], e1[1]);
                *reinterpret_cast<float2 *>(fg + o + HD / 2) = make_float2(e2[0], e2[1]);
            }
        }
}

/* The staged tile st (64 rows of LD) out to rows row_base + [0, nvalid) of g, 16 bytes a
 * thread at a time. */
template <int HD, int LD>
__device__ __forceinline__ void tile_out(bf16 *g, int64_t ld, size_t row_base, int col0,
                                         const bf16 *st, int nvalid)
{
    constexpr int V = HD / 8;
#pragma unroll
    for (int it = 0; it < kRows * V / kThreads; it++) {
        int i = (int)threadIdx.x + it * kThreads;
        int r = i / V, c = (i - r * V) * 8;
        if (r < nvalid)
            *reinterpret_cast<uint4 *>(g + (row_base + r) * (size_t)ld + col0 + c) =
                *reinterpret_cast<const uint4 *>(st + r * LD + c);
    }
}

/* dQ: one CTA per (query block, b·H + h).  dO and O are read token-major, where attention's
 * output and its gradient are; the kernel makes D = rowsum(dO ∘ O) of its rows from the dO
 * fragments it loads anyway, and leaves it for the dK/dV kernel, which runs next. */
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_dq_kernel(grads_out go, const bf16 *q,
                                                            const bf16 *k, const bf16 *v,
                                                            const bf16 *dout, const bf16 *out,
                                                            const float *lse, float *D, int T,
                                                            int H, int KVH, float sl2,
                                                            float scale)
{
    constexpr int LD = HD + 8, KS = HD / 16, NO = HD / 8, TILE = kBlock * LD;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(smem); /* [2][64][LD] */
    bf16 *Vs = Ks + 2 * TILE;                  /* [2][64][LD] */
    int nqb = (T + kRows - 1) / kRows, qb = nqb - 1 - (int)blockIdx.x;
    int bh = blockIdx.y, b = bh / H, h = bh % H, kvh = h / (H / KVH);
    const size_t tld = (size_t)H * HD; /* token-major rows of dO and O */
    const bf16 *qp = q + (size_t)bh * T * HD, *dop = dout + ((size_t)b * T * H + h) * HD;
    const bf16 *kp = k + ((size_t)b * KVH + kvh) * T * HD;
    const bf16 *vp = v + ((size_t)b * KVH + kvh) * T * HD;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, qi = lane % 4;
    int row0 = qb * kRows + warp * 16 + lane / 4, row1 = row0 + 8;

    tile_async<HD, LD>(Ks, kp, 0, T);
    tile_async<HD, LD>(Vs, vp, 0, T);
    bf16 *Cs = Vs + 2 * TILE; /* [2][64][LD]: this block's cos and sin rows, if kRopeSmem */
    if (kRopeSmem<HD>) {
        tile_async<HD, LD>(Cs, (const bf16 *)go.cosv, qb * kRows, T);
        tile_async<HD, LD>(Cs + TILE, (const bf16 *)go.sinv, qb * kRows, T);
    }
    cp_commit();
    uint32_t qa[KS][4], da[KS][4];
    rows_a<HD>(qa, qp, row0, row1, T, qi);
    rows_a<HD>(da, dop, row0, row1, T, qi, tld);
    float lse0 = row0 < T ? lse[(size_t)bh * T + row0] * kLog2e : 0.0f;
    float lse1 = row1 < T ? lse[(size_t)bh * T + row1] * kLog2e : 0.0f;
    float D0 = 0.0f, D1 = 0.0f;
    {
        uint32_t oa[KS][4];
        rows_a<HD>(oa, out + ((size_t)b * T * H + h) * HD, row0, row1, T, qi, tld);
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            D0 += dot2(da[kk][0], oa[kk][0]) + dot2(da[kk][2], oa[kk][2]);
            D1 += dot2(da[kk][1], oa[kk][1]) + dot2(da[kk][3], oa[kk][3]);
        }
        D0 = quad_sum(D0); /* the row's four lanes */
        D1 = quad_sum(D1);
    }
    if (qi == 0 && row0 < T)
        D[(size_t)bh * T + row0] = D0;
    if (qi == 0 && row1 < T)
        D[(size_t)bh * T + row1] = D1;
    float dq[NO][4];
#pragma unroll
    for (int d = 0; d < NO; d++)
        dq[d][0] = dq[d][1] = dq[d][2] = dq[d][3] = 0.0f;

    for (int kb = 0; kb <= qb; kb++) {
        const bf16 *Kc = Ks + (kb & 1) * TILE, *Vc = Vs + (kb & 1) * TILE;
        if (kb < qb) {
            tile_async<HD, LD>(Ks + ((kb + 1) & 1) * TILE, kp, (kb + 1) * kBlock, T);
            tile_async<HD, LD>(Vs + ((kb + 1) & 1) * TILE, vp, (kb + 1) * kBlock, T);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        float s[8][4], dp[8][4];
        scores<HD, LD>(s, qa, Kc, lane);
        scores<HD, LD>(dp, da, Vc, lane);
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[j][e] = exp2_ftz(fmaf(s[j][e], sl2, -lse0));
                s[j][2 + e] = exp2_ftz(fmaf(s[j][2 + e], sl2, -lse1));
            }
        /* only the diagonal block and a last, partial query block have anything to mask: the
         * test is the same for the whole CTA, so the other blocks skip the per-score one */
        if (kb == qb || (qb + 1) * kRows > T)
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int key = kb * kBlock + j * 8 + qi * 2 + e;
                    if (row0 >= T || (kb == qb && key > row0))
                        s[j][e] = 0.0f;
                    if (row1 >= T || (kb == qb && key > row1))
                        s[j][2 + e] = 0.0f;
                }
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[j][e] *= dp[j][e] - D0; /* dS, without the score scale */
                s[j][2 + e] *= dp[j][2 + e] - D1;
            }
        accumulate<HD, LD>(dq, s, Kc, lane); /* dQ += dS·K */
        __syncthreads();
    }
    const int nvalid = T - qb * kRows < kRows ? T - qb * kRows : kRows;
    bf16 *st = go.stage && go.qb != nullptr ? Ks : nullptr;
    size_t rb = (size_t)b * T + (size_t)qb * kRows;
    rope_rows rr = rope_of<HD, LD>(Cs, go, qb * kRows);
    rotate_out<HD, LD>(dq, scale, rr, st, go.qb, go.qf, go.ld, rb, h * HD, nvalid, lane);
    if (st != nullptr) {
        __syncthreads();
        tile_out<HD, LD>(go.qb, go.ld, rb, h * HD, st, nvalid);
    }
}

/* dK, dV: one CTA per (key block, b·KVH + kv head), summing the group's query heads in order.
 * Here the warp's rows are keys: Sᵀ = K·Qᵀ.  The
 * (head, query block) pairs form one sequence, so the next pair's tiles always stream in while
 * this one's are used. */
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_dkv_kernel(grads_out go,
                                                             const bf16 *q, const bf16 *k,
                                                             const bf16 *v, const bf16 *dout,
                                                             const float *lse, const float *D,
                                                             int T, int H, int KVH, float sl2,
                                                             float scale)
{
    constexpr int LD = HD + 8, KS = HD / 16, NO = HD / 8, TILE = kBlock * LD;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(smem);
    bf16 *Vs = Ks + TILE;
    bf16 *Qs = Vs + TILE;      /* [2][64][LD] */
    bf16 *Os = Qs + 2 * TILE;  /* [2][64][LD] dO rows */
    float *Ls = reinterpret_cast<float *>(Os + 2 * TILE); /* [2][64] lse */
    float *Dv = Ls + 2 * kBlock;                          /* [2][64] D */
    int kb = blockIdx.x; /* the first key blocks see the most queries: they start first */
    int nqb = (T + kBlock - 1) / kBlock;
    int bkv = blockIdx.y, b = bkv / KVH, kvh = bkv % KVH, group = H / KVH;
    const bf16 *kp = k + (size_t)bkv * T * HD, *vp = v + (size_t)bkv * T * HD;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, qi = lane % 4;
    int key0 = kb * kRows + warp * 16 + lane / 4, key1 = key0 + 8;
    int per = nqb - kb, steps = group * per; /* query blocks kb .. nqb-1 of each head */
    const size_t tld = (size_t)H * HD;       /* token-major rows of dO */
    const bf16 *dob = dout + (size_t)b * T * H * HD; /* batch row b's dO; head h at + h·HD */

    tile_async<HD, LD>(Ks, kp, kb * kRows, T);
    tile_async<HD, LD>(Vs, vp, kb * kRows, T);
    {
        int bh = b * H + kvh * group;
        tile_async<HD, LD>(Qs, q + (size_t)bh * T * HD, kb * kBlock, T);
        tile_async<HD, LD>(Os, dob + (size_t)(bh - b * H) * HD, kb * kBlock, T, tld);
        vec_async(Ls, lse + (size_t)bh * T, kb * kBlock, T);
        vec_async(Dv, D + (size_t)bh * T, kb * kBlock, T);
    }
    bf16 *Cs = reinterpret_cast<bf16 *>(Dv + 2 * kBlock); /* cos and sin rows, if kRopeSmem */
    if (kRopeSmem<HD>) {
        tile_async<HD, LD>(Cs, (const bf16 *)go.cosv, kb * kRows, T);
        tile_async<HD, LD>(Cs + TILE, (const bf16 *)go.sinv, kb * kRows, T);
    }
    cp_commit();
    float dk[NO][4], dv[NO][4];
#pragma unroll
    for (int d = 0; d < NO; d++) {
        dk[d][0] = dk[d][1] = dk[d][2] = dk[d][3] = 0.0f;
        dv[d][0] = dv[d][1] = dv[d][2] = dv[d][3] = 0.0f;
    }
    /* the warp's K and V rows as A fragments: the same every iteration, so loaded once where
     * the registers allow it (two blocks an SM either way at HD 64) */
    uint32_t ka[KS][4], va[KS][4];
    if (kHoistKV<HD>) {
        cp_wait<0>();
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            frag_a(ka[kk], Ks, LD, warp * 16, kk, lane);
            frag_a(va[kk], Vs, LD, warp * 16, kk, lane);
        }
    }
    for (int it = 0; it < steps; it++) {
        int qb = kb + it % per, buf = it & 1;
        if (it + 1 < steps) {
            int nb = (it + 1) & 1, nqb1 = kb + (it + 1) % per;
            int bh = b * H + kvh * group + (it + 1) / per;
            tile_async<HD, LD>(Qs + nb * TILE, q + (size_t)bh * T * HD, nqb1 * kBlock, T);
            tile_async<HD, LD>(Os + nb * TILE, dob + (size_t)(bh - b * H) * HD, nqb1 * kBlock, T,
                               tld);
            vec_async(Ls + nb * kBlock, lse + (size_t)bh * T, nqb1 * kBlock, T);
            vec_async(Dv + nb * kBlock, D + (size_t)bh * T, nqb1 * kBlock, T);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        const bf16 *Qc = Qs + buf * TILE, *Oc = Os + buf * TILE;
        const float *Lc = Ls + buf * kBlock, *Dc = Dv + buf * kBlock;
        if (!kHoistKV<HD>)
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                frag_a(ka[kk], Ks, LD, warp * 16, kk, lane);
                frag_a(va[kk], Vs, LD, warp * 16, kk, lane);
            }
        float s[8][4], dp[8][4];
        scores<HD, LD>(s, ka, Qc, lane);  /* Sᵀ: keys x queries */
        scores<HD, LD>(dp, va, Oc, lane); /* dPᵀ = V·dOᵀ */
#pragma unroll
        for (int j = 0; j < 8; j++) {
            /* a lane's columns come in pairs: one 8-byte load of lse, one of D */
            const float2 L = *reinterpret_cast<const float2 *>(Lc + j * 8 + qi * 2);
            const float l2[2] = {L.x * kLog2e, L.y * kLog2e};
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[j][e] = exp2_ftz(fmaf(s[j][e], sl2, -l2[e]));
                s[j][2 + e] = exp2_ftz(fmaf(s[j][2 + e], sl2, -l2[e]));
            }
        }
        /* only the diagonal block and a last, partial query block have anything to mask */
        if (qb == kb || (qb + 1) * kBlock > T)
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int t = qb * kBlock + j * 8 + qi * 2 + e;
                    if (t >= T || (qb == kb && t < key0))
                        s[j][e] = 0.0f;
                    if (t >= T || (qb == kb && t < key1))
                        s[j][2 + e] = 0.0f;
                }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float2 Dd = *reinterpret_cast<const float2 *>(Dc + j * 8 + qi * 2);
            const float dd[2] = {Dd.x, Dd.y};
#pragma unroll
            for (int e = 0; e < 2; e++) {
                dp[j][e] = s[j][e] * (dp[j][e] - dd[e]);
                dp[j][2 + e] = s[j][2 + e] * (dp[j][2 + e] - dd[e]);
            }
        }
        accumulate<HD, LD>(dv, s, Oc, lane);  /* dV += Pᵀ·dO */
        accumulate<HD, LD>(dk, dp, Qc, lane); /* dK += dSᵀ·Q */
        __syncthreads();
    }
    const int nvalid = T - kb * kRows < kRows ? T - kb * kRows : kRows;
    bf16 *stk = go.stage && go.kb != nullptr ? Ks : nullptr;
    bf16 *stv = go.stage && go.vb != nullptr ? Vs : nullptr;
    size_t rb = (size_t)b * T + (size_t)kb * kRows;
    rotate_out<HD, LD>(dk, scale, rope_of<HD, LD>(Cs, go, kb * kRows), stk, go.kb, go.kf, go.ld,
                       rb, kvh * HD, nvalid, lane);
    rotate_out<HD, LD>(dv, 1.0f, rope_rows{nullptr, nullptr, 0}, stv, go.vb, go.vf, go.ld, rb,
                       kvh * HD, nvalid, lane);
    if (stk != nullptr || stv != nullptr) {
        __syncthreads();
        if (stk != nullptr)
            tile_out<HD, LD>(go.kb, go.ld, rb, kvh * HD, stk, nvalid);
        if (stv != nullptr)
            tile_out<HD, LD>(go.vb, go.ld, rb, kvh * HD, stv, nvalid);
    }
}

template <int HD>
size_t smem_forward()
{
    return (size_t)4 * kBlock * (HD + 8) * sizeof(bf16);
}
template <int HD>
size_t smem_dq()
{
    return (size_t)(kRopeSmem<HD> ? 6 : 4) * kBlock * (HD + 8) * sizeof(bf16);
}
template <int HD>
size_t smem_dkv()
{
    return (size_t)(kRopeSmem<HD> ? 8 : 6) * kBlock * (HD + 8) * sizeof(bf16) +
           4 * kBlock * sizeof(float);
}

template <int HD>
int forward_hd(void *out, float *lse, const void *qh, const void *kh, const void *vh, int B,
               int T, int H, int KVH, cudaStream_t s, primal_err *err)
{
    size_t sm = smem_forward<HD>();
    CUDA_TRY(cudaFuncSetAttribute(flash_forward_kernel<HD>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm), err);
    dim3 grid((unsigned)((T + kRows - 1) / kRows), (unsigned)(B * H));
    flash_forward_kernel<HD><<<grid, kThreads, sm, s>>>((bf16 *)out, lse, (const bf16 *)qh,
                                                        (const bf16 *)kh, (const bf16 *)vh, T, H,
                                                        KVH, kLog2e / sqrtf((float)HD));
    CUDA_LAUNCHED("flash_forward", err);
    return PRIMAL_OK;
}

template <int HD>
int backward_hd(const grads_out &go, const void *qh, const void *kh, const void *vh,
                const void *dout, const void *out, const float *lse, float *D, int B, int T,
                int H, int KVH, cudaStream_t s, primal_err *err)
{
    float scale = 1.0f / sqrtf((float)HD), sl2 = scale * kLog2e;
    size_t sq = smem_dq<HD>(), skv = smem_dkv<HD>();
    CUDA_TRY(cudaFuncSetAttribute(flash_dq_kernel<HD>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sq), err);
    CUDA_TRY(cudaFuncSetAttribute(flash_dkv_kernel<HD>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)skv), err);
    unsigned nb = (unsigned)((T + kRows - 1) / kRows);
    flash_dq_kernel<HD><<<dim3(nb, (unsigned)(B * H)), kThreads, sq, s>>>(
        go, (const bf16 *)qh, (const bf16 *)kh, (const bf16 *)vh, (const bf16 *)dout,
        (const bf16 *)out, lse, D, T,
        H, KVH, sl2, scale);
    CUDA_LAUNCHED("flash_dq", err);
    flash_dkv_kernel<HD><<<dim3(nb, (unsigned)(B * KVH)), kThreads, skv, s>>>(
        go, (const bf16 *)qh, (const bf16 *)kh, (const bf16 *)vh, (const bf16 *)dout, lse,
        D, T, H, KVH, sl2, scale);
    CUDA_LAUNCHED("flash_dkv", err);
    return PRIMAL_OK;
}

} /* namespace */

int cuda_flash_supported(cuda_dtype dt, int hd)
{
    return dt == CUDA_BF16 && (hd == 32 || hd == 64 || hd == 128);
}

int cuda_flash_forward(void *out, float *lse, const void *qh, const void *kh, const void *vh,
                       int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err)
{
    switch (hd) {
    case 32:
        return forward_hd<32>(out, lse, qh, kh, vh, B, T, H, KVH, s, err);
    case 64:
        return forward_hd<64>(out, lse, qh, kh, vh, B, T, H, KVH, s, err);
    case 128:
        return forward_hd<128>(out, lse, qh, kh, vh, B, T, H, KVH, s, err);
    default:
        return primal_errf(err, PRIMAL_ERROR, "cuda_flash_forward: head size %d (32, 64 or 128)",
                           hd);
    }
}

int cuda_flash_backward(float *dq, float *dk, float *dv, void *dqb, void *dkb, void *dvb,
                        int64_t ld, const float *cosv, const float *sinv, const void *qh,
                        const void *kh, const void *vh, const void *dout, const void *out,
                        const float *lse, float *D, int B, int T, int H, int KVH, int hd,
                        cudaStream_t s, primal_err *err)
{
    /* float2 and bf16x2 stores at even columns */
    uintptr_t odd = (uintptr_t)dq | (uintptr_t)dk | (uintptr_t)dv;
    uintptr_t oddb = (uintptr_t)dqb | (uintptr_t)dkb | (uintptr_t)dvb;
    if (ld % 2 != 0 || (odd & 7) != 0 || (oddb & 3) != 0)
        return primal_errf(err, PRIMAL_ERROR, "cuda_flash_backward: gradients need an even row "
                           "stride (%lld) and 8-byte (float32) or 4-byte (bf16) alignment",
                           (long long)ld);
    /* 16-byte rows for the staged bf16 stores */
    int stage = ld % 8 == 0 && (((uintptr_t)dqb | (uintptr_t)dkb | (uintptr_t)dvb) & 15) == 0;
    grads_out go = {dq, dk, dv, (bf16 *)dqb, (bf16 *)dkb, (bf16 *)dvb, ld, cosv, sinv, stage};
    switch (hd) {
    case 32:
        return backward_hd<32>(go, qh, kh, vh, dout, out, lse, D, B, T, H, KVH, s, err);
    case 64:
        return backward_hd<64>(go, qh, kh, vh, dout, out, lse, D, B, T, H, KVH, s, err);
    case 128:
        return backward_hd<128>(go, qh, kh, vh, dout, out, lse, D, B, T, H, KVH, s, err);
    default:
        return primal_errf(err, PRIMAL_ERROR, "cuda_flash_backward: head size %d (32, 64 or "
                           "128)", hd);
    }
}
