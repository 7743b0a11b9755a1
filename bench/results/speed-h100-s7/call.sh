#!/bin/sh
# device call driver (scratch, not committed)
set -u
med() { python3 - "$@" <<'PY'
import json,sys,statistics,os
for d in sys.argv[1:]:
    if not os.path.isdir(d): continue
    rows=[json.loads(l) for l in open(os.path.join(d,'log.jsonl')) if '"loss"' in l and 'event' not in l]
    t=[r['tokens_per_s'] for r in rows if 3<=r['step']<=12]
    print(json.dumps({"run":os.path.basename(d),"median_tok_s":round(statistics.median(t),1),"loss12":rows[-1]['loss'],"flips12":rows[-1]['flips'],"peak_mib":round(rows[-1]['peak_mem_bytes']/2**20,1)}))
PY
}
for w in "$@"; do
case $w in
unpack) rm -rf /tmp/primal_gpu; mkdir -p /tmp/primal_gpu; tar -C /tmp/primal_gpu -xJf _build_cuda/bundle.tar.xz ;;
prof_flash)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  ncu -k regex:flash --launch-skip 47 --launch-count 3 --set full --import-source no /tmp/primal_gpu/bin/gpu_step --steps 2 --warmup 1 --logits bf16 > $OUT/prof_flash.txt 2>&1
  grep -E "flash_|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|Executed Ipc A|Block Limit|Shared Memory Configuration Size|Dynamic Shared|L1/TEX Hit|Bank" $OUT/prof_flash.txt | head -80 ;;
variants)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  for i in 1 2; do for v in $VARS; do _build_cuda/alt/bin/gpu_step_$v --logits bf16 --steps 10 | python3 -c "import json,sys;j=json.loads(sys.stdin.read());print('variant $v',j['tokens_per_s'],j['loss'],j['step_s'],j['forward_s'],j['backward_s'])"; done; done
  for v in $VARS; do ncu --clock-control none -k regex:flash --launch-skip 36 --launch-count 36 --metrics gpu__time_duration.sum --csv --print-units base _build_cuda/alt/bin/gpu_step_$v --steps 1 --warmup 1 --logits bf16 2>/dev/null > $OUT/ncu_$v.csv
    python3 - $OUT/ncu_$v.csv $v <<'PY2'
import csv,sys,collections
t=collections.defaultdict(float)
for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"')):
    t[r['Kernel Name'].split('(')[0].split('::')[-1]]+=float(r['Metric Value'])/1e6
print('variant',sys.argv[2],{k:round(v,3) for k,v in t.items()},'total',round(sum(t.values()),3))
PY2
  done ;;
vtests)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  for v in $VARS; do echo "variant $v"; _build_cuda/alt/bin/cuda_test_$v 2>&1 | tail -2; done ;;
run124) rm -rf /tmp/primal_runs; bench/gpu_train.sh run speed124m:run.logits=bf16 speed124m:run.logits=bf16,run.seed=0 >/dev/null 2>&1
  med /tmp/primal_runs/speed124m*; which nsys ncu cuobjdump ;;
kjv4) rm -rf /tmp/primal_runs; bench/gpu_train.sh run kjv200:run.logits=bf16 kjv200:run.logits=bf16,run.seed=1 kjv200:run.logits=bf16,run.seed=2 kjv200:run.logits=bf16,run.seed=3 2>&1 | grep val_loss
  for d in /tmp/primal_runs/kjv200*/; do python3 -c "
import json,sys;rows=[json.loads(l) for l in open(sys.argv[1]+'log.jsonl')];print(sys.argv[1].split('/')[-2],[(r['step'],round(r['val_loss'],4)) for r in rows if 'val_loss' in r])" $d; done
  tar -C /tmp/primal_runs -czf $OUT/kjv4.tgz . ;;
