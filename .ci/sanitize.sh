#!/usr/bin/env bash
# Memory-safety CI: the C core under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   .ci/sanitize.sh            C driver (3 builds) + the Python extension's tests
#   .ci/sanitize.sh --c-only   only the C driver
#
# 1. tests/c/test_core.c + csrc/*.c are compiled with
#      -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1
#    three times (serial; -fopenmp; -fopenmp with MG_OMP_MIN_WORK=1 so that
#    every kernel takes its OpenMP path even on tiny sizes) and run; any
#    sanitizer report (including leaks) or failed check fails the script.
# 2. Unless --c-only or SANITIZE_PYTHON=0: a copy of the project is built in
#    place with MICROGPT_C_CFLAGS="-fsanitize=address,undefined ..." and the
#    pytest files in $SANITIZE_TESTS are run against it with libasan
#    LD_PRELOADed into the Python interpreter (a private venv gets NumPy,
#    Cython, setuptools, pytest and hypothesis from pip; if that fails the
#    step is skipped with a message -- set SANITIZE_PYTHON=1 to make that an
#    error).  Leak detection is off for Python (the interpreter itself
#    "leaks" at exit); the C driver covers leaks in the core.  Tests named
#    test_bug_* (known open bugs, failing on purpose) are deselected here.
#
# Environment: CC (default gcc), PYTHON (default python3; the Python step
#   installs the dependencies into a private venv made from it, unless
#   SANITIZE_VENV=0: then $PYTHON itself must have them),
#   SANITIZE_TESTS (default: the kernel, model, hardening, threads and
#   property test files that exist), SANITIZE_PYTEST_ARGS (extra pytest args).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CC=${CC:-gcc}
PY=${PYTHON:-python3}
C_ONLY=0
[ "${1:-}" = "--c-only" ] && C_ONLY=1

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -g -O1 -fno-omit-frame-pointer"
# allocator_may_return_null: the driver checks that an ~8 TiB model is refused
# with MG_ERR_NOMEM instead of ASan aborting on the allocation.
# Not detect_stack_use_after_return: its fake stack frames are only 32-byte
# aligned, and the kernels' 64-byte SIMD scratch arrays (aligned vmovapd
# stores) then fault with a false "SEGV" in matmul_backward_dweight.
export ASAN_OPTIONS="allocator_may_return_null=1:detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

run_driver() {  # name, OPENMP, extra cflags
    local name=$1 openmp=$2 extra=$3
    echo "== C driver: $name"
    OPENMP=$openmp CC=$CC CFLAGS="$SAN_FLAGS $extra" tests/c/build.sh "$WORK/$name"
    local log="$WORK/$name.log"
    if ! OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive "$WORK/$name" >"$log" 2>&1; then
        cat "$log"
        echo "FAILED: C driver $name (exit status non-zero)" >&2
        exit 1
    fi
    if grep -Eq "ERROR: (Address|Leak)Sanitizer|runtime error:" "$log"; then
        cat "$log"
        echo "FAILED: sanitizer report in C driver $name" >&2
        exit 1
    fi
    tail -n 1 "$log"
}

# the serial driver beside the two OpenMP ones (two cores; its output after theirs)
( run_driver serial 0 "" ) >"$WORK/serial.out" 2>&1 &
serial_pid=$!
run_driver openmp 1 ""
run_driver openmp-all-parallel 1 "-DMG_OMP_MIN_WORK=1"
serial_status=0
wait "$serial_pid" || serial_status=$?
cat "$WORK/serial.out"
[ "$serial_status" = 0 ] || { echo "FAILED: C driver serial" >&2; exit 1; }

if [ "$C_ONLY" = "1" ] || [ "${SANITIZE_PYTHON:-auto}" = "0" ]; then
    echo "== sanitize: C driver passed (Python step skipped)"
    exit 0
fi

