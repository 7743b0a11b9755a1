#!/bin/sh
# gguf_test.sh: primal-export --format gguf loads in llama.cpp and computes what primal-eval
# computes (docs/EXPORT.md).  llama.cpp is node-llama-cpp 3.21.1's prebuilt linux-x64 build,
# driven by tests/gguf/check.mjs; the package is installed on first use with npm into
# $PRIMAL_NODE_CACHE (default ~/.cache/primal), outside the source tree.  The test skips
# (status 77), saying why, without Node.js 20 or later, without npm or the package
# (PRIMAL_NO_NPM=1: never install), or where the prebuilt library does not run.
# `gguf_test.sh --install` only installs the package (scripts/install-deps.sh runs it).
#
# For every position of a prompt, llama.cpp's log-probabilities of every token against
# primal-eval's (tolerances: f32 2e-4, f16 2e-2, bf16 1e-1, q8_0 3e-1; what was measured is
# printed), and the same likeliest token wherever primal's top two logits are further apart than
# twice the tolerance:
#   - a Llama with grouped-query attention (4 heads, 2 kv heads), bytes, trained here: q_proj
#     and k_proj rows permuted for llama.cpp's RoPE; every dtype, and f32 with llama.cpp's
#     default f16 KV cache (1e-2); the GGUF of step 40 against step 20's logits must fail
#   - the tiny Qwen2 fixture on prime13, bytes (256 byte tokens of its 512): f32, and q8_0 whose
#     176-column down_proj falls back to f16
#   - a tied Qwen2 with q/k/v biases on the Qwen2 BPE tokenizer.json: llama.cpp's own
#     tokenisation of a prompt and of a 50 kB text gives primal's ids, and the f32 logits agree
# shellcheck source-path=SCRIPTDIR source=run_lib.sh
. "$(dirname "$0")/run_lib.sh"

EXPORT=$bld/primal-export
IMPORT=$bld/primal-import
TOK=$bld/primal-tokenize
qdir=$fixtures/qwen-tokenizer

# ---------------------------------------------------------------------------------------------
# llama.cpp: Node.js 20+ and node-llama-cpp 3.21.1

command -v node >/dev/null 2>&1 ||
    skip "Node.js is not installed, so llama.cpp (node-llama-cpp 3.21.1) cannot load the GGUF files"
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null)
[ "${major:-0}" -ge 20 ] 2>/dev/null ||
    skip "Node.js $(node --version 2>/dev/null) is older than 20, which node-llama-cpp 3.21.1 needs (Debian 12's own nodejs is 18)"
cache=${PRIMAL_NODE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/primal}/node-llama-cpp-3.21.1
NM=$cache/node_modules
if [ ! -f "$NM/node-llama-cpp/package.json" ] || [ ! -d "$NM/@node-llama-cpp/linux-x64" ]; then
    [ -z "${PRIMAL_NO_NPM:-}" ] ||
        skip "node-llama-cpp 3.21.1 is not in $cache and PRIMAL_NO_NPM is set"
    command -v npm >/dev/null 2>&1 ||
        skip "node-llama-cpp 3.21.1 is not in $cache and there is no npm to install it"
    # installed beside, then moved into place: a test killed midway leaves no half-made cache;
    # --ignore-scripts: the prebuilt binary needs no postinstall (which may try to build);
    # --omit=optional: only the linux-x64 build that package.json names, not the CUDA ones
    stage=$cache.tmp.$$
    rm -rf "$stage"
    mkdir -p "$stage" && cp "$tests_dir/gguf/package.json" "$stage/" || exit 99
    printf 'installing node-llama-cpp 3.21.1 into %s\n' "$cache"
    if (cd "$stage" && timeout 600 npm install --no-audit --no-fund --ignore-scripts \
        --omit=optional) >"$tmp/npm.log" 2>&1; then
        if [ -d "$cache" ]; then rm -rf "$stage"; else mv "$stage" "$cache"; fi
    else
        rm -rf "$stage"
        tail -n 5 "$tmp/npm.log"
        skip "npm could not install node-llama-cpp 3.21.1 (no network to the npm registry?)"
    fi
