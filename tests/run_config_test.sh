#!/bin/sh
# run_config_test.sh: the experiment file as primal-run reads it (core/experiment.c, core/train.c;
# SPEC.md, "The experiment file and the run directory", "Schedulers"):
#   - --check prints the resolved configuration, defaults included, and touches nothing;
#     --set overrides a value; --check refuses what a run would refuse at start (a missing file,
#     a plugin's create() or a loader's open() check, a checkpoint over other grids), and a
#     directory given as the experiment file;
#   - every relative path that the file gives ([run] out, [model] init, [data] path, val_path,
#     tokenizer) resolves against the file's directory, one that --set gives against the current
#     directory; the default run directory is runs/<EXP> in the current directory; the examples
#     run from the repository's root and write under its runs/;
#   - --describe SECTION lists the core's keys of that section;
#   - bad input (an unknown key in [flip] or in a [grid.TENSOR] override, a bad number in [run],
#     an unknown section, an unknown plugin) is refused with status 1 and the file:line of the
#     culprit; a [grid.TENSOR] override with plugin = nf4 is accepted and reaches the checkpoint;
#   - plugin paths resolve against the experiment file's directory (--set: the current one),
#     must end in .so and must exist;
#   - night_shift + sealing log "event":"schedule" lines at the steps SPEC.md implies, and a
#     resume in the middle of the schedule changes nothing;
#   - --dump-batches writes tokens I32 [n, batch, seq_len + 1] and mask U8 [n, batch, seq_len].
# shellcheck source-path=SCRIPTDIR source=run_lib.sh
. "$(dirname "$0")/run_lib.sh"

need_programs "$RUN"
write_base "$tmp/base.ini"

# ---------------------------------------------------------------------------------------------
# --check and --set

if "$RUN" "$tmp/base.ini" --check --set run.steps=3 --set "run.out=$tmp/never" \
    >"$tmp/check" 2>"$tmp/err"; then
    pass "--check succeeds"
    # the [run] section of the output
    sed -n '/^\[run\]/,/^\[/p' "$tmp/check" >"$tmp/run"
    check "--set run.steps=3 shows as steps = 3" grep -qx 'steps = 3' "$tmp/run"
    check "a key the file leaves out shows with its default (eval_batches = 0)" \
        grep -qx 'eval_batches = 0' "$tmp/run"
    # adam_carry is the default policy (beta2 0.95, factored second moment, blocks of 64)
    sed -n '/^\[flip\]/,/^\[/p' "$tmp/check" >"$tmp/flip"
    check "the default policy's keys show with their defaults (beta2 = 0.95)" \
        sh -c "grep -qx 'plugin = adam_carry' '$tmp/flip' &&
               grep -qx 'beta2 = 0.95' '$tmp/flip' && grep -qx 'second_moment = factored' '$tmp/flip' &&
               grep -qx 'block = 64' '$tmp/flip'"
    check "the data path of the file is kept" \
        grep -qx "path = $fixtures/data/genesis.txt" "$tmp/check"
    check "--check creates no run directory" test ! -e "$tmp/never"
    check "a CPU run's resolved [run] leaves out the CUDA-only keys (gemm, logits, grad_stream)" \
        sh -c "! grep -qE '^(gemm|logits|grad_stream|head_ahead|norm_input|recompute_residual) = ' '$tmp/run'"
else
    fail "--check succeeds" "$tmp/err"
fi
"$RUN" "$tmp/base.ini" --check --set run.stepz=3 >/dev/null 2>"$tmp/err"
rc=$?
check "--set of an unknown key fails with status 1 (got $rc)" test "$rc" -eq 1
check "and names --set and the key" grep -q -- "--set: .*stepz" "$tmp/err"

