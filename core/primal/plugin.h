/* primal/plugin.h: the plugin ABI.
 *
 * A plugin is a shared object that exports one function, primal_plugin_descriptor(), returning
 * a static const primal_plugin.  The descriptor names the plugin, lists the configuration keys it
 * accepts and points at the vtable of its kind.  The core checks, in turn: the symbol exists, the
 * ABI major version matches, `size` covers what the core reads, `kind` matches the INI section,
 * `name` matches the INI value; then every key of the plugin's INI section is validated against
 * `keys` before the plugin sees it (so a plugin never parses text).
 *
 * Vtables only grow by appending members; each starts with its `size` (sizeof at the plugin's
 * build) so the core knows which members exist.  A NULL optional member means "use the default",
 * as each member's comment says.
 *
 * Plugins include only the public headers (<primal/...>) and call only primal_* functions. */
#ifndef PRIMAL_PLUGIN_H
#define PRIMAL_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include <primal/error.h>
#include <primal/rng.h>
#include <primal/tokenizer.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Major in the high 16 bits, minor in the low 16.  The core loads a plugin whose major equals its
 * own and whose minor is not newer. */
#define PRIMAL_ABI_MAJOR 1
#define PRIMAL_ABI_MINOR 5 /* 1: primal/datafiles.h; 2: vote all-reduce, tokenizer_separator;
                            * 3: primal_policy_cuda_vt.step_async; 4: step_async's slot
                            * arrives zeroed; 5: primal_accum_info.g_absmax */
#define PRIMAL_ABI_VERSION ((uint32_t)(PRIMAL_ABI_MAJOR << 16 | PRIMAL_ABI_MINOR))
#define PRIMAL_PLUGIN_SYMBOL "primal_plugin_descriptor"

#if defined(_WIN32)
#define PRIMAL_EXPORT __declspec(dllexport)
#else
#define PRIMAL_EXPORT __attribute__((visibility("default")))
#endif

typedef enum primal_kind {
    PRIMAL_KIND_GRID = 1,      /* INI section [grid] and [grid.TENSOR] */
    PRIMAL_KIND_POLICY = 2,    /* [flip] */
    PRIMAL_KIND_SCHEDULER = 3, /* [scheduler] plugins = a, b; keys in [a], [b] */
    PRIMAL_KIND_LOADER = 4,    /* [data] */
} primal_kind;

/* ------------------------------------------------------------------------------------------ */
/* Configuration keys                                                                         */

typedef enum primal_key_type {
    PRIMAL_KEY_INT = 1,    /* decimal integer, 64-bit */
    PRIMAL_KEY_FLOAT = 2,  /* C float syntax, finite */
    PRIMAL_KEY_BOOL = 3,   /* true/false, yes/no, on/off, 1/0 */
    PRIMAL_KEY_STRING = 4, /* any text */
    PRIMAL_KEY_ENUM = 5,   /* one of the words in `range`, "a|b|c" */
} primal_key_type;

typedef struct primal_key {
    const char *name;
    primal_key_type type;
    const char *def;   /* default, written as in an INI file; NULL means the key is required */
    const char *help;  /* one line, shown by primal-run --describe */
    /* INT/FLOAT: an interval such as "[1,32760]", "(0,1)", "[0,inf)"; ENUM: "a|b|c";
     * NULL: no constraint.  The core enforces it and names the range in its error. */
    const char *range;
} primal_key;

/* One plugin's resolved configuration section.  Opaque; owned by the core, valid until the
 * plugin's destroy/close.  Every declared key has a value (default or given), already checked
 * against its type and range, so the getters cannot fail.  Asking for an undeclared key or the
 * wrong type returns 0 / NULL. */
typedef struct primal_config primal_config;

int64_t primal_cfg_int(const primal_config *c, const char *key);
double primal_cfg_float(const primal_config *c, const char *key);
int primal_cfg_bool(const primal_config *c, const char *key);
const char *primal_cfg_str(const primal_config *c, const char *key); /* STRING and ENUM */
int primal_cfg_is_set(const primal_config *c, const char *key); /* 1 if given, 0 if defaulted */
const char *primal_cfg_section(const primal_config *c);         /* "flip", "night_shift", ... */
/* Directory of the experiment file, so that relative paths in values resolve against it. */
const char *primal_cfg_dir(const primal_config *c);

/* For checks a range cannot express (e.g. "residual_bits must be 4 or 8"): fills err with
 * "FILE:LINE: [section] key: " + the formatted text and returns code.  LINE is the key's line,
 * or the section's line for a defaulted key. */
