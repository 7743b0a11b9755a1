/* model_cuda.c: the decoder-only Llama/Qwen2 model on one CUDA GPU (core/model_cuda.h): the
 * CPU model's math (core/model.c) with cuBLAS GEMMs and the kernels of kernels/cuda/.  SPEC.md,
 * "Models", "The forward and backward pass of an indexed matrix".
 *
 * Precision: fp32 runs every GEMM in float32 with float32 compute (no TF32), so it matches the
 * CPU to rounding; bf16 materialises W in bfloat16 and accumulates in float32
 * (CUBLAS_COMPUTE_32F).  What only GEMMs and the elementwise kernels between them read (normed
 * inputs, q/k/v, gate/up and their product, the attention output and the gradients of all of
 * these) is stored in the compute dtype: the GEMMs write it so, and the kernels that produce
 * GEMM operands write them so.  The residual stream, its gradient, norm statistics, logits and
 * the loss stay float32.  The two GEMMs that end in the residual stream (o_proj, down) add it in
 * their epilogue (cuBLASLt, C != D) instead of in a separate pass.
 *
 * Memory: one arena of forward activations (grown with B and T), one backward workspace (grown
 * with B and T, allocated at the first backward), one attention scratch (batch rows in chunks
 * under attn_bytes; the fused bf16 kernels need no (T, T) scratch), and fixed buffers sized at
 * creation: the W workspace and the G workspace, each (min(rows, chunk_rows) x cols) of the
 * largest matrix.  The logits never exist whole.  Forward runs the LM head and the
 * cross-entropy over vocabulary slabs under logits_bytes (online logsumexp), and backward
 * computes each slab again; or, in forward_train where head_ahead allows, over token rows across
 * the whole vocabulary, forming dlogits, dL/dlnf and the head's whole G (kept until backward)
 * at once, so that the logits are computed once.  q|k|v (and gate|up) are one stacked GEMM
 * where the stacked W fits the weight workspace: in forward, for the input gradient, and (q|k|v)
 * for the weight gradient, whose members' rows then go to the hook one after the other.  Every
 * GEMM goes through a plan of kernels/cuda/gemm.c (primal_cuda_opts.gemm_timed).
 * With RECOMPUTE_BLOCK, the arena keeps the residual stream x[0..layers] and one block's
 * activations, which backward rebuilds block by block from x[l] (one extra block forward each).
 * With RECOMPUTE_MLP, every block keeps all but gate|up, the largest item, which backward makes
 * again with one GEMM from ln2 (itself made again from h) into a shared buffer.  In every mode
 * the SwiGLU product and the norms' outputs are made again in backward and dgate|dup overwrite
 * gate|up, so none of them takes memory of its own per block.  Backward mirrors model.c stage
 * for stage, including which stages run for a partly frozen model, the order of hook calls (LM
 * head, blocks from the top, embedding last) and the tied embedding's single G (head +
 * lookups).  Reductions are deterministic; the embedding's scatter uses
 * positions sorted on the host.  No keys: primal_cuda_opts carries the options (precision,
 * device, chunk_rows, the recompute modes, head_ahead, gemm_timed, ...). */
#include "model_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "../kernels/cpu/rope.h"
#include "../kernels/cuda/adamw.h"
#include "../kernels/cuda/attention.h"
#include "../kernels/cuda/crossentropy.h"
#include "../kernels/cuda/dequant.h"
#include "../kernels/cuda/elementwise.h"
#include "../kernels/cuda/embedding.h"
#include "../kernels/cuda/gemm.h"
#include "../kernels/cuda/rmsnorm.h"
#include "../kernels/cuda/rope.h"
#include "../kernels/cuda/swiglu.h"

#define DEFAULT_CHUNK 8192
#define DEFAULT_ATTN_BYTES ((size_t)2 << 30)
#define DEFAULT_LOGITS_BYTES ((size_t)512 << 20)
#define LT_WORKSPACE ((size_t)32 << 20) /* cuBLASLt's own scratch; Hopper kernels want some */

#define TRY(call)                                                                              \
    do {                                                                                       \
        int try_rc_ = (call);                                                                  \
        if (try_rc_ != PRIMAL_OK)                                                              \
            return try_rc_;                                                                    \
    } while (0)

/* A block's parameters, as model.c numbers them. */
enum { L_Q, L_BQ, L_K, L_BK, L_V, L_BV, L_O, L_GATE, L_UP, L_DOWN, L_LN1, L_LN2, L_N };
static const char *const block_names[L_N] = {
    [L_Q] = "self_attn.q_proj.weight",  [L_BQ] = "self_attn.q_proj.bias",
    [L_K] = "self_attn.k_proj.weight",  [L_BK] = "self_attn.k_proj.bias",
    [L_V] = "self_attn.v_proj.weight",  [L_BV] = "self_attn.v_proj.bias",
    [L_O] = "self_attn.o_proj.weight",  [L_GATE] = "mlp.gate_proj.weight",
    [L_UP] = "mlp.up_proj.weight",      [L_DOWN] = "mlp.down_proj.weight",
    [L_LN1] = "input_layernorm.weight", [L_LN2] = "post_attention_layernorm.weight",
};

enum { MEM_WEIGHTS, MEM_GRADS, MEM_ACTS, MEM_WORK, MEM_OTHER, MEM_KINDS };

/* What backward needs of one block.  What only GEMMs and the elementwise kernels between them
 * read (atty, gate|up) is kept in the compute dtype; the residual stream (x, h) stays float32,
 * as on the CPU.  Neither the SwiGLU product nor the norms' outputs are kept: backward makes
 * them again in passes that read their inputs anyway (cuda_swiglu_backward,
 * cuda_rmsnorm_backward_xn), bit for bit.  Under norm_bf16 the norms read their inputs rounded
 * to bfloat16, forward and backward, and the block keeps those roundings (xk1, xk2) in place
 * of x and h: the residual stream itself stays float32 but is not kept. */
typedef struct block_acts {
    float *rstd1;             /* (N) */
    void *qh, *kh, *vh;       /* (B, H, T, hd), (B, KVH, T, hd) x2, dt: rotated, head-major */
    float *lse;               /* (B, H, T) attention logsumexp */
    void *atty;               /* (N, qdim) dt: attention output before o_proj */
    float *h;                 /* (N, C) residual after attention; NULL under rec_residual and
                               * norm_bf16 */
    float *rstd2;             /* (N) */
    void *xk1, *xk2;          /* (N, C) bf16: x and h rounded, the norms' inputs (norm_bf16) */
    void *gu;                 /* (N, 2F) dt: gate | up side by side; backward overwrites it with
                               * dgate | dup.  NULL under PRIMAL_CUDA_RECOMPUTE_MLP */
} block_acts;

struct primal_cuda_model {
    primal_model *cpu;
    primal_model_config c;
    int hd, qdim, kvdim, qkvdim, np;
    /* backward multiplies q|k|v (gate|up) as one stacked matrix: the members' W rows fit the
     * weight workspace together (see stack_backward_inp) */
    int stack_qkv, stack_gu;
    primal_cuda_param *p;
    int (*lp)[L_N];
    int embed, fnorm, head;
    cuda_dtype dt;
    int64_t chunk;
    size_t attn_cap, logits_cap;
    int attn_fused;
    int recompute; /* PRIMAL_CUDA_KEEP_ALL, _RECOMPUTE_BLOCK (one block's activations are kept
                    * and rebuilt from x[l] in backward) or _RECOMPUTE_MLP */
    int rec_blocks; /* _RECOMPUTE_MLP: blocks [0, rec_blocks) make gate|up again */
    int rec_residual; /* the blocks' h is made again in backward (block_acts.h NULL) */
    int norm_bf16;    /* primal_cuda_opts.norm_bf16: x[l] two buffers in turn, the blocks keep
                       * xk1 and xk2 */
    int acts_layer; /* the block whose activations the shared set holds (recompute) */
    int64_t nv;     /* vocabulary slab of the logits */
    int head_ahead; /* primal_cuda_opts.head_ahead */
    cuda_dtype logit_train, logit_t; /* the logits' type in forward_train, and in the last
                                      * forward */
    int device;
    cudaStream_t stream;
    /* backward's consumers of G (scale gradient, hook) run on gstream: stream itself with
     * grads_inline, else a second stream of high priority, so that their small kernels take
     * SMs as soon as a GEMM's blocks leave them.  g_ready: G written (on stream); g_free[s]:
     * slot s read (on gstream); g_done: the join at the end of backward. */
    cudaStream_t gstream;
    cudaEvent_t g_ready, g_done, g_free[2];
    cublasHandle_t cb;
    cublasLtHandle_t lt;
    void *lt_ws;
    cuda_gemm *gemm; /* a plan per GEMM shape (primal_cuda_opts.gemm_timed) */
    size_t mem[MEM_KINDS], peak;
    size_t dev_peak; /* the largest whole-device use sampled (cudaMemGetInfo's total - free) */

    /* grids: one device copy per distinct host array */
    int ngrids;
    const float **grid_host;
    float **grid_dev;

    /* fixed workspaces */
    void *wbuf;      /* dequantised W rows, dt */
    float *G;        /* weight-gradient rows */
    float *G2;       /* the second slot, for the blocks' matrices; NULL with grads_inline */
    size_t wbuf_bytes, G_bytes, G2_bytes;
    int g_last;      /* the slot the last weight gradient went to */
    double *sq_part, *sq_acc; /* (CUDA_SUMSQ_BLOCKS), (1) */
    /* max |G| of each tile handed to the hook, from the scale gradient's pass: two float-bit
     * slots taken in turn (cuda_scale_grad), amax[amax_i] the next; tile_amax: the current
     * tile's, NULL outside a hook call or where the pass did not find it */
    unsigned int *amax;
    int amax_i;
    const float *tile_amax;
    cuda_sumsq_item *sq_list; /* (2 np) the float gradients' list, allocated on first use */
    float *loss_dev;          /* (1) */
    cuda_adamw_tensor *adamw_dev;
    int adamw_cap;

    /* forward arena */
    int B, T, have_fwd;
    int64_t count;
    void *arena;
    size_t arena_bytes;
    int arena_B, arena_T;
    float **x;       /* (layers + 1) residual stream (N, C) */
    block_acts *blk; /* (layers); all the same memory under recompute */
    void *q, *k, *v;           /* q | k | v (N, qkvdim), dt: projections before bias and rope */
    void *ln;                  /* (N, C) dt: the block's norm output at hand (ln1 or ln2) */
    void *act;                 /* (N, F) dt: the SwiGLU product in forward, dL/d(act) and then
                                * the product again in backward */
    void *gus;                 /* (N, 2F) dt: gate | up of the block at hand (RECOMPUTE_MLP) */
    float *hs;                 /* (N, C): h of the block at hand (rec_residual) */
    void *lnf;                 /* (N, C) dt */
    float *rstdf;              /* (N) */
    float *logits;             /* (N, nv) one vocabulary slab; fp32 backward: its dlogits.
                                * Shares memory with ln, act, gus, q, k and v */
    float *lse_ce, *losses, *tl; /* (N) */
    int32_t *tok_in, *tok_tgt; /* (N) */
    uint8_t *mask;             /* (N) */
    int32_t *emb_start, *emb_order; /* (V + 1), (N) positions sorted by token */
    float *cosv, *sinv;        /* (T, hd/2) */

    /* the LM head's backward run by forward_train: its G and W whole, until backward */
    float *G_head;              /* (V, C) */
    void *W_head;               /* (V, C) dt */
    size_t G_head_bytes, W_head_bytes;
    void *dlogits_x;   /* bf16 dlogits for a backward after an evaluation forward (float32
                        * logits) in a model whose training logits are bf16: made then only */
    size_t dlogits_x_bytes;
    int head_ready;             /* dln holds dL/dlnf and G_head the head's G */
    float head_scale;           /* the loss_scale they were formed with */

    /* attention scratch */
    void *attn;
    size_t attn_bytes;
    cuda_attn_scratch as;

    /* backward workspace */
    void *ws;
    size_t ws_bytes;
    float *dres, *dln;          /* (N, C); dln holds dL/d(a block's norm output) in the compute
                                 * dtype: a GEMM's output that only the norm's backward reads,
                                 * as autocast keeps it (the head's dL/dlnf, summed over vocab
                                 * slabs, and the recomputed block outputs stay float32) */
    void *datty;                /* (N, qdim) dt */
    float *dqkv;                /* (N, qkvdim) dq | dk | dv: fp32 runs, or bias gradients */
    void *dlogits_b;            /* (N, nv) bf16 in bf16 mode with float32 training logits; with
                                 * bf16 ones dL/dlogits goes over the logits (dlogits_of) */
    void *dqkvb;                /* (N, qkvdim) the same in bf16 (bf16 mode) */
    void *dyb;                  /* (N, C) bf16 copy of dres in bf16 mode (dres_copy) */
    float *colsum;              /* cuda_colsum_scratch(N, max(C, qdim, kvdim)) */
    float *ce_scratch;          /* cuda_ce_rows_scratch(N) */

