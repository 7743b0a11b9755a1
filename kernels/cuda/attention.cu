/* attention.cu: causal softmax attention with grouped-query heads (query head h reads kv head
 * h / (H / KVH)), scores q·k / sqrt(hd), as Hugging Face's eager attention.  SPEC.md, "Models".
 *
 * Two paths.  bf16 runs with head size 32, 64 or 128 take the fused kernels of
 * attention_flash.cu, which never store a (T, T) matrix.  Everything else (float32, which the
 * parity tests need, and other head sizes) takes the unfused path below, also on the tensor
 * cores: per (batch row, head) the score matrix S = scale·Q·Kᵀ
 * (T, T) comes from a cuBLAS strided-batched GEMM (all (b, kv head) pairs of one group member g
 * per call), a row kernel turns it into causal softmax probabilities P (zero above the
 * diagonal) and keeps the row's logsumexp, and O = P·V is another batched GEMM.  Nothing of
 * (T, T) size is kept: backward recomputes S, gets P = exp(S − lse), and with
 * D = rowsum(dO ∘ O):  dP = dO·Vᵀ,  dS = P ∘ (dP − D) · scale,  dV = Σ_g Pᵀ·dO,  dQ = dS·K,
 * dK = Σ_g dSᵀ·Q (the group members accumulate with beta 1).  The causal half above the
 * diagonal is computed and thrown away: twice the minimal FLOPs, and (T, T) scratch.
 *
 * Inputs are head-major (rope.cu packs them) in the compute dtype; the output, a GEMM operand
 * only, is token-major in the compute dtype too; the gradients are token-major, rotated back,
 * in float32 and/or bf16 (the fused kernels write them so themselves; the cuBLAS path through
 * rope.cu).  Scratch holds Bc batch rows; larger batches run in chunks of Bc.
 * CPU twins: kernels/cpu/attention.c.  No keys. */
#include "attention.h"

#include <math.h>

#include "attention_flash.h"
#include "rope.h"

static size_t carve(void **p, char *base, size_t *off, size_t bytes)
{
    *p = base != NULL ? base + *off : NULL;
    *off += (bytes + 255) / 256 * 256;
    return *off;
}

size_t cuda_attn_layout(cuda_attn_scratch *sc, void *base, cuda_dtype dt, int Bc, int T, int H,
                        int KVH, int hd, int fused)
{
    char *b = (char *)base;
    size_t off = 0, e = cuda_dtype_size(dt);
    sc->flash = fused && cuda_flash_supported(dt, hd);
    size_t tt = sc->flash ? 0 : (size_t)Bc * H * T * T, th = (size_t)Bc * H * T * hd;
    size_t tkv = (size_t)Bc * KVH * T * hd;
    void *p;
    carve(&p, b, &off, tt * sizeof(float));
    sc->S = (float *)p;
    carve(&p, b, &off, tt * sizeof(float));
    sc->dP = (float *)p;
    if (dt == CUDA_F32) {
        sc->P = sc->S;
        sc->dS = sc->dP;
    } else {
        carve(&sc->P, b, &off, tt * e);
        carve(&sc->dS, b, &off, tt * e);
    }
    if (sc->flash)
        sc->S = sc->dP = NULL, sc->P = sc->dS = NULL;
    /* the fused kernels write the gradients rotated back in place: no head-major copies */
    size_t thf = sc->flash ? 0 : th, tkvf = sc->flash ? 0 : tkv;
    carve(&p, b, &off, thf * sizeof(float));
    sc->Oh = (float *)p;
    carve(&sc->dOh, b, &off, (sc->flash ? 0 : th) * e);
    carve(&p, b, &off, tkvf * sizeof(float));
    sc->dKh = (float *)p;
    carve(&p, b, &off, tkvf * sizeof(float));
    sc->dVh = (float *)p;
    carve(&p, b, &off, (size_t)Bc * H * T * sizeof(float));
    sc->D = (float *)p;
    sc->Bc = Bc;
    return off;
}

/* One strided-batched GEMM, column-major as cuBLAS sees it: C = alpha·op(A)·op(B) + beta·C, A
 * and B of the compute dtype, C float32, float32 accumulation. */
