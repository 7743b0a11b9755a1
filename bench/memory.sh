#!/bin/bash
# memory.sh: the whole-device GPU memory of a PRIMAL training run and of the PyTorch baseline,
# sampled the same way for both (issue 22): `nvidia-smi --query-gpu=memory.used -lms 50` on the
# card, from before the run starts until it has exited, minus what the idle card showed just
# before.  Unlike log.jsonl's peak_mem_bytes (the CUDA model's own buffers only) and PyTorch's
# torch.cuda.max_memory_allocated() (its allocator's tensors only), this counts everything the
# process holds on the device: the CUDA context, cuBLAS's workspaces, the flip policy's state,
# the caching allocator's reserve.
#
# On the GPU machine of the device tool, from the repository root, after
# `bench/gpu_train.sh bundle` on the build machine (carry _gpu_carry and data):
#
#   bench/memory.sh [--dry-run] [--steps N] [--gpu I] [RUN...]
#
# RUN (default: all, in this order):
#   124m_tc     124M llama shape (dim 768, 12 layers, 12 heads, ffn 2048, vocab 50304), batch
#               32 x 1024, examples/gpt2-124m-gpu.ini's settings, threshold_consensus
#   124m_mc     the same with momentum_carry 8/8
#   124m_ac     the same with adam_carry (its defaults: the best policy of docs/RESULTS.md)
#   124m_torch  PyTorch dense AdamW, torch.compile, the same shape (bench/torch_baseline.py)
#   15b_mc8     Qwen2.5-1.5B shape (dim 1536, 28 layers, 12/2 heads, ffn 8960, vocab 151936,
#               tied, q/k/v biases), batch 1 x 512, recompute = true, momentum_carry 8/8
#   15b_mc4     the same with momentum_carry 4/4
#   15b_ac      the same with adam_carry (its defaults)
#   15b_torch   PyTorch dense AdamW, eager, the nearest shape torch_baseline.py builds (12 KV
#               heads, untied, no biases)
#   7b_mc4      Llama-2-7B shape (dim 4096, 32 layers, 32 heads, ffn 11008, vocab 32000), batch
#               1 x 512, recompute = true, momentum_carry 4/4
#   7b_mc4_lean the same with the LM head's memory keys of [run] at their lean setting:
#               head_ahead = off, logits = bf16
#   7b_tc       the same with threshold_consensus
#   7b_torch    PyTorch dense AdamW, eager, the same shape (needs about 16 bytes a parameter:
#               on an 80 GB card it reports its out-of-memory error)
#
# Options: --steps N: training steps of each run (default 30; PyTorch runs 3 warm-up steps
# more); --gpu I: the card (nvidia-smi's index; CUDA_VISIBLE_DEVICES=I with PCI bus order);
# --dry-run: print the commands each run would execute and exit (nothing is run or needed).
# Environment: PRIMAL_RUN (a primal-run to use instead of unpacking _gpu_carry/bundle.tar.xz),
# TORCH_VARIANT_124M (dense_compile), TORCH_VARIANT_LARGE (dense_eager), WORK (/tmp/primal_mem:
# run directories and logs; checkpoints are deleted after each run).
#
# Prints one JSON line per run, also appended to $OUT/memory.jsonl where OUT is set:
#   machine (nvidia-smi's name), gpu_index, run, shape, system (primal | pytorch), policy, steps,
#   idle_bytes (the card's memory.used before the run), whole_device_peak_bytes (the largest
#   sample during the run minus idle_bytes), samples, card_idle (no other compute process on
#   the card when the run started), rc; for PRIMAL logged_device_peak_bytes and
#   logged_peak_mem_bytes (the largest of log.jsonl's device_peak_bytes, cudaMemGetInfo's
#   total - free as the process saw it, and peak_mem_bytes, the model's own buffers),
#   logged_policy_state_bytes, tokens_per_s (the median of the logged steps after the third);
#   for PyTorch torch_max_allocated_bytes and tokens_per_s from torch_baseline.py.
# nvidia-smi reports MiB: the byte figures are MiB x 1048576.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
dry=0
steps=30
gpu=0
runs=()
while [ $# -gt 0 ]; do
    case $1 in
    --dry-run) dry=1 ;;
    --steps) steps=${2:?--steps needs a count}; shift ;;
    --steps=*) steps=${1#--steps=} ;;
    --gpu) gpu=${2:?--gpu needs an index}; shift ;;
    --gpu=*) gpu=${1#--gpu=} ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "memory.sh: unknown option $1" >&2; exit 2 ;;
    *) runs+=("$1") ;;
    esac
    shift
