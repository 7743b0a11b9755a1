/* evaluate.h (private to libprimal): a model's logits, loss, gradients and perplexity, as
 * primal-eval reports them and as the Hugging Face reference (tests/fixtures/hf-qwen2-tiny/
 * expected.safetensors) states them.
 *
 * A batch is B rows of T tokens.  Row b predicts tokens 1..T-1 from their prefixes: the loss is
 * the mean next-token cross-entropy over the B x (T-1) shifted positions, as transformers
 * computes it with labels = input_ids.  Logits come for all T positions (the last one predicts
 * a token that is not there and is kept out of the loss). */
#ifndef PRIMAL_EVALUATE_H
#define PRIMAL_EVALUATE_H

#include <stddef.h>
#include <stdint.h>

#include <primal/error.h>

#include "model.h"

/* Where backward's gradients go, per parameter i (indexed by primal_model_param number); a NULL
 * entry (or a NULL array) skips it.
 *   grad[i]:  matrices (rows, cols) straight-through dL/dW; vectors (n) dL/dvec.
 *   gscale[i]: (rows) dL/dscale of an indexed matrix. */
typedef struct primal_eval_grads {
    float **grad;
    float **gscale;
} primal_eval_grads;

/* ids (B, T).  logits (B, T, vocab) or NULL.  With grads not NULL, backward runs too, with
 * every parameter made trainable.  T must be at least 2. */
int primal_eval_batch(primal_model *m, const int32_t *ids, int B, int T, float *logits,
                      float *loss, const primal_eval_grads *grads, primal_err *err);

/* Mean next-token loss over a token stream of n ids, cut into rows of up to seq_len + 1 tokens
 * that overlap by one (so every token after the first is predicted exactly once, from at most
 * seq_len tokens of context), batch rows at a time.  *count gets the predictions made (n - 1). */
int primal_eval_stream(primal_model *m, const int32_t *ids, size_t n, int seq_len, int batch,
                       double *mean_loss, size_t *count, primal_err *err);

#endif
