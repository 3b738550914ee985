"""The Python API: microgpt_c.train, GPT.save/load/sample, build_info, threads,
plots, typing files."""
from __future__ import annotations

import ast
import importlib
import importlib.resources
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import microgpt_c
from microgpt_c import checkpoint as ck
from microgpt_c.api import TrainConfig, config_from_checkpoint

NAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "names.txt"


def synthetic_docs(n=300, seed=0):
    r = random.Random(seed)
    return ["".join(r.choice("abcdefghij") for _ in range(r.randint(2, 9))) for _ in range(n)]


def small_cfg(**kw):
    base = dict(steps=30, n_embd=8, n_head=2, block_size=8, num_samples=6, backend="c")
    base.update(kw)
    return TrainConfig(**base)


def test_train_returns_model_losses_and_samples():
    chunks, header = [], []
    res = microgpt_c.train(small_cfg(), synthetic_docs(),
                           on_steps=lambda first, losses, lrs: chunks.append((first, losses, lrs)),
                           log=header.append)
    assert isinstance(res, microgpt_c.TrainResult)
    assert isinstance(res.model, microgpt_c.GPT)
    assert len(res.losses) == 30 and all(np.isfinite(res.losses))
    assert len(res.samples) == 6 and res.start_step == 0 and res.checkpoint is None
    assert header == ["num docs: 300", "vocab size: 11", f"num params: {res.model.num_params}"]
    # every step reported exactly once, in order, with its learning rate
    steps = [first + i for first, losses, _ in chunks for i in range(len(losses))]
    assert steps == list(range(1, 31))
    assert [l for _, losses, _ in chunks for l in losses] == res.losses
    lrs = [lr for _, _, r in chunks for lr in r]
    assert lrs == pytest.approx([0.01 * (1 - s / 30) for s in range(30)])
    assert sorted(res.docs) == sorted(synthetic_docs())


def test_train_data_arguments(tmp_path):
    docs = synthetic_docs()
    f = tmp_path / "d.txt"
    f.write_text("\n".join(docs))
    messages = []
    a = microgpt_c.train(small_cfg(), str(f), info=messages.append)
    b = microgpt_c.train(small_cfg(), docs=docs)
    c = microgpt_c.train(small_cfg(data=str(f)))
    assert a.losses == b.losses == c.losses and a.samples == b.samples
    assert messages and "d.txt" in messages[0]
    with pytest.raises(TypeError):
        microgpt_c.train(small_cfg(), docs, docs=docs)
    with pytest.raises(TypeError):
        microgpt_c.train(small_cfg(), [1, 2, 3])
    with pytest.raises(microgpt_c.data.DataError):
        microgpt_c.train(small_cfg(), [])


def test_train_is_callable_after_importing_the_cli_module():
    mod = importlib.import_module("microgpt_c.train")
    assert callable(mod) and callable(microgpt_c.train)
    res = microgpt_c.train(small_cfg(steps=3, num_samples=1), synthetic_docs())
    assert len(res.losses) == 3
    from microgpt_c import train
    assert train(small_cfg(steps=3, num_samples=1), synthetic_docs()).losses == res.losses
    assert mod.TrainConfig is TrainConfig and callable(mod.main)


@pytest.mark.skipif(not NAMES.exists(), reason="shared names.txt not available")
def test_api_reproduces_the_reference_names():
    res = microgpt_c.train(TrainConfig(backend="c"), str(NAMES))
    assert res.samples[:4] == ["kamon", "ann", "karai", "jaire"]
    assert len(res.losses) == 1000 and res.model.num_params == 4192


def test_save_load_sample(tmp_path):
    res = microgpt_c.train(small_cfg(), synthetic_docs())
    path = res.model.save(tmp_path / "m.safetensors")
    model = microgpt_c.GPT.load(path)
    same = microgpt_c.load(path)
    assert np.array_equal(model.flat_params, same.flat_params)
    # the default stream is the one the run sampled from: the same names
    assert model.sample(6) == res.samples
    assert model.sample(6) == res.samples  # each call starts from the saved state
    assert model.sample(3, seed=1) == model.sample(3, seed=1)
    r1, r2 = random.Random(9), random.Random(9)
    assert model.sample(4, rng=r1) == model.sample(4, rng=r2)
    assert r1.getstate() == r2.getstate()
    greedy = model.sample(5, top_k=1)
    assert len(set(greedy)) == 1
    # top_k=vocab_size is the same as no top-k
    assert model.sample(6, top_k=model.vocab_size) == res.samples
    pre = model.sample(5, prefix="ab", seed=3)
    assert all(s.startswith("ab") for s in pre)
    assert model.sample(2, prefix="abcdefgh") == ["abcdefgh"] * 2  # the whole block
    assert model.sample(0) == []


