#!/usr/bin/env bash
# tokenize_speed.sh: encoding speed of primal-tokenize with the Qwen tokenizer, and of Hugging
# Face `tokenizers` on the same text when `python3 -c "import tokenizers"` works.
#
# The text is tests/fixtures/qwen-tokenizer/long.txt repeated to ~5 MB.  primal-tokenize is
# $PRIMAL_TOKENIZE, else ./primal-tokenize; it runs single-threaded.  Its CPU time to load
# tokenizer.json (a run on empty input) is subtracted, so both figures are encoding only.  Each
# figure is the best of 5 runs (HF: 3 timed in-process); MB = 10^6 bytes.
#
# Prints one JSON object:
#   {"machine": "...", "primal_mb_per_s": N, "hf_mb_per_s": N or null, "ids_match": bool or null}
# ids_match says whether both gave the same ids (null without tokenizers).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
fix=$here/../tests/fixtures/qwen-tokenizer
bin=${PRIMAL_TOKENIZE:-./primal-tokenize}
if [ ! -x "$bin" ]; then
    echo "tokenize_speed.sh: $bin is not an executable (set PRIMAL_TOKENIZE)" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
: > "$tmp/big.txt"
while [ "$(wc -c < "$tmp/big.txt")" -lt 5000000 ]; do
    cat "$fix/long.txt" >> "$tmp/big.txt"
done
: > "$tmp/empty.txt"
bytes=$(wc -c < "$tmp/big.txt")

# best_of_5 INPUT OUTPUT: the least CPU time (user + system, seconds) of primal-tokenize on
# INPUT; CPU time rather than wall time, so that other work on the machine matters less
best_of_5() {
    local best="" t
    for _ in 1 2 3 4 5; do
        t=$( { TIMEFORMAT='%3U %3S'
               time "$bin" --tokenizer "$fix/tokenizer.json" < "$1" > "$2"; } 2>&1 )
        best=$(echo "$t" | awk -v b="$best" \
            '{ d = $1 + $2; if (b != "" && b < d) d = b; printf "%.6f", d }')
    done
    echo "$best"
}

t_load=$(best_of_5 "$tmp/empty.txt" /dev/null)
t_full=$(best_of_5 "$tmp/big.txt" "$tmp/primal.ids")
# null when the difference is lost in the noise (a machine busy with other work)
primal=$(awk -v n="$bytes" -v f="$t_full" -v l="$t_load" \
    'BEGIN { d = f - l; if (d <= 0.01) print "null"; else printf "%.1f", n / d / 1e6 }')

hf=null
match=null
if python3 -c "import tokenizers" 2>/dev/null; then
    set -- $(python3 "$here/tokenize_speed.py" "$fix/tokenizer.json" "$tmp/big.txt" \
        "$tmp/primal.ids")
    hf=$1
    match=$2
fi

cpu=$(grep -m1 "model name" /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed "s/^ *//") ||
    true
machine=$(printf '%s, %s, %s cores' "$(uname -m)" "${cpu:-unknown CPU}" "$(nproc)" |
    sed 's/\\/\\\\/g; s/"/\\"/g')
printf '{"machine": "%s", "primal_mb_per_s": %s, "hf_mb_per_s": %s, "ids_match": %s}\n' \
    "$machine" "$primal" "$hf" "$match"
