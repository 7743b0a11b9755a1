/* experiment.h (private to libprimal): an experiment file, resolved.
 *
 * Loading binds every section of the INI file to whoever declared its keys: the core ([run],
 * [model], [optim], [data]'s plugin and tokenizer, [scheduler]'s plugins), the grid plugin
 * ([grid] and each [grid.TENSOR] override), the flip policy ([flip]), each scheduler ([NAME])
 * and the data loader (the rest of [data]).  Plugins are loaded along the search path.  Anything
 * left over (a section or key nobody declared) is an error naming file and line.  A relative path
 * that the file gives resolves against the file's directory, one that --set gives against the
 * current directory (README, "Paths").  SPEC.md, "The experiment file and the run directory". */
#ifndef PRIMAL_EXPERIMENT_H
#define PRIMAL_EXPERIMENT_H

#include <stdint.h>

#include "config.h"
#include "grid.h"
#include "model.h"
#include "registry.h"

typedef struct primal_run_cfg {
    const char *out; /* the run directory: [run] out by the rule of paths (README, "Paths"), or
                      * runs/<experiment file name> in the current directory */
    int64_t steps;
    int batch, seq_len, grad_accum;
    uint64_t seed;
    int64_t ckpt_every, eval_every, log_every;
    int eval_batches;
    int device; /* PRIMAL_DEVICE_CPU / _CUDA */
    int threads;
    int recompute; /* PRIMAL_RECOMPUTE_* */
    int recompute_blocks; /* MLP: blocks [0, this) recompute, the rest keep; 0: all */
    int recompute_residual; /* CUDA: blocks make their mid residual again in backward */
    int norm_bf16;          /* CUDA: [run] norm_input = bf16 (primal_cuda_opts.norm_bf16) */
    int head_ahead;       /* primal_cuda_opts.head_ahead: 0 auto, 1 on, -1 off */
    int logits_bf16;      /* primal_cuda_opts.logits_bf16 */
    int grad_stream;      /* !primal_cuda_opts.grads_inline */
    int gemm_timed;       /* [run] gemm = timed (primal_cuda_opts.gemm_timed) */
    int reduce_votes;
    int sample_tokens;
    const char *sample_prompt;
} primal_run_cfg;

/* [run] recompute: false, true (whole blocks), mlp (the MLP's gate|up only; CUDA).  The values
 * are primal_cuda_opts.recompute's. */
enum { PRIMAL_RECOMPUTE_NONE, PRIMAL_RECOMPUTE_BLOCK, PRIMAL_RECOMPUTE_MLP };

typedef struct primal_optim_cfg {
    double lr, beta1, beta2, eps, weight_decay, min_lr, clip;
    int64_t warmup;
    int schedule; /* 0 constant, 1 cosine, 2 linear */
} primal_optim_cfg;

typedef struct primal_grid_override {
    char *pattern; /* Hugging Face name or fnmatch glob */
    primal_grid *grid;
} primal_grid_override;

typedef struct primal_experiment {
    primal_ini *ini;
    primal_search search;
    primal_config *run_c, *model_c, *optim_c, *data_c, *sched_c;
    primal_run_cfg run;
    primal_optim_cfg optim;
    primal_model_config model;
    const char *model_init; /* "random", a checkpoint, or a Hugging Face directory (a path
                             * resolved by the rule of paths, README "Paths") */
    char *model_init_path;  /* owns that path */
    double init_std;
    const char *tokenizer; /* [data] tokenizer: "bytes" or a path (resolved likewise; one
                            * --set gives is made absolute, as config.ini records it) */
    char *tokenizer_path;  /* owns the absolute path */

    primal_grid *grid; /* [grid] */
    primal_grid_ref grid_ref;
    primal_grid_override *overrides;
    primal_grid_ref *override_refs;
    int n_overrides;

    primal_loaded *policy;
    primal_config *policy_c;
    primal_loaded **scheds;
    primal_config **sched_cs;
    int n_scheds;
    primal_loaded *loader;
    primal_config *loader_c;
} primal_experiment;

/* sets: "section.key=value" overrides (NULL-terminated, may be NULL); plugin_dirs likewise.
 * Refused too (PRIMAL_ECONFIG): an experiment whose resolved configuration would not load
 * again as it is, a line over PRIMAL_INI_MAX_LINE characters (a relative path once made
 * absolute, a long --set value) or a value the reader would read otherwise, with the file and
 * line (or --set), section and key of the value. */
int primal_experiment_load(const char *path, const char *const *sets,
                           const char *const *plugin_dirs, primal_experiment **out,
                           primal_err *err);
void primal_experiment_free(primal_experiment *e);

/* The fully resolved configuration, every key of every section with its value (defaults
 * included), as INI text; malloc'ed. */
char *primal_experiment_resolved(const primal_experiment *e);

/* The grid a tensor is stored over: the last matching [grid.PATTERN] override, else [grid];
 * NULL when the policy stores dense matrices.  (Signature of primal_grid_for.) */
const primal_grid_ref *primal_experiment_grid_for(void *e, const char *tensor_name);

/* What a run refuses at start, once the file has loaded, short of building the model and
 * training (primal-run --check): the tokenizer and [model] init are opened (a checkpoint's
 * matrices must be over the experiment's grids, a Hugging Face directory's weights must match
 * its config.json), the policy and every scheduler are created (their create() checks) and
 * destroyed, the loader's train and validation splits are opened and closed, and last the
 * device and reduce checks of primal_experiment_check_run, for one rank.  The messages are
 * the run's. */
int primal_experiment_check(primal_experiment *e, primal_err *err);

/* The run's checks of [run] device and reduce against this build, this machine, the policy and
 * nranks ranks (train.c calls it first at set-up). */
int primal_experiment_check_run(const primal_experiment *e, int nranks, primal_err *err);

/* The core's own key tables, for --describe and the docs.  [grid] and [flip]: only the plugin
 * key is the core's, the plugin declares the rest ([grid]'s table, primal_grid_core_keys, is in
 * grid.h).  A default plugin is the def of the table's plugin key, never a name in code. */
extern const primal_key primal_run_keys[], primal_model_keys[], primal_optim_keys[],
    primal_data_keys[], primal_scheduler_keys[], primal_flip_core_keys[];

#endif