fi
PRIMAL_NODE_MODULES=$NM
export PRIMAL_NODE_MODULES
CHECK="node $tests_dir/gguf/check.mjs"
# the prebuilt library must load here at all (CPU features, glibc)
if ! node -e "import('$NM/node-llama-cpp/dist/index.js').then(async (m) => {
        const l = await m.getLlama({ gpu: false, build: 'never', progressLogs: false,
                                     logLevel: m.LlamaLogLevel.error });
        await l.dispose(); })" >"$tmp/probe" 2>&1; then
    tail -n 5 "$tmp/probe"
    skip "node-llama-cpp's prebuilt llama.cpp does not run on this machine"
fi
if [ "${1:-}" = "--install" ]; then
    printf 'node-llama-cpp 3.21.1 is in %s and runs\n' "$cache"
    exit 0
fi
need_programs "$EXPORT" "$IMPORT" "$EVAL" "$RUN" "$TOK"

# ---------------------------------------------------------------------------------------------

# ids FILE OUT: the byte ids of FILE, whitespace-separated, and primal-eval's input for them
byte_ids() {
    od -An -v -tu1 "$1" | tr -s ' \n' '  ' >"$2.txt"
    write_ids "$2.safetensors" "$(cat "$1")"
}

# the largest log-probability difference check.mjs printed
measured() { sed -n 's/.*log p_primal| = \([^ ]*\) .*/\1/p' "$tmp/chk"; }

# gguf WHAT CKPT DTYPE IDS TOL [check.mjs options...]: export (into $last_gguf), then check.mjs
# against the logits primal-eval gives for IDS (IDS.txt, IDS.safetensors)
ng=0
gguf() {
    _what=$1 _ck=$2 _dt=$3 _ids=$4 _tol=$5
    shift 5
    ng=$((ng + 1))
    _d=$tmp/gguf$ng
    last_gguf=$_d/model.gguf
    if ! "$EXPORT" "$_ck" -o "$_d" --format gguf --dtype "$_dt" >"$tmp/out" 2>&1; then
        fail "$_what: primal-export --format gguf --dtype $_dt" "$tmp/out"
        return
    fi
    if [ ! -f "$_ck.eval" ] &&
        ! "$EVAL" "$_ck" --tokens "$_ids.safetensors" -o "$_ck.eval" >"$tmp/out" 2>&1; then
        fail "$_what: primal-eval" "$tmp/out"
        return
    fi
    if $CHECK "$_d/model.gguf" --ids "$_ids.txt" --eval "$_ck.eval" --tol "$_tol" "$@" \
        >"$tmp/chk" 2>&1; then
        pass "$_what ($_dt): llama.cpp loads it and agrees within $_tol: $(measured), $(grep -o 'same likeliest token at [0-9]* of [0-9]*' "$tmp/chk" | sed 's/same likeliest token at/top-1 same at/')"
        grep tokenize "$tmp/chk" | sed 's/^/    /'
    else
        fail "$_what ($_dt): llama.cpp loads it and agrees within $_tol" "$tmp/chk"
    fi
}

# A Llama, bytes, grouped-query attention, 40 steps (a checkpoint at 20 too)
write_base "$tmp/llama.ini"
if ! "$RUN" "$tmp/llama.ini" --set "run.out=$tmp/runl" --set run.steps=40 --set run.ckpt_every=20 \
    --set model.dim=64 --set model.heads=4 --set model.kv_heads=2 --set model.ffn=128 \
    --set optim.lr=1e-2 >"$tmp/out" 2>&1; then
    fail "40 steps of a Llama to export" "$tmp/out"
    finish
fi
llama=$tmp/runl/ckpt-00000040.safetensors
printf 'And God said, Let there be light: and there was light. And God saw the light, that it was good.' >"$tmp/prompt.txt"
byte_ids "$tmp/prompt.txt" "$tmp/p"
gguf "Llama" "$llama" f32 "$tmp/p" 2e-4 --text "$tmp/prompt.txt"
gguf "Llama" "$llama" f16 "$tmp/p" 2e-2
gguf "Llama" "$llama" bf16 "$tmp/p" 1e-1
gguf "Llama" "$llama" q8_0 "$tmp/p" 3e-1
gguf "Llama with llama.cpp's default f16 KV cache" "$llama" f32 "$tmp/p" 1e-2 --f16-cache
# the comparison has teeth: step 40's GGUF against step 20's logits
"$EXPORT" "$llama" -o "$tmp/l40" --format gguf >/dev/null 2>&1
"$EVAL" "$tmp/runl/ckpt-00000020.safetensors" --tokens "$tmp/p.safetensors" \
    -o "$tmp/e20.safetensors" 2>/dev/null
