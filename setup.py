"""Build the C core and its Cython wrappers.

One extension module, microgpt_c._core, holds the C core (compiled once,
csrc/*.c, in parallel) and the Cython classes and kernel wrappers
(_core.pyx includes _kernels.pxi; microgpt_c._kernels re-exports them).
OpenMP is found by compiling and running a small probe program; when it is
missing, or MICROGPT_C_NO_OPENMP=1 is set, the build warns and produces a
serial build instead of failing.  Everything is compiled with -O3 and
-ffp-contract=off (no fused multiply-add contraction, so the float64 path
reproduces the reference to rounding), except the sources in
FLOAT32_SOURCES, which may contract; never -ffast-math.
"""
import glob
import os
from concurrent.futures import ThreadPoolExecutor
import subprocess
import sys
import tempfile
import textwrap
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_SOURCES = sorted(glob.glob(os.path.join("csrc", "*.c")))
# per-source flags added to the common ones: float32 (the relaxed policy,
# csrc/exact_math.h) contracts a * b + c into fused multiply-adds
# (dtype_f32_v3.c and dtype_f32_v4.c are its copies for other ISAs, csrc/isa.h)
SOURCE_CFLAGS = {name: ["-ffp-contract=fast"]
                 for name in ("dtype_f32.c", "dtype_f32_v3.c", "dtype_f32_v4.c")}
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


SIMD_MACROS = [("__SSE2__", "SSE2"), ("__SSE4_1__", "SSE4.1"), ("__SSE4_2__", "SSE4.2"),
               ("__AVX__", "AVX"), ("__AVX2__", "AVX2"), ("__FMA__", "FMA"),
               ("__AVX512F__", "AVX512F"), ("__ARM_NEON", "NEON"), ("__ARM_FEATURE_SVE", "SVE")]


def compiler_description(compiler, cflags):
    """(compiler command, its version line, SIMD instruction sets it targets
    with these flags, the function-multiversioning targets of the hot kernels);
    best effort, None/[] where unknown."""
    cmd = getattr(compiler, "compiler_so", None) or getattr(compiler, "compiler", None) or []
    cc = cmd[0] if cmd else getattr(compiler, "compiler_type", None)
    version, simd, clones = None, [], []
    if cmd:
        try:
            out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
            version = (out.stdout or out.stderr).strip().splitlines()[0]
        except Exception:
            pass
        try:
            with tempfile.TemporaryDirectory() as tmp:
                src = os.path.join(tmp, "empty.c")
                open(src, "w").close()
                out = subprocess.run(cmd + cflags + ["-dM", "-E", src], capture_output=True,
                                     text=True, timeout=60)
            macros = {line.split()[1] for line in out.stdout.splitlines()
                      if line.startswith("#define ") and len(line.split()) > 1}
            simd = [name for macro, name in SIMD_MACROS if macro in macros]
            # csrc/isa.h compiles the kernels once per x86-64 level (one copy
            # picked per process, csrc/dispatch.c) under exactly this condition
            if ({"__GNUC__", "__x86_64__", "__linux__"} <= macros
                    and "__clang__" not in macros and "MG_NO_MULTI_ISA" not in macros):
                clones = ["x86-64-v4", "x86-64-v3", "default"]
        except Exception:
            pass
    return cc, version, simd, clones


def write_build_config(cmd, cflags, lflags, openmp_flags):
    """Write microgpt_c/_build_config.py next to the built extensions (read by
    microgpt_c.build_info())."""
    cc, version, simd, clones = compiler_description(cmd.compiler, cflags)
    config = {"compiler": cc, "compiler_version": version, "cflags": cflags,
              "ldflags": lflags, "openmp_flags": openmp_flags, "openmp": bool(openmp_flags),
              "simd": simd, "simd_clones": clones}
    targets = [os.path.dirname(cmd.get_ext_fullpath("microgpt_c._core"))]
    if getattr(cmd, "editable_mode", False):  # pip install -e: the package is the source dir
        targets.append(cmd.get_finalized_command("build_py").get_package_dir("microgpt_c"))
    for directory in targets:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "_build_config.py"), "w") as f:
            f.write('"""Generated by setup.py at build time; see microgpt_c.build_info()."""\n')
            f.write(f"BUILD_CONFIG = {config!r}\n")


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
        try:
            write_build_config(self, BASE_CFLAGS + cflags + EXTRA_CFLAGS, lflags + EXTRA_CFLAGS,
                               cflags)
        except Exception as exc:  # informational only: never fail the build for it
            warnings.warn(f"could not write _build_config.py: {exc}")
        self._core_objects = self.compile_core(BASE_CFLAGS + cflags + EXTRA_CFLAGS)
        super().build_extensions()

    def compile_core(self, cflags):
        """Compile csrc/*.c once (all at the same time, each with its own
        flags) into objects that the extension links."""
        out = os.path.join(self.build_temp, "csrc")

        def one(src):
            flags = cflags + SOURCE_CFLAGS.get(os.path.basename(src), [])
            print(f"microgpt_c: compiling {src}", file=sys.stderr, flush=True)
            return self.compiler.compile([src], output_dir=out, include_dirs=["csrc"],
                                         extra_postargs=flags)
        with ThreadPoolExecutor(max_workers=max(1, min(len(C_SOURCES), os.cpu_count() or 1))) as pool:
            return [obj for objs in pool.map(one, C_SOURCES) for obj in objs]

    def build_extension(self, ext):
        ext.extra_objects = list(self._core_objects)
        ext.depends = list(ext.depends) + C_SOURCES + glob.glob(os.path.join("csrc", "*.h")) + \
            glob.glob(os.path.join("csrc", "ops", "*.h"))
        super().build_extension(ext)


CORE = Extension("microgpt_c._core", ["src/microgpt_c/_core.pyx"], include_dirs=["csrc"],
                 libraries=["m"] if os.name == "posix" else [])


setup(
    ext_modules=cythonize([CORE], compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
