/* attention.c: causal softmax attention, written out, with grouped-query heads: query head h
 * reads kv head h / (H / KVH) (MQA when KVH = 1).  Scores are q·k / sqrt(hd), softmax over
 * positions t2 <= t in float32, as Hugging Face's eager attention.  SPEC.md, "Models".
 *
 * Forward keeps the probabilities att (B, H, T, T) for backward (only t2 <= t is written or
 * read).  Backward runs one task per (batch row, kv head), so the query heads that share a kv
 * head add into dk/dv from a single thread.  The _ref twins are plain loops in double.
 * No keys. */
#include "attention.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

void attention_forward(float *out,     /* (B, T, H, hd) */
                       float *att,     /* (B, H, T, T) softmax probabilities, kept for backward */
                       const float *q, /* (B, T, H, hd) rotated */
                       const float *k, /* (B, T, KVH, hd) rotated */
                       const float *v, /* (B, T, KVH, hd) */
                       int B, int T, int H, int KVH, int hd)
{
    int group = H / KVH;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(3) schedule(dynamic, 8)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                int kh = h / group;
                const float *qt = q + (((int64_t)b * T + t) * H + h) * hd;
                float *a = att + (((int64_t)b * H + h) * T + t) * T;
                float mx = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *kt = k + (((int64_t)b * T + t2) * KVH + kh) * hd;
                    float s = dot(qt, kt, hd) * scale;
                    a[t2] = s;
                    if (s > mx)
                        mx = s;
                }
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    a[t2] = expf(a[t2] - mx);
                    sum += a[t2];
                }
                float inv = 1.0f / sum;
                for (int t2 = 0; t2 <= t; t2++)
                    a[t2] *= inv;
                float *o = out + (((int64_t)b * T + t) * H + h) * hd;
                memset(o, 0, (size_t)hd * sizeof(float));
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *vt = v + (((int64_t)b * T + t2) * KVH + kh) * hd;
                    float p = a[t2];
#pragma omp simd
                    for (int i = 0; i < hd; i++)
                        o[i] += p * vt[i];
                }
            }
}

/* dq, dk, dv are written (not accumulated). */
void attention_backward(float *dq,         /* (B, T, H, hd) */
                        float *dk,         /* (B, T, KVH, hd) */
                        float *dv,         /* (B, T, KVH, hd) */
                        float *scratch,    /* (B, KVH, T) */
                        const float *dout, /* (B, T, H, hd) */
                        const float *att,  /* (B, H, T, T) from forward */
                        const float *q,    /* (B, T, H, hd) */
                        const float *k,    /* (B, T, KVH, hd) */
                        const float *v,    /* (B, T, KVH, hd) */
                        int B, int T, int H, int KVH, int hd)
{
    int group = H / KVH;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < KVH; kh++) {
            float *da = scratch + ((int64_t)b * KVH + kh) * T; /* dL/d att of one row */
            for (int t = 0; t < T; t++) {
                memset(dk + (((int64_t)b * T + t) * KVH + kh) * hd, 0, (size_t)hd * sizeof(float));
                memset(dv + (((int64_t)b * T + t) * KVH + kh) * hd, 0, (size_t)hd * sizeof(float));
            }
            for (int h = kh * group; h < (kh + 1) * group; h++)
                for (int t = 0; t < T; t++) {
                    const float *a = att + (((int64_t)b * H + h) * T + t) * T;
                    const float *qt = q + (((int64_t)b * T + t) * H + h) * hd;
                    const float *dot_ = dout + (((int64_t)b * T + t) * H + h) * hd;
                    float *dqt = dq + (((int64_t)b * T + t) * H + h) * hd;
                    /* out = Σ a·v:  da = dout·v,  dv += a·dout */
                    float sa = 0.0f;
                    for (int t2 = 0; t2 <= t; t2++) {
                        const float *vt = v + (((int64_t)b * T + t2) * KVH + kh) * hd;
                        float *dvt = dv + (((int64_t)b * T + t2) * KVH + kh) * hd;
                        da[t2] = dot(dot_, vt, hd);
                        sa += a[t2] * da[t2];
                        float p = a[t2];
#pragma omp simd
                        for (int i = 0; i < hd; i++)
                            dvt[i] += p * dot_[i];
                    }
                    /* softmax: ds = a·(da − Σ a·da);  s = q·k·scale */
                    memset(dqt, 0, (size_t)hd * sizeof(float));
                    for (int t2 = 0; t2 <= t; t2++) {
                        float ds = a[t2] * (da[t2] - sa) * scale;
                        const float *kt = k + (((int64_t)b * T + t2) * KVH + kh) * hd;
                        float *dkt = dk + (((int64_t)b * T + t2) * KVH + kh) * hd;
#pragma omp simd
                        for (int i = 0; i < hd; i++) {
                            dqt[i] += ds * kt[i];
                            dkt[i] += ds * qt[i];
                        }
                    }
                }
        }
}

