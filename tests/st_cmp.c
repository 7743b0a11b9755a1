/* st_cmp: compare one float tensor of two safetensors files (tests/export_test.sh).
 *   st_cmp A.safetensors B.safetensors NAME ATOL RTOL [--of-max]
 * Exit status 0 when every element has |a - b| <= ATOL + RTOL * |b| (the form of llm.c's and
 * ggml's checks), or with --of-max |a - b| <= ATOL + RTOL * max|b| (a rounding error relative to
 * the tensor's scale); 1 otherwise or when the tensors differ in size; 2 on a usage or file
 * error.  Prints the largest |a - b|, its ratio to the bound and the largest |b|. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <primal/safetensors.h>

int main(int argc, char **argv)
{
    int of_max = argc == 7 && strcmp(argv[6], "--of-max") == 0;
    if (argc != 6 && !of_max) {
        fputs("usage: st_cmp A.safetensors B.safetensors NAME ATOL RTOL [--of-max]\n", stderr);
        return 2;
    }
    double atol = atof(argv[4]), rtol = atof(argv[5]);
    primal_err err = { 0 };
    primal_st *a = NULL, *b = NULL;
    if (primal_st_open(argv[1], &a, &err) != PRIMAL_OK ||
        primal_st_open(argv[2], &b, &err) != PRIMAL_OK) {
        fprintf(stderr, "st_cmp: %s\n", err.msg);
        primal_st_close(a);
        return 2;
    }
    const primal_st_tensor *ta = primal_st_get(a, argv[3]), *tb = primal_st_get(b, argv[3]);
    int rc = 2;
    if (ta == NULL || tb == NULL) {
        fprintf(stderr, "st_cmp: %s: no tensor %s\n", ta == NULL ? argv[1] : argv[2], argv[3]);
    } else if (ta->numel != tb->numel || ta->ndim != tb->ndim) {
        fprintf(stderr, "st_cmp: %s: %lld elements against %lld\n", argv[3],
                (long long)ta->numel, (long long)tb->numel);
        rc = 1;
    } else {
        float *x = malloc((size_t)ta->numel * sizeof *x), *y = malloc((size_t)tb->numel * sizeof *y);
        if (x != NULL && y != NULL && primal_st_to_f32(a, ta, x, &err) == PRIMAL_OK &&
            primal_st_to_f32(b, tb, y, &err) == PRIMAL_OK) {
            double maxabs = 0.0, maxratio = 0.0, maxref = 0.0;
            for (int64_t i = 0; i < tb->numel; i++)
                if (fabs((double)y[i]) > maxref)
                    maxref = fabs((double)y[i]);
            for (int64_t i = 0; i < ta->numel; i++) {
                double d = fabs((double)x[i] - (double)y[i]);
                double r = d == 0.0 ? 0.0
                                    : d / (atol + rtol * (of_max ? maxref : fabs((double)y[i])));
                if (d > maxabs || d != d)
                    maxabs = d;
                if (r > maxratio || r != r)
                    maxratio = r;
            }
            printf("%s: max |a-b| = %.3e, max |a-b|/(atol+rtol|b|) = %.3f (atol %g, rtol %g), "
                   "max |b| = %.3g\n", argv[3], maxabs, maxratio, atol, rtol, maxref);
            if (of_max)
                printf("%s: that is %.2e of max |b|\n", argv[3], maxref > 0 ? maxabs / maxref : 0.0);
            rc = maxratio <= 1.0 ? 0 : 1;
        } else {
            fprintf(stderr, "st_cmp: %s\n", err.msg[0] ? err.msg : "out of memory");
        }
        free(x);
        free(y);
    }
    primal_st_close(a);
    primal_st_close(b);
    return rc;
}
