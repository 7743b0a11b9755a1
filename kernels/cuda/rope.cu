/* rope.cu: rotary position embedding as Hugging Face Llama/Qwen2 apply it (rotate_half: element
 * i pairs with i + hd/2), fused with the layout change attention wants.  SPEC.md, "Models".
 *
 *   y[i] = x[i]·cos − x[i+hd/2]·sin,  y[i+hd/2] = x[i+hd/2]·cos + x[i]·sin   (angle = t·θ^(−2i/hd))
 *
 * pack: q (B, T, H, hd), k and v (B, T, KVH, hd) token-major in the compute dtype, as the
 * projections write them, become qh (B, H, T, hd), kh and vh (B, KVH, T, hd) head-major, q and
 * k rotated; so that every (batch, head) of attention is one strided matrix.  The projections'
 * biases (Qwen2) are added here, before the rotation as on the CPU, rather than laid under the
 * GEMM: that would cost a pass over the output and rule out a bf16 GEMM output.
 * unpack_grad: the head-major float32 gradients go back token-major, dq and dk rotated by the
 * opposite angle (the transpose of a rotation), in float32 and/or bf16.  cos/sin come from the
 * CPU's rope_table (rounded from double), uploaded once.  CPU twins: kernels/cpu/rope.c.
 * No keys. */
#include "rope.h"

/* A token's (head, W pairs) count rounded up to whole warps, at most 256. */
static unsigned threads_for(int H, int KVH, int hd, int W)
{
    int n = (H + 2 * KVH) * (hd / 2 / W);
    n = (n + 31) / 32 * 32;
    return (unsigned)(n > 256 ? 256 : n < 32 ? 32 : n);
}

/* W consecutive elements (1, or 8 as one vector access) */
template <int W, typename T>
__device__ __forceinline__ void ldw(float *v, const T *p)
{
    if constexpr (W == 8)
        cuda_ld8(v, p);
    else
        v[0] = cuda_ld(p, 0);
}

template <int W, typename T>
__device__ __forceinline__ void stw(T *p, const float *v)
{
    if constexpr (W == 8)
        cuda_st8(p, v);
    else
        cuda_st(p, 0, v[0]);
}

/* One block per token, one thread per (head of q|k|v, W pairs (i, i + hd/2)): 32-bit index
 * arithmetic, which 64-bit divisions per element had made the bottleneck of this memory-bound
 * pass, and W = 8 (hd % 16 == 0) for 16-byte accesses. */
template <typename T, int W>
__global__ void rope_pack_kernel(T *qh,             /* (B, H, T, hd) */
                                 T *kh,             /* (B, KVH, T, hd) */
                                 T *vh,             /* (B, KVH, T, hd) */
                                 const T *q,        /* (B·T rows of ldq, H·hd) */
                                 const T *k,        /* (B·T rows of ldkv, KVH·hd) */
                                 const T *v,        /* (B·T rows of ldkv, KVH·hd) */
                                 const float *bq,   /* (H·hd) or NULL */
                                 const float *bk,   /* (KVH·hd) or NULL */
                                 const float *bv,   /* (KVH·hd) or NULL */
                                 const float *cosv, /* (>= T, hd/2) */
                                 const float *sinv, /* (>= T, hd/2) */
                                 int64_t ldq, int64_t ldkv, int Tn, int H, int KVH, int hd)
{
    int h2 = hd / 2, nq = h2 / W, NH = H + 2 * KVH, b = (int)(blockIdx.x / Tn);
    int t = (int)(blockIdx.x % Tn);
    for (int j = threadIdx.x; j < NH * nq; j += blockDim.x) {
        int hh = j / nq, i = (j - hh * nq) * W;
        const T *src;
        const float *bias;
        T *dst;
        int rotate = 1;
        if (hh < H) {
            src = q + ((int64_t)b * Tn + t) * ldq + (int64_t)hh * hd;
            dst = qh + (((int64_t)b * H + hh) * Tn + t) * hd;
            bias = bq != NULL ? bq + hh * hd : NULL;
        } else if (hh < H + KVH) {
            int h = hh - H;
            src = k + ((int64_t)b * Tn + t) * ldkv + (int64_t)h * hd;
            dst = kh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            bias = bk != NULL ? bk + h * hd : NULL;
        } else {
            int h = hh - H - KVH;
            src = v + ((int64_t)b * Tn + t) * ldkv + (int64_t)h * hd;
            dst = vh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            bias = bv != NULL ? bv + h * hd : NULL;
            rotate = 0;
        }
        float x1[W], x2[W];
        ldw<W>(x1, src + i);
        ldw<W>(x2, src + i + h2);
        if (bias != NULL) {
            float b1[W], b2[W];
            ldw<W>(b1, bias + i);
            ldw<W>(b2, bias + i + h2);
            for (int k2 = 0; k2 < W; k2++)
                x1[k2] += b1[k2], x2[k2] += b2[k2];
        }
        if (rotate) {
            float c[W], sn[W], y1[W], y2[W];
            ldw<W>(c, cosv + t * h2 + i);
            ldw<W>(sn, sinv + t * h2 + i);
            for (int k2 = 0; k2 < W; k2++) {
                y1[k2] = x1[k2] * c[k2] + (-x2[k2]) * sn[k2];
                y2[k2] = x2[k2] * c[k2] + x1[k2] * sn[k2];
            }
            stw<W>(dst + i, y1);
            stw<W>(dst + i + h2, y2);
        } else {
            stw<W>(dst + i, x1);
            stw<W>(dst + i + h2, x2);
        }
    }
}

