#!/bin/sh
# Build a C-only benchmark with the package's flags:
#   bench/c/build.sh            bench/c/cbench      (the training loop, mg_train_steps)
#   bench/c/build.sh adam_bound bench/c/adam_bound  (what bounds the Adam step)
PROG=${1:-cbench}
# (the package's flags, per source as setup.py: float32 contracts into FMAs)
set -e
cd "$(dirname "$0")/../.."
FLAGS="-std=c11 -O3 -ffp-contract=off -fno-math-errno -fno-builtin-pow -fno-builtin-powf -fopenmp -g -Icsrc"
# shellcheck disable=SC2086
${CC:-gcc} $FLAGS -ffp-contract=fast -c csrc/dtype_f32.c -o "bench/c/$PROG.dtype_f32.o"
# shellcheck disable=SC2086
${CC:-gcc} $FLAGS $(ls csrc/*.c | grep -v dtype_f32.c) "bench/c/$PROG.dtype_f32.o" "bench/c/$PROG.c" \
    -o "bench/c/$PROG" -lm
rm -f "bench/c/$PROG.dtype_f32.o"
