/* args.h: the flag values of the bench programs (cpu_step.c, gpu_step.c).  No keys. */
#ifndef PRIMAL_BENCH_ARGS_H
#define PRIMAL_BENCH_ARGS_H

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

/* v as a whole int; anything else ends the run with a message naming the program and flag. */
static inline int bench_int_arg(const char *prog, const char *flag, const char *v)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || x < INT_MIN || x > INT_MAX) {
        fprintf(stderr, "%s: %s: expected an integer, got \"%s\"\n", prog, flag, v);
        exit(2);
    }
    return (int)x;
}

#endif