static cublasStatus_t gemm_sb(cublasHandle_t cb, cublasOperation_t ta, cublasOperation_t tb,
                              int m, int n, int k, float alpha, const void *A, int lda,
                              long long sA, const void *B, int ldb, long long sB, float beta,
                              float *C, int ldc, long long sC, int batch, cuda_dtype dt)
{
    cudaDataType_t t = dt == CUDA_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    return cublasGemmStridedBatchedEx(cb, ta, tb, m, n, k, &alpha, A, t, lda, sA, B, t, ldb, sB,
                                      &beta, C, CUDA_R_32F, ldc, sC, batch, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT);
}

/* p + elems bf16 or float32 elements, NULL staying NULL. */
static void *boff(void *p, size_t elems)
{
    return p != NULL ? (char *)p + elems * 2 : NULL;
}

static float *foff(float *p, size_t elems)
{
    return p != NULL ? p + elems : NULL;
}

static const void *off_e(const void *p, size_t elems, cuda_dtype dt)
{
    return (const char *)p + elems * cuda_dtype_size(dt);
}

/* Row r of S is query position t = r % T: P[t2] = exp(S[t2] − lse) for t2 <= t, 0 above. */
template <typename Tp>
__global__ void softmax_forward_kernel(Tp *P,          /* (rows, T) may be S in float32 */
                                       float *lse,     /* (rows) */
                                       const float *S, /* (rows, T) scaled scores */
                                       int Tn)
{
    __shared__ float sh[32];
    int64_t row = blockIdx.x;
    int t = (int)(row % Tn);
    const float *x = S + row * Tn;
    float m = -INFINITY;
    for (int i = threadIdx.x; i <= t; i += blockDim.x)
        m = fmaxf(m, x[i]);
    m = cuda_block_max(m, sh);
    float sum = 0.0f;
    for (int i = threadIdx.x; i <= t; i += blockDim.x)
        sum += expf(x[i] - m);
    sum = cuda_block_sum(sum, sh);
    float l = m + logf(sum);
    for (int i = threadIdx.x; i < Tn; i += blockDim.x)
        cuda_st(P + row * Tn, i, i <= t ? expf(x[i] - l) : 0.0f);
    if (threadIdx.x == 0)
        lse[row] = l;
}

template <typename Tp>
__global__ void heads_to_tokens_kernel(Tp *out,           /* (B, T, H, hd) */
                                       const float *Oh,   /* (B, H, T, hd) */
                                       int B, int Tn, int H, int hd)
{
    CUDA_FOR(idx, (int64_t)B * Tn * H * hd)
    {
        int i = (int)(idx % hd);
        int64_t rest = idx / hd;
        int h = (int)(rest % H);
        rest /= H;
        int t = (int)(rest % Tn);
        int b = (int)(rest / Tn);
        cuda_st(out, idx, Oh[(((int64_t)b * H + h) * Tn + t) * hd + i]);
    }
}

