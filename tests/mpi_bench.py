"""Benchmark of data-parallel training with MPI (not collected by pytest).

    python tests/mpi_bench.py [--steps 300] [--ranks 2] [--repeats 3]

Trains the same model (default: 4 layers, n_embd 64, 4 heads, block 16,
float32, batch 64, the built-in names) with

* 1 process x 1 thread (``GPT.train_steps``, the one-process C path),
* 1 process x K threads (OpenMP, for comparison),
* K MPI ranks x 1 thread (``DataParallelModel``, Allreduce),

and reports steps/s, the speed-up of K ranks over one process, and the time
per step spent in the gradient collective (measured inside the step, so it
includes waiting for the slower rank), plus a bare Allreduce of the same
buffer (ranks synchronised first: the pure communication cost).  Prints a
markdown table.  Each configuration runs ``--repeats`` times; the best is
reported (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_worker.py"

ALLREDUCE_PROBE = r"""
import sys, time, numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
n, dtype, reps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
buf = np.ones(n, dtype=dtype)
best = []
for rep in range(3):
    total = 0.0
    for i in range(reps):
        comm.Barrier()
        t = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf)
        total += time.perf_counter() - t
    best.append(total / reps)
if comm.rank == 0:
    print(min(best))
"""


def mpiexec_cmd(n: int):
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        raise SystemExit("mpiexec not found: pip install 'microgpt-c[mpi]'")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    cmd = [exe, "-n", str(n)]
    if "HYDRA" in version.upper():
        cmd += ["-launcher", "fork"]
    elif "open mpi" in version.lower() or "open-mpi" in version.lower():
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return cmd


def run_worker(prefix, args, result, env):
    subprocess.run(prefix + [sys.executable, str(WORKER)] + args + ["--result", result],
                   check=True, env=env, stdout=subprocess.DEVNULL, timeout=1800)
    out = []
    for f in sorted(Path(result).parent.glob(Path(result).name + ".*.json")):
        out.append(json.loads(f.read_text()))
        f.unlink()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--data", default=None, help="text file (default: the built-in names)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    a = p.parse_args()

    from microgpt_c import data as data_mod
    from microgpt_c._core import GPT

    tmp = Path(tempfile.mkdtemp(prefix="mpi_bench_"))
    if a.data:
        docs = data_mod.read_documents(a.data)
        where = f"{a.data} ({len(docs)} documents)"
    else:
        docs, where = data_mod.builtin_names()
    data_file = tmp / "docs.txt"
    data_file.write_text("\n".join(docs) + "\n", encoding="utf-8")
    K = a.ranks
    common = ["--data", str(data_file), "--steps", str(a.warmup + a.steps),
              "--warmup", str(a.warmup), "--n-layer", str(a.n_layer), "--n-embd", str(a.n_embd),
              "--n-head", str(a.n_head), "--batch-size", str(a.batch_size), "--dtype", a.dtype,
              "--lr", "0.001"]
    env1 = dict(os.environ, OMP_NUM_THREADS="1")
    envk = dict(os.environ, OMP_NUM_THREADS=str(K))
    res = tmp / "r"
    best = {}
    for rep in range(a.repeats):
        runs = {
            "1 process x 1 thread": run_worker([], common + ["--mode", "plain"], str(res), env1),
            f"1 process x {K} threads": run_worker([], common + ["--mode", "plain"], str(res),
                                                   envk),
            f"{K} ranks x 1 thread": run_worker(mpiexec_cmd(K), common, str(res), env1),
        }
        for name, ranks in runs.items():
            r0 = ranks[0]
            per_step = max(r["seconds"] for r in ranks) / r0["timed_steps"]
            if name not in best or per_step < best[name]["per_step"]:
                reduce_ms = [1e3 * r["stats"]["reduce"] / r["stats"]["steps"]
                             for r in ranks if r.get("stats") and r["stats"]["steps"]]
                compute_ms = [1e3 * r["stats"]["compute"] / r["stats"]["steps"]
                              for r in ranks if r.get("stats") and r["stats"]["steps"]]
                best[name] = {"per_step": per_step, "reduce_ms": reduce_ms,
                              "compute_ms": compute_ms, "losses": r0["losses"]}
    n_params = GPT(27, a.n_layer, a.n_embd, a.n_head, 16, a.dtype).num_params
    probe = subprocess.run(mpiexec_cmd(K) + [sys.executable, "-c", ALLREDUCE_PROBE,
                                             str(n_params), a.dtype, "200"],
                           check=True, capture_output=True, text=True, env=env1, timeout=600)
    bare_ms = 1e3 * float(probe.stdout.strip())
    shutil.rmtree(tmp, ignore_errors=True)

    base = best["1 process x 1 thread"]["per_step"]
    dp = best[f"{K} ranks x 1 thread"]
    l1 = [float.fromhex(x) for x in best["1 process x 1 thread"]["losses"]]
    lk = [float.fromhex(x) for x in dp["losses"]]
    agree = max(abs(x - y) / abs(x) for x, y in zip(l1, lk))
    itemsize = 4 if a.dtype == "float32" else 8
    print(f"model: {a.n_layer} layers, n_embd {a.n_embd}, {a.n_head} heads, block 16, "
          f"{a.dtype}, batch {a.batch_size}, {n_params:,} parameters "
          f"({n_params * itemsize / 1024:.0f} KiB of gradients); data: {where}")
    print(f"{a.steps} timed steps after {a.warmup} warm-up steps, best of {a.repeats}\n")
    print("| configuration | ms / step | steps / s | speed-up | Allreduce ms / step |")
    print("|---|---:|---:|---:|---:|")
    for name, b in best.items():
        red = (" / ".join(f"{x:.2f}" for x in b["reduce_ms"]) if b["reduce_ms"] and
               name.endswith("ranks x 1 thread") else "-")
        print(f"| {name} | {1e3 * b['per_step']:.2f} | {1 / b['per_step']:.1f} | "
              f"{base / b['per_step']:.2f}x | {red} |")
    print(f"\nbare Allreduce of the {n_params:,}-element {a.dtype} gradient on {K} ranks: "
          f"{bare_ms:.3f} ms")
    print("per-rank compute (forward + backward of its share) ms / step: "
          + " / ".join(f"{x:.2f}" for x in dp["compute_ms"]))
    print(f"loss agreement, {K} ranks vs 1 process ({a.dtype}): max relative difference "
          f"{agree:.2e} over {len(l1)} steps")
    if a.json:
        Path(a.json).write_text(json.dumps({"best": best, "bare_allreduce_ms": bare_ms,
                                            "agreement": agree}, indent=1))


if __name__ == "__main__":
    main()
