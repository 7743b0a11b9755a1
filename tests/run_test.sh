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
#     previous one;
#   - the run directory belongs to one run: a second run into it is refused, untouched, unless
#     it resumes (refused where config.ini differs, but for --resume-anyway) or overwrites, and
#     --check refuses and passes alike, touching nothing; a run that fails at start (no data,
#     a refused directory, a bad value) leaves no directory it created; temporary files of
#     killed runs are removed;
#   - [run] keep_checkpoints keeps the newest N;
#   - a log.jsonl that cannot be written (/dev/full; a file-size limit mid-run) stops the run
#     with an error naming it, the log cut back to its last whole line;
#   - training lines carry grad_norm and time_s (going on across a resume), and the final
#     sample is also in sample.txt.
# Tiny models (dim 32, seq 32, batch 4) keep it to seconds.
# shellcheck source-path=SCRIPTDIR source=run_lib.sh
. "$(dirname "$0")/run_lib.sh"

# The names in directory $1 that match glob $2 (default *), each followed by a space.
names() {
    _l=
    for _f in "$1"/${2:-*}; do
        if [ -e "$_f" ]; then _l="$_l${_f##*/} "; fi
    done
    printf '%s' "$_l"
}

# run_lib.sh's train_lines, without time_s either (wall-clock time varies from run to run too)
train_lines() {
    grep '"loss":' "$1" | grep -v '"event"' |
        sed 's/,"tokens_per_s":[^,}]*//; s/,"peak_mem_bytes":[^,}]*//; s/,"time_s":[^,}]*//'
}

need_programs "$RUN" "$EVAL"
write_base "$tmp/base.ini"
policies="threshold_consensus stochastic_zscore momentum_carry adam_carry adamw latent_adamw"

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
        BEGIN { n = split("step loss grad_norm lr tokens_per_s flips flip_frac trainable peak_mem_bytes policy_state_bytes time_s", k, " ") }')
    nlines=$(grep -v '"event"' "$d/log.jsonl" | grep -c '"loss":')
    if [ -z "$missing" ] && [ "$nlines" -eq 6 ]; then
        pass "$pol: log.jsonl has 6 training lines with step, loss, grad_norm, lr, tokens_per_s, flips, flip_frac, trainable, peak_mem_bytes, policy_state_bytes, time_s"
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

# ---------------------------------------------------------------------------------------------
# One run owns its run directory (issue 24.4): a second run into a directory holding a run's
# checkpoints or log.jsonl is refused before it writes anything; --resume is refused where
# config.ini differs in a key that changes what is computed (unless --resume-anyway);
# --overwrite removes the old run's files, and only those.

