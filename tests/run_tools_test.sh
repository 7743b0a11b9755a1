#!/bin/sh
# run_tools_test.sh: the programs around a run (docs/sweeps.md):
#   - primal-generate prints the prompt and N more tokens from a checkpoint, reproducibly, and
#     reports errors as "primal-generate: ..." with status 1 (usage errors 2);
#   - primal-sweep runs the cartesian product of the values given, one run directory each,
#     records a failed variant and goes on, and writes results.csv from the runs' log.jsonl;
#     with run.seed varied, it groups the seeds of each variant into one row (n, mean and
#     sample sd of the final validation loss, beside each seed's value) in results-seeds.csv
#     and results.md; --dry-run prints the primal-run commands;
#   - plot-runs draws a PNG (when gnuplot is installed);
#   - forged checkpoints (issue 25): the checksums have no key, so a file edited and signed again
#     (resign below) verifies; primal-generate, primal-eval, [model] init and --resume still
#     refuse an index past its grid, a config its tensors do not have and a NaN, naming the file
#     and tensor; and primal-eval's messages name the file (bad token ids, invalid UTF-8, a
#     directory where a file belongs).
# shellcheck source-path=SCRIPTDIR source=run_lib.sh
. "$(dirname "$0")/run_lib.sh"

SWEEP=$src/scripts/primal-sweep
PLOT=$src/scripts/plot-runs
need_programs "$RUN" "$GEN" "$EVAL"
write_base "$tmp/base.ini"

# ---------------------------------------------------------------------------------------------
# primal-generate

ck=$tmp/gen/ckpt-00000004.safetensors
if "$RUN" "$tmp/base.ini" --set "run.out=$tmp/gen" --set run.steps=4 --set flip.plugin=momentum_carry \
    >"$tmp/out" 2>&1; then
    prompt="In the beginning"
    if "$GEN" "$ck" --prompt "$prompt" --tokens 20 >"$tmp/g1" 2>"$tmp/err"; then
        pass "primal-generate succeeds on the run's checkpoint"
        check "its output starts with the prompt" \
            test "$(dd if="$tmp/g1" bs=1 count=16 2>/dev/null)" = "$prompt"
        # bytes tokenizer (from the checkpoint's [data] tokenizer): one byte per token
        check "and holds the prompt, 20 bytes and a newline (37 bytes)" \
            test "$(wc -c <"$tmp/g1" | tr -d ' ')" -eq 37
        "$GEN" "$ck" --prompt "$prompt" --tokens 20 >"$tmp/g2" 2>&1
        check "the same seed gives the same text" cmp -s "$tmp/g1" "$tmp/g2"
        "$GEN" "$ck" --prompt "$prompt" --tokens 20 --temperature 0 --tokenizer bytes \
            --top-k 1 --ctx 32 >"$tmp/g3" 2>&1
        "$GEN" "$ck" --prompt "$prompt" --tokens 20 --temperature 0 --seed 7 >"$tmp/g4" 2>&1
        check "greedy decoding does not depend on the seed or top-k" cmp -s "$tmp/g3" "$tmp/g4"
    else
        fail "primal-generate succeeds on the run's checkpoint" "$tmp/err"
    fi
else
    fail "4 steps to generate from" "$tmp/out"
fi
"$GEN" "$tmp/missing.safetensors" --prompt x >/dev/null 2>"$tmp/err"
rc=$?
check "a missing checkpoint: status 1 (got $rc) and 'primal-generate: ' then the path" \
    sh -c "test $rc -eq 1 && grep -q '^primal-generate: .*missing.safetensors' '$tmp/err'"
"$GEN" "$ck" >/dev/null 2>&1
rc=$?
check "no --prompt: status 2 (got $rc)" test "$rc" -eq 2
"$GEN" "$ck" --prompt x --tokens many >/dev/null 2>&1
rc=$?
check "--tokens many: status 2 (got $rc)" test "$rc" -eq 2
"$GEN" "$ck" --prompt x --tokenizer "$tmp/missing.json" >/dev/null 2>"$tmp/err"
rc=$?
check "a missing tokenizer file: status 1 (got $rc)" test "$rc" -eq 1