int cuda_rope_pack(void *qh, void *kh, void *vh, /* head-major, of dt */
                   cuda_dtype dt,
                   const void *q, const void *k, const void *v,       /* token-major, of dt */
                   int64_t ldq, int64_t ldkv, /* their row strides: H·hd and KVH·hd apart, or
                                               * the q|k|v width of one matrix holding all */
                   const float *bq, const float *bk, const float *bv, /* biases, or NULL */
                   const float *cosv, const float *sinv,              /* (>= T, hd/2) */
                   int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err)
{
    if ((int64_t)B * T == 0)
        return PRIMAL_OK;
    unsigned nb = (unsigned)((int64_t)B * T);
    /* 16-byte accesses where every row start allows them (hd a multiple of 16) */
    int w8 = hd % 16 == 0 && ldq % 8 == 0 && ldkv % 8 == 0 && cuda_aligned8(qh) && cuda_aligned8(kh) && cuda_aligned8(vh) &&
             cuda_aligned8(q) && cuda_aligned8(k) && cuda_aligned8(v) && cuda_aligned8(cosv) &&
             cuda_aligned8(sinv) && (bq == NULL || cuda_aligned8(bq)) &&
             (bk == NULL || cuda_aligned8(bk)) && (bv == NULL || cuda_aligned8(bv));
    unsigned nt = threads_for(H, KVH, hd, w8 ? 8 : 1);
#define ROPE_PACK(TY, W)                                                                       \
    rope_pack_kernel<TY, W><<<nb, nt, 0, s>>>((TY *)qh, (TY *)kh, (TY *)vh, (const TY *)q,      \
                                              (const TY *)k, (const TY *)v, bq, bk, bv, cosv,   \
                                              sinv, ldq, ldkv, T, H, KVH, hd)
    if (dt == CUDA_BF16 && w8)
        ROPE_PACK(__nv_bfloat16, 8);
    else if (dt == CUDA_BF16)
        ROPE_PACK(__nv_bfloat16, 1);
    else if (w8)
        ROPE_PACK(float, 8);
    else
        ROPE_PACK(float, 1);
#undef ROPE_PACK
    CUDA_LAUNCHED("rope_pack", err);
    return PRIMAL_OK;
}