echo "== Python extension with sanitizers"
if [ "${SANITIZE_VENV:-1}" = "1" ]; then
    # a private venv with the build and test dependencies, like .ci/run
    "$PY" -m venv "$WORK/venv"
    if ! "$WORK/venv/bin/python" -m pip install -q "setuptools>=77" "Cython>=3.0" \
            "numpy>=1.23" "names>=0.3" "pytest>=7" "pytest-benchmark>=4" "hypothesis>=6" \
            "pytest-xdist>=3" >"$WORK/pip.log" 2>&1; then
        cat "$WORK/pip.log"
        msg="could not install the build/test dependencies into a venv"
        if [ "${SANITIZE_PYTHON:-auto}" = "1" ]; then echo "FAILED: $msg" >&2; exit 1; fi
        echo "sanitize: $msg: Python step skipped"
        exit 0
    fi
    PY="$WORK/venv/bin/python"
fi
if ! "$PY" -c "import numpy, Cython, setuptools, pytest, hypothesis" 2>/dev/null; then
    msg="$PY lacks numpy/Cython/setuptools/pytest/hypothesis: Python step skipped"
    if [ "${SANITIZE_PYTHON:-auto}" = "1" ]; then echo "FAILED: $msg" >&2; exit 1; fi
    echo "sanitize: $msg"
    exit 0
fi
LIBASAN=$("$CC" -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    echo "FAILED: $CC has no libasan.so" >&2
    exit 1
fi

COPY="$WORK/project"
mkdir -p "$COPY"
tar -C "$ROOT" --exclude=./.git --exclude=./build --exclude='*.so' --exclude='*.o' \
    --exclude=./src/microgpt_c/_core.c --exclude=./src/microgpt_c/_kernels.c \
    --exclude=.pytest_cache --exclude=.benchmarks --exclude=__pycache__ --exclude='*.egg-info' \
    -cf - . | tar -C "$COPY" -xf -
touch "$COPY/README.md"   # pyproject.toml names it; the content does not matter here
# the tests find the names data set at ../shared beside the checkout
if [ -d "$ROOT/../shared" ]; then ln -s "$(cd "$ROOT/../shared" && pwd)" "$WORK/shared"; fi
(
    cd "$COPY"
    MICROGPT_C_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -g -O1 -fno-omit-frame-pointer" \
        "$PY" setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
)

if [ -z "${SANITIZE_TESTS:-}" ]; then
    SANITIZE_TESTS=""
    for f in test_kernels.py test_model_parity.py test_hardening.py test_threads.py test_properties.py; do
        [ -f "$COPY/tests/$f" ] && SANITIZE_TESTS="$SANITIZE_TESTS tests/$f"
    done
fi

cd "$COPY"
log="$WORK/pytest.log"
export PYTHONPATH="$COPY/src"
export MICROGPT_C_SANITIZE=1   # lets RSS-based tests skip (ASan's allocator quarantines memory)
# the copy, not an installed microgpt_c, must be the one imported
LD_PRELOAD="$LIBASAN" ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" \
    "$PY" -c "import microgpt_c, sys; sys.exit(0 if microgpt_c.__file__.startswith('$COPY') else 'imported ' + microgpt_c.__file__)"
# two pytest workers when pytest-xdist is there (the instrumented tests are
# CPU-bound and single-threaded for the most part)
XDIST=
if "$PY" -c "import xdist" 2>/dev/null; then XDIST="-n 2"; fi
set +e
# shellcheck disable=SC2086
LD_PRELOAD="$LIBASAN" ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive \
    "$PY" -m pytest -q -p no:cacheprovider $XDIST -k "not test_bug_" ${SANITIZE_PYTEST_ARGS:-} \
    $SANITIZE_TESTS >"$log" 2>&1
status=$?
set -e
tail -n 30 "$log"
if grep -Eq "ERROR: AddressSanitizer|runtime error:" "$log"; then
    grep -E -A 30 "ERROR: AddressSanitizer|runtime error:" "$log" | head -n 80
    echo "FAILED: sanitizer report in the Python tests" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "FAILED: pytest exit status $status under sanitizers" >&2
    exit 1
fi
echo "== sanitize passed"
