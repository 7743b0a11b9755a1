/* generate.c: sampling text (generate.h).  Each new token re-runs the forward pass over the
 * context window: no KV cache, which keeps the model code single-purpose; sampling is for
 * looking at what a run learned, not for serving. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <primal/rng.h>

#include "generate.h"

/* Index of the sampled token from logits (V). */
static int32_t pick(const float *logits, int V, const primal_gen_opts *o, uint64_t counter,
                    float *work)
{
    if (o->temperature <= 0.0f) {
        int32_t best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best])
                best = i;
        return best;
    }
    /* the k-th largest logit is the cut-off */
    float cut = -INFINITY;
    if (o->top_k > 0 && o->top_k < V) {
        memcpy(work, logits, (size_t)V * sizeof *work);
        for (int j = 0; j < o->top_k; j++) { /* partial selection: k is small */
            int bi = j;
            for (int i = j + 1; i < V; i++)
                if (work[i] > work[bi])
                    bi = i;
            float tmp = work[j];
            work[j] = work[bi];
            work[bi] = tmp;
        }
        cut = work[o->top_k - 1];
    }
    float mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double z = 0.0;
    for (int i = 0; i < V; i++)
        if (logits[i] >= cut)
            z += exp((double)(logits[i] - mx) / o->temperature);
    double u = (double)primal_rng_u01(o->seed, 0x67656e, counter) * z, acc = 0.0;
    int32_t last = 0;
    for (int i = 0; i < V; i++) {
        if (logits[i] < cut)
            continue;
        acc += exp((double)(logits[i] - mx) / o->temperature);
        last = i;
        if (acc > u)
            return i;
    }
    return last;
}

int primal_generate(primal_model *m, primal_tokenizer *tok, const char *prompt,
                    const primal_gen_opts *o, char **text, primal_err *err)
{
    *text = NULL;
    int V = primal_model_cfg(m)->vocab;
    primal_ids ids = {0};
    int rc = primal_tokenizer_encode(tok, prompt, strlen(prompt), &ids, err);
    if (rc == PRIMAL_OK && ids.n == 0) {
        /* the model needs one token to start from: the document separator */
        int32_t start;
        rc = primal_tokenizer_separator(tok, &start, err);
        if (rc == PRIMAL_OK)
            rc = primal_ids_push(&ids, start, err);
    }
    int ctx = o->max_ctx > 0 ? o->max_ctx : 256;
    float *logits = malloc((size_t)ctx * (size_t)V * sizeof *logits);
    float *work = malloc((size_t)V * sizeof *work);
    int32_t *row = malloc((size_t)(ctx + 1) * sizeof *row);
    uint8_t *mask = calloc((size_t)ctx, 1);
    if (rc == PRIMAL_OK && (logits == NULL || work == NULL || row == NULL || mask == NULL))
        rc = primal_errf(err, PRIMAL_ENOMEM, "generate: out of memory");
    for (int k = 0; k < o->n_tokens && rc == PRIMAL_OK; k++) {
        size_t T = ids.n < (size_t)ctx ? ids.n : (size_t)ctx;
        memcpy(row, ids.v + ids.n - T, T * sizeof *row);
        row[T] = 0; /* a target nobody reads: the mask keeps it out of the loss */
        memset(mask, 0, T);
        mask[0] = 1; /* one counted position keeps the loss finite */
        float loss;
        rc = primal_model_forward(m, row, mask, 1, (int)T, &loss, logits, err);
        if (rc == PRIMAL_OK)
            rc = primal_ids_push(&ids, pick(logits + (T - 1) * (size_t)V, V, o, (uint64_t)k,
                                            work), err);
    }
    if (rc == PRIMAL_OK) {
        size_t len;
        rc = primal_tokenizer_decode(tok, ids.v, ids.n, text, &len, err);
    }
    free(logits);
    free(work);
    free(row);
    free(mask);
    free(ids.v);
    return rc;
}