# Every experiment file the project ships is one primal-run accepts, keys, values, files and
# plugins alike, started from the repository's root; and its run directory is under the root's
# runs/ (git-ignored), never in a tracked folder such as examples/.  A corpus that scripts make
# (data/kjv.txt, data/linux-c.txt) and that is not here is swapped for the fixture's; a CUDA
# experiment on a build or machine without CUDA must be refused for [run] device alone, which
# --check looks at last.
root=$(realpath "$src")
for ex in "$src"/examples/*.ini; do
    name=examples/$(basename "$ex")
    set --
    p=$(sed -n 's/^path *= *//p' "$ex" | head -n 1)
    if [ -n "$p" ] && [ ! -e "$src/examples/$p" ]; then
        set -- --set "data.path=$fixtures/data/genesis.txt"
    fi
    # --overwrite: the root's runs/ may hold the example's own run, which --check alone refuses
    if (cd "$src" && "$RUN" "$name" --check --overwrite "$@") >"$tmp/check" 2>"$tmp/err"; then
        pass "$name passes --check from the repository's root${1:+ (with the fixture corpus)}"
        out=$(sed -n '/^\[run\]$/,/^\[/s/^out = //p' "$tmp/check")
        d=$(cd "$src" && realpath -m "$out")
        check "and runs in the root's runs/ ($out)" \
            sh -c "case '$d' in '$root'/runs/?*) exit 0 ;; *) exit 1 ;; esac"
    elif grep -q '^device = cuda' "$ex" && grep -q '\[run\] device: cuda: ' "$tmp/err"; then
        pass "$name passes --check but for [run] device = cuda: $(sed 's/.*cuda: //' "$tmp/err")"
    else
        fail "$name passes --check from the repository's root" "$tmp/err"
    fi
done

# examples/finetune-sft.ini runs from the root: its init (../tests/fixtures/hf-qwen2-tiny) and
# its data resolve against examples/
if (cd "$src" && "$RUN" examples/finetune-sft.ini --set "run.out=$tmp/ft" --set run.steps=2 \
    --set run.sample_tokens=0) >"$tmp/out" 2>&1; then
    check "examples/finetune-sft.ini trains 2 steps from the repository's root" \
        test -f "$tmp/ft/ckpt-00000002.safetensors"
else
    fail "examples/finetune-sft.ini trains 2 steps from the repository's root" "$tmp/out"
fi

# ---------------------------------------------------------------------------------------------
# --check refuses what a run refuses at start, with the run's message: files that are missing,
# a plugin's own create() check, a loader's open() check.  Status 1, nothing written.

refuse_check() { # what, grep pattern of the message, primal-run arguments...
    _what=$1
    _pat=$2
    shift 2
    "$RUN" "$@" --check >"$tmp/check" 2>"$tmp/err"
    _rc=$?
    if [ "$_rc" -eq 1 ] && grep -q -- "$_pat" "$tmp/err" && [ ! -s "$tmp/check" ]; then
        pass "--check refuses $_what"
    else
        fail "--check refuses $_what (status $_rc, want 1 and: $_pat)" "$tmp/err"
    fi
}

refuse_check "a missing [data] path" "$tmp/none.txt: cannot open" \
    "$tmp/base.ini" --set "data.path=$tmp/none.txt"
refuse_check "a missing [data] val_path" "(validation split): $tmp/nonev.txt: cannot open" \
    "$tmp/base.ini" --set "data.val_path=$tmp/nonev.txt" --set data.val_fraction=0
refuse_check "a missing [data] tokenizer" "\[data\] tokenizer: .*$tmp/none.json" \
    "$tmp/base.ini" --set "data.tokenizer=$tmp/none.json"
refuse_check "a missing [model] init" "\[model\] init: $tmp/none.safetensors: no such file" \
    "$tmp/base.ini" --set "model.init=$tmp/none.safetensors"
refuse_check "a [model] init directory without config.json" "$fixtures/data/config.json" \
    "$tmp/base.ini" --set "model.init=$fixtures/data"
refuse_check "flip.residual_bits=5 (momentum_carry's create())" \
    "momentum_carry: --set: \[flip\] residual_bits: must be 4 or 8, got 5" \
    "$tmp/base.ini" --set flip.plugin=momentum_carry --set flip.residual_bits=5
{
    cat "$tmp/base.ini"
    printf '\n[scheduler]\nplugins = night_shift\n\n[night_shift]\nseq_len = 3000000000\n'
} >"$tmp/ns-big.ini"
refuse_check "night_shift.seq_len above INT_MAX (night_shift's create())" \
    "night_shift: .*ns-big.ini:[0-9]*: \[night_shift\] seq_len: must be at most" "$tmp/ns-big.ini"
refuse_check "a text doc_sep with an unknown escape (the loader's open())" \
    "\[data\] text: --set: \[data\] doc_sep: unknown escape" \
    "$tmp/base.ini" --set 'data.doc_sep=\q'
mkdir "$tmp/adir.ini"
"$RUN" "$tmp/adir.ini" --check >/dev/null 2>"$tmp/err"
rc=$?
check "a directory as the experiment file: status 1 (got $rc)" test "$rc" -eq 1
check "and it says so" grep -qx "primal-run: $tmp/adir.ini: is a directory, not an INI file" \
    "$tmp/err"