    /* host staging */
    int32_t *h_tok_in, *h_tok_tgt, *h_start, *h_order;
    uint8_t *h_mask;
    size_t h_cap;
};

/* ------------------------------------------------------------------------------------------ */
/* Device memory with accounting                                                              */

/* Samples the whole device's use (cudaMemGetInfo's total - free: every process, the context and
 * the libraries included) into the device peak. */
static void dev_sample(primal_cuda_model *cm)
{
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    if (tot > fr && tot - fr > cm->dev_peak)
        cm->dev_peak = tot - fr;
}

static int dev_alloc(primal_cuda_model *cm, void **p, size_t bytes, int kind, const char *what,
                     primal_err *err)
{
    *p = NULL;
    if (bytes == 0)
        return PRIMAL_OK;
    cudaError_t rc = cudaMalloc(p, bytes);
    if (rc != cudaSuccess) {
        *p = NULL;
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return primal_errf(err, rc == cudaErrorMemoryAllocation ? PRIMAL_ENOMEM : PRIMAL_EDEVICE,
                           "cuda model: %s: cudaMalloc of %zu bytes: %s (device: %zu of %zu "
                           "bytes free)",
                           what, bytes, cudaGetErrorString(rc), fr, tot);
    }
    cm->mem[kind] += bytes;
    size_t sum = 0;
    for (int k = 0; k < MEM_KINDS; k++)
        sum += cm->mem[k];
    if (sum > cm->peak)
        cm->peak = sum;
    dev_sample(cm); /* the device peak: sampled at each of the model's own allocations too */
    return PRIMAL_OK;
}

static void dev_free(primal_cuda_model *cm, void *p, size_t bytes, int kind)
{
    if (p == NULL)
        return;
    cudaFree(p);
    cm->mem[kind] -= bytes < cm->mem[kind] ? bytes : cm->mem[kind];
}

/* Carve n bytes, 256-aligned, from base (NULL: only count). */
static void *carve(char *base, size_t *off, size_t n)
{
    void *p = base != NULL ? base + *off : NULL;
    *off += (n + 255) / 256 * 256;
    return p;
}

/* ------------------------------------------------------------------------------------------ */
/* Parameters                                                                                 */

int primal_cuda_device_count(char *name, size_t n)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();
        count = 0;
    }
    if (name != NULL && n > 0) {
        name[0] = '\0';
        struct cudaDeviceProp prop;
        if (count > 0 && cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
            snprintf(name, n, "%s", prop.name);
    }
    return count;
}

static size_t index_bytes(const primal_qtensor *q)
{
    return (size_t)q->rows * (size_t)q->row_stride;
}

static int grid_upload(primal_cuda_model *cm, const float *host, int size, float **out,
                       primal_err *err)
{
    for (int i = 0; i < cm->ngrids; i++)
        if (cm->grid_host[i] == host) {
            *out = cm->grid_dev[i];
            return PRIMAL_OK;
        }
    void *d;
    TRY(dev_alloc(cm, &d, (size_t)size * sizeof(float), MEM_WEIGHTS, "grid", err));
    cm->grid_host[cm->ngrids] = host;
    cm->grid_dev[cm->ngrids] = d;
    cm->ngrids++;
    CUDA_TRY(cudaMemcpy(d, host, (size_t)size * sizeof(float), cudaMemcpyHostToDevice), err);
    *out = d;
    return PRIMAL_OK;
}

static int grad_alloc(primal_cuda_model *cm, primal_cuda_param *p, primal_err *err)
{
    if (p->is_matrix) {
        if (p->q.bits == 32 || p->dscale != NULL)
            return PRIMAL_OK;
        TRY(dev_alloc(cm, (void **)&p->dscale, (size_t)p->q.rows * sizeof(float), MEM_GRADS,
                      p->q.name, err));
        CUDA_TRY(cudaMemsetAsync(p->dscale, 0, (size_t)p->q.rows * sizeof(float), cm->stream),
                 err);
    } else if (p->dvec == NULL) {
        TRY(dev_alloc(cm, (void **)&p->dvec, (size_t)p->n * sizeof(float), MEM_GRADS,
                      p->host->name, err));
        CUDA_TRY(cudaMemsetAsync(p->dvec, 0, (size_t)p->n * sizeof(float), cm->stream), err);
    }
    return PRIMAL_OK;
}

static void grad_free(primal_cuda_model *cm, primal_cuda_param *p)
{
    if (p->dscale != NULL)
        dev_free(cm, p->dscale, (size_t)p->q.rows * sizeof(float), MEM_GRADS);
    if (p->dvec != NULL)
        dev_free(cm, p->dvec, (size_t)p->n * sizeof(float), MEM_GRADS);
    p->dscale = NULL;
    p->dvec = NULL;
}

static int param_alloc(primal_cuda_model *cm, int i, primal_err *err)
{
    primal_param *hp = primal_model_param(cm->cpu, i);
    primal_cuda_param *p = &cm->p[i];
    p->host = hp;
    p->index = i;
    p->is_matrix = hp->is_matrix;
    p->layer = hp->layer;
    p->n = hp->n;
    p->trainable = hp->trainable;
    if (!hp->is_matrix) {
        TRY(dev_alloc(cm, (void **)&p->vec, (size_t)p->n * sizeof(float), MEM_WEIGHTS, hp->name,
                      err));
    } else {
        p->q = hp->q; /* rows, cols, bits, row_stride, grid_size, name, id */
        p->q.index = NULL;
        p->q.scale = NULL;
        p->q.dense = NULL;
        p->q.grid = NULL;
        if (hp->q.bits == 32) {
            TRY(dev_alloc(cm, (void **)&p->q.dense, (size_t)p->n * sizeof(float), MEM_WEIGHTS,
                          hp->name, err));
        } else {
            TRY(dev_alloc(cm, &p->q.index, index_bytes(&hp->q), MEM_WEIGHTS, hp->name, err));
            TRY(dev_alloc(cm, (void **)&p->q.scale, (size_t)hp->q.rows * sizeof(float),
                          MEM_WEIGHTS, hp->name, err));
            float *g = NULL;
            TRY(grid_upload(cm, hp->q.grid, hp->q.grid_size, &g, err));
            p->q.grid = g;
        }
    }
    if (p->trainable)
        TRY(grad_alloc(cm, p, err));
    return PRIMAL_OK;
}

int primal_cuda_model_upload(primal_cuda_model *cm, const primal_model *cpu_c, primal_err *err)
{
    primal_model *cpu = (primal_model *)cpu_c; /* read only; the accessors are not const */
    if (primal_model_nparams(cpu) != cm->np)
        return primal_errf(err, PRIMAL_ERROR, "primal_cuda_model_upload: %d parameters, the "
                           "GPU model has %d", primal_model_nparams(cpu), cm->np);
    for (int i = 0; i < cm->np; i++) {
        const primal_param *hp = primal_model_param(cpu, i);
        primal_cuda_param *p = &cm->p[i];
        if (hp->n != p->n || hp->is_matrix != p->is_matrix ||
            (hp->is_matrix && hp->q.bits != p->q.bits))
            return primal_errf(err, PRIMAL_ERROR,
                               "primal_cuda_model_upload: %s: shape or storage differs from "
                               "the GPU model's", hp->name);
        if (!hp->is_matrix) {
            CUDA_TRY(cudaMemcpy(p->vec, hp->vec, (size_t)p->n * sizeof(float),
                                cudaMemcpyHostToDevice), err);
        } else if (hp->q.bits == 32) {
            CUDA_TRY(cudaMemcpy(p->q.dense, hp->q.dense, (size_t)p->n * sizeof(float),
                                cudaMemcpyHostToDevice), err);
        } else {
            CUDA_TRY(cudaMemcpy(p->q.index, hp->q.index, index_bytes(&hp->q),
                                cudaMemcpyHostToDevice), err);
            CUDA_TRY(cudaMemcpy(p->q.scale, hp->q.scale, (size_t)hp->q.rows * sizeof(float),
                                cudaMemcpyHostToDevice), err);
        }
    }
    return PRIMAL_OK;
}

int primal_cuda_model_download(primal_cuda_model *cm, primal_model *cpu, primal_err *err)
{
    if (primal_model_nparams(cpu) != cm->np)
        return primal_errf(err, PRIMAL_ERROR, "primal_cuda_model_download: %d parameters, the "
                           "GPU model has %d", primal_model_nparams(cpu), cm->np);
    CUDA_TRY(cudaStreamSynchronize(cm->stream), err);
    for (int i = 0; i < cm->np; i++) {
        primal_param *hp = primal_model_param(cpu, i);
        primal_cuda_param *p = &cm->p[i];
        if (hp->n != p->n || hp->is_matrix != p->is_matrix ||
            (hp->is_matrix && hp->q.bits != p->q.bits))
            return primal_errf(err, PRIMAL_ERROR,
                               "primal_cuda_model_download: %s: shape or storage differs from "
                               "the GPU model's", hp->name);
        if (!hp->is_matrix) {
            CUDA_TRY(cudaMemcpy(hp->vec, p->vec, (size_t)p->n * sizeof(float),
                                cudaMemcpyDeviceToHost), err);
        } else if (hp->q.bits == 32) {
            CUDA_TRY(cudaMemcpy(hp->q.dense, p->q.dense, (size_t)p->n * sizeof(float),
                                cudaMemcpyDeviceToHost), err);
        } else {
            CUDA_TRY(cudaMemcpy(hp->q.index, p->q.index, index_bytes(&hp->q),
                                cudaMemcpyDeviceToHost), err);
            CUDA_TRY(cudaMemcpy(hp->q.scale, p->q.scale, (size_t)hp->q.rows * sizeof(float),
                                cudaMemcpyDeviceToHost), err);
        }
    }
    return PRIMAL_OK;
}

static int64_t chunk_of(const primal_cuda_model *cm, int64_t rows)
{
    return rows > cm->chunk ? cm->chunk : rows;
}

