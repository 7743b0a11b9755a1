#!/bin/bash
# call B: the main rows at 5,000 steps (first part) with adam_carry at [flip] lr 7e-4, and two
# fuzz harnesses on the spare cores (niced)
set -u
S=$(date +%s); left() { echo $(( S + ${1:-575} - $(date +%s) )); }
bash _fuzzcarry/fuzz_bg.sh 520 tokenizer:7 experiment:7 &
F=$!
timeout "$(left 560)" bench/quality.sh run -j 1 --steps 5000 \
    dense_s0=flip.plugin=adamw,optim.lr=1e-3,optim.min_lr=1e-4,run.seed=0 \
    ac7_prime13_s0=flip.plugin=adam_carry,flip.lr=7e-4,run.seed=0 \
    qat_prime13_s0=flip.plugin=latent_adamw,run.seed=0 \
    ac7_prime13_s1=flip.plugin=adam_carry,flip.lr=7e-4,run.seed=1 >"$OUT/q.txt" 2>&1
echo "quality rc $? at $(( $(date +%s) - S ))s" >>"$OUT/q.txt"
tar -C /tmp -czf "$OUT/qruns.tgz" --exclude='*.safetensors' --exclude=corpus primal_quality 2>/dev/null
wait $F
echo "end at $(( $(date +%s) - S ))s"