# ---------------------------------------------------------------------------------------------
# Bad input: status 1 and FILE:LINE of the culprit.  Each file is the base with one change; the
# expected line is found in the file itself.

refuse() { # name, grep pattern of the culprit line, what the message must also say
    f=$tmp/$1.ini
    line=$(grep -n "$2" "$f" | head -n 1 | cut -d: -f1)
    "$RUN" "$f" --check >/dev/null 2>"$tmp/err"
    rc=$?
    if [ "$rc" -eq 1 ] && grep -q "$1.ini:$line: .*$3" "$tmp/err"; then
        pass "$1: refused with status 1 and $1.ini:$line"
    else
        fail "$1: refused with status 1 and $1.ini:$line (status $rc)" "$tmp/err"
    fi
}

{
    cat "$tmp/base.ini"
    printf '\n[flip]\nplugin = threshold_consensus\nthreshhold = 3\n'
} >"$tmp/unknown-flip-key.ini"
refuse unknown-flip-key '^threshhold' 'threshhold: unknown key'

sed 's/^steps = 8$/steps = 8x/' "$tmp/base.ini" >"$tmp/bad-run-number.ini"
refuse bad-run-number '^steps = 8x' 'steps'

# the MLP-only recompute is the CUDA engine's; the CPU one is told to use whole blocks
sed 's/^threads = 1$/threads = 1\nrecompute = mlp/' "$tmp/base.ini" >"$tmp/cpu-recompute-mlp.ini"
refuse cpu-recompute-mlp '^recompute = mlp' 'recompute: mlp needs device = cuda'

sed 's/^threads = 1$/threads = 1\nrecompute = sometimes/' "$tmp/base.ini" \
    >"$tmp/bad-recompute.ini"
refuse bad-recompute '^recompute = sometimes' 'recompute: .*false|true|mlp'

# the head-ahead pass is the CUDA engine's
sed 's/^threads = 1$/threads = 1\nhead_ahead = off/' "$tmp/base.ini" >"$tmp/cpu-head-ahead.ini"
refuse cpu-head-ahead '^head_ahead = off' 'head_ahead: off needs device = cuda'

# so is the gradient stream
sed 's/^threads = 1$/threads = 1\ngrad_stream = false/' "$tmp/base.ini" >"$tmp/cpu-grad-stream.ini"
refuse cpu-grad-stream '^grad_stream = false' 'grad_stream: false needs device = cuda'

sed 's/^threads = 1$/threads = 1\nlogits = bf16/' "$tmp/base.ini" >"$tmp/cpu-logits.ini"
refuse cpu-logits '^logits = bf16' 'logits: bf16 needs device = cuda'

# the residual recompute is the CUDA engine's, and means nothing beside whole blocks
sed 's/^threads = 1$/threads = 1\nrecompute_residual = true/' "$tmp/base.ini" >"$tmp/cpu-residual.ini"
refuse cpu-residual '^recompute_residual = true' 'recompute_residual: true needs device = cuda'
sed 's/^threads = 1$/threads = 1\ndevice = cuda\nrecompute = true\nrecompute_residual = true/' \
    "$tmp/base.ini" >"$tmp/residual-with-blocks.ini"
refuse residual-with-blocks '^recompute_residual = true' \
    'recompute_residual: true with recompute = true: whole blocks are made again anyway'
# bf16 norm inputs are a CUDA mode, and keep no float32 stream to rebuild blocks from
sed 's/^threads = 1$/threads = 1\ngemm = timed/' "$tmp/base.ini" >"$tmp/cpu-gemm-timed.ini"
refuse cpu-gemm-timed '^gemm = timed' 'gemm: timed needs device = cuda'
sed 's/^threads = 1$/threads = 1\ngemm = fastest/' "$tmp/base.ini" >"$tmp/gemm-unknown.ini"
refuse gemm-unknown '^gemm = fastest' 'gemm: expected one of heuristic|timed'
sed 's/^threads = 1$/threads = 1\nnorm_input = bf16/' "$tmp/base.ini" >"$tmp/cpu-normbf16.ini"
refuse cpu-normbf16 '^norm_input = bf16' 'norm_input: bf16 needs device = cuda'
sed 's/^threads = 1$/threads = 1\ndevice = cuda\nrecompute_residual = true\nnorm_input = bf16/' \
    "$tmp/base.ini" >"$tmp/normbf16-with-residual.ini"
