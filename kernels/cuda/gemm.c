/* gemm.c: a plan per GEMM shape.
 *
 * cuBLAS picks an algorithm for a shape by heuristics.  At the shapes of a training step they are
 * often not the fastest it has: on an H100, timing cuBLASLt's first eight heuristic results for
 * the 124M step's products found some 4% to 13% faster than cublasGemmEx's choice for the
 * forward ones and the LM head (bench/results/speed-h100-s7).  Mode CUDA_GEMM_TIMED times them
 * on each shape's first call and keeps the fastest; CUDA_GEMM_HEURISTIC keeps cuBLAS's own
 * choice, whose bits do not depend on a timing.  Either way the descriptors are made once per
 * shape rather than per call.
 *
 * A shape is everything an algorithm depends on: transposes, sizes, leading dimensions, types,
 * whether C is D, and the operands' alignments (an algorithm chosen for 256-byte aligned rows may
 * not run on 16-byte aligned ones).  Timing runs the candidates on the call's own operands and
 * then the winner once more for the result, so it needs a call whose output does not feed its
 * own input: beta = 0, or C apart from D.  A shape first met accumulating in place keeps cuBLAS's
 * choice untimed. */
#include "gemm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CANDIDATES 8 /* cuBLASLt heuristic results tried, besides cublasGemmEx */
#define TIMED_RUNS 3 /* after one warm-up run each */

typedef struct plan {
    /* the shape */
    int ta, tb, c_is_d;
    int64_t m, n, k, lda, ldb, ldc, ldd;
    cuda_dtype ab, cd;
    unsigned align; /* log2 of each pointer's alignment up to 256 bytes, 4 bits each */
    /* how it is multiplied */
    int ex; /* cublasGemmEx (C is D) instead of the cuBLASLt algorithm */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc, ld;
    cublasLtMatmulAlgo_t algo;
} plan;

struct cuda_gemm {
    int mode;
    cublasHandle_t cb;
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    plan *p;
    int n, cap;
    cudaEvent_t e0, e1;
    cuda_gemm_stats st;
};

