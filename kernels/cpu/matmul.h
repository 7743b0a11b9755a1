/* matmul.h: y = x·Wᵀ (+ b) and its backward for one weight matrix stored as index + per-row
 * scale over a grid (or dense float32), on the CPU.  SPEC.md, "The forward and backward pass of
 * an indexed matrix".  See matmul.c. */
#ifndef PRIMAL_KERNELS_CPU_MATMUL_H
#define PRIMAL_KERNELS_CPU_MATMUL_H

#include <stdint.h>

#include <primal/plugin.h>

/* Rows of W dequantised at a time; one (MATMUL_TILE_ROWS, C) float tile per OpenMP thread is
 * the only float copy of W that exists.  Callers size the tile scratch with it:
 * omp_get_max_threads() * MATMUL_TILE_ROWS * C floats. */
#ifndef MATMUL_TILE_ROWS
#define MATMUL_TILE_ROWS 128
#endif

void matmul_dequant_rows(float *out, const primal_qtensor *w, int64_t r0, int64_t nrows);
void matmul_forward(float *out, const float *inp, const primal_qtensor *w, const float *bias,
                    float *tile, int N, int C, int OC);
void matmul_backward_inp(float *dinp, const float *dout, const primal_qtensor *w, float *tile,
                         int N, int C, int OC);
void matmul_backward_weight(float *G, const float *dout, const float *inp, int64_t r0,
                            int64_t nrows, int N, int C, int OC);
void matmul_backward_bias(float *dbias, const float *dout, int N, int OC);
void matmul_scale_grad(float *dscale, const float *G, const primal_qtensor *w, int64_t r0,
                       int64_t nrows);

void matmul_forward_ref(double *out, const double *inp, const double *w, const double *bias,
                        int N, int C, int OC);
void matmul_backward_ref(double *dinp, double *dweight, double *dbias, const double *dout,
                         const double *inp, const double *w, int N, int C, int OC);

#endif
