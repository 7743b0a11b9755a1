#!/bin/sh
# get-kjv.sh: write data/kjv.txt, the default corpus (SPEC.md, "Data loaders"): the King James
# Bible from Debian's bible-kjv package, as `bible -f gen1:1-rev22:21` prints it, one verse per
# line, 31,102 lines, 4,404,412 bytes, e.g.
#     Ge1:1 In the beginning God created the heaven and the earth.
# The "Book C:V" reference is kept: the spec's 4.4 MB and its measured validation losses
# (nats/byte, last 2% of the text) are of this text as printed; without references it would be
# 4.14 MB.
#
# Usage: scripts/get-kjv.sh [DIR]    writes DIR/data/kjv.txt (DIR: the repository root)
# Does nothing if the file is already complete; writes a temporary file and renames it, so an
# interrupted run leaves no partial kjv.txt.
set -eu

VERSES=31102

if [ $# -gt 0 ]; then
    root=$1
else
    root=$(cd "$(dirname "$0")/.." && pwd)
fi
out=$root/data/kjv.txt

# is_complete FILE: every verse, from Genesis 1:1 to Revelation 22:21, newline-terminated
is_complete() {
    [ -f "$1" ] || return 1
    [ "$(($(wc -l < "$1")))" -eq "$VERSES" ] || return 1
    head -n 1 "$1" | grep -q '^Ge1:1 In the beginning God created' || return 1
    tail -n 1 "$1" | grep -q '^Rev22:21 The grace of our Lord Jesus Christ be with you all\. Amen\.$'
}

if is_complete "$out"; then
    echo "$out: already complete ($VERSES verses)"
    exit 0
fi

if ! command -v bible > /dev/null 2>&1; then
    echo "get-kjv.sh: the 'bible' program is missing; install Debian's bible-kjv package" \
         "(apt-get install bible-kjv)" >&2
    exit 1
fi

mkdir -p "$root/data"
tmp=$out.tmp.$$
trap 'rm -f "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

# -f prints "Ref text", one verse per line (bible-kjv 4.x does not wrap it; COLUMNS is cleared
# because its usage says -f implies -l, the line width taken from COLUMNS)
COLUMNS='' bible -f gen1:1-rev22:21 > "$tmp"

if ! is_complete "$tmp"; then
    echo "get-kjv.sh: 'bible -f gen1:1-rev22:21' printed $(($(wc -l < "$tmp"))) lines," \
         "expected $VERSES verses from Ge1:1 to Rev22:21" >&2
    exit 1
fi
mv "$tmp" "$out"
trap - EXIT
echo "$out: $VERSES verses, $(($(wc -c < "$out"))) bytes"
