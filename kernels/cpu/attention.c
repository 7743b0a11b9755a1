/* attention.c: causal softmax attention, written out, with grouped-query heads: query head h
 * reads kv head h / (H / KVH) (MQA when KVH = 1).  Scores are q·k / sqrt(hd), softmax over
 * positions t2 <= t in float32, as Hugging Face's eager attention.  SPEC.md, "Models".
 *
 * One OpenMP task per (batch row, head) runs the products of that head through single-threaded
 * cblas_sgemm on strided views of q, k, v (no copies), in row blocks of ATT_BS so that the
 * masked upper triangle is mostly skipped.  Forward keeps the probabilities att (B, H, T, T)
 * for backward (entries above the diagonal within a block are zero, beyond it unwritten).
 * Backward runs one task per (batch row, kv head), so the query heads that share a kv head add
 * into dk/dv from a single thread.  OpenBLAS must be single-threaded here (the model sets it).
 * The _ref twins are plain loops in double.  No keys. */
#include "attention.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* Below this many multiply-adds the heads run on one thread: waking the others costs more. */
#define PAR_MIN_MACS (1 << 20)

/* Row blocks of the causal score matrix: a block of ATT_BS query rows only needs the key
 * columns up to its last row, so about half of the T x T products are skipped. */
#define ATT_BS 64

void attention_forward(float *out,     /* (B, T, H, hd) */
                       float *att,     /* (B, H, T, T) softmax probabilities, kept for backward */
                       const float *q, /* (B, T, H, hd) rotated */
                       const float *k, /* (B, T, KVH, hd) rotated */
                       const float *v, /* (B, T, KVH, hd) */
                       int B, int T, int H, int KVH, int hd)
{
    int group = H / KVH, ldq = H * hd, ldk = KVH * hd;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) \
    if ((int64_t)B * H * T * T * hd >= PAR_MIN_MACS)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / group;
            const float *Q = q + (int64_t)b * T * ldq + h * hd;
            const float *K = k + (int64_t)b * T * ldk + kh * hd;
            const float *V = v + (int64_t)b * T * ldk + kh * hd;
            float *P = att + ((int64_t)b * H + h) * T * T;
            float *O = out + (int64_t)b * T * ldq + h * hd;
            for (int t0 = 0; t0 < T; t0 += ATT_BS) {
                int m = T - t0 < ATT_BS ? T - t0 : ATT_BS, w = t0 + m;
                /* S = Q Kᵀ · scale for rows [t0, t0 + m), columns [0, w) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, w, hd, scale,
                            Q + (int64_t)t0 * ldq, ldq, K, ldk, 0.0f, P + (int64_t)t0 * T, T);
                for (int t = t0; t < t0 + m; t++) {
                    float *a = P + (int64_t)t * T;
                    float mx = -INFINITY;
                    for (int t2 = 0; t2 <= t; t2++)
                        mx = a[t2] > mx ? a[t2] : mx;
                    float sum = 0.0f;
                    for (int t2 = 0; t2 <= t; t2++) {
                        a[t2] = expf(a[t2] - mx);
                        sum += a[t2];
                    }
                    float inv = 1.0f / sum;
                    for (int t2 = 0; t2 <= t; t2++)
                        a[t2] *= inv;
                    for (int t2 = t + 1; t2 < w; t2++) /* masked: read by the products below */
                        a[t2] = 0.0f;
                }
                /* O = P V */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hd, w, 1.0f,
                            P + (int64_t)t0 * T, T, V, ldk, 0.0f, O + (int64_t)t0 * ldq, ldq);
            }
        }
}

/* dq, dk, dv are written (not accumulated). */
void attention_backward(float *dq,         /* (B, T, H, hd) */
                        float *dk,         /* (B, T, KVH, hd) */
                        float *dv,         /* (B, T, KVH, hd) */
                        float *scratch,    /* (threads, T, T): dL/d scores of one head */
                        const float *dout, /* (B, T, H, hd) */
                        const float *att,  /* (B, H, T, T) from forward */
                        const float *q,    /* (B, T, H, hd) */
                        const float *k,    /* (B, T, KVH, hd) */
                        const float *v,    /* (B, T, KVH, hd) */
                        int B, int T, int H, int KVH, int hd)
{
    int group = H / KVH, ldq = H * hd, ldk = KVH * hd;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) \
    if ((int64_t)B * H * T * T * hd >= PAR_MIN_MACS)
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < KVH; kh++) {
            float *dS = scratch + (int64_t)omp_get_thread_num() * T * T;
            const float *K = k + (int64_t)b * T * ldk + kh * hd;
            const float *V = v + (int64_t)b * T * ldk + kh * hd;
            float *dK = dk + (int64_t)b * T * ldk + kh * hd;
            float *dV = dv + (int64_t)b * T * ldk + kh * hd;
            for (int t = 0; t < T; t++) {
                memset(dK + (int64_t)t * ldk, 0, (size_t)hd * sizeof(float));
                memset(dV + (int64_t)t * ldk, 0, (size_t)hd * sizeof(float));
            }
            for (int h = kh * group; h < (kh + 1) * group; h++) {
                const float *P = att + ((int64_t)b * H + h) * T * T;
                const float *Q = q + (int64_t)b * T * ldq + h * hd;
                const float *dO = dout + (int64_t)b * T * ldq + h * hd;
                float *dQ = dq + (int64_t)b * T * ldq + h * hd;
                for (int t0 = 0; t0 < T; t0 += ATT_BS) {
                    int m = T - t0 < ATT_BS ? T - t0 : ATT_BS, w = t0 + m;
                    /* dP = dO Vᵀ, then the softmax: dS = P·(dP − Σ P·dP) · scale */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, w, hd, 1.0f,
                                dO + (int64_t)t0 * ldq, ldq, V, ldk, 0.0f, dS + (int64_t)t0 * T,
                                T);
                    for (int t = t0; t < t0 + m; t++) {
                        const float *a = P + (int64_t)t * T;
                        float *d = dS + (int64_t)t * T;
                        float s = 0.0f;
                        for (int t2 = 0; t2 <= t; t2++)
                            s += a[t2] * d[t2];
                        for (int t2 = 0; t2 <= t; t2++)
                            d[t2] = a[t2] * (d[t2] - s) * scale;
                        for (int t2 = t + 1; t2 < w; t2++)
                            d[t2] = 0.0f;
                    }
                    /* dQ = dS K */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hd, w, 1.0f,
                                dS + (int64_t)t0 * T, T, K, ldk, 0.0f, dQ + (int64_t)t0 * ldq,
                                ldq);
                }
                /* Column blocks [s0, s0 + m) of keys see the query rows [s0, T):
                 * dK += dSᵀ Q,  dV += Pᵀ dO. */
                for (int s0 = 0; s0 < T; s0 += ATT_BS) {
                    int m = T - s0 < ATT_BS ? T - s0 : ATT_BS;
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, hd, T - s0, 1.0f,
                                dS + (int64_t)s0 * T + s0, T, Q + (int64_t)s0 * ldq, ldq, 1.0f,
                                dK + (int64_t)s0 * ldk, ldk);
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, hd, T - s0, 1.0f,
                                P + (int64_t)s0 * T + s0, T, dO + (int64_t)s0 * ldq, ldq, 1.0f,
                                dV + (int64_t)s0 * ldk, ldk);
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
