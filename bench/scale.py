"""The scale sweep (used by bench/run.py): float32 training at larger sizes on
documents that fill the block, microgpt_c against PyTorch CPU eager.

Data: random text over a 63-character alphabet (ids 0..62, BOS = 63, V = 64);
every document is BOS + block_size characters, so each step trains on B*T
positions.  Step s trains on documents (s*B + b) % n_docs in both
implementations.  Both start from the same parameters (N(0, 0.08) from NumPy,
seed 0, copied into each), SPEC architecture (n_head 4), Adam (beta 0.85 /
0.99, eps 1e-8, lr 0.01; lr horizon 1e12 steps so it does not decay while
timing).  microgpt_c is timed through GPT.train_steps (the whole loop in C),
PyTorch through a Python step loop over ``torch_gpt.TorchBlockGPT`` (two
attention variants) and ``torch.optim.Adam``.

Model FLOPs per step (``model_flops``), counting a multiply-add as 2:
    6 * P_mm * B*T  +  6 * n_layer * B * T*(T+1) * n_embd
P_mm = the parameters used in matrix products, 12 * n_layer * n_embd^2 + V * n_embd
(the layers' q, k, v, o, fc1, fc2 and lm_head; wte / wpe are lookups); the
second term is causal attention (q k^T and att v over the T(T+1)/2 pairs of
each sequence, forward + 2x backward).  MFU = (model FLOPs / step time) /
(threads * the one-thread float32 FMA peak of bench/c/peak).
"""
from __future__ import annotations

import random
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

NUM_STEPS = 10 ** 12
V = 64
N_HEAD = 4


@dataclass(frozen=True)
class ScaleSize:
    n_embd: int
    block_size: int
    n_layer: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.n_embd}/{self.block_size}x{self.n_layer}"

    @property
    def key(self) -> str:
        return f"{self.label} B={self.batch}"


SCALE_SIZES = [ScaleSize(16, 16, 1, 16), ScaleSize(64, 64, 1, 16), ScaleSize(128, 128, 4, 16),
               ScaleSize(256, 128, 4, 16), ScaleSize(384, 256, 6, 8)]
QUICK_SIZES = [ScaleSize(64, 64, 1, 16), ScaleSize(128, 128, 4, 16)]
SIZE_BY_KEY = {s.key: s for s in SCALE_SIZES}
MFU_SIZE = "256/128x4 B=16"
CHECK_SIZE = "128/128x4 B=16"
TORCH_IMPLS = ("torch_masked", "torch_sdpa")


def num_params(s: ScaleSize) -> int:
    C, T, L = s.n_embd, s.block_size, s.n_layer
    return 2 * V * C + T * C + 12 * L * C * C


def model_flops(s: ScaleSize) -> float:
    C, T, L, Bt = s.n_embd, s.block_size, s.n_layer, s.batch
    p_mm = 12 * L * C * C + V * C
    return 6.0 * p_mm * Bt * T + 6.0 * L * Bt * T * (T + 1) * C


def make_corpus(s: ScaleSize, n_docs: Optional[int] = None, seed: int = 0):
    """(corpus int32, starts int64): n_docs documents of BOS + block_size ids."""
    n_docs = 4 * s.batch if n_docs is None else n_docs
    rng = np.random.default_rng(seed)
    docs = np.empty((n_docs, s.block_size + 1), dtype=np.int32)
    docs[:, 0] = V - 1
    docs[:, 1:] = rng.integers(0, V - 1, (n_docs, s.block_size))
    starts = np.arange(n_docs + 1, dtype=np.int64) * (s.block_size + 1)
    return docs.ravel(), starts


def init_params(s: ScaleSize, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.08, num_params(s))


# ------------------------------------------------------------------ steppers
class CStepper:
    def __init__(self, s: ScaleSize, w0: np.ndarray):
        from microgpt_c import GPT
        self.s, self.step = s, 0
        self.corpus, self.starts = make_corpus(s)
        self.model = GPT(V, n_layer=s.n_layer, n_embd=s.n_embd, n_head=N_HEAD,
                         block_size=s.block_size, dtype="float32",
                         max_tokens=s.block_size * s.batch)
        self.model.flat_params[:] = w0

        self.w0, self.restarts = w0, 0

    def __call__(self, k: int):
        from microgpt_c import NonFiniteLossError
        try:
            losses, _ = self.model.train_steps(self.corpus, self.starts, self.step, k,
                                               NUM_STEPS, self.s.batch)
        except NonFiniteLossError as err:   # lr does not decay while timing: start again
            losses = err.losses
            self.model.flat_params[:] = self.w0
            self.model.adam_m[:] = 0
            self.model.adam_v[:] = 0
            self.model.zero_grad()
            self.restarts += 1
        self.step += k
        return [float(x) for x in losses]


