#!/bin/sh
# Training-step throughput and peak memory on CPU: PRIMAL (primal-run, full steps: forward,
# backward, the policy's accumulate and step, AdamW) next to PyTorch on the same shape and
# cores (bench/torch_cpu.py: dense AdamW, and prototype-style indexed weights).  Prints one JSON
# object per system.  Default shape (SPEC.md): dim 512, 8 layers, 8 heads, ffn 1376, byte
# vocabulary, seq 256, batch 8, prime13.
# Usage: bench/cpu_step.sh [--threads N] [--steps N] [--no-torch]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
threads=2 steps=6 torch=yes
while [ $# -gt 0 ]; do
    case $1 in
    --threads) threads=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --no-torch) torch=no; shift ;;
    *) echo "cpu_step.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/bench.ini" <<INI
[run]
out = $tmp/run
steps = $steps
batch = 8
seq_len = 256
log_every = 1
eval_every = 0
sample_tokens = 0
threads = $threads
[model]
dim = 512
layers = 8
heads = 8
ffn = 1376
[grid]
plugin = prime13
[data]
plugin = text
path = $top/data/kjv.txt
val_fraction = 0
INI
for policy in threshold_consensus momentum_carry adamw; do
    rm -rf "$tmp/run"
    "$top/primal-run" "$tmp/bench.ini" --set flip.plugin=$policy >/dev/null 2>&1
    # median tokens/s over the logged steps after the first, and the peak RSS
    awk -v policy=$policy -v cpu="$cpu" -v threads=$threads '
        /"tokens_per_s"/ && !/"event"/ {
            match($0, /"tokens_per_s":[0-9.e+-]+/); t = substr($0, RSTART + 15, RLENGTH - 15)
            match($0, /"peak_mem_bytes":[0-9]+/); m = substr($0, RSTART + 17, RLENGTH - 17)
            if (n++ > 0) v[n - 1] = t
            peak = m
        }
        END {
            k = n - 1; for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
                if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
            printf "{\"system\": \"primal\", \"mode\": \"%s\", \"machine\": \"%s, %d threads\", \"shape\": {\"dim\": 512, \"layers\": 8, \"heads\": 8, \"ffn\": 1376, \"vocab\": 256, \"seq\": 256, \"batch\": 8}, \"tokens_per_s\": %.1f, \"peak_rss_bytes\": %d}\n", policy == "adamw" ? "adamw, dense float32" : policy ", prime13", cpu, threads, v[int((k + 1) / 2)], peak
        }' "$tmp/run/log.jsonl"
done
if [ "$torch" = yes ]; then
    /usr/bin/python3 "$top/bench/torch_cpu.py" --threads "$threads" --steps "$steps" ||
        echo '{"system": "pytorch", "error": "python3-torch not available"}'
fi
