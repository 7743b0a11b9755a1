#!/bin/bash
# The sub-epoch quality table (SPEC.md, "Benchmark corpus"; docs/QUALITY.md): each row trains
# examples/linux-c.ini with some --set options and reports its final validation loss.
#
#   bench/quality.sh pack     here: xz -9 data/linux-c.txt (scripts/get-corpus.sh) into
#                             _corpus/linux-c.txt.xz, with its .sha256
#   bench/quality.sh bundle   here: bench/gpu_train.sh bundle (_gpu_carry/bundle.tar.xz; give
#                             the CUDA build folder as BUILD=DIR, e.g. BUILD=_build-gpu)
#   bench/quality.sh run [OPTIONS] ROW...
#                             on the GPU machine (the device tool, carry _gpu_carry and _corpus):
#                             unpack the bundle and the corpus under /tmp, run the rows, write
#                             $OUT/quality.json and $OUT/quality_runs.tgz, print both the JSON
#                             and its table (bench/quality_summary.py)
# OPTIONS
#   -j N            N rows at a time on the one GPU (default 1; tokens/s then share the GPU)
#   --steps S       run.steps = S for every row (screening)
#   --set S.K=V     added to every row, after the row's own settings (repeatable)
#   --config INI    the base experiment (default examples/linux-c.ini)
#   --data FILE     train on FILE instead of the packed corpus (data.path = FILE)
# ROW: a preset, or NAME=S.K=V[,S.K=V...] (a row of the base experiment with those --set
#   options; a value cannot hold a comma), e.g. mc_beta1_0=flip.plugin=momentum_carry,flip.beta1=0
# Presets (seed 0 unless named):
#   main           dense_s0, dense_s1   flip.plugin=adamw, optim.lr=1e-3, optim.min_lr=1e-4 (every
#                                       weight trains at 1e-3 decaying to 1e-4: the adamw policy
#                                       reads [flip] lr, 1e-3 by default, times the schedule's
#                                       multiplier, which ends at min_lr/lr; [optim] lr is the
#                                       norms' rate), the SPEC anchor's dense row
#                  qat_prime13_s0, _s1  latent_adamw on prime13 (float shadow weights)
#                  ac_prime13_s0, _s1   the best shadowless policy on prime13: $BEST
#   grids          qat_G, ac_G for G = nf4, fp8_e4m3, uniform255 (grid.plugin=uniform,
#                  grid.size=255), lloyd16 (grid.plugin=lloyd_max, grid.size=16)
#   policies       mc_prime13 (momentum_carry 8/8), tc_prime13 (threshold_consensus),
#                  sz_prime13 (stochastic_zscore), mc44_prime13 (momentum_carry,
#                  residual_bits=4, momentum_bits=4)
#   confirm124m[:POLICY]   the 124M shape (dim 768, 12 layers, 12 heads, ffn 2048, bytes,
#                  batch 32 x 1024, 4,600 steps = 150.7M tokens): dense124m, qat124m and
#                  POLICY124m (default: $BEST, named ac124m), prime13
# Every row's run directory and stdout go to /tmp/primal_quality/NAME{,.txt}.
# Environment: PRIMAL_RUN  a primal-run to use instead of the bundle's (e.g. a build tree's, for
#   a CPU test); BUILD_ID  the build's name when `git describe` has no repository to read.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-}
[ $# -gt 0 ] && shift
work=/tmp/primal_quality

DENSE="flip.plugin=adamw,optim.lr=1e-3,optim.min_lr=1e-4"
# the best shadowless policy measured (docs/RESULTS.md), the [flip] default of the examples, at
# the flip rate of the 2,000-step screen (7e-4: -0.9% against its default 1e-3).  A row's --set
# keeps the base file's other [flip] keys, so the rate goes here, not in linux-c.ini, where the
# dense and QAT rows would inherit it.
BEST="flip.plugin=adam_carry,flip.lr=7e-4"
SHAPE124M="model.dim=768,model.layers=12,model.heads=12,model.ffn=2048,run.batch=32"
SHAPE124M="$SHAPE124M,run.seq_len=1024,run.steps=4600"

# preset NAME: print its rows, one NAME=SETS a line
preset() {
    case $1 in
    main)
        for s in 0 1; do
            echo "dense_s$s=$DENSE,run.seed=$s"
            echo "qat_prime13_s$s=flip.plugin=latent_adamw,grid.plugin=prime13,run.seed=$s"
            echo "ac_prime13_s$s=$BEST,grid.plugin=prime13,run.seed=$s"
        done ;;
    grids)
        for g in nf4 fp8_e4m3 uniform255 lloyd16; do
            gs="grid.plugin=$g"
            [ "$g" = uniform255 ] && gs="grid.plugin=uniform,grid.size=255"
            [ "$g" = lloyd16 ] && gs="grid.plugin=lloyd_max,grid.size=16"
            echo "qat_$g=flip.plugin=latent_adamw,$gs"
            echo "ac_$g=$BEST,$gs"
        done ;;
    policies)
        echo "mc_prime13=flip.plugin=momentum_carry,grid.plugin=prime13"
        echo "tc_prime13=flip.plugin=threshold_consensus,grid.plugin=prime13"
        echo "sz_prime13=flip.plugin=stochastic_zscore,grid.plugin=prime13"
        echo "mc44_prime13=flip.plugin=momentum_carry,grid.plugin=prime13,flip.residual_bits=4,flip.momentum_bits=4" ;;
    confirm124m|confirm124m:*)
        echo "dense124m=$SHAPE124M,$DENSE"
        echo "qat124m=$SHAPE124M,flip.plugin=latent_adamw,grid.plugin=prime13"
        case $1 in
        *:*) pol=${1#*:}
            echo "${pol}124m=$SHAPE124M,flip.plugin=$pol,grid.plugin=prime13" ;;
        *) echo "ac124m=$SHAPE124M,$BEST,grid.plugin=prime13" ;;
        esac ;;
    *) return 1 ;;
    esac
}

