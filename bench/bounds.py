"""What bounds a training step on this CPU (used by bench/run.py).

Two costs no implementation of the SPEC's step can avoid on one core:

* Adam: one square root and one division per parameter, and every parameter,
  both moments and (unless fused) the gradient read and written once per step.
  Measured with the package's own Adam kernel by ``bench/c/adam_bound`` (built
  with the package's flags by ``bench/c/build.sh adam_bound``).
* The matrix products: every multiply-add of the forward, and about twice as
  many in the backward (d input and d weight), at this core's peak rate of
  separate multiplies and adds on 512-bit vectors (the package compiles with
  ``-ffp-contract=off``), also measured by ``bench/c/adam_bound``.

Their sum is a floor: a goal below it cannot be met on this machine, whatever
the code (the rest of the step, attention, softmax, norms, is left out of it).
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Optional

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


def run_adam_bound(param_counts, timeout: float = 300.0) -> Optional[dict]:
    """Build and run bench/c/adam_bound on one thread for these parameter
    counts; None if that fails
    (no C compiler, say). Returns {"ghz", "peak": {dtype: MACs per cycle},
    "adam_us": {(dtype, n_params): us}, "traffic_us": {...}}."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        subprocess.run(["sh", str(BENCH_DIR / "c" / "build.sh"), "adam_bound"], check=True,
                       capture_output=True, timeout=timeout, cwd=ROOT)
        out = subprocess.run([str(BENCH_DIR / "c" / "adam_bound")]
                             + [str(int(n)) for n in param_counts], check=True,
                             capture_output=True, text=True, timeout=timeout, env=env).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    res = {"ghz": None, "peak": {}, "adam_us": {}, "traffic_us": {}, "raw": out}
    for line in out.splitlines():
        m = re.match(r"clock ([\d.]+) GHz", line)
        if m:
            res["ghz"] = float(m.group(1))
        m = re.match(r"peak (float\d+) multiply\+add: ([\d.]+) per cycle", line)
        if m:
            res["peak"][m.group(1)] = float(m.group(2))
        m = re.match(r"(float\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            key = (m.group(1), int(m.group(2)))
            res["adam_us"][key] = float(m.group(3))
            res["traffic_us"][key] = float(m.group(4))
    if res["ghz"] is None or len(res["peak"]) != 2 or not res["adam_us"]:
        return None
    return res


def num_params(size, vocab_size: int) -> int:
    """wte, lm_head (V, C), wpe (T, C) and 12 C^2 per layer (SPEC section 3)."""
    C = size.n_embd
    return 2 * vocab_size * C + size.block_size * C + size.n_layer * 12 * C * C


def forward_macs_per_name(size, docs, vocab_size: int) -> float:
    """Multiply-adds of one document's forward, averaged over the documents:
    the matrix products (12 C^2 per layer and token, V C for lm_head) and the
    attention (two per key and channel)."""
    C, T, L = size.n_embd, size.block_size, size.n_layer
    total = 0
    for doc in docs:
        n = min(T, len(doc) + 1)
        total += n * (L * 12 * C * C + vocab_size * C) + L * n * (n + 1) * C
    return total / len(docs)


def floors(sizes, docs, vocab_size: int, bound: dict) -> dict:
    """{(size label, dtype): dict(adam_us, macs_per_name, matmul_us_per_name)}.
    The matmul time is 3 x the forward multiply-adds at the measured peak."""
    out = {}
    for size in sizes:
        macs = 3 * forward_macs_per_name(size, docs, vocab_size)
        n = num_params(size, vocab_size)
        for dtype in ("float64", "float32"):
            adam = bound["adam_us"].get((dtype, n))
            rate = bound["peak"][dtype] * bound["ghz"] * 1e3  # multiply-adds per us
            out[(size.label, dtype)] = {"params": n, "adam_us": adam, "macs_per_name": macs,
                                        "matmul_us_per_name": macs / rate}
    return out


def floor_us(fl: dict, batch: int) -> Optional[float]:
    """The floor per name of a step of `batch` names."""
    if fl["adam_us"] is None:
        return None
    return fl["matmul_us_per_name"] + fl["adam_us"] / batch
