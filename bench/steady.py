"""Steady-state speed of the one-name-per-step training loop (used by bench/run.py
and tests/test_benchmarks.py).

A long run on the names (one document per step, one thread, GPT.train_steps in
chunks) is timed at steps 50-400 ("early") and again after ``late_step`` steps
("late").  Adam's first moments of parameters that never get a gradient (rare
characters, late positions) decay by beta1 = 0.85 per step and go subnormal
after ~500 steps in float32 (~4,300 in float64); the second moments (beta2 =
0.99) after ~7,000 in float32.  If the core then computes on subnormals, late
steps get slower: late/early measures that.

Each window is run ``repeats`` times from a snapshot of the model (parameters
and both moments restored exactly; the repeats give bit-identical losses, which
is checked) and the best and median are kept.  Every chunk is a call of
``train_steps`` on a corpus of just the documents that chunk uses, arranged so
that step s still trains on document s % n_docs of the whole data set (the call
validates its corpus, and the whole corpus would add ~0.1 ms per call).  Wall
time (perf_counter) and process CPU time (process_time) are both kept.
"""
from __future__ import annotations

import json
import statistics
import time
from typing import Dict, List

import numpy as np

import benchlib as B

EARLY = (50, 400)
WINDOW = EARLY[1] - EARLY[0]
CHUNK = 50                     # steps per train_steps call inside a timed window
RUN_CHUNK = 200                # steps per call between the windows
NUM_STEPS = 10 ** 12           # lr horizon: lr_t stays ~0.01 (no decay to zero)

# (size label, dtype, late step) of the steady-state targets
CASES = [("16/16", "float32", 20000), ("16/16", "float64", 7000),
         ("64/64 1L", "float32", 6000), ("64/64 1L", "float64", 7000)]


def chunk_corpus(data: B.Dataset, s0: int, n: int):
    """(corpus, starts) of n documents such that step s in [s0, s0 + n) of
    train_steps(…, batch 1) trains on document s % len(data.docs)."""
    n_docs = len(data.docs)
    order = [0] * n
    for s in range(s0, s0 + n):
        order[s % n] = s % n_docs
    lens = data.starts[1:] - data.starts[:-1]
    parts = [data.corpus[data.starts[d]:data.starts[d + 1]] for d in order]
    starts = np.zeros(n + 1, dtype=np.int64)
    starts[1:] = np.cumsum(lens[order])
    return np.concatenate(parts).astype(np.int32), starts


def subnormal_count(x: np.ndarray) -> int:
    tiny = np.finfo(x.dtype).tiny
    a = np.abs(x)
    return int(np.count_nonzero((a < tiny) & (x != 0)))


class Run:
    def __init__(self, size: B.Size, dtype: str, data: B.Dataset):
        self.model = B.c_model(size, dtype, data)
        self.data, self.step = data, 0

    def advance(self, n: int, chunk: int = RUN_CHUNK):
        """Train n steps untimed, in calls of ``chunk`` steps."""
        end = self.step + n
        while self.step < end:
            k = min(chunk, end - self.step)
            corpus, starts = chunk_corpus(self.data, self.step, k)
            self.model.train_steps(corpus, starts, self.step, k, NUM_STEPS)
            self.step += k

    def snapshot(self):
        m = self.model
        return [np.array(a, copy=True) for a in (m.flat_params, m.adam_m, m.adam_v)]

    def restore(self, snap, step):
        m = self.model
        for dst, src in zip((m.flat_params, m.adam_m, m.adam_v), snap):
            dst[:] = src
        m.zero_grad()
        self.step = step

    def time_window(self, n: int, repeats: int) -> dict:
        """Time steps [step, step + n) ``repeats`` times from the same state;
        leaves the model after the window."""
        start, snap = self.step, self.snapshot()
        chunks = [(s, min(CHUNK, start + n - s)) for s in range(start, start + n, CHUNK)]
        inputs = [chunk_corpus(self.data, s, k) for s, k in chunks]
        walls, cpus, losses = [], [], []
        for r in range(repeats):
            self.restore(snap, start)
            wall = cpu = 0.0
            run_losses = []
            for (s, k), (corpus, starts) in zip(chunks, inputs):
                c0, w0 = time.process_time(), time.perf_counter()
                lo, _ = self.model.train_steps(corpus, starts, s, k, NUM_STEPS)
                wall += time.perf_counter() - w0
                cpu += time.process_time() - c0
                run_losses.append(lo)
            walls.append(wall / n)
            cpus.append(cpu / n)
            losses.append(np.concatenate(run_losses))
        self.step = start + n
        return {"start": start, "steps": n, "best_us": min(walls) * 1e6,
                "median_us": statistics.median(walls) * 1e6,
                "cpu_best_us": min(cpus) * 1e6, "cpu_median_us": statistics.median(cpus) * 1e6,
                "repeats_identical": all(np.array_equal(losses[0], x) for x in losses[1:])}


