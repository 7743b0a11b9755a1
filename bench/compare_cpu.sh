#!/bin/sh
# The CPU quality comparison of docs/RESULTS.md (issue "momentum_carry", CPU part): every flip
# policy on examples/compare-cpu.ini at equal tokens, two seeds for the main rows.  Each run
# leaves runs/compare-cpu/<variant>-s<seed>/log.jsonl; bench/summarize.py makes the table.
# Usage: bench/compare_cpu.sh [OUTDIR]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/runs/compare-cpu}
run="$top/primal-run"
mkdir -p "$out"
variant() { # name seed --set...
    name=$1 seed=$2
    shift 2
    if [ -f "$out/$name-s$seed/ckpt-00000500.safetensors" ]; then return 0; fi
    "$run" "$top/examples/compare-cpu.ini" --set run.out="$out/$name-s$seed" \
        --set run.seed="$seed" "$@" > "$out/$name-s$seed.out" 2>&1 ||
        echo "$name seed $seed failed: see $out/$name-s$seed.out"
}
for seed in 0 1; do
    # dense reference: AdamW everywhere at lr 1e-3, wd 0.1 (SPEC.md's anchor)
    variant adamw "$seed" --set flip.plugin=adamw --set optim.lr=1e-3 --set optim.min_lr=1e-4
    variant latent_adamw "$seed" --set flip.plugin=latent_adamw
    variant momentum_carry_8_8 "$seed" --set flip.plugin=momentum_carry
    variant momentum_carry_4_4 "$seed" --set flip.plugin=momentum_carry \
        --set flip.residual_bits=4 --set flip.momentum_bits=4
    variant threshold_consensus "$seed" --set flip.plugin=threshold_consensus
    variant stochastic_zscore "$seed" --set flip.plugin=stochastic_zscore
done
variant momentum_carry_nobeta 0 --set flip.plugin=momentum_carry --set flip.beta1=0
variant momentum_carry_h65k 0 --set flip.plugin=momentum_carry --set grid.plugin=prime_harmonic65k
variant momentum_carry_nf4 0 --set flip.plugin=momentum_carry --set grid.plugin=nf4
variant threshold_consensus_h65k 0 --set flip.plugin=threshold_consensus \
    --set grid.plugin=prime_harmonic65k --set flip.stride=dynamic
variant stochastic_zscore_z009 0 --set flip.plugin=stochastic_zscore --set flip.z=0.09
variant threshold_consensus_t5 0 --set flip.plugin=threshold_consensus --set flip.threshold=5
echo done