int primal_cfg_errf(const primal_config *c, const char *key, primal_err *err, int code,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ------------------------------------------------------------------------------------------ */
/* The descriptor                                                                             */

typedef struct primal_plugin {
    uint32_t abi_version;    /* PRIMAL_ABI_VERSION as the plugin was built */
    uint32_t size;           /* sizeof(primal_plugin) as the plugin was built */
    primal_kind kind;
    const char *name;        /* what the INI file writes as plugin = NAME */
    const char *description; /* one line */
    const primal_key *keys;  /* terminated by an entry with name == NULL; NULL = no keys */
    const void *vtable;      /* primal_grid_vt, primal_policy_vt, primal_scheduler_vt or
                              * primal_loader_vt, by kind */
} primal_plugin;

typedef const primal_plugin *(*primal_plugin_fn)(void);

/* ------------------------------------------------------------------------------------------ */
/* Grid (look-up table generator)                                                             */

#define PRIMAL_GRID_MAX 65536

typedef struct primal_grid_vt {
    size_t size; /* sizeof(primal_grid_vt) */
    /* Write the grid's values, ascending, into values (capacity PRIMAL_GRID_MAX) and their count
     * into *n.  Called once per grid section.  The core then checks: ascending, distinct,
     * finite, within [-1, 1], 2..65536 entries. */
    int (*generate)(const primal_config *cfg, float *values, size_t *n, primal_err *err);
} primal_grid_vt;

/* ------------------------------------------------------------------------------------------ */
/* Flip policy                                                                                */

/* The view of one weight matrix that a policy works on: W[r][c] = grid[index[r][c]] * scale[r].
 * Index storage is row-major and packed by `bits`: 4 (two per byte, the even column in the low
 * nibble), 8 (uint8) or 16 (uint16, native endian); each row starts at index + r * row_stride.
 * For PRIMAL_STORAGE_DENSE (the adamw baseline) bits is 32 and `dense` holds W itself. */
typedef struct primal_qtensor {
    const char *name;   /* Hugging Face name, e.g. "model.layers.0.mlp.down_proj.weight" */
    int id;             /* stable number within the model: use it as the RNG stream's tensor id */
    int64_t rows, cols; /* W is (rows, cols): out_features x in_features */
    int bits;           /* 4, 8, 16, or 32 for dense */
    void *index;        /* packed (rows, row_stride bytes); NULL when dense */
    int64_t row_stride; /* bytes per index row */
    float *scale;       /* (rows) per-row scale, trained by the core's AdamW; NULL when dense */
    float *dense;       /* (rows, cols) float weights; NULL unless dense */
    const float *grid;  /* (grid_size) ascending values in [-1, 1] */
    int grid_size;
} primal_qtensor;

static inline uint32_t primal_index_get(const primal_qtensor *t, int64_t r, int64_t c)
{
    const uint8_t *row = (const uint8_t *)t->index + r * t->row_stride;
    if (t->bits == 4)
        return (row[c >> 1] >> ((c & 1) * 4)) & 0xFu;
    if (t->bits == 8)
        return row[c];
    return ((const uint16_t *)row)[c];
}

static inline void primal_index_set(const primal_qtensor *t, int64_t r, int64_t c, uint32_t v)
{
    uint8_t *row = (uint8_t *)t->index + r * t->row_stride;
    if (t->bits == 4) {
        int sh = (int)(c & 1) * 4;
        row[c >> 1] = (uint8_t)((row[c >> 1] & ~(0xFu << sh)) | ((v & 0xFu) << sh));
    } else if (t->bits == 8) {
        row[c] = (uint8_t)v;
    } else {
        ((uint16_t *)row)[c] = (uint16_t)v;
    }
}

typedef enum primal_storage {
    PRIMAL_STORAGE_INDEXED = 0, /* index + scale over a grid: every shadowless policy */
    PRIMAL_STORAGE_DENSE = 1,   /* float32 W: the adamw baseline only */
} primal_storage;

/* Facts about the run that a policy may need at create time. */
typedef struct primal_policy_info {
    uint64_t seed;       /* [run] seed */
    int64_t total_steps; /* [run] steps */
    int device;          /* PRIMAL_DEVICE_CPU or PRIMAL_DEVICE_CUDA */
    /* ABI 1.2: [run] reduce = votes.  A policy that supports it (vote_increments below)
     * accumulates each step's vote increments apart from its votes, so that the core can sum
     * them across ranks before step(). */
    int reduce_votes;
} primal_policy_info;

#define PRIMAL_DEVICE_CPU 0
#define PRIMAL_DEVICE_CUDA 1

/* Per micro-batch. */
typedef struct primal_accum_info {
    int64_t step;  /* optimizer step being accumulated, from 0 */
    int micro;     /* micro-batch number within the step, 0..n_micro-1 */
    int n_micro;   /* micro-batches in this step (grad_accum, may change by scheduler) */
    uint64_t seed; /* [run] seed */
    double lr;     /* the policy's own lr already multiplied by the [optim] warmup/decay factor and
                    * the schedulers' multiplier; policies without an lr ignore it */
    double lr_mult; /* that multiplier alone (for policies whose lr is a key of their own) */
    /* ABI 1.5: max |G| over this call's tile (NaN skipped), which the core found in its own pass
     * over G, so that a policy normalising by it need not read G once more; NULL where the core
     * has none (the CPU engine, and tiles its pass does not cover).  On a CUDA run it is a
     * DEVICE pointer, written by work queued on the call's stream before the call. */
    const float *g_absmax;
} primal_accum_info;

/* Per optimizer step. */
typedef struct primal_step_info {
    int64_t step;
    int n_micro;
    uint64_t seed;
    double lr_mult; /* [optim] warmup/decay factor times the schedulers' multiplier */
    /* Gradient clipping ([optim] clip): the factor (<= 1) by which this step's accumulated
     * gradients are to be multiplied, known only once backward is complete.  Policies that keep
     * a float gradient (the adamw baselines) apply it; the others may ignore it. */
    double clip_scale;
} primal_step_info;

/* What step() reports for one tensor; the core sums and logs it. */
typedef struct primal_step_stats {
    int64_t flips;     /* indices moved this step */
    int64_t saturated; /* votes / residuals at their saturation limit after the step */
    int64_t weights;   /* weights considered (rows * cols) */
} primal_step_stats;

struct primal_policy_cuda_vt; /* primal/policy_cuda.h */

typedef struct primal_policy_vt {
    size_t size; /* sizeof(primal_policy_vt) */
    primal_storage storage;

    /* Once per run, after the [flip] section is validated.  *ctx is the policy's own; NULL is
     * fine.  Reject value combinations here with primal_cfg_errf. */
    int (*create)(const primal_config *cfg, const primal_policy_info *info, void **ctx,
                  primal_err *err);
    void (*destroy)(void *ctx); /* optional */

    /* When a tensor becomes trainable (at start, or when a scheduler unfreezes it): allocate its
     * per-weight state.  Frozen tensors never get state.  *state may be NULL. */
    int (*tensor_init)(void *ctx, const primal_qtensor *t, void **state, primal_err *err);
    void (*tensor_free)(void *ctx, const primal_qtensor *t, void *state); /* optional */
    /* Bytes of state held for t (for the memory report and the checkpoint). */
    size_t (*state_bytes)(void *ctx, const primal_qtensor *t, const void *state);

    /* Optional first pass for policies that need tensor-wide statistics of one micro-batch's G
     * before they can vote (max|G|, mean and std of |G|).  The core calls observe() on every row
     * chunk of G, then accumulate() on every chunk, in row order.  NULL: accumulate only. */
    int (*observe)(void *ctx, void *state, const primal_qtensor *t, const float *G, int64_t r0,
                   int64_t nrows, const primal_accum_info *ai, primal_err *err);
    /* One micro-batch's straight-through gradient dL/dW for rows [r0, r0 + nrows): G is
     * (nrows, cols) float32, valid only during the call.  Update votes / momentum here. */
    int (*accumulate)(void *ctx, void *state, const primal_qtensor *t, const float *G, int64_t r0,
                      int64_t nrows, const primal_accum_info *ai, primal_err *err);
    /* Once per optimizer step, after every micro-batch: move indices (or, dense, weights). */
    int (*step)(void *ctx, void *state, const primal_qtensor *t, const primal_step_info *si,
                primal_step_stats *stats, primal_err *err);

    /* Checkpoints: serialise the state into exactly state_bytes() bytes, and back.  The core
     * stores it beside the tensor; restore is called on freshly tensor_init'ed state. */
    int (*state_save)(void *ctx, const primal_qtensor *t, const void *state, void *buf,
                      primal_err *err);
    int (*state_load)(void *ctx, const primal_qtensor *t, void *state, const void *buf,
                      size_t n, primal_err *err);

    /* GPU entry points (primal/policy_cuda.h); NULL: the policy has no CUDA version and a run
     * with [run] device = cuda is refused with an error naming the policy. */
    const struct primal_policy_cuda_vt *cuda;

    /* ABI 1.2, optional ([run] reduce = votes; SPEC.md, "Data parallelism"), for a policy whose
     * accumulate is a sum over micro-batches.  With primal_policy_info.reduce_votes set, the
     * policy adds each micro-batch's vote increments into an int32 buffer of its state instead
     * of its votes; after the step's last micro-batch the core sums that buffer across the
     * ranks (integers: exact) through the pointer returned here, and step() first adds the
     * summed increments into the votes and clears the buffer.  *buf: n int32s, t's weights in
     * row-major order.  NULL: the policy cannot reduce votes, and the core refuses the run. */
    int (*vote_increments)(void *ctx, void *state, const primal_qtensor *t, int32_t **buf,
                           size_t *n, primal_err *err);
} primal_policy_vt;

/* ------------------------------------------------------------------------------------------ */
/* Scheduler                                                                                  */

/* What the schedulers may change for one step.  Before every step the core resets the view to
 * the experiment's base values (everything trainable, [run] seq_len and grad_accum, lr_mult 1),
 * then calls each scheduler's apply() in the listed order.  So apply() must be a function of
 * the step and the configuration alone: a resumed run then gets the same schedule. */
typedef struct primal_sched_view {
    int64_t step;        /* the step about to run, from 0 */
    int64_t total_steps; /* [run] steps */
    int n_layers;        /* transformer blocks */
    int n_tensors;       /* trainable parameters of the model: matrices and vectors */
    const char *const *tensor_names; /* (n_tensors) Hugging Face names */
    /* (n_tensors) block number 0..n_layers-1, or -1 for the embedding, -2 for the final norm,
     * -3 for the LM head. */
    const int *tensor_layer;
    uint8_t *trainable;  /* (n_tensors) in/out: 1 trains this step */
    int seq_len;         /* in/out */
    int grad_accum;      /* in/out */
    double lr_mult;      /* in/out: multiply, do not assign */
} primal_sched_view;

typedef struct primal_scheduler_vt {
    size_t size; /* sizeof(primal_scheduler_vt) */
    int (*create)(const primal_config *cfg, void **ctx, primal_err *err);
    void (*destroy)(void *ctx); /* optional */
    int (*apply)(void *ctx, primal_sched_view *v, primal_err *err);
} primal_scheduler_vt;

/* ------------------------------------------------------------------------------------------ */
/* Data loader                                                                                */

#define PRIMAL_SPLIT_TRAIN 0
#define PRIMAL_SPLIT_VAL 1

typedef struct primal_loader_info {
    primal_tokenizer *tok; /* the run's tokenizer ([data] tokenizer); owned by the core.  One
                            * handle per loader instance, so the loader's thread may use it. */
    int split;             /* PRIMAL_SPLIT_TRAIN or PRIMAL_SPLIT_VAL */
    uint64_t seed;         /* [run] seed */
    int rank, nranks;      /* data-parallel rank: read a disjoint share */
} primal_loader_info;

/* One micro-batch.  The core allocates tokens and mask for rows x (seq_len + 1) before calling
 * next() (pinned host memory on CUDA runs). */
typedef struct primal_batch {
    int rows;
    int seq_len;
    int32_t *tokens; /* (rows, seq_len + 1): inputs are [0, seq_len), targets [1, seq_len] */
    uint8_t *mask;   /* (rows, seq_len): 1 where predicting token k+1 from k counts in the loss */
} primal_batch;

typedef struct primal_loader_vt {
    size_t size; /* sizeof(primal_loader_vt) */
    /* Open one split.  The core opens the train split, and the val split if evaluation runs.
     * Return PRIMAL_EOF from open for a val split that is empty by configuration. */
    int (*open)(const primal_config *cfg, const primal_loader_info *info, void **ctx,
                primal_err *err);
    void (*close)(void *ctx);
    /* Fill b (rows and seq_len are set by the core, which may change seq_len between calls).
     * The train split never ends (it starts a new epoch); the val split returns PRIMAL_EOF once
     * it is exhausted, and starts over after rewind(). Called from the core's prefetch thread. */
    int (*next)(void *ctx, primal_batch *b, primal_err *err);
    int (*rewind)(void *ctx, primal_err *err); /* optional for the train split */
    /* Exact position, for bit-identical resume: save writes at most cap bytes into buf and sets
     * *n; restore gets the same bytes back on a freshly opened loader. */
    int (*save)(void *ctx, void *buf, size_t cap, size_t *n, primal_err *err);
    int (*restore)(void *ctx, const void *buf, size_t n, primal_err *err);
} primal_loader_vt;

#define PRIMAL_LOADER_STATE_MAX 4096

#ifdef __cplusplus
}
#endif
#endif
