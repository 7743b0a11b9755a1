#!/bin/sh
# The GPU tests (tests/cuda_test: kernels and the model against the CPU; tests/policies_cuda_test:
# the policies' GPU entry points against their CPU versions).  Without a CUDA device they cannot
# run: say so and report SKIP (77) instead of passing empty.
set -u
build=${PRIMAL_BUILD_DIR:?PRIMAL_BUILD_DIR is not set}
if ! ls /dev/nvidia0 >/dev/null 2>&1 && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP: no CUDA device on this machine; the GPU tests ran on an H100 (docs/BENCHMARKS.md)"
    exit 77
fi
status=0
for t in cuda_test policies_cuda_test; do
    "$build/tests/$t" --verbose || status=1
done
exit $status
