/* model.h (private to libprimal): the decoder-only Llama/Qwen2 model on the CPU.
 *
 * Token embedding, N blocks of (RMSNorm -> attention with RoPE, grouped-query heads, optional
 * q/k/v bias -> residual -> RMSNorm -> SwiGLU MLP -> residual), final RMSNorm, LM head (tied to
 * the embedding or not).  SPEC.md, "Models".
 *
 * Every 2-D weight is a matrix parameter stored as index + per-row scale over a grid
 * (W[r][c] = grid[index[r][c]] * scale[r]), or as float32 for the dense baseline.  1-D weights
 * (norms, biases) and the scales are float parameters.
 *
 * Backward produces dL/dW of a matrix one tensor at a time into a reused workspace, computes the
 * scale gradient from it, hands it to the grad hook (the flip policy's accumulate) and drops it.
 * No float copy of all weights or all gradients exists.  Float parameters get gradient buffers
 * only while trainable. */
#ifndef PRIMAL_MODEL_H
#define PRIMAL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include <primal/error.h>
#include <primal/plugin.h>

#define PRIMAL_ARCH_LLAMA 0
#define PRIMAL_ARCH_QWEN2 1

typedef struct primal_model_config {
    int arch;          /* PRIMAL_ARCH_LLAMA or PRIMAL_ARCH_QWEN2 (only the name differs) */
    int vocab, dim, layers, heads, kv_heads, ffn;
    double rope_theta; /* RoPE base; HF rotate_half convention (first/second half pairs) */
    double norm_eps;   /* RMSNorm: x / sqrt(mean(x^2) + eps) * w */
    int tied;          /* LM head shares the embedding matrix */
    int qkv_bias;      /* q/k/v projections have biases (Qwen2) */
} primal_model_config;

/* Where a parameter sits, for schedulers and for "backward stops below the lowest trainable". */
#define PRIMAL_LAYER_EMBED (-1)
#define PRIMAL_LAYER_FINAL_NORM (-2)
#define PRIMAL_LAYER_HEAD (-3)

typedef struct primal_param {
    char name[96];    /* Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight" */
    int layer;        /* block number, or PRIMAL_LAYER_* */
    int is_matrix;
    /* matrices (is_matrix): the view handed to flip policies (q.index/q.scale or q.dense) */
    primal_qtensor q;
    float *dscale;    /* (rows) scale gradient, summed over micro-batches; NULL when frozen */
    /* vectors (!is_matrix) */
    float *vec;       /* (n) */
    float *dvec;      /* (n) gradient, summed over micro-batches; NULL when frozen */
    int64_t n;
    uint8_t trainable;
} primal_param;

typedef struct primal_model primal_model;

/* Called by backward once per trainable matrix and micro-batch with its straight-through
 * gradient rows [r0, r0 + nrows) (float32, (nrows, cols), valid during the call only).  A
 * non-zero return stops backward and is passed up. */
typedef int (*primal_grad_hook)(void *user, primal_param *p, const float *G, int64_t r0,
                                int64_t nrows, primal_err *err);

/* A grid a matrix is stored over: the values stay owned by the caller for the model's life. */
typedef struct primal_grid_ref {
    const char *name; /* "prime13", ... (recorded in checkpoints) */
    const float *values;
    int size;         /* 2..65536: index bits are 4 (<=16), 8 (<=256) or 16 */
} primal_grid_ref;

/* How each matrix is stored.  grid_for may return NULL for "dense" (float32 storage). */
typedef const primal_grid_ref *(*primal_grid_for)(void *user, const char *tensor_name);

/* The largest sizes a model may have: the ranges of the INI's [model] keys (core/experiment.c).
 * A checkpoint or a Hugging Face config.json naming more is refused before any allocation. */
#define PRIMAL_MODEL_MAX_VOCAB 16777216
#define PRIMAL_MODEL_MAX_DIM 65536
#define PRIMAL_MODEL_MAX_LAYERS 1024
#define PRIMAL_MODEL_MAX_HEADS 1024
#define PRIMAL_MODEL_MAX_FFN 1048576

/* Check a config without allocating anything: arch, every size at least 1 and at most its
 * PRIMAL_MODEL_MAX_*, an even head size, heads a multiple of kv_heads, rope_theta and norm_eps
 * positive and finite.  PRIMAL_ECONFIG with the values. */