class TorchStepper:
    def __init__(self, s: ScaleSize, w0: np.ndarray, attention: str, compile: bool = False):
        import torch
        from torch_gpt import TorchBlockGPT
        self.s, self.step = s, 0
        corpus, _ = make_corpus(s)
        self.docs = torch.from_numpy(corpus.reshape(-1, s.block_size + 1).astype(np.int64))
        self.model = TorchBlockGPT(V, attention=attention, compile=compile, n_layer=s.n_layer,
                                   n_embd=s.n_embd, n_head=N_HEAD, block_size=s.block_size,
                                   dtype="float32")
        with torch.no_grad():
            self.model.flat_params.copy_(torch.from_numpy(w0))

    def batch(self, step: int):
        n = self.docs.shape[0]
        idx = [(step * self.s.batch + b) % n for b in range(self.s.batch)]
        return self.docs[idx]

    def __call__(self, k: int):
        out = []
        for _ in range(k):
            out.append(self.model.train_step(self.batch(self.step), self.step, NUM_STEPS))
            self.step += 1
        return out


def make_stepper(impl: str, s: ScaleSize, w0: np.ndarray):
    if impl == "microgpt_c":
        return CStepper(s, w0)
    if impl == "torch_compile":
        return TorchStepper(s, w0, "sdpa", compile=True)
    return TorchStepper(s, w0, impl.split("_", 1)[1])


# ------------------------------------------------------------------- timing
def time_interleaved(steppers: Dict[str, object], rounds: int, min_time: float,
                     budget: float) -> Dict[str, dict]:
    """Seconds per step of each stepper, measured in turn (a, b, c, a, b, c, ...)
    ``rounds`` times; each measurement runs k steps (the same k for a stepper in
    every round, chosen so that a call takes >= min_time; at least 1).  One warm-up
    step each first.  Stops early (fewer rounds, at least 1) past ``budget`` s."""
    t_start = time.perf_counter()
    ks, samples = {}, {name: [] for name in steppers}
    for name, st in steppers.items():
        st(1)                                   # warm-up (allocations, first-touch)
        t0 = time.perf_counter()
        st(1)
        t = time.perf_counter() - t0
        ks[name] = max(1, int(min_time / max(t, 1e-9) + 0.999))
    for r in range(rounds):
        for name, st in steppers.items():
            k = ks[name]
            t0 = time.perf_counter()
            st(k)
            samples[name].append((time.perf_counter() - t0) / k)
        if time.perf_counter() - t_start > budget and r >= 0:
            break
    return {name: {"best_s": min(v), "median_s": statistics.median(v), "rounds": len(v),
                   "steps_per_sample": ks[name]} for name, v in samples.items()}


def loss_check(s: ScaleSize, steps: int = 5) -> dict:
    """The first ``steps`` losses of microgpt_c and of both PyTorch variants from
    the same init on the same documents, and the largest relative difference."""
    w0 = init_params(s)
    out = {"size": s.key, "steps": steps}
    for impl in ("microgpt_c",) + TORCH_IMPLS:
        out[impl] = make_stepper(impl, s, w0)(steps)
    c = np.array(out["microgpt_c"])
    out["max_rel_diff"] = {impl: float(np.max(np.abs(np.array(out[impl]) - c) / np.abs(c)))
                           for impl in TORCH_IMPLS}
    return out


def try_compile(s: ScaleSize, w0: np.ndarray, budget: float):
    """A torch.compile stepper, warmed up (compiled), or a reason it is not available."""
    t0 = time.perf_counter()
    try:
        st = make_stepper("torch_compile", s, w0)
        st(2)
    except Exception as exc:               # noqa: BLE001 (anything: report it)
        msg = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {msg[0][:200] if msg else ''}"
    took = time.perf_counter() - t0
    if took > budget:
        return None, f"compiling took {took:.0f} s, over the {budget:.0f} s budget"
    return st, f"compiled in {took:.0f} s"


