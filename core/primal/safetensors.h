/* primal/safetensors.h: read and write safetensors files.
 *
 * Reading maps the file (mmap) and validates the header before anything is used: JSON syntax,
 * dtypes, shapes, that every tensor's byte range lies inside the file, matches its shape, and
 * that ranges do not overlap.  A truncated or corrupt file is refused with its path and the
 * problem.  Tensors are then read one at a time straight from the mapping, so a multi-GB model
 * is read in bounded memory.
 *
 * Writing is atomic: PATH.tmp.PID is written, fsync'ed and renamed over PATH, then the directory
 * is fsync'ed.  The writer stores a SHA-256 of the data section in __metadata__ under
 * "primal.data_sha256"; primal_st_verify() checks it. */
#ifndef PRIMAL_SAFETENSORS_H
#define PRIMAL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include <primal/error.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum primal_dtype {
    PRIMAL_F32 = 1, PRIMAL_F16, PRIMAL_BF16, PRIMAL_F64,
    PRIMAL_U8, PRIMAL_I8, PRIMAL_U16, PRIMAL_I16, PRIMAL_U32, PRIMAL_I32, PRIMAL_I64, PRIMAL_BOOL,
} primal_dtype;

size_t primal_dtype_size(primal_dtype d);
const char *primal_dtype_name(primal_dtype d); /* "F32", ... as in safetensors */

#define PRIMAL_ST_MAXDIM 8

typedef struct primal_st_tensor {
    const char *name;
    primal_dtype dtype;
    int ndim;
    int64_t shape[PRIMAL_ST_MAXDIM];
    int64_t numel;
    const void *data; /* inside the mapping; valid until primal_st_close */
    size_t nbytes;
} primal_st_tensor;

typedef struct primal_st primal_st;

int primal_st_open(const char *path, primal_st **out, primal_err *err);
void primal_st_close(primal_st *st);
const char *primal_st_path(const primal_st *st);
int primal_st_count(const primal_st *st);
const primal_st_tensor *primal_st_at(const primal_st *st, int i);         /* header order */
const primal_st_tensor *primal_st_get(const primal_st *st, const char *name); /* NULL: absent */
/* A __metadata__ value, or NULL. */
const char *primal_st_meta(const primal_st *st, const char *key);
/* Check "primal.data_sha256" against the data section; a file without it is an error. */
int primal_st_verify(const primal_st *st, primal_err *err);

/* Convert a tensor (F32, F16, BF16 or F64) to float32 into out (numel floats). */
int primal_st_to_f32(const primal_st *st, const primal_st_tensor *t, float *out,
                     primal_err *err);
/* Fetch name as float32, checking dtype and shape: a missing tensor or a shape other than
 * (ndim, shape) is an error naming the file and tensor. */
int primal_st_read_f32(const primal_st *st, const char *name, int ndim, const int64_t *shape,
                       float *out, primal_err *err);

typedef struct primal_stw primal_stw;

int primal_stw_begin(const char *path, primal_stw **out, primal_err *err);
/* The data is not copied: it must stay valid until primal_stw_commit returns. */
int primal_stw_add(primal_stw *w, const char *name, primal_dtype dtype, int ndim,
                   const int64_t *shape, const void *data, primal_err *err);
int primal_stw_meta(primal_stw *w, const char *key, const char *value, primal_err *err);
/* Write, fsync and rename; frees w whatever happens. */
int primal_stw_commit(primal_stw *w, primal_err *err);
void primal_stw_abort(primal_stw *w);

/* SHA-256 of n bytes as 64 lowercase hex digits + NUL (OpenSSL underneath). */
void primal_sha256_hex(const void *data, size_t n, char out[65]);

#ifdef __cplusplus
}
#endif
#endif
