#!/usr/bin/env bash
# Build the GEMM test (tests/c/test_gemm.c) with the package's flags: the float64
# instantiation with -ffp-contract=off, the float32 one with -ffp-contract=fast.
#
#   tests/c/build_gemm.sh [OUTPUT]       default OUTPUT: build/c-tests/test_gemm
#
# Environment:
#   CC       compiler (default gcc)
#   CFLAGS   extra flags (default -O3), e.g. "-fsanitize=address,undefined -g -O1"
#   OPENMP   1 (default) -fopenmp, 0 serial
#   CLONES   1 (default with gcc on x86-64 on a CPU with AVX2 and FMA): the GEMM
#            compiled for x86-64-v3, or x86-64-v4 where the CPU has AVX-512, as
#            the package's per-ISA copy for this CPU (csrc/isa.h)
# With an FMA target it checks with objdump that the float32 object has vfmadd
# and the float64 object has none.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$ROOT/build/c-tests/test_gemm}
CC=${CC:-gcc}
CFLAGS=${CFLAGS:--O3}
OPENMP=${OPENMP:-1}
CLONES_DEFAULT=0
if $CC --version | grep -q "Free Software Foundation" && "$CC" -dumpmachine | grep -q "^x86_64" &&
   grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then CLONES_DEFAULT=1; fi
CLONES=${CLONES:-$CLONES_DEFAULT}

FLAGS=(-std=c11 -O3 -fno-math-errno -Wall -Wextra)
if [ "$OPENMP" = "1" ]; then FLAGS+=(-fopenmp); else FLAGS+=(-Wno-unknown-pragmas); fi
HOT=()
if [ "$CLONES" = "1" ]; then
    ISA=x86-64-v3
    if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo &&
       grep -qw avx512dq /proc/cpuinfo; then ISA=x86-64-v4; fi
    HOT=(-march=$ISA -DTEST_EXPECT_FMA)
fi
OBJ=$(mktemp -d)
trap 'rm -rf "$OBJ"' EXIT
mkdir -p "$(dirname "$OUT")"
# shellcheck disable=SC2086  # CFLAGS is a word list
"$CC" "${FLAGS[@]}" -ffp-contract=off $CFLAGS "${HOT[@]}" -I"$ROOT/csrc" -c "$HERE/gemm_f64.c" -o "$OBJ/gemm_f64.o"
# shellcheck disable=SC2086
"$CC" "${FLAGS[@]}" -ffp-contract=fast $CFLAGS "${HOT[@]}" -I"$ROOT/csrc" -c "$HERE/gemm_f32.c" -o "$OBJ/gemm_f32.o"
# shellcheck disable=SC2086
"$CC" "${FLAGS[@]}" -ffp-contract=off $CFLAGS "${HOT[@]}" -c "$HERE/test_gemm.c" -o "$OBJ/test_gemm.o"
# shellcheck disable=SC2086
"$CC" "${FLAGS[@]}" $CFLAGS "$OBJ"/*.o -o "$OUT" -lm
if command -v objdump >/dev/null && "$CC" -dumpmachine | grep -q "^x86_64"; then
    n32=$(objdump -d "$OBJ/gemm_f32.o" | grep -c vfmadd || true)
    n64=$(objdump -d "$OBJ/gemm_f64.o" | grep -c vfmadd || true)
    echo "vfmadd instructions: float32 object $n32, float64 object $n64" >&2
    if [ "$n64" != 0 ]; then echo "ERROR: fused multiply-adds in the float64 object" >&2; exit 1; fi
    if [ "$CLONES" = "1" ] && [ "$n32" = 0 ]; then echo "ERROR: no vfmadd in the float32 clones" >&2; exit 1; fi
fi
echo "built $OUT ($CC ${FLAGS[*]} $CFLAGS clones=$CLONES)" >&2
