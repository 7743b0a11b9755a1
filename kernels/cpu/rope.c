/* rope.c: rotary position embedding as Hugging Face Llama/Qwen2 apply it (rotate_half: element
 * i pairs with i + hd/2, not with i + 1).  SPEC.md, "Models".
 *
 *   inv_freq[i] = 1 / theta^(2i/hd), i < hd/2;  angle = pos · inv_freq[i];  pos = 0..T-1
 *   y[i]        = x[i]·cos − x[i+hd/2]·sin
 *   y[i+hd/2]   = x[i+hd/2]·cos + x[i]·sin
 * cos/sin are computed in double and rounded to float (HF uses float32 throughout; the
 * difference is far below the parity tolerance).  Backward is the inverse rotation.  The _ref
 * twins work in double from theta directly.  No keys. */
#include "rope.h"

#include <math.h>
#include <stdint.h>

/* Below this many elements a loop runs on one thread: waking the others costs more. */
#define PAR_MIN (1 << 15)

void rope_table(float *cosv, /* (T, hd/2) */
                float *sinv, /* (T, hd/2) */
                int T, int hd, double theta)
{
    int h2 = hd / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < h2; i++) {
            double a = t * (1.0 / pow(theta, (double)(2 * i) / hd));
            cosv[t * h2 + i] = (float)cos(a);
            sinv[t * h2 + i] = (float)sin(a);
        }
}

/* out may be inp (in place). */
void rope_forward(float *out,        /* (B, T, nh, hd) */
                  const float *inp,  /* (B, T, nh, hd) */
                  const float *cosv, /* (>= T, hd/2) from rope_table */
                  const float *sinv, /* (>= T, hd/2) */
                  int B, int T, int nh, int hd)
{
    int h2 = hd / 2;
#pragma omp parallel for schedule(static) if ((int64_t)B * T * nh * hd >= PAR_MIN)
    for (int bt = 0; bt < B * T; bt++) {
        const float *cs = cosv + (bt % T) * h2, *sn = sinv + (bt % T) * h2;
        for (int h = 0; h < nh; h++) {
            const float *x = inp + ((int64_t)bt * nh + h) * hd;
            float *y = out + ((int64_t)bt * nh + h) * hd;
            for (int i = 0; i < h2; i++) {
                float x1 = x[i], x2 = x[i + h2];
                y[i] = x1 * cs[i] + (-x2) * sn[i];
                y[i + h2] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
}

/* Writes dinp (not accumulated); dinp may be dout (in place). */
void rope_backward(float *dinp,       /* (B, T, nh, hd) */
                   const float *dout, /* (B, T, nh, hd) */
                   const float *cosv, /* (>= T, hd/2) */
                   const float *sinv, /* (>= T, hd/2) */
                   int B, int T, int nh, int hd)
{
    int h2 = hd / 2;
#pragma omp parallel for schedule(static) if ((int64_t)B * T * nh * hd >= PAR_MIN)
    for (int bt = 0; bt < B * T; bt++) {
        const float *cs = cosv + (bt % T) * h2, *sn = sinv + (bt % T) * h2;
        for (int h = 0; h < nh; h++) {
            const float *dy = dout + ((int64_t)bt * nh + h) * hd;
            float *dx = dinp + ((int64_t)bt * nh + h) * hd;
            for (int i = 0; i < h2; i++) {
                float d1 = dy[i], d2 = dy[i + h2];
                dx[i] = d1 * cs[i] + d2 * sn[i];
                dx[i + h2] = d2 * cs[i] - d1 * sn[i];
            }
        }
    }
}

static void rotate_ref(double *out, const double *inp, int B, int T, int nh, int hd,
                       double theta, double dir)
{
    int h2 = hd / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < nh; h++) {
                int64_t o = (((int64_t)b * T + t) * nh + h) * hd;
                for (int i = 0; i < h2; i++) {
                    double a = t / pow(theta, (double)(2 * i) / hd);
                    double c = cos(a), s = dir * sin(a);
                    double x1 = inp[o + i], x2 = inp[o + i + h2];
                    out[o + i] = x1 * c - x2 * s;
                    out[o + i + h2] = x2 * c + x1 * s;
                }
            }
}

void rope_forward_ref(double *out,       /* (B, T, nh, hd) */
                      const double *inp, /* (B, T, nh, hd) */
                      int B, int T, int nh, int hd, double theta)
{
    rotate_ref(out, inp, B, T, nh, hd, theta, 1.0);
}

/* The transpose of a rotation is the rotation by the opposite angle. */
void rope_backward_ref(double *dinp,       /* (B, T, nh, hd) written */
                       const double *dout, /* (B, T, nh, hd) */
                       int B, int T, int nh, int hd, double theta)
{
    rotate_ref(dinp, dout, B, T, nh, hd, theta, -1.0);
}
