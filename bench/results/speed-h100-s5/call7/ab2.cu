#include <cstdio>
#include <cstdlib>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include "attention_flash.h"
extern "C" int old_cuda_flash_backward(float *, float *, float *, const void *, const void *, const void *, const void *, const float *, const float *, int, int, int, int, int, cudaStream_t, primal_err *);
#define DECL(x) extern "C" int x##_cuda_flash_backward(float *dq, float *dk, float *dv, void *dqb, void *dkb, void *dvb, int64_t ld, const float *cosv, const float *sinv, const void *qh, const void *kh, const void *vh, const void *doh, const float *lse, const float *D, int B, int T, int H, int KVH, int hd, cudaStream_t s, primal_err *err);
DECL(x1)
DECL(x3)
DECL(z1)
extern "C" int z2_cuda_flash_backward(float *, float *, float *, const void *, const void *, const void *, const void *, const float *, const float *, int, int, int, int, int, cudaStream_t, primal_err *);
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
    size_t nq = (size_t)B * H * T * hd, nk = (size_t)B * KVH * T * hd;
    __nv_bfloat16 *q, *k, *v, *o, *dout, *gb; float *lse, *D, *f1, *f2, *f3, *cs, *sn;
    cudaMalloc(&q, nq * 2), cudaMalloc(&k, nk * 2), cudaMalloc(&v, nk * 2); cudaMalloc(&o, nq * 2), cudaMalloc(&dout, nq * 2);
    cudaMalloc(&lse, (size_t)B * H * T * 4), cudaMalloc(&D, (size_t)B * H * T * 4);
    cudaMalloc(&f1, nq * 4), cudaMalloc(&f2, nk * 4), cudaMalloc(&f3, nk * 4);
    size_t S = (size_t)(H + 2 * KVH) * hd; cudaMalloc(&gb, (size_t)B * T * (S + 8) * 2);
    cudaMalloc(&cs, (size_t)T * hd / 2 * 4), cudaMalloc(&sn, (size_t)T * hd / 2 * 4);
    cudaMemset(cs, 0, (size_t)T * hd / 2 * 4), cudaMemset(sn, 0, (size_t)T * hd / 2 * 4);
    fill<<<1024, 256>>>(q, nq, 1), fill<<<1024, 256>>>(k, nk, 2), fill<<<1024, 256>>>(v, nk, 3); fill<<<1024, 256>>>(dout, nq, 4);
    cudaMemset(D, 0, (size_t)B * H * T * 4);
    primal_err err;
    if (cuda_flash_forward(o, lse, q, k, v, B, T, H, KVH, hd, 0, &err) != 0) { fprintf(stderr, "%s\n", err.msg); return 1; }
    cudaEvent_t e0, e1; cudaEventCreate(&e0), cudaEventCreate(&e1);
    const char *names[6] = {"old", "new_smem_rope", "x1_norot", "x3_oldepilogue", "w1_global_rope", "z2_old_structparam"};
    for (int r = 0; r < reps; r++)
        for (int w = 0; w < 6; w++) {
            cudaEventRecord(e0); int rc;
            if (w == 0) rc = old_cuda_flash_backward(f1, f2, f3, q, k, v, dout, lse, D, B, T, H, KVH, hd, 0, &err);
            else if (w == 1) rc = cuda_flash_backward(NULL, NULL, NULL, gb, gb + H * hd, gb + (H + KVH) * hd, (int64_t)S, cs, sn, q, k, v, dout, lse, D, B, T, H, KVH, hd, 0, &err);
            else if (w == 2) rc = x1_cuda_flash_backward(NULL, NULL, NULL, gb, gb + H * hd, gb + (H + KVH) * hd, (int64_t)S, cs, sn, q, k, v, dout, lse, D, B, T, H, KVH, hd, 0, &err);
            else if (w == 4) rc = z1_cuda_flash_backward(NULL, NULL, NULL, gb, gb + H * hd, gb + (H + KVH) * hd, (int64_t)S, cs, sn, q, k, v, dout, lse, D, B, T, H, KVH, hd, 0, &err);
            else if (w == 5) rc = z2_cuda_flash_backward(f1, f2, f3, q, k, v, dout, lse, D, B, T, H, KVH, hd, 0, &err);
            else rc = x3_cuda_flash_backward(f1, f2, f3, NULL, NULL, NULL, 64, cs, sn, q, k, v, dout, lse, D, B, T, H, KVH, hd, 0, &err);
            cudaEventRecord(e1); cudaEventSynchronize(e1);
            if (rc != 0) { fprintf(stderr, "%s\n", err.msg); return 1; }
            float ms; cudaEventElapsedTime(&ms, e0, e1);
            if (r > 0) printf("{\"variant\": \"%s\", \"rep\": %d, \"ms\": %.4f}\n", names[w], r, ms);
        }
    return 0;
}