int primal_model_check_config(const primal_model_config *mc, primal_err *err);

/* One parameter of a model's layout. */
typedef struct primal_param_desc {
    const char *name; /* Hugging Face name; valid during the call only */
    int layer;        /* block number, or PRIMAL_LAYER_* */
    int is_matrix;
    int64_t rows;     /* a vector's length */
    int64_t cols;     /* 0 for a vector */
} primal_param_desc;

typedef int (*primal_param_fn)(void *user, const primal_param_desc *d, primal_err *err);

/* Call fn once for every parameter a model of config mc has, in primal_model_param order,
 * without allocating anything, so that a file's tensors can be checked against a config before
 * a model is built from it.  Stops at fn's first non-PRIMAL_OK return and passes it up;
 * PRIMAL_ECONFIG when mc fails primal_model_check_config. */
int primal_model_layout(const primal_model_config *mc, primal_param_fn fn, void *user,
                        primal_err *err);

/* Allocate a model with every parameter present and zeroed (indices 0, scales 1, norms 1). */
int primal_model_create(const primal_model_config *mc, primal_grid_for grid_for, void *user,
                        primal_model **out, primal_err *err);
void primal_model_free(primal_model *m);

const primal_model_config *primal_model_cfg(const primal_model *m);
int primal_model_nparams(const primal_model *m);
primal_param *primal_model_param(primal_model *m, int i);
primal_param *primal_model_find(primal_model *m, const char *name); /* NULL: absent */
/* The grid a matrix parameter is stored over (NULL for dense). */
const primal_grid_ref *primal_model_grid(const primal_model *m, int i);

/* Random initialisation: W ~ N(0, std) drawn from the counter-based RNG with seed, then snapped
 * onto the grid (per-row absmax scale, nearest value, ties to the lower index).  Norm weights 1,
 * biases 0. */
int primal_model_init_random(primal_model *m, uint64_t seed, float std, primal_err *err);

/* Snap a float row-major (rows, cols) matrix onto parameter p's grid (or copy, if dense). */
int primal_model_set_matrix(primal_model *m, primal_param *p, const float *w, primal_err *err);
/* Dequantise rows [r0, r0 + nrows) of p into out ((nrows, cols) float32). */
void primal_model_get_rows(const primal_model *m, const primal_param *p, int64_t r0,
                           int64_t nrows, float *out);

/* Change which parameters train.  trainable is (nparams).  Gradient buffers of float
 * parameters are allocated for newly trainable ones and freed for newly frozen ones. */
int primal_model_set_trainable(primal_model *m, const uint8_t *trainable, primal_err *err);

/* Options that change how, not what, the model computes. */
typedef struct primal_model_opts {
    int threads;   /* OpenMP threads; 0 = leave OpenMP's default */
    int recompute; /* keep only block inputs and recompute each block in backward */
} primal_model_opts;
void primal_model_set_opts(primal_model *m, const primal_model_opts *o);

/* Forward on B rows of T+1 tokens (inputs [0, T), targets [1, T]).  Writes the mean
 * cross-entropy over positions with mask 1 (mask NULL: all B*T positions count) into *loss and,
 * if logits is not NULL, the (B, T, vocab) logits.  Keeps what backward needs.  A token outside
 * [0, vocab) is an error naming its row and position.  Activation buffers grow as needed. */
int primal_model_forward(primal_model *m, const int32_t *tokens, const uint8_t *mask, int B,
                         int T, float *loss, float *logits, primal_err *err);

/* Backward of the last forward's mean loss times loss_scale (1/k with k micro-batches, so that
 * the gradients summed over the step are the mean).  Adds into dscale/dvec of trainable
 * parameters and calls hook for every trainable matrix.  Stops below the lowest trainable
 * parameter. */
int primal_model_backward(primal_model *m, float loss_scale, primal_grad_hook hook, void *user,
                          primal_err *err);

/* Zero dscale/dvec of every trainable parameter (start of an optimizer step). */
void primal_model_zero_grad(primal_model *m);

/* Bytes held: weights (index + scales + vectors), gradient buffers, activations. */
typedef struct primal_model_mem {
    size_t weights, grads, activations, workspace;
} primal_model_mem;
void primal_model_memory(const primal_model *m, primal_model_mem *out);

#endif
