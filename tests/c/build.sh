#!/usr/bin/env bash
# Build the C test driver (tests/c/test_core.c) against the C core (csrc/*.c,
# with the package's per-source flags: see setup.py).
#
#   tests/c/build.sh [OUTPUT]            default OUTPUT: build/c-tests/test_core
#
# Environment:
#   CC        compiler (default: gcc)
#   CFLAGS    compile flags (default: -O2 -g); always added: -std=c11 -Wall
#             -Wextra -ffp-contract=off -fno-builtin-pow(f), as the package build does
#   LDFLAGS   extra link flags
#   OPENMP    1 (default) to build with -fopenmp, 0 for a serial build
#
# Example (what .ci/sanitize.sh does):
#   CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -g -O1" \
#       tests/c/build.sh build/c-tests/test_core_asan && build/c-tests/test_core_asan
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$ROOT/build/c-tests/test_core}
CC=${CC:-gcc}
CFLAGS=${CFLAGS:--O2 -g}
LDFLAGS=${LDFLAGS:-}
OPENMP=${OPENMP:-1}

OMPFLAGS=()
if [ "$OPENMP" = "1" ]; then
    OMPFLAGS=(-fopenmp)
else
    OMPFLAGS=(-Wno-unknown-pragmas)   # the serial build ignores the omp pragmas
fi

mkdir -p "$(dirname "$OUT")"
COMMON=(-std=c11 -Wall -Wextra -ffp-contract=off -fno-builtin-pow -fno-builtin-powf)
SOURCES=()
F32OBJ=()
for src in "$ROOT"/csrc/*.c; do
    name=$(basename "$src" .c)
    case "$name" in
    dtype_f32*)   # float32 (and its per-ISA copies) contracts into fused multiply-adds, as in setup.py
        # shellcheck disable=SC2086  # CFLAGS is a word list
        "$CC" "${COMMON[@]}" $CFLAGS "${OMPFLAGS[@]}" -ffp-contract=fast -I"$ROOT/csrc" \
            -c "$src" -o "$OUT.$name.o"
        F32OBJ+=("$OUT.$name.o") ;;
    *) SOURCES+=("$src") ;;
    esac
done
# shellcheck disable=SC2086
"$CC" "${COMMON[@]}" $CFLAGS "${OMPFLAGS[@]}" -I"$ROOT/csrc" "${SOURCES[@]}" "${F32OBJ[@]}" \
    "$HERE/test_core.c" -o "$OUT" $LDFLAGS "${OMPFLAGS[@]}" -lm
rm -f "${F32OBJ[@]}"
echo "built $OUT ($CC $CFLAGS ${OMPFLAGS[*]})" >&2
