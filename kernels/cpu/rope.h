/* rope.h: rotary position embedding, Hugging Face rotate_half convention.  See rope.c. */
#ifndef PRIMAL_KERNELS_CPU_ROPE_H
#define PRIMAL_KERNELS_CPU_ROPE_H

void rope_table(float *cosv, float *sinv, int T, int hd, double theta);
void rope_forward(float *out, const float *inp, const float *cosv, const float *sinv, int B,
                  int T, int nh, int hd);
void rope_backward(float *dinp, const float *dout, const float *cosv, const float *sinv, int B,
                   int T, int nh, int hd);

void rope_forward_ref(double *out, const double *inp, int B, int T, int nh, int hd,
                      double theta);
void rope_backward_ref(double *dinp, const double *dout, int B, int T, int nh, int hd,
                       double theta);

#endif