static cudaDataType_t cu_type(cuda_dtype t)
{
    return t == CUDA_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

static unsigned align_log2(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    unsigned l = 0;
    while (l < 8 && !(a & ((uintptr_t)1 << l)))
        l++;
    return l;
}

static unsigned aligns(const cuda_gemm_op *o, int c_is_d)
{
    const void *c = c_is_d ? o->D : o->C;
    return align_log2(o->A) | align_log2(o->B) << 4 | align_log2(c) << 8 | align_log2(o->D) << 12;
}

static int c_is_d(const cuda_gemm_op *o)
{
    return o->beta == 0.0f || o->C == NULL || o->C == o->D;
}

static int same_shape(const plan *p, const cuda_gemm_op *o, int cd_, unsigned al)
{
    return p->ta == o->ta && p->tb == o->tb && p->c_is_d == cd_ && p->m == o->m &&
           p->n == o->n && p->k == o->k && p->lda == o->lda && p->ldb == o->ldb &&
           p->ldd == o->ldd && (cd_ || p->ldc == o->ldc) && p->ab == o->ab && p->cd == o->cd &&
           p->align == al;
}

static void plan_free(plan *p)
{
    if (p->op != NULL)
        cublasLtMatmulDescDestroy(p->op);
    cublasLtMatrixLayout_t l[4] = {p->la, p->lb, p->lc, p->ld};
    for (int i = 0; i < 4; i++)
        if (l[i] != NULL && (i < 3 || l[i] != p->lc))
            cublasLtMatrixLayoutDestroy(l[i]);
}

int cuda_gemm_create(cuda_gemm **out, int mode, cublasHandle_t cb, cublasLtHandle_t lt, void *ws,
                     size_t ws_bytes, primal_err *err)
{
    cuda_gemm *g = calloc(1, sizeof *g);
    if (g == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "cuda gemm: out of memory");
    g->mode = mode;
    g->cb = cb;
    g->lt = lt;
    g->ws = ws;
    g->ws_bytes = ws_bytes;
    if (mode == CUDA_GEMM_TIMED &&
        (cudaEventCreate(&g->e0) != cudaSuccess || cudaEventCreate(&g->e1) != cudaSuccess)) {
        cuda_gemm_free(g);
        return primal_errf(err, PRIMAL_EDEVICE, "cuda gemm: cannot create the timing events");
    }
    *out = g;
    return PRIMAL_OK;
}

void cuda_gemm_free(cuda_gemm *g)
{
    if (g == NULL)
        return;
    for (int i = 0; i < g->n; i++)
        plan_free(&g->p[i]);
    free(g->p);
    if (g->e0 != NULL)
        cudaEventDestroy(g->e0);
    if (g->e1 != NULL)
        cudaEventDestroy(g->e1);
    free(g);
}

void cuda_gemm_stats_get(const cuda_gemm *g, cuda_gemm_stats *st)
{
    *st = g->st;
}

/* cublasGemmEx (algo NULL) or cuBLASLt with algo */
static cublasStatus_t launch(cuda_gemm *g, const plan *p, const cublasLtMatmulAlgo_t *algo,
                             const cuda_gemm_op *o, cudaStream_t s)
{
    const float one = 1.0f;
    if (algo == NULL) {
        cublasStatus_t st = cublasSetStream(g->cb, s);
        if (st != CUBLAS_STATUS_SUCCESS)
            return st;
        return cublasGemmEx(g->cb, o->ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                            o->tb ? CUBLAS_OP_T : CUBLAS_OP_N, (int)o->m, (int)o->n, (int)o->k,
                            &one, o->A, cu_type(o->ab), (int)o->lda, o->B, cu_type(o->ab),
                            (int)o->ldb, &o->beta, o->D, cu_type(o->cd), (int)o->ldd,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }
    const void *c = p->c_is_d ? o->D : o->C;
    return cublasLtMatmul(g->lt, p->op, &one, o->A, p->la, o->B, p->lb, &o->beta, c, p->lc, o->D,
                          p->ld, algo, g->ws, g->ws_bytes, s);
}

/* Microseconds a run of one candidate takes on s, or a negative value if it cannot run. */
static double time_one(cuda_gemm *g, const plan *p, const cublasLtMatmulAlgo_t *algo,
                       const cuda_gemm_op *o, cudaStream_t s)
{
    if (launch(g, p, algo, o, s) != CUBLAS_STATUS_SUCCESS)
        return -1.0;
    if (cudaEventRecord(g->e0, s) != cudaSuccess)
        return -1.0;
    for (int i = 0; i < TIMED_RUNS; i++)
        if (launch(g, p, algo, o, s) != CUBLAS_STATUS_SUCCESS)
            return -1.0;
    float ms = 0;
    if (cudaEventRecord(g->e1, s) != cudaSuccess || cudaEventSynchronize(g->e1) != cudaSuccess ||
        cudaEventElapsedTime(&ms, g->e0, g->e1) != cudaSuccess)
        return -1.0;
    return 1e3 * ms / TIMED_RUNS;
}

/* The cuBLASLt side of a new plan: descriptors, and up to `want` heuristic results (none for 0). */
static cublasStatus_t lt_plan(cuda_gemm *g, plan *p, const cuda_gemm_op *o,
                              cublasLtMatmulHeuristicResult_t *h, int want, int *found)
{
    cublasOperation_t ta = o->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = o->tb ? CUBLAS_OP_T
                                                                         : CUBLAS_OP_N;
    cudaDataType_t abt = cu_type(o->ab), cdt = cu_type(o->cd);
    cublasLtMatmulPreference_t pref = NULL;
    cublasStatus_t st = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatrixLayoutCreate(&p->la, abt, (uint64_t)(o->ta ? o->k : o->m),
                                        (uint64_t)(o->ta ? o->m : o->k), o->lda);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatrixLayoutCreate(&p->lb, abt, (uint64_t)(o->tb ? o->n : o->k),
                                        (uint64_t)(o->tb ? o->k : o->n), o->ldb);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatrixLayoutCreate(&p->ld, cdt, (uint64_t)o->m, (uint64_t)o->n, o->ldd);
    if (st == CUBLAS_STATUS_SUCCESS && !p->c_is_d)
        st = cublasLtMatrixLayoutCreate(&p->lc, cdt, (uint64_t)o->m, (uint64_t)o->n, o->ldc);
    else if (st == CUBLAS_STATUS_SUCCESS)
        p->lc = p->ld;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceCreate(&pref);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &g->ws_bytes, sizeof g->ws_bytes);
    static const cublasLtMatmulPreferenceAttributes_t amin[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; i++) {
        uint32_t bytes = 1u << ((p->align >> (4 * i)) & 0xF);
        st = cublasLtMatmulPreferenceSetAttribute(pref, amin[i], &bytes, sizeof bytes);
    }
    *found = 0;
    if (st == CUBLAS_STATUS_SUCCESS && want > 0)
        st = cublasLtMatmulAlgoGetHeuristic(g->lt, p->op, p->la, p->lb, p->lc, p->ld, pref, want,
                                            h, found);
    if (pref != NULL)
        cublasLtMatmulPreferenceDestroy(pref);
    return st;
}

/* The plan of o's shape, or NULL. */
static plan *find_plan(cuda_gemm *g, const cuda_gemm_op *o, int cd_, unsigned al)
{
    for (int i = 0; i < g->n; i++)
        if (same_shape(&g->p[i], o, cd_, al))
            return &g->p[i];
    return NULL;
}

/* A zeroed plan of o's shape at g->p[g->n], which the caller counts once it is complete. */
static int plan_slot(cuda_gemm *g, const cuda_gemm_op *o, int cd_, unsigned al, plan **out,
                     primal_err *err)
{
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 32;
        plan *np = realloc(g->p, (size_t)cap * sizeof *np);
        if (np == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "cuda gemm: out of memory");
        g->p = np;
        g->cap = cap;
    }
    plan *p = &g->p[g->n];
    *p = (plan){.ta = o->ta, .tb = o->tb, .c_is_d = cd_, .m = o->m, .n = o->n, .k = o->k,
                .lda = o->lda, .ldb = o->ldb, .ldc = cd_ ? o->ldd : o->ldc, .ldd = o->ldd,
                .ab = o->ab, .cd = o->cd, .align = al};
    *out = p;
    return PRIMAL_OK;
}

