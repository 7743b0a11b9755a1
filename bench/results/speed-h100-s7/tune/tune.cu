// throwaway (speed-h100-s7/tune): per GEMM shape of the 124M step, cublasGemmEx's default
// against each of cuBLASLt's first 8 heuristic results; built with
//   nvcc -O2 -arch=sm_90 -o tune tune.cu -lcublasLt -lcublas
// and run as ./tune on the H100 (constant operands, full clocks: an upper bound on the gain)
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("cuda %s line %d\n", cudaGetErrorString(e_), __LINE__); exit(1);} } while (0)
typedef struct { const char *name; int ta, tb; long m, n, k, lda, ldb, ldc; int ctype; float beta; int calls; } shp;
int main(void) {
  const long N = 32768, C = 768, F = 2048, V = 50304;
  shp s[] = {
    {"fwd_qkv", 1, 0, 3*C, N, C, C, C, 3*C, 0, 0, 12},
    {"fwd_o_res", 1, 0, C, N, C, C, C, C, 1, 1, 12},
    {"fwd_gateup", 1, 0, 2*F, N, C, C, C, 2*F, 0, 0, 12},
    {"fwd_down_res", 1, 0, C, N, F, F, F, C, 1, 1, 12},
    {"fwd_head", 1, 0, V, N, C, C, C, V, 0, 0, 1},
    {"dx_qkv", 0, 0, C, N, 3*C, C, 3*C, C, 0, 0, 12},
    {"dx_o", 0, 0, C, N, C, C, C, C, 0, 0, 12},
    {"dx_gateup", 0, 0, C, N, 2*F, C, 2*F, C, 0, 0, 12},
    {"dx_down", 0, 0, F, N, C, F, C, F, 0, 0, 12},
    {"dx_head", 0, 0, C, N, V, C, V, C, 1, 0, 1},
    {"dw_q", 0, 1, C, C, N, C, 3*C, C, 1, 0, 36},
    {"dw_o", 0, 1, C, C, N, C, C, C, 1, 0, 12},
    {"dw_gate", 0, 1, C, F, N, C, 2*F, C, 1, 0, 24},
    {"dw_down", 0, 1, F, C, N, F, C, F, 1, 0, 12},
    {"dw_head", 0, 1, C, V, N, C, V, C, 1, 0, 1},
  };
  int ns = sizeof s / sizeof s[0];
  size_t big = (size_t)N * V * 2 + 64;
  void *A, *B, *D, *ws; size_t wsb = 32u << 20;
  CK(cudaMalloc(&A, big)); CK(cudaMalloc(&B, big)); CK(cudaMalloc(&D, (size_t)N * V * 4 / 2 + (size_t)V*C*4)); CK(cudaMalloc(&ws, wsb));
  CK(cudaMemset(A, 0x3c, big)); CK(cudaMemset(B, 0x3c, big)); CK(cudaMemset(D, 0, (size_t)V*C*4));
  cublasHandle_t cb; cublasCreate(&cb); cublasLtHandle_t lt; cublasLtCreate(&lt);
  cudaStream_t st; cudaStreamCreate(&st); cublasSetStream(cb, st); cublasSetWorkspace(cb, ws, wsb);
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  double tot_def = 0, tot_best = 0, tot_h0 = 0;
  for (int i = 0; i < ns; i++) {
    shp *p = &s[i]; float one = 1, beta = p->beta;
    cudaDataType_t ct = p->ctype ? CUDA_R_32F : CUDA_R_16BF;
    int reps = 10; float ms;
    for (int w = 0; w < 3; w++)
      cublasGemmEx(cb, p->ta ? CUBLAS_OP_T : CUBLAS_OP_N, p->tb ? CUBLAS_OP_T : CUBLAS_OP_N, p->m, p->n, p->k, &one, A, CUDA_R_16BF, p->lda, B, CUDA_R_16BF, p->ldb, &beta, D, ct, p->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaEventRecord(e0, st);
    for (int w = 0; w < reps; w++)
      cublasGemmEx(cb, p->ta ? CUBLAS_OP_T : CUBLAS_OP_N, p->tb ? CUBLAS_OP_T : CUBLAS_OP_N, p->m, p->n, p->k, &one, A, CUDA_R_16BF, p->lda, B, CUDA_R_16BF, p->ldb, &beta, D, ct, p->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaEventRecord(e1, st); CK(cudaEventSynchronize(e1)); cudaEventElapsedTime(&ms, e0, e1);
    double tdef = ms / reps;
    cublasLtMatmulDesc_t op; cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasOperation_t ta = p->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, p->ta ? p->k : p->m, p->ta ? p->m : p->k, p->lda);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, p->tb ? p->n : p->k, p->tb ? p->k : p->n, p->ldb);
    cublasLtMatrixLayoutCreate(&lc, ct, p->m, p->n, p->ldc);
    cublasLtMatmulPreference_t pref; cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
    cublasLtMatmulHeuristicResult_t h[32]; int found = 0;
    cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 32, h, &found);
    double best = 1e9, h0 = 0; int bi = -1;
    for (int j = 0; j < found; j++) {
      cublasStatus_t r = CUBLAS_STATUS_SUCCESS;
      for (int w = 0; w < 2; w++) r = cublasLtMatmul(lt, op, &one, A, la, B, lb, &beta, D, lc, D, lc, &h[j].algo, ws, wsb, st);
      if (r != CUBLAS_STATUS_SUCCESS) continue;
      cudaEventRecord(e0, st);
      for (int w = 0; w < reps; w++) cublasLtMatmul(lt, op, &one, A, la, B, lb, &beta, D, lc, D, lc, &h[j].algo, ws, wsb, st);
      cudaEventRecord(e1, st); CK(cudaEventSynchronize(e1)); cudaEventElapsedTime(&ms, e0, e1);
      double t = ms / reps; if (j == 0) h0 = t; if (t < best) { best = t; bi = j; }
    }
    double fl = 2.0 * p->m * p->n * p->k;
    printf("{\"gemm\":\"%s\",\"calls\":%d,\"default_us\":%.1f,\"lt_h0_us\":%.1f,\"best_us\":%.1f,\"best_idx\":%d,\"found\":%d,\"default_tflops\":%.0f,\"best_tflops\":%.0f}\n",
           p->name, p->calls, tdef * 1e3, h0 * 1e3, best * 1e3, bi, found, fl / tdef / 1e9, fl / best / 1e9);
    tot_def += tdef * p->calls; tot_best += best * p->calls; tot_h0 += h0 * p->calls;
    cublasLtMatmulPreferenceDestroy(pref); cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(lc); cublasLtMatmulDescDestroy(op);
  }
  printf("{\"step_default_ms\":%.3f,\"step_lt_h0_ms\":%.3f,\"step_best_ms\":%.3f}\n", tot_def, tot_h0, tot_best);
  return 0;
}
