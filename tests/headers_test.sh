#!/bin/sh
# headers_test.sh: every public header (those `make install` puts in $(includedir)/primal, which
# `make check` passes as PRIMAL_PUBLIC_HEADERS; else every core/primal/*.h) compiles alone, as
# its first and only include, twice in a row (its include guard), in C and in C++:
#   C:   $CC -std=c11 -Wall -Wextra -Wpedantic -Wstrict-prototypes -Werror -c
#   C++: $CXX -std=c++17 -Wall -Wextra -Wpedantic -Werror -fsyntax-only
# with -I core only (as a program finds them installed: <primal/NAME.h>), and no _GNU_SOURCE.
# A header that needs another one first must include it itself.  CC is the build's
# (PRIMAL_TEST_CC, else $CC, else cc); CXX is PRIMAL_TEST_CXX, else $CXX, else the first of
# g++, c++, clang++ found: without one, the C++ checks are skipped (and said so), not failed.
# Also: every header in core/primal/ is installed.
# shellcheck source-path=SCRIPTDIR source=run_lib.sh
. "$(dirname "$0")/run_lib.sh"

cc=${PRIMAL_TEST_CC:-${CC:-cc}}
cxx=${PRIMAL_TEST_CXX:-${CXX:-}}
if [ -z "$cxx" ]; then
    for _c in g++ c++ clang++; do
        if command -v "$_c" >/dev/null 2>&1; then
            cxx=$_c
            break
        fi
    done
fi
cflags='-std=c11 -Wall -Wextra -Wpedantic -Wstrict-prototypes -Werror'
cxxflags='-std=c++17 -Wall -Wextra -Wpedantic -Werror -fsyntax-only'

if [ -n "${PRIMAL_PUBLIC_HEADERS:-}" ]; then
    headers=$PRIMAL_PUBLIC_HEADERS
    for _h in "$src"/core/primal/*.h; do
        _rel=core/primal/$(basename "$_h")
        case " $headers " in
        *" $_rel "*) pass "$_rel is installed" ;;
        *) fail "$_rel is installed (not in Makefile.am's primalinclude_HEADERS)" ;;
        esac
    done
else
    headers=$(cd "$src" && ls core/primal/*.h)
fi
[ -n "$headers" ] || {
    fail "there are public headers to test"
    finish
}

# $cc and $cxx may hold options ("gcc -m32"), so they are left unquoted on purpose
# shellcheck disable=SC2086
for h in $headers; do
    name=$(basename "$h")
    if [ ! -f "$src/$h" ]; then
        fail "$h exists"
        continue
    fi
    base=$tmp/$(basename "$name" .h)
    # twice: the include guard; then a declaration, so that the unit is never empty
    printf '#include <primal/%s>\n#include <primal/%s>\ntypedef int primal_headers_test_unit;\n' \
        "$name" "$name" >"$base.c"
    cp "$base.c" "$base.cpp"
    if $cc $cflags -I"$src/core" -c "$base.c" -o "$base.o" >"$base.c.log" 2>&1; then
        pass "<primal/$name> compiles alone as C11 ($cc)"
    else
        fail "<primal/$name> compiles alone as C11 ($cc $cflags)" "$base.c.log"
    fi
    if [ -z "$cxx" ]; then
        printf 'SKIP: <primal/%s> as C++17 (no C++ compiler: set PRIMAL_TEST_CXX)\n' "$name"
    elif $cxx $cxxflags -I"$src/core" "$base.cpp" >"$base.cpp.log" 2>&1; then
        pass "<primal/$name> compiles alone as C++17 ($cxx)"
    else
        fail "<primal/$name> compiles alone as C++17 ($cxx $cxxflags)" "$base.cpp.log"
    fi
done

finish