done
case $steps in '' | *[!0-9]*) echo "memory.sh: --steps: expected a count, got $steps" >&2; exit 2 ;; esac
case $gpu in '' | *[!0-9]*) echo "memory.sh: --gpu: expected an index, got $gpu" >&2; exit 2 ;; esac
if [ ${#runs[@]} -eq 0 ]; then
    runs=(124m_tc 124m_mc 124m_ac 124m_torch 15b_mc8 15b_mc4 15b_ac 15b_torch 7b_mc4 7b_mc4_lean
        7b_tc 7b_torch)
fi
work=${WORK:-/tmp/primal_mem}
run=primal-run # setup_primal says which

# The shapes as primal-run --set options and as torch_baseline.py flags.
p124m=(--set model.dim=768 --set model.layers=12 --set model.heads=12 --set model.ffn=2048
    --set model.vocab=50304)
t124m=(--dim 768 --layers 12 --heads 12 --ffn 2048 --vocab 50304 --seq 1024 --batch 32)
p15b=(--set model.dim=1536 --set model.layers=28 --set model.heads=12 --set model.kv_heads=2
    --set model.ffn=8960 --set model.vocab=151936 --set model.tied=true
    --set model.qkv_bias=true --set model.arch=qwen2 --set run.batch=1 --set run.seq_len=512
    --set run.recompute=true)
t15b=(--dim 1536 --layers 28 --heads 12 --ffn 8960 --vocab 151936 --seq 512 --batch 1)
p7b=(--set model.dim=4096 --set model.layers=32 --set model.heads=32 --set model.ffn=11008
    --set model.vocab=32000 --set run.batch=1 --set run.seq_len=512 --set run.recompute=true)
t7b=(--dim 4096 --layers 32 --heads 32 --ffn 11008 --vocab 32000 --seq 512 --batch 1)
mc8=(--set flip.plugin=momentum_carry --set flip.residual_bits=8 --set flip.momentum_bits=8)
mc4=(--set flip.plugin=momentum_carry --set flip.residual_bits=4 --set flip.momentum_bits=4)
tc=(--set flip.plugin=threshold_consensus)
ac=(--set flip.plugin=adam_carry)
lean=(--set run.head_ahead=off --set run.logits=bf16)
# every PRIMAL run: N steps, a log line each, no sample; the validation split of the example it
# starts from (2% of KJV) is evaluated once, at the end, as a real run's would be, and the final
# checkpoint is written (then deleted)
common=(--set run.steps="$steps" --set run.log_every=1 --set run.eval_every=0
    --set run.sample_tokens=0 --set run.ckpt_every=0)

# Where primal-run comes from: PRIMAL_RUN, else the bundle, unpacked as bench/gpu_train.sh does.
setup_primal() {
    if [ -n "${PRIMAL_RUN:-}" ]; then
        run=$PRIMAL_RUN
        return
    fi
    local pkg=/tmp/primal_pkg cudalib='' d f
    run=$pkg/root/usr/local/bin/primal-run
    [ "$dry" = 1 ] && return
    rm -rf "$pkg" && mkdir -p "$pkg"
    tar -C "$pkg" -xJf "$top/_gpu_carry/bundle.tar.xz"
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$d" ] && cudalib="$cudalib:$d"
    done
    f=$(find / -xdev -name 'libcublasLt.so.13*' 2>/dev/null | head -n 1 || true)
    [ -n "$f" ] && cudalib="$cudalib:$(dirname "$f")"
    export LD_LIBRARY_PATH="$pkg/root/usr/local/lib:$pkg/deps$cudalib"
    export PRIMAL_PLUGIN_PATH="$pkg/root/usr/local/lib/primal"
}

# The command of run $1, in the array cmd; shape, system and policy for its JSON line.
command_of() {
    local v124=${TORCH_VARIANT_124M:-dense_compile} vbig=${TORCH_VARIANT_LARGE:-dense_eager}
    local tb=(python3 "$top/bench/torch_baseline.py" --steps "$steps" --warmup 3)
    local out=(--set run.out="$work/$1")
    system=primal
    case $1 in
    124m_tc) shape=124m policy=threshold_consensus
        cmd=("$run" "$top/examples/gpt2-124m-gpu.ini" "${out[@]}" "${p124m[@]}" "${tc[@]}"
            "${common[@]}") ;;
    124m_mc) shape=124m policy=momentum_carry_8_8
        cmd=("$run" "$top/examples/gpt2-124m-gpu.ini" "${out[@]}" "${p124m[@]}" "${mc8[@]}"
            "${common[@]}") ;;
    124m_ac) shape=124m policy=adam_carry
        cmd=("$run" "$top/examples/gpt2-124m-gpu.ini" "${out[@]}" "${p124m[@]}" "${ac[@]}"
            "${common[@]}") ;;
    124m_torch) shape=124m system=pytorch policy=$v124
        cmd=("${tb[@]}" "${t124m[@]}" --variants "$v124") ;;
    15b_mc8) shape=qwen2.5-1.5b policy=momentum_carry_8_8
        cmd=("$run" "$top/examples/anchor.ini" "${out[@]}" "${p15b[@]}" "${mc8[@]}"
            "${common[@]}") ;;
    15b_mc4) shape=qwen2.5-1.5b policy=momentum_carry_4_4
        cmd=("$run" "$top/examples/anchor.ini" "${out[@]}" "${p15b[@]}" "${mc4[@]}"
            "${common[@]}") ;;
    15b_ac) shape=qwen2.5-1.5b policy=adam_carry
        cmd=("$run" "$top/examples/anchor.ini" "${out[@]}" "${p15b[@]}" "${ac[@]}"
            "${common[@]}") ;;
    15b_torch) shape=qwen2.5-1.5b-12kv-untied system=pytorch policy=$vbig
        cmd=("${tb[@]}" "${t15b[@]}" --variants "$vbig") ;;
    7b_mc4) shape=llama2-7b policy=momentum_carry_4_4
        cmd=("$run" "$top/examples/anchor.ini" "${out[@]}" "${p7b[@]}" "${mc4[@]}"
            "${common[@]}") ;;
    7b_mc4_lean) shape=llama2-7b policy=momentum_carry_4_4_lean
        cmd=("$run" "$top/examples/anchor.ini" "${out[@]}" "${p7b[@]}" "${mc4[@]}" "${lean[@]}"
            "${common[@]}") ;;
    7b_tc) shape=llama2-7b policy=threshold_consensus
        cmd=("$run" "$top/examples/anchor.ini" "${out[@]}" "${p7b[@]}" "${tc[@]}"
            "${common[@]}") ;;
    7b_torch) shape=llama2-7b system=pytorch policy=$vbig
        cmd=("${tb[@]}" "${t7b[@]}" --variants "$vbig") ;;
    *) echo "memory.sh: unknown run $1" >&2; return 2 ;;
    esac
}

