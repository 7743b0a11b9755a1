#!/bin/sh
# device call 1 (issue 21 screen + adam_carry parity + issue 24 transformers check)
set -u
mkdir -p /tmp/pt /tmp/ptm && tar xJf _gpu_pt/pt.tar.xz -C /tmp/pt && tar xJf _gpu_carry/bundle.tar.xz -C /tmp/ptm
M=/tmp/ptm/root/usr/local/lib
( LD_LIBRARY_PATH=/tmp/pt/lib:$M:/tmp/ptm/deps PRIMAL_TEST_PLUGINDIR=$M/primal /tmp/pt/bin/policies_cuda_test \
    --filter 'adam_carry_cuda/*' >"$OUT/policies_cuda_test.txt" 2>&1; echo "rc $?" >>"$OUT/policies_cuda_test.txt" ) &
( for d in _hfx/*/; do n=$(basename "$d"); echo "== $n";
    python3 scripts/check-hf-export.py "$d/export" "$d/eval.safetensors" "$d/ids.safetensors" 2>&1 | grep -v Warning | tail -4; echo "rc $?"; done >"$OUT/hf_check.txt" 2>&1 ) &
timeout 545 bench/quality.sh run -j 9 --steps 2000 \
  qat_p13=flip.plugin=latent_adamw \
  ac_p13=flip.plugin=adam_carry \
  ac_r12=flip.residual_bits=12 \
  ac_r16=flip.residual_bits=16 \
  ac_wd1=flip.weight_decay=0.1 \
  ac_row=flip.second_moment=row \
  ac_lr2=flip.lr=2e-3 \
  mc_p13=flip.plugin=momentum_carry \
  ac_r16_wd1=flip.residual_bits=16,flip.weight_decay=0.1 >"$OUT/quality_stdout.txt" 2>&1
echo "quality rc $?" >>"$OUT/quality_stdout.txt"
wait
tar czf "$OUT/runs.tgz" -C /tmp/primal_quality --exclude='*.safetensors' --exclude=corpus --exclude='*.xz' . 2>/dev/null
tail -5 "$OUT/policies_cuda_test.txt"; cat "$OUT/hf_check.txt"; tail -30 "$OUT/quality_stdout.txt"
for f in /tmp/primal_quality/*/log.jsonl; do echo "$f $(grep -c val_loss $f) $(grep val_loss $f | tail -1 | cut -c1-120)"; done
