#!/bin/sh
# export_test.sh: primal-export (docs/EXPORT.md) to Hugging Face and back, and its refusals.
#   - A checkpoint exported with --format hf, imported again with `primal-import --grid dense`,
#     gives primal-eval the same logits on the same tokens: exactly with f32 (measured: 0),
#     within 2e-3 x max|logit| with f16 (measured: 4e-4 of it) and 2e-2 x max|logit| with bf16
#     (measured: 3e-3 to 7e-3 of it), for a Qwen2 (prime13, from the tiny Hugging Face fixture)
#     and a Llama with grouped-query attention trained here.  transformers itself reads the directory on the GPU machine
#     (docs/EXPORT.md); CI has no PyTorch.
#   - --shard-size splits the weights into model-0000N-of-0000M.safetensors and an index, which
#     primal-import reads back to the same logits; --force replaces an earlier export and its
#     stale shards.
#   - config.json: architectures, sizes, tie_word_embeddings, torch_dtype; the byte tokenizer
#     becomes a tokenizer.json whose ids are the bytes; a tokenizer.json run is copied.
#   - Refusals: an unknown format or dtype, q8_0 for hf (status 2); a missing checkpoint, a
#     non-empty output directory without --force, an output path that is a file, GGUF without
#     a tokenizer, a tokenizer larger than the vocabulary (status 1, nothing written).
# shellcheck source-path=SCRIPTDIR source=run_lib.sh
. "$(dirname "$0")/run_lib.sh"

EXPORT=$bld/primal-export
IMPORT=$bld/primal-import
TOK=$bld/primal-tokenize
CMP=$bld/tests/st_cmp
need_programs "$EXPORT" "$IMPORT" "$EVAL" "$RUN" "$TOK" "$CMP"
qtok=$fixtures/qwen-tokenizer/tokenizer.json

# Two checkpoints: the tiny Qwen2 on prime13, and a Llama (4 heads, 2 kv heads) trained 40 steps
"$IMPORT" "$fixtures/hf-qwen2-tiny" -o "$tmp/qwen.safetensors" --grid prime13 >"$tmp/out" 2>&1 ||
    { fail "primal-import of the Qwen2 fixture" "$tmp/out"; finish; }
write_base "$tmp/llama.ini"
if ! "$RUN" "$tmp/llama.ini" --set "run.out=$tmp/runl" --set run.steps=40 --set run.ckpt_every=0 \
    --set model.dim=64 --set model.heads=4 --set model.kv_heads=2 --set model.ffn=128 \
    --set optim.lr=1e-2 >"$tmp/out" 2>&1; then
    fail "40 steps of a Llama to export" "$tmp/out"
    finish
fi
llama=$tmp/runl/ckpt-00000040.safetensors
printf 'And God said, Let there be light: and there was light.' >"$tmp/prompt.txt"
write_ids "$tmp/ids.safetensors" "$(cat "$tmp/prompt.txt")"

# roundtrip NAME CKPT DTYPE TOL [EXPORT OPTIONS...]: export, import dense, compare the logits:
# |difference| <= TOL x max|logit|
roundtrip() {
    _n=$1 _ck=$2 _dt=$3 _tol=$4
    shift 4
    rm -rf "$tmp/$_n"
    if ! "$EXPORT" "$_ck" -o "$tmp/$_n" --format hf --dtype "$_dt" "$@" >"$tmp/out" 2>&1; then
        fail "$_n: primal-export --format hf --dtype $_dt" "$tmp/out"
        return 1
    fi
    if ! "$IMPORT" "$tmp/$_n" -o "$tmp/$_n.safetensors" --grid dense >"$tmp/out" 2>&1; then
        fail "$_n: primal-import --grid dense reads the export" "$tmp/out"
        return 1
    fi
    "$EVAL" "$_ck" --tokens "$tmp/ids.safetensors" -o "$tmp/$_n.ref.safetensors" 2>/dev/null
    "$EVAL" "$tmp/$_n.safetensors" --tokens "$tmp/ids.safetensors" \
        -o "$tmp/$_n.out.safetensors" 2>/dev/null
    if "$CMP" "$tmp/$_n.out.safetensors" "$tmp/$_n.ref.safetensors" logits 0 "$_tol" \
        --of-max >"$tmp/cmp" 2>&1; then
        pass "$_n ($_dt): the same logits after export and import, within $_tol x max|logit| ($(sed -n 's/.*that is \(.*\) of max.*/measured \1/p' "$tmp/cmp"))"
        # HF_EXPORT_KEEP=DIR keeps the export, the ids and primal-eval's logits of the
        # checkpoint for scripts/check-hf-export.py (transformers, on a machine that has it)
        if [ -n "${HF_EXPORT_KEEP:-}" ]; then
            mkdir -p "$HF_EXPORT_KEEP/$_n"
            cp -r "$tmp/$_n/." "$HF_EXPORT_KEEP/$_n/export"
            cp "$tmp/$_n.ref.safetensors" "$HF_EXPORT_KEEP/$_n/eval.safetensors"
            cp "$tmp/ids.safetensors" "$HF_EXPORT_KEEP/$_n/ids.safetensors"
        fi
    else
        fail "$_n ($_dt): the same logits after export and import, within $_tol x max|logit|" "$tmp/cmp"
    fi
}

