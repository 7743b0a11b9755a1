#!/bin/sh
# Data parallelism over MPI on CPU (SPEC.md, "Data parallelism"): 2 ranks with micro-batch b
# follow 1 rank with 2b within float tolerance; a resumed 2-rank run continues; a rank that is
# killed takes the run down within seconds, and --resume continues from the last checkpoint.
# Exit 77 (skip) when this build has no MPI or no mpirun.
set -u
build=${PRIMAL_BUILD_DIR:?PRIMAL_BUILD_DIR is not set}
src=$(cd "$(dirname "$0")/.." && pwd)
run="$build/primal-run"
command -v mpirun >/dev/null 2>&1 || { echo "SKIP: no mpirun"; exit 77; }
"$run" --version | grep -q 'MPI yes' || { echo "SKIP: built without MPI"; exit 77; }
MPIRUN="mpirun --oversubscribe -np 2"
[ "$(id -u)" -eq 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }

cat > "$tmp/m.ini" <<INI
[run]
steps = 12
batch = 8
seq_len = 32
log_every = 1
eval_every = 6
eval_batches = 4
threads = 1
sample_tokens = 0
ckpt_every = 6
[model]
dim = 32
layers = 2
heads = 2
ffn = 64
[optim]
warmup = 2
[flip]
plugin = threshold_consensus
threshold = 5
[data]
plugin = text
path = $src/tests/fixtures/data/genesis.txt
val_fraction = 0.1
INI

losses() { grep -v '"event"' "$1/log.jsonl" | sed -n 's/.*"loss":\([-0-9.e+]*\).*/\1/p'; }
# |a-b| <= 1e-5 * max(|a|, 1) for every pair of lines
close() {
    paste "$1" "$2" | awk '{ d = $1 - $2; if (d < 0) d = -d; m = $1 < 0 ? -$1 : $1;
        if (m < 1) m = 1; if (d > 1e-5 * m) bad++; n++ } END { exit (n == 0 || bad > 0) }'
}

"$run" "$tmp/m.ini" --set run.out="$tmp/one" >"$tmp/one.out" 2>&1
check "one rank, batch 8, trains" "[ -f $tmp/one/ckpt-00000012.safetensors ]"
$MPIRUN "$run" "$tmp/m.ini" --set run.out="$tmp/two" --set run.batch=4 >"$tmp/two.out" 2>&1
check "two ranks, batch 4 each, train" "[ -f $tmp/two/ckpt-00000012.safetensors ]"
losses "$tmp/one" >"$tmp/l1"
losses "$tmp/two" >"$tmp/l2"
check "2 ranks x batch 4 follow 1 rank x batch 8 (12 losses within 1e-5)" \
    "[ \$(wc -l <$tmp/l1) -eq 12 ] && close $tmp/l1 $tmp/l2"
grep val_loss "$tmp/one/log.jsonl" | sed 's/.*val_loss"://' >"$tmp/v1"
grep val_loss "$tmp/two/log.jsonl" | sed 's/.*val_loss"://' >"$tmp/v2"
check "validation losses agree" "close $tmp/v1 $tmp/v2"

# resume: the 2-rank run's directory without its final checkpoint, resumed from step 6, repeats
# steps 7..12 exactly
cp -r "$tmp/two" "$tmp/res"
rm "$tmp/res/ckpt-00000012.safetensors"
$MPIRUN "$run" "$tmp/m.ini" --set run.out="$tmp/res" --set run.batch=4 --resume \
    >"$tmp/res2.out" 2>&1
losses "$tmp/res" | tail -n 6 >"$tmp/l3"
tail -n 6 "$tmp/l2" >"$tmp/l2b"
check "a resumed 2-rank run repeats steps 7..12 of the uninterrupted one exactly" \
    "[ -s $tmp/l3 ] && cmp -s $tmp/l2b $tmp/l3"
"$run" "$tmp/m.ini" --set run.out="$tmp/res" --set run.batch=4 --set run.steps=14 --resume \
    >"$tmp/res3.out" 2>&1
check "resuming a 2-rank checkpoint with 1 rank is refused" \
    "grep -q 'written by a run of 2 ranks' $tmp/res3.out"

