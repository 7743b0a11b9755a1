/* primal/error.h: error codes and the caller-owned error buffer.
 *
 * Every fallible function in libprimal and in plugins returns an int: PRIMAL_OK (0) or one of
 * the negative codes below, and fills a primal_err that the caller owns (never a global, so
 * two runs in one process do not share messages).  A code has its own value only where a caller
 * handles it differently; everything else is PRIMAL_ERROR.  The library never prints. */
#ifndef PRIMAL_ERROR_H
#define PRIMAL_ERROR_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    PRIMAL_OK = 0,
    PRIMAL_ERROR = -1,   /* anything without a code of its own */
    PRIMAL_ECONFIG = -2, /* bad experiment file, key, value or command-line option */
    PRIMAL_EABI = -3,    /* a plugin that is not one, or built for another ABI */
    PRIMAL_ENOMEM = -4,  /* an allocation failed */
    PRIMAL_EIO = -5,     /* a file is missing, unreadable, truncated or corrupt */
    PRIMAL_EDEVICE = -6, /* CUDA, cuBLAS or NCCL reported a failure */
    PRIMAL_EOF = -7,     /* not a failure: a finite stream (a validation split) is exhausted */
    PRIMAL_EINTR = -8,   /* not a failure: the run was asked to stop (SIGINT, SIGTERM) */
};

#define PRIMAL_ERR_MAX 1024

typedef struct primal_err {
    int code;                  /* the last code stored by primal_errf */
    char msg[PRIMAL_ERR_MAX];  /* "file:line: [section] key: what (got X)", NUL-terminated */
} primal_err;

/* Store a formatted message and code in err (err may be NULL) and return code, so that call
 * sites read `return primal_errf(err, PRIMAL_EIO, "%s: truncated", path);`. */
int primal_errf(primal_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int primal_verrf(primal_err *err, int code, const char *fmt, va_list ap);

/* Prefix the message already in err with context and ": ", keeping the cause, as in
 * "loading threshold_consensus: ABI 2, core wants 3".  Returns err->code. */
int primal_err_prefix(primal_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Static text for a code ("configuration error", ...). */
const char *primal_strerror(int code);

/* Reset err to PRIMAL_OK and an empty message. */
void primal_err_clear(primal_err *err);

#ifdef __cplusplus
}
#endif
#endif