def test_sample_errors():
    res = microgpt_c.train(small_cfg(steps=2), synthetic_docs())
    m = res.model
    with pytest.raises(microgpt_c.VocabularyError, match=r"'Z'.*vocabulary is 'abcdefghij'"):
        m.sample(2, prefix="aZ")
    with pytest.raises(microgpt_c.SequenceLengthError, match="block_size"):
        m.sample(2, prefix="a" * 9)
    with pytest.raises(microgpt_c.ConfigError, match="temperature"):
        m.sample(2, temperature=0)
    with pytest.raises(microgpt_c.ConfigError, match="top-k"):
        m.sample(2, top_k=0)
    with pytest.raises(microgpt_c.ConfigError, match="num_samples"):
        m.sample(-1)
    with pytest.raises(microgpt_c.VocabularyError):
        microgpt_c.train(small_cfg(prefix="Z"), synthetic_docs())  # before training


def test_config_validation():
    for bad in (dict(steps=0), dict(n_embd=10, n_head=4), dict(lr=-1), dict(lr=float("nan")),
                dict(beta1=1.0), dict(dtype="float16"), dict(top_k=0), dict(num_samples=-1),
                dict(threads=0), dict(backend="gpu"), dict(seed=1.5), dict(temperature=0),
                dict(backend="reference", dtype="float32")):
        with pytest.raises(microgpt_c.ConfigError):
            small_cfg(**bad).validate()
    with pytest.raises(microgpt_c.ConfigError, match="save-every needs"):
        microgpt_c.train(small_cfg(), synthetic_docs(), save_every=5)
    with pytest.raises(microgpt_c.ConfigError, match="stop-after"):
        microgpt_c.train(small_cfg(), synthetic_docs(), stop_after=0)
    with pytest.raises(microgpt_c.ConfigError, match="C backend"):
        microgpt_c.train(small_cfg(backend="reference"), synthetic_docs(), out="x")


def test_config_from_checkpoint(tmp_path):
    microgpt_c.train(small_cfg(temperature=0.7, num_samples=3, top_k=4), synthetic_docs(),
                     out=tmp_path, stop_after=5)
    c = ck.load_checkpoint(tmp_path)
    cfg = config_from_checkpoint(c)
    assert (cfg.steps, cfg.n_embd, cfg.n_head, cfg.block_size, cfg.lr) == (30, 8, 2, 8, 0.01)
    assert (cfg.temperature, cfg.num_samples, cfg.top_k) == (0.7, 3, 4)
    assert config_from_checkpoint(c, num_samples=1, threads=1).num_samples == 1
    assert config_from_checkpoint(c, steps=30).steps == 30  # same value is fine
    with pytest.raises(microgpt_c.CheckpointMismatchError, match="seed=42.*seed=1"):
        config_from_checkpoint(c, seed=1)
    with pytest.raises(TypeError):
        config_from_checkpoint(c, nonsense=1)


def test_stop_after_and_resume_api(tmp_path):
    docs = synthetic_docs()
    full = microgpt_c.train(small_cfg(), docs)
    part = microgpt_c.train(small_cfg(), docs, out=tmp_path, stop_after=12)
    assert len(part.losses) == 12 and part.checkpoint == tmp_path / ck.CHECKPOINT_NAME
    rest = microgpt_c.train(None, docs, resume=ck.load_checkpoint(tmp_path))
    assert rest.losses == full.losses and rest.samples == full.samples


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler for the test, even where the runner was
    started with SIGINT ignored (a background job of a non-interactive shell,
    nohup): an ignored SIGINT is inherited, and then never reaches Python."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_in_process(tmp_path, default_sigint):
    """A SIGINT during training stops at a step boundary and saves a checkpoint."""
    calls = []

    def on_steps(first, losses, lrs):
        calls.append(first)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(microgpt_c.TrainingInterrupted) as info:
        microgpt_c.train(small_cfg(steps=100000), synthetic_docs(), on_steps=on_steps,
                         out=tmp_path)
    exc = info.value
    assert isinstance(exc, KeyboardInterrupt)
    assert exc.checkpoint == tmp_path / ck.CHECKPOINT_NAME and exc.step == len(exc.losses)
    assert ck.load_checkpoint(tmp_path).step == exc.step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_nonfinite_loss(tmp_path):
    with pytest.raises(microgpt_c.NonFiniteLossError) as info:
        microgpt_c.train(small_cfg(steps=100, lr=1e7, dtype="float32"), synthetic_docs(),
                         out=tmp_path, save_every=2)
    err = info.value
    assert err.step >= 3 and err.checkpoint == tmp_path / ck.CHECKPOINT_NAME
    assert err.checkpoint_step == (err.step - 1) // 2 * 2
    assert ck.load_checkpoint(tmp_path).step == err.checkpoint_step