step2)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  for i in 1 2; do /tmp/primal_gpu/bin/gpu_step --logits bf16 --steps 10 | python3 -c "import json,sys;j=json.loads(sys.stdin.read());print('gpu_step',j['tokens_per_s'],j['loss'],j['model_bytes']['peak'])"; done ;;
ab) rm -rf /tmp/primal_runs /tmp/ab; mkdir -p /tmp/ab
  for r in 1 2 3; do for v in $ABV; do cp _gpu_carry/bundle$v.tar.xz _gpu_carry/bundle.tar.xz
    bench/gpu_train.sh run speed124m:run.logits=bf16${ABSET:-} >/dev/null 2>&1; mv /tmp/primal_runs/speed124m-run.logits-bf16* /tmp/ab/ 2>/dev/null; for d in /tmp/ab/speed124m*; do [ -d "$d" ] && mv "$d" /tmp/ab/$v$r; done; rm -f /tmp/ab/*.txt; done; done
  med /tmp/ab/*; tar -C /tmp/ab -czf $OUT/ab.tgz . ;;
ncu_b) NCU_SETS="--set run.logits=bf16" bench/gpu_train.sh run ncu124m >/dev/null 2>&1; cp /tmp/primal_runs/ncu124m.json $OUT/ncu124m_b.json
  python3 -c "
import json;d=json.load(open('/tmp/primal_runs/ncu124m.json'));print(d['total_ms'])
for x in d['kernels'][:30]: print('%7.3f %4d  %s'%(x['ms'],x['calls'],x['name'][:90]))" ;;
vs_torch) PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile > $OUT/torch_compile.jsonl 2>$OUT/torch_compile.err; tail -c 600 $OUT/torch_compile.jsonl ;;
clocks) nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,utilization.gpu --format=csv,noheader -lms 50 > $OUT/clocks.csv & P=$!
  rm -rf /tmp/primal_runs; bench/gpu_train.sh run speed124m:run.logits=bf16 >/dev/null 2>&1; kill $P
  med /tmp/primal_runs/speed124m-run.logits-bf16; awk -F, '{print $2, $4, $5}' $OUT/clocks.csv | sort | uniq -c | sort -rn | head -12 ;;
final1) TESTS=1 TORCH=0 GPU_SHAPES="target target_lbf16 target_mlp6_lbf16 target_recompute_mlp_lbf16 target_recompute_lbf16" bench/gpu.sh run > $OUT/gpu_sh.txt 2>&1; tail -2 $OUT/gpu_sh.txt | cut -c1-300
  python3 -c "
import json
for l in open('$OUT/gpu_results.jsonl'):
    j=json.loads(l)
    if 'tokens_per_s' in j: print('gpu_step', j['logits'], j['recompute'], j['recompute_blocks'], j['tokens_per_s'], round(j['model_bytes']['peak']/2**30,2))"
  bench/gpu_train.sh run speed124m:run.logits=bf16 speed124m speed124m:run.logits=bf16,run.recompute=mlp,run.recompute_blocks=6 speed124m:run.logits=bf16,run.recompute=mlp speed124m:run.logits=bf16,run.recompute=true speed124m:run.logits=bf16,flip.plugin=momentum_carry torch124m speed124m:run.logits=bf16,run.seed=0 > $OUT/train1.txt 2>&1
  med /tmp/primal_runs/speed124m*; cat /tmp/primal_runs/torch124m.jsonl | cut -c1-260 ;;
final2) NCU_SETS="--set run.logits=bf16" bench/gpu_train.sh run speed350m speed350m:run.logits=bf16 speed350m:run.logits=bf16,run.recompute=mlp speed350m:run.logits=bf16,run.recompute=true speed15b speed15b:run.recompute=true speed15b:run.logits=bf16 speed15b_frozen torch15b kjv200 ncu124m > $OUT/train2.txt 2>&1
  med /tmp/primal_runs/speed350m* /tmp/primal_runs/speed15b*; cat /tmp/primal_runs/torch15b.jsonl | cut -c1-260; grep val_loss /tmp/primal_runs/kjv200/log.jsonl | tail -1; cp /tmp/primal_runs/ncu124m.json $OUT/ 2>/dev/null; python3 -c "
import json;d=json.load(open('/tmp/primal_runs/ncu124m.json'));print('ncu total',d['total_ms'])" ;;
vs2) for i in 1 2; do PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile >> $OUT/torch_compile2.jsonl 2>>$OUT/torch_compile2.err; rm -rf /tmp/primal_runs; bench/gpu_train.sh run speed124m:run.logits=bf16 >/dev/null 2>&1; med /tmp/primal_runs/speed124m-run.logits-bf16; done; cut -c1-200 $OUT/torch_compile2.jsonl ;;
mem) rm -rf /tmp/primal_runs; bench/gpu_train.sh run speed124m:run.logits=bf16 speed124m:run.logits=bf16,run.recompute=mlp,run.recompute_blocks=6 speed124m:run.logits=bf16,run.recompute=mlp,run.recompute_blocks=5 speed124m:run.logits=bf16,run.recompute=mlp,run.recompute_blocks=4 >/dev/null 2>&1
  med /tmp/primal_runs/speed124m* ;;
mem2) rm -rf /tmp/primal_runs; PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile > $OUT/torch_compile3.jsonl 2>$OUT/torch_compile3.err
  bench/gpu_train.sh run speed124m:run.logits=bf16 speed124m:run.logits=bf16,run.recompute=mlp,run.recompute_blocks=5 speed124m:run.logits=bf16,run.recompute=mlp,run.recompute_blocks=6 speed124m:run.logits=bf16,run.seed=0 speed124m:run.logits=bf16,run.recompute=mlp,run.recompute_blocks=5,run.seed=0 >/dev/null 2>&1
  PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile >> $OUT/torch_compile3.jsonl 2>>$OUT/torch_compile3.err
  med /tmp/primal_runs/speed124m*; python3 -c "
import json
for l in open('$OUT/torch_compile3.jsonl'): j=json.loads(l); print('torch.compile', j['tokens_per_s'], j['peak_mem_bytes'])" ;;
res) rm -rf /tmp/primal_runs; PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile > $OUT/torch_compile.jsonl 2>$OUT/torch_compile.err
  bench/gpu_train.sh run speed124m:run.logits=bf16 speed124m:run.logits=bf16,run.recompute_residual=true speed124m:run.logits=bf16,run.recompute_residual=true,run.recompute=mlp,run.recompute_blocks=1 speed124m:run.logits=bf16,run.recompute_residual=true,run.recompute=mlp,run.recompute_blocks=2 speed124m:run.logits=bf16,run.recompute=mlp,run.recompute_blocks=5 > $OUT/train.txt 2>&1
  PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile >> $OUT/torch_compile.jsonl 2>>$OUT/torch_compile.err
  med /tmp/primal_runs/speed124m*; python3 -c "
import json
for l in open('$OUT/torch_compile.jsonl'): j=json.loads(l); print('torch.compile', j['tokens_per_s'], j['peak_mem_bytes'])"
  tar -C /tmp/primal_runs -czf $OUT/runs.tgz . ;;
gx) rm -rf /tmp/primal_runs /tmp/gx; mkdir -p /tmp/gx
  for r in 1 2; do for v in base nosq noamax both; do
    case $v in base) E= ;; nosq) E="PRIMAL_X_NOSQ=1" ;; noamax) E="PRIMAL_X_NOAMAX=1" ;; both) E="PRIMAL_X_NOSQ=1 PRIMAL_X_NOAMAX=1" ;; esac
    env $E bench/gpu_train.sh run speed124m:run.logits=bf16 >/dev/null 2>&1; mv /tmp/primal_runs/speed124m-run.logits-bf16 /tmp/gx/$v$r; done; done
  med /tmp/gx/*; tar -C /tmp/gx -czf $OUT/gx.tgz . ;;
nb) TESTS=1 TORCH=0 GPU_SHAPES="target_lbf16 target_nbf16_lbf16" bench/gpu.sh run > $OUT/gpu_sh.txt 2>&1; tail -3 $OUT/gpu_sh.txt | cut -c1-200
  python3 -c "
import json
for l in open('$OUT/gpu_results.jsonl'):
    j=json.loads(l)
    if 'tokens_per_s' in j: print('gpu_step', j['logits'], j.get('norm_input'), j['tokens_per_s'], j['loss'], round(j['model_bytes']['peak']/2**20,1))"
  rm -rf /tmp/primal_runs; PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile > $OUT/torch_compile.jsonl 2>$OUT/torch_compile.err
  bench/gpu_train.sh run speed124m:run.logits=bf16 speed124m:run.logits=bf16,run.norm_input=bf16 speed124m:run.logits=bf16,run.recompute_residual=true speed124m:run.logits=bf16,run.norm_input=bf16,run.seed=0 speed124m:run.logits=bf16,run.seed=0 > $OUT/train.txt 2>&1
  PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile >> $OUT/torch_compile.jsonl 2>>$OUT/torch_compile.err
  med /tmp/primal_runs/speed124m*; python3 -c "
import json
for l in open('$OUT/torch_compile.jsonl'): j=json.loads(l); print('torch.compile', j['tokens_per_s'], j['peak_mem_bytes'])"
  tar -C /tmp/primal_runs -czf $OUT/runs.tgz . ;;
kjvn) rm -rf /tmp/primal_runs; bench/gpu_train.sh run kjv200:run.logits=bf16,run.norm_input=bf16 kjv200:run.logits=bf16,run.norm_input=bf16,run.seed=1 kjv200:run.logits=bf16,run.norm_input=bf16,run.seed=2 kjv200:run.logits=bf16,run.norm_input=bf16,run.seed=3 kjv200:run.logits=bf16 kjv200:run.logits=bf16,run.seed=1 kjv124m:run.recompute=false kjv124m:run.recompute=false,run.norm_input=bf16 2>&1 | grep val_loss
  for d in /tmp/primal_runs/kjv*/; do python3 -c "
