/* swiglu.h: the SwiGLU gate of the Llama/Qwen2 MLP on the CPU.  See swiglu.c. */
#ifndef PRIMAL_KERNELS_CPU_SWIGLU_H
#define PRIMAL_KERNELS_CPU_SWIGLU_H

#include <stdint.h>

void swiglu_forward(float *out, const float *gate, const float *up, int64_t n);
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                     const float *up, int64_t n);

void swiglu_forward_ref(double *out, const double *gate, const double *up, int64_t n);
void swiglu_backward_ref(double *dgate, double *dup, const double *dout, const double *gate,
                         const double *up, int64_t n);

#endif