$CHECK "$tmp/l40/model.gguf" --ids "$tmp/p.txt" --eval "$tmp/e20.safetensors" --tol 2e-4 \
    >"$tmp/chk" 2>&1
rc=$?
check "step 40's GGUF against step 20's logits: check.mjs fails (status $rc: $(measured))" \
    sh -c "test $rc -eq 1 && grep -q 'max |log p' '$tmp/chk'"

# The tiny Qwen2 fixture on prime13, bytes
if "$IMPORT" "$fixtures/hf-qwen2-tiny" -o "$tmp/qwen.safetensors" --grid prime13 \
    >"$tmp/out" 2>&1; then
    # the fixture names no tokenizer: export it with the bytes one (256 of its 512 ids)
    qg() {
        _d=$tmp/qg.$1
        rm -rf "$_d"
        if ! "$EXPORT" "$tmp/qwen.safetensors" -o "$_d" --format gguf --dtype "$1" \
            --tokenizer bytes >"$tmp/out" 2>&1; then
            fail "Qwen2 fixture: primal-export --dtype $1 --tokenizer bytes" "$tmp/out"
            return
        fi
        [ -f "$tmp/qwen.safetensors.eval" ] || "$EVAL" "$tmp/qwen.safetensors" \
            --tokens "$tmp/p.safetensors" -o "$tmp/qwen.safetensors.eval" 2>/dev/null
        if $CHECK "$_d/model.gguf" --ids "$tmp/p.txt" --eval "$tmp/qwen.safetensors.eval" \
            --tol "$2" --text "$tmp/prompt.txt" >"$tmp/chk" 2>&1; then
            pass "Qwen2 fixture ($1): llama.cpp agrees within $2: $(measured)"
        else
            fail "Qwen2 fixture ($1): llama.cpp agrees within $2" "$tmp/chk"
        fi
    }
    qg f32 2e-4
    qg q8_0 3e-1
    check "q8_0: the 176-column down_proj is said to fall back to f16" \
        grep -q 'has 176 columns, not a multiple of 32: written as f16' "$tmp/out"
else
    fail "primal-import of the Qwen2 fixture" "$tmp/out"
fi

# A tied Qwen2 with biases on the Qwen2 BPE tokenizer (vocabulary 151669), one step
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
tokenizer = $qdir/tokenizer.json
path = $fixtures/data/genesis.txt
val_fraction = 0
EOF
if "$RUN" "$tmp/bpe.ini" --set "run.out=$tmp/runb" >"$tmp/out" 2>&1; then
    printf "Hello, world! It's 2024: 12345 caf\303\251   na\303\257ve<|endoftext|>\n\n\344\275\240\345\245\275 don't" >"$tmp/qtext.txt"
    "$TOK" --tokenizer "$qdir/tokenizer.json" <"$tmp/qtext.txt" >"$tmp/q.txt"
    # primal-eval's input: I32 [1, n] of those ids
    n=$(wc -w <"$tmp/q.txt" | tr -d ' ')
    _h="{\"input_ids\":{\"dtype\":\"I32\",\"shape\":[1,$n],\"data_offsets\":[0,$((n * 4))]}}"
    while [ $((${#_h} % 8)) -ne 0 ]; do _h="$_h "; done
    {
        le_bytes "${#_h}" 8
        printf '%s' "$_h"
        for _i in $(cat "$tmp/q.txt"); do le_bytes "$_i" 4; done
    } >"$tmp/q.safetensors"
    gguf "tied Qwen2, BPE tokenizer" "$tmp/runb/ckpt-00000001.safetensors" f32 "$tmp/q" 5e-4 \
        --text "$tmp/qtext.txt"
    "$TOK" --tokenizer "$qdir/tokenizer.json" <"$qdir/long.txt" >"$tmp/long.ids"
    $CHECK "$last_gguf" --ids "$tmp/long.ids" --text "$qdir/long.txt" >"$tmp/chk" 2>&1
    check "llama.cpp tokenises the 50 kB long.txt as primal does ($(sed -n 's/.*llama.cpp gives \([0-9]*\) ids.*/\1 ids/p' "$tmp/chk"))" \
        grep -q ': the same$' "$tmp/chk"
else
    fail "one step of a Qwen2 on the BPE tokenizer" "$tmp/out"
fi

finish
