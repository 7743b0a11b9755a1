#!/bin/bash
# call A: whole-device memory (bench/memory.sh, every run, nothing else on the machine), then
# 2,000-step screening rows of the flip lr in what time is left.
set -u
S=$(date +%s); left() { echo $(( S + ${1:-575} - $(date +%s) )); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/machine.txt" 2>&1
nproc >>"$OUT/machine.txt"; lscpu | grep "Model name" >>"$OUT/machine.txt"
timeout "$(left 470)" bash bench/memory.sh >"$OUT/memory.txt" 2>&1
echo "memory.sh rc $? at $(( $(date +%s) - S ))s" >>"$OUT/memory.txt"
l=$(left 560)
if [ "$l" -gt 60 ]; then
    timeout "$l" bench/quality.sh run -j 1 --steps 2000 ac_flr5e4=flip.lr=5e-4 \
        qat_flr5e4=flip.plugin=latent_adamw,flip.lr=5e-4 ac_flr7e4=flip.lr=7e-4 >"$OUT/q.txt" 2>&1
fi
tar -C /tmp -czf "$OUT/qruns.tgz" --exclude='*.safetensors' --exclude=corpus primal_quality 2>/dev/null
tar -C /tmp -czf "$OUT/memruns.tgz" --exclude='*.safetensors' primal_mem 2>/dev/null
echo "end at $(( $(date +%s) - S ))s"