static int new_plan(cuda_gemm *g, const cuda_gemm_op *o, int cd_, unsigned al, cudaStream_t s,
                    plan **out, primal_err *err)
{
    plan *p;
    int rc = plan_slot(g, o, cd_, al, &p, err);
    if (rc != PRIMAL_OK)
        return rc;
    cublasLtMatmulHeuristicResult_t h[CANDIDATES];
    int found = 0;
    int want = g->mode == CUDA_GEMM_TIMED ? CANDIDATES : 1;
    cublasStatus_t st = lt_plan(g, p, o, h, want, &found);
    if (st == CUBLAS_STATUS_SUCCESS && found < 1 && !cd_)
        st = CUBLAS_STATUS_NOT_SUPPORTED;
    if (st != CUBLAS_STATUS_SUCCESS) {
        plan_free(p);
        return primal_errf(err, PRIMAL_EDEVICE,
                           "cuda gemm: no cuBLASLt algorithm for %lld x %lld x %lld (%s%s): %s",
                           (long long)o->m, (long long)o->n, (long long)o->k, o->ta ? "T" : "N",
                           o->tb ? "T" : "N", cublasGetStatusString(st));
    }
    /* cuBLAS's own choice: cublasGemmEx computes in place only */
    p->ex = cd_;
    if (found > 0)
        p->algo = h[0].algo;
    g->n++;
    g->st.shapes++;
    /* in place and accumulating: its first call cannot be run twice (see the top) */
    int safe = o->beta == 0.0f || o->C != o->D;
    if (g->mode != CUDA_GEMM_TIMED || !safe) {
        *out = p;
        return PRIMAL_OK;
    }
    /* time on a quiet device, so that the gradient stream's kernels do not share it */
    CUDA_TRY(cudaDeviceSynchronize(), err);
    double base = time_one(g, p, p->ex ? NULL : &h[0].algo, o, s), best = base;
    int pick = p->ex ? -1 : 0;
    for (int j = p->ex ? 0 : 1; j < found; j++) {
        double t = time_one(g, p, &h[j].algo, o, s);
        if (t > 0 && (best < 0 || t < best)) {
            best = t;
            pick = j;
        }
    }
    (void)cudaGetLastError(); /* a candidate that failed to launch left nothing behind */
    if (best < 0)
        return primal_errf(err, PRIMAL_EDEVICE, "cuda gemm: no algorithm ran for %lld x %lld x "
                           "%lld", (long long)o->m, (long long)o->n, (long long)o->k);
    if (pick >= 0) {
        p->ex = 0;
        p->algo = h[pick].algo;
    }
    if (base > 0) {
        g->st.timed++;
        g->st.heuristic_us += base;
        g->st.chosen_us += best;
    }
    *out = p;
    return PRIMAL_OK;
}

