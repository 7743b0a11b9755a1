#!/bin/sh
# get-corpus.sh: write OUTDIR/linux-c.txt, the sub-epoch benchmark corpus (SPEC.md, "Benchmark
# corpus"; docs/QUALITY.md): the `.c` and `.h` files of kernel/, mm/, fs/, net/, drivers/net/
# and drivers/gpu/drm/i915/ of Debian's linux-source-6.1, in a random file order with seed 7,
# each file followed by "\n\n".  About 160 MB.
#
# Usage: scripts/get-corpus.sh [--tokens TOKENIZER_JSON] [OUTDIR]
#   OUTDIR     default: data/ of the repository
#   --tokens   also write OUTDIR/linux-c.<NAME>.bin, the corpus tokenized by
#              `primal-tokenize --tokenizer TOKENIZER_JSON --bin` (NAME: the tokenizer file's
#              folder, e.g. qwen-tokenizer); primal-tokenize is taken from $PRIMAL_TOKENIZE, the
#              repository root or PATH
# Environment: LINUX_SOURCE_TARBALL (default /usr/src/linux-source-6.1.tar.xz; when that default
#   is missing the package is installed with apt-get, through sudo when not root).
#
# The order, deterministically: the paths relative to the source root (e.g. kernel/fork.c),
# regular files only, sorted with LC_ALL=C, then shuffled by GNU shuf reading its random bytes
# from AES-256-CTR of zeros keyed by the pass phrase "7" (GNU coreutils' recipe for a seeded
# shuffle):
#     shuf --random-source=<(openssl enc -aes-256-ctr -pass pass:7 -nosalt </dev/zero 2>/dev/null)
# The same package version gives the same bytes; the sha256, the byte count and the package
# version are written to OUTDIR/linux-c.txt.sha256 (`sha256sum -c` reads it; lines starting
# with # are comments).  A Debian security update of linux-source-6.1 changes the text, and so
# the sha256: compare runs only where that file matches.
#
# Only the wanted files are unpacked (about 170 MB), into a temporary folder under OUTDIR that
# is removed at the end; the result is written to a temporary file and renamed.
set -eu

DIRS="kernel mm fs net drivers/net drivers/gpu/drm/i915"
SEED=7

tokenizer=
while [ $# -gt 0 ]; do
    case $1 in
    --tokens) [ $# -ge 2 ] || { echo "get-corpus.sh: --tokens needs a file" >&2; exit 2; }
        tokenizer=$2; shift 2 ;;
    --tokens=*) tokenizer=${1#--tokens=}; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "get-corpus.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
top=$(cd "$(dirname "$0")/.." && pwd)
outdir=${1:-$top/data}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
out=$outdir/linux-c.txt
start=$(date +%s)

tarball=${LINUX_SOURCE_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
if [ ! -f "$tarball" ]; then
    if [ -n "${LINUX_SOURCE_TARBALL:-}" ]; then
        echo "get-corpus.sh: $tarball is missing" >&2
        exit 1
    fi
    echo "get-corpus.sh: installing Debian's linux-source-6.1 (139 MB)" >&2
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get install -y linux-source-6.1 >&2
fi
version=$(dpkg-query -W -f '${Version}' linux-source-6.1 2>/dev/null || echo unknown)
for p in openssl shuf xz sha256sum tar; do
    command -v "$p" >/dev/null 2>&1 || { echo "get-corpus.sh: $p is missing" >&2; exit 1; }
done

tmp=$(mktemp -d "$outdir/.get-corpus.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

# the tarball's top folder (linux-source-6.1/)
root=$(tar -tJf "$tarball" | head -n 1)
root=${root%%/*}
# unpack only the .c and .h files of DIRS (GNU tar's member patterns are anchored, and their
# wildcards match across '/', so kernel/*.c takes kernel/ and its subfolders)
pats=
for d in $DIRS; do pats="$pats $root/$d/*.c $root/$d/*.h"; done
# shellcheck disable=SC2086
tar -C "$tmp" -xJf "$tarball" --wildcards $pats

src=$tmp/$root
# seeded random bytes for shuf (a finite prefix of the stream: shuf reads only what it needs)
openssl enc -aes-256-ctr -pass "pass:$SEED" -nosalt </dev/zero 2>/dev/null |
    head -c 16777216 >"$tmp/random"
# shellcheck disable=SC2086
(cd "$src" && find $DIRS -type f \( -name '*.c' -o -name '*.h' \)) | LC_ALL=C sort |
    shuf --random-source="$tmp/random" >"$tmp/order"
nfiles=$(($(wc -l <"$tmp/order")))

# each file followed by "\n\n"
(cd "$src" && while IFS= read -r f; do cat "$f"; printf '\n\n'; done <"$tmp/order") >"$tmp/out"
mv "$tmp/out" "$out"
bytes=$(($(wc -c <"$out")))
sum=$(sha256sum "$out" | cut -d' ' -f1)
{
    echo "# $bytes bytes, $nfiles files, linux-source-6.1 $version, seed $SEED (scripts/get-corpus.sh)"
    echo "$sum  linux-c.txt"
} >"$out.sha256"

if [ -n "$tokenizer" ]; then
    tok=${PRIMAL_TOKENIZE:-}
    [ -n "$tok" ] || { [ -x "$top/primal-tokenize" ] && tok=$top/primal-tokenize; } ||
        tok=$(command -v primal-tokenize || true)
    [ -n "$tok" ] || { echo "get-corpus.sh: primal-tokenize not found (set PRIMAL_TOKENIZE)" >&2;
        exit 1; }
    name=$(basename "$(dirname "$tokenizer")")
    "$tok" --tokenizer "$tokenizer" --bin "$tmp/tokens" <"$out"
    mv "$tmp/tokens" "$outdir/linux-c.$name.bin"
    echo "$outdir/linux-c.$name.bin: $(($(wc -c <"$outdir/linux-c.$name.bin"))) bytes"
fi
echo "$out: $bytes bytes, $nfiles files, sha256 $sum, linux-source-6.1 $version," \
    "$(($(date +%s) - start)) s"
