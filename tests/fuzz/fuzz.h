/* fuzz.h: what the libFuzzer harnesses of tests/fuzz share (docs/FUZZING.md).
 *
 * The library reads files by path, so a harness writes each input into a scratch directory of
 * its own (mkdtemp under $TMPDIR, removed at exit) and hands the core that path.  Plugins are
 * dlopen'ed once at start and kept (fuzz_pin_plugins), so that the core's own dlopen/dlclose of
 * a plugin only counts references: libFuzzer registers a module's coverage counters when it is
 * first mapped, and a plugin mapped again at another address would count as a new module.
 *
 * FUZZ_PLUGIN_DIR (the harness build's sanitised plugins) and FUZZ_FIXTURES (tests/fixtures)
 * are given by tests/fuzz/fuzz.sh on the compiler's command line. */
#ifndef PRIMAL_FUZZ_H
#define PRIMAL_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include <primal/error.h>

#ifndef FUZZ_PLUGIN_DIR
#error "FUZZ_PLUGIN_DIR: the directory of the sanitised plugins (tests/fuzz/fuzz.sh sets it)"
#endif
#ifndef FUZZ_FIXTURES
#error "FUZZ_FIXTURES: the path of tests/fixtures (tests/fuzz/fuzz.sh sets it)"
#endif

/* This process's scratch directory (created on first use). */
const char *fuzz_dir(void);

/* Write n bytes to the file `name` in the scratch directory, replacing it; returns its path
 * (a static buffer, valid until the next call). */
const char *fuzz_write(const char *name, const void *data, size_t n);

/* The path of `name` in the scratch directory, into buf (cap bytes). */
const char *fuzz_path(const char *name, char *buf, size_t cap);

/* dlopen every .so in FUZZ_PLUGIN_DIR and keep it (see above); call from LLVMFuzzerInitialize. */
void fuzz_pin_plugins(void);

/* A refusal must say why: a failing call with an empty message, or a code that is not one of
 * the error codes, is a bug that the harness reports by aborting (libFuzzer keeps the input). */
void fuzz_check_err(int rc, const primal_err *err, const char *what);

/* Abort with a message (an invariant of the code under test does not hold). */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
