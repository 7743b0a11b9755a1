/* train.h (private to libprimal): the training loop behind primal-run.
 *
 * Per optimizer step (SPEC.md, "The forward and backward pass", "Flip policies", "Schedulers"):
 * the schedulers set the trainable tensors, seq_len, grad_accum and an lr multiplier; then for
 * each micro-batch, forward and backward, with every trainable matrix's gradient handed to the
 * flip policy's observe/accumulate as backward produces it; then AdamW on the float parameters
 * (scales, norms, biases) and the policy's step on each trainable matrix.  The run directory
 * gets config.ini, log.jsonl, checkpoints and sample.txt; one run owns it (a run into a directory
 * that holds another's checkpoints or log is refused unless it resumes or overwrites), and it is
 * created only once everything has been set up, so a run that fails at start leaves none.  The
 * library prints nothing: progress, warnings and the final sample reach the program through a
 * callback. */
#ifndef PRIMAL_TRAIN_H
#define PRIMAL_TRAIN_H

#include <signal.h>
#include <stdint.h>

#include "dist.h"
#include "experiment.h"

typedef enum primal_event_kind {
    PRIMAL_EV_START = 1, /* message: a summary of the run (model, state bytes, ...) */
    PRIMAL_EV_STEP,      /* a logged training step */
    PRIMAL_EV_EVAL,      /* val_loss */
    PRIMAL_EV_SCHED,     /* message: what a scheduler changed */
    PRIMAL_EV_CKPT,      /* message: the checkpoint written */
    PRIMAL_EV_WARN,      /* message */
    PRIMAL_EV_SAMPLE,    /* message: the sampled text */
    PRIMAL_EV_DONE,
} primal_event_kind;

typedef struct primal_event {
    primal_event_kind kind;
    int64_t step, total_steps;
    double loss, val_loss, lr, tokens_per_s, flip_frac, eta_s;
    int64_t flips, saturated, trainable;
    /* STEP and DONE.  peak_mem_bytes: on a CUDA run the peak of the model's own buffers (not
     * the policy's state, the CUDA context or cuBLAS's workspaces), else the process's peak
     * resident set; policy_state_bytes: the flip policy's state now (its state_bytes over the
     * trainable matrices); device_used_bytes, device_peak_bytes: a CUDA run's whole-device use
     * (cudaMemGetInfo's total - free: the context, the libraries and other processes on the
     * device count) now and the largest sampled so far, 0 on the CPU */
    size_t peak_mem_bytes, policy_state_bytes, device_used_bytes, device_peak_bytes;
    const char *message;
} primal_event;

typedef void (*primal_event_fn)(void *user, const primal_event *ev);

typedef struct primal_train_opts {
    int resume;                       /* continue from the newest valid checkpoint in out */
    int resume_anyway;                /* with resume: even when out's config.ini differs from the
                                       * experiment in a compared key */
    int overwrite;                    /* out may hold another run: its files (checkpoints,
                                       * log.jsonl, config.ini, sample.txt) are removed once
                                       * set-up has succeeded; not with resume */
    volatile sig_atomic_t *stop_flag; /* set (by a signal handler): finish the step, checkpoint,
                                       * return PRIMAL_EINTR */
    primal_event_fn on_event; /* called on rank 0 only */
    void *user;
    primal_dist *dist;        /* the ranks of a data-parallel run; NULL: one rank */
} primal_train_opts;

int primal_train(primal_experiment *e, const primal_train_opts *o, primal_err *err);

/* What primal_train would refuse first, before set-up, about the run directory ([run] out) and
 * o's resume, resume_anyway and overwrite: a directory that holds another run's checkpoints or
 * log.jsonl (unless resume or overwrite), a config.ini that differs from the experiment (with
 * resume, unless resume_anyway), resume with overwrite.  Same messages as primal_train's; it
 * reads the directory and writes, creates and deletes nothing (primal-run --check). */
int primal_train_check_dir(const primal_experiment *e, const primal_train_opts *o,
                           primal_err *err);

/* primal-run --dump-batches: write the first n training batches to path as safetensors:
 * tokens I32 [n, batch, seq_len+1] and mask U8 [n, batch, seq_len]. */
int primal_dump_batches(primal_experiment *e, int n, const char *path, primal_err *err);

/* The run directory actually used ([run] out, or runs/<experiment name>). */
void primal_run_dir(const primal_experiment *e, char *buf, size_t n);

#endif