int primal_cuda_model_create(primal_model *cpu, const primal_cuda_opts *o,
                             primal_cuda_model **out, primal_err *err)
{
    *out = NULL;
    if (o->precision != PRIMAL_CUDA_FP32 && o->precision != PRIMAL_CUDA_BF16)
        return primal_errf(err, PRIMAL_ECONFIG, "cuda model: precision %d is neither fp32 (0) "
                           "nor bf16 (1)", o->precision);
    int ndev = primal_cuda_device_count(NULL, 0);
    if (o->device < 0 || o->device >= ndev)
        return primal_errf(err, PRIMAL_EDEVICE, "cuda model: device %d, but %d CUDA device%s "
                           "present", o->device, ndev, ndev == 1 ? " is" : "s are");
    CUDA_TRY(cudaSetDevice(o->device), err);
    primal_cuda_model *cm = calloc(1, sizeof *cm);
    if (cm == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "cuda model: out of memory");
    cm->cpu = cpu;
    cm->c = *primal_model_cfg(cpu);
    cm->device = o->device;
    cm->dt = o->precision == PRIMAL_CUDA_BF16 ? CUDA_BF16 : CUDA_F32;
    cm->chunk = o->chunk_rows > 0 ? o->chunk_rows : DEFAULT_CHUNK;
    cm->attn_cap = o->attn_bytes > 0 ? o->attn_bytes : DEFAULT_ATTN_BYTES;
    cm->attn_fused = !o->attn_unfused;
    cm->logits_cap = o->logits_bytes > 0 ? o->logits_bytes : DEFAULT_LOGITS_BYTES;
    cm->recompute = o->recompute;
    if (o->recompute < PRIMAL_CUDA_KEEP_ALL || o->recompute > PRIMAL_CUDA_RECOMPUTE_MLP) {
        free(cm);
        return primal_errf(err, PRIMAL_ECONFIG, "cuda model: recompute %d is none of 0 (keep "
                           "all), 1 (blocks) and 2 (MLP)", o->recompute);
    }
    const primal_model_config *c = &cm->c;
    if (o->recompute_blocks < 0 || o->recompute_blocks > c->layers ||
        (o->recompute_blocks > 0 && o->recompute != PRIMAL_CUDA_RECOMPUTE_MLP)) {
        int rb = o->recompute_blocks, rec = o->recompute, layers = c->layers;
        free(cm);
        return primal_errf(err, PRIMAL_ECONFIG, "cuda model: recompute_blocks %d: a count of "
                           "blocks, 0 to the model's %d, and only with recompute 2 (MLP), not "
                           "%d", rb, layers, rec);
    }
    cm->rec_blocks = cm->recompute != PRIMAL_CUDA_RECOMPUTE_MLP ? 0
                     : o->recompute_blocks > 0                 ? o->recompute_blocks
                                                               : c->layers;
    if (o->recompute_residual && o->recompute == PRIMAL_CUDA_RECOMPUTE_BLOCK) {
        free(cm);
        return primal_errf(err, PRIMAL_ECONFIG, "cuda model: recompute_residual with recompute 1 "
                           "(blocks): whole blocks are made again anyway");
    }
    cm->rec_residual = o->recompute_residual != 0;
    const char *nb_bad = !o->norm_bf16                               ? NULL
                         : o->precision != PRIMAL_CUDA_BF16            ? "float32 precision"
                         : o->recompute == PRIMAL_CUDA_RECOMPUTE_BLOCK ? "recompute 1 (blocks)"
                         : o->recompute_residual                       ? "recompute_residual"
                                                                       : NULL;
    if (nb_bad != NULL) {
        free(cm);
        return primal_errf(err, PRIMAL_ECONFIG, "cuda model: norm inputs in bfloat16 need bf16 "
                           "precision, and neither recompute 1 (blocks) nor recompute_residual, "
                           "which make the blocks again from the float32 residual stream this "
                           "mode does not keep; got %s", nb_bad);
    }
    cm->norm_bf16 = o->norm_bf16 != 0;
    cm->head_ahead = o->head_ahead;
    if (o->logits_bf16 && o->precision != PRIMAL_CUDA_BF16) {
        free(cm);
        return primal_errf(err, PRIMAL_ECONFIG, "cuda model: bfloat16 logits need bf16 "
                           "precision (float32 runs are the parity tests' mode)");
    }
    cm->logit_train = o->logits_bf16 ? CUDA_BF16 : CUDA_F32;
    cm->logit_t = CUDA_F32;
    cm->acts_layer = -1;
    cm->hd = c->dim / c->heads;
    cm->qdim = c->dim;
    cm->kvdim = c->kv_heads * cm->hd;
    cm->qkvdim = cm->qdim + 2 * cm->kvdim;
    cm->np = primal_model_nparams(cpu);
    cm->p = calloc((size_t)cm->np, sizeof *cm->p);
    cm->lp = calloc((size_t)c->layers, sizeof *cm->lp);
    cm->grid_host = calloc((size_t)cm->np, sizeof *cm->grid_host);
    cm->grid_dev = calloc((size_t)cm->np, sizeof *cm->grid_dev);
    cm->x = calloc((size_t)c->layers + 1, sizeof *cm->x);
    cm->blk = calloc((size_t)c->layers, sizeof *cm->blk);
    int rc = PRIMAL_OK;
    if (!cm->p || !cm->lp || !cm->grid_host || !cm->grid_dev || !cm->x || !cm->blk)
        rc = primal_errf(err, PRIMAL_ENOMEM, "cuda model: out of memory");
    if (rc == PRIMAL_OK && cudaStreamCreateWithFlags(&cm->stream, cudaStreamNonBlocking) !=
                               cudaSuccess)
        rc = primal_errf(err, PRIMAL_EDEVICE, "cuda model: cannot create a stream");
    cm->gstream = cm->stream;
    if (rc == PRIMAL_OK && !o->grads_inline) {
        int least, greatest;
        cudaStream_t gs = NULL;
        if (cudaDeviceGetStreamPriorityRange(&least, &greatest) != cudaSuccess ||
            cudaStreamCreateWithPriority(&gs, cudaStreamNonBlocking, greatest) != cudaSuccess)
            rc = primal_errf(err, PRIMAL_EDEVICE, "cuda model: cannot create the gradient "
                             "stream");
        else
            cm->gstream = gs;
        cudaEvent_t *ev[4] = {&cm->g_ready, &cm->g_done, &cm->g_free[0], &cm->g_free[1]};
        for (int i = 0; i < 4 && rc == PRIMAL_OK; i++)
            if (cudaEventCreateWithFlags(ev[i], cudaEventDisableTiming) != cudaSuccess)
                rc = primal_errf(err, PRIMAL_EDEVICE, "cuda model: cannot create an event");
    }
    if (rc == PRIMAL_OK) {
        cublasStatus_t st = cublasCreate(&cm->cb);
        if (st != CUBLAS_STATUS_SUCCESS) {
            cm->cb = NULL;
            rc = primal_errf(err, PRIMAL_EDEVICE, "cuda model: cublasCreate: %s",
                             cublasGetStatusString(st));
        } else {
            /* fp32 parity needs true float32 products: no TF32 */
            cublasSetMathMode(cm->cb, CUBLAS_DEFAULT_MATH);
            cublasSetStream(cm->cb, cm->stream);
        }
    }
    if (rc == PRIMAL_OK) {
        cublasStatus_t st = cublasLtCreate(&cm->lt);
        if (st != CUBLAS_STATUS_SUCCESS) {
            cm->lt = NULL;
            rc = primal_errf(err, PRIMAL_EDEVICE, "cuda model: cublasLtCreate: %s",
                             cublasGetStatusString(st));
        }
    }
    if (rc == PRIMAL_OK)
        rc = dev_alloc(cm, &cm->lt_ws, LT_WORKSPACE, MEM_WORK, "cuBLASLt workspace", err);
    if (rc == PRIMAL_OK)
        rc = cuda_gemm_create(&cm->gemm, o->gemm_timed ? CUDA_GEMM_TIMED : CUDA_GEMM_HEURISTIC,
                              cm->cb, cm->lt, cm->lt_ws, LT_WORKSPACE, err);
    /* the parameter numbers model.c gives each block member, found by name */
    char name[128];
    for (int l = 0; l < c->layers && rc == PRIMAL_OK; l++)
        for (int j = 0; j < L_N; j++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, block_names[j]);
            primal_param *hp = primal_model_find(cpu, name);
            cm->lp[l][j] = hp != NULL ? hp->q.id : -1;
        }
    if (rc == PRIMAL_OK) {
        primal_param *e = primal_model_find(cpu, "model.embed_tokens.weight");
        primal_param *f = primal_model_find(cpu, "model.norm.weight");
        primal_param *h = primal_model_find(cpu, "lm_head.weight");
        if (e == NULL || f == NULL || (!c->tied && h == NULL))
            rc = primal_errf(err, PRIMAL_ERROR, "cuda model: the CPU model lacks the embedding,"
                             " final norm or LM head");
        else {
            cm->embed = e->q.id;
            cm->fnorm = f->q.id;
            cm->head = c->tied ? cm->embed : h->q.id;
        }
    }
    for (int i = 0; i < cm->np && rc == PRIMAL_OK; i++)
        rc = param_alloc(cm, i, err);
    if (rc == PRIMAL_OK)
        rc = primal_cuda_model_upload(cm, cpu, err);
    /* fixed workspaces: W rows and G rows of the largest (chunk of a) matrix; G2 takes those
     * of the largest block matrix, so that one block matrix's G is written while the gradient
     * stream reads the last one's (the embedding's and head's tiles are few and use G alone) */
    size_t wmax = 0, bmax = 0;
    for (int i = 0; i < cm->np && rc == PRIMAL_OK; i++) {
        primal_cuda_param *p = &cm->p[i];
        if (p->is_matrix) {
            size_t e = (size_t)chunk_of(cm, p->q.rows) * (size_t)p->q.cols;
            wmax = e > wmax ? e : wmax;
            if (p->layer >= 0)
                bmax = e > bmax ? e : bmax;
        }
    }
    /* stacks only where they take no more workspace than a single matrix already does */
    cm->stack_qkv = (size_t)cm->qkvdim * (size_t)c->dim <= wmax && cm->qkvdim <= cm->chunk;
    if (cm->stack_qkv && (size_t)cm->qkvdim * (size_t)c->dim > bmax)
        bmax = (size_t)cm->qkvdim * (size_t)c->dim; /* the stacked q|k|v G, in G2 too */
    cm->stack_gu = (size_t)2 * (size_t)c->ffn * (size_t)c->dim <= wmax &&
                   2 * (int64_t)c->ffn <= cm->chunk;
    cm->wbuf_bytes = wmax * cuda_dtype_size(cm->dt);
    cm->G_bytes = wmax * sizeof(float);
    if (rc == PRIMAL_OK)
        rc = dev_alloc(cm, &cm->wbuf, cm->wbuf_bytes, MEM_WORK, "weight workspace", err);
    if (rc == PRIMAL_OK)
        rc = dev_alloc(cm, (void **)&cm->G, cm->G_bytes, MEM_WORK, "gradient workspace", err);
    cm->G2_bytes = cm->gstream != cm->stream ? bmax * sizeof(float) : 0;
    if (rc == PRIMAL_OK && cm->G2_bytes > 0)
        rc = dev_alloc(cm, (void **)&cm->G2, cm->G2_bytes, MEM_WORK, "second gradient workspace",
                       err);
    if (rc == PRIMAL_OK)
        rc = dev_alloc(cm, (void **)&cm->sq_part, (CUDA_SUMSQ_BLOCKS + 1) * sizeof(double),
                       MEM_WORK, "sum of squares", err);
    if (rc == PRIMAL_OK) {
        cm->sq_acc = cm->sq_part + CUDA_SUMSQ_BLOCKS;
        rc = dev_alloc(cm, (void **)&cm->loss_dev, sizeof(float), MEM_WORK, "loss", err);
    }
    if (rc == PRIMAL_OK)
        rc = dev_alloc(cm, (void **)&cm->amax, 2 * sizeof(unsigned int), MEM_WORK,
                       "max |G| slots", err);
    size_t sq_bytes = (CUDA_SUMSQ_BLOCKS + 1) * sizeof(double);
    if (rc == PRIMAL_OK && (cudaMemsetAsync(cm->sq_part, 0, sq_bytes, cm->stream) != cudaSuccess ||
                            cudaMemsetAsync(cm->amax, 0, 2 * sizeof(unsigned int),
                                            cm->stream) != cudaSuccess))
        rc = primal_errf(err, PRIMAL_EDEVICE, "cuda model: cudaMemsetAsync failed");
    if (rc == PRIMAL_OK && cudaStreamSynchronize(cm->stream) != cudaSuccess)
        rc = primal_errf(err, PRIMAL_EDEVICE, "cuda model: %s",
                         cudaGetErrorString(cudaGetLastError()));
    if (rc != PRIMAL_OK) {
        primal_cuda_model_free(cm);
        return rc;
    }
    *out = cm;
    return PRIMAL_OK;
}

void primal_cuda_model_free(primal_cuda_model *cm)
{
    if (cm == NULL)
        return;
    if (cm->stream != NULL)
        cudaStreamSynchronize(cm->stream);
    for (int i = 0; cm->p != NULL && i < cm->np; i++) {
        primal_cuda_param *p = &cm->p[i];
        cudaFree(p->q.index);
        cudaFree(p->q.scale);
        cudaFree(p->q.dense);
        cudaFree(p->vec);
        cudaFree(p->dscale);
        cudaFree(p->dvec);
    }
    for (int i = 0; i < cm->ngrids; i++)
        cudaFree(cm->grid_dev[i]);
    cudaFree(cm->wbuf);
    cudaFree(cm->G);
    cudaFree(cm->G2);
    cudaFree(cm->sq_part);
    dev_free(cm, cm->amax, 2 * sizeof(unsigned int), MEM_WORK);
    cudaFree(cm->loss_dev);
    cudaFree(cm->adamw_dev);
    cudaFree(cm->sq_list);
    cudaFree(cm->arena);
    cudaFree(cm->attn);
    cudaFree(cm->ws);
    cudaFree(cm->G_head);
    cudaFree(cm->W_head);
    cudaFree(cm->dlogits_x);
    if (cm->cb != NULL)
        cublasDestroy(cm->cb);
    cuda_gemm_free(cm->gemm);
    if (cm->lt != NULL)
        cublasLtDestroy(cm->lt);
    dev_free(cm, cm->lt_ws, LT_WORKSPACE, MEM_WORK);
    if (cm->gstream != NULL && cm->gstream != cm->stream)
        cudaStreamDestroy(cm->gstream);
    cudaEvent_t ev[4] = {cm->g_ready, cm->g_done, cm->g_free[0], cm->g_free[1]};
    for (int i = 0; i < 4; i++)
        if (ev[i] != NULL)
            cudaEventDestroy(ev[i]);
    if (cm->stream != NULL)
        cudaStreamDestroy(cm->stream);
    free(cm->p);
    free(cm->lp);
    free(cm->grid_host);
    free(cm->grid_dev);
    free(cm->x);
    free(cm->blk);
    cudaFreeHost(cm->h_tok_in);
    cudaFreeHost(cm->h_tok_tgt);
    free(cm->h_start);
    free(cm->h_order);
    cudaFreeHost(cm->h_mask);
    free(cm);
}

int primal_cuda_model_nparams(const primal_cuda_model *cm) { return cm->np; }

int primal_cuda_model_stacks(const primal_cuda_model *cm)
{
    return (cm->stack_qkv ? PRIMAL_CUDA_STACK_QKV : 0) | (cm->stack_gu ? PRIMAL_CUDA_STACK_GU : 0);
}

primal_cuda_param *primal_cuda_model_param(primal_cuda_model *cm, int i)
{
    return i >= 0 && i < cm->np ? &cm->p[i] : NULL;
}