import json,sys;rows=[json.loads(l) for l in open(sys.argv[1]+'log.jsonl')];print(sys.argv[1].split('/')[-2],[(r['step'],round(r['val_loss'],4)) for r in rows if 'val_loss' in r])" $d; done
  tar -C /tmp/primal_runs -czf $OUT/kjvn.tgz . ;;
kjvm) rm -rf /tmp/primal_runs; bench/gpu_train.sh run kjv124m kjv124m:run.norm_input=fp32 kjv124m:run.seed=1 kjv124m:run.norm_input=fp32,run.seed=1 2>&1 | grep val_loss
  for d in /tmp/primal_runs/kjv*/; do python3 -c "
import json,sys;rows=[json.loads(l) for l in open(sys.argv[1]+'log.jsonl')];print(sys.argv[1].split('/')[-2],[(r['step'],round(r['val_loss'],4)) for r in rows if 'val_loss' in r], 'peak', max(r.get('peak_mem_bytes',0) for r in rows)/2**20)" $d; done
  tail -3 /tmp/primal_runs/kjv124m.txt; tar -C /tmp/primal_runs -czf $OUT/kjvm.tgz . ;;
vs3) rm -rf /tmp/primal_runs /tmp/vs3; mkdir -p /tmp/vs3; for i in 1 2 3; do PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile >> $OUT/torch_compile_vs3.jsonl 2>>$OUT/torch_compile_vs3.err
  bench/gpu_train.sh run speed124m:run.logits=bf16,run.norm_input=bf16 >/dev/null 2>&1; mv /tmp/primal_runs/speed124m-run.logits-bf16_run.norm_input-bf16 /tmp/vs3/nbf16_$i; done
  med /tmp/vs3/*; python3 -c "
import json
for l in open('$OUT/torch_compile_vs3.jsonl'): j=json.loads(l); print('torch.compile', j['tokens_per_s'], j['peak_mem_bytes'])"
  tar -C /tmp/vs3 -czf $OUT/vs3.tgz . ;;
g1) TESTS=1 TORCH=0 GPU_SHAPES="target_nbf16_lbf16 target_nbf16_lbf16_timed target_nbf16_lbf16 target_nbf16_lbf16_timed" bench/gpu.sh run > $OUT/gpu_sh.txt 2>&1; tail -3 $OUT/gpu_sh.txt | cut -c1-200
  python3 -c "
import json
for l in open('$OUT/gpu_results.jsonl'):
    j=json.loads(l)
    if 'tokens_per_s' in j: print('gpu_step', j['logits'], j.get('norm_input'), j.get('gemm'), j['tokens_per_s'], j['loss'], round(j['model_bytes']['peak']/2**20,1))"
  rm -rf /tmp/primal_runs; PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile > $OUT/torch_compile.jsonl 2>$OUT/torch_compile.err
  bench/gpu_train.sh run speed124m:run.logits=bf16,run.norm_input=bf16 speed124m:run.logits=bf16,run.norm_input=bf16,run.gemm=timed speed124m:run.logits=bf16,run.norm_input=bf16,run.seed=0 speed124m:run.logits=bf16,run.norm_input=bf16,run.gemm=timed,run.seed=0 > $OUT/train.txt 2>&1
  PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile >> $OUT/torch_compile.jsonl 2>>$OUT/torch_compile.err
  med /tmp/primal_runs/speed124m*; grep -h '"gemm"' /tmp/primal_runs/speed124m*/log.jsonl; python3 -c "
