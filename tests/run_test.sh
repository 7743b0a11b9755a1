#!/bin/sh
# run_test.sh: end-to-end tests of primal-run's training loop (core/train.c; SPEC.md, "Flip
# policies", "The experiment file and the run directory"):
#   - a 6-step run of each flip policy leaves config.ini, log.jsonl with the keys SPEC.md names
#     (and a first loss of ln 256, what a model with near-zero logits scores on bytes) and a
#     checkpoint;
#   - for each policy, 4 steps then --resume to 8 give the same losses and the same final
#     checkpoint, byte for byte, as 8 steps at once, and primal-eval reads both alike;
#   - a run stopped by SIGINT exits 130 with a checkpoint, and --resume ends where an
#     uninterrupted run ends;
#   - --resume passes over a corrupt newest checkpoint with a warning and resumes from the
#     previous one.
# Tiny models (dim 32, seq 32, batch 4) keep it to seconds.
# shellcheck source-path=SCRIPTDIR source=run_lib.sh
. "$(dirname "$0")/run_lib.sh"

need_programs "$RUN" "$EVAL"
write_base "$tmp/base.ini"
policies="threshold_consensus stochastic_zscore momentum_carry adamw latent_adamw"

# ---------------------------------------------------------------------------------------------
# Each policy trains