# ---------------------------------------------------------------------------------------------
# Forged checkpoints (issue 25).  resign does what anyone who edits a checkpoint can do: write
# the SHA-256 of the data section into primal.data_sha256, then the SHA-256 of the length and
# header bytes, taken with primal.header_sha256's 64 digits all 0, into primal.header_sha256
# (docs/FORMAT.md, "What the writer produces").

LC_ALL=C # byte lengths and byte offsets
export LC_ALL

hdr_len() { od -An -v -tu8 -N8 "$1" | tr -d ' '; }

put_hex() { # file, key, 64 hex digits: written after "key":" in the header
    _at=$(head -c "$((8 + $(hdr_len "$1")))" "$1" | grep -abo -F "\"$2\":\"" | head -n 1 |
        cut -d: -f1)
    printf '%s' "$3" | dd of="$1" bs=1 seek="$((_at + ${#2} + 4))" conv=notrunc 2>/dev/null
}

resign() { # file
    _n=$(hdr_len "$1")
    put_hex "$1" primal.data_sha256 "$(tail -c +"$((_n + 9))" "$1" | sha256sum | cut -c1-64)"
    put_hex "$1" primal.header_sha256 "$(printf '%064d' 0)"
    put_hex "$1" primal.header_sha256 "$(head -c "$((_n + 8))" "$1" | sha256sum | cut -c1-64)"
}

tensor_at() { # file, tensor: the file offset of its first byte
    _b=$(st_header "$1" | grep -o "\"$2\":{[^}]*}" | sed 's/.*"data_offsets":\[\([0-9]*\),.*/\1/')
    echo $((8 + $(hdr_len "$1") + _b))
}

peek() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; } # file, offset: one byte

poke() { # file, offset, byte values...: written there
    _f=$1
    _at=$2
    shift 2
    # shellcheck disable=SC2059 # the format is the octal escape of one byte
    for _v in "$@"; do printf "\\$(printf '%03o' "$_v")"; done |
        dd of="$_f" bs=1 seek="$_at" conv=notrunc 2>/dev/null
}

