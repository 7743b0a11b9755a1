#!/bin/sh
# run_tools_test.sh: the programs around a run (docs/sweeps.md):
#   - primal-generate prints the prompt and N more tokens from a checkpoint, reproducibly, and
#     reports errors as "primal-generate: ..." with status 1 (usage errors 2);
#   - primal-sweep runs the cartesian product of the values given, one run directory each,
#     records a failed variant and goes on, and writes results.csv from the runs' log.jsonl;
#     --dry-run prints the primal-run commands;
#   - plot-runs draws a PNG (when gnuplot is installed).
# shellcheck source-path=SCRIPTDIR source=run_lib.sh
. "$(dirname "$0")/run_lib.sh"

SWEEP=$src/scripts/primal-sweep
PLOT=$src/scripts/plot-runs
need_programs "$RUN" "$GEN"
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
# primal-sweep: 2 policies x 2 learning rates, one of the policies unknown.

PRIMAL_RUN=$RUN
export PRIMAL_RUN
sw=$tmp/sweep
"$SWEEP" "$tmp/base.ini" flip.plugin=threshold_consensus,no_such_policy optim.lr=1e-3,3e-3 \
    --set run.steps=3 --set run.ckpt_every=0 -o "$sw" >"$tmp/table" 2>"$tmp/err"
rc=$?
check "a sweep with a failing variant exits 1 (got $rc)" test "$rc" -eq 1
ok_dir="$sw/flip.plugin=threshold_consensus,optim.lr=1e-3"
check "each variant has its run directory DIR/k1=v1,k2=v2" \
    test -f "$ok_dir/log.jsonl" -a -f "$sw/flip.plugin=threshold_consensus,optim.lr=3e-3/log.jsonl"
check "the run got its values (config.ini: lr = 1e-3, steps = 3)" \
    sh -c "grep -qx 'lr = 1e-3' '$ok_dir/config.ini' && grep -qx 'steps = 3' '$ok_dir/config.ini'"
check "the failed variant's directory holds primal-run's message" \
    grep -q "no_such_policy" "$sw/flip.plugin=no_such_policy,optim.lr=1e-3/primal-run.log"
if [ -f "$sw/results.csv" ]; then
    pass "results.csv is written"
    check "results.csv has the documented header" test "$(head -n 1 "$sw/results.csv")" = \
        "flip.plugin,optim.lr,status,final_loss,best_val_loss,tokens_per_s,peak_mem_bytes,flips,state_bytes_per_weight"
    check "and one row per variant, the failed ones with status failed:1" \
        test "$(cut -d, -f1-3 "$sw/results.csv" | tail -n +2 | tr '\n' ' ')" = \
        "threshold_consensus,1e-3,ok threshold_consensus,3e-3,ok no_such_policy,1e-3,failed:1 no_such_policy,3e-3,failed:1 "
    row=$(grep '^threshold_consensus,1e-3,' "$sw/results.csv")
    # the figures, against the run's own log lines
    last=$(grep '"step":3,"loss"' "$ok_dir/log.jsonl" | sed 's/.*"loss":\([^,]*\),.*/\1/')
    val=$(grep '"val_loss"' "$ok_dir/log.jsonl" | sed 's/.*"val_loss":\([^,}]*\).*/\1/')
    flips=$(grep '"loss"' "$ok_dir/log.jsonl" | sed 's/.*"flips":\([0-9]*\),.*/\1/' |
        awk '{ s += $1 } END { print s }')
    check "final_loss is the loss of step 3 ($last)" \
        test "$(echo "$row" | cut -d, -f4)" = "$last"
    check "best_val_loss is the val_loss of the only evaluation ($val)" \
        test "$(echo "$row" | cut -d, -f5)" = "$val"
    check "flips is the sum over the logged steps ($flips)" \
        test "$(echo "$row" | cut -d, -f8)" = "$flips"
    # threshold_consensus keeps int16 votes: 2 bytes of state per weight (SPEC.md)
    check "state_bytes_per_weight of threshold_consensus is 2" \
        awk -v v="$(echo "$row" | cut -d, -f9)" 'BEGIN { exit !(v == 2) }'
    check "the Markdown table on stdout has a header, a rule and 4 rows" \
        test "$(grep -c '^|' "$tmp/table")" -eq 6
else
    fail "results.csv is written" "$tmp/err"
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