template <int W>
__global__ void rope_unpack_grad_kernel(float *dq,          /* (B·T rows of ld, H·hd), or NULL */
                                        float *dk,          /* (B·T rows of ld, KVH·hd) */
                                        float *dv,          /* (B·T rows of ld, KVH·hd) */
                                        __nv_bfloat16 *dqb, /* the same in bf16, or NULL */
                                        __nv_bfloat16 *dkb, __nv_bfloat16 *dvb,
                                        const float *dqh,   /* (B, H, T, hd) */
                                        const float *dkh,   /* (B, KVH, T, hd) */
                                        const float *dvh,   /* (B, KVH, T, hd) */
                                        const float *cosv,  /* (>= T, hd/2) */
                                        const float *sinv,  /* (>= T, hd/2) */
                                        int Tn, int H, int KVH, int hd, int64_t ld)
{
    int h2 = hd / 2, nq = h2 / W, NH = H + 2 * KVH, b = (int)(blockIdx.x / Tn);
    int t = (int)(blockIdx.x % Tn);
    const int64_t row = ((int64_t)b * Tn + t) * ld;
    for (int j = threadIdx.x; j < NH * nq; j += blockDim.x) {
        int hh = j / nq, i = (j - hh * nq) * W;
        const float *src;
        float *dst;
        __nv_bfloat16 *dstb;
        int rotate = 1;
        int64_t o;
        if (hh < H) {
            src = dqh + (((int64_t)b * H + hh) * Tn + t) * hd;
            o = row + (int64_t)hh * hd;
            dst = dq != NULL ? dq + o : NULL;
            dstb = dqb != NULL ? dqb + o : NULL;
        } else if (hh < H + KVH) {
            int h = hh - H;
            src = dkh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            o = row + (int64_t)h * hd;
            dst = dk != NULL ? dk + o : NULL;
            dstb = dkb != NULL ? dkb + o : NULL;
        } else {
            int h = hh - H - KVH;
            src = dvh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            o = row + (int64_t)h * hd;
            dst = dv != NULL ? dv + o : NULL;
            dstb = dvb != NULL ? dvb + o : NULL;
            rotate = 0;
        }
        float d1[W], d2[W], e1[W], e2[W];
        ldw<W>(d1, src + i);
        ldw<W>(d2, src + i + h2);
        if (rotate) {
            float c[W], sn[W];
            ldw<W>(c, cosv + t * h2 + i);
            ldw<W>(sn, sinv + t * h2 + i);
            for (int k = 0; k < W; k++) {
                e1[k] = d1[k] * c[k] + d2[k] * sn[k];
                e2[k] = d2[k] * c[k] - d1[k] * sn[k];
            }
        } else {
            for (int k = 0; k < W; k++)
                e1[k] = d1[k], e2[k] = d2[k];
        }
        if (dst != NULL) {
            stw<W>(dst + i, e1);
            stw<W>(dst + i + h2, e2);
        }
        if (dstb != NULL) {
            stw<W>(dstb + i, e1);
            stw<W>(dstb + i + h2, e2);
        }
    }
}

/* dq, dk, dv (float32) and dqb, dkb, dvb (bf16) are written, not accumulated; either set may be
 * NULL.  bf16 runs want only the bf16 set (the GEMMs' operands), and the float32 one only for
 * bias gradients.  Token (b, t) of each output starts at (b·T + t)·ld: the model lays dq, dk and
 * dv side by side in one (N, ld) matrix, which the q/k/v projections' backward then multiplies
 * as one. */
int cuda_rope_unpack_grad(float *dq, float *dk, float *dv,             /* token-major */
                          void *dqb, void *dkb, void *dvb,             /* the same, bf16 */
                          int64_t ld,                                  /* their row stride */
                          const float *dqh, const float *dkh, const float *dvh, /* head-major */
                          const float *cosv, const float *sinv,
                          int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err)
{
    if ((int64_t)B * T == 0)
        return PRIMAL_OK;
    int w8 = hd % 16 == 0 && ld % 8 == 0 && cuda_aligned8(dqh) && cuda_aligned8(dkh) &&
             cuda_aligned8(dvh) && cuda_aligned8(cosv) && cuda_aligned8(sinv);
    const void *outs[6] = {dq, dk, dv, dqb, dkb, dvb};
    for (int j = 0; j < 6; j++)
        w8 = w8 && (outs[j] == NULL || cuda_aligned8(outs[j]));
    unsigned nb = (unsigned)((int64_t)B * T), nt = threads_for(H, KVH, hd, w8 ? 8 : 1);
    if (w8)
        rope_unpack_grad_kernel<8><<<nb, nt, 0, s>>>(
            dq, dk, dv, (__nv_bfloat16 *)dqb, (__nv_bfloat16 *)dkb, (__nv_bfloat16 *)dvb, dqh,
            dkh, dvh, cosv, sinv, T, H, KVH, hd, ld);
    else
        rope_unpack_grad_kernel<1><<<nb, nt, 0, s>>>(
            dq, dk, dv, (__nv_bfloat16 *)dqb, (__nv_bfloat16 *)dkb, (__nv_bfloat16 *)dvb, dqh,
            dkh, dvh, cosv, sinv, T, H, KVH, hd, ld);
    CUDA_LAUNCHED("rope_unpack_grad", err);
    return PRIMAL_OK;
}
