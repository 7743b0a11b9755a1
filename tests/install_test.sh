#!/bin/sh
# install_test.sh: an installed PRIMAL is enough to write a plugin out of tree (docs/
# writing-a-plugin.md).  `make install DESTDIR=TMP` from the build directory, then
# `pkg-config --define-prefix --cflags primal` (PKG_CONFIG_PATH = the installed lib/pkgconfig)
# points into it, and examples/plugins/sign_flip is built with its Makefile as documented,
# `make PKG_CONFIG_PATH=PREFIX/lib/pkgconfig` (the staged primal.pc given that PREFIX), against
# the installed headers; the installed primal-run, finding it with --plugin-path:
#   - describes it (--describe lists its key, threshold),
#   - trains 5 steps with examples/plugins/sign_flip/sign_flip.ini, moving indices, and
#     checkpoints the policy's state;
# and the installed primal-sweep finds the installed primal-run beside itself.  The installed
# primal-run never opens a plugin planted in the build tree's plugin folders.
# Skipped (77) without pkg-config or GNU make.  Runs `make install`, so it takes ~10 s.
# shellcheck source-path=SCRIPTDIR source=run_lib.sh
. "$(dirname "$0")/run_lib.sh"

command -v pkg-config >/dev/null 2>&1 || skip "pkg-config is not installed"
make=${MAKE:-make}
$make --version 2>/dev/null | grep -q 'GNU Make' ||
    skip "the example's Makefile needs GNU make ($make is not)"
[ -f "$bld/Makefile" ] || skip "no Makefile in $bld (set PRIMAL_BUILD_DIR)"

# ---------------------------------------------------------------------------------------------
# make install

root=$tmp/root
# not the jobserver of a `make -j check` that runs this test
if (cd "$bld" && MAKEFLAGS='' MFLAGS='' MAKELEVEL='' $make install DESTDIR="$root") \
    >"$tmp/install.log" 2>&1; then
    pass "make install DESTDIR=... succeeds"
else
    fail "make install DESTDIR=... succeeds" "$tmp/install.log"
    finish
fi
pc=$(find "$root" -name primal.pc -path '*/pkgconfig/*' | head -n 1)
run=$(find "$root" -name primal-run -type f | head -n 1)
lib=$(find "$root" -name 'libprimal.so*' | head -n 1)
if [ -z "$pc" ] || [ -z "$run" ] || [ -z "$lib" ]; then
    fail "the install has primal.pc, primal-run and libprimal.so" "$(find "$root" | head -n 40)"
    finish
fi
pass "the install has primal.pc, primal-run and libprimal.so"
bindir=$(dirname "$run")
libdir=$(dirname "$lib")
plugindir=$libdir/primal
check "the installed plugins include prime13 and momentum_carry" \
    test -f "$plugindir/prime13.so" -a -f "$plugindir/momentum_carry.so"
for p in primal-generate primal-sweep plot-runs; do
    check "$p is installed in $(basename "$bindir")/" test -x "$bindir/$p"
done

# The installed programs use the installed library and plugins (an installed libprimal never
# searches the build tree; PRIMAL_PLUGIN_PATH stands in for $(pkglibdir), which DESTDIR moved).
ld_before=${LD_LIBRARY_PATH:-}
LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PRIMAL_PLUGIN_PATH=$plugindir
export LD_LIBRARY_PATH PRIMAL_PLUGIN_PATH

# ---------------------------------------------------------------------------------------------
# The installed primal-run runs no code from the build tree's plugin folders: a build tree that
# is deleted and recreated later by someone else (a build under /tmp) could hold anything.  A
# .so whose constructor leaves a mark is planted in the build tree's grids/.libs, which the
# uninstalled programs search; the installed ones must neither list it, nor find it by name,
# nor so much as open it.

