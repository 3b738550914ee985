#!/bin/sh
# Build the C-only training-loop benchmark with the package's flags.
cd "$(dirname "$0")/../.." && exec ${CC:-gcc} -std=c11 -O3 -ffp-contract=off -fno-math-errno \
    -fno-builtin-pow -fno-builtin-powf -fopenmp -g -Icsrc csrc/*.c bench/c/cbench.c -o bench/c/cbench -lm
