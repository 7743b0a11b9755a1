/* evaluate.c: logits, loss, gradients and perplexity of a model (evaluate.h).  SPEC.md,
 * "Models" and "The forward and backward pass of an indexed matrix" (gradients are the
 * straight-through dL/dW that backward hands to the grad hook).  No keys. */
#include <stdlib.h>
#include <string.h>

#include "evaluate.h"

/* Rows of T + 1 tokens for primal_model_forward: the T ids, then a dummy target 0 whose
 * position is masked out, so that logits exist for all T positions. */
static int make_rows(const int32_t *ids, int B, int T, int32_t **tok, uint8_t **mask,
                     primal_err *err)
{
    *tok = malloc((size_t)B * (size_t)(T + 1) * sizeof **tok);
    *mask = malloc((size_t)B * (size_t)T);
    if (*tok == NULL || *mask == NULL) {
        free(*tok);
        free(*mask);
        return primal_errf(err, PRIMAL_ENOMEM, "evaluate: out of memory for %d x %d tokens", B,
                           T);
    }
    for (int b = 0; b < B; b++) {
        memcpy(*tok + (size_t)b * (T + 1), ids + (size_t)b * T, (size_t)T * sizeof **tok);
        (*tok)[(size_t)b * (T + 1) + T] = 0;
        memset(*mask + (size_t)b * T, 1, (size_t)T - 1);
        (*mask)[(size_t)b * T + T - 1] = 0;
    }
    return PRIMAL_OK;
}

static int copy_grad(void *user, primal_param *p, const float *G, int64_t r0, int64_t nrows,
                     primal_err *err)
{
    (void)err;
    const primal_eval_grads *g = user;
    if (g->grad != NULL && g->grad[p->q.id] != NULL)
        memcpy(g->grad[p->q.id] + r0 * p->q.cols, G, (size_t)(nrows * p->q.cols) * sizeof *G);
    return PRIMAL_OK;
}

int primal_eval_batch(primal_model *m, const int32_t *ids, int B, int T, float *logits,
                      float *loss, const primal_eval_grads *grads, primal_err *err)
{
    if (B < 1 || T < 2)
        return primal_errf(err, PRIMAL_ERROR, "evaluate: %d rows of %d tokens: need rows of at "
                           "least 2 tokens", B, T);
    int np = primal_model_nparams(m), rc;
    int32_t *tok;
    uint8_t *mask;
    if ((rc = make_rows(ids, B, T, &tok, &mask, err)) != PRIMAL_OK)
        return rc;
    if (grads != NULL) {
        uint8_t *all = malloc((size_t)np);
        if (all == NULL) {
            rc = primal_errf(err, PRIMAL_ENOMEM, "evaluate: out of memory");
            goto out;
        }
        memset(all, 1, (size_t)np);
        rc = primal_model_set_trainable(m, all, err);
        free(all);
        if (rc != PRIMAL_OK)
            goto out;
        primal_model_zero_grad(m);
    }
    if ((rc = primal_model_forward(m, tok, mask, B, T, loss, logits, err)) != PRIMAL_OK)
        goto out;
    if (grads == NULL)
        goto out;
    if ((rc = primal_model_backward(m, 1.0f, copy_grad, (void *)grads, err)) != PRIMAL_OK)
        goto out;
    for (int i = 0; i < np; i++) {
        const primal_param *p = primal_model_param(m, i);
        if (!p->is_matrix && grads->grad != NULL && grads->grad[i] != NULL)
            memcpy(grads->grad[i], p->dvec, (size_t)p->n * sizeof(float));
        if (p->is_matrix && p->dscale != NULL && grads->gscale != NULL &&
            grads->gscale[i] != NULL)
            memcpy(grads->gscale[i], p->dscale, (size_t)p->q.rows * sizeof(float));
    }
out:
    free(tok);
    free(mask);
    return rc;
}

int primal_eval_stream(primal_model *m, const int32_t *ids, size_t n, int seq_len, int batch,
                       double *mean_loss, size_t *count, primal_err *err)
{
    *mean_loss = 0.0;
    *count = 0;
    if (seq_len < 1 || batch < 1)
        return primal_errf(err, PRIMAL_ERROR, "evaluate: seq_len %d, batch %d: must be >= 1",
                           seq_len, batch);
    if (n < 2)
        return primal_errf(err, PRIMAL_ERROR, "evaluate: %zu tokens: need at least 2", n);
    size_t full = (n - 1) / (size_t)seq_len; /* rows of seq_len predictions */
    size_t rest = (n - 1) % (size_t)seq_len;
    int32_t *tok = malloc((size_t)batch * (size_t)(seq_len + 1) * sizeof *tok);
    if (tok == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "evaluate: out of memory");
    double sum = 0.0;
    int rc = PRIMAL_OK;
    for (size_t r = 0; r < full && rc == PRIMAL_OK; r += (size_t)batch) {
        int B = (int)(full - r < (size_t)batch ? full - r : (size_t)batch);
        for (int b = 0; b < B; b++)
            memcpy(tok + (size_t)b * (seq_len + 1), ids + (r + (size_t)b) * (size_t)seq_len,
                   (size_t)(seq_len + 1) * sizeof *tok);
        float loss;
        rc = primal_model_forward(m, tok, NULL, B, seq_len, &loss, NULL, err);
        sum += (double)loss * B * seq_len;
    }
    if (rc == PRIMAL_OK && rest > 0) {
        float loss;
        rc = primal_model_forward(m, ids + full * (size_t)seq_len, NULL, 1, (int)rest, &loss,
                                  NULL, err);
        sum += (double)loss * (double)rest;
    }
    free(tok);
    if (rc != PRIMAL_OK)
        return rc;
    *count = n - 1;
    *mean_loss = sum / (double)(n - 1);
    return PRIMAL_OK;
}
