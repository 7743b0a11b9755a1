/* dist.h (private to libprimal): data parallelism across processes (SPEC.md, "Data
 * parallelism").
 *
 * N ranks run the same model on different micro-batches and stay identical without ever sending
 * weights: every rank holds the same indices, scales and policy state, and applies the same step
 * with the same counter-based random numbers.  What crosses between ranks is summed: each
 * matrix's gradient tile before the flip policy sees it, the float parameters' gradients before
 * AdamW, the loss for the log.  The engine is MPI (Open MPI from Debian; mpirun launches); a
 * build without MPI runs one rank and refuses to be launched as several. */
#ifndef PRIMAL_DIST_H
#define PRIMAL_DIST_H

#include <stddef.h>
#include <stdint.h>

#include <primal/error.h>

typedef struct primal_dist primal_dist;

/* Join the job if this process was started by mpirun (else a single rank).  Call once, from the
 * program, before any thread starts. */
int primal_dist_init(int *argc, char ***argv, primal_dist **out, primal_err *err);
/* Leave the job; on failure (ok == 0) abort every rank so that none waits forever. */
void primal_dist_finish(primal_dist *d, int ok);

/* 1 if this build can run several ranks (it was built with MPI). */
int primal_dist_available(void);

int primal_dist_rank(const primal_dist *d);
int primal_dist_size(const primal_dist *d);

/* Sum buf over the ranks, in place (every rank gets the sum). */
int primal_dist_sum_f32(primal_dist *d, float *buf, size_t n, primal_err *err);
int primal_dist_sum_f64(primal_dist *d, double *buf, size_t n, primal_err *err);
int primal_dist_sum_i32(primal_dist *d, int32_t *buf, size_t n, primal_err *err);
/* Every rank gets the maximum. */
int primal_dist_max_int(primal_dist *d, int *v, primal_err *err);
/* Gather n bytes from every rank into out (size * n bytes, rank order) on every rank. */
int primal_dist_gather(primal_dist *d, const void *in, size_t n, void *out, primal_err *err);
/* Check that data is the same on every rank: a rank whose SHA-256 differs stops the run with an
 * error naming `what` and the rank. */
int primal_dist_check_same(primal_dist *d, const char *what, const void *data, size_t n,
                           primal_err *err);

#endif
