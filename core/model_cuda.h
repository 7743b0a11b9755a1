/* model_cuda.h (private to libprimal): the decoder-only Llama/Qwen2 model on one CUDA GPU, the
 * same math, parameters and gradient-hook semantics as the CPU model (core/model.h).  SPEC.md,
 * "Models", "The forward and backward pass of an indexed matrix".
 *
 * A primal_cuda_model is made from a CPU primal_model, which stays the host mirror: names,
 * shapes, grids and checkpoints live there, and it must outlive the CUDA model.  Indices,
 * scales, vectors, grids (and dense matrices) are uploaded once; download() copies them back
 * for a checkpoint, upload() refreshes the device after the CPU model changed (a resume).
 *
 * Each GEMM materialises its W from (index, scale, grid) into ONE reused workspace just before
 * it runs (float32 or bfloat16 by precision); the weight gradient G = dYᵀ·X of one matrix (or of
 * CHUNK rows of it, for a large vocabulary) goes into one reused float32 workspace, the scale
 * gradient is taken from it, the hook gets it, and it is dropped.  No full-model float copy of
 * weights or gradients ever exists.
 *
 * Everything runs on one stream (primal_cuda_model_stream), except that backward takes scale
 * gradients and calls the hook on a second one, the gradient stream, which it joins before it
 * returns: the per-matrix kernels after each weight-gradient GEMM (scale gradient, the norm for
 * clipping, a policy's votes) are small and bound by latency, and in line the GEMMs wait for them.
 * The hook must put its work on the stream it is given.
 * Only forward (for the loss), download and the explicit read functions synchronise.
 * This header needs no CUDA header: streams are void *. */
#ifndef PRIMAL_MODEL_CUDA_H
#define PRIMAL_MODEL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <primal/error.h>
#include <primal/plugin.h>

#include "model.h"

#define PRIMAL_CUDA_FP32 0 /* float32 GEMMs, no TF32: the parity tests' mode */
#define PRIMAL_CUDA_BF16 1 /* bfloat16 GEMM operands, float32 accumulation and activations */

/* What backward makes again instead of keeping it from forward (primal_cuda_opts.recompute). */
#define PRIMAL_CUDA_KEEP_ALL 0      /* keep every block's activations */
#define PRIMAL_CUDA_RECOMPUTE_BLOCK 1 /* keep the block inputs; redo each block's forward */
#define PRIMAL_CUDA_RECOMPUTE_MLP 2 /* keep all but the MLP's gate|up, which backward makes again
                                     * with one GEMM over the kept post-attention norm */

typedef struct primal_cuda_opts {
    int precision;      /* PRIMAL_CUDA_FP32 or PRIMAL_CUDA_BF16 */
    int device;         /* CUDA device number */
    int64_t chunk_rows; /* matrices of more rows are multiplied, and handed to the hook, this
                         * many rows at a time (the embedding and LM head of a large
                         * vocabulary); 0: 8192 */
    size_t attn_bytes;  /* cap on the attention scratch (batch rows run in chunks); 0: 2 GiB */
    int attn_unfused;   /* 1: bf16 attention through cuBLAS and (T, T) scratch, as float32
                         * does, instead of the fused kernels (for comparisons) */
    size_t logits_bytes; /* cap on the logits slab and its dlogits; 0: 512 MiB */
    int recompute;      /* PRIMAL_CUDA_KEEP_ALL, _RECOMPUTE_BLOCK or _RECOMPUTE_MLP */
    int recompute_blocks; /* _RECOMPUTE_MLP: blocks [0, this) make gate|up again, the others
                           * keep it; 0: every block */
    int recompute_residual; /* 1: every block's mid residual h = x + o_proj(attention), float32
                             * (N, dim), is made again in backward with the o_proj GEMM from
                             * the kept input and attention output instead of kept; not with
                             * _RECOMPUTE_BLOCK, which keeps no block's h anyway */
    int norm_bf16;      /* 1: the blocks' RMSNorms read their float32 inputs (x, h) rounded to
                         * bfloat16, forward and backward, and backward keeps those roundings
                         * instead of x and h: 4 bytes x tokens x dim a block less, the residual
                         * stream still added in float32.  bf16 precision only; not with
                         * _RECOMPUTE_BLOCK or recompute_residual, which rebuild from x */
    int head_ahead;     /* primal_cuda_model_forward_train: 1 runs the LM head's backward in
                         * forward, -1 never, 0 (auto) when the head's whole G and W take at
                         * most logits_bytes */
    int logits_bf16;    /* 1 (bf16 precision only): forward_train rounds the logits, the LM
                         * head's GEMM output, to bfloat16 before the cross-entropy, as
                         * PyTorch's autocast does, which halves the bytes the cross-entropy
                         * reads; primal_cuda_model_forward keeps them float32 */
    int grads_inline;   /* 1: backward takes each G's scale gradient and calls the hook on the
                         * model's stream, in line (for comparisons); 0: on a second stream,
                         * the gradient stream, so they run beside the next matrices' GEMMs */
    int gemm_timed;     /* 1: each GEMM shape's algorithm is the fastest of cuBLAS's candidates,
                         * timed on its first call (which then synchronises the device); its
                         * bits may differ from run to run.  0: cuBLAS's heuristic choice */
} primal_cuda_opts;

