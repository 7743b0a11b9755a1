#!/bin/sh
# gpu.sh: build, test and benchmark the CUDA backend on a GPU machine (SPEC.md, "Figures to
# beat").  Two steps, because the GPU machine of the device tool has nvcc and PyTorch but not
# the build's libraries (Criterion, OpenBLAS, jansson, ...):
#
#   bench/gpu.sh bundle   on the build machine (nvcc, gcc, the -dev packages): compiles
#                         tests/cuda_test, tests/policies_cuda_test (with the policy plugins)
#                         and bench/gpu_step for sm_90 and packs them, with the
#                         shared libraries they need beyond glibc and CUDA, into
#                         _build_cuda/bundle.tar.xz (git-ignored; name _build_cuda in carry).
#   bench/gpu.sh run      on the GPU machine, from the repository root: unpacks the bundle,
#                         runs the tests, the benchmarks and bench/torch_baseline.py, and writes
#                         one JSON line per result to $OUT/gpu_results.jsonl (bench/results/
#                         when OUT is unset), the test log to $OUT/cuda_test.log, and a summary
#                         JSON (with the GPU name) last on stdout.
#
# Environment for run: GPU_SHAPES (default: "small target"; also target_fp32, target_unfused,
# target_recompute, target_recompute_mlp, target_mlpK (the first K blocks recompute the MLP),
# target_noahead, target_t256, qwen15, qwen15_recompute,
# qwen15_recompute_mlp; any of them with the suffix _res makes the residual after attention
# again in backward, and then with _lbf16 keeps the training logits in bf16, e.g.
# target_mlp2_res_lbf16; with _nbf16 before those, the blocks' norms read bf16 inputs, e.g.
# target_nbf16_lbf16; with _timed first of all, each GEMM shape's algorithm is timed, e.g.
# target_nbf16_lbf16_timed), GPU_STEPS (10), TORCH (1: run the
# PyTorch baselines), TORCH_VARIANTS (dense_eager,dense_compile,indexed), TESTS (1).
set -eu

mode=${1:-}
top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/_build_cuda