cc=${CC:-cc}
planted=$bld/grids/.libs/planted_by_install_test.so
mark=$tmp/planted-ran
cat >"$tmp/planted.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void)
{
    const char *m = getenv("PRIMAL_PLANTED_MARK");
    FILE *f = m != NULL ? fopen(m, "w") : NULL;
    if (f != NULL)
        fclose(f);
}
EOF
if [ -d "$bld/grids/.libs" ] && $cc -shared -fPIC -o "$planted" "$tmp/planted.c" 2>"$tmp/cc.log"; then
    trap 'rm -f "$planted"; rm -rf "$tmp"' EXIT
    PRIMAL_PLANTED_MARK=$mark "$run" --list-plugins >"$tmp/list" 2>&1
    PRIMAL_PLANTED_MARK=$mark "$run" --describe planted_by_install_test >"$tmp/describe" 2>&1
    rc=$?
    check "the installed primal-run --list-plugins lists nothing from the build tree" \
        sh -c "! grep -q '$bld/' '$tmp/list'"
    check "--describe does not find a plugin planted in the build tree (status $rc)" \
        sh -c "test $rc -eq 1 && grep -q \"no plugin named 'planted_by_install_test'\" '$tmp/describe'"
    check "and neither opened it (its constructor never ran)" test ! -e "$mark"
    # the same .so is opened by the uninstalled primal-run (with the build tree's libprimal),
    # which searches the build tree
    PRIMAL_PLANTED_MARK=$mark LD_LIBRARY_PATH=$ld_before "$bld/primal-run" --list-plugins \
        >"$tmp/list-bld" 2>&1
    check "(the uninstalled primal-run does open it: the plant is where it should be)" \
        test -e "$mark"
    rm -f "$planted" "$mark"
else
    fail "a test .so builds with $cc -shared -fPIC" "$tmp/cc.log"
fi

# ---------------------------------------------------------------------------------------------
# Build sign_flip out of tree

cflags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --define-prefix --cflags primal 2>"$tmp/err")
case $cflags in
*"$root"*) pass "pkg-config --define-prefix --cflags primal points into the install ($cflags)" ;;
*)
    # a pkg-config without --define-prefix: relocate by hand
    prefix=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --variable=prefix primal)
    cflags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --define-variable=prefix="$root$prefix" \
        --cflags primal)
    printf 'note: pkg-config has no --define-prefix; used --define-variable=prefix\n'
    check "pkg-config --cflags primal points into the install ($cflags)" \
        sh -c "case '$cflags' in *'$root'*) exit 0 ;; esac; exit 1"
    ;;
esac
check "the installed primal.pc's include directory holds primal/primal.h" \
    test -f "$(printf '%s' "$cflags" | sed 's/^ *-I\([^ ]*\).*/\1/')/primal/primal.h"

sf=$tmp/sign_flip
cp -r "$src/examples/plugins/sign_flip" "$sf"
chmod -R u+w "$sf" # a distcheck source tree is read-only
rm -f "$sf/sign_flip.so"
if [ ! -f "$sf/Makefile" ]; then
    fail "examples/plugins/sign_flip/Makefile exists (a top-level .gitignore 'Makefile' hides it from git)"
    finish
fi
# The documented form (issue 24.5), `make PKG_CONFIG_PATH=PREFIX/lib/pkgconfig`, against an
# install under PREFIX: the staged primal.pc is made to say prefix=$root/usr/local, as a
# `configure --prefix=$root/usr/local` install would, and PKG_CONFIG_PATH is given only on
# make's command line (GNU make before 4.4 does not pass it to $(shell pkg-config)).
pcdir=$(dirname "$pc")
staged_prefix=$root$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=prefix primal)
sed "s|^prefix=.*|prefix=$staged_prefix|" "$pc" >"$tmp/primal.pc" && cat "$tmp/primal.pc" >"$pc"
if (unset PKG_CONFIG_PATH; MAKEFLAGS='' MFLAGS='' MAKELEVEL='' $make -C "$sf" \
    PKG_CONFIG_PATH="$pcdir" CFLAGS="-O2 -Wall -Wextra -Werror") >"$tmp/build.log" 2>&1 &&
    [ -f "$sf/sign_flip.so" ]; then
    pass "make PKG_CONFIG_PATH=PREFIX/lib/pkgconfig builds sign_flip.so with -Wall -Wextra -Werror"
    check "with the installed headers' -I$staged_prefix/include from pkg-config" \
        grep -q -- "-I$staged_prefix/include" "$tmp/build.log"
