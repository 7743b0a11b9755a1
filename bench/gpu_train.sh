#!/bin/sh
# Training runs on a GPU machine of the device tool (docs/RESULTS.md, docs/BENCHMARKS.md).
#   bench/gpu_train.sh bundle      here: `make install` (in $BUILD, default the top folder: an
#                                  out-of-tree build folder also works) into _gpu/ and pack it, with the shared
#                                  libraries beyond glibc/CUDA, as _gpu_carry/bundle.tar.xz
#   bench/gpu_train.sh run WHAT... there (carry _gpu_carry and data): unpack, then for each
#                                  WHAT: kjv200 (the 200-step GPU-vs-CPU check), kjv124m (the
#                                  124M example, 300 steps; both [:section.key=value,...]),
#                                  anchor:POLICY
#                                  [:SEED[:KEY=V,...]] (SPEC.md's anchor; KEY is a [flip] key or
#                                  section.key), speed124m, speed350m, speed15b (each
#                                  [:section.key=value,...], e.g. speed124m:run.recompute=true),
#                                  ncu124m (Nsight Compute per-kernel times of one step),
#                                  speed15b_frozen, torch124m, torch15b.
#                                  Run directories and logs go to $OUT.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-}
[ $# -gt 0 ] && shift
case $mode in
bundle)
    cd "$top"
    rm -rf _gpu _gpu_carry
    make -C "${BUILD:-$top}" install DESTDIR="$top/_gpu/root" >/dev/null
    mkdir -p _gpu/deps _gpu_carry
    for b in _gpu/root/usr/local/bin/primal-run _gpu/root/usr/local/lib/libprimal.so \
        _gpu/root/usr/local/lib/primal/*.so; do
        LD_LIBRARY_PATH=_gpu/root/usr/local/lib ldd "$b"
    done | awk '/=> \// {print $3}' | sort -u |
        grep -v -E '/(libc|libm|libpthread|libdl|librt|libresolv|ld-linux[^/]*|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libcublasLt|libprimal)\.so' |
        while read -r l; do cp -L "$l" _gpu/deps/; done
    tar -C _gpu -cJf _gpu_carry/bundle.tar.xz root deps
    ls -l _gpu_carry/bundle.tar.xz
    ;;
run)
    # WHAT = SHAPE[:section.key=value,...]: shape, the run's name, and its --set options
    settings() {
        shape=${1%%:*}
        extra=
        case $1 in *:*) extra=${1#*:} ;; esac
        name="$shape${extra:+-$(echo "$extra" | tr '=,' '-_')}"
        sets=""
        for kv in $(echo "$extra" | tr ',' ' '); do sets="$sets --set $kv"; done
    }
    pkg=/tmp/primal_pkg
    rm -rf "$pkg" && mkdir -p "$pkg"
    tar -C "$pkg" -xJf "$top/_gpu_carry/bundle.tar.xz"
    cudalib=
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$d" ] && cudalib="$cudalib:$d"
    done
    f=$(find / -xdev -name 'libcublasLt.so.13*' 2>/dev/null | head -n 1)
    [ -n "$f" ] && cudalib="$cudalib:$(dirname "$f")"
    export LD_LIBRARY_PATH="$pkg/root/usr/local/lib:$pkg/deps$cudalib"
    export PRIMAL_PLUGIN_PATH="$pkg/root/usr/local/lib/primal"
    run="$pkg/root/usr/local/bin/primal-run"
    out=/tmp/primal_runs
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    for what in "$@"; do
        case $what in
        kjv200|kjv200:*|kjv124m|kjv124m:*)
            # kjv200: the 200-step GPU-vs-CPU check; kjv124m: examples/gpt2-124m-gpu.ini for
            # 300 steps (quality at the 124M shape); either [:section.key=value,...]
            settings "$what"
            case $shape in
            kjv200) base="$top/examples/compare-cpu.ini --set run.device=cuda --set run.steps=200
                --set run.eval_every=50" ;;
            kjv124m) base="$top/examples/gpt2-124m-gpu.ini --set run.steps=300
                --set run.eval_every=100 --set run.sample_tokens=0" ;;
            esac
            # shellcheck disable=SC2086
            "$run" $base --set run.out="$out/$name" $sets >"$out/$name.txt" 2>&1 ||
                tail -n 3 "$out/$name.txt" ;;
        anchor:*)
            IFS=: read -r _ pol seed extra <<EOS
$what
EOS
            seed=${seed:-0}
            name="anchor-$pol-s$seed${extra:+-$(echo "$extra" | tr '=,' '-_')}"
            sets=""
            for kv in $(echo "${extra:-}" | tr ',' ' '); do
                case ${kv%%=*} in
                *.*) sets="$sets --set $kv" ;;      # section.key=value
                *) sets="$sets --set flip.$kv" ;;  # a key of the policy
                esac
            done
            # shellcheck disable=SC2086
            "$run" "$top/examples/anchor.ini" --set flip.plugin="$pol" --set run.seed="$seed" \
                --set run.out="$out/$name" $sets >"$out/$name.txt" 2>&1 ||
                tail -n 3 "$out/$name.txt" ;;
        ncu124m)
            # one step of speed124m under Nsight Compute: each kernel's duration, summed by name
            ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
                "$run" "$top/examples/anchor.ini" --set run.out="$out/ncu124m" --set model.dim=768 \
                --set model.layers=12 --set model.heads=12 --set model.ffn=2048 \
                --set model.vocab=50304 --set run.batch=32 --set run.seq_len=1024 \
                --set run.steps=1 --set run.log_every=1 --set run.eval_every=0 \
                --set run.sample_tokens=0 --set flip.plugin=threshold_consensus \
                --set data.val_fraction=0 ${NCU_SETS:-} >"$out/ncu124m.csv" 2>"$out/ncu124m.err" ||
                tail -n 3 "$out/ncu124m.err"
            python3 "$top/bench/ncu_summary.py" "$out/ncu124m.csv" >"$out/ncu124m.json" &&
                head -c 3000 "$out/ncu124m.json" ;;
        speed15b_frozen)
            # night_shift's warm-up phase: only the embedding, final norm and LM head train
            "$run" "$top/examples/anchor.ini" --set run.out="$out/speed15b_frozen" \
                --set model.dim=1536 --set model.layers=28 --set model.heads=12 \
                --set model.kv_heads=2 --set model.ffn=8960 --set model.vocab=151936 \
                --set model.tied=true --set model.qkv_bias=true --set model.arch=qwen2 \
                --set run.batch=1 --set run.seq_len=512 --set run.steps=12 --set run.log_every=1 \
                --set run.eval_every=0 --set run.sample_tokens=0 \
                --set flip.plugin=momentum_carry --set data.val_fraction=0 \
                --set scheduler.plugins=night_shift --set night_shift.warmup=1000 \
                >"$out/speed15b_frozen.txt" 2>&1 || tail -n 3 "$out/speed15b_frozen.txt" ;;
        torch124m)
            PYTHONUNBUFFERED=1 python3 "$top/bench/torch_baseline.py" --steps 8 \
                >"$out/torch124m.jsonl" 2>"$out/torch124m.err" || tail -n 3 "$out/torch124m.err" ;;
        torch15b)
            PYTHONUNBUFFERED=1 python3 "$top/bench/torch_baseline.py" --steps 6 --dim 1536 \
                --layers 28 --heads 12 --ffn 8960 --vocab 151936 --seq 512 --batch 1 \
                --variants dense_eager,indexed \
                >"$out/torch15b.jsonl" 2>"$out/torch15b.err" || tail -n 3 "$out/torch15b.err" ;;
        speed124m*|speed350m*|speed15b:*|speed15b)
            # SHAPE[:section.key=value,...]: the shape's run with the settings changed
            settings "$what"
            case $shape in
            speed124m) shp="--set model.dim=768 --set model.layers=12 --set model.heads=12
                --set model.ffn=2048 --set model.vocab=50304 --set run.batch=32
                --set run.seq_len=1024 --set flip.plugin=threshold_consensus" ;;
            speed350m) shp="--set model.dim=1024 --set model.layers=24 --set model.heads=16
                --set model.ffn=2816 --set model.vocab=50304 --set run.batch=16
                --set run.seq_len=1024 --set flip.plugin=threshold_consensus" ;;
            speed15b) shp="--set model.dim=1536 --set model.layers=28 --set model.heads=12
                --set model.kv_heads=2 --set model.ffn=8960 --set model.vocab=151936
                --set model.tied=true --set model.qkv_bias=true --set model.arch=qwen2
                --set run.batch=1 --set run.seq_len=512 --set flip.plugin=momentum_carry" ;;
            esac
            # shellcheck disable=SC2086
            "$run" "$top/examples/anchor.ini" --set run.out="$out/$name" $shp --set run.steps=12 \
                --set run.log_every=1 --set run.eval_every=0 --set run.sample_tokens=0 \
                --set data.val_fraction=0 $sets >"$out/$name.txt" 2>&1 || tail -n 3 "$out/$name.txt" ;;
        esac
        echo "== $what done at $(date +%T)"
    done
    # what comes back: logs and configs in one archive (the device tool returns few files)
    find "$out" -name '*.safetensors' -delete
    if [ -n "${OUT:-}" ]; then
        tar -C "$out" -czf "$OUT/gpu_runs.tgz" .
    fi
    for l in "$out"/*/log.jsonl; do
        printf '%s: ' "$(basename "$(dirname "$l")")"
        grep val_loss "$l" | tail -n 1
    done
    ;;
*)
    echo "usage: $0 bundle | run WHAT..." >&2
    exit 2 ;;
esac
