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
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $PKGS
