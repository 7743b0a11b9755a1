#!/bin/sh
# The GPU tests (tests/cuda_test: kernels and the model against the CPU; tests/policies_cuda_test:
# the policies' GPU entry points against their CPU versions), and a short primal-run training
# run on the device whose memory figures are checked (issue 22: the whole device's peak holds
# at least the model's buffers and the policy's state, and at most the device).  Without a CUDA
# device they cannot run: say so and report SKIP (77) instead of passing empty.
set -u
build=${PRIMAL_BUILD_DIR:?PRIMAL_BUILD_DIR is not set}
src=$(cd "$(dirname "$0")/.." && pwd)
if ! ls /dev/nvidia0 >/dev/null 2>&1 && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP: no CUDA device on this machine; the GPU tests ran on an H100 (docs/BENCHMARKS.md)"
    exit 77
fi
status=0
for t in cuda_test policies_cuda_test; do
    "$build/tests/$t" --verbose || status=1
done

# A 4-step run of the tiny model on the device for two policies: the last training line's
# device_peak_bytes (cudaMemGetInfo's total - free, sampled) is at least its peak_mem_bytes (the
# model's own buffers) plus policy_state_bytes, and at most the largest device's memory.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/primal-gpu-test.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/gpu.ini" <<INI
[run]
steps = 4
batch = 4
seq_len = 32
log_every = 1
ckpt_every = 0
eval_every = 2
sample_tokens = 0
device = cuda

[model]
dim = 64
layers = 2
heads = 2
ffn = 128

[grid]
plugin = prime13

[data]
plugin = text
path = $src/tests/fixtures/data/genesis.txt
val_fraction = 0.1
INI
total_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null |
    sort -n | tail -n 1)
for pol in threshold_consensus momentum_carry; do
    d=$tmp/run-$pol
    if ! "$build/primal-run" "$tmp/gpu.ini" --set "run.out=$d" --set "flip.plugin=$pol" \
        >"$tmp/out" 2>&1; then
        echo "FAIL: $pol: a 4-step CUDA run of primal-run succeeds"
        sed 's/^/    | /' "$tmp/out" | tail -n 20
        status=1
        continue
    fi
    line=$(grep '"loss":' "$d/log.jsonl" | tail -n 1)
    if echo "$line" | awk -v total="${total_mib:-0}" '
        function num(k,   s) {
            if (!match($0, "\"" k "\":[0-9]+")) return -1
            s = substr($0, RSTART, RLENGTH); sub(/.*:/, "", s); return s + 0
        }
        { model = num("peak_mem_bytes"); state = num("policy_state_bytes")
          used = num("device_used_bytes"); dpeak = num("device_peak_bytes")
          printf "    peak_mem_bytes %d, policy_state_bytes %d, device_used_bytes %d, " \
                 "device_peak_bytes %d, device %d MiB\n", model, state, used, dpeak, total
          ok = model > 0 && state > 0 && used > 0 && dpeak >= used &&
               dpeak >= model + state && (total == 0 || dpeak <= total * 1048576)
          exit !ok }'; then
        echo "PASS: $pol: device_peak_bytes >= peak_mem_bytes + policy_state_bytes, <= the device"
    else
        echo "FAIL: $pol: device_peak_bytes >= peak_mem_bytes + policy_state_bytes, <= the device"
        status=1
    fi
    if grep '"val_loss":' "$d/log.jsonl" | grep -q '"device_peak_bytes":'; then
        echo "PASS: $pol: evaluation lines carry the device figures"
    else
        echo "FAIL: $pol: evaluation lines carry the device figures"
        status=1
    fi
    if grep -q 'model buffers peak .* MiB, policy state .* MiB; whole device (cudaMemGetInfo, all processes) peak .* MiB' "$tmp/out"; then
        echo "PASS: $pol: primal-run names each figure at the end"
    else
        echo "FAIL: $pol: primal-run names each figure at the end"
        status=1
    fi
done
exit $status