roundtrip qwen-f32 "$tmp/qwen.safetensors" f32 0
roundtrip qwen-f16 "$tmp/qwen.safetensors" f16 2e-3
roundtrip qwen-bf16 "$tmp/qwen.safetensors" bf16 2e-2
roundtrip llama-f32 "$llama" f32 0
roundtrip llama-f16 "$llama" f16 2e-3
roundtrip llama-bf16 "$llama" bf16 2e-2

# config.json
c=$tmp/qwen-f32/config.json
check "qwen2 config.json: Qwen2ForCausalLM, its sizes, untied, float32" sh -c "
    grep -q '\"architectures\": \[\"Qwen2ForCausalLM\"\]' '$c' &&
    grep -q '\"hidden_size\": 64,' '$c' && grep -q '\"intermediate_size\": 176,' '$c' &&
    grep -q '\"num_hidden_layers\": 2,' '$c' && grep -q '\"num_attention_heads\": 4,' '$c' &&
    grep -q '\"num_key_value_heads\": 2,' '$c' && grep -q '\"vocab_size\": 512,' '$c' &&
    grep -q '\"rms_norm_eps\": 1e-06,' '$c' && grep -q '\"rope_theta\": 10000.0,' '$c' &&
    grep -q '\"tie_word_embeddings\": false,' '$c' && grep -q '\"torch_dtype\": \"float32\"' '$c' &&
    grep -q '\"max_position_embeddings\": 128,' '$c'"
c=$tmp/llama-bf16/config.json
check "llama config.json: LlamaForCausalLM, 2 kv heads, no attention bias, bfloat16" sh -c "
    grep -q '\"architectures\": \[\"LlamaForCausalLM\"\]' '$c' &&
    grep -q '\"num_key_value_heads\": 2,' '$c' && grep -q '\"attention_bias\": false,' '$c' &&
    grep -q '\"torch_dtype\": \"bfloat16\"' '$c' && grep -q '\"max_position_embeddings\": 32,' '$c'"
check "the Qwen2 import names no tokenizer: only config.json and model.safetensors" \
    test "$(ls "$tmp/qwen-f32" | tr '\n' ' ')" = "config.json model.safetensors "

# the byte tokenizer as a tokenizer.json: ids = bytes
t=$tmp/llama-f32/tokenizer.json
if [ -f "$t" ] && [ -f "$tmp/llama-f32/tokenizer_config.json" ]; then
    printf 'caf\303\251 \001\177 "quoted" \342\202\254\n' >"$tmp/bytes.txt"
    "$TOK" --tokenizer bytes <"$tmp/bytes.txt" >"$tmp/t1" 2>&1
    "$TOK" --tokenizer "$t" <"$tmp/bytes.txt" >"$tmp/t2" 2>&1
    check "the exported byte tokenizer.json gives the byte tokenizer's ids" cmp -s "$tmp/t1" "$tmp/t2"
else
    fail "a bytes run gets tokenizer.json and tokenizer_config.json" "$(ls "$tmp/llama-f32")"
fi

# sharding, and --force over an earlier export
roundtrip qwen-shards "$tmp/qwen.safetensors" f32 0 --shard-size 200K
d=$tmp/qwen-shards
check "--shard-size 200K: 4 shards of 633088 bytes of tensors, an index, no model.safetensors" sh -c "
    test -f '$d/model-00001-of-00004.safetensors' && test -f '$d/model-00004-of-00004.safetensors' &&
    test ! -e '$d/model.safetensors' && grep -q '\"total_size\": 633088' '$d/model.safetensors.index.json' &&
    grep -q 'model-00004-of-00004.safetensors' '$d/model.safetensors.index.json'"
