/* error.c: the caller-owned error buffer (primal/error.h). */
#include <stdio.h>
#include <string.h>

#include <primal/error.h>

int primal_verrf(primal_err *err, int code, const char *fmt, va_list ap)
{
    if (err != NULL) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return code;
}

int primal_errf(primal_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    primal_verrf(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int primal_err_prefix(primal_err *err, const char *fmt, ...)
{
    if (err == NULL)
        return PRIMAL_ERROR;
    char cause[PRIMAL_ERR_MAX], ctx[PRIMAL_ERR_MAX];
    memcpy(cause, err->msg, sizeof cause);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    /* Truncation is acceptable here (the cause's tail goes first), so assemble by hand rather
     * than have snprintf warn about it. */
    size_t a = strlen(ctx), b = strlen(cause), cap = sizeof err->msg - 1;
    if (a > cap)
        a = cap;
    memcpy(err->msg, ctx, a);
    size_t used = a;
    if (used + 2 <= cap) {
        memcpy(err->msg + used, ": ", 2);
        used += 2;
    }
    if (b > cap - used)
        b = cap - used;
    memcpy(err->msg + used, cause, b);
    err->msg[used + b] = '\0';
    return err->code;
}

const char *primal_strerror(int code)
{
    switch (code) {
    case PRIMAL_OK: return "success";
    case PRIMAL_ERROR: return "error";
    case PRIMAL_ECONFIG: return "configuration error";
    case PRIMAL_EABI: return "plugin ABI mismatch";
    case PRIMAL_ENOMEM: return "out of memory";
    case PRIMAL_EIO: return "I/O error or corrupt file";
    case PRIMAL_EDEVICE: return "device error";
    case PRIMAL_EOF: return "end of stream";
    case PRIMAL_EINTR: return "interrupted";
    default: return "unknown error";
    }
}

void primal_err_clear(primal_err *err)
{
    if (err != NULL) {
        err->code = PRIMAL_OK;
        err->msg[0] = '\0';
    }
}
