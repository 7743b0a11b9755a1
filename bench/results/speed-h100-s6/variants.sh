#!/bin/sh
# build gpu_step_X and cuda_test_X for each attention_flash variant /tmp/vX.cu
set -e
top=/work/main; b=$top/_build_cuda; cuda=/usr/local/cuda
mkdir -p $b/alt/bin
cflags="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -g -fopenmp -I$top/core -I$cuda/include"
cpu="$top/core/error.c $top/core/model.c $top/core/model_cuda.c $top/kernels/cpu/*.c"
libs="-L$cuda/lib64 -lcudart -lcublas -lcublasLt -lopenblas -lm -lstdc++"
mkdir -p $b/alt/obj
for f in $top/kernels/cuda/*.cu; do n=$(basename $f .cu); [ $n = attention_flash ] && continue
  [ -f $b/alt/obj/$n.o ] || $cuda/bin/nvcc -O3 -gencode=arch=compute_90,code=sm_90 -Xcompiler -fPIC -I$top/core -c $f -o $b/alt/obj/$n.o & done; wait
others=$(ls $b/alt/obj/*.o)
for v in "$@"; do
  cp /tmp/v$v.cu $top/kernels/cuda/af_variant_tmp.cu
  $cuda/bin/nvcc -O3 -gencode=arch=compute_90,code=sm_90 -Xcompiler -fPIC -I$top/core -I$top/kernels/cuda -c $top/kernels/cuda/af_variant_tmp.cu -o $b/alt/af_$v.o
  rm $top/kernels/cuda/af_variant_tmp.cu
  gcc $cflags $cpu $top/bench/gpu_step.c $others $b/alt/af_$v.o -o $b/alt/bin/gpu_step_$v $libs
  gcc $cflags -DPRIMAL_TEST_FIXTURES='"tests/fixtures"' $cpu $top/core/safetensors.c $top/tests/cuda_test.c $others $b/alt/af_$v.o -o $b/alt/bin/cuda_test_$v $libs -lcriterion -ljansson -lcrypto
done
ls -la $b/alt/bin
