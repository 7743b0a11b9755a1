#!/bin/sh
# fuzz.sh: build and run PRIMAL's libFuzzer harnesses (docs/FUZZING.md).
#
#   tests/fuzz/fuzz.sh check               exit 0 where clang can build a libFuzzer program
#                                          with ASan and UBSan here, else 77 with a message
#   tests/fuzz/fuzz.sh build               compile the harnesses (clang, -fsanitize=fuzzer,
#                                          address,undefined; the library sources and the plugins
#                                          compiled directly, not the installed libprimal)
#   tests/fuzz/fuzz.sh run [NAME...]       build, then run each harness (all by default) for
#                                          FUZZ_SECONDS on its seed corpus tests/fuzz/corpus/NAME;
#                                          a crash, a leak, a timeout or running out of memory
#                                          fails, naming the reproducer
#   tests/fuzz/fuzz.sh repro NAME FILE...  build, then run harness NAME once on each FILE (a
#                                          reproducer, e.g. from tests/fuzz/crashes/)
#   tests/fuzz/fuzz.sh corpus              rewrite tests/fuzz/corpus/ from the test fixtures and
#                                          examples (tests/fuzz/mkcorpus.c)
#
# Environment:
#   FUZZ_BUILD    where everything is built and run (default: _build-fuzz in the source tree;
#                 `make fuzz` passes its build tree's tests/fuzz-build)
#   FUZZ_SECONDS  seconds each harness runs (default 60)
#   FUZZ_JOBS     harnesses run at once (default: the number of cores)
#   FUZZ_FLAGS    more libFuzzer flags for run (e.g. -only_ascii=1)
#   CLANG         the compiler (default: clang)
# New corpus entries go to $FUZZ_BUILD/corpus/NAME (the seed corpus in the tree is only read),
# crash artifacts to $FUZZ_BUILD/artifacts/, each run's output to $FUZZ_BUILD/logs/NAME.log.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
fz=$top/tests/fuzz
B=${FUZZ_BUILD:-$top/_build-fuzz}
CLANG=${CLANG:-clang}
SECONDS_EACH=${FUZZ_SECONDS:-60}
JOBS=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}

HARNESSES="safetensors checkpoint checkpoint_signed tokenizer bpe experiment loader_text"
HARNESSES="$HARNESSES loader_tokens"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CFLAGS_BASE="-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Wall -Wextra"
CFLAGS_BASE="$CFLAGS_BASE -Wno-unknown-pragmas -Wno-unused-command-line-argument"

die() {
    echo "fuzz.sh: $*" >&2
    exit 1
}

# 0 where $CLANG builds and runs a libFuzzer program with ASan and UBSan.
can_fuzz() {
    command -v "$CLANG" >/dev/null 2>&1 || return 1
    d=$(mktemp -d)
    cat >"$d/t.c" <<'EOF'
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return n > 0 && d[0] == 1; }
EOF
    ok=1
    if "$CLANG" -fsanitize=fuzzer,address,undefined "$d/t.c" -o "$d/t" >/dev/null 2>&1 &&
        "$d/t" -runs=10 >/dev/null 2>&1; then
        ok=0
    fi
    rm -rf "$d"
    return $ok
}

check() {
    if can_fuzz; then
        return 0
    fi
    echo "fuzz.sh: no clang with libFuzzer here ($CLANG -fsanitize=fuzzer,address,undefined" \
        "fails; on Debian 12: apt-get install clang libclang-rt-14-dev); fuzzing skipped" >&2
    exit 77
}

# OUT is older than one of the files after it (or missing).
stale() {
    out=$1
    shift
    [ -e "$out" ] || return 0
    for f in "$@"; do
        # shellcheck disable=SC3013 # -nt: dash and bash have it
        [ "$f" -nt "$out" ] && return 0
    done
    return 1
}

