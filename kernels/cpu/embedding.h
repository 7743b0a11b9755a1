/* embedding.h: token embedding lookup over an indexed matrix on the CPU.  See embedding.c. */
#ifndef PRIMAL_KERNELS_CPU_EMBEDDING_H
#define PRIMAL_KERNELS_CPU_EMBEDDING_H

#include <stdint.h>

#include <primal/plugin.h>

void embedding_forward(float *out, const int32_t *tokens, const primal_qtensor *E, int N);
void embedding_backward(float *G, const float *dout, const int32_t *tokens, int64_t r0,
                        int64_t nrows, int N, int C);

void embedding_forward_ref(double *out, const int32_t *tokens, const double *E, int N, int C);
void embedding_backward_ref(double *dE, const double *dout, const int32_t *tokens, int N,
                            int C);

#endif
