#!/bin/sh
# device call driver (scratch, not committed)
set -u
med() { python3 - "$@" <<'PY'
import json,sys,statistics,os
for d in sys.argv[1:]:
    rows=[json.loads(l) for l in open(os.path.join(d,'log.jsonl')) if '"loss"' in l and 'event' not in l]
    t=[r['tokens_per_s'] for r in rows if 3<=r['step']<=12]
    print(json.dumps({"run":os.path.basename(d),"median_tok_s":round(statistics.median(t),1),"loss12":rows[-1]['loss'],"flips12":rows[-1]['flips'],"peak_mib":round(rows[-1]['peak_mem_bytes']/2**20,1)}))
PY
}
for w in "$@"; do
case $w in
tests) TESTS=1 GPU_SHAPES="target" TORCH=0 bench/gpu.sh run 2>&1 | tail -8 ;;
nowait)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  _build_cuda/alt/cuda_test_nowait --filter 'cuda_model/the_gradient_stream*' --verbose 2>&1 | grep -E "FAIL|PASS|Synthesis|differs" | head -5 ;;
step_ab)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  for i in 1 2; do for inl in 1 0; do /tmp/primal_gpu/bin/gpu_step --grads-inline $inl --steps 10 | python3 -c "import json,sys;j=json.loads(sys.stdin.read());print('inline',j['grads_inline'],j['tokens_per_s'],j['loss'],j['model_bytes']['peak'])"; done; done ;;
train_ab) bench/gpu_train.sh run speed124m:run.grad_stream=false speed124m speed124m:run.grad_stream=false,run.seed=0 speed124m:run.grad_stream=true >/dev/null 2>&1
  med /tmp/primal_runs/speed124m* ;;
*) sh -c "$w" ;;
esac
echo "== $w $(date +%T)"
done
