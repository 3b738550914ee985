#!/bin/sh
# Build a C-only benchmark with the package's flags:
#   bench/c/build.sh            bench/c/cbench      (the training loop, mg_train_steps)
#   bench/c/build.sh adam_bound bench/c/adam_bound  (what bounds the Adam step)
# and the floating-point peak probes, standalone, for this machine (-march=native):
#   bench/c/build.sh peak       bench/c/peak        (from bench/c/peak.c)
#   bench/c/build.sh peak_probe bench/c/peak_probe  (the fallback, bench/c/peak_probe.c)
PROG=${1:-cbench}
set -e
cd "$(dirname "$0")/../.."
case "$PROG" in
peak|peak_probe)
    # (-O3: at -O2 GCC 12 keeps the probe's chains in memory and measures a third of the peak)
    exec ${CC:-gcc} -std=gnu11 -O3 -ffp-contract=off -fopenmp "bench/c/$PROG.c" -o "bench/c/$PROG" -lm ;;
esac
# (the package's flags, per source as setup.py: float32 contracts into FMAs)
FLAGS="-std=c11 -O3 -ffp-contract=off -fno-math-errno -fno-builtin-pow -fno-builtin-powf -fopenmp -g -Icsrc"
# (dtype_f32.c and its per-ISA copies dtype_f32_v3.c / _v4.c, csrc/isa.h)
for f in csrc/dtype_f32*.c; do
    # shellcheck disable=SC2086
    ${CC:-gcc} $FLAGS -ffp-contract=fast -c "$f" -o "bench/c/$PROG.$(basename "$f" .c).o"
done
# shellcheck disable=SC2086
${CC:-gcc} $FLAGS $(ls csrc/*.c | grep -v dtype_f32) bench/c/"$PROG".dtype_f32*.o "bench/c/$PROG.c" \
    -o "bench/c/$PROG" -lm
rm -f bench/c/"$PROG".dtype_f32*.o