import json
for l in open('$OUT/torch_compile.jsonl'): j=json.loads(l); print('torch.compile', j['tokens_per_s'], j['peak_mem_bytes'])"
  tar -C /tmp/primal_runs -czf $OUT/runs.tgz . ;;
unsafe)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  _build_cuda/alt/cuda_test_unsafe --filter 'cuda_kernels/gemm*' --verbose 2>&1 | grep -E "FAIL|PASS|Synthesis|gemm" | head -8 ;;
g2) TESTS=1 TORCH=0 GPU_SHAPES="target_nbf16_lbf16 target_nbf16_lbf16_timed target_nbf16_lbf16 target_nbf16_lbf16_timed" bench/gpu.sh run > $OUT/gpu_sh.txt 2>&1; tail -3 $OUT/gpu_sh.txt | cut -c1-200
  grep -h Synthesis $OUT/cuda_test.log $OUT/policies_cuda_test.log; python3 -c "
import json
for l in open('$OUT/gpu_results.jsonl'):
    j=json.loads(l)
    if 'tokens_per_s' in j: print('gpu_step', j['logits'], j.get('norm_input'), j.get('gemm'), j['tokens_per_s'], j['loss'], round(j['model_bytes']['peak']/2**20,1))"
  rm -rf /tmp/primal_runs; PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile > $OUT/torch_compile.jsonl 2>$OUT/torch_compile.err
  bench/gpu_train.sh run speed124m:run.logits=bf16,run.norm_input=bf16 speed124m:run.logits=bf16,run.norm_input=bf16,run.gemm=timed speed124m:run.logits=bf16,run.norm_input=bf16,run.seed=0 speed124m:run.logits=bf16,run.norm_input=bf16,run.gemm=timed,run.seed=0 > $OUT/train.txt 2>&1
  PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile >> $OUT/torch_compile.jsonl 2>>$OUT/torch_compile.err
  med /tmp/primal_runs/speed124m*; grep -h '"gemm"' /tmp/primal_runs/speed124m*/log.jsonl; python3 -c "
