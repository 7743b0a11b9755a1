/* Forward with two m16 row tiles a warp (32 query rows; 128 a CTA): every K and V fragment read
 * from shared memory feeds two products, half the shared-memory reads per product of
 * flash_forward_kernel.  Head sizes up to 64: at 128 the accumulators would not fit. */
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_forward2_kernel(bf16 *out, float *lse,
                                                                  const bf16 *q, const bf16 *k,
                                                                  const bf16 *v, int T, int H,
                                                                  int KVH, float sl2)
{
    constexpr int MI = 2, RB = 4 * 16 * MI; /* row tiles a warp, rows a CTA */
    constexpr int LD = HD + 8, KS = HD / 16, NO = HD / 8, TILE = kBlock * LD;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(smem); /* [2][64][LD] */
    bf16 *Vs = Ks + 2 * TILE;                  /* [2][64][LD] */
    int nqb = (T + RB - 1) / RB, qb = nqb - 1 - (int)blockIdx.x; /* longest rows first */
    int bh = blockIdx.y, b = bh / H, h = bh % H, kvh = h / (H / KVH);
    const bf16 *qp = q + (size_t)bh * T * HD;
    const bf16 *kp = k + ((size_t)b * KVH + kvh) * T * HD;
    const bf16 *vp = v + ((size_t)b * KVH + kvh) * T * HD;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, qi = lane % 4;
    int wrow = qb * RB + warp * 16 * MI; /* the warp's first row */
    int row[MI][2];
#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
        row[mi][0] = wrow + mi * 16 + lane / 4;
        row[mi][1] = row[mi][0] + 8;
    }
    int rmax = qb * RB + RB - 1 < T - 1 ? qb * RB + RB - 1 : T - 1;
    int last = rmax / kBlock; /* the last key block any row of the CTA sees */

    tile_async<HD, LD>(Ks, kp, 0, T);
    tile_async<HD, LD>(Vs, vp, 0, T);
    cp_commit();
    uint32_t qa[MI][KS][4];
#pragma unroll
    for (int mi = 0; mi < MI; mi++)
        rows_a<HD>(qa[mi], qp, row[mi][0], row[mi][1], T, qi);
    float o[MI][NO][4], m[MI][2], l[MI][2];
#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
#pragma unroll
        for (int d = 0; d < NO; d++)
            o[mi][d][0] = o[mi][d][1] = o[mi][d][2] = o[mi][d][3] = 0.0f;
        m[mi][0] = m[mi][1] = -INFINITY;
        l[mi][0] = l[mi][1] = 0.0f;
    }

    for (int kb = 0; kb <= last; kb++) {
        const bf16 *Kc = Ks + (kb & 1) * TILE, *Vc = Vs + (kb & 1) * TILE;
        if (kb < last) { /* the next block streams in while this one is used */
            tile_async<HD, LD>(Ks + ((kb + 1) & 1) * TILE, kp, (kb + 1) * kBlock, T);
            tile_async<HD, LD>(Vs + ((kb + 1) & 1) * TILE, vp, (kb + 1) * kBlock, T);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        /* a block whose keys all follow the warp's rows adds nothing: skip it (the barriers
         * stay with the CTA) */
        if (kb * kBlock <= wrow + 16 * MI - 1) {
            float s[MI][8][4];
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
#pragma unroll
                for (int j = 0; j < 8; j++)
                    s[mi][j][0] = s[mi][j][1] = s[mi][j][2] = s[mi][j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; kk++)
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    uint32_t b0, b1;
                    frag_b(b0, b1, Kc, LD, j, kk, lane);
#pragma unroll
                    for (int mi = 0; mi < MI; mi++)
                        mma(s[mi][j], qa[mi][kk], b0, b1);
                }
            bool diag = kb * kBlock + kBlock - 1 > wrow; /* some key follows some row */
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                float mx0 = m[mi][0], mx1 = m[mi][1];
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        int key = kb * kBlock + j * 8 + qi * 2 + e;
                        float x0 = s[mi][j][e] * sl2, x1 = s[mi][j][2 + e] * sl2;
                        if (diag) {
                            x0 = key > row[mi][0] ? -INFINITY : x0;
                            x1 = key > row[mi][1] ? -INFINITY : x1;
                        }
                        s[mi][j][e] = x0;
                        s[mi][j][2 + e] = x1;
                        mx0 = fmaxf(mx0, x0);
                        mx1 = fmaxf(mx1, x1);
                    }
                /* every row has seen key 0 by now, so the maxima are finite */
                mx0 = quad_max(mx0);
                mx1 = quad_max(mx1);
                float a0 = exp2f(m[mi][0] - mx0), a1 = exp2f(m[mi][1] - mx1);
                m[mi][0] = mx0;
                m[mi][1] = mx1;
                float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    s[mi][j][0] = exp2f(s[mi][j][0] - mx0);
                    s[mi][j][1] = exp2f(s[mi][j][1] - mx0);
                    s[mi][j][2] = exp2f(s[mi][j][2] - mx1);
                    s[mi][j][3] = exp2f(s[mi][j][3] - mx1);
                    ps0 += s[mi][j][0] + s[mi][j][1];
                    ps1 += s[mi][j][2] + s[mi][j][3];
                }
                l[mi][0] = l[mi][0] * a0 + ps0;
                l[mi][1] = l[mi][1] * a1 + ps1;
#pragma unroll
                for (int d = 0; d < NO; d++) {
                    o[mi][d][0] *= a0;
                    o[mi][d][1] *= a0;
                    o[mi][d][2] *= a1;
                    o[mi][d][3] *= a1;
                }
            }
            /* O += P·V, each V fragment for both row tiles */
#pragma unroll
            for (int kk = 0; kk < kBlock / 16; kk++) {
                uint32_t a[MI][4];
#pragma unroll
                for (int mi = 0; mi < MI; mi++)
                    c_to_a(a[mi], s[mi][2 * kk], s[mi][2 * kk + 1]);
#pragma unroll
                for (int d = 0; d < NO; d += 2) {
                    uint32_t bb[4];
                    frag_bt(bb, Vc, LD, kk * 16, d * 8, lane);
#pragma unroll
                    for (int mi = 0; mi < MI; mi++) {
                        mma(o[mi][d], a[mi], bb[0], bb[1]);
                        mma(o[mi][d + 1], a[mi], bb[2], bb[3]);
                    }
                }
            }
        }
        __syncthreads(); /* this buffer is refilled next-but-one */
    }
#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
        float l0 = quad_sum(l[mi][0]), l1 = quad_sum(l[mi][1]);
        float r0 = 1.0f / l0, r1 = 1.0f / l1;
        int row0 = row[mi][0], row1 = row[mi][1];
#pragma unroll
        for (int d = 0; d < NO; d++) {
            int c = d * 8 + qi * 2;
            if (row0 < T)
                *reinterpret_cast<uint32_t *>(out + (((size_t)b * T + row0) * H + h) * HD + c) =
                    pack2(o[mi][d][0] * r0, o[mi][d][1] * r0);
            if (row1 < T)
                *reinterpret_cast<uint32_t *>(out + (((size_t)b * T + row1) * H + h) * HD + c) =
                    pack2(o[mi][d][2] * r1, o[mi][d][3] * r1);
        }
        if (qi == 0) {
            if (row0 < T)
                lse[(size_t)bh * T + row0] = (m[mi][0] + log2f(l0)) * kLn2;
            if (row1 < T)
                lse[(size_t)bh * T + row1] = (m[mi][1] + log2f(l1)) * kLn2;
        }
    }
}