/* One parameter as the GPU holds it.  Pointers are device pointers. */
typedef struct primal_cuda_param {
    primal_param *host; /* the CPU model's parameter (name, layer, shapes, host storage) */
    int index;          /* its number in the model (== q.id) */
    int is_matrix, layer;
    int64_t n;          /* elements: rows * cols, or the vector's length */
    /* matrices: the view handed to flip policies' CUDA entry points (primal/policy_cuda.h):
     * index, scale, dense and grid are device pointers, the rest as on the CPU */
    primal_qtensor q;
    float *dscale;      /* (rows) scale gradient, summed over micro-batches; NULL when frozen or
                         * dense */
    float *vec, *dvec;  /* vectors: (n) values and gradient (dvec NULL when frozen) */
    uint8_t trainable;
} primal_cuda_param;

/* Called by backward once per trainable matrix and micro-batch, for each row chunk of its
 * straight-through gradient: G is a DEVICE float32 (nrows, cols) tile of rows [r0, r0 + nrows),
 * valid until the stream has run the work the hook queues.  The hook queues its kernels on
 * stream and must not synchronise.  A non-zero return stops backward and is passed up. */
typedef int (*primal_cuda_grad_hook)(void *user, primal_cuda_param *p, const float *G,
                                     int64_t r0, int64_t nrows, void *stream, primal_err *err);

typedef struct primal_cuda_model primal_cuda_model;

/* Inside a hook call: a DEVICE pointer to max |G| over the tile (NaN skipped), found by the
 * scale gradient's pass over it, which work queued on the hook's stream before the call writes;
 * NULL outside a hook call and for tiles that pass does not cover (dense matrices, rows of a
 * width not a multiple of 8). */
const float *primal_cuda_grad_absmax(const primal_cuda_model *cm);


/* Number of CUDA devices (0 without a device or driver) and, if name is not NULL, the first
 * device's name.  Never fails. */
int primal_cuda_device_count(char *name, size_t n);

int primal_cuda_model_create(primal_model *cpu, const primal_cuda_opts *o,
                             primal_cuda_model **out, primal_err *err);
void primal_cuda_model_free(primal_cuda_model *cm);

int primal_cuda_model_nparams(const primal_cuda_model *cm);
primal_cuda_param *primal_cuda_model_param(primal_cuda_model *cm, int i);
void *primal_cuda_model_stream(primal_cuda_model *cm); /* a cudaStream_t */

/* As primal_model_forward: tokens and mask are host arrays; *loss (host) is the masked mean
 * cross-entropy (this call waits for it); logits, if not NULL, is a host (B, T, vocab) array. */
int primal_cuda_model_forward(primal_cuda_model *cm, const int32_t *tokens, const uint8_t *mask,
                              int B, int T, float *loss, float *logits, primal_err *err);

/* The forward of a training step, which a backward with the same loss_scale must follow.
 * Where head_ahead allows, it also runs the LM head's backward, token rows at a time over the
 * whole vocabulary: each row's logsumexp is then known when its dlogits are formed, so the
 * logits are computed once instead of again in backward (the vocabulary slabs of forward need
 * that).  It keeps dL/d(final norm output) and the head's whole G until backward, which hands
 * G to the hook in order.  Otherwise it is primal_cuda_model_forward. */
int primal_cuda_model_forward_train(primal_cuda_model *cm, const int32_t *tokens,
                                    const uint8_t *mask, int B, int T, float loss_scale,
                                    float *loss, primal_err *err);

/* As primal_model_backward: adds into dscale/dvec of trainable parameters, calls hook for each
 * trainable matrix (embedding last, LM head first; G chunked by chunk_rows rows), stops below
 * the lowest trainable parameter. */
int primal_cuda_model_backward(primal_cuda_model *cm, float loss_scale,
                               primal_cuda_grad_hook hook, void *user, primal_err *err);

int primal_cuda_model_zero_grad(primal_cuda_model *cm, primal_err *err);
/* trainable is (nparams); gradient buffers are allocated (zeroed) and freed to match. */
int primal_cuda_model_set_trainable(primal_cuda_model *cm, const uint8_t *trainable,
                                    primal_err *err);