# reduce = votes (threshold_consensus, float parameters frozen by [optim] lr = 0): 2 ranks x 2
# micro-batches flip exactly what 1 rank with 4 micro-batches of the same rows flips, step by
# step, for 20 steps, and end with the same weights (greedy samples agree)
set -- --set run.reduce=votes --set run.steps=20 --set run.eval_every=0 --set optim.lr=0 \
    --set optim.min_lr=0 --set run.ckpt_every=0 --set run.sample_tokens=0
"$run" "$tmp/m.ini" "$@" --set run.out="$tmp/vt1" --set run.batch=4 --set run.grad_accum=4 \
    >"$tmp/v1.out" 2>&1
$MPIRUN "$run" "$tmp/m.ini" "$@" --set run.out="$tmp/vt2" --set run.batch=4 \
    --set run.grad_accum=2 >"$tmp/v2.out" 2>&1
flips() { grep -v '"event"' "$1/log.jsonl" | sed -n 's/.*"flips":\([0-9]*\).*/\1/p'; }
flips "$tmp/vt1" >"$tmp/f1"
flips "$tmp/vt2" >"$tmp/f2"
check "reduce = votes: 20 steps of flips, 2 ranks x 2 micro-batches = 1 rank x 4" \
    "[ \$(wc -l <$tmp/f1) -eq 20 ] && [ \$(sort -u $tmp/f1 | wc -l) -gt 1 ] && cmp -s $tmp/f1 $tmp/f2"
gen() { "$build/primal-generate" "$1"/ckpt-00000020.safetensors --prompt "In the" --tokens 40 \
    --temperature 0 2>/dev/null; }
check "reduce = votes: the final weights agree (greedy samples are equal)" \
    "[ -n \"\$(gen $tmp/vt1)\" ] && [ \"\$(gen $tmp/vt1)\" = \"\$(gen $tmp/vt2)\" ]"
grep -v '^threshold' "$tmp/m.ini" >"$tmp/m2.ini"
"$run" "$tmp/m2.ini" "$@" --set flip.plugin=momentum_carry --set run.out="$tmp/vt3" \
    >"$tmp/vt3.out" 2>&1
check "reduce = votes is refused for a policy that is not a vote sum" \
    "grep -q 'reduce: votes: flip policy momentum_carry' $tmp/vt3.out"

# a killed rank stops the run within seconds; the last checkpoint stays valid
$MPIRUN "$run" "$tmp/m.ini" --set run.out="$tmp/kill" --set run.batch=4 --set run.steps=100000 \
    --set run.ckpt_every=5 >"$tmp/kill.out" 2>&1 &
mpid=$!
i=0
while [ $i -lt 100 ] && [ ! -f "$tmp/kill/ckpt-00000010.safetensors" ]; do sleep 0.2; i=$((i + 1)); done
victim=$(pgrep -f "run.out=$tmp/kill" | while read -r p; do
    [ "$(ps -o comm= -p "$p")" = "primal-run" ] || [ "$(ps -o comm= -p "$p")" = "lt-primal-run" ] &&
        echo "$p"; done | tail -n 1)
check "found a rank to kill" "[ -n '$victim' ]"
[ -n "$victim" ] && kill -9 "$victim"
i=0
while kill -0 "$mpid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
check "the other rank stops within 10 s" "! kill -0 $mpid 2>/dev/null"
wait "$mpid"
check "mpirun reports the failure" "[ $? -ne 0 ]"
last=$(ls "$tmp/kill"/ckpt-*.safetensors 2>/dev/null | tail -n 1)
n=$(basename "${last:-ckpt-0.}" | sed 's/ckpt-0*\([0-9][0-9]*\)\..*/\1/')
target=$((n + 5))
$MPIRUN "$run" "$tmp/m.ini" --set run.out="$tmp/kill" --set run.batch=4 --set run.steps=$target \
    --resume >"$tmp/kill2.out" 2>&1
check "--resume continues from step $n to step $target" \
    "[ -f $tmp/kill/ckpt-$(printf %08d $target).safetensors ] && grep -q 'resumed from' $tmp/kill2.out"

if [ $fail -ne 0 ]; then
    for f in "$tmp"/*.out; do echo "== $f"; tail -n 5 "$f"; done
fi
exit $fail