void *primal_cuda_model_stream(primal_cuda_model *cm) { return cm->stream; }

int primal_cuda_model_sync(primal_cuda_model *cm, primal_err *err)
{
    CUDA_TRY(cudaStreamSynchronize(cm->stream), err);
    return PRIMAL_OK;
}

int primal_cuda_model_set_trainable(primal_cuda_model *cm, const uint8_t *trainable,
                                    primal_err *err)
{
    for (int i = 0; i < cm->np; i++) {
        primal_cuda_param *p = &cm->p[i];
        uint8_t t = trainable[i] != 0;
        if (t && !p->trainable)
            TRY(grad_alloc(cm, p, err));
        else if (!t && p->trainable) {
            /* a gradient buffer may still be read by queued work */
            CUDA_TRY(cudaStreamSynchronize(cm->stream), err);
            grad_free(cm, p);
        }
        p->trainable = t;
    }
    return PRIMAL_OK;
}

int primal_cuda_model_zero_grad(primal_cuda_model *cm, primal_err *err)
{
    for (int i = 0; i < cm->np; i++) {
        primal_cuda_param *p = &cm->p[i];
        if (p->dscale != NULL)
            CUDA_TRY(cudaMemsetAsync(p->dscale, 0, (size_t)p->q.rows * sizeof(float),
                                     cm->stream), err);
        if (p->dvec != NULL)
            CUDA_TRY(cudaMemsetAsync(p->dvec, 0, (size_t)p->n * sizeof(float), cm->stream),
                     err);
    }
    return PRIMAL_OK;
}

const float *primal_cuda_grad_absmax(const primal_cuda_model *cm)
{
    return cm->tile_amax;
}

void primal_cuda_model_gemm_stats(const primal_cuda_model *cm, primal_cuda_gemm_stats *out)
{
    cuda_gemm_stats st;
    cuda_gemm_stats_get(cm->gemm, &st);
    *out = (primal_cuda_gemm_stats){st.shapes, st.timed, st.heuristic_us, st.chosen_us};
}

size_t primal_cuda_model_gemm_export(const primal_cuda_model *cm, void *buf, size_t cap)
{
    return cuda_gemm_export(cm->gemm, buf, cap);
}

int primal_cuda_model_gemm_import(primal_cuda_model *cm, const void *buf, size_t n, int *taken,
                                  primal_err *err)
{
    return cuda_gemm_import(cm->gemm, buf, n, taken, err);
}

int primal_cuda_model_memory(primal_cuda_model *cm, primal_cuda_mem *out, primal_err *err)
{
    memset(out, 0, sizeof *out);
    out->weights = cm->mem[MEM_WEIGHTS];
    out->grads = cm->mem[MEM_GRADS];
    out->activations = cm->mem[MEM_ACTS];
    out->workspace = cm->mem[MEM_WORK];
    out->other = cm->mem[MEM_OTHER];
    out->peak = cm->peak;
    CUDA_TRY(cudaMemGetInfo(&out->device_free, &out->device_total), err);
    out->device_used =
        out->device_total > out->device_free ? out->device_total - out->device_free : 0;
    if (out->device_used > cm->dev_peak)
        cm->dev_peak = out->device_used;
    out->device_peak = cm->dev_peak;
    return PRIMAL_OK;
}

int primal_cuda_alloc(primal_cuda_model *cm, size_t bytes, void **out, primal_err *err)
{
    TRY(dev_alloc(cm, out, bytes, MEM_OTHER, "primal_cuda_alloc", err));
    if (*out != NULL)
        CUDA_TRY(cudaMemsetAsync(*out, 0, bytes, cm->stream), err);
    return PRIMAL_OK;
}

void primal_cuda_free(primal_cuda_model *cm, void *p, size_t bytes)
{
    if (p != NULL)
        cudaStreamSynchronize(cm->stream);
    dev_free(cm, p, bytes, MEM_OTHER);
}

int primal_cuda_download_bytes(primal_cuda_model *cm, void *host, const void *dev, size_t n,
                               primal_err *err)
{
    CUDA_TRY(cudaMemcpyAsync(host, dev, n, cudaMemcpyDeviceToHost, cm->stream), err);
    CUDA_TRY(cudaStreamSynchronize(cm->stream), err);
    return PRIMAL_OK;
}

int primal_cuda_upload_bytes(primal_cuda_model *cm, void *dev, const void *host, size_t n,
                             primal_err *err)
{
    CUDA_TRY(cudaMemcpyAsync(dev, host, n, cudaMemcpyHostToDevice, cm->stream), err);
    CUDA_TRY(cudaStreamSynchronize(cm->stream), err);
    return PRIMAL_OK;
}

int primal_cuda_zero_bytes(primal_cuda_model *cm, void *dev, size_t n, primal_err *err)
{
    CUDA_TRY(cudaMemsetAsync(dev, 0, n, cm->stream), err);
    return PRIMAL_OK;
}

int primal_cuda_adamw(primal_cuda_model *cm, const primal_cuda_adamw_tensor *list, int n,
                      const primal_cuda_adamw_hp *hp, primal_err *err)
{
    if (n <= 0)
        return PRIMAL_OK;
    if (n > cm->adamw_cap) {
        CUDA_TRY(cudaStreamSynchronize(cm->stream), err);
        dev_free(cm, cm->adamw_dev, (size_t)cm->adamw_cap * sizeof(cuda_adamw_tensor),
                 MEM_WORK);
        cm->adamw_cap = 0;
        TRY(dev_alloc(cm, (void **)&cm->adamw_dev, (size_t)n * sizeof(cuda_adamw_tensor),
                      MEM_WORK, "AdamW tensor list", err));
        cm->adamw_cap = n;
    }
    cuda_adamw_tensor *k = malloc((size_t)n * sizeof *k);
    if (k == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "primal_cuda_adamw: out of memory");
    for (int i = 0; i < n; i++) {
        k[i] = (cuda_adamw_tensor){list[i].w, list[i].g, list[i].m, list[i].v, list[i].n,
                                   1.0 - pow(hp->beta1, (double)list[i].t),
                                   1.0 - pow(hp->beta2, (double)list[i].t)};
    }
    cuda_adamw_hp h = {hp->lr, hp->beta1, hp->beta2, hp->eps, hp->weight_decay, hp->grad_scale};
    int rc = cuda_adamw(cm->adamw_dev, k, n, &h, cm->stream, err);
    free(k);
    return rc;
}

/* One launch over the list of every trainable float gradient: they are small (a scale per
 * row, norm weights, biases) and were one launch each, which cost more than their bytes. */
int primal_cuda_sumsq_float_grads(primal_cuda_model *cm, primal_err *err)
{
    if (cm->sq_list == NULL)
        TRY(dev_alloc(cm, (void **)&cm->sq_list, (size_t)(2 * cm->np) * sizeof *cm->sq_list,
                      MEM_WORK, "sum-of-squares list", err));
    cuda_sumsq_item *list = malloc((size_t)(2 * cm->np) * sizeof *list);
    if (list == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "cuda model: out of memory");
    int n = 0;
    for (int i = 0; i < cm->np; i++) {
        primal_cuda_param *p = &cm->p[i];
        if (!p->trainable)
            continue;
        if (p->dscale != NULL)
            list[n++] = (cuda_sumsq_item){p->dscale, p->q.rows};
        if (p->dvec != NULL)
            list[n++] = (cuda_sumsq_item){p->dvec, p->n};
    }
    int rc = cuda_sumsq_list(cm->sq_part, cm->sq_list, list, n, cm->stream, err);
    free(list);
    return rc;
}

