#!/bin/bash
# fuzz_bg.sh SECONDS NAME:FORKS...  (on the device machine, from the repository root)
# The harnesses were built here with FUZZ_BUILD=/work/main/_build-fuzzlong, so their plugin
# folder and fixtures are compiled in as /work/main/...: link the copy there.
set -u
T=$1; shift
R=$PWD
if [ "$R" != /work/main ]; then mkdir -p /work && ln -sfn "$R" /work/main; fi
B=/work/main/_build-fuzzlong
export LD_LIBRARY_PATH=$R/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
tar -C "$R" -xJf "$R/_fuzzcarry/fz.tar.xz"
[ -f "$R/_fuzzcarry/fzcorpus.tar.xz" ] && tar -C "$B" -xJf "$R/_fuzzcarry/fzcorpus.tar.xz"
mkdir -p "$B/corpus" "$B/artifacts" "$B/tmp"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:symbolize=1:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
unset PRIMAL_PLUGIN_PATH
for nf in "$@"; do
    n=${nf%%:*} f=${nf#*:}
    mkdir -p "$B/corpus/$n" "$B/tmp/$n"
    echo "fuzz $n: -fork=$f for ${T}s from $(date +%T)" >>"$OUT/fuzz_summary.txt"
    TMPDIR=$B/tmp/$n nice -n 19 "$B/bin/fuzz_$n" -fork="$f" -ignore_crashes=0 \
        -max_total_time="$T" -detect_leaks=1 -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$B/artifacts/$n-" \
        "$B/corpus/$n" "$R/tests/fuzz/corpus/$n" >"$OUT/fuzz_$n.log" 2>&1 &
done
wait
for nf in "$@"; do
    n=${nf%%:*}
    echo "fuzz $n: done $(date +%T): $(grep -a '^#' "$OUT/fuzz_$n.log" | tail -n 1)" >>"$OUT/fuzz_summary.txt"
done
ls "$B/artifacts" >>"$OUT/fuzz_summary.txt" 2>&1
tar -C "$B" -cJf "$OUT/fzcorpus.tar.xz" corpus
