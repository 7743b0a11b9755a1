/* crossentropy.h: softmax cross-entropy of the LM head on the CPU.  See crossentropy.c. */
#ifndef PRIMAL_KERNELS_CPU_CROSSENTROPY_H
#define PRIMAL_KERNELS_CPU_CROSSENTROPY_H

#include <stdint.h>

void crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N,
                          int V);
void crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                           const float *dloss, int N, int V);

void crossentropy_forward_ref(double *losses, const double *logits, const int32_t *targets,
                              int N, int V);
void crossentropy_backward_ref(double *dlogits, const double *logits, const int32_t *targets,
                               const double *dloss, int N, int V);

#endif
