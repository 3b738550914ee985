"""Benchmarks of the hot paths, and speed regression checks.

The ``benchmark`` tests time each kernel's forward and backward (16/16 and
64/64, on preallocated arrays), a training step, Adam, sampling one name and
the baselines' steps.  In the normal suite (pyproject's ``--benchmark-disable``)
each runs once, as a smoke test; run them for real with

    python -m pytest tests/test_benchmarks.py --benchmark-enable

The speed-ratio checks are benchmarks, not tests: they live in
``bench/test_speed.py`` (outside the test suite; CI runs them in its benchmark
stage).  The timing helpers are shared with ``bench/run.py``
(``bench/benchlib.py``).
"""
from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest

import microgpt_c
from microgpt_c import _kernels as K
from microgpt_c.reference import param_shapes
from microgpt_c.train import sample_names

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH_DIR))
import benchlib as B  # noqa: E402
import numpy_gpt  # noqa: E402

SIZE16, SIZE64, SIZE64_4L = B.SIZES
KERNEL_SIZES = {"16/16": (16, 16), "64/64": (64, 64)}   # (n_embd C, tokens N = block T)
V, NH = 27, 4


@pytest.fixture(scope="module")
def data():
    return B.load_dataset()


@pytest.fixture(scope="module")
def small_data(data):
    return data.subset(256)


@pytest.fixture
def one_thread():
    """Run the C core on one thread (ratios compare single-thread figures)."""
    before = microgpt_c.get_num_threads()
    microgpt_c.set_num_threads(1)
    yield
    microgpt_c.set_num_threads(before)


# ================================================================ kernels
def kernel_calls(C, N, dtype):
    """Each kernel as (function, preallocated arguments), shapes of one layer
    on N tokens of width C (matmul: the MLP's C -> 4C)."""
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def z(*shape):
        return np.zeros(shape, dtype)

    T = N
    tok = rng.integers(0, V, N).astype(np.int32)
    pos = np.arange(N, dtype=np.int32)
    x, dx, w = r(N, C), r(N, C), r(4 * C, C)
    q, k, v = r(N, C), r(N, C), r(N, C)
    att = z(N, NH, T)
    K.attention_forward(z(N, C), att, q, k, v)
    scale = z(N)
    K.rmsnorm_forward(z(N, C), scale, x)
    logits, probs = r(N, V), z(N, V)
    K.crossentropy_softmax_forward(z(N), probs, logits, tok)
    h = r(N * 4 * C)
    return {
        "encoder_forward": (K.encoder_forward, (z(N, C), tok, pos, r(V, C), r(T, C))),
        "encoder_backward": (K.encoder_backward, (z(V, C), z(T, C), dx, tok, pos)),
        "rmsnorm_forward": (K.rmsnorm_forward, (z(N, C), z(N), x)),
        "rmsnorm_backward": (K.rmsnorm_backward, (z(N, C), dx, x, scale)),
        "matmul_forward": (K.matmul_forward, (z(N, 4 * C), x, w)),
        "matmul_backward": (K.matmul_backward, (z(N, C), z(4 * C, C), r(N, 4 * C), x, w)),
        "attention_forward": (K.attention_forward, (z(N, C), z(N, NH, T), q, k, v)),
        "attention_backward": (K.attention_backward, (z(N, C), z(N, C), z(N, C), dx, att, q, k, v)),
        "relu_forward": (K.relu_forward, (z(N * 4 * C), h)),
        "relu_backward": (K.relu_backward, (z(N * 4 * C), r(N * 4 * C), h)),
        "residual_forward": (K.residual_forward, (z(N * C), x.ravel(), dx.ravel())),
        "residual_backward": (K.residual_backward, (z(N * C), z(N * C), dx.ravel())),
        "crossentropy_forward": (K.crossentropy_softmax_forward, (z(N), z(N, V), logits, tok)),
        "crossentropy_backward": (K.crossentropy_softmax_backward,
                                  (z(N, V), np.full(N, 1 / N, dtype), probs, tok)),
    }