int cuda_gemm_run(cuda_gemm *g, const cuda_gemm_op *o, cudaStream_t s, primal_err *err)
{
    int cd_ = c_is_d(o);
    unsigned al = aligns(o, cd_);
    plan *p = find_plan(g, o, cd_, al);
    if (p == NULL) {
        int rc = new_plan(g, o, cd_, al, s, &p, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    cublasStatus_t st = launch(g, p, p->ex ? NULL : &p->algo, o, s);
    if (st != CUBLAS_STATUS_SUCCESS)
        return primal_errf(err, PRIMAL_EDEVICE, "cuda gemm: %lld x %lld x %lld (%s%s): %s",
                           (long long)o->m, (long long)o->n, (long long)o->k, o->ta ? "T" : "N",
                           o->tb ? "T" : "N", cublasGetStatusString(st));
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Export and import                                                                          */

#define EXPORT_MAGIC "primgemm"
#define EXPORT_VERSION 1u

typedef struct export_head {
    char magic[8];
    uint32_t version, count;
    uint64_t lt_version;
    char device[256]; /* cudaDeviceProp.name */
} export_head;

typedef struct export_rec {
    int32_t ta, tb, c_is_d, ab, cd, ex;
    uint32_t align, pad;
    int64_t m, n, k, lda, ldb, ldc, ldd;
    cublasLtMatmulAlgo_t algo;
} export_rec;

static void head_fill(export_head *h, const cuda_gemm *g)
{
    memset(h, 0, sizeof *h);
    memcpy(h->magic, EXPORT_MAGIC, sizeof h->magic);
    h->version = EXPORT_VERSION;
    h->count = (uint32_t)g->n;
    h->lt_version = (uint64_t)cublasLtGetVersion();
    int dev = 0;
    struct cudaDeviceProp prop;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
        snprintf(h->device, sizeof h->device, "%s", prop.name);
}

size_t cuda_gemm_export(const cuda_gemm *g, void *buf, size_t cap)
{
    size_t need = sizeof(export_head) + (size_t)g->n * sizeof(export_rec);
    if (buf == NULL || cap < need)
        return need;
    export_head h;
    head_fill(&h, g);
    memcpy(buf, &h, sizeof h);
    for (int i = 0; i < g->n; i++) {
        const plan *p = &g->p[i];
        export_rec r = {p->ta, p->tb, p->c_is_d, (int32_t)p->ab, (int32_t)p->cd, p->ex,
                         p->align, 0, p->m, p->n, p->k, p->lda, p->ldb, p->ldc, p->ldd, p->algo};
        memcpy((char *)buf + sizeof h + (size_t)i * sizeof r, &r, sizeof r);
    }
    return need;
}

int cuda_gemm_import(cuda_gemm *g, const void *buf, size_t n, int *taken, primal_err *err)
{
    *taken = 0;
    export_head h, mine;
    if (n < sizeof h)
        return primal_errf(err, PRIMAL_EIO, "GEMM plans: %zu bytes, shorter than their header",
                           n);
    memcpy(&h, buf, sizeof h);
    if (memcmp(h.magic, EXPORT_MAGIC, sizeof h.magic) != 0 || h.version != EXPORT_VERSION ||
        n != sizeof h + (size_t)h.count * sizeof(export_rec))
        return primal_errf(err, PRIMAL_EIO, "GEMM plans: not an export of version %u (%zu bytes)",
                           EXPORT_VERSION, n);
    head_fill(&mine, g);
    if (h.lt_version != mine.lt_version || strncmp(h.device, mine.device, sizeof h.device) != 0)
        return PRIMAL_OK;
    for (uint32_t i = 0; i < h.count; i++) {
        export_rec r;
        memcpy(&r, (const char *)buf + sizeof h + (size_t)i * sizeof r, sizeof r);
        if ((r.ab != CUDA_F32 && r.ab != CUDA_BF16) || (r.cd != CUDA_F32 && r.cd != CUDA_BF16) ||
            r.m < 1 || r.n < 1 || r.k < 1)
            return primal_errf(err, PRIMAL_EIO, "GEMM plans: record %u is not a GEMM", i);
        cuda_gemm_op o = {.ta = r.ta != 0, .tb = r.tb != 0, .m = r.m, .n = r.n, .k = r.k,
                          .ab = (cuda_dtype)r.ab, .cd = (cuda_dtype)r.cd, .lda = r.lda,
                          .ldb = r.ldb, .ldc = r.ldc, .ldd = r.ldd};
        int cd_ = r.c_is_d != 0;
        if (find_plan(g, &o, cd_, r.align) != NULL)
            continue;
        plan *p;
        int rc = plan_slot(g, &o, cd_, r.align, &p, err);
        if (rc != PRIMAL_OK)
            return rc;
        cublasLtMatmulHeuristicResult_t h1;
        int found = 0;
        cublasStatus_t st = lt_plan(g, p, &o, &h1, 0, &found); /* descriptors only */
        p->ex = r.ex != 0 && cd_;
        p->algo = r.algo;
        if (st == CUBLAS_STATUS_SUCCESS && !p->ex)
            st = cublasLtMatmulAlgoCheck(g->lt, p->op, p->la, p->lb, p->lc, p->ld, &p->algo, &h1);
        if (st != CUBLAS_STATUS_SUCCESS) {
            plan_free(p);
            continue;
        }
        g->n++;
        g->st.shapes++;
        (*taken)++;
    }
    return PRIMAL_OK;
}