refuse normbf16-with-residual '^norm_input = bf16' \
    'norm_input: bf16 with recompute_residual = true: that rebuilds the blocks from the float32'

# a count of blocks means something only to the MLP recompute
sed 's/^threads = 1$/threads = 1\nrecompute = true\nrecompute_blocks = 3/' "$tmp/base.ini" \
    >"$tmp/blocks-without-mlp.ini"
refuse blocks-without-mlp '^recompute_blocks = 3' 'recompute_blocks: 3 blocks, but only recompute = mlp'

{
    cat "$tmp/base.ini"
    printf '\n[modle]\ndim = 3\n'
} >"$tmp/unknown-section.ini"
refuse unknown-section '^\[modle\]' 'unknown section'

{
    cat "$tmp/base.ini"
    printf '\n[flip]\nplugin = no_such_policy\n'
} >"$tmp/unknown-plugin.ini"
refuse unknown-plugin 'no_such_policy' 'no_such_policy'

sed 's/^plugin = prime13$/plugin = no_such_grid/' "$tmp/base.ini" >"$tmp/unknown-grid.ini"
refuse unknown-grid 'no_such_grid' 'no_such_grid'

# a grid override whose keys its grid refuses (checked under AddressSanitizer too: nothing of
# the override is left behind)
{
    cat "$tmp/base.ini"
    printf '\n[grid.model.layers.*.mlp.down_proj.weight]\nplugin = nf4\nbogus = 1\n'
} >"$tmp/bad-override-key.ini"
refuse bad-override-key '^bogus' 'bogus: unknown key'
check "and leaves no leak behind (LeakSanitizer in an ASan build)" \
    sh -c "! grep -q 'LeakSanitizer' '$tmp/err'"

# A grid override for one tensor pattern: accepted, and the checkpoint records nf4 for those
# tensors and prime13 for the rest.
{
    cat "$tmp/base.ini"
    printf '\n[grid.model.layers.*.mlp.down_proj.weight]\nplugin = nf4\n'
} >"$tmp/nf4.ini"
if "$RUN" "$tmp/nf4.ini" --check >"$tmp/check" 2>"$tmp/err"; then
    pass "a [grid.model.layers.*.mlp.down_proj.weight] section with plugin = nf4 is accepted"
    check "--check shows the override" \
        test "$(sed -n '/^\[grid\.model\.layers\.\*\.mlp\.down_proj\.weight\]$/{n;p;}' \
            "$tmp/check")" = "plugin = nf4"
else
    fail "a [grid.model.layers.*.mlp.down_proj.weight] section with plugin = nf4 is accepted" \
        "$tmp/err"
fi
if "$RUN" "$tmp/nf4.ini" --set "run.out=$tmp/nf4" --set run.steps=2 >"$tmp/out" 2>&1; then
    st_header "$tmp/nf4/ckpt-00000002.safetensors" >"$tmp/h"
    check "the checkpoint stores layer 1's down_proj over nf4" \
        grep -q 'model.layers.1.mlp.down_proj.weight\\":\\"nf4\\"' "$tmp/h"
    check "and its q_proj over prime13" \
        grep -q 'model.layers.1.self_attn.q_proj.weight\\":\\"prime13\\"' "$tmp/h"
    # a run from that checkpoint under prime13 alone is refused at start, and so by --check
    refuse_check "a [model] init checkpoint whose down_proj is over another grid" \
        "nf4/ckpt-00000002.safetensors: tensor model.layers.0.mlp.down_proj.weight: grid prime13 (13 values) here, nf4" \
        "$tmp/base.ini" --set "model.init=$tmp/nf4/ckpt-00000002.safetensors"
    if "$RUN" "$tmp/nf4.ini" --set "model.init=$tmp/nf4/ckpt-00000002.safetensors" --check \
        >/dev/null 2>"$tmp/err"; then
        pass "and --check passes it with the same override"
    else
        fail "and --check passes it with the same override" "$tmp/err"
    fi
else
    fail "2 steps with the nf4 override" "$tmp/out"
fi

# ---------------------------------------------------------------------------------------------
# Relative paths resolve against the experiment file's directory, for [data] tokenizer as for
# [data] path (loaders/text.c): the run must not depend on the directory it is started from.

mkdir -p "$tmp/exp/sub" "$tmp/exp/tok" "$tmp/exp/text"
ln -s "$fixtures/qwen-tokenizer/tokenizer.json" "$tmp/exp/tok/tokenizer.json"
cp "$fixtures/data/genesis.txt" "$tmp/exp/text/"
sed -e 's|^path = .*|path = ../text/genesis.txt|' \
    -e 's|^\[data\]$|[data]\ntokenizer = ../tok/tokenizer.json|' "$tmp/base.ini" \
    >"$tmp/exp/sub/bpe.ini"
