"""Build the C core and its Cython wrappers.

OpenMP is found by compiling and running a small probe program; when it is
missing, or MICROGPT_C_NO_OPENMP=1 is set, the build warns and produces a
serial build instead of failing.  Everything is compiled with -O3 and
-ffp-contract=off (no fused multiply-add contraction, so the float64 path
reproduces the reference to rounding); never -ffast-math.
"""
import glob
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_SOURCES = sorted(glob.glob(os.path.join("csrc", "*.c")))
BASE_CFLAGS = ["-std=c11", "-O3", "-ffp-contract=off", "-fno-math-errno",
               # keep pow(x, -1) a libm call, as in the reference (GCC would fold it to 1/x)
               "-fno-builtin-pow", "-fno-builtin-powf", "-Wall"]
EXTRA_CFLAGS = os.environ.get("MICROGPT_C_CFLAGS", "").split()
# (compile flags, link flags) to try, in order
OPENMP_CANDIDATES = [(["-fopenmp"], ["-fopenmp"]),
                     (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]

PROBE = textwrap.dedent("""
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n >= 1 && omp_get_max_threads() >= 1);
        return 0;
    }
""")


def probe_openmp(compiler):
    """Compile flags and link flags for OpenMP, or None if it does not work."""
    for cflags, lflags in OPENMP_CANDIDATES:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(PROBE)
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                exe = os.path.join(tmp, "probe")
                compiler.link_executable(objs, exe, extra_postargs=lflags)
                out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
            except Exception:  # compile, link or run failure: try the next
                continue
            if out.returncode == 0 and out.stdout.strip() == "1":
                return cflags, lflags
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        flags = None
        if os.environ.get("MICROGPT_C_NO_OPENMP", "") not in ("", "0"):
            warnings.warn("MICROGPT_C_NO_OPENMP is set: building microgpt_c without OpenMP")
        else:
            flags = probe_openmp(self.compiler)
            if flags is None:
                warnings.warn("OpenMP was not found (the probe program did not compile, link "
                              "or run): building microgpt_c serial, without threads")
        cflags, lflags = flags if flags else ([], [])
        for ext in self.extensions:
            ext.extra_compile_args = BASE_CFLAGS + cflags + EXTRA_CFLAGS
            ext.extra_link_args = lflags + EXTRA_CFLAGS
        print(f"microgpt_c: OpenMP {'on' if flags else 'off'}; "
              f"CFLAGS {' '.join(BASE_CFLAGS + cflags + EXTRA_CFLAGS)}", file=sys.stderr)
        super().build_extensions()


def extension(name):
    return Extension(f"microgpt_c.{name}", [f"src/microgpt_c/{name}.pyx"] + C_SOURCES,
                     include_dirs=["csrc"], libraries=["m"] if os.name == "posix" else [])


setup(
    ext_modules=cythonize([extension("_core"), extension("_kernels")],
                          compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