edit_header() { # file, sed expression: the header edited and padded again to a multiple of 8
    _n=$(hdr_len "$1")
    _h=$(st_header "$1" | sed -e 's/ *$//' -e "$2")
    while [ $((${#_h} % 8)) -ne 0 ]; do _h="$_h "; done
    { le_bytes "${#_h}" 8 && printf '%s' "$_h" && tail -c +"$((_n + 9))" "$1"; } >"$1.new" &&
        mv "$1.new" "$1"
}

# expect_refusal WHAT FRAGMENT COMMAND...: status 1 and FRAGMENT in what it printed.
expect_refusal() {
    _what=$1
    _frag=$2
    shift 2
    "$@" >"$tmp/out" 2>&1
    _rc=$?
    if [ "$_rc" -eq 1 ] && grep -qF -- "$_frag" "$tmp/out"; then
        pass "$_what"
    else
        fail "$_what (status $_rc, wanted 1 and: $_frag)" "$tmp/out"
    fi
}

text=$fixtures/data/genesis.txt
fg=$tmp/forged
mkdir -p "$fg"
if [ -f "$ck" ]; then
    cp "$ck" "$fg/same.safetensors"
    resign "$fg/same.safetensors"
    check "resign alone leaves the checkpoint byte for byte as it was" \
        cmp -s "$ck" "$fg/same.safetensors"

    # 1. An index past the grid: 15 in [3][7] of a 4-bit prime13 matrix (13 values).  up_proj is
    # (ffn 64, dim 32): 16 bytes a row, column 7 in the high nibble of byte 3.
    up=index.model.layers.0.mlp.up_proj.weight
    ix=$fg/index.safetensors
    cp "$ck" "$ix"
    at=$(($(tensor_at "$ix" "$up") + 3 * 16 + 3))
    poke "$ix" "$at" $(( ($(peek "$ix" "$at") & 15) | 240 ))
    resign "$ix"
    msg="$ix: $up: index 15 at [3][7] is outside the 13-entry grid prime13"
    expect_refusal "primal-generate refuses an index past the grid, naming file, tensor and place" \
        "$msg" "$GEN" "$ix" --prompt "In the" --tokens 4
    expect_refusal "so does primal-eval" "$msg" "$EVAL" "$ix" --text "$text" --seq-len 32
    expect_refusal "so does [model] init" "$msg" \
        "$RUN" "$tmp/base.ini" --set "run.out=$fg/init" --set "model.init=$ix" --set run.steps=1
    # --resume passes over a newest checkpoint that does not verify, saying why, and resumes
    # from the one before
    if "$RUN" "$tmp/base.ini" --set "run.out=$fg/res" >"$tmp/out" 2>&1; then
        r8=$fg/res/ckpt-00000008.safetensors
        at=$(($(tensor_at "$r8" "$up") + 3 * 16 + 3))
        poke "$r8" "$at" $(( ($(peek "$r8" "$at") & 15) | 240 ))
        resign "$r8"
        "$RUN" "$tmp/base.ini" --set "run.out=$fg/res" --resume >"$tmp/out" 2>&1
        rc=$?
        check "--resume skips the forged checkpoint, naming what is wrong (status $rc)" \
            sh -c "test $rc -eq 0 && grep -qF '$r8: $up: index 15 at [3][7]' '$tmp/out' &&
                   grep -q 'resumed from .*ckpt-00000004' '$tmp/out'"
    else
        fail "8 steps to resume" "$tmp/out"
    fi

    # 2. A config the tensors do not have: vocab 2147483647 (past the [model] limits) and 65536
    # (within them, but embed_tokens is 256 rows).  Refused on open, before any allocation.
    cf=$fg/config.safetensors
    cp "$ck" "$cf"
    edit_header "$cf" 's/\\"vocab\\":256,/\\"vocab\\":2147483647,/'
    resign "$cf"
    expect_refusal "primal-eval refuses vocab 2147483647 in a re-signed header" \
        "$cf: __metadata__ primal.model: model: vocab 2147483647" \
        "$EVAL" "$cf" --text "$text"
    cp "$ck" "$cf"
    edit_header "$cf" 's/\\"vocab\\":256,/\\"vocab\\":65536,/'
    resign "$cf"
    expect_refusal "and vocab 65536 that the tensors do not have" \
        "$cf: tensor index.model.embed_tokens.weight: U8 [256,16], expected U8 [65536,16]" \
        "$EVAL" "$cf" --text "$text"

    # 3. NaN in a float parameter (model.norm.weight[0] = 0x7fc00000)
    nf=$fg/nan.safetensors
    cp "$ck" "$nf"
    poke "$nf" "$(tensor_at "$nf" model.norm.weight)" 0 0 192 127
    resign "$nf"
    expect_refusal "primal-eval refuses a NaN norm weight instead of printing loss nan" \
        "$nf: model.norm.weight: value at [0] is nan, not finite" "$EVAL" "$nf" --text "$text"
    expect_refusal "so does primal-generate" "$nf: model.norm.weight: value at [0] is nan" \
        "$GEN" "$nf" --prompt x --tokens 2

    # 4. primal-eval's messages name the file.  Token ids 65 66 300 67: 300 is past 256.
    ids=$tmp/ids300.safetensors
    h='{"input_ids":{"dtype":"I32","shape":[1,4],"data_offsets":[0,16]}}'
    while [ $((${#h} % 8)) -ne 0 ]; do h="$h "; done
    {
        le_bytes "${#h}" 8
        printf '%s' "$h"
        for v in 65 66 300 67; do le_bytes "$v" 4; done
    } >"$ids"
    expect_refusal "a token id past the vocabulary: the file and its position" \
        "$ids: input_ids[0][2] = 300 is outside the model's vocabulary [0, 256)" \
        "$EVAL" "$ck" --tokens "$ids" -o "$tmp/o.safetensors"
    printf 'In the\377 beginning' >"$tmp/bad.txt"
    expect_refusal "invalid UTF-8 in --text: the file" \
        "$tmp/bad.txt: tokenizer bytes: invalid UTF-8 at byte offset 6" \
        "$EVAL" "$ck" --text "$tmp/bad.txt"
    expect_refusal "a directory as --text" "$fg: is a directory, not a text file" \
        "$EVAL" "$ck" --text "$fg"
    expect_refusal "a directory as primal-eval's --tokenizer" \
        "$fg: is a directory, not a tokenizer.json" \
        "$EVAL" "$ck" --text "$text" --tokenizer "$fg"
    expect_refusal "a directory as primal-generate's --tokenizer" \
        "$fg: is a directory, not a tokenizer.json" \
        "$GEN" "$ck" --prompt x --tokenizer "$fg"
    expect_refusal "a directory as the checkpoint (primal-eval)" \
        "$fg: is a directory, not a safetensors file" "$EVAL" "$fg" --text "$text"
    expect_refusal "a directory as the checkpoint (primal-generate)" \
        "$fg: is a directory, not a safetensors file" "$GEN" "$fg" --prompt x
else
    fail "a checkpoint to forge"
fi

# ---------------------------------------------------------------------------------------------
# primal-sweep: a variant that primal-run --check refuses stops the sweep before anything runs;
# then 2 policies x 2 learning rates; run again, the done variants are not run again.

PRIMAL_RUN=$RUN
export PRIMAL_RUN
"$SWEEP" "$tmp/base.ini" flip.plugin=threshold_consensus,no_such_policy optim.lr=1e-3,3e-3 \
    --set run.steps=3 --set run.ckpt_every=0 -o "$tmp/badsweep" >"$tmp/table" 2>"$tmp/err"
rc=$?
check "a sweep with a variant --check refuses exits 2 (got $rc)" test "$rc" -eq 2
check "naming the variant and primal-run's reason" \
    sh -c "grep -q 'flip.plugin=no_such_policy' '$tmp/err' && grep -q 'no_such_policy' '$tmp/err'"
check "and runs nothing" sh -c "! ls '$tmp'/badsweep/*/log.jsonl >/dev/null 2>&1"
sw=$tmp/sweep
"$SWEEP" "$tmp/base.ini" flip.plugin=threshold_consensus,momentum_carry optim.lr=1e-3,3e-3 \
    --set run.steps=3 --set run.ckpt_every=0 -o "$sw" >"$tmp/table" 2>"$tmp/err"
rc=$?
check "a sweep whose variants all succeed exits 0 (got $rc)" test "$rc" -eq 0
ok_dir="$sw/flip.plugin=threshold_consensus,optim.lr=1e-3"
check "each variant has its run directory DIR/k1=v1,k2=v2" \
    test -f "$ok_dir/log.jsonl" -a -f "$sw/flip.plugin=momentum_carry,optim.lr=3e-3/log.jsonl"
check "the run got its values (config.ini: lr = 1e-3, steps = 3)" \
    sh -c "grep -qx 'lr = 1e-3' '$ok_dir/config.ini' && grep -qx 'steps = 3' '$ok_dir/config.ini'"
if [ -f "$sw/results.csv" ]; then
    pass "results.csv is written"
    check "results.csv has the documented header" test "$(head -n 1 "$sw/results.csv")" = \
        "flip.plugin,optim.lr,status,final_loss,final_val_loss,best_val_loss,tokens_per_s,peak_mem_bytes,flips,state_bytes_per_weight"
    check "and one row per variant, each with status ok" \
        test "$(cut -d, -f1-3 "$sw/results.csv" | tail -n +2 | tr '\n' ' ')" = \
        "threshold_consensus,1e-3,ok threshold_consensus,3e-3,ok momentum_carry,1e-3,ok momentum_carry,3e-3,ok "
    row=$(grep '^threshold_consensus,1e-3,' "$sw/results.csv")
    # the figures, against the run's own log lines
    last=$(grep '"step":3,"loss"' "$ok_dir/log.jsonl" | sed 's/.*"loss":\([^,]*\),.*/\1/')
    val=$(grep '"val_loss"' "$ok_dir/log.jsonl" | sed 's/.*"val_loss":\([^,}]*\).*/\1/')
    flips=$(grep '"loss"' "$ok_dir/log.jsonl" | sed 's/.*"flips":\([0-9]*\),.*/\1/' |
        awk '{ s += $1 } END { print s }')
    check "final_loss is the loss of step 3 ($last)" \
        test "$(echo "$row" | cut -d, -f4)" = "$last"
    check "final_val_loss and best_val_loss are the val_loss of the only evaluation ($val)" \
        test "$(echo "$row" | cut -d, -f5-6)" = "$val,$val"
    check "flips is the sum over the logged steps ($flips)" \
        test "$(echo "$row" | cut -d, -f9)" = "$flips"
    # threshold_consensus keeps int16 votes: 2 bytes of state per weight (SPEC.md)
    check "state_bytes_per_weight of threshold_consensus is 2" \
        awk -v v="$(echo "$row" | cut -d, -f10)" 'BEGIN { exit !(v == 2) }'
    check "no seeds varied: no results-seeds.csv, and results.md holds one table" \
        sh -c "test ! -e '$sw/results-seeds.csv' && ! grep -q 'Over the seeds' '$sw/results.md'"
    check "the Markdown table on stdout has a header, a rule and 4 rows" \
        test "$(grep -c '^|' "$tmp/table")" -eq 6
    check "and is kept as results.md" cmp -s "$tmp/table" "$sw/results.md"
else
    fail "results.csv is written" "$tmp/err"
fi
cp "$ok_dir/log.jsonl" "$tmp/first.jsonl"
"$SWEEP" "$tmp/base.ini" flip.plugin=threshold_consensus,momentum_carry optim.lr=1e-3,3e-3 \
    --set run.steps=3 --set run.ckpt_every=0 -o "$sw" >"$tmp/table2" 2>"$tmp/err"
rc=$?
check "the same sweep again exits 0 (got $rc)" test "$rc" -eq 0
check "without running its done variants again" \
    sh -c "test \"\$(grep -c 'done already' '$tmp/err')\" -eq 4 && cmp -s '$ok_dir/log.jsonl' '$tmp/first.jsonl'"
check "and tabulates them as before" cmp -s "$tmp/table" "$tmp/table2"
"$SWEEP" "$tmp/base.ini" flip.plugin=threshold_consensus optim.lr=1e-3 \
    --set run.steps=3 --set run.ckpt_every=0 -o "$sw" --rerun >/dev/null 2>"$tmp/err"
rc=$?
check "--rerun runs a done variant again, over its old run (status $rc)" \
    sh -c "test $rc -eq 0 && ! grep -q 'done already' '$tmp/err' &&
           test \"\$(grep -c '\"event\":\"start\"' '$ok_dir/log.jsonl')\" -eq 1"

# Seeds grouped: 2 seeds x 2 learning rates make one row per learning rate, with n = 2 and the
# mean (and sample standard deviation) of the two seeds' final validation losses.
ss=$tmp/seeds
"$SWEEP" "$tmp/base.ini" run.seed=1,2 optim.lr=1e-3,3e-3 --set run.steps=3 \
    --set run.ckpt_every=0 -o "$ss" >"$tmp/table" 2>"$tmp/err"
rc=$?
check "a sweep over 2 seeds x 2 learning rates exits 0 (got $rc)" test "$rc" -eq 0
# per run: run.seed,optim.lr,status,final_loss,final_val_loss,...
check "results.csv keeps one row per run (4)" \
    test "$(tail -n +2 "$ss/results.csv" 2>/dev/null | grep -c .)" -eq 4
if [ -f "$ss/results-seeds.csv" ]; then
    pass "results-seeds.csv is written"
    check "results-seeds.csv has the documented header" \
        test "$(head -n 1 "$ss/results-seeds.csv")" = \
        "optim.lr,status,n,seeds,final_val_loss_mean,final_val_loss_sd,final_val_loss_per_seed,final_loss_mean,final_loss_sd,best_val_loss_mean,best_val_loss_sd,tokens_per_s_mean,tokens_per_s_sd,peak_mem_bytes_max,flips_mean,flips_sd,state_bytes_per_weight"
    check "and one row per learning rate" \
        test "$(tail -n +2 "$ss/results-seeds.csv" | cut -d, -f1 | tr '\n' ' ')" = "1e-3 3e-3 "
    for lr in 1e-3 3e-3; do
        v1=$(grep "^1,$lr,ok," "$ss/results.csv" | cut -d, -f5)
        v2=$(grep "^2,$lr,ok," "$ss/results.csv" | cut -d, -f5)
        g=$(grep "^$lr," "$ss/results-seeds.csv")
        check "lr $lr: the grouped row has status ok, n = 2 and seeds \"1 2\"" \
            test "$(echo "$g" | cut -d, -f2-4)" = 'ok,2,"1 2"'
        check "lr $lr: it lists the per-seed final_val_loss ($v1 $v2)" \
            test "$(echo "$g" | cut -d, -f7)" = "\"$v1 $v2\""
        # means printed with %.6g: within 1e-5 relative; for two values, sd = |v1 - v2| / sqrt(2)
        check "lr $lr: final_val_loss_mean is their mean and _sd their sample sd ($g)" \
            awk -v a="$v1" -v b="$v2" -v m="$(echo "$g" | cut -d, -f5)" \
                -v sd="$(echo "$g" | cut -d, -f6)" 'function abs(x) { return x < 0 ? -x : x }
                BEGIN { e = (a + b) / 2; s = abs(a - b) / sqrt(2)
                        exit !(a != "" && b != "" && m != "" && abs(m - e) <= 1e-5 * abs(e) &&
                               sd != "" && abs(sd - s) <= 1e-2 * s + 1e-9) }'
    done
    check "the printed table holds the per-run table, then the grouped one (2 + 4, 2 + 2 rows)" \
        sh -c "test \"\$(grep -c '^|' '$tmp/table')\" -eq 10 && grep -q '^Over the seeds' '$tmp/table' &&
               grep -q '^| 1e-3 | ok | 2 | 1 2 | ' '$tmp/table'"
    check "and is kept as results.md" cmp -s "$tmp/table" "$ss/results.md"
else
    fail "results-seeds.csv is written" "$tmp/err"
fi

"$SWEEP" "$tmp/base.ini" "data.path=$fixtures/data/genesis.txt" 'run.sample_prompt=a b' \
    --set run.steps=2 -o "$tmp/dry" --dry-run >"$tmp/cmds" 2>"$tmp/err"
rc=$?
check "--dry-run exits 0 (got $rc)" test "$rc" -eq 0
check "--dry-run prints one primal-run command per variant" test "$(grep -c . "$tmp/cmds")" -eq 1
d=$(printf '%s' "$fixtures/data/genesis.txt" | tr '/' '_')
check "the run directory's name has / and spaces replaced by _" \
    grep -q -- "--set '*run.out=$tmp/dry/data.path=$d,run.sample_prompt=a_b'* *$" "$tmp/cmds"
check "--dry-run runs nothing" test ! -e "$tmp/dry"
"$SWEEP" "$tmp/base.ini" run.out=a,b -o "$tmp/bad" >/dev/null 2>&1
rc=$?
check "varying run.out is a usage error (status $rc)" test "$rc" -eq 2

# ---------------------------------------------------------------------------------------------
# plot-runs

if command -v gnuplot >/dev/null 2>&1; then
    if "$PLOT" -o "$tmp/loss.png" "$sw"/flip.plugin=threshold_consensus* --title "lr" \
        >"$tmp/out" 2>&1 &&
        "$PLOT" -o "$tmp/val.png" --val --x tokens "$ok_dir" >>"$tmp/out" 2>&1; then
        check "plot-runs writes PNG files" \
            test "$(od -An -c -N4 "$tmp/loss.png" | tr -d ' ')" = '211PNG' -a \
            "$(od -An -c -N4 "$tmp/val.png" | tr -d ' ')" = '211PNG'
    else
        fail "plot-runs writes PNG files" "$tmp/out"
    fi
    "$PLOT" -o "$tmp/none.png" "$tmp/nowhere" >/dev/null 2>&1
    rc=$?
    check "plot-runs with nothing to plot exits 1 (got $rc)" test "$rc" -eq 1
else
    printf 'SKIP: plot-runs (no gnuplot)\n'
fi

finish
