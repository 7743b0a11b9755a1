/* attention.h: causal softmax attention with grouped-query heads on the CPU.  See attention.c. */
#ifndef PRIMAL_KERNELS_CPU_ATTENTION_H
#define PRIMAL_KERNELS_CPU_ATTENTION_H

void attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                       int B, int T, int H, int KVH, int hd);
void attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                        const float *att, const float *q, const float *k, const float *v, int B,
                        int T, int H, int KVH, int hd);

void attention_forward_ref(double *out, const double *q, const double *k, const double *v,
                           int B, int T, int H, int KVH, int hd);
void attention_backward_ref(double *dq, double *dk, double *dv, const double *dout,
                            const double *q, const double *k, const double *v, int B, int T,
                            int H, int KVH, int hd);

#endif
