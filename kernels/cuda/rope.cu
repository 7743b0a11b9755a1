/* rope.cu: rotary position embedding as Hugging Face Llama/Qwen2 apply it (rotate_half: element
 * i pairs with i + hd/2), fused with the layout change attention wants.  SPEC.md, "Models".
 *
 *   y[i] = x[i]·cos − x[i+hd/2]·sin,  y[i+hd/2] = x[i+hd/2]·cos + x[i]·sin   (angle = t·θ^(−2i/hd))
 *
 * pack: q (B, T, H, hd), k and v (B, T, KVH, hd) token-major float32, as the projections write
 * them, become qh (B, H, T, hd), kh and vh (B, KVH, T, hd) head-major in the compute dtype, q and
 * k rotated; so that every (batch, head) of attention is one strided matrix for cuBLAS.
 * unpack_grad: the head-major float32 gradients go back token-major, dq and dk rotated by the
 * opposite angle (the transpose of a rotation).  cos/sin come from the CPU's rope_table (rounded
 * from double), uploaded once.  CPU twins: kernels/cpu/rope.c.  No keys. */
#include "rope.h"

template <typename T>
__global__ void rope_pack_kernel(T *qh,             /* (B, H, T, hd) */
                                 T *kh,             /* (B, KVH, T, hd) */
                                 T *vh,             /* (B, KVH, T, hd) */
                                 const float *q,    /* (B, T, H, hd) */
                                 const float *k,    /* (B, T, KVH, hd) */
                                 const float *v,    /* (B, T, KVH, hd) */
                                 const float *cosv, /* (>= T, hd/2) */
                                 const float *sinv, /* (>= T, hd/2) */
                                 int B, int Tn, int H, int KVH, int hd)
{
    int h2 = hd / 2, NH = H + 2 * KVH;
    /* one thread per (b, t, head of q|k|v, i < hd/2) */
    CUDA_FOR(idx, (int64_t)B * Tn * NH * h2)
    {
        int i = (int)(idx % h2);
        int64_t rest = idx / h2;
        int hh = (int)(rest % NH);
        rest /= NH;
        int t = (int)(rest % Tn);
        int b = (int)(rest / Tn);
        const float *src;
        T *dst;
        int rotate = 1;
        if (hh < H) {
            src = q + (((int64_t)b * Tn + t) * H + hh) * hd;
            dst = qh + (((int64_t)b * H + hh) * Tn + t) * hd;
        } else if (hh < H + KVH) {
            int h = hh - H;
            src = k + (((int64_t)b * Tn + t) * KVH + h) * hd;
            dst = kh + (((int64_t)b * KVH + h) * Tn + t) * hd;
        } else {
            int h = hh - H - KVH;
            src = v + (((int64_t)b * Tn + t) * KVH + h) * hd;
            dst = vh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            rotate = 0;
        }
        float x1 = src[i], x2 = src[i + h2];
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
                   const float *q, const float *k, const float *v, /* token-major */
                   const float *cosv, const float *sinv,           /* (>= T, hd/2) */
                   int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err)
{
    int64_t n = (int64_t)B * T * (H + 2 * KVH) * (hd / 2);
    if (n == 0)
        return PRIMAL_OK;
    if (dt == CUDA_BF16)
        rope_pack_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>(
            (__nv_bfloat16 *)qh, (__nv_bfloat16 *)kh, (__nv_bfloat16 *)vh, q, k, v, cosv, sinv,
            B, T, H, KVH, hd);
    else
        rope_pack_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>((float *)qh, (float *)kh,
                                                             (float *)vh, q, k, v, cosv, sinv, B,
                                                             T, H, KVH, hd);
    CUDA_LAUNCHED("rope_pack", err);
    return PRIMAL_OK;
}

__global__ void rope_unpack_grad_kernel(float *dq,          /* (B, T, H, hd) */
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
    int h2 = hd / 2, NH = H + 2 * KVH;
    CUDA_FOR(idx, (int64_t)B * Tn * NH * h2)
    {
        int i = (int)(idx % h2);
        int64_t rest = idx / h2;
        int hh = (int)(rest % NH);
        rest /= NH;
        int t = (int)(rest % Tn);
        int b = (int)(rest / Tn);
        const float *src;
        float *dst;
        __nv_bfloat16 *dstb;
        int rotate = 1;
        int64_t o;
        if (hh < H) {
            src = dqh + (((int64_t)b * H + hh) * Tn + t) * hd;
            o = (((int64_t)b * Tn + t) * H + hh) * hd;
            dst = dq + o;
            dstb = dqb != NULL ? dqb + o : NULL;
        } else if (hh < H + KVH) {
            int h = hh - H;
            src = dkh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            o = (((int64_t)b * Tn + t) * KVH + h) * hd;
            dst = dk + o;
            dstb = dkb != NULL ? dkb + o : NULL;
        } else {
            int h = hh - H - KVH;
            src = dvh + (((int64_t)b * KVH + h) * Tn + t) * hd;
            o = (((int64_t)b * Tn + t) * KVH + h) * hd;
            dst = dv + o;
            dstb = dvb != NULL ? dvb + o : NULL;
            rotate = 0;
        }
        float d1 = src[i], d2 = src[i + h2], e1 = d1, e2 = d2;
        if (rotate) {
            float c = cosv[t * h2 + i], sn = sinv[t * h2 + i];
            e1 = d1 * c + d2 * sn;
            e2 = d2 * c - d1 * sn;
        }
        dst[i] = e1;
        dst[i + h2] = e2;
        if (dstb != NULL) {
            dstb[i] = __float2bfloat16_rn(e1);
            dstb[i + h2] = __float2bfloat16_rn(e2);
        }
    }
}

/* dq, dk, dv are written (not accumulated); dqb, dkb, dvb, when not NULL, get them again in
 * bf16 (the GEMMs' operands). */
int cuda_rope_unpack_grad(float *dq, float *dk, float *dv,             /* token-major */
                          void *dqb, void *dkb, void *dvb,             /* the same, bf16 */
                          const float *dqh, const float *dkh, const float *dvh, /* head-major */
                          const float *cosv, const float *sinv,
                          int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err)
{
    int64_t n = (int64_t)B * T * (H + 2 * KVH) * (hd / 2);
    if (n == 0)
        return PRIMAL_OK;
    rope_unpack_grad_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>(
        dq, dk, dv, (__nv_bfloat16 *)dqb, (__nv_bfloat16 *)dkb, (__nv_bfloat16 *)dvb, dqh, dkh, dvh,
        cosv, sinv, B, T, H, KVH, hd);
    CUDA_LAUNCHED("rope_unpack_grad", err);
    return PRIMAL_OK;
}