def measure_case(size_label: str, dtype: str, late_step: int, data: B.Dataset,
                 repeats: int = 3) -> dict:
    """Early (steps 50-400) and late (late_step .. late_step + 350) per-step times
    on one thread (the caller sets the thread count), and the subnormal moments."""
    run = Run(B.SIZE_BY_LABEL[size_label], dtype, data)
    m = run.model
    t0 = time.perf_counter()
    run.advance(EARLY[0])
    early = run.time_window(WINDOW, repeats)
    sub_early = {"adam_m": subnormal_count(m.adam_m), "adam_v": subnormal_count(m.adam_v)}
    run.advance(late_step - run.step)
    late = run.time_window(WINDOW, repeats)
    return {
        "size": size_label, "dtype": dtype, "late_step": late_step, "num_params": m.num_params,
        "early": early, "late": late, "ratio": late["best_us"] / early["best_us"],
        "ratio_median": late["median_us"] / early["median_us"],
        "ratio_cpu": late["cpu_best_us"] / early["cpu_best_us"],
        "subnormal_at_400": sub_early,
        "subnormal_end": {"adam_m": subnormal_count(m.adam_m),
                          "adam_v": subnormal_count(m.adam_v),
                          "params": subnormal_count(m.flat_params)},
        "seconds": time.perf_counter() - t0,
    }


def measure_all(cases=CASES, repeats: int = 3, data: B.Dataset = None) -> List[dict]:
    data = B.load_dataset() if data is None else data
    return [measure_case(s, d, n, data, repeats) for s, d, n in cases]


def load_baseline(path=B.BENCH_DIR / "baseline_steady.json") -> Dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_baseline(repeats: int = 7, path=B.BENCH_DIR / "baseline_steady.json") -> dict:
    """Measure CASES on one thread and record them for this CPU in ``path``
    (the "before" figures of the steady-state targets)."""
    import datetime
    import os
    import subprocess
    import microgpt_c
    import machine
    if microgpt_c.openmp_enabled():
        microgpt_c.set_num_threads(1)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=B.ROOT,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    results = measure_all(repeats=repeats)
    record = {"cpu": machine.cpu_summary(), "date": datetime.date.today().isoformat(),
              "commit": commit, "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
              "note": "one thread, one name per step; best of repeats; late = steady state",
              "cases": {f"{r['size']}|{r['dtype']}": {
                  "early_us": round(r["early"]["best_us"], 2),
                  "late_us": round(r["late"]["best_us"], 2), "late_step": r["late_step"]}
                  for r in results}}
    data = load_baseline(path)
    data.setdefault("cpus", {})[machine.cpu_key()] = record
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return record


def baseline_for_this_cpu(path=B.BENCH_DIR / "baseline_steady.json"):
    import machine
    return load_baseline(path).get("cpus", {}).get(machine.cpu_key())


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--write-baseline"]:
        print(json.dumps(write_baseline(), indent=1))
    else:
        for r in measure_all():
            print(f"{r['size']} {r['dtype']}: early {r['early']['best_us']:.2f} µs/step, "
                  f"after {r['late_step']} {r['late']['best_us']:.2f} ({r['ratio']:.2f}x); "
                  f"subnormal moments {r['subnormal_end']}")
