#!/bin/bash
# call C: the main rows' second seeds of QAT and dense at 5,000 steps, then bench/memory.sh's
# PRIMAL runs (KJV from _fuzzcarry; the PyTorch runs ran in call A); two fuzz harnesses niced
# on spare cores during the quality rows only
set -u
S=$(date +%s); left() { echo $(( S + ${1:-575} - $(date +%s) )); }
mkdir -p data && xz -dc _fuzzcarry/kjv.txt.xz >data/kjv.txt
true &
F=$!
timeout "$(left 250)" bench/quality.sh run -j 1 --steps 5000 \
    qat_prime13_s1=flip.plugin=latent_adamw,run.seed=1 \
    dense_s1=flip.plugin=adamw,optim.lr=1e-3,optim.min_lr=1e-4,run.seed=1 >"$OUT/q.txt" 2>&1
echo "quality rc $? at $(( $(date +%s) - S ))s" >>"$OUT/q.txt"
tar -C /tmp -czf "$OUT/qruns.tgz" --exclude='*.safetensors' --exclude=corpus primal_quality 2>/dev/null
wait $F
timeout "$(left 570)" bash bench/memory.sh --steps 20 15b_mc8 7b_mc4 124m_ac 15b_ac 124m_mc \
    7b_mc4_lean 15b_mc4 124m_tc 7b_tc >"$OUT/memory.txt" 2>&1
echo "memory.sh rc $? at $(( $(date +%s) - S ))s" >>"$OUT/memory.txt"
tar -C /tmp -czf "$OUT/memruns.tgz" --exclude='*.safetensors' primal_mem 2>/dev/null
echo "end at $(( $(date +%s) - S ))s"
