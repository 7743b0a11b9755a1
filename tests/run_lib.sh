# run_lib.sh: what the shell tests tests/run_*.sh and tests/install_test.sh share; sourced, not
# run.  Finds the sources (from the test's own path) and the build (PRIMAL_BUILD_DIR, which
# `make check` sets; else the source tree, for an in-tree build), makes a temporary directory
# that is removed at exit, counts checks, and writes the tiny experiment the tests start from.
#
# A test prints one line per check ("PASS: what" or "FAIL: what", with the evidence after a
# FAIL) and ends with finish: exit 0 when every check passed, 1 otherwise (77 = skipped, as
# automake's test driver reads it).
# shellcheck shell=sh disable=SC2034 # the variables are for the tests that source this

tests_dir=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$tests_dir/.." && pwd)
bld=${PRIMAL_BUILD_DIR:-$src}
fixtures=$src/tests/fixtures
RUN=$bld/primal-run
EVAL=$bld/primal-eval
GEN=$bld/primal-generate

# Two tests may run at once on two cores, and the comparisons need no parallel speed-up.
OMP_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1
export OMP_NUM_THREADS OPENBLAS_NUM_THREADS

npass=0
nfail=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/primal-test.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

pass() {
    npass=$((npass + 1))
    printf 'PASS: %s\n' "$1"
}

fail() { # what, [evidence file or text]
    nfail=$((nfail + 1))
    printf 'FAIL: %s\n' "$1"
    if [ $# -ge 2 ]; then
        if [ -f "$2" ]; then sed 's/^/    | /' "$2" | tail -n 20; else printf '    | %s\n' "$2"; fi
    fi
}

# check WHAT COMMAND...: PASS when the command succeeds.
check() {
    _what=$1
    shift
    if "$@"; then pass "$_what"; else fail "$_what"; fi
}

finish() {
    printf '%s: %d passed, %d failed\n' "$(basename "$0")" "$npass" "$nfail"
    [ "$nfail" -eq 0 ]
    exit $?
}

skip() {
    printf 'SKIP: %s\n' "$1"
    exit 77
}

need_programs() { # the programs a test runs must have been built
    for _p in "$@"; do
        if [ ! -x "$_p" ]; then
            if [ -z "${PRIMAL_BUILD_DIR:-}" ]; then
                skip "$_p not built (set PRIMAL_BUILD_DIR to the build directory)"
            fi
            fail "$_p exists"
            finish
        fi
    done
}

# The tiny experiment: dim 32, 2 layers, seq 32, batch 4, byte tokens from a 11 kB fixture,
# constant lr (so that a run cut short follows the same schedule), a log line every step.
write_base() { # path
    cat >"$1" <<EOF
[run]
steps = 8
batch = 4
seq_len = 32
log_every = 1
ckpt_every = 4
eval_every = 100
sample_tokens = 0
threads = 1

[model]
dim = 32
layers = 2
heads = 2
ffn = 64

[grid]
plugin = prime13

[optim]
warmup = 0
schedule = constant

[data]
plugin = text
path = $fixtures/data/genesis.txt
val_fraction = 0.1
EOF
}

# The training lines of a log.jsonl without what varies from run to run (speed, memory).
train_lines() {
    grep '"loss":' "$1" | grep -v '"event"' |
        sed 's/,"tokens_per_s":[^,}]*//; s/,"peak_mem_bytes":[^,}]*//'
}

# Little-endian bytes of an unsigned integer, as printf escapes (width in bytes).
le_bytes() { # value, width
    _v=$1
    _i=0
    while [ "$_i" -lt "$2" ]; do
        # shellcheck disable=SC2059 # the format is the octal escape of one byte
        printf "\\$(printf '%03o' $((_v & 255)))"
        _v=$((_v >> 8))
        _i=$((_i + 1))
    done
}

# A safetensors file with input_ids I32 [1, len(text)] holding the bytes of text (primal-eval's
# input; docs/FORMAT.md, "The container").
write_ids() { # path, text
    _n=$(printf '%s' "$2" | wc -c | tr -d ' ')
    _h="{\"input_ids\":{\"dtype\":\"I32\",\"shape\":[1,$_n],\"data_offsets\":[0,$((_n * 4))]}}"
    while [ $((${#_h} % 8)) -ne 0 ]; do _h="$_h "; done
    {
        le_bytes "${#_h}" 8
        printf '%s' "$_h"
        for _b in $(printf '%s' "$2" | od -An -v -tu1); do le_bytes "$_b" 4; done
    } >"$1"
}

# The JSON header of a safetensors file (its first 8 bytes give the length).
st_header() {
    _len=$(od -An -v -tu8 -N8 "$1" | tr -d ' ')
    dd if="$1" bs=1 skip=8 count="$_len" 2>/dev/null
}