case $mode in
pack)
    cd "$top"
    [ -f data/linux-c.txt ] || { echo "quality.sh: data/linux-c.txt is missing; run scripts/get-corpus.sh" >&2; exit 1; }
    mkdir -p _corpus
    xz -9 -T2 -c data/linux-c.txt >_corpus/linux-c.txt.xz.tmp
    mv _corpus/linux-c.txt.xz.tmp _corpus/linux-c.txt.xz
    if [ -f data/linux-c.txt.sha256 ]; then
        cp data/linux-c.txt.sha256 _corpus/
    else
        (cd data && sha256sum linux-c.txt) >_corpus/linux-c.txt.sha256
    fi
    ls -l _corpus/linux-c.txt.xz
    cat _corpus/linux-c.txt.sha256
    ;;
bundle)
    exec "$top/bench/gpu_train.sh" bundle ;;
run)
    jobs_max=1 steps='' config=$top/examples/linux-c.ini data='' gsets=()
    rows=()
    while [ $# -gt 0 ]; do
        case $1 in
        -j) jobs_max=$2; shift 2 ;;
        -j*) jobs_max=${1#-j}; shift ;;
        --steps) steps=$2; shift 2 ;;
        --set) gsets+=(--set "$2"); shift 2 ;;
        --config) config=$(realpath "$2"); shift 2 ;;
        --data) data=$(realpath "$2"); shift 2 ;;
        *=*) rows+=("$1"); shift ;;
        *)
            p=$(preset "$1") || { echo "quality.sh: unknown preset $1" >&2; exit 2; }
            while IFS= read -r r; do rows+=("$r"); done <<<"$p"
            shift ;;
        esac
    done
    [ ${#rows[@]} -gt 0 ] || { echo "quality.sh run: no rows (see the header of $0)" >&2; exit 2; }
    case $jobs_max in ''|*[!0-9]*|0) echo "quality.sh: -j needs a positive integer" >&2; exit 2 ;; esac
    mkdir -p "$work"

    # the program: PRIMAL_RUN, or the bundle's (as bench/gpu_train.sh run)
    if [ -n "${PRIMAL_RUN:-}" ]; then
        run=$(realpath "$PRIMAL_RUN")
        bundle_sha=none
    else
        [ -f "$top/_gpu_carry/bundle.tar.xz" ] || { echo "quality.sh: _gpu_carry/bundle.tar.xz is" \
            "missing (bench/gpu_train.sh bundle, then carry _gpu_carry), or set PRIMAL_RUN" >&2; exit 1; }
        pkg=/tmp/primal_pkg
        rm -rf "$pkg" && mkdir -p "$pkg"
        tar -C "$pkg" -xJf "$top/_gpu_carry/bundle.tar.xz"
        bundle_sha=$(sha256sum "$top/_gpu_carry/bundle.tar.xz" | cut -d' ' -f1)
        cudalib=
        for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
            [ -d "$d" ] && cudalib="$cudalib:$d"
        done
        f=$(find / -xdev -name 'libcublasLt.so.13*' 2>/dev/null | head -n 1)
        [ -n "$f" ] && cudalib="$cudalib:$(dirname "$f")"
        export LD_LIBRARY_PATH="$pkg/root/usr/local/lib:$pkg/deps$cudalib"
        export PRIMAL_PLUGIN_PATH="$pkg/root/usr/local/lib/primal"
        run="$pkg/root/usr/local/bin/primal-run"
    fi

    # the corpus: --data, or _corpus/linux-c.txt.xz unpacked once into $work/corpus
    if [ -n "$data" ]; then
        corpus=$data
        corpus_sha=$(sha256sum "$corpus" | cut -d' ' -f1)
    else
        corpus=$work/corpus/linux-c.txt
        [ -f "$top/_corpus/linux-c.txt.xz" ] || { echo "quality.sh: _corpus/linux-c.txt.xz is" \
            "missing (bench/quality.sh pack, then carry _corpus), or give --data FILE" >&2; exit 1; }
        want=$(grep -v '^#' "$top/_corpus/linux-c.txt.sha256" | cut -d' ' -f1)
        if [ ! -f "$corpus" ] || [ "$(sha256sum "$corpus" | cut -d' ' -f1)" != "$want" ]; then
            mkdir -p "$work/corpus"
            xz -dc -T0 "$top/_corpus/linux-c.txt.xz" >"$corpus.tmp"
            mv "$corpus.tmp" "$corpus"
        fi
        corpus_sha=$(sha256sum "$corpus" | cut -d' ' -f1)
        if [ "$corpus_sha" != "$want" ]; then
            echo "quality.sh: $corpus has sha256 $corpus_sha, expected $want" >&2
            exit 1
        fi
    fi

    if command -v nvidia-smi >/dev/null 2>&1; then
        machine=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)
    else
        machine="cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores"
    fi
    build=$(git -C "$top" describe --always --dirty 2>/dev/null || true)
    [ -n "$build" ] || build=${BUILD_ID:-unknown}

    # the rows' names, in order (bench/quality_summary.py --collect reads this call's rows only)
    : >"$work/order.txt"
    for r in "${rows[@]}"; do
        name=${r%%=*}
        case $name in ''|*[!A-Za-z0-9_.-]*) echo "quality.sh: bad row name '$name'" >&2; exit 2 ;; esac
        if grep -qxF "$name" "$work/order.txt"; then
            echo "quality.sh: row $name given twice" >&2; exit 2
        fi
        echo "$name" >>"$work/order.txt"
    done

    # one row: NAME=SETS -> $work/NAME (run directory), $work/NAME.txt (stdout), $work/NAME.row
    # (rc, wall seconds and the command line, tab-separated)
    run_row() {
        local name=${1%%=*} sets=${1#*=} args kv t0 t1 rc kvs
        rm -f "$work/$name.row"
        args=("$run" "$config")
        IFS=, read -r -a kvs <<<"$sets"
        for kv in "${kvs[@]}"; do [ -n "$kv" ] && args+=(--set "$kv"); done
        args+=("${gsets[@]}" --set "data.path=$corpus")
        [ -n "$steps" ] && args+=(--set "run.steps=$steps")
        args+=(--set "run.out=$work/$name")
        rm -rf "${work:?}/$name"
        t0=$(date +%s.%N)
        rc=0
        "${args[@]}" >"$work/$name.txt" 2>&1 || rc=$?
        t1=$(date +%s.%N)
        [ "${KEEP_CKPT:-0}" = 1 ] || find "$work/$name" -name '*.safetensors' -delete 2>/dev/null || true
        printf '%s\t%s\t%s\n' "$rc" "$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")" \
            "${args[*]}" >"$work/$name.row"
        echo "== $name: rc $rc, $(date +%T)$( [ "$rc" = 0 ] || echo ": $(tail -n 1 "$work/$name.txt")")"
    }
    started=$(date -u +%FT%TZ)
    echo "== ${#rows[@]} rows, -j $jobs_max, corpus $corpus ($corpus_sha), $machine"
    running=0
    for r in "${rows[@]}"; do
        if [ "$running" -ge "$jobs_max" ]; then
            wait -n || true
            running=$((running - 1))
        fi
        run_row "$r" &
        running=$((running + 1))
    done
    wait || true

    res=${OUT:-$work}
    mkdir -p "$res"
    python3 "$top/bench/quality_summary.py" --collect "$work" --machine "$machine" \
        --build "$build" --bundle-sha256 "$bundle_sha" --corpus "$corpus" \
        --corpus-sha256 "$corpus_sha" --jobs "$jobs_max" --started "$started" \
        >"$res/quality.json"
    # this call's logs, configs, stdout and .row files in one archive (the device tool returns
    # few files)
    files=(order.txt)
    while IFS= read -r n; do
        for f in "$n/log.jsonl" "$n/config.ini" "$n.txt" "$n.row"; do
            [ -f "$work/$f" ] && files+=("$f")
        done
    done <"$work/order.txt"
    tar -C "$work" -czf "$res/quality_runs.tgz" "${files[@]}"
    cat "$res/quality.json"
    python3 "$top/bench/quality_summary.py" "$res/quality.json"
    # the status: 1 when a row failed (its line in the table's list says how; NAME.txt why)
    while IFS= read -r n; do
        [ "$(cut -f1 "$work/$n.row" 2>/dev/null)" = 0 ] || exit 1
    done <"$work/order.txt"
    ;;
*)
    awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2
    exit 2 ;;
esac