for pol in $policies; do
    d=$tmp/smoke-$pol
    if ! "$RUN" "$tmp/base.ini" --set "run.out=$d" --set "flip.plugin=$pol" --set run.steps=6 \
        --set run.ckpt_every=0 --set run.eval_every=3 >"$tmp/out" 2>&1; then
        fail "$pol: a 6-step run succeeds" "$tmp/out"
        continue
    fi
    pass "$pol: a 6-step run succeeds"
    check "$pol: config.ini holds the resolved [flip] plugin and steps" \
        sh -c "grep -qx 'plugin = $pol' '$d/config.ini' && grep -qx 'steps = 6' '$d/config.ini'"
    missing=$(grep -v '"event"' "$d/log.jsonl" | grep -v '"val_loss"' | awk '
        { for (i = 1; i <= n; i++) if (index($0, "\"" k[i] "\":") == 0) print NR ": " k[i] }
        BEGIN { n = split("step loss lr tokens_per_s flips flip_frac trainable peak_mem_bytes", k, " ") }')
    nlines=$(grep -v '"event"' "$d/log.jsonl" | grep -c '"loss":')
    if [ -z "$missing" ] && [ "$nlines" -eq 6 ]; then
        pass "$pol: log.jsonl has 6 training lines with step, loss, lr, tokens_per_s, flips, flip_frac, trainable, peak_mem_bytes"
    else
        fail "$pol: log.jsonl training lines" "lines: $nlines; missing: $missing"
    fi
    check "$pol: log.jsonl has val_loss lines at steps 3 and 6" \
        sh -c "grep -q '\"step\":3,\"val_loss\":' '$d/log.jsonl' &&
               grep -q '\"step\":6,\"val_loss\":' '$d/log.jsonl'"
    first=$(grep '"step":1,' "$d/log.jsonl" | sed 's/.*"loss":\([^,]*\).*/\1/')
    check "$pol: the first loss ($first) is ln 256 = 5.545 within 0.1" \
        awk -v l="$first" 'BEGIN { d = l - log(256); exit !(l != "" && d < 0.1 && d > -0.1) }'
    check "$pol: the run leaves ckpt-00000006.safetensors" test -s "$d/ckpt-00000006.safetensors"
done

# ---------------------------------------------------------------------------------------------
# Resume is bit-identical.  Both runs use the same run directory name (the resolved config,
# run.out included, is saved in each checkpoint), the first one moved aside when it is done.

write_ids "$tmp/ids.safetensors" "In the beginning God created the heaven and the earth."
for pol in $policies; do
    x=$tmp/x
    a=$tmp/resume-$pol
    rm -rf "$x"
    if ! "$RUN" "$tmp/base.ini" --set "run.out=$x" --set "flip.plugin=$pol" >"$tmp/out" 2>&1; then
        fail "$pol: 8 steps in one go" "$tmp/out"
        continue
    fi
    mv "$x" "$a"
    if ! "$RUN" "$tmp/base.ini" --set "run.out=$x" --set "flip.plugin=$pol" --set run.steps=4 \
        >"$tmp/out" 2>&1; then
        fail "$pol: the first 4 steps" "$tmp/out"
        continue
    fi
    if ! "$RUN" "$tmp/base.ini" --set "run.out=$x" --set "flip.plugin=$pol" --resume \
        >"$tmp/out" 2>&1; then
        fail "$pol: --resume to step 8" "$tmp/out"
        continue
    fi
    check "$pol: --resume says it resumed from ckpt-00000004 at step 4" \
        grep -q "resumed from .*ckpt-00000004.safetensors at step 4" "$tmp/out"
    train_lines "$a/log.jsonl" >"$tmp/la"
    train_lines "$x/log.jsonl" >"$tmp/lb"
    if cmp -s "$tmp/la" "$tmp/lb" && [ "$(grep -c . "$tmp/la")" -eq 8 ]; then
        pass "$pol: steps 1-8 log the same loss, lr and flips with and without the resume"
    else
        diff "$tmp/la" "$tmp/lb" >"$tmp/diff"
        fail "$pol: steps 1-8 log the same loss, lr and flips with and without the resume" \
            "$tmp/diff"
    fi
    check "$pol: the final checkpoints are byte-identical (weights, policy and AdamW state, loader position)" \
        cmp -s "$a/ckpt-00000008.safetensors" "$x/ckpt-00000008.safetensors"
    if "$EVAL" "$a/ckpt-00000008.safetensors" --tokens "$tmp/ids.safetensors" \
        -o "$tmp/ea.safetensors" >"$tmp/out" 2>&1 &&
        "$EVAL" "$x/ckpt-00000008.safetensors" --tokens "$tmp/ids.safetensors" \
            -o "$tmp/eb.safetensors" >>"$tmp/out" 2>&1; then
        check "$pol: primal-eval gives byte-identical logits and loss for both" \
            cmp -s "$tmp/ea.safetensors" "$tmp/eb.safetensors"
    else
        fail "$pol: primal-eval reads both final checkpoints" "$tmp/out"
    fi
done

# A resume logs what an uninterrupted run logs, schedule events included (without schedulers
# there are none).
grep '"event":"schedule"' "$tmp/x/log.jsonl" >"$tmp/ev"
if [ -s "$tmp/ev" ]; then
    fail "a resumed run without schedulers logs no schedule event" "$tmp/ev"
else
    pass "a resumed run without schedulers logs no schedule event"
fi

# ---------------------------------------------------------------------------------------------
# --resume skips a corrupt newest checkpoint.  The copy of an 8-step run gets one byte of its
# ckpt-8 flipped; --resume must warn, restart from ckpt-4 and write the same ckpt-8 again.

pol=threshold_consensus
x=$tmp/x
rm -rf "$x"
cp -r "$tmp/resume-$pol" "$x"
f=$x/ckpt-00000008.safetensors
size=$(wc -c <"$f" | tr -d ' ')
off=$((size - 100)) # in the data section (the state blobs come last)
byte=$(od -An -tu1 -j "$off" -N1 "$f" | tr -d ' ')
le_bytes $(((byte + 1) & 255)) 1 | dd of="$f" bs=1 seek="$off" conv=notrunc 2>/dev/null
if cmp -s "$f" "$tmp/resume-$pol/ckpt-00000008.safetensors"; then
    fail "the corrupted copy differs from the original"
fi
if "$RUN" "$tmp/base.ini" --set "run.out=$x" --set "flip.plugin=$pol" --resume >"$tmp/out" 2>&1
then
    pass "--resume with a corrupt newest checkpoint succeeds"
    check "it warns that ckpt-00000008 does not verify" \
        grep -Eq "warning: .*ckpt-00000008.safetensors.*(checksum|corrupt|verify)" "$tmp/out"
    check "it resumes from ckpt-00000004" \
        grep -q "resumed from .*ckpt-00000004.safetensors at step 4" "$tmp/out"
    check "the rewritten ckpt-00000008 equals the uninterrupted run's" \
        cmp -s "$f" "$tmp/resume-$pol/ckpt-00000008.safetensors"
else
    fail "--resume with a corrupt newest checkpoint succeeds" "$tmp/out"
fi

# ---------------------------------------------------------------------------------------------
# SIGINT: finish the step, checkpoint, exit 130; --resume completes the run.

pol=momentum_carry
steps=300
x=$tmp/x
rm -rf "$x"
set -- "$tmp/base.ini" --set "run.out=$x" --set "flip.plugin=$pol" --set "run.steps=$steps" \
    --set run.ckpt_every=0
if "$RUN" "$@" >"$tmp/out" 2>&1; then
    mv "$x" "$tmp/whole"
    "$RUN" "$@" >"$tmp/out" 2>&1 &
    pid=$!
    n=0
    while [ $n -lt 600 ] && ! grep -q '"step":2,' "$x/log.jsonl" 2>/dev/null; do
        sleep 0.05
        n=$((n + 1))
    done
    kill -INT "$pid"
    wait "$pid"
    rc=$?
    check "SIGINT stops primal-run with status 130 (got $rc)" test "$rc" -eq 130
    ck=
    for f in "$x"/ckpt-*.safetensors; do [ -f "$f" ] && ck=$(basename "$f"); done
    stopped=$(printf '%s' "$ck" | sed 's/ckpt-0*\([0-9][0-9]*\)\.safetensors/\1/')
    if [ -n "$stopped" ] && [ "$stopped" -lt "$steps" ]; then
        pass "SIGINT leaves a checkpoint of the step it stopped at ($ck)"
    else
        fail "SIGINT leaves a checkpoint before step $steps" "$(ls "$x")"
    fi
    check "primal-run says how to continue" grep -q "continue with --resume" "$tmp/out"
    if "$RUN" "$@" --resume >"$tmp/out" 2>&1; then
        pass "--resume after SIGINT completes"
        check "it ends with the checkpoint of an uninterrupted run, byte for byte" \
            cmp -s "$x/ckpt-00000300.safetensors" "$tmp/whole/ckpt-00000300.safetensors"
        train_lines "$tmp/whole/log.jsonl" >"$tmp/la"
        train_lines "$x/log.jsonl" >"$tmp/lb"
        check "and logs the same $steps training lines" cmp -s "$tmp/la" "$tmp/lb"
    else
        fail "--resume after SIGINT completes" "$tmp/out"
    fi
else
    fail "a $steps-step run of $pol" "$tmp/out"
fi

finish