if (cd "$tmp" && "$RUN" exp/sub/bpe.ini --dump-batches 1 "$tmp/bpe.safetensors") \
    >"$tmp/out" 2>&1; then
    pass "[data] tokenizer = ../tok/tokenizer.json resolves against the experiment's directory"
    st_header "$tmp/bpe.safetensors" >"$tmp/h"
    check "and the batch it gives is I32 [1, 4, 33]" \
        grep -q '"tokens":{"dtype":"I32","shape":\[1,4,33\]' "$tmp/h"
else
    fail "[data] tokenizer = ../tok/tokenizer.json resolves against the experiment's directory" \
        "$tmp/out"
fi

# ---------------------------------------------------------------------------------------------
# One rule for paths: relative to the experiment file's directory when the file gives them, to
# the current directory when --set does.  pp/exp/sub/p.ini names ../out, ../hf (the tiny Qwen2),
# ../text/*.txt and ../tok/tokenizer.json; it is run from pp/cwd, which has its own hf, text and
# tok for the --set variants (none of them exists beside p.ini).

pp=$tmp/pp
mkdir -p "$pp/exp/sub" "$pp/exp/text" "$pp/exp/tok" "$pp/cwd/text" "$pp/cwd/tok"
for d in exp cwd; do
    cp "$fixtures/data/genesis.txt" "$pp/$d/text/train.txt"
    cp "$fixtures/data/genesis.txt" "$pp/$d/text/val.txt"
    ln -s "$fixtures/hf-qwen2-tiny" "$pp/$d/hf"
    ln -s "$fixtures/qwen-tokenizer/tokenizer.json" "$pp/$d/tok/tokenizer.json"
done
sed -e 's|^path = .*|path = ../text/train.txt\nval_path = ../text/val.txt|' \
    -e 's|^val_fraction = .*|val_fraction = 0|' -e 's|^\[run\]$|[run]\nout = ../out|' \
    -e 's|^\[model\]$|[model]\ninit = ../hf|' -e 's|^steps = 8$|steps = 2|' "$tmp/base.ini" \
    >"$pp/exp/sub/p.ini"
sed 's|^\[data\]$|[data]\ntokenizer = ../tok/tokenizer.json|' "$pp/exp/sub/p.ini" \
    >"$pp/exp/sub/p-bpe.ini"
if (cd "$pp/cwd" && "$RUN" ../exp/sub/p-bpe.ini --check) >"$tmp/check" 2>"$tmp/err"; then
    pass "--check from elsewhere opens init, path, val_path, tokenizer beside the file"
    check "the resolved [run] out is ../exp/sub/../out" grep -qx 'out = ../exp/sub/../out' \
        "$tmp/check"
    check "and [data] tokenizer ../exp/sub/../tok/tokenizer.json" \
        grep -qx 'tokenizer = ../exp/sub/../tok/tokenizer.json' "$tmp/check"
else
    fail "--check from elsewhere opens init, path, val_path, tokenizer beside the file" \
        "$tmp/err"
fi
if (cd "$pp/cwd" && "$RUN" ../exp/sub/p.ini) >"$tmp/out" 2>&1; then
    check "a run from another directory trains from ../hf and writes to the file's ../out" \
        test -f "$pp/exp/out/ckpt-00000002.safetensors" -a ! -e "$pp/out" -a ! -e "$pp/cwd/runs"
else
    fail "a run from another directory trains from ../hf and writes to the file's ../out" "$tmp/out"
fi
if (cd "$pp/cwd" && "$RUN" ../exp/sub/p.ini --set run.out=out2 --set model.init=hf \
    --set data.path=text/train.txt --set data.val_path=text/val.txt --set run.steps=1) \
    >"$tmp/out" 2>&1; then
    pass "--set run.out, model.init, data.path, data.val_path: against the current directory"
    check "the run directory is ./out2" test -f "$pp/cwd/out2/ckpt-00000001.safetensors"
    cwd=$(cd "$pp/cwd" && pwd)
    check "config.ini records the --set data paths made absolute" \
        sh -c "grep -qx 'path = $cwd/text/train.txt' '$pp/cwd/out2/config.ini' &&
               grep -qx 'val_path = $cwd/text/val.txt' '$pp/cwd/out2/config.ini'"