def sweep(sizes: List[ScaleSize], threads: int, rounds: int, min_time: float,
          budget_per_size: float, compile_budget: float = 0.0,
          compile_total: float = 0.0) -> dict:
    """Everything of the sweep measured on ``threads`` threads (the caller's
    process is fresh, with OMP_NUM_THREADS set)."""
    import microgpt_c
    if microgpt_c.openmp_enabled():
        microgpt_c.set_num_threads(threads)
    out: Dict[str, object] = {"threads": threads, "sizes": {}, "notes": []}
    try:
        import torch
        torch.set_num_threads(threads)
        out["torch_threads"] = torch.get_num_threads()
        have_torch = True
    except Exception as exc:               # noqa: BLE001
        out["notes"].append(f"PyTorch not available: {exc}")
        have_torch = False
    compile_spent = 0.0
    for s in sizes:
        w0 = init_params(s)
        steppers = {"microgpt_c": make_stepper("microgpt_c", s, w0)}
        rec: Dict[str, object] = {"flops": model_flops(s), "params": num_params(s)}
        if have_torch:
            for impl in TORCH_IMPLS:
                steppers[impl] = make_stepper(impl, s, w0)
            if compile_budget > 0 and compile_spent > compile_total:
                rec["compile"] = (f"not tried (the run's compile budget of "
                                  f"{compile_total:.0f} s is used up)")
            elif compile_budget > 0:
                c0 = time.perf_counter()
                st, why = try_compile(s, w0, compile_budget)
                compile_spent += time.perf_counter() - c0
                rec["compile"] = why
                if st is not None:
                    steppers["torch_compile"] = st
        rec["times"] = time_interleaved(steppers, rounds, min_time, budget_per_size)
        out["sizes"][s.key] = rec
        print(f"[bench]   {s.key}, {threads} thread(s): " + ", ".join(
            f"{k} {v['best_s'] * 1e3:.1f} ms" for k, v in rec["times"].items()),
            file=__import__("sys").stderr, flush=True)
    return out


def peak_rss_kib() -> int:
    """benchlib.peak_rss_kib (imported here, late: benchlib imports microgpt_c)."""
    from benchlib import peak_rss_kib as peak
    return peak()


def rss_worker(impl: str, key: str, steps: int = 2) -> dict:
    """Peak RSS of a fresh process that builds one model and trains ``steps`` steps
    (one thread), with the RSS after the imports for comparison."""
    import microgpt_c
    if microgpt_c.openmp_enabled():
        microgpt_c.set_num_threads(1)
    if impl != "microgpt_c":
        import torch
        torch.set_num_threads(1)
    base = peak_rss_kib()
    s = SIZE_BY_KEY[key]
    st = make_stepper(impl, s, init_params(s))
    st(steps)
    return {"impl": impl, "size": key, "maxrss_kib": peak_rss_kib(), "after_import_kib": base,
            "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def set_seed_everywhere(seed: int = 0):
    random.seed(seed)
    np.random.seed(seed)


def main(argv=None) -> int:
    """``python bench/scale.py [--threads N] [--no-torch] [SIZE ...]``: the sweep's
    timings for the given sizes (keys like 256/128x4:16 = n_embd/block x layers :
    batch; default: every size), microgpt_c and PyTorch interleaved, one line each
    with ms/step, the ratio and the MFU against bench/c/peak's measured peak."""
    import argparse
    import os
    import sys
    p = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    p.add_argument("sizes", nargs="*", help="n_embd/block_size x n_layer : batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    sizes = []
    for key in a.sizes:
        try:
            dims, batch = key.split(":")
            cb, layers = dims.split("x")
            c, b = cb.split("/")
            sizes.append(ScaleSize(int(c), int(b), int(layers), int(batch)))
        except ValueError:
            p.error(f"size {key!r}: expected n_embd/block_size x n_layer : batch, e.g. 256/128x4:16")
    sizes = sizes or SCALE_SIZES
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peak import measure_peak
    peak = measure_peak().get("f32_fma_gflops")
    import microgpt_c
    if microgpt_c.openmp_enabled():
        microgpt_c.set_num_threads(a.threads)
    impls = ["microgpt_c"]
    if not a.no_torch:
        try:
            import torch
            torch.set_num_threads(a.threads)
            impls += list(TORCH_IMPLS)
        except ImportError:
            print("PyTorch not installed: microgpt_c only", file=sys.stderr)
    from machine import cpu_summary
    print(f"# {cpu_summary()}; threads={a.threads}; float32 FMA peak {peak} GFLOP/s (bench/c/peak)")
    for s in sizes:
        w0 = init_params(s)
        r = time_interleaved({i: make_stepper(i, s, w0) for i in impls}, a.rounds, 1.0, 120)
        mine = r["microgpt_c"]["best_s"]
        line = f"{s.key} threads={a.threads} microgpt_c {mine * 1e3:.1f} ms"
        if len(impls) > 1:
            best = min(r[i]["best_s"] for i in impls[1:])
            line += "".join(f"  {i} {r[i]['best_s'] * 1e3:.1f} ms" for i in impls[1:])
            line += f"  x torch {best / mine:.2f}"
        if peak:
            line += f"  MFU {100 * model_flops(s) / mine / 1e9 / (peak * a.threads):.1f}%"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