build() {
    check
    PKGS="inih jansson libpcre2-8 libutf8proc libcrypto openblas"
    # shellcheck disable=SC2086 # a list of packages
    pkgcflags=$(pkg-config --cflags $PKGS) || die "pkg-config: $PKGS (scripts/install-deps.sh)"
    # shellcheck disable=SC2086
    pkglibs=$(pkg-config --libs $PKGS)
    mkdir -p "$B/obj" "$B/plugins" "$B/bin" "$B/corpus" "$B/artifacts" "$B/logs" "$B/tmp"
    # (the jobs below run through sh -c, which takes one level of quoting off)
    defs="-I$top/core -DPRIMAL_PKGLIBDIR=\\\"$B/plugins\\\" -DFUZZ_PLUGIN_DIR=\\\"$B/plugins\\\""
    defs="$defs -DFUZZ_FIXTURES=\\\"$top/tests/fixtures\\\""
    # shellcheck disable=SC2086
    cflags="$CFLAGS_BASE $SAN $defs $pkgcflags"
    headers="$top/core/*.h $top/core/primal/*.h $top/kernels/cpu/*.h"

    # libprimal's CPU sources (Makefile.am's core_libprimal_la_SOURCES without CUDA and MPI),
    # with coverage for libFuzzer, and the plugins: two jobs lists for xargs -P
    : >"$B/jobs"
    objs=
    for src in "$top"/core/*.c "$top"/kernels/cpu/*.c; do
        case $src in */model_cuda.c) continue ;; esac
        o=$B/obj/$(basename "$(dirname "$src")")_$(basename "$src" .c).o
        objs="$objs $o"
        # shellcheck disable=SC2086
        if stale "$o" "$src" $headers; then
            echo "$CLANG $cflags -fsanitize=fuzzer-no-link -c $src -o $o" >>"$B/jobs"
        fi
    done
    for src in "$top"/grids/*.c "$top"/plugins/*.c "$top"/schedulers/*.c "$top"/loaders/*.c; do
        so=$B/plugins/$(basename "$src" .c).so
        # shellcheck disable=SC2086
        if stale "$so" "$src" $headers "$top"/plugins/*.h "$top"/loaders/*.h; then
            echo "$CLANG $cflags -fsanitize=fuzzer-no-link -fPIC -shared $src -o $so -lm" \
                >>"$B/jobs"
        fi
    done
    if [ -s "$B/jobs" ]; then
        echo "fuzz.sh: compiling $(wc -l <"$B/jobs") library and plugin sources with $CLANG"
        tr '\n' '\0' <"$B/jobs" | xargs -0 -P "$JOBS" -n 1 sh -c || die "compilation failed"
        rm -f "$B/libprimal_fuzz.a"
    fi
    # shellcheck disable=SC2086
    [ -f "$B/libprimal_fuzz.a" ] || ar rcs "$B/libprimal_fuzz.a" $objs

    : >"$B/jobs"
    for name in $HARNESSES; do
        case $name in
        bpe) srcs="$fz/fuzz_bpe.c $fz/fuzz_tokenizer.c" extra=-DFUZZ_BPE ;;
        checkpoint) srcs=$fz/fuzz_checkpoint.c extra= ;;
        checkpoint_signed) srcs=$fz/fuzz_checkpoint.c extra=-DFUZZ_RESIGN ;;
        loader_text) srcs=$fz/fuzz_loader.c extra="-DFUZZ_LOADER=\\\"text\\\"" ;;
        loader_tokens) srcs=$fz/fuzz_loader.c extra="-DFUZZ_LOADER=\\\"tokens\\\"" ;;
        *) srcs=$fz/fuzz_$name.c extra= ;;
        esac
        bin=$B/bin/fuzz_$name
        # shellcheck disable=SC2086
        if stale "$bin" $srcs "$fz/fuzz_common.c" "$fz"/*.h "$B/libprimal_fuzz.a"; then
            echo "$CLANG $cflags $extra -fsanitize=fuzzer $srcs $fz/fuzz_common.c -o $bin" \
                "-rdynamic -Wl,--whole-archive $B/libprimal_fuzz.a -Wl,--no-whole-archive" \
                "$pkglibs -lgomp -ldl -lm" >>"$B/jobs"
        fi
    done
    if [ -s "$B/jobs" ]; then
        echo "fuzz.sh: linking $(wc -l <"$B/jobs") harnesses"
        tr '\n' '\0' <"$B/jobs" | xargs -0 -P "$JOBS" -n 1 sh -c || die "linking failed"
    fi
    rm -f "$B/jobs"
}

# Sanitizer settings for every run: leaks count, UBSan stops at the first report.
run_env() {
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:symbolize=1:allocator_may_return_null=0
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    TMPDIR=$B/tmp
    export ASAN_OPTIONS UBSAN_OPTIONS TMPDIR
    unset PRIMAL_PLUGIN_PATH
}

# Run harness $1 for SECONDS_EACH; prints one summary line; returns its status.
run_one() {
    name=$1
    log=$B/logs/$name.log
    mkdir -p "$B/corpus/$name"
    st=0
    # shellcheck disable=SC2086
    "$B/bin/fuzz_$name" -max_total_time="$SECONDS_EACH" -detect_leaks=1 -timeout=30 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$B/artifacts/$name-" \
        ${FUZZ_FLAGS:-} "$B/corpus/$name" "$fz/corpus/$name" >"$log" 2>&1 || st=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -a -o 'cov: [0-9]*' "$log" | tail -n 1 | sed 's/cov: //')
    if [ "$st" -eq 0 ]; then
        echo "fuzz $name: ok, ${execs:-?} runs in ${SECONDS_EACH}s, coverage ${cov:-?}"
        return 0
    fi
    echo "fuzz $name: FAILED (status $st) after ${execs:-?} runs; log $log"
    grep -a -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|artifact_prefix|Test unit written)' \
        "$log" | head -n 8 | sed 's/^/    /'
    echo "    reproduce: FUZZ_BUILD=$B tests/fuzz/fuzz.sh repro $name $B/artifacts/$name-*"
    return 1
}

run() {
    build
    run_env
    names=${*:-$HARNESSES}
    # shellcheck disable=SC2086
    set -- $names
    for n in "$@"; do
        [ -x "$B/bin/fuzz_$n" ] || die "no harness named $n (harnesses: $HARNESSES)"
    done
    echo "fuzz.sh: running $# harnesses, ${SECONDS_EACH}s each, $JOBS at a time"
    rm -rf "$B/status"
    mkdir -p "$B/status"
    # shellcheck disable=SC2016 # expanded by the inner sh
    for n in "$@"; do echo "$n"; done |
        xargs -P "$JOBS" -I{} sh -c 'sh "$0" run-one "$1" >"$2/status/$1.out" 2>&1;
            echo $? >"$2/status/$1.rc"; cat "$2/status/$1.out"' "$fz/fuzz.sh" {} "$B"
    status=0
    for n in "$@"; do
        rc=$(cat "$B/status/$n.rc" 2>/dev/null || echo 1)
        [ "$rc" -eq 0 ] || status=1
    done
    rm -rf "$B/tmp"/primal-fuzz.* 2>/dev/null || true
    return $status
}

repro() {
    [ $# -ge 2 ] || die "usage: fuzz.sh repro NAME FILE..."
    build
    run_env
    name=$1
    shift
    "$B/bin/fuzz_$name" -detect_leaks=1 -runs=1 "$@"
}

corpus() {
    build
    run_env
    # shellcheck disable=SC2086,SC2046 # flag lists
    "$CLANG" $CFLAGS_BASE $SAN -I"$top/core" -DFUZZ_PLUGIN_DIR="\"$B/plugins\"" \
        -DFUZZ_FIXTURES="\"$top/tests/fixtures\"" "$fz/mkcorpus.c" "$fz/fuzz_common.c" \
        -o "$B/bin/mkcorpus" -rdynamic -Wl,--whole-archive "$B/libprimal_fuzz.a" \
        -Wl,--no-whole-archive $(pkg-config --libs inih jansson libpcre2-8 libutf8proc \
        libcrypto openblas) -lgomp -ldl -lm
    "$B/bin/mkcorpus" "$fz/corpus" "$top/examples"
    du -sh "$fz"/corpus/* | sed 's/^/    /'
}

cmd=${1:-run}
[ $# -gt 0 ] && shift
case $cmd in
check) check ;;
build) build ;;
run) run "$@" ;;
run-one) run_env && run_one "$1" ;;
repro) repro "$@" ;;
corpus) corpus ;;
*) die "unknown command $cmd (check, build, run, repro, corpus)" ;;
esac
