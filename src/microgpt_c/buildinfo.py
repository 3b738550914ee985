"""What this microgpt_c was built with and runs with: :func:`build_info`."""
from __future__ import annotations

import platform
import sys
from typing import Any, Dict, List, Optional, Sequence

from . import _core
from ._version import __version__

__all__ = ["build_info"]

_SIMD_FLAGS = {"sse2": "SSE2", "sse4_1": "SSE4.1", "sse4_2": "SSE4.2", "avx": "AVX",
               "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX512F", "neon": "NEON",
               "asimd": "NEON"}
_X86_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe"}
_X86_V4 = _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def _cpu_flags() -> set:
    """The CPU feature flags from /proc/cpuinfo (Linux), else empty."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _cpu_simd(flags: set) -> List[str]:
    """SIMD instruction sets this CPU supports (best effort)."""
    found = {_SIMD_FLAGS[f] for f in flags if f in _SIMD_FLAGS}
    if platform.machine().lower() in ("arm64", "aarch64"):
        found.add("NEON")
    order = list(dict.fromkeys(_SIMD_FLAGS.values()))
    return [s for s in order if s in found]


def _active_simd(clones: Sequence[str]) -> Optional[str]:
    """The target of ``clones`` (the hot kernels' SIMD clones) that this CPU
    runs, None without clones.  The C core's answer (``_core.simd_variant``)
    when it has one; otherwise a best-effort guess from /proc/cpuinfo of
    what GCC's load-time resolver picks."""
    simd_variant = getattr(_core, "simd_variant", None)
    if simd_variant is not None:
        return simd_variant()
    if not clones:
        return None
    flags = _cpu_flags()
    if "x86-64-v4" in clones and _X86_V4 <= flags:
        return "x86-64-v4"
    if "x86-64-v3" in clones and _X86_V3 <= flags:
        return "x86-64-v3"
    return "default"


def build_info() -> Dict[str, Any]:
    """How this microgpt_c was built and what it runs with.

    Keys: ``version``; ``openmp`` (compiled with OpenMP); ``num_threads``
    (threads the kernels use now; honours ``OMP_NUM_THREADS`` and
    :func:`set_num_threads`); ``compiler`` and ``compiler_version``;
    ``cflags`` and ``ldflags`` (the flags the C core was compiled and linked
    with); ``openmp_flags``; ``simd`` (SIMD instruction sets of the baseline
    target); ``simd_clones`` (the x86-64 levels the kernels are compiled
    for, one whole copy each with its own register width, one picked per
    process: the best this CPU supports, or a lower one named by the
    environment variable ``MICROGPT_C_ISA``; empty if one copy) and
    ``simd_active`` (the one this process runs); ``cpu_simd`` (SIMD sets this CPU
    supports); ``platform``; ``python``.  Build details are None/empty if
    the package was built without microgpt_c's setup.py."""
    try:
        from ._build_config import BUILD_CONFIG  # written by setup.py at build time
        config: Dict[str, Any] = dict(BUILD_CONFIG)
    except ImportError:
        config = {"compiler": None, "compiler_version": None, "cflags": [], "ldflags": [],
                  "openmp_flags": [], "simd": []}
    config.setdefault("simd_clones", [])
    info: Dict[str, Any] = {"version": __version__}
    info.update(config)
    info["openmp"] = _core.openmp_enabled()  # what the compiled module says wins
    info["num_threads"] = _core.get_num_threads()
    info["simd_active"] = _active_simd(config["simd_clones"])
    info["cpu_simd"] = _cpu_simd(_cpu_flags())
    info["platform"] = platform.platform()
    info["python"] = sys.version.split()[0]
    return info