# shellcheck disable=SC2054 # the commas are nvidia-smi's
smi=(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$gpu")

# No other compute process on the card (waits up to a minute for one to go); 1 or 0.
card_idle() {
    local i
    for i in $(seq 60); do
        if [ -z "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader -i "$gpu" |
            tr -d ' ')" ]; then
            echo 1
            return
        fi
        [ "$i" -lt 60 ] && sleep 1
    done
    echo 0
}

# One run: sample the idle card for a second, then sample while the command runs, and print
# the JSON line.
measure() {
    local name=$1 idle_ok idle rc samples=$work/$1.samples log=$work/$1.txt sampler
    command_of "$name"
    if [ "$dry" = 1 ]; then
        printf '# %s: shape %s, %s, %s\n' "$name" "$shape" "$system" "$policy"
        if [ "$system" = primal ]; then printf 'rm -rf %q\n' "$work/$name"; fi
        printf 'timeout 1 '
        printf '%q ' "${smi[@]}" -lms 50
        printf '>%q   # the idle card; its smallest sample is the baseline\n' "$work/$name.idle"
        printf '%q ' "${smi[@]}" -lms 50
        printf '>%q & sampler=$!\n' "$samples"
        printf '%q ' "${cmd[@]}"
        printf '>%q 2>&1\n' "$log"
        # shellcheck disable=SC2016 # printed, not run
        printf 'sleep 0.3; kill "$sampler"   # the largest sample minus the baseline: the peak\n\n'
        return 0
    fi
    if [ "$system" = primal ]; then rm -rf "${work:?}/$name"; fi
    idle_ok=$(card_idle)
    timeout 1 "${smi[@]}" -lms 50 >"$work/$name.idle" 2>/dev/null || true
    idle=$(sort -n "$work/$name.idle" | awk 'NF { print $1; exit }')
    "${smi[@]}" -lms 50 >"$samples" 2>/dev/null &
    sampler=$!
    sleep 0.2
    set +e
    if [ "$system" = pytorch ]; then
        PYTHONUNBUFFERED=1 "${cmd[@]}" >"$log" 2>&1
    else
        "${cmd[@]}" >"$log" 2>&1
    fi
    rc=$?
    set -e
    sleep 0.3
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    [ "$rc" = 0 ] || tail -n 5 "$log" >&2
    if [ "$system" = primal ]; then # the checkpoints are not needed (a 7B one is GBs)
        find "$work/$name" -name '*.safetensors' -delete 2>/dev/null || true
    fi
    python3 - "$machine" "$gpu" "$name" "$shape" "$system" "$policy" "$steps" "${idle:-}" \
        "$samples" "$idle_ok" "$rc" "$work/$name/log.jsonl" "$log" <<'PY' | tee -a "$results"
import json, statistics, sys
(machine, gpu, name, shape, system, policy, steps, idle, samples, idle_ok, rc, runlog,
 outlog) = sys.argv[1:]
MIB = 1048576
def ints(path):
    try:
        return [int(x) for x in open(path).read().split() if x.strip().isdigit()]
    except OSError:
        return []
s = ints(samples)
row = {"machine": machine, "gpu_index": int(gpu), "run": name, "shape": shape,
       "system": system, "policy": policy, "steps": int(steps),
       "idle_bytes": int(idle) * MIB if idle else None,
       "whole_device_peak_bytes": (max(s) - int(idle)) * MIB if s and idle else None,
       "samples": len(s), "card_idle": idle_ok == "1", "rc": int(rc)}
if system == "primal":
    lines = []  # training and evaluation lines (both sample the device)
    try:
        for l in open(runlog):
            j = json.loads(l)
            if "event" not in j:
                lines.append(j)
    except (OSError, ValueError):
        pass
    def largest(k):
        v = [j[k] for j in lines if k in j]
        return max(v) if v else None
    row["logged_device_peak_bytes"] = largest("device_peak_bytes")
    row["logged_peak_mem_bytes"] = largest("peak_mem_bytes")
    row["logged_policy_state_bytes"] = largest("policy_state_bytes")
    tps = [j["tokens_per_s"] for j in lines if "tokens_per_s" in j and j["step"] > 3]
    row["tokens_per_s"] = round(statistics.median(tps), 1) if tps else None
else:
    out = None
    try:
        for l in open(outlog):
            if l.startswith("{"):
                out = json.loads(l)
    except (OSError, ValueError):
        pass
    out = out or {}
    row["torch_max_allocated_bytes"] = out.get("peak_mem_bytes")
    row["tokens_per_s"] = out.get("tokens_per_s")
    if "error" in out:
        row["error"] = out["error"]
if int(rc) != 0 and "error" not in row:
    try:
        row["error"] = open(outlog).read()[-300:]
    except OSError:
        pass
print(json.dumps(row), flush=True)
PY
}

for r in "${runs[@]}"; do
    command_of "$r" >/dev/null || exit 2 # an unknown name stops before anything runs
done
setup_primal
if [ "$dry" = 1 ]; then
    echo "# bench/memory.sh --dry-run: $steps steps a run, card $gpu; primal-run: $run"
    echo "export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=$gpu"
    echo
    for r in "${runs[@]}"; do measure "$r"; done
    exit 0
fi
export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=$gpu
mkdir -p "$work"
results=${OUT:+$OUT/memory.jsonl}
results=${results:-$work/memory.jsonl}
machine=$(nvidia-smi --query-gpu=name --format=csv,noheader -i "$gpu")
for r in "${runs[@]}"; do measure "$r"; done