int cuda_attention_forward(void *out,       /* (B, T, H, hd) token-major, dt */
                           float *lse,      /* (B, H, T) kept for backward */
                           const void *qh,  /* (B, H, T, hd) dt, rotated */
                           const void *kh,  /* (B, KVH, T, hd) dt, rotated */
                           const void *vh,  /* (B, KVH, T, hd) dt */
                           const cuda_attn_scratch *sc, cublasHandle_t cb, cuda_dtype dt,
                           int B, int T, int H, int KVH, int hd, cudaStream_t s,
                           primal_err *err)
{
    int group = H / KVH;
    float scale = 1.0f / sqrtf((float)hd);
    if (sc->flash)
        return cuda_flash_forward(out, lse, qh, kh, vh, B, T, H, KVH, hd, s, err);
    CUBLAS_TRY(cublasSetStream(cb, s), err);
    for (int b0 = 0; b0 < B; b0 += sc->Bc) {
        int nb = B - b0 < sc->Bc ? B - b0 : sc->Bc;
        const void *q = off_e(qh, (size_t)b0 * H * T * hd, dt);
        const void *k = off_e(kh, (size_t)b0 * KVH * T * hd, dt);
        const void *v = off_e(vh, (size_t)b0 * KVH * T * hd, dt);
        long long sQ = (long long)group * T * hd, sK = (long long)T * hd;
        long long sS = (long long)group * T * T;
        for (int g = 0; g < group; g++)
            CUBLAS_TRY(gemm_sb(cb, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, k, hd, sK,
                               off_e(q, (size_t)g * T * hd, dt), hd, sQ, 0.0f,
                               sc->S + (size_t)g * T * T, T, sS, nb * KVH, dt),
                       err);
        int64_t rows = (int64_t)nb * H * T;
        if (dt == CUDA_BF16)
            softmax_forward_kernel<<<(unsigned)rows, 128, 0, s>>>(
                (__nv_bfloat16 *)sc->P, lse + (size_t)b0 * H * T, sc->S, T);
        else
            softmax_forward_kernel<<<(unsigned)rows, 128, 0, s>>>(
                (float *)sc->P, lse + (size_t)b0 * H * T, sc->S, T);
        CUDA_LAUNCHED("softmax_forward", err);
        for (int g = 0; g < group; g++)
            CUBLAS_TRY(gemm_sb(cb, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.0f, v, hd, sK,
                               off_e(sc->P, (size_t)g * T * T, dt), T, sS, 0.0f,
                               sc->Oh + (size_t)g * T * hd, hd, sQ, nb * KVH, dt),
                       err);
        unsigned nblk = cuda_blocks((int64_t)nb * T * H * hd, 256);
        if (dt == CUDA_BF16)
            heads_to_tokens_kernel<<<nblk, 256, 0, s>>>(
                (__nv_bfloat16 *)out + (size_t)b0 * T * H * hd, sc->Oh, nb, T, H, hd);
        else
            heads_to_tokens_kernel<<<nblk, 256, 0, s>>>((float *)out + (size_t)b0 * T * H * hd,
                                                        sc->Oh, nb, T, H, hd);
        CUDA_LAUNCHED("heads_to_tokens", err);
    }
    return PRIMAL_OK;
}

/* One warp per (b, t, h): dOh = dout moved head-major, D = Σ_i dout·out. */
template <typename Tp>
__global__ void dout_pack_kernel(Tp *dOh,           /* (B, H, T, hd) */
                                 float *D,          /* (B, H, T) */
                                 const Tp *dout,    /* (B, T, H, hd) */
                                 const Tp *out,     /* (B, T, H, hd) */
                                 int B, int Tn, int H, int hd)
{
    int lane = threadIdx.x & 31;
    int64_t nwarps = (int64_t)gridDim.x * blockDim.x / 32;
    for (int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
         w < (int64_t)B * Tn * H; w += nwarps) {
        int h = (int)(w % H);
        int t = (int)((w / H) % Tn);
        int b = (int)(w / ((int64_t)H * Tn));
        const Tp *dy = dout + w * hd;
        const Tp *y = out + w * hd;
        int64_t o = (((int64_t)b * H + h) * Tn + t) * hd;
        float acc = 0.0f;
        for (int i = lane; i < hd; i += 32) {
            float g = cuda_ld(dy, i);
            acc += g * cuda_ld(y, i);
            cuda_st(dOh, o + i, g);
        }
        for (int s = 16; s > 0; s >>= 1)
            acc += __shfl_xor_sync(0xffffffffu, acc, s);
        if (lane == 0)
            D[((int64_t)b * H + h) * Tn + t] = acc;
    }
}

/* The same with eight elements a thread and hd/8 threads a (b, t, h) (hd/8 a power of two up
 * to 32, 16-byte aligned rows): 16-byte accesses instead of a warp's 2-byte ones. */
template <typename Tp>
__global__ void dout_pack8_kernel(Tp *dOh,        /* (B, H, T, hd) */
                                  float *D,       /* (B, H, T) */
                                  const Tp *dout, /* (B, T, H, hd) */
                                  const Tp *out,  /* (B, T, H, hd) */
                                  int64_t total,  /* B·T·H·hd/8 */
                                  int Tn, int H, int hd)
{
    const int g = hd / 8;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int valid = idx < total;
    const int64_t w = idx / g; /* (b, t, h), token-major */
    const int j = (int)(idx - w * g);
    const int h = (int)(w % H), t = (int)((w / H) % Tn);
    const int64_t b = w / ((int64_t)H * Tn);
    float acc = 0.0f;
    if (valid) {
        float a[8], y[8];
        cuda_ld8(a, dout + w * hd + 8 * j);
        cuda_ld8(y, out + w * hd + 8 * j);
        for (int k = 0; k < 8; k++)
            acc += a[k] * y[k];
        cuda_st8(dOh + ((b * H + h) * Tn + t) * hd + 8 * j, a);
    }
    /* every lane shuffles, valid or not: the groups of g lanes are aligned within the warp */
    for (int o = g / 2; o > 0; o >>= 1)
        acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (valid && j == 0)
        D[(b * H + h) * Tn + t] = acc;
}