x=$tmp/own
rm -rf "$x"
set -- "$tmp/base.ini" --set "run.out=$x" --set flip.plugin=momentum_carry
if "$RUN" "$@" >"$tmp/out" 2>&1; then
    ls "$x" >"$tmp/ls1"
    cp "$x/log.jsonl" "$tmp/log1"
    cp "$x/config.ini" "$tmp/cfg1"
    if "$RUN" "$@" --set run.steps=3 >"$tmp/out" 2>&1; then
        fail "a second run into a run directory is refused" "$tmp/out"
    else
        pass "a second run into a run directory is refused"
        check "the refusal names --resume and --overwrite" \
            sh -c "grep -q -- '--resume' '$tmp/out' && grep -q -- '--overwrite' '$tmp/out'"
        ls "$x" >"$tmp/ls2"
        check "the directory is as it was (its files, log.jsonl, config.ini)" \
            sh -c "cmp -s '$tmp/ls1' '$tmp/ls2' && cmp -s '$tmp/log1' '$x/log.jsonl' &&
                   cmp -s '$tmp/cfg1' '$x/config.ini'"
    fi
    # --check refuses what the run refuses (issue 24.7), with the same message, and --check
    # --overwrite / --resume pass; none of them creates, deletes or writes anything there.
    snap() { (cd "$x" && ls -ld --time-style=+%s.%N . ./* && cksum ./*) >"$1" 2>&1; }
    snap "$tmp/snap1"
    "$RUN" "$@" --check >"$tmp/check" 2>"$tmp/err"
    rc=$?
    check "--check refuses it too (status $rc), naming the directory, --resume and --overwrite" \
        sh -c "test $rc -eq 1 && grep -q -- '$x: holds another run' '$tmp/err' &&
               grep -q -- '--resume' '$tmp/err' && grep -q -- '--overwrite' '$tmp/err'"
    "$RUN" "$@" --set run.steps=3 >"$tmp/out" 2>&1
    check "with the run's own message" cmp -s "$tmp/err" "$tmp/out"
    for fl in --overwrite --resume --resume-anyway; do
        if "$RUN" "$@" --check "$fl" >"$tmp/check" 2>"$tmp/err"; then
            pass "--check $fl passes it"
        else
            fail "--check $fl passes it" "$tmp/err"
        fi
    done
    "$RUN" "$@" --check --resume --set optim.lr=1e-2 >/dev/null 2>"$tmp/err"
    rc=$?
    check "--check --resume with another [optim] lr is refused as --resume is (status $rc)" \
        sh -c "test $rc -eq 1 && grep -q '\[optim\] lr = ' '$tmp/err' &&
               grep -q -- '--resume-anyway' '$tmp/err'"
    "$RUN" "$@" --check --resume --overwrite >/dev/null 2>&1
    rc=$?
    check "--check --resume --overwrite is a usage error (status $rc)" test "$rc" -eq 2
    snap "$tmp/snap2"
    check "and --check left the directory as it was (names, sizes, times, contents)" \
        cmp -s "$tmp/snap1" "$tmp/snap2"
    "$RUN" "$@" --check --overwrite --set "run.out=$tmp/never-ow/a" >/dev/null 2>"$tmp/err"
    rc=$?
    check "--check --overwrite of a directory that does not exist passes (status $rc) and creates none" \
        sh -c "test $rc -eq 0 && test ! -e '$tmp/never-ow'"
    if "$RUN" "$@" --resume --set optim.lr=1e-2 --set run.steps=10 >"$tmp/out" 2>&1; then
        fail "--resume with another [optim] lr is refused" "$tmp/out"
    else
        check "--resume with another [optim] lr is refused, naming the key and --resume-anyway" \
            sh -c "grep -q '\[optim\] lr = ' '$tmp/out' && grep -q -- '--resume-anyway' '$tmp/out'"
        check "and leaves log.jsonl as it was" cmp -s "$tmp/log1" "$x/log.jsonl"
    fi
    "$RUN" "$@" --resume --overwrite >"$tmp/out" 2>&1
    rc=$?
    check "--resume with --overwrite is a usage error (status $rc)" \
        sh -c "test $rc -eq 2 && grep -q 'not both' '$tmp/out'"
    if "$RUN" "$@" --resume-anyway --set optim.lr=1e-2 --set run.steps=10 >"$tmp/out" 2>&1
    then
        check "--resume-anyway resumes from step 8 all the same" \
            grep -q "resumed from .*ckpt-00000008.safetensors at step 8" "$tmp/out"
        check "and config.ini holds the new lr" grep -qx 'lr = 1e-2' "$x/config.ini"
    else
        fail "--resume-anyway resumes all the same" "$tmp/out"
    fi
    echo mine >"$x/notes.txt"
    if "$RUN" "$@" --overwrite --set run.steps=3 >"$tmp/out" 2>&1; then
        pass "--overwrite trains afresh in the run directory"
        files=$(names "$x")
        check "only the new run's files and notes.txt are left (got: $files)" \
            test "$files" = "ckpt-00000003.safetensors config.ini log.jsonl notes.txt "
        check "its log.jsonl has the new run's 3 training lines" \
            test "$(train_lines "$x/log.jsonl" | grep -c .)" -eq 3
    else
        fail "--overwrite trains afresh in the run directory" "$tmp/out"
    fi
else
    fail "an 8-step run to refuse a second one over" "$tmp/out"
fi

# A run that fails at start (here, no data) leaves no run directory, nested ones included.
"$RUN" "$tmp/base.ini" --set "run.out=$tmp/never/a/b" --set "data.path=$tmp/no-such.txt" \
    >"$tmp/out" 2>&1
rc=$?
check "a run without its data fails (status $rc)" test "$rc" -eq 1
check "and leaves no run directory" test ! -e "$tmp/never"

# Nor one that fails in its first step (issue 24.7; here, rows longer than the data: the loader
# refuses the first batch, after config.ini and log.jsonl were written); in a directory that
# existed, it removes the files it wrote and leaves the others, so that a second try is not
# refused as "another run".
"$RUN" "$tmp/base.ini" --set "run.out=$tmp/never1/a/b" --set run.seq_len=100000 \
    >"$tmp/out" 2>&1
rc=$?
check "a run whose first batch fails fails (status $rc)" test "$rc" -eq 1
check "and leaves no run directory" test ! -e "$tmp/never1"
mkdir -p "$tmp/kept"
echo mine >"$tmp/kept/notes.txt"
"$RUN" "$tmp/base.ini" --set "run.out=$tmp/kept" --set run.seq_len=100000 >"$tmp/out" 2>&1
rc=$?
files=$(names "$tmp/kept")
check "in a directory that existed, only its other files are left (status $rc; got: $files)" \
    test "$rc" -eq 1 -a "$files" = "notes.txt "
"$RUN" "$tmp/base.ini" --set "run.out=$tmp/refused" --set run.steps=1 >"$tmp/out" 2>&1
"$RUN" "$tmp/base.ini" --set "run.out=$tmp/refused" --set run.steps=1 >"$tmp/out" 2>&1
rc=$?
files=$(names "$tmp/refused")
check "a run refused its directory (status $rc) leaves the other run's files (got: $files)" \
    test "$rc" -eq 1 -a "$files" = "ckpt-00000001.safetensors config.ini log.jsonl "

# Temporary files of killed runs go at start; those of a live process, or not a run's, stay.
# 99999999 is no process (pid_max is at most 2^22); $$ is this shell.
x=$tmp/stale
mkdir -p "$x"
: >"$x/ckpt-00000004.safetensors.tmp.99999999"
: >"$x/config.ini.tmp.$$"
: >"$x/data.tmp.99999999"
if "$RUN" "$tmp/base.ini" --set "run.out=$x" --set run.steps=2 >"$tmp/out" 2>&1; then
    check "a killed run's ckpt-00000004.safetensors.tmp.99999999 is removed, with a warning" \
        sh -c "test ! -e '$x/ckpt-00000004.safetensors.tmp.99999999' &&
               grep -q 'warning: removed .*ckpt-00000004.safetensors.tmp.99999999' '$tmp/out'"
    check "a live process's config.ini.tmp.PID and a foreign data.tmp.99999999 stay" \
        test -e "$x/config.ini.tmp.$$" -a -e "$x/data.tmp.99999999"
else
    fail "a run into a directory with temporary files" "$tmp/out"
fi

# ---------------------------------------------------------------------------------------------
# [run] keep_checkpoints = 2 keeps the two newest (issue 25.7), also after a resume.

x=$tmp/keep
set -- "$tmp/base.ini" --set "run.out=$x" --set run.ckpt_every=2 --set run.keep_checkpoints=2
if "$RUN" "$@" >"$tmp/out" 2>&1; then
    files=$(names "$x" 'ckpt-*')
    check "8 steps, a checkpoint every 2, keep 2: ckpt 6 and 8 are left (got: $files)" \
        test "$files" = "ckpt-00000006.safetensors ckpt-00000008.safetensors "
    if "$RUN" "$@" --resume --set run.steps=12 >"$tmp/out" 2>&1; then
        files=$(names "$x" 'ckpt-*')
        check "resumed to 12: ckpt 10 and 12 are left (got: $files)" \
            test "$files" = "ckpt-00000010.safetensors ckpt-00000012.safetensors "
    else
        fail "--resume to 12 with keep_checkpoints = 2" "$tmp/out"
    fi
else
    fail "a run with keep_checkpoints = 2" "$tmp/out"
fi

# ---------------------------------------------------------------------------------------------
# A log.jsonl that cannot be written stops the run (issue 25.7).

x=$tmp/full
if [ -c /dev/full ] && [ -w /dev/full ]; then
    mkdir -p "$x"
    ln -s /dev/full "$x/log.jsonl" # --resume: the directory may hold a log (and no checkpoint)
    "$RUN" "$tmp/base.ini" --set "run.out=$x" --resume >"$tmp/out" 2>&1
    rc=$?
    check "a log.jsonl on a full device stops the run (status $rc)" test "$rc" -eq 1
    check "with an error naming log.jsonl and the cause" \
        grep -q "log.jsonl: cannot write: No space left on device" "$tmp/out"
    check "before it writes a checkpoint" sh -c "! ls '$x'/ckpt-* >/dev/null 2>&1"
else
    printf 'SKIP: /dev/full is not a writable device here\n'
fi

# Mid-run: a file-size limit (dash counts 512-byte blocks, bash 1024) that config.ini fits and
# the log outgrows after some tens of steps; SIGXFSZ ignored, so write() fails with EFBIG.
x=$tmp/fsize
(
    ulimit -f 16 && trap '' XFSZ &&
        exec "$RUN" "$tmp/base.ini" --set "run.out=$x" --set run.steps=300 --set run.ckpt_every=0
) >"$tmp/out" 2>&1
rc=$?
check "a log.jsonl that outgrows the file-size limit stops the run (status $rc)" test "$rc" -eq 1
check "with an error naming log.jsonl" grep -q "log.jsonl: cannot write: File too large" "$tmp/out"
last=$(train_lines "$x/log.jsonl" | tail -n 1 | sed 's/.*"step":\([0-9]*\),.*/\1/')
check "at the step the log failed (last logged step: $last), not at the end" \
    test "${last:-300}" -lt 300
check "and log.jsonl is cut back to its last whole line" \
    sh -c "[ -s '$x/log.jsonl' ] && [ \"\$(tail -c 1 '$x/log.jsonl' | od -An -tx1 | tr -d ' ')\" = 0a ] &&
           ! grep -qv '}\$' '$x/log.jsonl'"

# ---------------------------------------------------------------------------------------------
# Memory accounting (issue 22): the start line states what the run holds per matrix weight
# (policy state, index, float parameters with their AdamW moments) and the policy's state in
# bytes; each training line has the policy's state of the matrices that trained in its step.
# A CPU run has no device figures.  The expected numbers come from the tiny model's shape: byte
# vocabulary V 256, dim C 32, ffn F 64, L 2 layers, untied head, no biases (the smoke runs of
# the first section, 6 steps each).
V=256 C=32 F=64 L=2
W=$((2 * V * C + L * (4 * C * C + 3 * C * F))) # matrix weights, the divisor: 36864
R=$((2 * V + L * (4 * C + 2 * F + C)))          # matrix rows, a float scale each: 1088
NV=$((L * 2 * C + C))                           # the norms' floats: 160
NM=$((2 + 7 * L))                               # matrices: 16
# num FILE PATTERN KEY: KEY's number on FILE's first line that matches PATTERN
num() { grep -m 1 -e "$2" "$1" | sed -n "s/.*\"$3\":\([-0-9.e+]*\).*/\1/p"; }
# near A B: A is B within 1e-6 relative (the log prints 8 significant digits)
# shellcheck disable=SC2317 # called through check
near() {
    awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d
        exit !(a != "" && d <= 1e-6 * (b < 0 ? -b : b) + 1e-9) }'
}
# policy, its state in bytes (each policy's state_bytes), index B/weight, float bytes in all:
# quantised matrices hold a scale per row, and every trainable row and vector has AdamW's m and
# v; adamw's dense float32 matrices keep their values in the index and their moments (and a
# gradient sum) in its state, so only the norms and their moments are float parameters there
for spec in "threshold_consensus $((2 * W)) 0.5 $((12 * (R + NV)))" \
    "momentum_carry $((2 * W + 20 * R + 16 * NM)) 0.5 $((12 * (R + NV)))" \
    "adamw $((12 * W + 8 * NM)) 4 $((12 * NV))"; do
    # shellcheck disable=SC2086 # the spec's words
    set -- $spec
    pol=$1 state=$2 idx=$3 flt=$4
    log=$tmp/smoke-$pol/log.jsonl
    if [ ! -s "$log" ]; then
        fail "$pol: memory accounting (no smoke run log)"
        continue
    fi
    got=$(num "$log" '"event":"start"' policy_state_bytes)
    check "$pol: the start line's policy_state_bytes is $state (got $got)" [ "$got" = "$state" ]
    got=$(num "$log" '"event":"start"' state_bytes_per_weight)
    check "$pol: state_bytes_per_weight is policy_state_bytes / $W weights (got $got)" \
        near "$got" "$(awk -v a="$state" -v w="$W" 'BEGIN { printf "%.10g", a / w }')"
    got=$(num "$log" '"event":"start"' index_bytes_per_weight)
    check "$pol: index_bytes_per_weight is $idx (got $got)" near "$got" "$idx"
    got=$(num "$log" '"event":"start"' float_bytes_per_weight)
    want=$(awk -v a="$flt" -v w="$W" 'BEGIN { printf "%.10g", a / w }')
    check "$pol: float_bytes_per_weight is $flt / $W = $want (got $got)" near "$got" "$want"
    n=$(grep -v '"event"' "$log" | grep '"loss":' | grep -c "\"policy_state_bytes\":$state,")
    check "$pol: all 6 training lines have policy_state_bytes $state (got $n)" [ "$n" -eq 6 ]
    check "$pol: a CPU run logs no device figures" \
        sh -c "! grep -q -e device_used_bytes -e device_peak_bytes '$log'"
done
# The figures follow the trainable set: night_shift trains the embedding, the final norm and the
# head for 2 steps, then adds block 1, then block 0 (threshold_consensus: 2 B per weight).
x=$tmp/mem-night-shift
if "$RUN" "$tmp/base.ini" --set "run.out=$x" --set flip.plugin=threshold_consensus \
    --set run.steps=4 --set scheduler.plugins=night_shift --set night_shift.warmup=2 \
    --set night_shift.every=1 --set night_shift.count=1 >"$tmp/out" 2>&1; then
    head=$((2 * 2 * V * C)) blk=$((2 * (4 * C * C + 3 * C * F)))
    got=$(num "$x/log.jsonl" '"event":"start"' policy_state_bytes)
    check "night_shift: the start line's policy_state_bytes is the embedding's and the head's, $head (got $got)" \
        [ "$got" = "$head" ]
    # moments for the embedding's and the head's rows and the final norm only
    want=$(awk -v a="$((4 * R + 4 * NV + 8 * (2 * V + C)))" -v w="$W" \
        'BEGIN { printf "%.10g", a / w }')
    got=$(num "$x/log.jsonl" '"event":"start"' float_bytes_per_weight)
    check "night_shift: float_bytes_per_weight counts AdamW moments of the trainable only, $want (got $got)" \
        near "$got" "$want"
    got=$(grep '"loss":' "$x/log.jsonl" | sed -n 's/.*"policy_state_bytes":\([0-9]*\),.*/\1/p' |
        tr '\n' ' ')
    want="$head $head $((head + blk)) $((head + 2 * blk)) "
    check "night_shift: steps 1-4 log policy_state_bytes $want(got $got)" [ "$got" = "$want" ]
else
    fail "a 4-step night_shift run" "$tmp/out"
fi

# ---------------------------------------------------------------------------------------------
# Training lines carry time_s and grad_norm, and the sample goes to sample.txt too (issue 24.7).

x=$tmp/sample
set -- "$tmp/base.ini" --set "run.out=$x" --set run.sample_tokens=40 --set run.steps=4
if "$RUN" "$@" >"$tmp/sout" 2>"$tmp/out" && "$RUN" "$@" --resume --set run.steps=8 \
    >"$tmp/sout2" 2>"$tmp/out"; then
    sed -n '/^--- sample ---$/,/^--------------$/p' "$tmp/sout2" | sed '1d;$d' >"$tmp/printed"
    check "sample.txt holds the sample primal-run printed" cmp -s "$tmp/printed" "$x/sample.txt"
    grep '"time_s":' "$x/log.jsonl" | sed 's/.*"step":\([0-9]*\),.*"time_s":\([^,}]*\).*/\1 \2/' \
        >"$tmp/times"
    # shellcheck disable=SC2016 # an awk program
    check "time_s grows over steps 1-8, across the resume at 4" \
        awk 'NR == 1 { p = $2 } $2 < p || $2 < 0 { exit 1 } { p = $2; n++ } END { exit n != 8 }' \
        "$tmp/times"
else
    fail "4 steps with a sample, then --resume to 8" "$tmp/out"
fi
gn() { grep '"step":1,"loss"' "$1" | sed 's/.*"grad_norm":\([^,]*\),.*/\1/'; }
if "$RUN" "$tmp/base.ini" --set "run.out=$tmp/clip" --set optim.clip=0.01 --set run.steps=1 \
    >"$tmp/out" 2>&1 &&
    "$RUN" "$tmp/base.ini" --set "run.out=$tmp/noclip" --set optim.clip=0 --set run.steps=1 \
        >>"$tmp/out" 2>&1; then
    a=$(gn "$tmp/clip/log.jsonl")
    b=$(gn "$tmp/noclip/log.jsonl")
    check "grad_norm is the norm before clipping: $a with clip 0.01, $b without" \
        awk -v a="$a" -v b="$b" 'BEGIN { exit !(a != "" && a == b && a > 0.01) }'
else
    fail "one step with clip 0.01 and without" "$tmp/out"
fi

finish