import json
for l in open('$OUT/torch_compile.jsonl'): j=json.loads(l); print('torch.compile', j['tokens_per_s'], j['peak_mem_bytes'])"
  tar -C /tmp/primal_runs -czf $OUT/runs.tgz . ;;
g3) TESTS=1 TORCH=0 GPU_SHAPES="target_nbf16_lbf16 target_nbf16_lbf16_timed" bench/gpu.sh run > $OUT/gpu_sh.txt 2>&1; tail -3 $OUT/gpu_sh.txt | cut -c1-200
  grep -h Synthesis $OUT/cuda_test.log $OUT/policies_cuda_test.log; grep -E "^\[FAIL|Assert|\[----\]" $OUT/cuda_test.log $OUT/policies_cuda_test.log | head; python3 -c "
import json
for l in open('$OUT/gpu_results.jsonl'):
    j=json.loads(l)
    if 'tokens_per_s' in j: print('gpu_step', j['logits'], j.get('norm_input'), j.get('gemm'), j['tokens_per_s'], j['loss'], round(j['model_bytes']['peak']/2**20,1))"
  rm -rf /tmp/primal_runs /tmp/vs; mkdir -p /tmp/vs
  bench/gpu_train.sh run speed124m:run.logits=bf16,run.norm_input=bf16 >/dev/null 2>&1; mv /tmp/primal_runs/speed124m-run.logits-bf16_run.norm_input-bf16 /tmp/vs/heuristic_1
  for i in 1 2 3; do PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile >> $OUT/torch_compile.jsonl 2>>$OUT/torch_compile.err
  bench/gpu_train.sh run speed124m:run.logits=bf16,run.norm_input=bf16,run.gemm=timed >/dev/null 2>&1; mv /tmp/primal_runs/speed124m-run.logits-bf16_run.norm_input-bf16_run.gemm-timed /tmp/vs/timed_$i; done
  med /tmp/vs/*; grep -h '"gemm"' /tmp/vs/*/log.jsonl; python3 -c "
import json
for l in open('$OUT/torch_compile.jsonl'): j=json.loads(l); print('torch.compile', j['tokens_per_s'], j['peak_mem_bytes'])"
  tar -C /tmp/vs -czf $OUT/vs.tgz . ;;