else
    fail "--set run.out, model.init, data.path, data.val_path: against the current directory" \
        "$tmp/out"
fi
# (--overwrite: ../out holds the run above, which --check alone refuses, as the run would)
if (cd "$pp/cwd" && "$RUN" ../exp/sub/p.ini --set data.tokenizer=tok/tokenizer.json --check \
    --overwrite) >/dev/null 2>"$tmp/err"; then
    pass "--set data.tokenizer=tok/tokenizer.json resolves against the current directory"
else
    fail "--set data.tokenizer=tok/tokenizer.json resolves against the current directory" "$tmp/err"
fi
sed '/^out = /d' "$pp/exp/sub/p.ini" >"$pp/exp/sub/no-out.ini"
(cd "$pp/cwd" && "$RUN" ../exp/sub/no-out.ini --check) >"$tmp/check" 2>"$tmp/err"
check "without [run] out the run directory is runs/no-out in the current directory" \
    grep -qx 'out = runs/no-out' "$tmp/check"
sed 's|^init = ../hf$|init = ../none|' "$pp/exp/sub/p.ini" >"$pp/exp/sub/no-init.ini"
line=$(grep -n '^init = ../none' "$pp/exp/sub/no-init.ini" | cut -d: -f1)
(cd "$pp/cwd" && "$RUN" ../exp/sub/no-init.ini --check --overwrite) >/dev/null 2>"$tmp/err"
check "a missing init is refused with no-init.ini:$line and the path looked for" \
    grep -q "no-init.ini:$line: \[model\] init: ../exp/sub/../none: no such file or directory" \
    "$tmp/err"

# ---------------------------------------------------------------------------------------------
# --describe SECTION: the core's own keys of a section of the experiment file

for sec in run model optim grid flip scheduler data; do
    if "$RUN" --describe "$sec" >"$tmp/desc" 2>"$tmp/err"; then
        pass "--describe $sec succeeds"
    else
        fail "--describe $sec succeeds" "$tmp/err"
    fi
done
"$RUN" --describe run >"$tmp/desc" 2>&1
check "--describe run lists out, steps and sample_prompt" \
    sh -c "grep -q '^  out ' '$tmp/desc' && grep -q '^  steps  *int  *default 1000 ' '$tmp/desc' &&
           grep -q '^  sample_prompt ' '$tmp/desc'"
"$RUN" --describe data >"$tmp/desc" 2>&1
check "--describe data lists plugin (text) and tokenizer (bytes)" \
    sh -c "grep -q '^  plugin  *string default text ' '$tmp/desc' &&
           grep -q '^  tokenizer  *string default bytes ' '$tmp/desc'"
"$RUN" --describe flip >"$tmp/desc" 2>&1
check "--describe flip gives the default policy (adam_carry)" \
    grep -q '^  plugin  *string default adam_carry ' "$tmp/desc"

# ---------------------------------------------------------------------------------------------
# A plugin value with a '/' is the path of a .so (core/registry.c): relative to the experiment
# file's directory when the file gives it ([grid.TENSOR] without a plugin inherits [grid]'s),
# relative to the current directory when --set does; without the .so suffix, or missing, it is
# refused with the file:line before anything is opened.

mkdir -p "$tmp/px/sub" "$tmp/px/plug"
ln -s "$bld/plugins/.libs/momentum_carry.so" "$tmp/px/plug/mc.so"
ln -s "$bld/plugins/.libs/momentum_carry.so" "$tmp/px/plug/mc"
ln -s "$bld/grids/.libs/prime13.so" "$tmp/px/plug/p13.so"
ln -s "$bld/schedulers/.libs/night_shift.so" "$tmp/px/plug/ns.so"
ln -s "$bld/loaders/.libs/text.so" "$tmp/px/plug/txt.so"
sed -e 's|^plugin = prime13$|plugin = ../plug/p13.so|' -e 's|^plugin = text$|plugin = ./../plug/txt.so|' \
    "$tmp/base.ini" >"$tmp/px/sub/paths.ini"
printf '\n[flip]\nplugin = ../plug/mc.so\n\n[scheduler]\nplugins = ../plug/ns.so\n' \
    >>"$tmp/px/sub/paths.ini"
