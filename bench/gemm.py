"""Our GEMM (csrc/ops/gemm.h, through bench/c/gemm_bench) against NumPy's np.matmul
on the model's three products, the same shapes interleaved in one run, one thread.

    python bench/gemm.py [--quick] [--json]     Markdown table (or the dict as JSON)

measure(quick) -> dict is what bench/run.py calls.  Shapes (T tokens, width C):
forward out (T, OC) = inp (T, C) @ w (OC, C)^T; dinp (T, C) += dout (T, OC) @ w;
dweight (OC, C) += dout^T @ inp; for the layers qkv (C -> C), fc1 (C -> 4C),
fc2 (4C -> C) at C = 256 (T = 2048), 64 (T = 1024), 16 (T = 16), float32 and
float64.  GFLOP/s are best-of-several, from CPU time (a busy shared machine steals
wall time, not cycles; wall-time figures are in the dict too).  NumPy/OpenBLAS
is held to one thread with threadpoolctl when installed, else by measuring in a
subprocess started with OPENBLAS_NUM_THREADS=1.  NumPy's dinp/dweight time the
product only (np.matmul into a preallocated output, no accumulation).
"""
import contextlib
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CDIR = os.path.join(HERE, "c")
BENCH = os.path.join(CDIR, "gemm_bench")
PEAK = os.path.join(CDIR, "peak")
SOURCES = [os.path.join(ROOT, "csrc", "ops", "gemm.h")] + [
    os.path.join(CDIR, f) for f in ("gemm_bench.c", "peak.c", "peak.h", "build_gemm.sh")]

WIDTHS = [(256, 2048), (64, 1024), (16, 16)]
LAYERS = ["qkv", "fc1", "fc2"]
PRODUCTS = ["forward", "dinp", "dweight"]
ONE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def build():
    """Build bench/c/peak and bench/c/gemm_bench unless they are newer than their sources."""
    have = [os.path.getmtime(p) for p in (BENCH, PEAK) if os.path.exists(p)]
    if len(have) == 2 and min(have) > max(os.path.getmtime(s) for s in SOURCES):
        return
    subprocess.run([os.path.join(CDIR, "build_gemm.sh")], check=True)


def cases():
    for c, t in WIDTHS:
        for layer in LAYERS:
            for prod in PRODUCTS:
                for dt in ("f32", "f64"):
                    yield {"case": f"w{c}_{layer}_{prod}_{dt}", "width": c, "tokens": t,
                           "layer": layer, "product": prod, "dtype": dt}


def numpy_time(np, case, quick):
    """Best (cpu, wall) seconds of one np.matmul for the case's product."""
    c, t, layer, prod = case["width"], case["tokens"], case["layer"], case["product"]
    nin = 4 * c if layer == "fc2" else c
    nout = 4 * c if layer == "fc1" else c
    dtype = np.float32 if case["dtype"] == "f32" else np.float64
    rng = np.random.default_rng(0)
    inp = rng.standard_normal((t, nin)).astype(dtype)
    w = rng.standard_normal((nout, nin)).astype(dtype)
    dout = rng.standard_normal((t, nout)).astype(dtype)
    if prod == "forward":
        a, b, out = inp, w.T, np.empty((t, nout), dtype)
    elif prod == "dinp":
        a, b, out = dout, w, np.empty((t, nin), dtype)
    else:
        a, b, out = dout.T, inp, np.empty((nout, nin), dtype)
    np.matmul(a, b, out=out)
    target = 0.02 if quick else 0.1
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            np.matmul(a, b, out=out)
        dt = time.perf_counter() - t0
        if dt >= target / 4:
            reps = int(reps * target / dt) + 1
            break
        reps *= 4
    best_cpu = best_wall = float("inf")
    for _ in range(5 if quick else 9):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(reps):
            np.matmul(a, b, out=out)
        best_cpu = min(best_cpu, (time.process_time() - c0) / reps)
        best_wall = min(best_wall, (time.perf_counter() - t0) / reps)
    return best_cpu, best_wall


def _measure_here(quick):
    import numpy as np
    try:
        from threadpoolctl import threadpool_limits
        limit, how = threadpool_limits(limits=1), "threadpoolctl"
    except ImportError:
        limit, how = contextlib.nullcontext(), "OPENBLAS_NUM_THREADS=1"
    with limit:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        peak = json.loads(subprocess.run([PEAK], check=True, capture_output=True, text=True,
                                         env=env).stdout)
        pk = [str(peak["f32_fma_gflops"]), str(peak["f64_nofma_gflops"])]
        rows = []
        for case in cases():   # ours, then NumPy, shape by shape
            args = [BENCH, "--only", case["case"], "--peak"] + pk + (["--quick"] if quick else [])
            out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
            ours = json.loads(out.strip().splitlines()[-1])
            cpu_s, wall_s = numpy_time(np, case, quick)
            flops = 2.0 * ours["M"] * ours["N"] * ours["K"]
            row = dict(case)
            row.update(M=ours["M"], N=ours["N"], K=ours["K"],
                       ours_gflops=ours["gflops_cpu"], ours_gflops_wall=ours["gflops"],
                       frac_peak=ours["frac_peak_cpu"],
                       numpy_gflops=flops / cpu_s / 1e9, numpy_gflops_wall=flops / wall_s / 1e9)
            row["ours_over_numpy"] = row["ours_gflops"] / row["numpy_gflops"]
            rows.append(row)
    return {"cpu": peak["cpu"], "peak": peak, "threads": 1, "numpy": np.__version__,
            "numpy_threads_limited_by": how, "cases": rows}


def _have_threadpoolctl():
    try:
        import threadpoolctl  # noqa: F401
        return True
    except ImportError:
        return False


def measure(quick: bool) -> dict:
    """Our GEMM and np.matmul, one thread, every case; see the module docstring."""
    build()
    if _have_threadpoolctl() or os.environ.get("OPENBLAS_NUM_THREADS") == "1":
        return _measure_here(quick)
    env = dict(os.environ, **{k: "1" for k in ONE_THREAD_ENV})
    args = [sys.executable, os.path.abspath(__file__), "--json"] + (["--quick"] if quick else [])
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout)


def table(res):
    p = res["peak"]
    lines = [f"CPU: {res['cpu']}, one thread; peak float32 FMA {p['f32_fma_gflops']} GFLOP/s, "
             f"float64 no-FMA {p['f64_nofma_gflops']} GFLOP/s (bench/c/peak); NumPy {res['numpy']} "
             f"({res['numpy_threads_limited_by']}); GFLOP/s from CPU time, best of several.", "",
             "| shape (M x K @ K x N) | case | dtype | ours GFLOP/s | % of peak | NumPy GFLOP/s | ours/NumPy |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in res["cases"]:
        lines.append(f"| {r['M']} x {r['K']} @ {r['K']} x {r['N']} | {r['case'][:-4]} | {r['dtype']} | "
                     f"{r['ours_gflops']:.1f} | {100 * r['frac_peak']:.0f}% | {r['numpy_gflops']:.1f} | "
                     f"{r['ours_over_numpy']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    if "--json" in sys.argv:
        print(json.dumps(measure(quick)))
    else:
        print(table(measure(quick)))