g4) rm -rf /tmp/primal_runs /tmp/vs; mkdir -p /tmp/vs
  for i in 4 5; do PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --steps 8 --variants dense_compile >> $OUT/torch_compile.jsonl 2>>$OUT/torch_compile.err
  bench/gpu_train.sh run speed124m:run.logits=bf16,run.norm_input=bf16,run.gemm=timed >/dev/null 2>&1; mv /tmp/primal_runs/speed124m-run.logits-bf16_run.norm_input-bf16_run.gemm-timed /tmp/vs/timed_$i; done
  med /tmp/vs/*; python3 -c "
import json
for l in open('$OUT/torch_compile.jsonl'): j=json.loads(l); print('torch.compile', j['tokens_per_s'], j['peak_mem_bytes'])"
  tar -C /tmp/vs -czf $OUT/vs.tgz .
  rm -rf /tmp/primal_runs; K=run.logits=bf16,run.norm_input=bf16,run.gemm=timed
  bench/gpu_train.sh run kjv200:$K kjv200:$K,run.seed=1 kjv200:$K,run.seed=2 kjv200:$K,run.seed=3 > $OUT/kjv.txt 2>&1
  for d in /tmp/primal_runs/kjv200*/; do python3 -c "
import json,sys;rows=[json.loads(l) for l in open(sys.argv[1]+'log.jsonl')];print(sys.argv[1].split('/')[-2],[(r['step'],round(r['val_loss'],4)) for r in rows if 'val_loss' in r])" $d; done
  tar -C /tmp/primal_runs -czf $OUT/kjv.tgz .
  rm -rf /tmp/primal_runs; bench/gpu_train.sh run speed15b:run.recompute=true speed15b:run.recompute=true,run.gemm=timed speed350m:run.logits=bf16 speed350m:run.logits=bf16,run.gemm=timed > $OUT/sizes.txt 2>&1
  med /tmp/primal_runs/speed15b* /tmp/primal_runs/speed350m*; grep -h '"gemm"' /tmp/primal_runs/speed*/log.jsonl
  tar -C /tmp/primal_runs -czf $OUT/sizes.tgz . ;;
resume) pkg=/tmp/primal_pkg; rm -rf $pkg; mkdir -p $pkg; tar -C $pkg -xJf _gpu_carry/bundle.tar.xz
  export LD_LIBRARY_PATH=$pkg/root/usr/local/lib:$pkg/deps:/usr/local/cuda/lib64; export PRIMAL_PLUGIN_PATH=$pkg/root/usr/local/lib/primal
  run=$pkg/root/usr/local/bin/primal-run
  S="--set model.dim=768 --set model.layers=12 --set model.heads=12 --set model.ffn=2048 --set model.vocab=50304 --set run.batch=32 --set run.seq_len=1024 --set flip.plugin=threshold_consensus --set run.steps=8 --set run.log_every=1 --set run.eval_every=0 --set run.sample_tokens=0 --set data.val_fraction=0 --set run.logits=bf16 --set run.norm_input=bf16 --set run.ckpt_every=4"
  for mode in heuristic timed; do
    rm -rf /tmp/rs; mkdir -p /tmp/rs; a=/tmp/rs/a; x=/tmp/rs/x
    $run examples/anchor.ini --set run.out=$x $S --set run.gemm=$mode > /tmp/rs/full.txt 2>&1 || tail -3 /tmp/rs/full.txt
    cp -r $x $a; rm $x/ckpt-00000008.safetensors
    $run examples/anchor.ini --set run.out=$x $S --set run.gemm=$mode --resume > /tmp/rs/res.txt 2>&1 || tail -3 /tmp/rs/res.txt
    grep -iE "resumed|warn" /tmp/rs/res.txt | head -3
    cmp $a/ckpt-00000008.safetensors $x/ckpt-00000008.safetensors && echo "$mode: ckpt-8 of the resumed run identical" || echo "$mode: ckpt-8 DIFFERS"
    grep -h '"gemm"' $a/log.jsonl $x/log.jsonl; tail -1 $x/log.jsonl | cut -c1-120
    mkdir -p $OUT/resume_$mode; cp $a/log.jsonl $OUT/resume_$mode/full_log.jsonl; cp $x/log.jsonl $OUT/resume_$mode/resumed_log.jsonl; cp /tmp/rs/res.txt $OUT/resume_$mode/
  done ;;