printf '\n[grid.model.layers.*.mlp.down_proj.weight]\n' >>"$tmp/px/sub/paths.ini"
if (cd "$tmp" && "$RUN" px/sub/paths.ini --check) >"$tmp/check" 2>"$tmp/err"; then
    pass "plugin paths of the grid, an override, the policy, a scheduler and the loader resolve against the experiment's directory"
    # config.ini (the resolved text) names a plugin given by path by its absolute path, so that
    # it loads the same file again from the run directory or anywhere else
    check "--check names path plugins by their absolute paths (policy, grid and override, loader, scheduler)" \
        sh -c "grep -qx 'plugin = $tmp/px/sub/../plug/mc.so' '$tmp/check' &&
               test \"\$(grep -cx 'plugin = $tmp/px/sub/../plug/p13.so' '$tmp/check')\" -eq 2 &&
               grep -qx 'plugin = $tmp/px/sub/../plug/txt.so' '$tmp/check' &&
               grep -qx 'plugins = $tmp/px/sub/../plug/ns.so' '$tmp/check' &&
               grep -qx '\[ns\]' '$tmp/check'"
    grep -v '^out = ' "$tmp/check" >"$tmp/px/resolved.ini"
    if (cd / && "$RUN" "$tmp/px/resolved.ini" --set "run.out=$tmp/px/rr" --check) \
        >"$tmp/check2" 2>"$tmp/err"; then
        check "the resolved text loads again from another directory, to the same plugins" \
            sh -c "grep '^plugin' '$tmp/check' >'$tmp/p1' && grep '^plugin' '$tmp/check2' >'$tmp/p2' &&
                   cmp -s '$tmp/p1' '$tmp/p2'"
    else
        fail "the resolved text of path plugins loads again from another directory" "$tmp/err"
    fi
else
    fail "plugin paths resolve against the experiment's directory" "$tmp/err"
fi
if (cd "$tmp/px" && "$RUN" sub/paths.ini --set flip.plugin=plug/mc.so --check) \
    >/dev/null 2>"$tmp/err"; then
    pass "--set flip.plugin=plug/mc.so resolves against the current directory"
else
    fail "--set flip.plugin=plug/mc.so resolves against the current directory" "$tmp/err"
fi
sed 's|^plugin = ../plug/mc.so$|plugin = ../plug/none.so|' "$tmp/px/sub/paths.ini" \
    >"$tmp/px/sub/missing-plugin.ini"
line=$(grep -n 'none.so' "$tmp/px/sub/missing-plugin.ini" | cut -d: -f1)
(cd "$tmp" && "$RUN" px/sub/missing-plugin.ini --check) >/dev/null 2>"$tmp/err"
rc=$?
check "a missing plugin path: status 1 (got $rc)" test "$rc" -eq 1
check "and missing-plugin.ini:$line names the file looked for" \
    grep -q "missing-plugin.ini:$line: \[flip\] plugin: px/sub/../plug/none.so: no such file" \
    "$tmp/err"
sed 's|^plugin = ../plug/mc.so$|plugin = ../plug/mc|' "$tmp/px/sub/paths.ini" \
    >"$tmp/px/sub/no-suffix.ini"
line=$(grep -n 'plug/mc$' "$tmp/px/sub/no-suffix.ini" | cut -d: -f1)
(cd "$tmp" && "$RUN" px/sub/no-suffix.ini --check) >/dev/null 2>"$tmp/err"
rc=$?
check "a plugin path without .so (a real plugin behind it): status 1 (got $rc)" test "$rc" -eq 1
check "and no-suffix.ini:$line says it must name a .so file" \
    grep -q "no-suffix.ini:$line: \[flip\] plugin: '../plug/mc': a plugin path must name a .so file" \
    "$tmp/err"

# ---------------------------------------------------------------------------------------------
# Schedulers.  2 blocks of 9 tensors (2 norms, q, k, v, o, gate, up, down), plus the embedding,
# the final norm and the LM head: 21.  night_shift (warmup 2, every 2, count 1): steps 0-1
# train the 3 outer tensors, step 2 adds block 1 (12), step 4 block 0 (21).  sealing (at 6,
# seq_len 16, accum_mult 2): from step 6 seq_len 16 and grad_accum 2.