KERNELS = list(kernel_calls(4, 2, np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("size", list(KERNEL_SIZES))
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel(benchmark, kernel, size, dtype):
    benchmark.group = f"kernel {size}"
    fn, args = kernel_calls(*KERNEL_SIZES[size], dtype)[kernel]
    benchmark(fn, *args)


@pytest.mark.parametrize("n_params", [4192, sum(
    r * c for r, c in param_shapes(V, SIZE64_4L.n_layer, SIZE64_4L.n_embd,
                                   SIZE64_4L.block_size).values())], ids=["4192", "64x64x4L"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_adam_update(benchmark, n_params, dtype):
    benchmark.group = "adam"
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(n_params).astype(dtype), rng.standard_normal(n_params).astype(dtype)
    m, v = np.zeros(n_params, dtype), np.zeros(n_params, dtype)
    benchmark(K.adam_update, p, m, v, g, 0.01, 0.85, 0.99, 1e-8, 10)


# ========================================================== whole steps
TRAIN_CASES = [(SIZE16, "float64", 1), (SIZE16, "float32", 1), (SIZE16, "float32", 16),
               (SIZE64, "float32", 1), (SIZE64, "float32", 32), (SIZE64_4L, "float32", 1)]


@pytest.mark.parametrize("size,dtype,batch", TRAIN_CASES,
                         ids=[f"{s.label}-{d}-B{b}".replace(" ", "-") for s, d, b in TRAIN_CASES])
def test_train_step(benchmark, small_data, size, dtype, batch):
    """One step of GPT.train_steps (on a small corpus, so that its per-call
    validation of the corpus stays small)."""
    benchmark.group = "train step"
    trainer = B.CTrainer(B.c_model(size, dtype, small_data, batch), small_data, batch)
    losses = benchmark(trainer, 1)
    assert np.all(np.isfinite(losses))


def test_sample_one_name(benchmark, data):
    benchmark.group = "sampling"
    model = B.trained_model(SIZE16, "float64", data)
    rng = random.Random(0)
    names = benchmark(sample_names, model, data.tokenizer, rng, 1, 0.5)
    assert len(names) == 1


def test_reference_step(benchmark, data):
    benchmark.group = "baseline step 16/16"
    benchmark.pedantic(B.StepLoop(B.ReferenceStepper(SIZE16, data), data), args=(1,),
                       rounds=3, iterations=1)


def test_numpy_step(benchmark, data):
    benchmark.group = "baseline step 16/16"
    benchmark(B.StepLoop(B.numpy_model(SIZE16, "float64", data), data), 1)


def test_torch_step(benchmark, data):
    pytest.importorskip("torch").set_num_threads(1)
    benchmark.group = "baseline step 16/16"
    benchmark(B.StepLoop(B.torch_model(SIZE16, "float64", data), data), 1)


# ============================================== baselines are the same model
def test_numpy_baseline_matches_microgpt_c():
    errs = numpy_gpt.self_check("float64")
    assert errs["loss"] < 1e-10 and errs["grad"] < 1e-10, errs
    assert errs["train_loss"] < 1e-10 and errs["params"] < 1e-10, errs
    errs = numpy_gpt.self_check("float32")
    assert errs["loss"] < 1e-4 and errs["grad"] < 1e-4, errs


def test_torch_baseline_matches_microgpt_c():
    pytest.importorskip("torch").set_num_threads(1)
    import torch_gpt
    errs = torch_gpt.self_check("float64")
    assert max(errs.values()) < 1e-10, errs


# ============================================== memory and threads
def test_peak_rss_does_not_grow_with_steps():
    rss = B.measure_rss((1000, 5000))
    a, b = rss["1000"]["maxrss_kib"], rss["5000"]["maxrss_kib"]
    assert b <= a + 1024, f"peak RSS {a} KiB after 1000 steps, {b} KiB after 5000"


@pytest.mark.skipif(not microgpt_c.openmp_enabled(), reason="serial build")
def test_two_threads_bit_identical(data):
    """A fixed batched run gives the same losses and parameters on 1 and 2 threads."""
    before = microgpt_c.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            microgpt_c.set_num_threads(n)
            runs.append(B.determinism_fingerprint(SIZE64, "float32", data, 32, steps=3))
    finally:
        microgpt_c.set_num_threads(before)
    assert runs[0] == runs[1]


# ============================================== the report generator
def load_run_module():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH_DIR / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_results():
    rows = [{"size": "16/16", "impl": "reference", "dtype": "float64", "batch": 1, "threads": 1,
             "us_step": 150000.0}]
    for s in B.SIZES:
        for dtype in B.DTYPES:
            for batch in (1, s.batch):
                rows.append({"size": s.label, "impl": "numpy", "dtype": dtype, "batch": batch,
                             "threads": 1, "us_step": 300.0 * batch})
                for threads in (1, 2):
                    rows.append({"size": s.label, "impl": "microgpt_c", "dtype": dtype,
                                 "batch": batch, "threads": threads, "us_step": 3.0 * batch})
    return {"date": "today", "mode": "full",
            "settings": {"min_time": 0.1, "repeats": 3, "ref_steps": 2,
                         "fingerprint_steps": 8, "speedup_rounds": 2},
            "rows": rows, "notes": ["a note"], "omp_threads": {1: 1, 2: 2},
            "sampling": {"float64": 1e-4}, "numpy_check": {"loss": 0, "grad": 0, "params": 0},
            "rss": {"1000": {"maxrss_kib": 40000, "ru_maxrss_kib": 40000, "train_seconds": 0.01,
                             "final_loss": 2.6},
                    "5000": {"maxrss_kib": 40100, "ru_maxrss_kib": 40100, "train_seconds": 0.05,
                             "final_loss": 2.4}},
            "machine": {"cpu": "cpu", "cpu_info": {"vendor": "v", "isa": ["avx2"]},
                        "logical_cpus": 2, "usable_cpus": 2, "os": "os",
                        "python": "3", "numpy": "2", "torch": "not installed",
                        "compiler": "cc", "microgpt_c": "0", "openmp": True},
            "data": "names", "load_before": "0", "load_after": "0"}


def fake_scale_and_steady(results, c_ms=100.0, torch_ms=150.0, t2_factor=1.9):
    """Scale sweep, steady state, peak and baseline entries for the report tests."""
    import scale
    import steady
    sc = {}
    for threads in (1, 2):
        sizes = {}
        for s_ in scale.SCALE_SIZES:
            c = c_ms / 1e3 / (t2_factor if threads == 2 else 1)
            times = {"microgpt_c": {"best_s": c, "median_s": c * 1.1, "rounds": 3,
                                    "steps_per_sample": 1},
                     "torch_masked": {"best_s": 2 * torch_ms / 1e3, "median_s": 1, "rounds": 3,
                                      "steps_per_sample": 1},
                     "torch_sdpa": {"best_s": torch_ms / 1e3, "median_s": 1, "rounds": 3,
                                    "steps_per_sample": 1}}
            sizes[s_.key] = {"flops": scale.model_flops(s_), "params": scale.num_params(s_),
                             "times": times, "compile": "RuntimeError: no compiler"}
        sc[str(threads)] = {"threads": threads, "sizes": sizes, "notes": []}
    results["scale"] = sc
    results["peak"] = {"f32_fma_gflops": 200.0, "f32_nofma_gflops": 200.0,
                       "f64_fma_gflops": 100.0, "f64_nofma_gflops": 100.0, "isa": "x",
                       "source": "bench/c/peak_probe"}
    results["scale_rss"] = {"64/64x1 B=16": {
        "microgpt_c": {"maxrss_kib": 30000, "after_import_kib": 29000},
        "torch_sdpa": {"maxrss_kib": 300000, "after_import_kib": 290000}}}
    results["loss_check"] = {"size": "128/128x4 B=16", "steps": 2, "microgpt_c": [4.0, 3.9],
                             "torch_masked": [4.0, 3.9], "torch_sdpa": [4.0, 3.9],
                             "max_rel_diff": {"torch_masked": 0.0, "torch_sdpa": 0.0}}
    st = []
    for size, dtype, late in steady.CASES:
        st.append({"size": size, "dtype": dtype, "late_step": late, "num_params": 1,
                   "early": {"best_us": 5.0, "median_us": 5.0},
                   "late": {"best_us": 6.0, "median_us": 6.0}, "ratio": 1.2,
                   "ratio_median": 1.2, "ratio_cpu": 1.2,
                   "subnormal_at_400": {"adam_m": 1, "adam_v": 0},
                   "subnormal_end": {"adam_m": 10, "adam_v": 2, "params": 0}})
    results["steady"] = st
    results["steady_baseline"] = {"commit": "abc", "date": "d", "cases": {
        "16/16|float64": {"late_us": 13.0}, "64/64 1L|float64": {"late_us": 11.0}}}
    results["gemm"] = {"rows": [{"m": 64, "dtype": "float32", "gflops": 150.0}]}
    return results


def test_report_renders(tmp_path):
    run = load_run_module()
    results = fake_results()
    fp = {"64/64 1L|float32|32": [[1.0], "x"], "16/16|float64|1": [[2.0], "y"]}
    sp = run.compare_fingerprints(3.0, 3.0, fp, {**fp, "16/16|float64|1": [[2.5], "y"]})
    assert sp["identical"] and sp["different"] == ["16/16 float64 1"]
    results["speedup"] = sp
    table = run.markdown_table(results)
    assert "| 16/16 | microgpt_c | float64 | 1 | 1 | 3 | 3 | 50,000× | 100× |" in table
    targets = {name: verdict for name, _, _, verdict in run.evaluate_targets(results)}
    # nothing of the new targets measured: they say so, no verdict
    assert targets["MFU at 256/128x4 B=16, 1 thread"] == "—"
    assert "miss" in targets.values()           # 2 threads: 1.0x < 1.7x
    out = tmp_path / "REPORT.md"
    run.write_report(results, out, tmp_path / "report.png", 1.0, "quick")
    text = out.read_text(encoding="utf-8")
    assert "## Issue targets" in text and "{" not in text   # no unformatted f-string
    pytest.importorskip("matplotlib")
    run.write_chart(results, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_report_new_targets(tmp_path):
    """The issue's targets from a full set of (fake) measurements."""
    run = load_run_module()
    results = fake_scale_and_steady(fake_results())
    rows = {name: (measured, verdict) for name, _, measured, verdict in
            run.evaluate_targets(results)}
    # C 100 ms vs torch's best (SDPA) 150 ms: 1.5x, passes "never slower", misses "3x faster"
    m, v = rows["vs PyTorch eager (best attention), 256/128x4 B=16, 1 thread(s)"]
    assert v == "pass" and m.startswith("1.50×") and "sdpa" in m
    assert rows["vs PyTorch eager (best attention), 64/64x1 B=16, 2 thread(s)"][1] == "miss"
    assert rows["2 threads vs 1 at 256/128x4 B=16"] == ("1.90×", "pass")
    flops = run.scale.model_flops(run.scale.SIZE_BY_KEY["256/128x4 B=16"])
    m, v = rows["MFU at 256/128x4 B=16, 1 thread"]
    assert m.startswith(f"{flops / 0.1 / 200e9:.1%}")
    assert rows["steady state 64/64 1L float32, late/early (after 6,000 steps)"][1] == "miss"
    assert rows["16/16 float32, 1 name/step, steady state"] == ("6 µs/step", "pass")
    # float64 vs the baseline: 13 -> 6 µs is 2.17x (pass), 11 -> 6 is 1.83x (miss)
    assert rows["16/16 float64, 1 name/step, steady state, vs baseline"][1] == "pass"
    assert rows["64/64 1L float64, 1 name/step, steady state, vs baseline"][1] == "miss"
    assert rows["peak RSS at 64/64x1 B=16, 1 thread"][0] == "29 MiB vs PyTorch 293 MiB (sdpa)"
    out = tmp_path / "REPORT.md"
    run.write_report(results, out, tmp_path / "report.png", 1.0, "full")
    text = out.read_text(encoding="utf-8")
    for section in ("## Scale sweep", "## Steady state", "## GEMM micro-benchmark",
                    "Sanity check at 128/128x4 B=16", "| 256/128x4 B=16 | 3,211,264 |"):
        assert section in text
    assert "{" not in text.replace("{'", "").split("## GEMM")[0]


def test_report_gemm_targets_and_table(tmp_path):
    """The GEMM micro-benchmark: a target row per dtype (all 256-wide products at
    >= 80% of the peak to pass) and a Markdown table, not a JSON dump."""
    run = load_run_module()
    results = fake_scale_and_steady(fake_results())
    cases = []
    for dtype, fracs in (("f32", (0.85, 0.81, 0.9)), ("f64", (0.85, 0.79, 0.9))):
        for prod, f in zip(("forward", "dinp", "dweight"), fracs):
            cases.append({"case": f"w256_fc1_{prod}_{dtype}", "width": 256, "tokens": 2048,
                          "layer": "fc1", "product": prod, "dtype": dtype, "M": 2048, "N": 1024,
                          "K": 256, "ours_gflops": 100 * f, "frac_peak": f,
                          "numpy_gflops": 90.0, "ours_over_numpy": f * 100 / 90})
    cases.append(dict(cases[0], case="w64_fc1_forward_f32", width=64, frac_peak=0.1))
    results["gemm"] = {"cpu": "test", "threads": 1, "numpy": "x",
                       "numpy_threads_limited_by": "test", "cases": cases,
                       "peak": {"f32_fma_gflops": 100.0, "f64_nofma_gflops": 50.0}}
    rows = {name: (measured, verdict) for name, _, measured, verdict in
            run.evaluate_targets(results)}
    m, v = rows["GEMM, width 256, float32 (bench/gemm.py)"]
    assert v == "pass" and m.startswith("81%-90% (3 of 3 products")
    m, v = rows["GEMM, width 256, float64 (bench/gemm.py)"]
    assert v == "miss" and m.startswith("79%-90% (2 of 3 products")
    out = tmp_path / "REPORT.md"
    run.write_report(results, out, tmp_path / "report.png", 1.0, "full")
    gemm_part = out.read_text(encoding="utf-8").split("## GEMM micro-benchmark")[1].split("##")[0]
    assert "| 2048 x 256 @ 256 x 1024 | w256_fc1_forward | f32 | 85.0 | 85% | 90.0 | 0.94 |" in gemm_part
    assert "{" not in gemm_part


def test_report_never_overwrites_the_committed_report_by_default():
    run = load_run_module()
    out, png = run.output_paths(None, None)
    assert out.parent != BENCH_DIR and png.parent == out.parent and out.name == "REPORT.md"
    assert run.output_paths("x/R.md", None) == (Path("x/R.md"), Path("x/report.png"))


def test_steady_chunk_corpus_keeps_the_document_order(small_data):
    """Step s of a chunk trains on document s % n_docs of the whole data set."""
    import steady
    corpus, starts = steady.chunk_corpus(small_data, 250, 50)
    n = len(small_data.docs)
    for s in range(250, 300):
        j = s % 50
        assert corpus[starts[j]:starts[j + 1]].tolist() == small_data.doc(s % n)


def test_peak_probe_prints_the_contract():
    """bench/c/peak (or the fallback probe) prints the JSON fields the report uses."""
    import shutil
    import peak
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    res = peak.measure_peak()
    if "error" in res:
        pytest.skip(res["error"])
    for key in peak.KEYS:
        assert res[key] > 0


def test_scale_flops_formula():
    import scale
    s_ = scale.SIZE_BY_KEY["256/128x4 B=16"]
    p_mm = 12 * 4 * 256 ** 2 + 64 * 256
    assert scale.model_flops(s_) == 6 * p_mm * 16 * 128 + 6 * 4 * 16 * 128 * 129 * 256
    assert scale.num_params(s_) == 3_211_264
    corpus, starts = scale.make_corpus(s_, 3)
    assert corpus.shape == (3 * 129,) and corpus[0] == 63 and corpus.max() == 63
    assert (corpus.reshape(3, 129)[:, 1:] < 63).all()


def test_report_names_the_floor_of_a_goal_below_it(tmp_path):
    """A missed toy-size goal below the measured floor says so; the floors table renders."""
    run = load_run_module()
    results = fake_scale_and_steady(fake_results())
    for r in results["steady"]:
        if r["size"] == "64/64 1L" and r["dtype"] == "float32":
            r["late"]["best_us"] = 150.0
    results["bound"] = {"ghz": 3.5, "peak": {"float64": 8.0, "float32": 16.0}}
    results["floors"] = {f"{s.label}|{dt}": {"params": 1000, "adam_us": 80.0,
                                              "macs_per_name": 1e5,
                                              "matmul_us_per_name": 30.0}
                         for s in B.SIZES for dt in B.DTYPES}
    targets = {name: verdict for name, _, _, verdict in run.evaluate_targets(results)}
    # 64/64 1L float32: 150 us > 100 us goal, floor 30 + 80 = 110 us > 100 us
    v = targets["64/64 1L float32, 1 name/step, steady state"]
    assert v.startswith("miss: the goal is below") and "110 µs/step" in v
    assert targets["16/16 float32, 1 name/step, steady state"] == "pass"
    # float64 vs the baseline: 11 -> 6 µs misses 2x (5.5 µs), below the floor of 110 µs
    v = targets["64/64 1L float64, 1 name/step, steady state, vs baseline"]
    assert v.startswith("miss: the goal is below") and "110 µs/step" in v
    out = tmp_path / "REPORT.md"
    run.write_report(results, out, tmp_path / "report.png", 1.0, "quick")
    text = out.read_text(encoding="utf-8")
    assert "### What bounds the targets" in text
    assert "| 64/64 1L float32 | 1,000 | 80 | 100,000 | 30 | 110 | 32.5 (B=32) |" in text