void attention_forward_ref(double *out,     /* (B, T, H, hd) */
                           const double *q, /* (B, T, H, hd) */
                           const double *k, /* (B, T, KVH, hd) */
                           const double *v, /* (B, T, KVH, hd) */
                           int B, int T, int H, int KVH, int hd)
{
    int group = H / KVH;
    double p[T > 0 ? T : 1];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                int kh = h / group;
                const double *qt = q + (((int64_t)b * T + t) * H + h) * hd;
                double mx = -INFINITY, sum = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const double *kt = k + (((int64_t)b * T + t2) * KVH + kh) * hd;
                    double s = 0.0;
                    for (int i = 0; i < hd; i++)
                        s += qt[i] * kt[i];
                    p[t2] = s / sqrt((double)hd);
                    mx = fmax(mx, p[t2]);
                }
                for (int t2 = 0; t2 <= t; t2++)
                    sum += p[t2] = exp(p[t2] - mx);
                double *o = out + (((int64_t)b * T + t) * H + h) * hd;
                for (int i = 0; i < hd; i++) {
                    double s = 0.0;
                    for (int t2 = 0; t2 <= t; t2++)
                        s += p[t2] / sum * v[(((int64_t)b * T + t2) * KVH + kh) * hd + i];
                    o[i] = s;
                }
            }
}

/* dq, dk, dv are accumulated into; the probabilities are recomputed from q and k. */
void attention_backward_ref(double *dq,         /* (B, T, H, hd) */
                            double *dk,         /* (B, T, KVH, hd) */
                            double *dv,         /* (B, T, KVH, hd) */
                            const double *dout, /* (B, T, H, hd) */
                            const double *q,    /* (B, T, H, hd) */
                            const double *k,    /* (B, T, KVH, hd) */
                            const double *v,    /* (B, T, KVH, hd) */
                            int B, int T, int H, int KVH, int hd)
{
    int group = H / KVH;
    double sc = 1.0 / sqrt((double)hd);
    double p[T > 0 ? T : 1], dp[T > 0 ? T : 1];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                int kh = h / group;
                int64_t qo = (((int64_t)b * T + t) * H + h) * hd;
                double mx = -INFINITY, sum = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    int64_t ko = (((int64_t)b * T + t2) * KVH + kh) * hd;
                    double s = 0.0;
                    for (int i = 0; i < hd; i++)
                        s += q[qo + i] * k[ko + i];
                    p[t2] = s * sc;
                    mx = fmax(mx, p[t2]);
                }
                for (int t2 = 0; t2 <= t; t2++)
                    sum += p[t2] = exp(p[t2] - mx);
                double pdp = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    int64_t ko = (((int64_t)b * T + t2) * KVH + kh) * hd;
                    p[t2] /= sum;
                    dp[t2] = 0.0;
                    for (int i = 0; i < hd; i++) {
                        dp[t2] += dout[qo + i] * v[ko + i];
                        dv[ko + i] += p[t2] * dout[qo + i];
                    }
                    pdp += p[t2] * dp[t2];
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    int64_t ko = (((int64_t)b * T + t2) * KVH + kh) * hd;
                    double ds = p[t2] * (dp[t2] - pdp) * sc;
                    for (int i = 0; i < hd; i++) {
                        dq[qo + i] += ds * k[ko + i];
                        dk[ko + i] += ds * q[qo + i];
                    }
                }
            }
}