/* Elementwise over (rows, T): P and dS from S, dP, lse, D.  In float32 P is S and dS is dP:
 * each element is read and then written by one thread. */
template <typename Tp>
__global__ void softmax_backward_kernel(Tp *P,            /* (rows, T) */
                                        Tp *dS,           /* (rows, T) */
                                        const float *S,   /* (rows, T) recomputed scores */
                                        const float *dP,  /* (rows, T) */
                                        const float *lse, /* (rows) */
                                        const float *D,   /* (rows) */
                                        float scale, int Tn, int64_t rows)
{
    CUDA_FOR(idx, rows * Tn)
    {
        int64_t row = idx / Tn;
        int t2 = (int)(idx - row * Tn), t = (int)(row % Tn);
        float p = 0.0f, ds = 0.0f;
        if (t2 <= t) {
            p = expf(S[idx] - lse[row]);
            ds = p * (dP[idx] - D[row]) * scale;
        }
        cuda_st(P, idx, p);
        cuda_st(dS, idx, ds);
    }
}

/* dq, dk, dv are written (not accumulated), token-major, rotated back (dL/d of the
 * projections' outputs); dqb, dkb, dvb, when not NULL, get them in bf16 too. */
int cuda_attention_backward(float *dq,         /* (B·T rows of ld, H·hd), or NULL */
                            float *dk,         /* (B·T rows of ld, KVH·hd), or NULL */
                            float *dv,         /* (B·T rows of ld, KVH·hd), or NULL */
                            void *dqb, void *dkb, void *dvb, /* the same, bf16, or NULL */
                            int64_t ld,        /* row stride of those six */
                            const void *dout,  /* (B, T, H, hd) dt */
                            const void *out,   /* (B, T, H, hd) dt, from forward */
                            const float *lse,  /* (B, H, T) from forward */
                            const void *qh,    /* (B, H, T, hd) dt, rotated */
                            const void *kh,    /* (B, KVH, T, hd) dt, rotated */
                            const void *vh,    /* (B, KVH, T, hd) dt */
                            const float *cosv, const float *sinv, /* (>= T, hd/2) */
                            const cuda_attn_scratch *sc, cublasHandle_t cb, cuda_dtype dt,
                            int B, int T, int H, int KVH, int hd, cudaStream_t s,
                            primal_err *err)
{
    int group = H / KVH;
    float scale = 1.0f / sqrtf((float)hd);
    CUBLAS_TRY(cublasSetStream(cb, s), err);
    for (int b0 = 0; b0 < B; b0 += sc->Bc) {
        int nb = B - b0 < sc->Bc ? B - b0 : sc->Bc;
        const void *q = off_e(qh, (size_t)b0 * H * T * hd, dt);
        const void *k = off_e(kh, (size_t)b0 * KVH * T * hd, dt);
        const void *v = off_e(vh, (size_t)b0 * KVH * T * hd, dt);
        long long sQ = (long long)group * T * hd, sK = (long long)T * hd;
        long long sS = (long long)group * T * T;
        int64_t nw = (int64_t)nb * T * H;
        size_t tok = (size_t)b0 * T * H * hd;
        size_t go = (size_t)b0 * T * (size_t)ld; /* the gradients' first row of this chunk */
        if (sc->flash) { /* dO and O token-major as they are; the kernels make D */
            int rc = cuda_flash_backward(foff(dq, go), foff(dk, go), foff(dv, go), boff(dqb, go),
                                         boff(dkb, go), boff(dvb, go), ld, cosv, sinv, q, k, v,
                                         off_e(dout, tok, dt), off_e(out, tok, dt),
                                         lse + (size_t)b0 * H * T, sc->D, nb, T, H, KVH, hd, s,
                                         err);
            if (rc != PRIMAL_OK)
                return rc;
            continue;
        }
        int g8 = hd % 8 == 0 && hd / 8 <= 32 && ((hd / 8) & (hd / 8 - 1)) == 0;
        if (dt == CUDA_BF16 && g8 && cuda_aligned8(dout) && cuda_aligned8(out) &&
            cuda_aligned8(sc->dOh)) {
            int64_t total = nw * (hd / 8);
            dout_pack8_kernel<<<(unsigned)((total + 255) / 256), 256, 0, s>>>(
                (__nv_bfloat16 *)sc->dOh, sc->D, (const __nv_bfloat16 *)dout + tok,
                (const __nv_bfloat16 *)out + tok, total, T, H, hd);
        } else if (dt == CUDA_BF16)
            dout_pack_kernel<<<cuda_blocks(nw * 32, 256), 256, 0, s>>>(
                (__nv_bfloat16 *)sc->dOh, sc->D, (const __nv_bfloat16 *)dout + tok,
                (const __nv_bfloat16 *)out + tok, nb, T, H, hd);
        else
            dout_pack_kernel<<<cuda_blocks(nw * 32, 256), 256, 0, s>>>(
                (float *)sc->dOh, sc->D, (const float *)dout + tok, (const float *)out + tok, nb,
                T, H, hd);
        CUDA_LAUNCHED("dout_pack", err);
        for (int g = 0; g < group; g++) {
            /* S = scale·Q·Kᵀ again, and dP = dO·Vᵀ */
            CUBLAS_TRY(gemm_sb(cb, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, k, hd, sK,
                               off_e(q, (size_t)g * T * hd, dt), hd, sQ, 0.0f,
                               sc->S + (size_t)g * T * T, T, sS, nb * KVH, dt),
                       err);
            CUBLAS_TRY(gemm_sb(cb, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, 1.0f, v, hd, sK,
                               off_e(sc->dOh, (size_t)g * T * hd, dt), hd, sQ, 0.0f,
                               sc->dP + (size_t)g * T * T, T, sS, nb * KVH, dt),
                       err);
        }
        int64_t rows = (int64_t)nb * H * T;
        const float *lse_c = lse + (size_t)b0 * H * T;
        if (dt == CUDA_BF16)
            softmax_backward_kernel<<<cuda_blocks(rows * T, 256), 256, 0, s>>>(
                (__nv_bfloat16 *)sc->P, (__nv_bfloat16 *)sc->dS, sc->S, sc->dP, lse_c, sc->D,
                scale, T, rows);
        else
            softmax_backward_kernel<<<cuda_blocks(rows * T, 256), 256, 0, s>>>(
                (float *)sc->P, (float *)sc->dS, sc->S, sc->dP, lse_c, sc->D, scale, T, rows);
        CUDA_LAUNCHED("softmax_backward", err);
        for (int g = 0; g < group; g++) {
            float beta = g > 0 ? 1.0f : 0.0f;
            /* dV = Pᵀ·dO,  dQ = dS·K,  dK = dSᵀ·Q */
            CUBLAS_TRY(gemm_sb(cb, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.0f,
                               off_e(sc->dOh, (size_t)g * T * hd, dt), hd, sQ,
                               off_e(sc->P, (size_t)g * T * T, dt), T, sS, beta, sc->dVh, hd, sK,
                               nb * KVH, dt),
                       err);
            CUBLAS_TRY(gemm_sb(cb, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.0f, k, hd, sK,
                               off_e(sc->dS, (size_t)g * T * T, dt), T, sS, 0.0f,
                               sc->Oh + (size_t)g * T * hd, hd, sQ, nb * KVH, dt),
                       err);
            CUBLAS_TRY(gemm_sb(cb, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.0f,
                               off_e(q, (size_t)g * T * hd, dt), hd, sQ,
                               off_e(sc->dS, (size_t)g * T * T, dt), T, sS, beta, sc->dKh, hd,
                               sK, nb * KVH, dt),
                       err);
        }
        int rc = cuda_rope_unpack_grad(foff(dq, go), foff(dk, go), foff(dv, go), boff(dqb, go),
                                       boff(dkb, go), boff(dvb, go), ld, sc->Oh, sc->dKh, sc->dVh,
                                       cosv, sinv, nb, T, H, KVH, hd, s, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    return PRIMAL_OK;
}
