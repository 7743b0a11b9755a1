#!/bin/sh
# Build PRIMAL twice and run the whole test suite in each build: once with
# -Wall -Wextra -Werror, once under AddressSanitizer and UndefinedBehaviorSanitizer; where CUDA
# is found, a third time configured --without-cuda (the build of a machine without CUDA, which
# the two others would not catch breaking).  Then `make distcheck`.  Prints one closing line "tests: N passed, N failed".
# After the test builds, where clang with libFuzzer is installed, `make fuzz` runs the libFuzzer
# harnesses of tests/fuzz (docs/FUZZING.md) FUZZ_SECONDS (60) each.
# Usage: scripts/check.sh [--no-distcheck]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
jobs=$(nproc 2>/dev/null || echo 2)
distcheck=yes
[ "${1:-}" = "--no-distcheck" ] && distcheck=no

[ -x configure ] || autoreconf -fi
# The builds below are out of tree (VPATH), which automake refuses while the source tree itself
# is configured: clean an in-tree build first.
if [ -f config.status ]; then
    echo "check.sh: removing the in-tree build (make distclean) to build out of tree"
    make -s distclean >/dev/null 2>&1 || true
fi
status=0

build() { # dir, CFLAGS, LDFLAGS, [configure options]
    mkdir -p "$1"
    (cd "$1" && "$top/configure" -q --enable-werror CFLAGS="$2" LDFLAGS="$3" ${4:-} &&
        make -s -j"$jobs" && make -s -j"$jobs" check) || status=1
}

build _build "-O2 -g -Wall -Wextra" ""
if [ -x /usr/local/cuda/bin/nvcc ]; then
    build _build-nocuda "-O2 -g -Wall -Wextra" "" --without-cuda
fi
# CUDA's runtime maps memory where ASan keeps its shadow gap
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:protect_shadow_gap=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS UBSAN_OPTIONS
build _build-asan "-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -Wall -Wextra" \
    "-fsanitize=address,undefined"

# Fuzzing (docs/FUZZING.md): every libFuzzer harness of tests/fuzz for FUZZ_SECONDS (60) on its
# seed corpus, two at a time on 2 cores (about 5 minutes with the build), where clang with
# libFuzzer is installed (scripts/install-deps.sh); a crash, a leak or a timeout fails.
# FUZZ_SECONDS=0 leaves it out.
if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
    if sh tests/fuzz/fuzz.sh check; then
        (cd _build && make -s fuzz) || status=1
    fi
fi

if [ "$distcheck" = yes ] && [ "$status" -eq 0 ]; then
    (cd _build && make -s -j"$jobs" distcheck DISTCHECK_CONFIGURE_FLAGS="--enable-werror CFLAGS=-O2") || status=1
fi

# Criterion's per-binary synthesis lines, summed over both builds.
pass=0
fail=0
skip=0
for log in _build/tests/*.log _build-nocuda/tests/*.log _build-asan/tests/*.log; do
    [ -f "$log" ] || continue
    line=$(grep -a 'Synthesis: Tested:' "$log" | tail -n 1) || true
    if grep -q '^:test-result: SKIP' "${log%.log}.trs" 2>/dev/null; then
        skip=$((skip + 1))
        continue
    fi
    if [ -z "$line" ]; then
        # a binary that died before Criterion's summary counts as one failure
        grep -aq '^FAIL\|^ERROR' "${log%.log}.trs" 2>/dev/null && fail=$((fail + 1))
        continue
    fi
    p=$(echo "$line" | sed 's/.*Passing: \([0-9]*\).*/\1/')
    f=$(echo "$line" | sed 's/.*Failing: \([0-9]*\).*/\1/')
    c=$(echo "$line" | sed 's/.*Crashing: \([0-9]*\).*/\1/')
    pass=$((pass + p))
    fail=$((fail + f + c))
done
[ "$status" -eq 0 ] || [ "$fail" -gt 0 ] || fail=1
echo "tests: $pass passed, $fail failed, $skip skipped"
exit "$status"
