/* hfconfig.h (private to libprimal): reading a Hugging Face model directory (SPEC.md, "Models":
 * "Imports read Hugging Face config.json and (possibly sharded) model.safetensors in
 * F32/F16/BF16").
 *
 * config.json gives the primal_model_config; the weights come from model.safetensors or from
 * the shards that model.safetensors.index.json lists ("weight_map": tensor name -> file).
 * Every file is mapped, not read, so a model of any size is looked at one tensor at a time. */
#ifndef PRIMAL_HFCONFIG_H
#define PRIMAL_HFCONFIG_H

#include <primal/error.h>
#include <primal/safetensors.h>

#include "model.h"

/* Read config.json (path given, or DIR/config.json when a directory is given) into out.
 * model_type must be "llama" or "qwen2".  Defaults, as transformers has them:
 * num_key_value_heads = num_attention_heads, rms_norm_eps 1e-6, rope_theta 10000 (top-level,
 * or rope_parameters.rope_theta as transformers 5 writes it), tie_word_embeddings false, q/k/v
 * bias: always for qwen2, attention_bias (false) for llama.  Refused, naming the key: RoPE
 * scaling of any type but "default", head_dim other than hidden_size / num_attention_heads,
 * hidden_act other than silu, mlp_bias, a sliding window in use.  PRIMAL_ECONFIG for a
 * config this engine does not support, PRIMAL_EIO for a missing or unreadable file. */
int primal_hfconfig_load(const char *dir_or_config_json, primal_model_config *out,
                         primal_err *err);

typedef struct primal_hf_weights primal_hf_weights;

/* Open DIR/model.safetensors, or when DIR/model.safetensors.index.json exists, every shard it
 * names.  Checks that each tensor of the weight map is in the shard the map says. */
int primal_hf_open_weights(const char *dir, primal_hf_weights **out, primal_err *err);
void primal_hf_close_weights(primal_hf_weights *w);

/* The tensor called name and, if st is not NULL, the file that holds it; NULL when absent. */
const primal_st_tensor *primal_hf_weight(primal_hf_weights *w, const char *name,
                                         const primal_st **st);

/* All tensors, for finding the ones a model does not use: i in [0, count). */
int primal_hf_weight_count(const primal_hf_weights *w);
const char *primal_hf_weight_name(const primal_hf_weights *w, int i);

#endif