{
    cat "$tmp/base.ini"
    printf '\n[scheduler]\nplugins = night_shift, sealing\n'
    printf '\n[night_shift]\nwarmup = 2\nevery = 2\ncount = 1\n'
    printf '\n[sealing]\nat = 6\nseq_len = 16\naccum_mult = 2\n'
} >"$tmp/sched.ini"
x=$tmp/x
if "$RUN" "$tmp/sched.ini" --set "run.out=$x" >"$tmp/out" 2>&1; then
    pass "8 steps with night_shift and sealing"
    mv "$x" "$tmp/sched"
    grep '"event":"schedule"' "$tmp/sched/log.jsonl" |
        sed 's/.*"step":\([0-9]*\),"trainable":\([0-9]*\).*"seq_len":\([0-9]*\),"grad_accum":\([0-9]*\),.*/\1 \2 \3 \4/' \
            >"$tmp/ev"
    printf '2 12 32 1\n4 21 32 1\n6 21 16 2\n' >"$tmp/want"
    if cmp -s "$tmp/ev" "$tmp/want"; then
        pass "schedule events at steps 2, 4, 6 with 12, 21, 21 tensors; seq_len 16, grad_accum 2 from step 6"
    else
        fail "schedule events (step trainable seq_len grad_accum) are 2 12 32 1 / 4 21 32 1 / 6 21 16 2" \
            "$tmp/ev"
    fi
    train_lines "$tmp/sched/log.jsonl" | sed 's/.*"step":\([0-9]*\),.*"trainable":\([0-9]*\),.*/\1 \2/' |
        tr '\n' ' ' >"$tmp/tr"
    check "training lines report 3, 3, 12, 12, 21, 21, 21, 21 trainable tensors" \
        test "$(cat "$tmp/tr")" = "1 3 2 3 3 12 4 12 5 21 6 21 7 21 8 21 "
    # the same with a stop after step 5 and a resume
    if "$RUN" "$tmp/sched.ini" --set "run.out=$x" --set run.steps=5 >"$tmp/out" 2>&1 &&
        "$RUN" "$tmp/sched.ini" --set "run.out=$x" --resume >"$tmp/out" 2>&1; then
        check "a resume at step 5 ends with the same checkpoint" \
            cmp -s "$x/ckpt-00000008.safetensors" "$tmp/sched/ckpt-00000008.safetensors"
        grep '"event":"schedule"' "$tmp/sched/log.jsonl" >"$tmp/ea"
        grep '"event":"schedule"' "$x/log.jsonl" >"$tmp/eb"
        if cmp -s "$tmp/ea" "$tmp/eb"; then
            pass "and logs the same schedule events"
        else
            diff "$tmp/ea" "$tmp/eb" >"$tmp/diff"
            fail "and logs the same schedule events" "$tmp/diff"
        fi
    else
        fail "5 steps, then --resume to 8, with night_shift and sealing" "$tmp/out"
    fi
else
    fail "8 steps with night_shift and sealing" "$tmp/out"
fi

# ---------------------------------------------------------------------------------------------
# --dump-batches N OUT: tokens I32 [N, batch, seq_len + 1] and mask U8 [N, batch, seq_len].

b=$tmp/batches.safetensors
if (cd "$tmp" && "$RUN" base.ini --dump-batches 3 "$b") >"$tmp/out" 2>&1; then
    pass "--dump-batches 3 succeeds"
    st_header "$b" >"$tmp/h"
    check "tokens is I32 [3, 4, 33]" grep -q '"tokens":{"dtype":"I32","shape":\[3,4,33\]' "$tmp/h"
    check "mask is U8 [3, 4, 32]" grep -q '"mask":{"dtype":"U8","shape":\[3,4,32\]' "$tmp/h"
    hlen=$(od -An -v -tu8 -N8 "$b" | tr -d ' ')
    size=$(wc -c <"$b" | tr -d ' ')
    check "the file is 8 + header + 3*4*33*4 + 3*4*32 bytes" \
        test "$size" -eq $((8 + hlen + 3 * 4 * 33 * 4 + 3 * 4 * 32))
    # the tokens are bytes (< 256) and the text loader counts every position
    dd if="$b" bs=1 skip=$((8 + hlen)) count=1584 2>/dev/null | od -An -v -tu4 |
        tr -s ' ' '\n' | grep . >"$tmp/tok"
    check "all 396 tokens are byte values" \
        test "$(awk '$1 < 256' "$tmp/tok" | wc -l | tr -d ' ')" -eq 396
    dd if="$b" bs=1 skip=$((8 + hlen + 1584)) count=384 2>/dev/null | od -An -v -tu1 |
        tr -s ' ' '\n' | grep . >"$tmp/mask"
    check "all 384 mask bytes are 1" test "$(grep -cx 1 "$tmp/mask")" -eq 384
    check "--dump-batches trains nothing (no run directory)" test ! -e "$tmp/runs"
else
    fail "--dump-batches 3 succeeds" "$tmp/out"
fi

finish
