#!/bin/sh
# device call 2 (issue 21): 2,000-step complete schedule, seed-1 rows of dense/QAT/adam_carry+wd
# (seed 0 of QAT and adam_carry+wd ran in call 1), dense seed 0, and the float parameters'
# learning rate ([optim] lr: scales and norms) at 1e-3 for adam_carry+wd and for QAT
set -u
D=flip.plugin=adamw,optim.lr=1e-3,optim.min_lr=1e-4
Q=flip.plugin=latent_adamw
A=flip.plugin=adam_carry,flip.weight_decay=0.1
timeout 390 bench/quality.sh run -j 6 --steps 2000 \
  dense_s0=$D dense_s1=$D,run.seed=1 qat_p13_s1=$Q,run.seed=1 acwd_p13_s1=$A,run.seed=1 \
  acwd_olr1=$A,optim.lr=1e-3,optim.min_lr=1e-4 qat_olr1=$Q,optim.lr=1e-3,optim.min_lr=1e-4 \
  >"$OUT/quality_stdout.txt" 2>&1
echo "quality rc $?" >>"$OUT/quality_stdout.txt"
tar czf "$OUT/runs.tgz" -C /tmp/primal_quality --exclude='*.safetensors' --exclude=corpus --exclude='*.xz' . 2>/dev/null
tail -5 "$OUT/quality_stdout.txt"
for f in /tmp/primal_quality/*/log.jsonl; do echo "$f $(grep val_loss $f | tail -1 | cut -c1-120)"; done
