#!/bin/sh
# Build the GEMM benchmarks with the package's flags, the GEMM compiled for the
# ISA copy the package runs on this CPU (csrc/isa.h: x86-64-v4 with AVX-512,
# x86-64-v3 with AVX2 + FMA; MG_ISA=... overrides):
#   bench/c/build_gemm.sh  ->  bench/c/peak, bench/c/gemm_bench
# Environment: CC (default gcc; clones only with gcc), CFLAGS (extra), OPENMP (1/0).
set -eu
cd "$(dirname "$0")/../.."
CC=${CC:-gcc}
BASE="-std=c11 -O3 -fno-math-errno -Wall -Wextra ${CFLAGS:-}"
if [ "${OPENMP:-1}" = 1 ]; then BASE="$BASE -fopenmp"; else BASE="$BASE -Wno-unknown-pragmas"; fi
HOT=
if [ "$(uname -m)" = x86_64 ]; then
    ISA=x86-64
    if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then ISA=x86-64-v3; fi
    if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo &&
       grep -qw avx512dq /proc/cpuinfo; then ISA=x86-64-v4; fi
    HOT="-march=${MG_ISA:-$ISA}"
fi
OBJ=$(mktemp -d)
trap 'rm -rf "$OBJ"' EXIT
$CC $BASE -ffp-contract=off "$HOT" -Icsrc -DGEMM_INST_F64 -c bench/c/gemm_bench.c -o "$OBJ/f64.o"
$CC $BASE -ffp-contract=fast "$HOT" -Icsrc -DGEMM_INST_F32 -c bench/c/gemm_bench.c -o "$OBJ/f32.o"
$CC $BASE -ffp-contract=off -DPEAK_NO_MAIN -c bench/c/peak.c -o "$OBJ/peaklib.o"
$CC $BASE -ffp-contract=off -c bench/c/gemm_bench.c -o "$OBJ/main.o"
$CC $BASE "$OBJ/f64.o" "$OBJ/f32.o" "$OBJ/peaklib.o" "$OBJ/main.o" -o bench/c/gemm_bench
$CC $BASE -ffp-contract=off bench/c/peak.c -o bench/c/peak
echo "built bench/c/peak bench/c/gemm_bench ($CC $BASE $HOT)" >&2
