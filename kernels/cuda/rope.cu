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

/* A token's (head, pair) count rounded up to whole warps, at most 256. */
static unsigned threads_for(int H, int KVH, int hd)
{
    int n = (H + 2 * KVH) * (hd / 2);
    n = (n + 31) / 32 * 32;
    return (unsigned)(n > 256 ? 256 : n < 32 ? 32 : n);
}

template <typename T>
__global__ void rope_pack_kernel(T *qh,             /* (B, H, T, hd) */
                                 T *kh,             /* (B, KVH, T, hd) */
                                 T *vh,             /* (B, KVH, T, hd) */
                                 const T *q,        /* (B, T, H, hd) */
                                 const T *k,        /* (B, T, KVH, hd) */
                                 const T *v,        /* (B, T, KVH, hd) */
                                 const float *bq,   /* (H·hd) or NULL */
                                 const float *bk,   /* (KVH·hd) or NULL */
                                 const float *bv,   /* (KVH·hd) or NULL */
                                 const float *cosv, /* (>= T, hd/2) */
                                 const float *sinv, /* (>= T, hd/2) */
                                 int B, int Tn, int H, int KVH, int hd)
{
    (void)B;
    /* one block per token, one thread per (head of q|k|v, i < hd/2): 32-bit index arithmetic,
     * which 64-bit divisions per element had made the bottleneck of this memory-bound pass */
    int h2 = hd / 2, NH = H + 2 * KVH, b = (int)(blockIdx.x / Tn), t = (int)(blockIdx.x % Tn);
    for (int j = threadIdx.x; j < NH * h2; j += blockDim.x) {
        int hh = j / h2, i = j - hh * h2;
        const T *src;
        const float *bias;
        T *dst;
        int rotate = 1;
        if (hh < H) {
            src = q + (((int64_t)b * Tn + t) * H + hh) * hd;
            dst = qh + (((int64_t)b * H + hh) * Tn + t) * hd;
            bias = bq != NULL ? bq + hh * hd : NULL;
        } else if (hh < H + KVH) {
            int h = hh - H;
            src = k + (((int64_t)b * Tn + t) * KVH + h) * hd;
            dst = kh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            bias = bk != NULL ? bk + h * hd : NULL;
        } else {
            int h = hh - H - KVH;
            src = v + (((int64_t)b * Tn + t) * KVH + h) * hd;
            dst = vh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            bias = bv != NULL ? bv + h * hd : NULL;
            rotate = 0;
        }
        float x1 = cuda_ld(src, i), x2 = cuda_ld(src, i + h2);
        if (bias != NULL)
            x1 += bias[i], x2 += bias[i + h2];
        if (rotate) {
            float c = cosv[t * h2 + i], sn = sinv[t * h2 + i];
            cuda_st(dst, i, x1 * c + (-x2) * sn);
            cuda_st(dst, i + h2, x2 * c + x1 * sn);
        } else {
            cuda_st(dst, i, x1);
            cuda_st(dst, i + h2, x2);
        }
    }
}

