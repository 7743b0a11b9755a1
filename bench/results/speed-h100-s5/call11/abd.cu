/* A/B: cuda_attention_backward of HEAD (old_*) vs the working tree, model layout, 124M shape. */
#include <cstdio>
#include <cstdlib>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include "attention.h"
#include "rope.h"
extern "C" size_t old_cuda_attn_layout(cuda_attn_scratch *sc, void *base, cuda_dtype dt, int Bc, int T, int H, int KVH, int hd, int fused);
extern "C" int old_cuda_attention_forward(void *out, float *lse, const void *qh, const void *kh, const void *vh, const cuda_attn_scratch *sc, cublasHandle_t cb, cuda_dtype dt, int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err);
extern "C" int old_cuda_attention_backward(float *dq, float *dk, float *dv, void *dqb, void *dkb, void *dvb, int64_t ld, const void *dout, const void *out, const float *lse, const void *qh, const void *kh, const void *vh, const float *cosv, const float *sinv, const cuda_attn_scratch *sc, cublasHandle_t cb, cuda_dtype dt, int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err);
__global__ void fill(__nv_bfloat16 *p, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned x = (unsigned)i * 2654435761u ^ seed; x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
        p[i] = __float2bfloat16((float)(x & 0xffff) / 65536.0f - 0.5f);
    }
}
int main(int argc, char **argv)
{
    int B = 32, T = 1024, H = 12, KVH = 12, hd = 64, reps = argc > 1 ? atoi(argv[1]) : 10;
    size_t nq = (size_t)B * H * T * hd, nk = (size_t)B * KVH * T * hd, S = (size_t)(H + 2 * KVH) * hd;
    __nv_bfloat16 *q, *k, *v, *o, *dout, *g0, *g1; float *lse, *cs, *sn;
    cudaMalloc(&q, nq * 2); cudaMalloc(&k, nk * 2); cudaMalloc(&v, nk * 2); cudaMalloc(&o, nq * 2); cudaMalloc(&dout, nq * 2);
    cudaMalloc(&lse, (size_t)B * H * T * 4); cudaMalloc(&g0, (size_t)B * T * S * 2); cudaMalloc(&g1, (size_t)B * T * S * 2);
    float *hc = (float *)malloc((size_t)T * hd / 2 * 4), *hs = (float *)malloc((size_t)T * hd / 2 * 4);
    for (int t = 0; t < T; t++) for (int i = 0; i < hd / 2; i++) { double f = t * pow(10000.0, -2.0 * i / hd); hc[t * hd / 2 + i] = (float)cos(f); hs[t * hd / 2 + i] = (float)sin(f); }
    cudaMalloc(&cs, (size_t)T * hd / 2 * 4); cudaMalloc(&sn, (size_t)T * hd / 2 * 4);
    cudaMemcpy(cs, hc, (size_t)T * hd / 2 * 4, cudaMemcpyHostToDevice); cudaMemcpy(sn, hs, (size_t)T * hd / 2 * 4, cudaMemcpyHostToDevice);
    fill<<<1024, 256>>>(q, nq, 1); fill<<<1024, 256>>>(k, nk, 2); fill<<<1024, 256>>>(v, nk, 3); fill<<<1024, 256>>>(dout, nq, 4);
    cublasHandle_t cb; cublasCreate(&cb);
    cuda_attn_scratch s0, s1; void *b0, *b1;
    size_t z0 = old_cuda_attn_layout(&s0, NULL, CUDA_BF16, B, T, H, KVH, hd, 1); cudaMalloc(&b0, z0); old_cuda_attn_layout(&s0, b0, CUDA_BF16, B, T, H, KVH, hd, 1);
    size_t z1 = cuda_attn_layout(&s1, NULL, CUDA_BF16, B, T, H, KVH, hd, 1); cudaMalloc(&b1, z1); cuda_attn_layout(&s1, b1, CUDA_BF16, B, T, H, KVH, hd, 1);
    printf("{\"scratch_old\": %zu, \"scratch_new\": %zu}\n", z0, z1);
    primal_err err;
    if (cuda_attention_forward(o, lse, q, k, v, &s1, cb, CUDA_BF16, B, T, H, KVH, hd, 0, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    __nv_bfloat16 *o2; float *lse2; cudaMalloc(&o2, nq * 2); cudaMalloc(&lse2, (size_t)B * H * T * 4);
    for (int r = 0; r < reps; r++)
        for (int w = 0; w < 2; w++) {
            cudaEventRecord(e0);
            int rc = w ? cuda_attention_forward(o2, lse2, q, k, v, &s1, cb, CUDA_BF16, B, T, H, KVH, hd, 0, &err)
                       : old_cuda_attention_forward(o2, lse2, q, k, v, &s0, cb, CUDA_BF16, B, T, H, KVH, hd, 0, &err);
            cudaEventRecord(e1); cudaEventSynchronize(e1);
            if (rc) { fprintf(stderr, "%s\n", err.msg); return 1; }
            float ms; cudaEventElapsedTime(&ms, e0, e1);
            if (r > 0) printf("{\"variant\": \"fwd_%s\", \"rep\": %d, \"ms\": %.4f}\n", w ? "new" : "old", r, ms);
        }
    for (int r = 0; r < reps; r++)
        for (int w = 0; w < 2; w++) {
            __nv_bfloat16 *g = w ? g1 : g0;
            cudaEventRecord(e0);
            int rc = w ? cuda_attention_backward(NULL, NULL, NULL, g, g + H * hd, g + (H + KVH) * hd, (int64_t)S, dout, o, lse, q, k, v, cs, sn, &s1, cb, CUDA_BF16, B, T, H, KVH, hd, 0, &err)
                       : old_cuda_attention_backward(NULL, NULL, NULL, g, g + H * hd, g + (H + KVH) * hd, (int64_t)S, dout, o, lse, q, k, v, cs, sn, &s0, cb, CUDA_BF16, B, T, H, KVH, hd, 0, &err);
            cudaEventRecord(e1); cudaEventSynchronize(e1);
            if (rc) { fprintf(stderr, "%s\n", err.msg); return 1; }
            float ms; cudaEventElapsedTime(&ms, e0, e1);
            if (r > 0) printf("{\"variant\": \"%s\", \"rep\": %d, \"ms\": %.4f}\n", w ? "new" : "old", r, ms);
        }
    /* the two agree to within bf16 rounding (D's summation order differs) */
    size_t n = (size_t)B * T * S; __nv_bfloat16 *h0 = (__nv_bfloat16 *)malloc(n * 2), *h1 = (__nv_bfloat16 *)malloc(n * 2);
    cudaMemcpy(h0, g0, n * 2, cudaMemcpyDeviceToHost); cudaMemcpy(h1, g1, n * 2, cudaMemcpyDeviceToHost);
    double md = 0, mx = 0; size_t same = 0;
    for (size_t i = 0; i < n; i++) { double a = __bfloat162float(h0[i]), b = __bfloat162float(h1[i]); double d = fabs(a - b); if (d > md) md = d; if (fabs(a) > mx) mx = fabs(a); same += a == b; }
    printf("{\"max_abs_diff\": %.6g, \"max_abs\": %.6g, \"same_fraction\": %.6f}\n", md, mx, (double)same / n);
    return 0;
}
