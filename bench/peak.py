"""This core's measured floating-point peak (used by bench/run.py for the MFU
and by bench/test_speed.py for the GEMM ratio).

Runs ``bench/c/peak`` (built from ``bench/c/peak.c``) on one thread, or, if
that source is absent or does not build, the fallback ``bench/c/peak_probe``
(``bench/c/peak_probe.c``).  Both print one JSON line
``{"cpu", "f32_fma_gflops", "f32_nofma_gflops", "f64_fma_gflops",
"f64_nofma_gflops", "isa", ...}`` (GFLOP/s of one thread, an FMA = 2 flops).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Optional

BENCH_DIR = Path(__file__).resolve().parent
C_DIR = BENCH_DIR / "c"
KEYS = ("f32_fma_gflops", "f32_nofma_gflops", "f64_fma_gflops", "f64_nofma_gflops")


def _build(prog: str, timeout: float) -> Optional[str]:
    """None if bench/c/<prog> was built, else why not."""
    if not (C_DIR / f"{prog}.c").is_file():
        return f"bench/c/{prog}.c absent"
    try:
        subprocess.run(["sh", str(C_DIR / "build.sh"), prog], check=True,
                       capture_output=True, text=True, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        return f"bench/c/{prog}.c did not build: {exc.stderr.strip()[-300:]}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bench/c/{prog}.c did not build: {exc}"
    return None


def _run(prog: str, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([str(C_DIR / prog)], check=True, capture_output=True, text=True,
                         timeout=timeout, env=env).stdout
    data = json.loads(out.strip().splitlines()[-1])
    missing = [k for k in KEYS if not isinstance(data.get(k), (int, float))]
    if missing:
        raise ValueError(f"bench/c/{prog} printed no {', '.join(missing)}")
    return data


def measure_peak(timeout: float = 120.0) -> dict:
    """The peak probe's JSON plus ``"source"`` (which program) and ``"notes"``;
    ``{"error": why}`` if neither program could be built and run."""
    notes = []
    for prog in ("peak", "peak_probe"):
        why = _build(prog, timeout)
        if why is None:
            try:
                data = _run(prog, timeout)
                data["source"] = f"bench/c/{prog}"
                data["notes"] = notes
                return data
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                why = f"bench/c/{prog} failed: {exc}"
        notes.append(why)
    return {"error": "; ".join(notes), "notes": notes}


if __name__ == "__main__":
    print(json.dumps(measure_peak()))