int cuda_rope_pack(void *qh, void *kh, void *vh, /* head-major, of dt */
                   cuda_dtype dt,
                   const void *q, const void *k, const void *v,       /* token-major, of dt */
                   const float *bq, const float *bk, const float *bv, /* biases, or NULL */
                   const float *cosv, const float *sinv,              /* (>= T, hd/2) */
                   int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err)
{
    if ((int64_t)B * T == 0)
        return PRIMAL_OK;
    unsigned nb = (unsigned)((int64_t)B * T), nt = threads_for(H, KVH, hd);
    if (dt == CUDA_BF16)
        rope_pack_kernel<<<nb, nt, 0, s>>>(
            (__nv_bfloat16 *)qh, (__nv_bfloat16 *)kh, (__nv_bfloat16 *)vh,
            (const __nv_bfloat16 *)q, (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v, bq, bk,
            bv, cosv, sinv, B, T, H, KVH, hd);
    else
        rope_pack_kernel<<<nb, nt, 0, s>>>(
            (float *)qh, (float *)kh, (float *)vh, (const float *)q, (const float *)k,
            (const float *)v, bq, bk, bv, cosv, sinv, B, T, H, KVH, hd);
    CUDA_LAUNCHED("rope_pack", err);
    return PRIMAL_OK;
}

__global__ void rope_unpack_grad_kernel(float *dq,          /* (B, T, H, hd), or NULL */
                                        float *dk,          /* (B, T, KVH, hd) */
                                        float *dv,          /* (B, T, KVH, hd) */
                                        __nv_bfloat16 *dqb, /* the same in bf16, or NULL */
                                        __nv_bfloat16 *dkb, __nv_bfloat16 *dvb,
                                        const float *dqh,   /* (B, H, T, hd) */
                                        const float *dkh,   /* (B, KVH, T, hd) */
                                        const float *dvh,   /* (B, KVH, T, hd) */
                                        const float *cosv,  /* (>= T, hd/2) */
                                        const float *sinv,  /* (>= T, hd/2) */
                                        int B, int Tn, int H, int KVH, int hd)
{
    (void)B;
    int h2 = hd / 2, NH = H + 2 * KVH, b = (int)(blockIdx.x / Tn), t = (int)(blockIdx.x % Tn);
    for (int j = threadIdx.x; j < NH * h2; j += blockDim.x) {
        int hh = j / h2, i = j - hh * h2;
        const float *src;
        float *dst;
        __nv_bfloat16 *dstb;
        int rotate = 1;
        int64_t o;
        if (hh < H) {
            src = dqh + (((int64_t)b * H + hh) * Tn + t) * hd;
            o = (((int64_t)b * Tn + t) * H + hh) * hd;
            dst = dq != NULL ? dq + o : NULL;
            dstb = dqb != NULL ? dqb + o : NULL;
        } else if (hh < H + KVH) {
            int h = hh - H;
            src = dkh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            o = (((int64_t)b * Tn + t) * KVH + h) * hd;
            dst = dk != NULL ? dk + o : NULL;
            dstb = dkb != NULL ? dkb + o : NULL;
        } else {
            int h = hh - H - KVH;
            src = dvh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            o = (((int64_t)b * Tn + t) * KVH + h) * hd;
            dst = dv != NULL ? dv + o : NULL;
            dstb = dvb != NULL ? dvb + o : NULL;
            rotate = 0;
        }
        float d1 = src[i], d2 = src[i + h2], e1 = d1, e2 = d2;
        if (rotate) {
            float c = cosv[t * h2 + i], sn = sinv[t * h2 + i];
            e1 = d1 * c + d2 * sn;
            e2 = d2 * c - d1 * sn;
        }
        if (dst != NULL) {
            dst[i] = e1;
            dst[i + h2] = e2;
        }
        if (dstb != NULL) {
            dstb[i] = __float2bfloat16_rn(e1);
            dstb[i + h2] = __float2bfloat16_rn(e2);
        }
    }
}

/* dq, dk, dv (float32) and dqb, dkb, dvb (bf16) are written, not accumulated; either set may be
 * NULL.  bf16 runs want only the bf16 set (the GEMMs' operands), and the float32 one only for
 * bias gradients. */
int cuda_rope_unpack_grad(float *dq, float *dk, float *dv,             /* token-major */
                          void *dqb, void *dkb, void *dvb,             /* the same, bf16 */
                          const float *dqh, const float *dkh, const float *dvh, /* head-major */
                          const float *cosv, const float *sinv,
                          int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err)
{
    if ((int64_t)B * T == 0)
        return PRIMAL_OK;
    rope_unpack_grad_kernel<<<(unsigned)((int64_t)B * T), threads_for(H, KVH, hd), 0, s>>>(
        dq, dk, dv, (__nv_bfloat16 *)dqb, (__nv_bfloat16 *)dkb, (__nv_bfloat16 *)dvb, dqh, dkh, dvh,
        cosv, sinv, B, T, H, KVH, hd);
    CUDA_LAUNCHED("rope_unpack_grad", err);
    return PRIMAL_OK;
}