/* Device -> the CPU model's indices, scales, vectors and dense matrices (waits). */
int primal_cuda_model_download(primal_cuda_model *cm, primal_model *cpu, primal_err *err);
/* The CPU model's values -> device (after a checkpoint was loaded into it). */
int primal_cuda_model_upload(primal_cuda_model *cm, const primal_model *cpu, primal_err *err);
int primal_cuda_model_sync(primal_cuda_model *cm, primal_err *err);

/* Which projections are multiplied as one stacked GEMM (where the stacked W fits the weight
 * workspace): PRIMAL_CUDA_STACK_QKV, PRIMAL_CUDA_STACK_GU, or'd. */
#define PRIMAL_CUDA_STACK_QKV 1
#define PRIMAL_CUDA_STACK_GU 2
int primal_cuda_model_stacks(const primal_cuda_model *cm);

/* Device memory: the model's own accounting (bytes now, by kind, and the peak of the sum) and
 * what the driver reports for the whole device.  The model's accounting covers only what it
 * allocates itself (primal_cuda_alloc included): not a flip policy's device state (which the
 * policies cudaMalloc themselves and report through their state_bytes), the CUDA context, or
 * cuBLAS's own workspaces.  device_used is cudaMemGetInfo's total - free, which sees the whole
 * device: the context, the libraries and every other process on it too.  Each call of
 * primal_cuda_model_memory samples it, and so does each of the model's own allocations;
 * device_peak is the largest sample so far. */
typedef struct primal_cuda_mem {
    size_t weights, grads, activations, workspace, other; /* other: primal_cuda_alloc */
    size_t peak;                                           /* highest sum seen */
    size_t device_free, device_total;                      /* cudaMemGetInfo, at this call */
    size_t device_used;                                    /* device_total - device_free */
    size_t device_peak;                                    /* the largest device_used sampled */
} primal_cuda_mem;
int primal_cuda_model_memory(primal_cuda_model *cm, primal_cuda_mem *out, primal_err *err);

/* The GEMM plans so far: shapes met, how many were timed (gemm_timed), and over those the summed
 * time of one call each with cuBLAS's heuristic choice and with the algorithm taken. */
typedef struct primal_cuda_gemm_stats {
    int shapes, timed;
    double heuristic_us, chosen_us;
} primal_cuda_gemm_stats;
void primal_cuda_model_gemm_stats(const primal_cuda_model *cm, primal_cuda_gemm_stats *out);
/* The plans as bytes for a checkpoint (returns the size; writes them where cap allows), and
 * back: *taken plans, 0 when they were made on another GPU or cuBLASLt version. */
size_t primal_cuda_model_gemm_export(const primal_cuda_model *cm, void *buf, size_t cap);
int primal_cuda_model_gemm_import(primal_cuda_model *cm, const void *buf, size_t n, int *taken,
                                  primal_err *err);

/* Zeroed device memory for the trainer (AdamW moments), counted under "other"; free with the
 * same byte count. */
int primal_cuda_alloc(primal_cuda_model *cm, size_t bytes, void **out, primal_err *err);
void primal_cuda_free(primal_cuda_model *cm, void *p, size_t bytes);
/* Host <-> device copies on the model's stream that return once done (checkpoints). */
int primal_cuda_download_bytes(primal_cuda_model *cm, void *host, const void *dev, size_t n,
                               primal_err *err);
int primal_cuda_upload_bytes(primal_cuda_model *cm, void *dev, const void *host, size_t n,
                             primal_err *err);
/* Zeroes n bytes of device memory, queued on the model's stream (no wait). */
int primal_cuda_zero_bytes(primal_cuda_model *cm, void *dev, size_t n, primal_err *err);

/* AdamW over many float tensors (scales, norms, biases) in one kernel launch on the model's
 * stream.  w, g, m, v are device pointers; t is this tensor's step count including this step
 * (bias corrections 1 − β^t).  The update is core/train.c's, in double. */
typedef struct primal_cuda_adamw_tensor {
    float *w;
    const float *g;
    float *m, *v;
    int64_t n, t;
} primal_cuda_adamw_tensor;
typedef struct primal_cuda_adamw_hp {
    double lr, beta1, beta2, eps, weight_decay;
    double grad_scale; /* the clipping factor (<= 1) applied to every gradient first */
} primal_cuda_adamw_hp;
int primal_cuda_adamw(primal_cuda_model *cm, const primal_cuda_adamw_tensor *list, int n,
                      const primal_cuda_adamw_hp *hp, primal_err *err);

/* Gradient norm for clipping: backward adds Σ G² of every G it hands the hook to the model's
 * accumulator (in the scale gradient's pass over G); float_grads adds every trainable
 * dscale/dvec; read waits, returns the sum and, with reset, zeroes it.  Deterministic
 * (fixed-order reductions). */
int primal_cuda_sumsq_float_grads(primal_cuda_model *cm, primal_err *err);
int primal_cuda_sumsq_read(primal_cuda_model *cm, double *out, int reset, primal_err *err);

#endif