# ------------------------------------------------------------------ threads, build info
def test_build_info():
    info = microgpt_c.build_info()
    for key in ("version", "openmp", "num_threads", "compiler", "compiler_version", "cflags",
                "ldflags", "openmp_flags", "simd", "simd_clones", "simd_active", "cpu_simd",
                "platform", "python"):
        assert key in info, key
    assert info["version"] == microgpt_c.__version__
    assert info["openmp"] == microgpt_c.openmp_enabled()
    assert isinstance(info["cflags"], list) and isinstance(info["simd"], list)
    if info["compiler"] is not None:  # built by our setup.py
        assert "-ffp-contract=off" in info["cflags"]
        assert bool(info["openmp_flags"]) == info["openmp"]
    assert info["num_threads"] >= 1


def test_set_num_threads():
    before = microgpt_c.get_num_threads()
    try:
        microgpt_c.set_num_threads(1)
        assert microgpt_c.get_num_threads() == 1
        microgpt_c.train(small_cfg(steps=2, threads=2, num_samples=0), synthetic_docs())
        if microgpt_c.openmp_enabled():
            assert microgpt_c.get_num_threads() == 2
        with pytest.raises(ValueError):
            microgpt_c.set_num_threads(0)
    finally:
        microgpt_c.set_num_threads(before)


@pytest.mark.skipif(not microgpt_c.openmp_enabled(), reason="serial build")
def test_omp_num_threads_is_the_default():
    code = "import microgpt_c; print(microgpt_c.get_num_threads(), microgpt_c.build_info()['num_threads'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "3"}, check=True)
    assert out.stdout.split() == ["3", "3"]


# ------------------------------------------------------------------ plots
def test_save_loss_plot(tmp_path):
    pytest.importorskip("matplotlib")
    losses = list(np.linspace(3.3, 2.2, 200) + np.random.default_rng(0).normal(0, 0.1, 200))
    png = microgpt_c.save_loss_plot(losses, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = microgpt_c.save_loss_plot(losses[:3], tmp_path / "loss.svg", window=50)
    assert b"<svg" in svg.read_bytes()
    with pytest.raises(microgpt_c.ConfigError, match="suffix"):
        microgpt_c.save_loss_plot(losses, tmp_path / "loss.nope")


def test_missing_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(microgpt_c.OptionalDependencyError, match=r"pip install matplotlib"):
        microgpt_c.save_loss_plot([1.0, 2.0], tmp_path / "x.png")
    assert isinstance(microgpt_c.OptionalDependencyError("x"), ImportError)


# ------------------------------------------------------------------ typing files
def test_typing_files_are_shipped():
    pkg = importlib.resources.files("microgpt_c")
    assert pkg.joinpath("py.typed").is_file()
    for stub, module in (("_core.pyi", "microgpt_c._core"), ("_kernels.pyi", "microgpt_c._kernels")):
        text = pkg.joinpath(stub).read_text()
        tree = ast.parse(text)
        declared = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        mod = importlib.import_module(module)
        public = set(getattr(mod, "__all__", [n for n in dir(mod) if not n.startswith("_")]))
        assert public <= declared, f"{stub} lacks {sorted(public - declared)}"
    core = ast.parse(pkg.joinpath("_core.pyi").read_text())
    gpt = next(n for n in core.body if isinstance(n, ast.ClassDef) and n.name == "GPT")
    methods = {n.name for n in gpt.body if isinstance(n, ast.FunctionDef)}
    runtime = {n for n in dir(microgpt_c._core.GPT) if not n.startswith("_")}
    attrs = {t.target.id for t in gpt.body if isinstance(t, ast.AnnAssign)}
    assert runtime <= methods | attrs, sorted(runtime - methods - attrs)


def test_public_api_is_exported():
    for name in microgpt_c.__all__:
        assert hasattr(microgpt_c, name), name
    assert issubclass(microgpt_c.GPT, microgpt_c._core.GPT)
    assert issubclass(microgpt_c.CheckpointError, microgpt_c.MicrogptError)
