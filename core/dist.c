/* dist.c: data parallelism over MPI (dist.h).  Every collective is MPI's; none is written
 * here.  Without MPI (configure --without-mpi, or no Open MPI found) this is the one-rank
 * stand-in. */
#include <stdlib.h>
#include <string.h>

#include <primal/safetensors.h>

#include "dist.h"

#ifdef PRIMAL_HAVE_MPI
#include <mpi.h>
#endif

struct primal_dist {
    int rank, size, mpi;
};

/* Set by mpirun (Open MPI) or a PMI launcher: this process is one rank of several. */
static int launched_as_ranks(void)
{
    const char *v = getenv("OMPI_COMM_WORLD_SIZE");
    if (v == NULL)
        v = getenv("PMI_SIZE");
    return v != NULL && atoi(v) > 1;
}

int primal_dist_init(int *argc, char ***argv, primal_dist **out, primal_err *err)
{
    *out = NULL;
    primal_dist *d = calloc(1, sizeof *d);
    if (d == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    d->size = 1;
#ifdef PRIMAL_HAVE_MPI
    if (launched_as_ranks()) {
        int provided = 0;
        /* the loader's prefetch thread never calls MPI, so FUNNELED is enough */
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            free(d);
            return primal_errf(err, PRIMAL_ERROR, "MPI_Init_thread failed");
        }
        /* errors come back as codes, so a failing rank can abort the others cleanly */
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &d->size);
        d->mpi = 1;
    }
#else
    (void)argc;
    (void)argv;
    if (launched_as_ranks()) {
        free(d);
        return primal_errf(err, PRIMAL_ECONFIG,
                           "started as one of several ranks, but this PRIMAL was built without "
                           "MPI (configure --with-mpi, with libopenmpi-dev installed)");
    }
#endif
    *out = d;
    return PRIMAL_OK;
}

void primal_dist_finish(primal_dist *d, int ok)
{
    if (d == NULL)
        return;
#ifdef PRIMAL_HAVE_MPI
    if (d->mpi) {
        if (!ok && d->size > 1)
            MPI_Abort(MPI_COMM_WORLD, 1);
        MPI_Finalize();
    }
#else
    (void)ok;
#endif
    free(d);
}

int primal_dist_available(void)
{
#ifdef PRIMAL_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

int primal_dist_rank(const primal_dist *d) { return d ? d->rank : 0; }
int primal_dist_size(const primal_dist *d) { return d ? d->size : 1; }

#ifdef PRIMAL_HAVE_MPI
static int mpi_fail(primal_err *err, int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return primal_errf(err, PRIMAL_ERROR, "%s: %s (another rank has probably stopped)", what,
                       msg);
}

/* MPI counts are int: large buffers go in pieces. */
#define CHUNK ((size_t)1 << 28)
#endif

int primal_dist_sum_f32(primal_dist *d, float *buf, size_t n, primal_err *err)
{
#ifdef PRIMAL_HAVE_MPI
    for (size_t off = 0; d && d->size > 1 && off < n; off += CHUNK) {
        int cnt = (int)(n - off < CHUNK ? n - off : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, rc, "gradient all-reduce");
    }
#else
    (void)d, (void)buf, (void)n, (void)err;
#endif
    return PRIMAL_OK;
}

int primal_dist_sum_f64(primal_dist *d, double *buf, size_t n, primal_err *err)
{
#ifdef PRIMAL_HAVE_MPI
    for (size_t off = 0; d && d->size > 1 && off < n; off += CHUNK) {
        int cnt = (int)(n - off < CHUNK ? n - off : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, cnt, MPI_DOUBLE, MPI_SUM,
                               MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, rc, "all-reduce");
    }
#else
    (void)d, (void)buf, (void)n, (void)err;
#endif
    return PRIMAL_OK;
}

int primal_dist_sum_i32(primal_dist *d, int32_t *buf, size_t n, primal_err *err)
{
#ifdef PRIMAL_HAVE_MPI
    for (size_t off = 0; d && d->size > 1 && off < n; off += CHUNK) {
        int cnt = (int)(n - off < CHUNK ? n - off : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, cnt, MPI_INT32_T, MPI_SUM,
                               MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, rc, "vote all-reduce");
    }
#else
    (void)d, (void)buf, (void)n, (void)err;
#endif
    return PRIMAL_OK;
}

int primal_dist_max_int(primal_dist *d, int *v, primal_err *err)
{
#ifdef PRIMAL_HAVE_MPI
    if (d && d->size > 1) {
        int rc = MPI_Allreduce(MPI_IN_PLACE, v, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, rc, "all-reduce");
    }
#else
    (void)d, (void)v, (void)err;
#endif
    return PRIMAL_OK;
}

int primal_dist_gather(primal_dist *d, const void *in, size_t n, void *out, primal_err *err)
{
    if (d == NULL || d->size == 1) {
        memcpy(out, in, n);
        return PRIMAL_OK;
    }
#ifdef PRIMAL_HAVE_MPI
    int rc = MPI_Allgather(in, (int)n, MPI_BYTE, out, (int)n, MPI_BYTE, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return mpi_fail(err, rc, "all-gather");
#else
    (void)err;
#endif
    return PRIMAL_OK;
}

int primal_dist_check_same(primal_dist *d, const char *what, const void *data, size_t n,
                           primal_err *err)
{
    if (d == NULL || d->size == 1)
        return PRIMAL_OK;
    char mine[65];
    primal_sha256_hex(data, n, mine);
    char *all = malloc((size_t)d->size * 65);
    if (all == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int rc = primal_dist_gather(d, mine, 65, all, err);
    for (int r = 1; rc == PRIMAL_OK && r < d->size; r++)
        if (memcmp(all, all + 65 * (size_t)r, 65) != 0)
            rc = primal_errf(err, PRIMAL_ECONFIG,
                             "rank %d's %s differs from rank 0's (SHA-256 %.12s... against "
                             "%.12s...): every rank must start from the same configuration and "
                             "weights",
                             r, what, all + 65 * (size_t)r, all);
    free(all);
    return rc;
}
