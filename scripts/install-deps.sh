#!/bin/sh
# Install what PRIMAL needs to build, test and run its default experiment on Debian 12.
# Uses sudo when not run as root.  Pass --cuda-toolkit to also install Debian's nvcc (not needed
# where CUDA already lives in /usr/local/cuda).
set -eu
SUDO=
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi
PKGS="build-essential autoconf automake libtool pkg-config
      libinih-dev libjansson-dev libpcre2-dev libutf8proc-dev libssl-dev libopenblas-dev
      libcriterion-dev libopenmpi-dev openmpi-bin bible-kjv gnuplot-nox"
# clang and its compiler-rt (libFuzzer, ASan, UBSan) for the fuzzers of tests/fuzz, which
# scripts/check.sh runs (docs/FUZZING.md); Debian 12's clang is 14, whose libFuzzer comes in
# libclang-rt-14-dev, only recommended by clang and so named here
PKGS="$PKGS clang libclang-rt-14-dev"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $PKGS
# tests/gguf_test.sh loads primal-export's GGUF files in llama.cpp through the npm package
# node-llama-cpp 3.21.1 (prebuilt for linux-x64), which needs Node.js 20 or later; Debian 12's
# own nodejs is 18, too old, so none is installed here.  Where node 20+ and npm exist, the
# package goes into the test's cache now (~/.cache/primal; the test installs it itself when
# missing, and skips without node 20+).
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    sh "$(dirname "$0")/../tests/gguf_test.sh" --install || true
fi
