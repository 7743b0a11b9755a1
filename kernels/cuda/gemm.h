/* gemm.h: the CUDA model's matrix products.  Each shape gets a plan the first time it is
 * multiplied (cuBLASLt descriptors made once, an algorithm chosen once) and keeps it for the rest
 * of the run.  See gemm.c. */
#ifndef PRIMAL_KERNELS_CUDA_GEMM_H
#define PRIMAL_KERNELS_CUDA_GEMM_H

#include <cublasLt.h>
#include <cublas_v2.h>

#include "cuda_common.h"

/* How a shape's algorithm is chosen ([run] gemm). */
#define CUDA_GEMM_HEURISTIC 0 /* cuBLAS's own: cublasGemmEx where C is D, else cuBLASLt's first
                               * heuristic result.  Deterministic: the same bits run to run */
#define CUDA_GEMM_TIMED 1     /* the fastest of those and cuBLASLt's next heuristic results,
                               * timed on the shape's first call (see gemm.c for which calls) */

typedef struct cuda_gemm cuda_gemm;

/* D (m, n) = op(A) (m, k) · op(B) (k, n) + beta·C, column-major as cuBLAS sees it, float32
 * accumulation; A and B of type ab, C and D of type cd.  C may be D (ldc = ldd), or NULL when
 * beta is 0. */
typedef struct cuda_gemm_op {
    int ta, tb; /* op(X) = Xᵀ where set */
    int64_t m, n, k;
    cuda_dtype ab, cd;
    const void *A, *B, *C;
    void *D;
    int64_t lda, ldb, ldc, ldd;
    float beta;
} cuda_gemm_op;

/* What the plans cost, each shape counted once: the time of cuBLAS's own choice and of the one
 * taken, summed over the shapes that were timed. */
typedef struct cuda_gemm_stats {
    int shapes, timed;
    double heuristic_us, chosen_us;
} cuda_gemm_stats;

/* cb and lt stay the caller's, as does ws (cuBLASLt's scratch, ws_bytes) */
CUDA_EXTERN_C int cuda_gemm_create(cuda_gemm **out, int mode, cublasHandle_t cb,
                                   cublasLtHandle_t lt, void *ws, size_t ws_bytes,
                                   primal_err *err);
CUDA_EXTERN_C void cuda_gemm_free(cuda_gemm *g);
/* Queues the product on s.  A shape's first call in timed mode synchronises the device and runs
 * each candidate a few times first. */
CUDA_EXTERN_C int cuda_gemm_run(cuda_gemm *g, const cuda_gemm_op *op, cudaStream_t s,
                                primal_err *err);
CUDA_EXTERN_C void cuda_gemm_stats_get(const cuda_gemm *g, cuda_gemm_stats *st);

/* The plans as bytes, for a checkpoint, so that a resumed run multiplies with the algorithms the
 * first one timed: returns the size, and writes them when cap allows.  Native byte order, tagged
 * with the GPU's name and cuBLASLt's version. */
CUDA_EXTERN_C size_t cuda_gemm_export(const cuda_gemm *g, void *buf, size_t cap);
/* Takes the plans of an export: *taken of them (0 when they came from another GPU or cuBLASLt
 * version, which then times its own); a cuBLASLt algorithm that no longer checks out is
 * skipped.  PRIMAL_EIO for bytes that are not an export. */
CUDA_EXTERN_C int cuda_gemm_import(cuda_gemm *g, const void *buf, size_t n, int *taken,
                                   primal_err *err);

#endif