else
    fail "make PKG_CONFIG_PATH=PREFIX/lib/pkgconfig builds sign_flip.so" "$tmp/build.log"
    finish
fi

# ---------------------------------------------------------------------------------------------
# Load it with the installed primal-run

if "$run" --describe sign_flip --plugin-path "$sf" >"$tmp/describe" 2>&1; then
    pass "primal-run --describe sign_flip --plugin-path DIR succeeds"
    check "it names the plugin, its kind and its file" \
        sh -c "grep -q '^sign_flip (flip policy plugin' '$tmp/describe' &&
               grep -q 'file: $sf/sign_flip.so' '$tmp/describe'"
    check "it lists the key threshold with its default 4" \
        grep -q '^  threshold  *int  *default 4 ' "$tmp/describe"
else
    fail "primal-run --describe sign_flip --plugin-path DIR succeeds" "$tmp/describe"
fi
"$run" --list-plugins >"$tmp/list" 2>&1
check "--list-plugins finds the installed prime13" grep -q "($plugindir/prime13.so)" "$tmp/list"

out=$tmp/sf-run
if "$run" "$sf/sign_flip.ini" --plugin-path "$sf" --set "run.out=$out" --set run.steps=5 \
    --set run.batch=4 --set run.seq_len=32 --set run.log_every=1 --set model.dim=32 \
    --set model.heads=2 \
    --set model.ffn=64 --set run.sample_tokens=0 --set "data.path=$fixtures/data/genesis.txt" \
    --set data.val_fraction=0.1 >"$tmp/out" 2>&1; then
    pass "5 steps with sign_flip.ini and the out-of-tree policy"
    check "config.ini records plugin = sign_flip with threshold = 4" \
        sh -c "grep -qx 'plugin = sign_flip' '$out/config.ini' &&
               grep -qx 'threshold = 4' '$out/config.ini'"
    nsteps=$(grep -v '"event"' "$out/log.jsonl" | grep -c '"loss":')
    flips=$(grep -v '"event"' "$out/log.jsonl" | grep '"loss":' |
        sed 's/.*"flips":\([0-9]*\).*/\1/' | awk '{ s += $1 } END { print s + 0 }')
    check "log.jsonl has 5 training lines (got $nsteps)" test "$nsteps" -eq 5
    # one vote per micro-batch, threshold 4: weights first move at the 4th step
    check "the policy moved indices ($flips flips in 5 steps)" test "$flips" -gt 0
    # state: one int8 vote per weight of each trainable matrix, e.g. q_proj of block 0 (32 x 32)
    st_header "$out/ckpt-00000005.safetensors" >"$tmp/h"
    check "the checkpoint holds the policy's state, 1024 bytes for a 32 x 32 q_proj" \
        grep -q '"state.policy.model.layers.0.self_attn.q_proj.weight":{"dtype":"U8","shape":\[1024\]' \
            "$tmp/h"
else
    fail "5 steps with sign_flip.ini and the out-of-tree policy" "$tmp/out"
fi

# ---------------------------------------------------------------------------------------------
# The installed primal-sweep finds the installed primal-run beside itself

if [ -x "$bindir/primal-sweep" ]; then
    (unset PRIMAL_RUN; "$bindir/primal-sweep" "$sf/sign_flip.ini" flip.threshold=2,4 -o "$tmp/sw" \
        --dry-run) >"$tmp/cmds" 2>&1
    check "the installed primal-sweep runs the installed primal-run" \
        test "$(grep -c "^$run " "$tmp/cmds")" -eq 2
fi

finish