t5) TESTS=1 TORCH=0 GPU_SHAPES="small" bench/gpu.sh run > $OUT/gpu_sh.txt 2>&1; grep -h Synthesis $OUT/cuda_test.log $OUT/policies_cuda_test.log; grep -E "^\[FAIL|\[----\] .*(tests|cuda)" $OUT/cuda_test.log $OUT/policies_cuda_test.log | head ;;
tests) TESTS=1 GPU_SHAPES="target" TORCH=0 bench/gpu.sh run 2>&1 | tail -8 ;;
nowait)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  _build_cuda/alt/cuda_test_nowait --filter 'cuda_model/the_gradient_stream*' --verbose 2>&1 | grep -E "FAIL|PASS|Synthesis|differs" | head -5 ;;
step_ab)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  for i in 1 2; do for inl in 1 0; do /tmp/primal_gpu/bin/gpu_step --grads-inline $inl --steps 10 | python3 -c "import json,sys;j=json.loads(sys.stdin.read());print('inline',j['grads_inline'],j['tokens_per_s'],j['loss'],j['model_bytes']['peak'])"; done; done ;;
train_ab) bench/gpu_train.sh run speed124m:run.grad_stream=false speed124m speed124m:run.grad_stream=false,run.seed=0 speed124m:run.grad_stream=true >/dev/null 2>&1
  med /tmp/primal_runs/speed124m* ;;
logits_step)
  export LD_LIBRARY_PATH=/tmp/primal_gpu/lib:/usr/local/cuda/lib64
  for i in 1 2; do for l in fp32 bf16; do /tmp/primal_gpu/bin/gpu_step --logits $l --steps 10 | python3 -c "import json,sys;j=json.loads(sys.stdin.read());print('logits',j['logits'],j['tokens_per_s'],j['loss'],j['model_bytes']['peak'])"; done; done ;;
logits_train) rm -rf /tmp/primal_runs; bench/gpu_train.sh run speed124m speed124m:run.logits=bf16 speed124m:run.seed=0 speed124m:run.logits=bf16,run.seed=0 >/dev/null 2>&1
  med /tmp/primal_runs/speed124m* ;;
quality) rm -rf /tmp/primal_runs; NCU_SETS="--set run.logits=bf16" bench/gpu_train.sh run kjv200 kjv200:run.logits=bf16 kjv124m kjv124m:run.logits=bf16 kjv124m:run.seed=1 kjv124m:run.logits=bf16,run.seed=1 ncu124m 2>&1 | tail -12
  python3 - <<'PY'
import json,glob,os,statistics
for d in sorted(glob.glob('/tmp/primal_runs/kjv*/')):
    rows=[json.loads(l) for l in open(d+'log.jsonl')]
    ev=[(r['step'],round(r['val_loss'],4)) for r in rows if 'val_loss' in r]
    tr=[r['tokens_per_s'] for r in rows if 'tokens_per_s' in r and r.get('step',0)>=10]
    print(os.path.basename(d[:-1]), ev, 'median tok/s', round(statistics.median(tr)) if tr else None)
PY
  cp /tmp/primal_runs/ncu124m.json $OUT/ 2>/dev/null ;;
kjvseeds) rm -rf /tmp/primal_runs; bench/gpu_train.sh run kjv200 kjv200:run.seed=1 kjv200:run.seed=2 kjv200:run.seed=3 kjv200:run.logits=bf16 kjv200:run.logits=bf16,run.seed=1 kjv200:run.logits=bf16,run.seed=2 kjv200:run.logits=bf16,run.seed=3 2>&1 | grep val_loss
  tar -C /tmp/primal_runs -czf $OUT/kjvseeds.tgz . ;;
ncu_bf16) NCU_SETS="--set run.logits=bf16" bench/gpu_train.sh run ncu124m >/dev/null 2>&1; cp /tmp/primal_runs/ncu124m.json $OUT/ncu124m_bf16.json
  python3 -c "
import json;d=json.load(open('/tmp/primal_runs/ncu124m.json'));print(d['total_ms'])
for x in d['kernels'][:12]: print('%7.3f %4d  %s'%(x['ms'],x['calls'],x['name'][:90]))" ;;
*) sh -c "$w" ;;
esac
echo "== $w $(date +%T)"
done
