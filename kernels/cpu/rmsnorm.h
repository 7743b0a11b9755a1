/* rmsnorm.h: RMSNorm forward and backward on the CPU (Llama/Qwen2).  See rmsnorm.c. */
#ifndef PRIMAL_KERNELS_CPU_RMSNORM_H
#define PRIMAL_KERNELS_CPU_RMSNORM_H

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                     double eps);
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                      const float *weight, const float *rstd, int N, int C);

void rmsnorm_forward_ref(double *out, const double *inp, const double *weight, int N, int C,
                         double eps);
void rmsnorm_backward_ref(double *dinp, double *dweight, const double *dout, const double *inp,
                          const double *weight, int N, int C, double eps);

#endif