"$EXPORT" "$tmp/qwen.safetensors" -o "$d" --format hf >"$tmp/out" 2>&1
rc=$?
check "into that non-empty directory without --force: status 1 (got $rc), saying so" sh -c "
    test $rc -eq 1 && grep -q '^primal-export: .*qwen-shards: exists and is not empty (pass --force' '$tmp/out'"
"$EXPORT" "$tmp/qwen.safetensors" -o "$d" --format hf --force >"$tmp/out" 2>&1
rc=$?
check "with --force: status 0 (got $rc), one model.safetensors, the shards and index gone" sh -c "
    test $rc -eq 0 && test -f '$d/model.safetensors' && test ! -e '$d/model.safetensors.index.json' &&
    test -z \"\$(ls '$d' | grep -e '-of-')\""

# a BPE run: its tokenizer.json is copied
cat >"$tmp/bpe.ini" <<EOF
[run]
steps = 1
batch = 1
seq_len = 16
eval_every = 0
sample_tokens = 0
threads = 1
[model]
arch = qwen2
qkv_bias = true
tied = true
dim = 32
layers = 1
heads = 2
ffn = 64
[data]
plugin = text
tokenizer = $qtok
path = $fixtures/data/genesis.txt
val_fraction = 0
EOF
if "$RUN" "$tmp/bpe.ini" --set "run.out=$tmp/runb" >"$tmp/out" 2>&1 &&
    "$EXPORT" "$tmp/runb/ckpt-00000001.safetensors" -o "$tmp/bpe" --format hf --dtype bf16 \
        >"$tmp/out" 2>&1; then
    check "a BPE run's tokenizer.json is copied as it is" cmp -s "$qtok" "$tmp/bpe/tokenizer.json"
    check "a tied Qwen2: tie_word_embeddings true, no lm_head.weight, eos <|endoftext|>" sh -c "
        grep -q '\"tie_word_embeddings\": true,' '$tmp/bpe/config.json' &&
        grep -q '\"eos_token_id\": 151643,' '$tmp/bpe/config.json' &&
        ! grep -q lm_head '$tmp/bpe/model.safetensors'"
else
    fail "a BPE run exported to hf" "$tmp/out"
fi

# refusals
refuse() { # what, expected status, expected message (grep -e), primal-export arguments...
    _what=$1 _st=$2 _msg=$3
    shift 3
    "$EXPORT" "$@" >"$tmp/out" 2>&1
    _rc=$?
    if [ "$_rc" -eq "$_st" ] && grep -q -e "$_msg" "$tmp/out"; then
        pass "$_what: status $_st"
    else
        fail "$_what: status $_st (got $_rc) and '$_msg'" "$tmp/out"
    fi
}
refuse "an unknown format" 2 "--format: expected hf or gguf, got 'onnx'" \
    "$llama" -o "$tmp/r1" --format onnx
refuse "an unknown dtype" 2 "--dtype: expected f32, f16, bf16 or q8_0, got 'f8'" \
    "$llama" -o "$tmp/r1" --format hf --dtype f8
refuse "q8_0 for hf" 2 "--dtype q8_0: gguf only" "$llama" -o "$tmp/r1" --format hf --dtype q8_0
refuse "no --format" 2 "--format hf|gguf is required" "$llama" -o "$tmp/r1"
refuse "a bad --shard-size" 2 "--shard-size: expected" \
    "$llama" -o "$tmp/r1" --format hf --shard-size 2X
refuse "a missing checkpoint, named" 1 "^primal-export: .*missing.safetensors" \
    "$tmp/missing.safetensors" -o "$tmp/r1" --format hf
check "and the output directory it would have made is not left behind" test ! -e "$tmp/r1"
printf 'not a checkpoint' >"$tmp/bad.safetensors"
refuse "a file that is not a checkpoint, named" 1 "^primal-export: .*bad.safetensors" \
    "$tmp/bad.safetensors" -o "$tmp/r1" --format gguf
: >"$tmp/afile"
refuse "an output path that is a file" 1 "afile: exists and is not a directory" \
    "$llama" -o "$tmp/afile" --format hf
refuse "GGUF of a checkpoint that names no tokenizer" 1 "GGUF needs a tokenizer" \
    "$tmp/qwen.safetensors" -o "$tmp/r1" --format gguf
refuse "a tokenizer larger than the model's vocabulary" 1 "has 151669 ids, the model's vocabulary only 512" \
    "$tmp/qwen.safetensors" -o "$tmp/r1" --format hf --tokenizer "$qtok"
check "and none of them wrote anything" test ! -e "$tmp/r1"

finish