int primal_cuda_sumsq_read(primal_cuda_model *cm, double *out, int reset, primal_err *err)
{
    TRY(cuda_sumsq_finish(cm->sq_acc, cm->sq_part, cm->stream, err));
    CUDA_TRY(cudaMemcpyAsync(out, cm->sq_acc, sizeof(double), cudaMemcpyDeviceToHost,
                             cm->stream), err);
    CUDA_TRY(cudaStreamSynchronize(cm->stream), err);
    if (reset)
        CUDA_TRY(cudaMemsetAsync(cm->sq_acc, 0, sizeof(double), cm->stream), err);
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Buffers                                                                                    */

static size_t layout_acts(primal_cuda_model *cm, int B, int T, char *base)
{
    const primal_model_config *c = &cm->c;
    size_t N = (size_t)B * T, C = (size_t)c->dim, F = (size_t)c->ffn, V = (size_t)c->vocab;
    size_t e = cuda_dtype_size(cm->dt), off = 0, f = sizeof(float);
    for (int l = 0; l <= c->layers; l++) /* norm_bf16: block l reads one, writes the other */
        cm->x[l] = cm->norm_bf16 && l >= 2 ? cm->x[l & 1] : carve(base, &off, N * C * f);
    int kept = cm->recompute == PRIMAL_CUDA_RECOMPUTE_BLOCK ? 1 : c->layers;
    for (int l = 0; l < c->layers; l++) {
        block_acts *a = &cm->blk[l];
        if (l >= kept) {
            *a = cm->blk[0];
            continue;
        }
        a->rstd1 = carve(base, &off, N * f);
        a->qh = carve(base, &off, N * (size_t)cm->qdim * e);
        a->kh = carve(base, &off, N * (size_t)cm->kvdim * e);
        a->vh = carve(base, &off, N * (size_t)cm->kvdim * e);
        a->lse = carve(base, &off, N * (size_t)c->heads * f);
        a->atty = carve(base, &off, N * (size_t)cm->qdim * e);
        a->h = cm->rec_residual || cm->norm_bf16 ? NULL : carve(base, &off, N * C * f);
        a->rstd2 = carve(base, &off, N * f);
        a->xk1 = cm->norm_bf16 ? carve(base, &off, N * C * 2) : NULL;
        a->xk2 = cm->norm_bf16 ? carve(base, &off, N * C * 2) : NULL;
        a->gu = l < cm->rec_blocks ? NULL : carve(base, &off, N * 2 * F * e);
    }
    cm->lnf = carve(base, &off, N * C * e);
    cm->rstdf = carve(base, &off, N * f);
    /* The blocks' scratch and the logits slab share memory: blocks and head never run at the
     * same time (forward: the blocks, then the head; backward: the head's slabs, the blocks,
     * then the tied embedding's slabs). */
    size_t shared = off;
    cm->ln = carve(base, &off, N * C * e);
    cm->act = carve(base, &off, N * F * e);
    cm->gus = cm->rec_blocks > 0 ? carve(base, &off, N * 2 * F * e) : NULL;
    cm->hs = cm->rec_residual ? carve(base, &off, N * C * f) : NULL;
    /* q | k | v side by side, row stride qkvdim: one stacked GEMM writes them */
    cm->q = carve(base, &off, N * (size_t)cm->qkvdim * e);
    cm->k = (char *)cm->q + (size_t)cm->qdim * e;
    cm->v = (char *)cm->k + (size_t)cm->kvdim * e;
    size_t blocks_end = off;
    off = shared;
    cm->logits = carve(base, &off, N * (size_t)cm->nv * f);
    off = off > blocks_end ? off : blocks_end;
    cm->lse_ce = carve(base, &off, N * f);
    cm->losses = carve(base, &off, N * f);
    cm->tl = carve(base, &off, N * f);
    cm->tok_in = carve(base, &off, N * sizeof(int32_t));
    cm->tok_tgt = carve(base, &off, N * sizeof(int32_t));
    cm->mask = carve(base, &off, N);
    cm->emb_start = carve(base, &off, (V + 1) * sizeof(int32_t));
    cm->emb_order = carve(base, &off, N * sizeof(int32_t));
    cm->cosv = carve(base, &off, (size_t)T * (size_t)(cm->hd / 2) * f);
    cm->sinv = carve(base, &off, (size_t)T * (size_t)(cm->hd / 2) * f);
    return off;
}

static size_t layout_ws(primal_cuda_model *cm, int B, int T, char *base)
{
    size_t N = (size_t)B * T, C = (size_t)cm->c.dim;
    size_t off = 0, f = sizeof(float), e = cuda_dtype_size(cm->dt);
    cm->dres = carve(base, &off, N * C * f);
    cm->dln = carve(base, &off, N * C * f);
    cm->datty = carve(base, &off, N * (size_t)cm->qdim * e);
    cm->dqkv = NULL;
    if (cm->dt == CUDA_F32 || cm->c.qkv_bias)
        cm->dqkv = carve(base, &off, N * (size_t)cm->qkvdim * f);
    size_t cw = C > (size_t)cm->qdim ? C : (size_t)cm->qdim;
    cm->colsum = carve(base, &off, (size_t)cuda_colsum_scratch((int64_t)N, (int64_t)cw) * f);
    cm->ce_scratch = carve(base, &off, (size_t)cuda_ce_rows_scratch((int64_t)N) * f);
    cm->dlogits_b = NULL;
    cm->dyb = NULL;
    cm->dqkvb = NULL;
    if (cm->dt == CUDA_BF16) {
        if (cm->logit_train != CUDA_BF16)
            cm->dlogits_b = carve(base, &off, N * (size_t)cm->nv * 2);
        cm->dqkvb = carve(base, &off, N * (size_t)cm->qkvdim * 2);
        cm->dyb = carve(base, &off, N * C * 2);
    }
    return off;
}

/* The forward arena and attention scratch for (B, T); the rope table when T changed. */
/* Replaces a buffer that queued work may still use by a larger one. */
static int regrow(primal_cuda_model *cm, void **p, size_t *bytes, size_t need, int kind,
                  const char *what, primal_err *err)
{
    CUDA_TRY(cudaStreamSynchronize(cm->stream), err);
    dev_free(cm, *p, *bytes, kind);
    *p = NULL;
    *bytes = 0;
    TRY(dev_alloc(cm, p, need, kind, what, err));
    *bytes = need;
    return PRIMAL_OK;
}

/* The vocabulary slab: as many columns as keep the logits slab and its bf16 dlogits under
 * logits_cap, a multiple of 128, at most the row chunk of the head. */
static int64_t slab_of(const primal_cuda_model *cm, int64_t N)
{
    int64_t nv = (int64_t)(cm->logits_cap / ((size_t)N * 6)) / 128 * 128;
    int64_t ch = chunk_of(cm, cm->c.vocab);
    nv = nv < 128 ? 128 : nv;
    return nv > ch ? ch : nv;
}

/* The forward arena and attention scratch for (B, T).  The layout depends on B, T and the slab,
 * so the rope table (carved in it) is uploaded again whenever one of them changed. */
static int grow_acts(primal_cuda_model *cm, int B, int T, primal_err *err)
{
    int64_t nv = slab_of(cm, (int64_t)B * T);
    int relaid = cm->arena == NULL || B != cm->arena_B || T != cm->arena_T || nv != cm->nv;
    cm->nv = nv;
    size_t need = layout_acts(cm, B, T, NULL);
    if (need > cm->arena_bytes) {
        TRY(regrow(cm, &cm->arena, &cm->arena_bytes, need, MEM_ACTS, "forward activations", err));
        relaid = 1;
    }
    layout_acts(cm, B, T, cm->arena);
    if (relaid) {
        /* what backward kept is gone; forward runs next and fills it again */
        size_t n = (size_t)T * (size_t)(cm->hd / 2);
        float *cs = malloc(2 * n * sizeof(float));
        if (cs == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "cuda model: out of memory");
        rope_table(cs, cs + n, T, cm->hd, cm->c.rope_theta);
        CUDA_TRY(cudaStreamSynchronize(cm->stream), err); /* the table may be in use */
        cudaError_t r1 = cudaMemcpy(cm->cosv, cs, n * sizeof(float), cudaMemcpyHostToDevice);
        cudaError_t r2 = cudaMemcpy(cm->sinv, cs + n, n * sizeof(float), cudaMemcpyHostToDevice);
        free(cs);
        if (r1 != cudaSuccess || r2 != cudaSuccess)
            return primal_errf(err, PRIMAL_EDEVICE, "cuda model: rope table upload: %s",
                               cudaGetErrorString(r1 != cudaSuccess ? r1 : r2));
        cm->arena_B = B;
        cm->arena_T = T;
    }
    /* attention scratch: as many batch rows as fit under attn_cap (at least one) */
    const primal_model_config *c = &cm->c;
    cuda_attn_scratch tmp;
    size_t row = cuda_attn_layout(&tmp, NULL, cm->dt, 1, T, c->heads, c->kv_heads, cm->hd,
                                  cm->attn_fused);
    int Bc = (int)(cm->attn_cap / (row > 0 ? row : 1));
    Bc = Bc < 1 ? 1 : Bc > B ? B : Bc;
    need = cuda_attn_layout(&tmp, NULL, cm->dt, Bc, T, c->heads, c->kv_heads, cm->hd,
                            cm->attn_fused);
    if (need > cm->attn_bytes)
        TRY(regrow(cm, &cm->attn, &cm->attn_bytes, need, MEM_WORK, "attention scratch", err));
    cuda_attn_layout(&cm->as, cm->attn, cm->dt, Bc, T, c->heads, c->kv_heads, cm->hd,
                     cm->attn_fused);
    size_t N = (size_t)B * T;
    if (N > cm->h_cap) {
        /* the batch's tokens, targets and mask reach the GPU from pinned (page-locked) host
         * memory, so their copies are true asynchronous DMA; forward synchronises before it
         * returns, so the next batch never overwrites a copy in flight */
        cudaFreeHost(cm->h_tok_in);
        cudaFreeHost(cm->h_tok_tgt);
        free(cm->h_order);
        cudaFreeHost(cm->h_mask);
        cm->h_tok_in = cm->h_tok_tgt = NULL;
        cm->h_mask = NULL;
        cudaError_t e1 = cudaMallocHost((void **)&cm->h_tok_in, N * sizeof(int32_t));
        cudaError_t e2 = cudaMallocHost((void **)&cm->h_tok_tgt, N * sizeof(int32_t));
        cudaError_t e3 = cudaMallocHost((void **)&cm->h_mask, N);
        cm->h_order = malloc(N * sizeof(int32_t));
        cm->h_cap = 0;
        if (e1 != cudaSuccess || e2 != cudaSuccess || e3 != cudaSuccess || !cm->h_order)
            return primal_errf(err, PRIMAL_ENOMEM,
                               "cuda model: out of pinned host memory for %zu tokens", N);
        cm->h_cap = N;
    }
    if (cm->h_start == NULL) {
        cm->h_start = malloc(((size_t)c->vocab + 1) * sizeof(int32_t));
        if (cm->h_start == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "cuda model: out of memory");
    }
    return PRIMAL_OK;
}

static int grow_ws(primal_cuda_model *cm, primal_err *err)
{
    size_t need = layout_ws(cm, cm->B, cm->T, NULL);
    if (need > cm->ws_bytes)
        TRY(regrow(cm, &cm->ws, &cm->ws_bytes, need, MEM_WORK, "backward workspace", err));
    layout_ws(cm, cm->B, cm->T, cm->ws);
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* GEMMs (row-major thinking, column-major cuBLAS)                                            */

static const void *elem(const void *p, int64_t i, cuda_dtype dt)
{
    return (const char *)p + (size_t)i * cuda_dtype_size(dt);
}

/* Rows [r0, r0 + nr) of matrix p as a GEMM operand: dense float32 in place, otherwise
 * dequantised into the weight workspace. */
static int weight_rows(primal_cuda_model *cm, const primal_cuda_param *p, int64_t r0, int64_t nr,
                       const void **out, primal_err *err)
{
    if (p->q.bits == 32 && cm->dt == CUDA_F32) {
        *out = p->q.dense + r0 * p->q.cols;
        return PRIMAL_OK;
    }
    TRY(cuda_dequant_rows(cm->wbuf, cm->dt, &p->q, r0, nr, cm->stream, err));
    *out = cm->wbuf;
    return PRIMAL_OK;
}

/* y[:, r0:r0+nr] (y already offset by r0, row stride ldy, of type yt) = x (N, C) ·
 * W[r0:r0+nr]ᵀ + beta·y */
static int mm_forward(primal_cuda_model *cm, void *y, cuda_dtype yt, int64_t ldy, const void *x,
                      const void *w, int64_t N, int64_t C, int64_t nr, float beta,
                      primal_err *err)
{
    cuda_gemm_op o = {.ta = 1, .m = nr, .n = N, .k = C, .ab = cm->dt, .cd = yt, .A = w,
                      .lda = C, .B = x, .ldb = C, .C = y, .D = y, .ldc = ldy, .ldd = ldy,
                      .beta = beta};
    return cuda_gemm_run(cm->gemm, &o, cm->stream, err);
}

/* dx (N, C) of type xt = dy[:, r0:r0+nr] (dy already offset by r0, row stride ldy) ·
 * W[r0:r0+nr] + beta·dx */
static int mm_backward_inp(primal_cuda_model *cm, void *dx, cuda_dtype xt, const void *dy,
                           int64_t ldy, const void *w, int64_t N, int64_t C, int64_t nr,
                           float beta, primal_err *err)
{
    cuda_gemm_op o = {.m = C, .n = N, .k = nr, .ab = cm->dt, .cd = xt, .A = w, .lda = C,
                      .B = dy, .ldb = ldy, .C = dx, .D = dx, .ldc = C, .ldd = C, .beta = beta};
    return cuda_gemm_run(cm->gemm, &o, cm->stream, err);
}

/* G (nr, C) = dy[:, r0:r0+nr]ᵀ · x, dy already offset by r0, row stride ldy (+ beta·G) */
static int mm_weight(primal_cuda_model *cm, float *G, const void *dy, int64_t ldy, const void *x,
                     int64_t N, int64_t C, int64_t nr, float beta, primal_err *err)
{
    cuda_gemm_op o = {.tb = 1, .m = C, .n = nr, .k = N, .ab = cm->dt, .cd = CUDA_F32, .A = x,
                      .lda = C, .B = dy, .ldb = ldy, .C = G, .D = G, .ldc = C, .ldd = C,
                      .beta = beta};
    return cuda_gemm_run(cm->gemm, &o, cm->stream, err);
}

/* y[:, r0:r0+nr] = x (N, C) · W[r0:r0+nr]ᵀ + res[:, r0:r0+nr], y, res float32 (N, ldy), both
 * already offset by r0: the residual add in the GEMM's epilogue (cuBLASLt: cublasGemmEx's C is
 * its output).  res may be y. */
static int mm_forward_res(primal_cuda_model *cm, float *y, const float *res, int64_t ldy,
                          const void *x, const void *w, int64_t N, int64_t C, int64_t nr,
                          primal_err *err)
{
    cuda_gemm_op o = {.ta = 1, .m = nr, .n = N, .k = C, .ab = cm->dt, .cd = CUDA_F32, .A = w,
                      .lda = C, .B = x, .ldb = C, .C = res, .D = y, .ldc = ldy, .ldd = ldy,
                      .beta = 1.0f};
    return cuda_gemm_run(cm->gemm, &o, cm->stream, err);
}

/* out (N, rows) float32 = x · Wᵀ + res (N, rows), W in row chunks; x already an operand. */
static int linear_forward_res(primal_cuda_model *cm, int pi, float *out, const float *res,
                              const void *x, int64_t N, primal_err *err)
{
    const primal_cuda_param *p = &cm->p[pi];
    int64_t rows = p->q.rows, cols = p->q.cols, ch = chunk_of(cm, rows);
    for (int64_t r0 = 0; r0 < rows; r0 += ch) {
        int64_t nr = rows - r0 < ch ? rows - r0 : ch;
        const void *w;
        TRY(weight_rows(cm, p, r0, nr, &w, err));
        TRY(mm_forward_res(cm, out + r0, res + r0, rows, x, w, N, cols, nr, err));
    }
    return PRIMAL_OK;
}

/* out (N, rows) of type ot = x · Wᵀ, W in row chunks; x already an operand. */
static int linear_forward(primal_cuda_model *cm, int pi, void *out, cuda_dtype ot, const void *x,
                          int64_t N, primal_err *err)
{
    const primal_cuda_param *p = &cm->p[pi];
    int64_t rows = p->q.rows, cols = p->q.cols, ch = chunk_of(cm, rows);
    for (int64_t r0 = 0; r0 < rows; r0 += ch) {
        int64_t nr = rows - r0 < ch ? rows - r0 : ch;
        const void *w;
        TRY(weight_rows(cm, p, r0, nr, &w, err));
        TRY(mm_forward(cm, (void *)elem(out, r0, ot), ot, rows, x, w, N, cols, nr, 0.0f, err));
    }
    return PRIMAL_OK;
}

/* dx (N, cols) of type xt = dy (N, rows; row stride ldy) · W + beta·dx, W in row chunks; dy
 * already an operand. */
static int linear_backward_inp(primal_cuda_model *cm, int pi, void *dx, cuda_dtype xt,
                               const void *dy, int64_t ldy, int64_t N, float beta,
                               primal_err *err)
{
    const primal_cuda_param *p = &cm->p[pi];
    int64_t rows = p->q.rows, cols = p->q.cols, ch = chunk_of(cm, rows);
    for (int64_t r0 = 0; r0 < rows; r0 += ch) {
        int64_t nr = rows - r0 < ch ? rows - r0 : ch;
        const void *w;
        TRY(weight_rows(cm, p, r0, nr, &w, err));
        TRY(mm_backward_inp(cm, dx, xt, elem(dy, r0, cm->dt), ldy, w, N, cols, nr,
                            r0 == 0 ? beta : 1.0f, err));
    }
    return PRIMAL_OK;
}

/* dx (N, cols) of type xt = dy · [W_0; W_1; ...] for matrices pis[0..n) of equal cols whose
 * gradients dy holds side by side (row stride ldy): with stacked set, one GEMM over their W
 * rows dequantised one under the other, instead of one GEMM each, each after the first
 * reading and writing dx again to add its share. */
static int stack_backward_inp(primal_cuda_model *cm, const int *pis, int n, int stacked,
                              void *dx, cuda_dtype xt, const void *dy, int64_t ldy,
                              int64_t N, primal_err *err)
{
    if (!stacked) {
        int64_t off = 0;
        for (int j = 0; j < n; j++) {
            TRY(linear_backward_inp(cm, pis[j], dx, xt, elem(dy, off, cm->dt), ldy, N,
                                    j == 0 ? 0.0f : 1.0f, err));
            off += cm->p[pis[j]].q.rows;
        }
        return PRIMAL_OK;
    }
    int64_t rows = 0, cols = cm->p[pis[0]].q.cols;
    for (int j = 0; j < n; j++) {
        const primal_cuda_param *p = &cm->p[pis[j]];
        TRY(cuda_dequant_rows((void *)elem(cm->wbuf, rows * cols, cm->dt), cm->dt, &p->q, 0,
                              p->q.rows, cm->stream, err));
        rows += p->q.rows;
    }
    return mm_backward_inp(cm, dx, xt, dy, ldy, cm->wbuf, N, cols, rows, 0.0f, err);
}

/* out (N, rows of the matrices pis[0..n) together), row stride ldy, of the compute dtype = x ·
 * [W_0; W_1; ...]ᵀ: with stacked set, one GEMM over their W rows dequantised one under the
 * other (as stack_backward_inp), else one GEMM per matrix into its columns. */
static int stack_forward(primal_cuda_model *cm, const int *pis, int n, int stacked, void *out,
                         int64_t ldy, const void *x, int64_t N, primal_err *err)
{
    int64_t rows = 0, cols = cm->p[pis[0]].q.cols;
    for (int j = 0; j < n; j++) {
        const primal_cuda_param *p = &cm->p[pis[j]];
        if (stacked) {
            TRY(cuda_dequant_rows((void *)elem(cm->wbuf, rows * cols, cm->dt), cm->dt, &p->q, 0,
                                  p->q.rows, cm->stream, err));
        } else {
            int64_t ch = chunk_of(cm, p->q.rows);
            for (int64_t r0 = 0; r0 < p->q.rows; r0 += ch) {
                int64_t nr = p->q.rows - r0 < ch ? p->q.rows - r0 : ch;
                const void *w;
                TRY(weight_rows(cm, p, r0, nr, &w, err));
                TRY(mm_forward(cm, (void *)elem(out, rows + r0, cm->dt), cm->dt, ldy, x, w, N,
                               cols, nr, 0.0f, err));
            }
        }
        rows += p->q.rows;
    }
    if (!stacked)
        return PRIMAL_OK;
    return mm_forward(cm, out, cm->dt, ldy, x, cm->wbuf, N, cols, rows, 0.0f, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Forward                                                                                    */

static const float *bias_of(const primal_cuda_model *cm, int pi)
{
    return pi >= 0 ? cm->p[pi].vec : NULL;
}

/* The logits of the vocabulary slab [v0, v0 + n) into cm->logits (N, n); *w: the head's rows,
 * left in the weight workspace for the caller's next GEMM. */
static int head_logits(primal_cuda_model *cm, int64_t v0, int64_t n, const void **w,
                       primal_err *err)
{
    TRY(weight_rows(cm, &cm->p[cm->head], v0, n, w, err));
    return mm_forward(cm, cm->logits, cm->logit_t, n, cm->lnf, *w, (int64_t)cm->B * cm->T,
                      cm->c.dim, n, 0.0f, err);
}

static int ensure(primal_cuda_model *cm, void **p, size_t *bytes, size_t need, const char *what,
                  primal_err *err);

/* Where dL/dlogits goes: over the logits where it has their type (the kernels read each logit
 * before they write its gradient), else into the bf16 dlogits_b.  NULL where neither holds: a
 * backward after an evaluation forward made float32 logits in a model laid out for bf16 ones. */
static void *dlogits_of(const primal_cuda_model *cm)
{
    if (cm->dt == CUDA_F32 || cm->logit_t == CUDA_BF16)
        return cm->logits;
    return cm->dlogits_b;
}

/* ... and dL/dlogits of that slab, where dlogits_of says. */
static int head_dlogits(primal_cuda_model *cm, int64_t v0, int64_t n, float d, const void **w,
                        void **dl, primal_err *err)
{
    TRY(head_logits(cm, v0, n, w, err));
    *dl = dlogits_of(cm);
    if (*dl == NULL) {
        TRY(ensure(cm, &cm->dlogits_x, &cm->dlogits_x_bytes,
                   (size_t)cm->B * (size_t)cm->T * (size_t)cm->nv * 2,
                   "dlogits after an evaluation forward", err));
        *dl = cm->dlogits_x;
    }
    return cuda_crossentropy_backward(*dl, cm->dt, cm->logits, cm->logit_t, cm->lse_ce,
                                      cm->tok_tgt, cm->mask, d, v0, n, (int64_t)cm->B * cm->T,
                                      cm->stream, err);
}

/* One block from xin into its activations and xout = xin + attn + mlp. */
static int block_forward(primal_cuda_model *cm, int l, const float *xin, float *xout,
                         primal_err *err)
{
    const primal_model_config *c = &cm->c;
    const int *lp = cm->lp[l];
    block_acts *a = &cm->blk[l];
    const primal_cuda_param *P = cm->p;
    int B = cm->B, T = cm->T, H = c->heads, KVH = c->kv_heads, hd = cm->hd;
    int64_t N = (int64_t)B * T, C = c->dim, F = c->ffn;
    cudaStream_t s = cm->stream;
    float eps = (float)c->norm_eps;

    TRY(cuda_rmsnorm_forward_keep(cm->ln, cm->dt, a->rstd1, a->xk1, xin, P[lp[L_LN1]].vec, N, C,
                                  eps, s, err));
    const int qkv[3] = {lp[L_Q], lp[L_K], lp[L_V]};
    TRY(stack_forward(cm, qkv, 3, cm->stack_qkv, cm->q, cm->qkvdim, cm->ln, N, err));
    TRY(cuda_rope_pack(a->qh, a->kh, a->vh, cm->dt, cm->q, cm->k, cm->v, cm->qkvdim,
                       cm->qkvdim, bias_of(cm, lp[L_BQ]),
                       bias_of(cm, lp[L_BK]), bias_of(cm, lp[L_BV]), cm->cosv, cm->sinv, B, T, H,
                       KVH, hd, s, err));
    TRY(cuda_attention_forward(a->atty, a->lse, a->qh, a->kh, a->vh, &cm->as, cm->cb, cm->dt, B,
                               T, H, KVH, hd, s, err));
    /* norm_bf16 keeps no h: it lives in xout, which the down GEMM then adds to in place */
    float *h = a->h != NULL ? a->h : cm->norm_bf16 ? xout : cm->hs;
    TRY(linear_forward_res(cm, lp[L_O], h, xin, a->atty, N, err));
    TRY(cuda_rmsnorm_forward_keep(cm->ln, cm->dt, a->rstd2, a->xk2, h, P[lp[L_LN2]].vec, N, C,
                                  eps, s, err));
    void *gu = a->gu != NULL ? a->gu : cm->gus;
    const int gup[2] = {lp[L_GATE], lp[L_UP]};
    TRY(stack_forward(cm, gup, 2, cm->stack_gu, gu, 2 * F, cm->ln, N, err));
    TRY(cuda_swiglu_forward(cm->act, cm->dt, gu, elem(gu, F, cm->dt), 2 * F, N, F, s, err));
    TRY(linear_forward_res(cm, lp[L_DOWN], xout, h, cm->act, N, err));
    cm->acts_layer = l;
    return PRIMAL_OK;
}

/* Everything up to the final norm's output (cm->lnf). */
static int forward_body(primal_cuda_model *cm, const int32_t *tokens, const uint8_t *mask,
                        int B, int T, primal_err *err)
{
    const primal_model_config *c = &cm->c;
    cm->have_fwd = 0;
    cm->head_ready = 0;
    if (B < 1 || T < 1 || (int64_t)B * T > INT32_MAX / 2)
        return primal_errf(err, PRIMAL_ERROR,
                           "primal_cuda_model_forward: B %d, T %d out of range", B, T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t <= T; t++) {
            int32_t tok = tokens[(int64_t)b * (T + 1) + t];
            if (tok < 0 || tok >= c->vocab)
                return primal_errf(err, PRIMAL_ERROR,
                                   "primal_cuda_model_forward: row %d, position %d: token %d "
                                   "outside [0, %d)",
                                   b, t, (int)tok, c->vocab);
        }
    TRY(grow_acts(cm, B, T, err));
    cm->B = B;
    cm->T = T;
    int64_t N = (int64_t)B * T, C = c->dim, V = c->vocab;
    cudaStream_t s = cm->stream;
    cm->count = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int64_t n = (int64_t)b * T + t;
            cm->h_tok_in[n] = tokens[(int64_t)b * (T + 1) + t];
            cm->h_tok_tgt[n] = tokens[(int64_t)b * (T + 1) + t + 1];
            cm->h_mask[n] = mask == NULL || mask[n] != 0;
            cm->count += cm->h_mask[n];
        }
    cuda_embedding_sort(cm->h_start, cm->h_order, cm->h_tok_in, N, V);
    /* pageable sources: each copy has left the host buffer when the call returns */
    CUDA_TRY(cudaMemcpyAsync(cm->tok_in, cm->h_tok_in, (size_t)N * sizeof(int32_t),
                             cudaMemcpyHostToDevice, s), err);
    CUDA_TRY(cudaMemcpyAsync(cm->tok_tgt, cm->h_tok_tgt, (size_t)N * sizeof(int32_t),
                             cudaMemcpyHostToDevice, s), err);
    CUDA_TRY(cudaMemcpyAsync(cm->mask, cm->h_mask, (size_t)N, cudaMemcpyHostToDevice, s), err);
    CUDA_TRY(cudaMemcpyAsync(cm->emb_start, cm->h_start, (size_t)(V + 1) * sizeof(int32_t),
                             cudaMemcpyHostToDevice, s), err);
    CUDA_TRY(cudaMemcpyAsync(cm->emb_order, cm->h_order, (size_t)N * sizeof(int32_t),
                             cudaMemcpyHostToDevice, s), err);

    const primal_cuda_param *P = cm->p;
    TRY(cuda_embedding_forward(cm->x[0], cm->tok_in, &P[cm->embed].q, N, s, err));
    for (int l = 0; l < c->layers; l++)
        TRY(block_forward(cm, l, cm->x[l], cm->x[l + 1], err));
    return cuda_rmsnorm_forward(cm->lnf, cm->dt, cm->rstdf, cm->x[c->layers], P[cm->fnorm].vec,
                                N, C, (float)c->norm_eps, s, err);
}

/* The loss from cm->losses, to the host (waits); the forward is then complete. */
static int forward_loss(primal_cuda_model *cm, float *loss, primal_err *err)
{
    cudaStream_t s = cm->stream;
    TRY(cuda_loss_mean(cm->loss_dev, cm->losses, cm->mask, (int64_t)cm->B * cm->T, cm->count, s,
                       err));
    CUDA_TRY(cudaMemcpyAsync(loss, cm->loss_dev, sizeof(float), cudaMemcpyDeviceToHost, s), err);
    CUDA_TRY(cudaStreamSynchronize(s), err);
    cm->have_fwd = 1;
    return PRIMAL_OK;
}

/* The LM head and the cross-entropy over vocabulary slabs (losses, lse_ce), logits to the
 * host when not NULL. */
static int head_slabs(primal_cuda_model *cm, float *logits, primal_err *err)
{
    int64_t N = (int64_t)cm->B * cm->T, V = cm->c.vocab;
    cudaStream_t s = cm->stream;
    for (int64_t v0 = 0; v0 < V; v0 += cm->nv) {
        int64_t n = V - v0 < cm->nv ? V - v0 : cm->nv;
        const void *w;
        TRY(head_logits(cm, v0, n, &w, err));
        TRY(cuda_crossentropy_forward(cm->losses, cm->lse_ce, cm->tl, cm->logits, cm->logit_t,
                                      cm->tok_tgt, v0, n, V, N, s, err));
        if (logits != NULL)
            CUDA_TRY(cudaMemcpy2DAsync(logits + v0, (size_t)V * sizeof(float), cm->logits,
                                       (size_t)n * sizeof(float), (size_t)n * sizeof(float),
                                       (size_t)N, cudaMemcpyDeviceToHost, s), err);
    }
    return PRIMAL_OK;
}

int primal_cuda_model_forward(primal_cuda_model *cm, const int32_t *tokens, const uint8_t *mask,
                              int B, int T, float *loss, float *logits, primal_err *err)
{
    TRY(forward_body(cm, tokens, mask, B, T, err));
    cm->logit_t = CUDA_F32; /* what logits reports, and what backward's slabs must agree with */
    TRY(head_slabs(cm, logits, err));
    return forward_loss(cm, loss, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Backward                                                                                   */

typedef struct bwd_ctx {
    primal_cuda_grad_hook hook;
    void *user;
} bwd_ctx;

static int trains(const primal_cuda_model *cm, int pi)
{
    return pi >= 0 && cm->p[pi].trainable;
}

/* A G workspace of elems floats: G2 and G in turn where the tile fits G2, so that the GEMM
 * writing this one need not wait for the gradient stream to finish reading the last. */
static int grad_slot(primal_cuda_model *cm, int64_t elems, float **G, int *slot,
                     primal_err *err)
{
    int s = cm->G2 != NULL && cm->g_last == 0 && (size_t)elems * sizeof(float) <= cm->G2_bytes;
    cm->g_last = s;
    if (cm->gstream != cm->stream)
        CUDA_TRY(cudaStreamWaitEvent(cm->stream, cm->g_free[s], 0), err);
    *G = s ? cm->G2 : cm->G;
    *slot = s;
    return PRIMAL_OK;
}

/* Rows [r0, r0 + nr) of parameter pi's G are in G, written by work queued on the model's
 * stream: scale gradient, then the hook, on the gradient stream.  slot: G's workspace (-1 for
 * the head's whole G, which stays put until the next forward_train, after backward's join). */
static int consume(primal_cuda_model *cm, int pi, int64_t r0, int64_t nr, const float *G,
                   int slot, const bwd_ctx *bc, primal_err *err)
{
    primal_cuda_param *p = &cm->p[pi];
    cudaStream_t gs = cm->gstream;
    if (gs != cm->stream) {
        CUDA_TRY(cudaEventRecord(cm->g_ready, cm->stream), err);
        CUDA_TRY(cudaStreamWaitEvent(gs, cm->g_ready, 0), err);
    }
    /* the scale gradient, and in the same pass Σ G² for the clipping norm and the tile's
     * max |G| for the policy (primal_accum_info.g_absmax) */
    unsigned int *am = cm->amax + cm->amax_i;
    int done = 0;
    TRY(cuda_scale_grad(p->dscale, cm->sq_part, am, cm->amax + (cm->amax_i ^ 1), &done, G, &p->q,
                        r0, nr, gs, err));
    if (done)
        cm->amax_i ^= 1; /* the kernel zeroed the other slot for the next tile */
    cm->tile_amax = done ? (const float *)am : NULL;
    int rc = bc->hook != NULL ? bc->hook(bc->user, p, G, r0, nr, gs, err) : PRIMAL_OK;
    cm->tile_amax = NULL;
    if (rc != PRIMAL_OK)
        return rc;
    if (gs != cm->stream && slot >= 0)
        CUDA_TRY(cudaEventRecord(cm->g_free[slot], gs), err);
    return PRIMAL_OK;
}

/* G = dyᵀ·x of matrix pi, chunk by chunk, each consumed; dy (N, rows; row stride ldy) and x
 * (N, cols) are operands. */
static int weight_grad(primal_cuda_model *cm, int pi, const void *dy, int64_t ldy,
                       const void *x, const bwd_ctx *bc, primal_err *err)
{
    const primal_cuda_param *p = &cm->p[pi];
    int64_t rows = p->q.rows, cols = p->q.cols, ch = chunk_of(cm, rows);
    int64_t N = (int64_t)cm->B * cm->T;
    for (int64_t r0 = 0; r0 < rows; r0 += ch) {
        int64_t nr = rows - r0 < ch ? rows - r0 : ch;
        float *G;
        int slot;
        TRY(grad_slot(cm, nr * cols, &G, &slot, err));
        TRY(mm_weight(cm, G, elem(dy, r0, cm->dt), ldy, x, N, cols, nr, 0.0f, err));
        TRY(consume(cm, pi, r0, nr, G, slot, bc, err));
    }
    return PRIMAL_OK;
}

/* The G of matrices pis[0..n) (rows side by side in dy, row stride ldy; none in chunks) as one
 * GEMM into one workspace, each member's rows then consumed in turn: for q, k and v one product
 * of qkvdim rows instead of three narrower ones, which keep fewer SMs busy. */
static int stack_weight_grad(primal_cuda_model *cm, const int *pis, int n, const void *dy,
                             int64_t ldy, const void *x, const bwd_ctx *bc, primal_err *err)
{
    int64_t rows = 0, cols = cm->p[pis[0]].q.cols, N = (int64_t)cm->B * cm->T;
    for (int j = 0; j < n; j++)
        rows += cm->p[pis[j]].q.rows;
    float *G;
    int slot;
    TRY(grad_slot(cm, rows * cols, &G, &slot, err));
    TRY(mm_weight(cm, G, dy, ldy, x, N, cols, rows, 0.0f, err));
    int64_t r0 = 0;
    for (int j = 0; j < n; j++) {
        int64_t nr = cm->p[pis[j]].q.rows;
        TRY(consume(cm, pis[j], 0, nr, G + r0 * cols, slot, bc, err));
        r0 += nr;
    }
    return PRIMAL_OK;
}

/* dres as a GEMM operand.  In bf16 the rmsnorm backward that last wrote dres left its bf16
 * copy in dyb (dres_copy), so no conversion pass is needed. */
static const void *dres_operand(const primal_cuda_model *cm)
{
    return cm->dt == CUDA_F32 ? (const void *)cm->dres : cm->dyb;
}

static void *dres_copy(const primal_cuda_model *cm)
{
    return cm->dt == CUDA_BF16 ? cm->dyb : NULL;
}

/* cm->dres holds dL/d(block output); on return, when need_dx, dL/d(block input).  The stages
 * that run, and the order of hook calls, are model.c's. */
static int block_backward(primal_cuda_model *cm, int l, const float *xin, int need_dx,
                          const bwd_ctx *bc, primal_err *err)
{
    const primal_model_config *c = &cm->c;
    const int *lp = cm->lp[l];
    primal_cuda_param *P = cm->p;
    int B = cm->B, T = cm->T, H = c->heads, KVH = c->kv_heads, hd = cm->hd;
    int64_t N = (int64_t)B * T, C = c->dim, F = c->ffn;
    cudaStream_t s = cm->stream;

    int below_qkv = need_dx || trains(cm, lp[L_LN1]);
    int need_dqkv = below_qkv || trains(cm, lp[L_Q]) || trains(cm, lp[L_K]) ||
                    trains(cm, lp[L_V]) || trains(cm, lp[L_BQ]) || trains(cm, lp[L_BK]) ||
                    trains(cm, lp[L_BV]);
    int need_mid = need_dqkv || trains(cm, lp[L_O]);
    int need_dln2 = need_mid || trains(cm, lp[L_LN2]);
    int need_dgu = need_dln2 || trains(cm, lp[L_GATE]) || trains(cm, lp[L_UP]);
    if (!need_dgu && !trains(cm, lp[L_DOWN]))
        return PRIMAL_OK;
    block_acts *a = &cm->blk[l];
    const void *dyo = NULL;
    /* the norms' inputs: x and h, or their bf16 roundings under norm_bf16 */
    const void *x1 = a->xk1 != NULL ? a->xk1 : (const void *)xin, *h = a->h;
    cuda_dtype xt = a->xk1 != NULL ? CUDA_BF16 : CUDA_F32;
    if (a->xk2 != NULL) {
        h = a->xk2;
    } else if (h == NULL) { /* h = xin + o(atty) again, by forward's very GEMM: the same bits */
        TRY(linear_forward_res(cm, lp[L_O], cm->hs, xin, a->atty, N, err));
        h = cm->hs;
    }

    /* xout = h + down(act).  act is not kept: SwiGLU's backward makes it again in cm->act over
     * dL/d(act), after which gate|up hold dgate|dup (the stacked layout, so that dL/dln2 is one
     * GEMM over the stacked gate/up rows) */
    const int gup[2] = {lp[L_GATE], lp[L_UP]};
    void *gu = a->gu;
    int ln_ready = 0; /* whether cm->ln holds this half's norm output */
    if (gu == NULL) { /* RECOMPUTE_MLP: ln2, then gate|up from it */
        gu = cm->gus;
        TRY(cuda_rmsnorm_apply(cm->ln, cm->dt, a->rstd2, h, xt, P[lp[L_LN2]].vec, N, C, s, err));
        TRY(stack_forward(cm, gup, 2, cm->stack_gu, gu, 2 * F, cm->ln, N, err));
        ln_ready = 1;
    }
    void *g = gu, *u = (void *)elem(gu, F, cm->dt);
    dyo = dres_operand(cm);
    if (need_dgu) {
        TRY(linear_backward_inp(cm, lp[L_DOWN], cm->act, cm->dt, dyo, C, N, 0.0f, err));
        TRY(cuda_swiglu_backward(g, u, trains(cm, lp[L_DOWN]) ? cm->act : NULL, cm->dt,
                                 cm->act, g, u, 2 * F, N, F, s, err));
    } else {
        TRY(cuda_swiglu_forward(cm->act, cm->dt, g, u, 2 * F, N, F, s, err));
    }
    if (trains(cm, lp[L_DOWN]))
        TRY(weight_grad(cm, lp[L_DOWN], dyo, C, cm->act, bc, err));
    if (!need_dgu)
        return PRIMAL_OK;
    /* dL/dln2 and the norm's backward before the gate/up weight gradients, so that the norm's
     * pass over h also leaves ln2 for them */
    int w_gu = trains(cm, lp[L_GATE]) || trains(cm, lp[L_UP]);
    if (need_dln2) {
        TRY(stack_backward_inp(cm, gup, 2, cm->stack_gu, cm->dln, cm->dt, gu, 2 * F, N, err));
        TRY(cuda_rmsnorm_backward_xn(need_mid ? cm->dres : NULL, dres_copy(cm),
                                     w_gu && !ln_ready ? cm->ln : NULL, cm->dt,
                                     P[lp[L_LN2]].dvec, cm->colsum, cm->dln, cm->dt, h, xt,
                                     P[lp[L_LN2]].vec, a->rstd2, N, C, s, err));
        ln_ready = 1;
    }
    if (w_gu && !ln_ready)
        TRY(cuda_rmsnorm_apply(cm->ln, cm->dt, a->rstd2, h, xt, P[lp[L_LN2]].vec, N, C, s, err));
    if (trains(cm, lp[L_GATE]))
        TRY(weight_grad(cm, lp[L_GATE], g, 2 * F, cm->ln, bc, err));
    if (trains(cm, lp[L_UP]))
        TRY(weight_grad(cm, lp[L_UP], u, 2 * F, cm->ln, bc, err));
    if (!need_dln2)
        return PRIMAL_OK;

    /* h = xin + o(atty); cm->dres is now dL/dh */
    if (!need_dqkv && !trains(cm, lp[L_O]))
        return PRIMAL_OK;
    dyo = dres_operand(cm);
    if (trains(cm, lp[L_O]))
        TRY(weight_grad(cm, lp[L_O], dyo, C, a->atty, bc, err));
    if (!need_dqkv)
        return PRIMAL_OK;
    TRY(linear_backward_inp(cm, lp[L_O], cm->datty, cm->dt, dyo, C, N, 0.0f, err));
    /* float32 dq, dk, dv: the GEMM operands of fp32 runs; in bf16 only bias gradients read them */
    int f32 = cm->dt == CUDA_F32 || trains(cm, lp[L_BQ]) || trains(cm, lp[L_BK]) ||
              trains(cm, lp[L_BV]);
    /* dq | dk | dv side by side (row stride qkvdim): one GEMM for dL/dln1 below */
    int64_t S = cm->qkvdim, ko = cm->qdim, vo = cm->qdim + cm->kvdim;
    float *f = f32 ? cm->dqkv : NULL;
    void *b = cm->dqkvb;
    TRY(cuda_attention_backward(f, f ? f + ko : NULL, f ? f + vo : NULL, b,
                                b ? (void *)elem(b, ko, CUDA_BF16) : NULL,
                                b ? (void *)elem(b, vo, CUDA_BF16) : NULL, S, cm->datty, a->atty,
                                a->lse, a->qh, a->kh, a->vh, cm->cosv, cm->sinv, &cm->as, cm->cb,
                                cm->dt, B, T, H, KVH, hd, s, err));
    if (trains(cm, lp[L_BQ]))
        TRY(cuda_bias_backward(P[lp[L_BQ]].dvec, cm->colsum, f, S, N, cm->qdim, s, err));
    if (trains(cm, lp[L_BK]))
        TRY(cuda_bias_backward(P[lp[L_BK]].dvec, cm->colsum, f + ko, S, N, cm->kvdim, s, err));
    if (trains(cm, lp[L_BV]))
        TRY(cuda_bias_backward(P[lp[L_BV]].dvec, cm->colsum, f + vo, S, N, cm->kvdim, s, err));
    const void *dqkv = cm->dt == CUDA_F32 ? (const void *)cm->dqkv : cm->dqkvb;
    const int64_t off[3] = {0, ko, vo};
    const int pis[3] = {lp[L_Q], lp[L_K], lp[L_V]};
    int w_qkv = trains(cm, pis[0]) || trains(cm, pis[1]) || trains(cm, pis[2]);
    /* as above: the norm's backward leaves ln1 for the q, k, v weight gradients */
    if (below_qkv) {
        TRY(stack_backward_inp(cm, pis, 3, cm->stack_qkv, cm->dln, cm->dt, dqkv, S, N, err));
        TRY(cuda_rmsnorm_backward_xn(need_dx ? cm->dres : NULL, dres_copy(cm),
                                     w_qkv ? cm->ln : NULL, cm->dt, P[lp[L_LN1]].dvec,
                                     cm->colsum, cm->dln, cm->dt, x1, xt, P[lp[L_LN1]].vec,
                                     a->rstd1, N, C, s, err));
    } else if (w_qkv) {
        TRY(cuda_rmsnorm_apply(cm->ln, cm->dt, a->rstd1, x1, xt, P[lp[L_LN1]].vec, N, C, s, err));
    }
    if (cm->stack_qkv && trains(cm, pis[0]) && trains(cm, pis[1]) && trains(cm, pis[2]))
        return stack_weight_grad(cm, pis, 3, dqkv, S, cm->ln, bc, err);
    for (int j = 0; j < 3; j++)
        if (trains(cm, pis[j]))
            TRY(weight_grad(cm, pis[j], elem(dqkv, off[j], cm->dt), S, cm->ln, bc, err));
    return PRIMAL_OK;
}

static int level_of(const primal_cuda_model *cm, const primal_cuda_param *p)
{
    if (p->layer == PRIMAL_LAYER_EMBED)
        return -1;
    if (p->layer == PRIMAL_LAYER_FINAL_NORM || p->layer == PRIMAL_LAYER_HEAD)
        return cm->c.layers;
    return p->layer;
}

/* The level of the lowest trainable parameter: -1 the embedding, layers the final norm and
 * head, layers + 1 when nothing trains. */
static int lowest_level(const primal_cuda_model *cm)
{
    int lowest = cm->c.layers + 1;
    for (int i = 0; i < cm->np; i++)
        if (cm->p[i].trainable && level_of(cm, &cm->p[i]) < lowest)
            lowest = level_of(cm, &cm->p[i]);
    return lowest;
}

/* Device buffer *p of at least need bytes, counted as workspace; kept while big enough. */
static int ensure(primal_cuda_model *cm, void **p, size_t *bytes, size_t need, const char *what,
                  primal_err *err)
{
    if (*p != NULL && *bytes >= need)
        return PRIMAL_OK;
    return regrow(cm, p, bytes, need, MEM_WORK, what, err);
}

/* The head's forward and backward over token rows (see primal_cuda_model_forward_train), nc
 * rows at a time through the logits slab buffers: logits over the whole vocabulary, losses and
 * dlogits in one kernel, then dL/dlnf of those rows and the head's G accumulated over them. */
static int head_ahead(primal_cuda_model *cm, int64_t nc, float d, int need_dlnf, int need_G,
                      primal_err *err)
{
    const primal_model_config *c = &cm->c;
    int64_t N = (int64_t)cm->B * cm->T, C = c->dim, V = c->vocab;
    const primal_cuda_param *hp = &cm->p[cm->head];
    size_t e = cuda_dtype_size(cm->dt);
    TRY(grow_ws(cm, err));
    if (need_G)
        TRY(ensure(cm, (void **)&cm->G_head, &cm->G_head_bytes, (size_t)(V * C) * sizeof(float),
                   "LM head gradient", err));
    const void *w = hp->q.dense;
    if (!(hp->q.bits == 32 && cm->dt == CUDA_F32)) {
        TRY(ensure(cm, &cm->W_head, &cm->W_head_bytes, (size_t)(V * C) * e, "LM head weights",
                   err));
        TRY(cuda_dequant_rows(cm->W_head, cm->dt, &hp->q, 0, V, cm->stream, err));
        w = cm->W_head;
    }
    void *dl = dlogits_of(cm); /* logit_t is logit_train here: never NULL */
    for (int64_t n0 = 0; n0 < N; n0 += nc) {
        int64_t n = N - n0 < nc ? N - n0 : nc;
        const void *x = elem(cm->lnf, n0 * C, cm->dt);
        TRY(mm_forward(cm, cm->logits, cm->logit_t, V, x, w, n, C, V, 0.0f, err));
        TRY(cuda_crossentropy_rows(cm->losses + n0, cm->lse_ce + n0, dl, cm->dt, cm->logits,
                                   cm->logit_t, cm->tok_tgt + n0, cm->mask + n0, d, V, n,
                                   cm->ce_scratch, cm->stream, err));
        if (need_dlnf)
            TRY(mm_backward_inp(cm, cm->dln + n0 * C, CUDA_F32, dl, V, w, n, C, V, 0.0f, err));
        if (need_G)
            TRY(mm_weight(cm, cm->G_head, dl, V, x, n, C, V, n0 == 0 ? 0.0f : 1.0f, err));
    }
    return PRIMAL_OK;
}

int primal_cuda_model_forward_train(primal_cuda_model *cm, const int32_t *tokens,
                                    const uint8_t *mask, int B, int T, float loss_scale,
                                    float *loss, primal_err *err)
{
    TRY(forward_body(cm, tokens, mask, B, T, err));
    cm->logit_t = cm->logit_train;
    const primal_model_config *c = &cm->c;
    int L = c->layers, lowest = lowest_level(cm);
    int64_t N = (int64_t)B * T, V = c->vocab, C = c->dim;
    int need_G = (!c->tied && cm->p[cm->head].trainable) || (c->tied && lowest == -1);
    int need_dlnf = lowest < L || cm->p[cm->fnorm].trainable;
    /* token rows a pass: as many as the logits slab buffers hold over the whole vocabulary */
    int64_t nc = N * cm->nv / V;
    size_t whole = (size_t)(V * C) * (sizeof(float) + cuda_dtype_size(cm->dt));
    int on = cm->head_ahead > 0 || (cm->head_ahead == 0 && whole <= cm->logits_cap);
    if (!on || nc < 1 || !(need_G || need_dlnf)) {
        TRY(head_slabs(cm, NULL, err));
        return forward_loss(cm, loss, err);
    }
    float d = cm->count > 0 ? loss_scale / (float)cm->count : 0.0f;
    TRY(head_ahead(cm, nc, d, need_dlnf, need_G, err));
    TRY(forward_loss(cm, loss, err));
    cm->head_ready = 1;
    cm->head_scale = loss_scale;
    return PRIMAL_OK;
}

static int backward_body(primal_cuda_model *cm, float loss_scale, primal_cuda_grad_hook hook,
                         void *user, primal_err *err)
{
    if (!cm->have_fwd)
        return primal_errf(err, PRIMAL_ERROR,
                           "primal_cuda_model_backward: no forward to differentiate (each "
                           "forward allows one backward)");
    if (cm->head_ready && loss_scale != cm->head_scale)
        return primal_errf(err, PRIMAL_ERROR,
                           "primal_cuda_model_backward: loss_scale %g, but forward_train "
                           "formed the head's gradients with %g", (double)loss_scale,
                           (double)cm->head_scale);
    const primal_model_config *c = &cm->c;
    int L = c->layers;
    int lowest = lowest_level(cm);
    if (lowest > L)
        return PRIMAL_OK; /* nothing trains; the forward stays usable */
    cm->have_fwd = 0; /* recompute and the logits slab overwrite what forward left */
    TRY(grow_ws(cm, err));
    bwd_ctx bc = {hook, user};
    primal_cuda_param *P = cm->p;
    int64_t N = (int64_t)cm->B * cm->T, C = c->dim, V = c->vocab;
    cudaStream_t s = cm->stream;

    /* The head, slab by slab: logits again, dlogits, then dL/dlnf and the head's G rows. */
    float d = cm->count > 0 ? loss_scale / (float)cm->count : 0.0f;
    int head_w = !c->tied && P[cm->head].trainable;
    int need_dlnf = lowest < L || P[cm->fnorm].trainable;
    int64_t ch = chunk_of(cm, V); /* the hook's rows; a chunk spans whole slabs */
    int ahead = cm->head_ready;   /* forward_train left dL/dlnf in dln and the head's G */
    cm->head_ready = 0;
    for (int64_t c0 = 0; ahead && head_w && c0 < V; c0 += ch) {
        int64_t cn = V - c0 < ch ? V - c0 : ch;
        TRY(consume(cm, cm->head, c0, cn, cm->G_head + c0 * C, -1, &bc, err));
    }
    for (int64_t c0 = 0; !ahead && (head_w || need_dlnf) && c0 < V; c0 += ch) {
        int64_t cn = V - c0 < ch ? V - c0 : ch;
        float *G = NULL;
        int slot = -1;
        if (head_w)
            TRY(grad_slot(cm, cn * C, &G, &slot, err));
        for (int64_t v0 = c0; v0 < c0 + cn; v0 += cm->nv) {
            int64_t n = c0 + cn - v0 < cm->nv ? c0 + cn - v0 : cm->nv;
            const void *w;
            void *dl;
            TRY(head_dlogits(cm, v0, n, d, &w, &dl, err));
            if (need_dlnf)
                TRY(mm_backward_inp(cm, cm->dln, CUDA_F32, dl, n, w, N, C, n,
                                    v0 == 0 ? 0.0f : 1.0f, err));
            if (head_w)
                TRY(mm_weight(cm, G + (v0 - c0) * C, dl, n, cm->lnf, N, C, n, 0.0f, err));
        }
        if (head_w)
            TRY(consume(cm, cm->head, c0, cn, G, slot, &bc, err));
    }
    if (need_dlnf) {
        if (lowest < L)
            CUDA_TRY(cudaMemsetAsync(cm->dres, 0, (size_t)(N * C) * sizeof(float), s), err);
        TRY(cuda_rmsnorm_backward(lowest < L ? cm->dres : NULL, dres_copy(cm),
                                  P[cm->fnorm].dvec, cm->colsum, cm->dln, cm->x[L],
                                  P[cm->fnorm].vec, cm->rstdf, N, C, s, err));
    }
    for (int l = L - 1; l >= 0 && l >= lowest; l--) {
        /* recompute: the block's activations again from its input; its output goes to dln,
         * which is free until block_backward */
        if (cm->recompute == PRIMAL_CUDA_RECOMPUTE_BLOCK && cm->acts_layer != l)
            TRY(block_forward(cm, l, cm->x[l], cm->dln, err));
        TRY(block_backward(cm, l, cm->x[l], lowest < l, &bc, err));
    }

    if (lowest == -1) {
        /* The embedding's G: its lookups' scatter, plus the head's G when tied, summed so that
         * the hook sees each row once. */
        for (int64_t r0 = 0; r0 < V; r0 += ch) {
            int64_t nr = V - r0 < ch ? V - r0 : ch;
            float *G;
            int slot = -1;
            if (c->tied && ahead) {
                G = cm->G_head + r0 * C;
            } else if (c->tied) {
                TRY(grad_slot(cm, nr * C, &G, &slot, err));
                for (int64_t v0 = r0; v0 < r0 + nr; v0 += cm->nv) {
                    int64_t n = r0 + nr - v0 < cm->nv ? r0 + nr - v0 : cm->nv;
                    const void *w;
                    void *dl;
                    TRY(head_dlogits(cm, v0, n, d, &w, &dl, err));
                    TRY(mm_weight(cm, G + (v0 - r0) * C, dl, n, cm->lnf, N, C, n, 0.0f, err));
                }
            } else {
                TRY(grad_slot(cm, nr * C, &G, &slot, err));
                CUDA_TRY(cudaMemsetAsync(G, 0, (size_t)(nr * C) * sizeof(float), s), err);
            }
            TRY(cuda_embedding_backward(G, cm->dres, cm->emb_start, cm->emb_order, r0, nr, C, s,
                                        err));
            TRY(consume(cm, cm->embed, r0, nr, G, slot, &bc, err));
        }
    }
    return PRIMAL_OK;
}

int primal_cuda_model_backward(primal_cuda_model *cm, float loss_scale,
                               primal_cuda_grad_hook hook, void *user, primal_err *err)
{
    int rc = backward_body(cm, loss_scale, hook, user, err);
    /* whatever the gradient stream took on, the model's stream waits for it, error or not */
    if (cm->gstream != cm->stream &&
        (cudaEventRecord(cm->g_done, cm->gstream) != cudaSuccess ||
         cudaStreamWaitEvent(cm->stream, cm->g_done, 0) != cudaSuccess) && rc == PRIMAL_OK)
        rc = primal_errf(err, PRIMAL_EDEVICE, "cuda model: backward: cannot join the gradient "
                         "stream");
    return rc;
}
