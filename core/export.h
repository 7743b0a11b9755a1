/* export.h (private to libprimal): a checkpoint out of PRIMAL, as a Hugging Face model directory
 * (transformers) or a GGUF file (llama.cpp).  docs/EXPORT.md; SPEC.md, "Models".
 *
 * Every matrix is dequantised, W[r][c] = grid[index[r][c]] * scale[r], in float32 exactly as the
 * model computes it, then written in the chosen type.  Matrices are made a few rows at a time,
 * so memory beyond the model itself is a few MB, whatever the model's size.
 *
 * Hugging Face (format PRIMAL_EXPORT_HF), into DIR:
 *   config.json           LlamaForCausalLM or Qwen2ForCausalLM with the checkpoint's sizes
 *   model.safetensors     every weight under its Hugging Face name, in F32, F16 or BF16; past
 *                         shard_bytes, model-0000N-of-0000M.safetensors and
 *                         model.safetensors.index.json instead.  Qwen2 without q/k/v biases gets
 *                         zero biases, since transformers' Qwen2 always has them.
 *   tokenizer.json, ...   the run's tokenizer.json and the files beside it (tokenizer_config.json,
 *                         special_tokens_map.json, vocab.json, merges.txt, added_tokens.json,
 *                         chat_template.jinja, generation_config.json); for the byte tokenizer, a
 *                         tokenizer.json of 256 byte-level tokens and no merges (id = byte).
 * GGUF (format PRIMAL_EXPORT_GGUF), DIR/model.gguf, GGUF version 3: general.architecture llama or
 * qwen2, the hyperparameters, llama.cpp's tensor names, F32/F16/BF16/Q8_0 matrices (1-D tensors
 * stay F32), the tokenizer as tokenizer.ggml.model "gpt2".  For Llama the q and k rows are
 * permuted within each head as llama.cpp's convert_hf_to_gguf.py does (llama.cpp's Llama RoPE
 * rotates adjacent pairs, Hugging Face's the two halves); Qwen2 keeps Hugging Face's order.
 *
 * Every file is written as NAME.tmp.PID, flushed to disk and renamed.  DIR is created when
 * missing; files of the same names are replaced, and shards of an earlier export that this one
 * did not write are removed. */
#ifndef PRIMAL_EXPORT_H
#define PRIMAL_EXPORT_H

#include <stdint.h>

#include <primal/error.h>

enum { PRIMAL_EXPORT_HF = 0, PRIMAL_EXPORT_GGUF = 1 };
enum { PRIMAL_EXPORT_F32 = 0, PRIMAL_EXPORT_F16, PRIMAL_EXPORT_BF16, PRIMAL_EXPORT_Q8_0 };

/* 2 GB: a Hugging Face export past this many bytes of tensors is sharded. */
#define PRIMAL_EXPORT_SHARD_DEFAULT 2000000000LL

typedef struct primal_export_opts {
    int format;          /* PRIMAL_EXPORT_HF or PRIMAL_EXPORT_GGUF */
    int dtype;           /* PRIMAL_EXPORT_F32 ...; Q8_0 with GGUF only */
    int64_t shard_bytes; /* HF: most tensor bytes in one file (0: PRIMAL_EXPORT_SHARD_DEFAULT) */
    /* "bytes", the path of a Hugging Face tokenizer.json, "none", or NULL: the checkpoint's own
     * ([data] tokenizer of its experiment, else [model] init's tokenizer.json, else bytes for a
     * 256-token model, else none).  GGUF needs one. */
    const char *tokenizer;
    /* GGUF tokenizer.ggml.pre (llama.cpp's pre-tokenizer), or NULL: recognised from the
     * tokenizer.json's Split regex (Qwen2 -> qwen2, Llama 3 -> llama-bpe). */
    const char *gguf_pre;
    int context_length;  /* 0: [model] init's max_position_embeddings, else [run] seq_len,
                          * else 2048 */
    /* Called with a line worth telling the user (a fallback taken, a file not written); may be
     * NULL.  The library never prints. */
    void (*note)(void *user, const char *msg);
    void *note_user;
} primal_export_opts;

/* Export the checkpoint at ckpt_path into out_dir.  PRIMAL_ECONFIG for an option that does not
 * fit (q8_0 for Hugging Face, no tokenizer for GGUF, a tokenizer larger than the model's
 * vocabulary or one llama.cpp cannot be told about), PRIMAL_EIO for a file that cannot be read
 * or written, naming it. */
int primal_export(const char *ckpt_path, const char *out_dir, const primal_export_opts *o,
                  primal_err *err);

/* "f32", "f16", "bf16", "q8_0" -> PRIMAL_EXPORT_*, or -1. */
int primal_export_dtype(const char *name);

#endif
