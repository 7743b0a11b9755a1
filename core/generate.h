/* generate.h (private to libprimal): sampling text from a model (primal-generate, and the
 * sample primal-run prints at the end of a run). */
#ifndef PRIMAL_GENERATE_H
#define PRIMAL_GENERATE_H

#include <stdint.h>

#include <primal/tokenizer.h>

#include "model.h"

typedef struct primal_gen_opts {
    int n_tokens;      /* tokens to sample */
    float temperature; /* 0: greedy */
    int top_k;         /* 0: the whole vocabulary */
    uint64_t seed;     /* the draws come from the counter-based RNG: same seed, same text */
    int max_ctx;       /* tokens of context fed to the model (the most recent ones) */
} primal_gen_opts;

/* Encode prompt, then sample o->n_tokens tokens one by one; *text (malloc'ed) gets the prompt
 * followed by the sampled continuation, decoded. */
int primal_generate(primal_model *m, primal_tokenizer *tok, const char *prompt,
                    const primal_gen_opts *o, char **text, primal_err *err);

#endif
