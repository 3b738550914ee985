#!/bin/sh
# Build a C-only benchmark with the package's flags:
#   bench/c/build.sh            bench/c/cbench      (the training loop, mg_train_steps)
#   bench/c/build.sh adam_bound bench/c/adam_bound  (what bounds the Adam step)
PROG=${1:-cbench}
cd "$(dirname "$0")/../.." && exec ${CC:-gcc} -std=c11 -O3 -ffp-contract=off -fno-math-errno \
    -fno-builtin-pow -fno-builtin-powf -fopenmp -g -Icsrc csrc/*.c "bench/c/$PROG.c" \
    -o "bench/c/$PROG" -lm