bundle() {
    cuda=${CUDA_HOME:-/usr/local/cuda}
    nvflags=${NVCCFLAGS:--O3 -gencode=arch=compute_90,code=sm_90}
    cflags="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -g -fopenmp -I$top/core -I$cuda/include"
    rm -rf "$build"
    mkdir -p "$build/obj" "$build/pkg/bin" "$build/pkg/lib"
    for f in "$top"/kernels/cuda/*.cu; do
        "$cuda/bin/nvcc" $nvflags -Xcompiler -fPIC -I"$top/core" -c "$f" \
            -o "$build/obj/$(basename "$f" .cu).o"
    done
    cpu="$top/core/error.c $top/core/model.c $top/core/model_cuda.c $top/kernels/cuda/*.c $top/kernels/cpu/*.c"
    libs="-L$cuda/lib64 -lcudart -lcublas -lcublasLt -lopenblas -lm -lstdc++"
    gcc $cflags -DPRIMAL_TEST_FIXTURES='"tests/fixtures"' $cpu "$top/core/safetensors.c" \
        "$top/tests/cuda_test.c" "$build"/obj/*.o -o "$build/pkg/bin/cuda_test" \
        $libs -lcriterion -ljansson -lcrypto
    gcc $cflags $cpu "$top/bench/gpu_step.c" "$build"/obj/*.o -o "$build/pkg/bin/gpu_step" $libs
    # the policy plugins, whose GPU halves tests/policies_cuda_test holds to their CPU halves
    mkdir -p "$build/pkg/plugins"
    for p in threshold_consensus stochastic_zscore momentum_carry adam_carry adamw latent_adamw; do
        # as cuda.am compiles them: no C++ exceptions, so no C++ runtime to load
        "$cuda/bin/nvcc" $nvflags -Xcompiler -fPIC,-fno-exceptions,-fno-threadsafe-statics \
            -I"$top/core" -I"$top/plugins" \
            -c "$top/plugins/${p}_cuda.cu" -o "$build/obj/${p}_cuda.o"
        gcc $cflags -fPIC -DPRIMAL_HAVE_CUDA -c "$top/plugins/$p.c" -o "$build/obj/$p.o"
        gcc -shared -o "$build/pkg/plugins/$p.so" "$build/obj/$p.o" "$build/obj/${p}_cuda.o" \
            -L"$cuda/lib64" -lcudart -lm
    done
    gcc $cflags -Wno-format-truncation -I"$top/tests" "$top/tests/policies_cuda_test.c" \
        "$top/tests/mockhost.c" "$top/core/error.c" "$top/core/config.c" "$top/core/registry.c" \
        -o "$build/pkg/bin/policies_cuda_test" -rdynamic -L"$cuda/lib64" -lcudart -lcriterion \
        -linih -ldl -lm
    # the libraries beyond glibc, the C++ runtime and CUDA, which the GPU machine has
    for b in "$build"/pkg/bin/*; do ldd "$b"; done | awk '/=> \// {print $3}' | sort -u |
        grep -v -E '/(libc|libm|libpthread|libdl|librt|libresolv|ld-linux[^/]*|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libcublasLt)\.so' |
        while read -r l; do cp -L "$l" "$build/pkg/lib/"; done
    tar -C "$build/pkg" -cJf "$build/bundle.tar.xz" bin lib plugins
    rm -rf "$build/obj" "$build/pkg"
    ls -l "$build/bundle.tar.xz"
}

run() {
    out=${OUT:-$top/bench/results}
    mkdir -p "$out"
    res=$out/gpu_results.jsonl
    : >"$res"
    pkg=/tmp/primal_gpu
    rm -rf "$pkg"
    mkdir -p "$pkg"
    tar -C "$pkg" -xJf "$build/bundle.tar.xz"
    cudalib=""
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -e "$d/libcublas.so.13" ] && cudalib="$cudalib:$d"
    done
    if [ -z "$cudalib" ]; then
        f=$(find / -xdev -name 'libcublas.so.13*' 2>/dev/null | head -1)
        [ -n "$f" ] && cudalib=":$(dirname "$f")"
        f=$(find / -xdev -name 'libcudart.so.13*' 2>/dev/null | head -1)
        [ -n "$f" ] && cudalib="$cudalib:$(dirname "$f")"
    fi
    export LD_LIBRARY_PATH="$pkg/lib$cudalib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
    echo "GPU: $gpu"
    tests_rc=-1
    if [ "${TESTS:-1}" = 1 ]; then
        cd "$top"
        set +e
        "$pkg/bin/cuda_test" --verbose >"$out/cuda_test.log" 2>&1
        tests_rc=$?
        set -e
        grep -E '^\[(FAIL|SKIP|====)\]|Assertion|error' "$out/cuda_test.log" | tail -40 || true
        set +e
        PRIMAL_TEST_PLUGINDIR="$pkg/plugins" "$pkg/bin/policies_cuda_test" --verbose -j8 \
            >"$out/policies_cuda_test.log" 2>&1
        prc=$?
        set -e
        [ $prc = 0 ] || tests_rc=$prc
        grep -E '^\[(FAIL|====)\]|Assertion' "$out/policies_cuda_test.log" | tail -20 || true
        echo "{\"cuda_test\": {\"rc\": $tests_rc, \"synthesis\": \"$(grep Synthesis "$out/cuda_test.log" | tail -1 | sed 's/.*Synthesis: //')\"}}" >>"$res"
    fi
    steps=${GPU_STEPS:-10}
    for shape in ${GPU_SHAPES:-small target}; do
        lt=
        case $shape in *_timed) lt="--gemm timed" shape=${shape%_timed} ;; esac
        case $shape in *_lbf16) lt="$lt --logits bf16" shape=${shape%_lbf16} ;; esac
        case $shape in *_res) lt="$lt --recompute-residual 1" shape=${shape%_res} ;; esac
        case $shape in *_nbf16) lt="$lt --norm-input bf16" shape=${shape%_nbf16} ;; esac
        case $shape in
        small) args="--dim 256 --layers 4 --heads 4 --ffn 688 --vocab 256 --seq 256 --batch 64" ;;
        target) args="" ;;
        target_fp32) args="--precision fp32" ;;
        target_unfused) args="--attn unfused" ;;
        target_recompute) args="--recompute 1" ;;
        target_recompute_mlp) args="--recompute 2" ;;
        target_mlp[0-9]*) args="--recompute 2 --recompute-blocks ${shape#target_mlp}" ;;
        target_noahead) args="--head-ahead -1" ;;
        qwen15_recompute) args="--dim 1536 --layers 28 --heads 12 --kv-heads 2 --ffn 8960 --vocab 151936 --seq 512 --batch 1 --tied 1 --recompute 1" ;;
        qwen15_recompute_mlp) args="--dim 1536 --layers 28 --heads 12 --kv-heads 2 --ffn 8960 --vocab 151936 --seq 512 --batch 1 --tied 1 --recompute 2" ;;
        target_t256) args="--seq 256 --batch 128" ;;
        qwen15) args="--dim 1536 --layers 28 --heads 12 --kv-heads 2 --ffn 8960 --vocab 151936 --seq 512 --batch 1 --tied 1" ;;
        *) args=$shape ;;
        esac
        set +e
        "$pkg/bin/gpu_step" $args $lt --steps "$steps" >>"$res" 2>"$out/gpu_step.err"
        rc=$?
        set -e
        [ $rc = 0 ] || echo "{\"gpu_step\": \"$shape\", \"rc\": $rc, \"error\": \"$(tail -c 300 "$out/gpu_step.err" | tr '"\n' "' ")\"}" >>"$res"
        tail -1 "$res"
    done
    if [ "${TORCH:-1}" = 1 ]; then
        PYTHONUNBUFFERED=1 python3 "$top/bench/torch_baseline.py" --steps "$steps" \
            --variants "${TORCH_VARIANTS:-dense_eager,dense_compile,indexed}" | tee -a "$res" || true
    fi
    echo "{\"summary\": {\"gpu\": \"$gpu\", \"tests_rc\": $tests_rc, \"results\": \"$res\"}}"
}

case $mode in
bundle) bundle ;;
run) run ;;
*) echo "usage: $0 bundle|run" >&2; exit 2 ;;
esac
