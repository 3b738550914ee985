"""Data-parallel training with MPI (microgpt_c.distributed).

The first tests need no MPI: the in-process shard emulation, the wrapper, and
that nothing MPI is imported (or changed) without a launcher.  The others
launch ``mpiexec -n 2`` (or 3) on this machine (loopback: Hydra's fork
launcher, or Open MPI with --oversubscribe) running tests/mpi_worker.py or
the CLI, and check: the same numbers as one process (float64, 1e-12
relative over 120 steps), bit-identical repeated runs, the same parameters on
every rank, resume, and that a failing rank (an exception, a non-finite loss,
bad data, a killed process, a crash outside the steps, an exit before MPI
starts) ends the whole job with an error and a non-zero status instead of
hanging, the last checkpoint intact.  They are skipped if mpi4py or mpiexec
is missing (``pip install '.[mpi]'`` brings both).  Every launch has a
timeout; a hung job fails the test and is killed.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from microgpt_c import api, distributed
from microgpt_c import data as data_mod
from microgpt_c.checkpoint import load_checkpoint
from microgpt_c.distributed import DataParallelModel
from microgpt_c.errors import ConfigError, NonFiniteLossError, SequenceLengthError

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_worker.py"
TIMEOUT = 60
LAUNCH_VARS = ("PMI_", "OMPI_", "PMIX_", "MV2_", "HYDRA_", "MPI_LOCAL", "MICROGPT_C_MPI")


def _find_mpiexec():
    if importlib.util.find_spec("mpi4py") is None:
        return None
    here = os.path.dirname(sys.executable)
    return shutil.which("mpiexec", path=here) or shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and mpiexec: "
                               "pip install '.[mpi]'")


def _mpiexec_flavour():
    out = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True,
                         timeout=TIMEOUT)
    text = (out.stdout + out.stderr).lower()
    if "hydra" in text:
        return "hydra"
    if "open mpi" in text or "open-mpi" in text or "openrte" in text or "prrte" in text:
        return "openmpi"
    return "other"


def mpiexec(n, *cmd):
    """``mpiexec -n n cmd...`` on this machine only; ``cmd`` may hold ':'
    to separate MPMD groups (as ``-n 1 a : -n 1 b``)."""
    flavour = _mpiexec_flavour()
    extra = []
    if flavour == "hydra":
        extra = ["-launcher", "fork"]
    elif flavour == "openmpi":
        extra = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [MPIEXEC, *extra, "-n", str(n), *cmd]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARS)}
    env.update(MICROGPT_C_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def wait_for(ready, proc, what):
    """Poll ready() until it holds; a hang guard (TIMEOUT s, not a speed
    target): pytest.fail with `what` if it never does or proc exits first."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if time.monotonic() >= deadline or proc.poll() is not None:
            pytest.fail(what)
        time.sleep(0.1)


def run(cmd, timeout=TIMEOUT, **env):
    """Run a job in its own session; on timeout kill the whole group and fail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(**env), start_new_session=True, cwd=str(HERE))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung: {' '.join(map(str, cmd))} did not end within {timeout} s\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    proc.out, proc.err = out, err
    return proc


def worker(n, data_file, tmp, name, *args, **env):
    """Run tests/mpi_worker.py on n ranks (n = 0: without mpiexec); return
    (process, [result of each rank])."""
    result = tmp / name
    base = [sys.executable, str(WORKER), "--data", str(data_file), "--result", str(result),
            *map(str, args)]
    proc = run(mpiexec(n, *base) if n else base, **env)
    results = []
    for r in range(max(n, 1)):
        f = Path(f"{result}.{r}.json")
        if f.exists():
            results.append(json.loads(f.read_text()))
    return proc, results


def losses(result):
    return np.array([float.fromhex(x) for x in result["losses"]])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    docs, _ = data_mod.builtin_names(fetch=False)
    path = tmp_path_factory.mktemp("mpi_data") / "names.txt"
    path.write_text("\n".join(docs[:2000]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    """In-process tests of tiny models: one OpenMP thread (fast on a busy machine)."""
    from microgpt_c import _core
    before = _core.get_num_threads()
    _core.set_num_threads(1)
    yield
    _core.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus():
    docs, _ = data_mod.builtin_names(fetch=False)
    docs = docs[:2000]
    random.Random(42).shuffle(docs)
    tok = data_mod.Tokenizer(docs)
    return tok, *data_mod.pack_corpus(tok, docs)


def make_model(tok, n_layer=1, dtype="float64", batch=8):
    m = api.GPT(tok.vocab_size, n_layer, 16, 4, 16, dtype, max_tokens=16 * batch)
    m.init_weights(random.Random(7))
    return m


# =========================================================================== no MPI needed
def test_nothing_from_mpi_without_a_launcher():
    code = ("import sys, microgpt_c, microgpt_c.train, microgpt_c.distributed as d\n"
            "assert d.session() is None and d.rank() == 0 and not d.mpi_requested()\n"
            "r = microgpt_c.train(microgpt_c.TrainConfig(steps=3, batch_size=3, num_samples=1),"
            " ['anna', 'bob', 'carl'])\n"
            "assert len(r.losses) == 3\n"
            "assert not [m for m in sys.modules if m.startswith('mpi4py')], 'mpi4py imported'\n"
            "print('ok')")
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.err
    # one rank under a launcher (mpiexec -n 1): also nothing
    proc = run([sys.executable, "-c", code], PMI_SIZE="1", PMI_RANK="0")
    assert proc.returncode == 0, proc.err


def test_launcher_environment(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK",
                "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MICROGPT_C_MPI"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.launched_size() == 1 and not distributed.mpi_requested()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    assert distributed.launched_size() == 4 and distributed.launched_rank() == 3
    assert distributed.mpi_requested()
    monkeypatch.setenv("MICROGPT_C_MPI", "0")
    assert not distributed.mpi_requested() and distributed.rank() == 0
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("MICROGPT_C_MPI", "1")
    assert distributed.mpi_requested()


def test_batch_size_must_divide():
    distributed.check_batch_size(8, 2)
    distributed.check_batch_size(7, 1)
    with pytest.raises(ConfigError, match=r"batch-size 7 must be divisible by the number of "
                                          r"MPI ranks \(2\).*--batch-size 6 or 8"):
        distributed.check_batch_size(7, 2)
    with pytest.raises(ConfigError, match="--batch-size 4"):
        distributed.check_batch_size(3, 4)


def test_one_shard_is_the_c_loop_bit_for_bit(corpus, one_thread):
    tok, c, s = corpus
    a, b = make_model(tok), make_model(tok)
    la, ra = a.train_steps(c, s, 0, 60, 60, 8)
    w = DataParallelModel(b)
    lb1, rb1 = w.train_steps(c, s, 0, 25, 60, 8)
    lb2, rb2 = w.train_steps(c, s, 25, 35, 60, 8)
    assert np.array_equal(la, np.concatenate([lb1, lb2]))
    assert np.array_equal(ra, np.concatenate([rb1, rb2]))
    assert np.array_equal(a.flat_params, b.flat_params)
    assert np.array_equal(a.adam_v, b.adam_v)


@pytest.mark.parametrize("shards", [2, 3, 4, 8])
def test_shards_agree_with_one_process(corpus, shards, one_thread):
    tok, c, s = corpus
    a, b = make_model(tok, n_layer=2), make_model(tok, n_layer=2)
    steps, batch = 120, 24
    la, _ = a.train_steps(c, s, 0, steps, steps, batch)
    lb, lrs = DataParallelModel(b, shards=shards).train_steps(c, s, 0, steps, steps, batch)
    assert np.max(np.abs(lb - la) / np.abs(la)) <= 1e-12
    assert np.max(np.abs(b.flat_params - a.flat_params)) <= 1e-12 * np.max(np.abs(a.flat_params))
    assert np.array_equal(lrs, 0.01 * (1 - np.arange(steps) / steps))


def test_wrapper_is_the_model_otherwise(corpus):
    tok, c, s = corpus
    m = make_model(tok)
    w = DataParallelModel(m, shards=2)
    assert w.num_params == m.num_params and w.params is m.params and w.is_root
    assert w.shard_range(8) == (0, 4) and w.shard_range(8, 1) == (4, 8)
    w.tokenizer = tok                      # attributes go to the model
    assert m.tokenizer is tok
    assert "2 shard(s)" in repr(w)
    with pytest.raises(ConfigError, match="divisible"):
        w.train_steps(c, s, 0, 1, 10, 7)
    with pytest.raises(ConfigError, match="reduction"):
        DataParallelModel(m, reduction="tree")
    with pytest.raises(ValueError):
        w.train_steps(c, s, -1, 1, 10, 8)
    with pytest.raises(SequenceLengthError):
        w.train_steps(c, s[:-1], 0, 1, 10, 8)
    assert w.check_consistent() == distributed.params_digest(m)


def test_nonfinite_loss_in_a_shard(corpus):
    tok, c, s = corpus
    m = make_model(tok)
    w = DataParallelModel(m, shards=2)
    w.train_steps(c, s, 0, 3, 10, 8)
    m_before, v_before = m.adam_m.copy(), m.adam_v.copy()
    m.params["lm_head"][:] = np.inf
    with pytest.raises(NonFiniteLossError) as info:
        w.train_steps(c, s, 3, 4, 10, 8)
    assert info.value.step == 4 and len(info.value.losses) == 0
    # the update was not applied and no gradient is left behind
    assert np.array_equal(m.adam_m, m_before) and np.array_equal(m.adam_v, v_before)
    assert not np.any(m.flat_grads)


@pytest.mark.parametrize("shards", [1, 2])
def test_nonfinite_gradient_is_not_applied(corpus, shards):
    tok, c, s = corpus
    m = make_model(tok)
    w = DataParallelModel(m, shards=shards)
    w.train_steps(c, s, 0, 4, 20, 8)
    m.params["layer0.mlp_fc1"][...] = np.inf   # finite loss (ReLU), NaN gradient
    with pytest.raises(NonFiniteLossError, match="gradient became non-finite at step 5") as e:
        w.train_steps(c, s, 4, 10, 20, 8)
    assert e.value.step == 5
    p = m.flat_params[np.isfinite(m.flat_params) | (m.flat_params != np.inf)]
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(m.adam_m))
    assert not np.any(m.flat_grads)


def test_non_positive_lr_is_refused(corpus):
    tok, c, s = corpus
    w = DataParallelModel(make_model(tok))
    for lr in (0.0, -0.01):
        with pytest.raises(ValueError, match="lr"):
            w.train_steps(c, s, 0, 2, 10, 8, lr=lr)


# =========================================================================== under mpiexec
@needs_mpi
def test_two_ranks_same_numbers_as_one_process(data_file, tmp_path):
    args = ["--steps", 120, "--batch-size", 8, "--n-layer", 2, "--dtype", "float64"]
    p1, (one,) = worker(0, data_file, tmp_path, "one", *args, "--mode", "plain")
    assert p1.returncode == 0, p1.err
    pa, run_a = worker(2, data_file, tmp_path, "a", *args)
    assert pa.returncode == 0, pa.err
    pb, run_b = worker(2, data_file, tmp_path, "b", *args)
    assert pb.returncode == 0, pb.err
    pe, (emu,) = worker(0, data_file, tmp_path, "emu", *args, "--shards", 2)
    assert pe.returncode == 0, pe.err
    assert [r["size"] for r in run_a] == [2, 2], "mpiexec and mpi4py's MPI do not match"
    assert all(r["threads"] == 1 for r in run_a)        # one OpenMP thread per rank
    # every rank holds the same parameters and Adam moments; all ranks report the same losses
    assert run_a[0]["digest"] == run_a[1]["digest"]
    assert run_a[0]["losses"] == run_a[1]["losses"]
    # two 2-rank runs are bit-identical, and bit-identical to the 2-shard emulation
    assert run_a[0]["losses"] == run_b[0]["losses"] and run_a[0]["digest"] == run_b[0]["digest"]
    assert run_a[0]["losses"] == emu["losses"] and run_a[0]["digest"] == emu["digest"]
    # the one-process C path: same numbers to 1e-12 relative (float64), 120 steps
    l1, l2 = losses(one), losses(run_a[0])
    assert len(l1) == len(l2) == 120
    assert np.max(np.abs(l2 - l1) / np.abs(l1)) <= 1e-12
    # only rank 0 printed
    assert pa.out.count("trained 120 steps on 2 rank(s)") == 1


@needs_mpi
def test_three_ranks_ordered_reduction_is_the_emulation(data_file, tmp_path):
    args = ["--steps", 40, "--batch-size", 6, "--reduction", "ordered"]
    p, ranks = worker(3, data_file, tmp_path, "k3", *args)
    assert p.returncode == 0, p.err
    pe, (emu,) = worker(0, data_file, tmp_path, "emu3", *args, "--shards", 3)
    assert len({r["digest"] for r in ranks}) == 1
    assert ranks[0]["losses"] == emu["losses"] and ranks[0]["digest"] == emu["digest"]


@needs_mpi
def test_resume_under_mpi_is_exact(data_file, tmp_path):
    args = ["--steps", 80, "--batch-size", 8, "--save-every", 20]
    p, full = worker(2, data_file, tmp_path, "full", *args, "--out", tmp_path / "full")
    assert p.returncode == 0, p.err
    out = tmp_path / "part"
    p, _ = worker(2, data_file, tmp_path, "p1", *args, "--out", out, "--stop-after", 50)
    assert p.returncode == 0, p.err
    assert load_checkpoint(out).train.step == 50
    assert sorted(os.listdir(out)) == ["checkpoint.safetensors"]   # rank 0 wrote, atomically
    p, resumed = worker(2, data_file, tmp_path, "p2", *args, "--out", out, "--resume")
    assert p.returncode == 0, p.err
    assert resumed[0]["start_step"] == 50
    assert resumed[0]["losses"] == full[0]["losses"]
    assert resumed[0]["digest"] == resumed[1]["digest"] == full[0]["digest"]


@needs_mpi
def test_batch_size_not_divisible_is_a_clear_error(data_file, tmp_path):
    p, _ = worker(2, data_file, tmp_path, "b7", "--batch-size", 7, "--steps", 5)
    assert p.returncode != 0
    assert "batch-size 7 must be divisible by the number of MPI ranks (2)" in p.err


def _checkpoint_step(path):
    return load_checkpoint(path).train.step


@needs_mpi
@pytest.mark.parametrize("fault, message", [
    ("raise:1:30", "rank 1 of 2 failed at step 30: RuntimeError: injected failure at step 30"),
    ("raise:0:30", "rank 0 of 2 failed at step 30: RuntimeError: injected failure"),
    ("nonfinite:1:30", "the loss became nan at step 30"),
])
def test_a_failing_step_stops_every_rank(data_file, tmp_path, fault, message):
    out = tmp_path / "ck"
    p, results = worker(2, data_file, tmp_path, "f", "--steps", 100, "--batch-size", 8,
                        "--out", out, "--save-every", 10, "--fault", fault)
    assert p.returncode != 0 and results == []
    assert p.err.count(message) == 1, p.err        # printed once, by rank 0
    assert "Abort" not in p.err                    # agreed at the step: no MPI_Abort needed
    assert _checkpoint_step(out) == 20             # the last checkpoint is intact


@needs_mpi
@pytest.mark.parametrize("fault, message", [
    ("missing-data:1:0", "rank 1 of 2 failed before training started: DataFileNotFound: "
                         "data file not found"),
    ("other-data:1:0", "rank 1 of 2 differs from rank 0 in its training data"),
])
def test_bad_data_on_one_rank(data_file, tmp_path, fault, message):
    p, results = worker(2, data_file, tmp_path, "d", "--steps", 20, "--fault", fault)
    assert p.returncode != 0 and results == []
    assert p.err.count(message) == 1, p.err


@needs_mpi
def test_killed_rank_ends_the_job(data_file, tmp_path):
    out = tmp_path / "ck"
    p, results = worker(2, data_file, tmp_path, "k", "--steps", 100, "--batch-size", 8,
                        "--out", out, "--save-every", 10, "--fault", "kill:1:30")
    assert p.returncode != 0 and results == []
    assert _checkpoint_step(out) == 20


@needs_mpi
@pytest.mark.parametrize("guard", [True, False])
def test_crash_outside_the_steps_aborts_the_job(data_file, tmp_path, guard):
    out = tmp_path / "ck"
    args = ["--steps", 100, "--batch-size", 8, "--chunk", 5, "--out", out, "--save-every", 10,
            "--fault", "crash:1:40"] + ([] if guard else ["--no-guard"])
    p, results = worker(2, data_file, tmp_path, "c", *args)
    assert p.returncode != 0 and results == []
    assert "injected crash after step 40" in p.err
    assert "aborting all 2 ranks" in p.err
    # rank 0 saved step 40 (or is killed while saving it: the atomic write keeps 30),
    # or, ahead of rank 1 by at most one chunk, 50
    assert _checkpoint_step(out) in (30, 40, 50)


@needs_mpi
def test_rank_dying_before_mpi_starts_ends_the_job(data_file, tmp_path):
    p, results = worker(2, data_file, tmp_path, "x", "--steps", 10, "--fault",
                        "exit-before-init:1:0", MICROGPT_C_MPI_INIT_TIMEOUT="3")
    assert p.returncode != 0 and results == []
    assert "_waiting_in_MPI_Init_for_every_rank_to_start" in p.err


# =========================================================================== the CLI
def _cli_integrated():
    import microgpt_c.train as train_mod
    return ("comm" in inspect.signature(api.train).parameters
            and "run_main" in inspect.getsource(train_mod.main))


needs_cli = pytest.mark.skipif(MPIEXEC is None or not _cli_integrated(),
                               reason="needs mpi4py/mpiexec and the CLI's MPI support")


@needs_mpi
@needs_cli
def test_cli_under_mpiexec(data_file, tmp_path):
    cli = [sys.executable, "-m", "microgpt_c.train", "--data", str(data_file), "--steps", "120",
           "--batch-size", "8", "--num-samples", "3", "--progress", "plain"]
    one = run(cli + ["--metrics-out", str(tmp_path / "m1.jsonl")])
    assert one.returncode == 0, one.err
    out = tmp_path / "run"
    two = run(mpiexec(2, *cli, "--metrics-out", str(tmp_path / "m2.jsonl"), "--out", str(out),
                      "--stop-after", "70"))
    assert two.returncode == 0, two.err
    assert two.out.count("num docs:") == 1 and two.out.count("sample  1:") == 1
    two = run(mpiexec(2, *cli, "--metrics-out", str(tmp_path / "m3.jsonl"), "--resume", str(out),
                      "--out", str(out)))
    assert two.returncode == 0, two.err
    m1 = [json.loads(x) for x in (tmp_path / "m1.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "m2.jsonl").read_text().splitlines()]
    m3 = [json.loads(x) for x in (tmp_path / "m3.jsonl").read_text().splitlines()]
    assert [m["step"] for m in m2 + m3] == list(range(1, 121))
    l1 = np.array([m["loss"] for m in m1])
    l2 = np.array([m["loss"] for m in m2 + m3])
    assert np.max(np.abs(l2 - l1) / l1) <= 1e-12
    assert _checkpoint_step(out) == 120
    # the same samples as one process (parameters agree to rounding)
    assert one.out.split("--- inference")[1] == two.out.split("--- inference")[1]


@needs_mpi
@needs_cli
def test_cli_bad_data_on_one_rank(data_file, tmp_path):
    cli = [sys.executable, "-m", "microgpt_c.train", "--steps", "20", "--batch-size", "4"]
    cmd = mpiexec(1, *cli, "--data", str(data_file))
    cmd += [":", "-n", "1", *cli, "--data", str(tmp_path / "missing.txt")]
    p = run(cmd)
    assert p.returncode == 2
    assert p.err.count("error: rank 1 of 2 failed before training started") == 1, p.err


@needs_mpi
@needs_cli
def test_cli_ctrl_c_stops_every_rank_at_the_same_step(data_file, tmp_path):
    if _mpiexec_flavour() != "hydra":
        pytest.skip("relies on Hydra's mpiexec forwarding SIGINT to the ranks")
    out, metrics = tmp_path / "run", tmp_path / "m.jsonl"
    cmd = mpiexec(2, sys.executable, "-m", "microgpt_c.train", "--data", str(data_file),
                  "--steps", "1000000", "--batch-size", "8", "--out", str(out),
                  "--metrics-out", str(metrics), "--num-samples", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(), start_new_session=True)
    try:
        wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, proc, "training did not start")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the job did not end after Ctrl-C")
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted after step")]
    assert len(lines) == 1 and "checkpoint saved" in lines[0], err   # rank 0, once
    step = int(lines[0].split()[3].rstrip(";"))
    assert _checkpoint_step(out) == step and "Abort" not in err


@needs_mpi
def test_cli_sigterm_stops_every_rank_and_saves(data_file, tmp_path):
    """Issue 13: SIGTERM (``kill``) is handled like Ctrl-C under MPI: every
    rank stops at the same step, rank 0 saves and reports once, exit 143."""
    if _mpiexec_flavour() != "hydra":
        pytest.skip("relies on Hydra's mpiexec forwarding SIGTERM to the ranks")
    out, metrics = tmp_path / "run", tmp_path / "m.jsonl"
    cmd = mpiexec(2, sys.executable, "-m", "microgpt_c.train", "--data", str(data_file),
                  "--steps", "1000000", "--batch-size", "8", "--out", str(out),
                  "--metrics-out", str(metrics), "--num-samples", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(), start_new_session=True)
    try:
        wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, proc, "training did not start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the job did not end after SIGTERM")
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.startswith("terminated (SIGTERM) after step")]
    assert len(lines) == 1 and "checkpoint saved" in lines[0], err
    step = int(lines[0].split()[4].rstrip(";"))
    assert _checkpoint_step(out) == step and "Abort" not in err


@needs_mpi
def test_cli_sigterm_in_a_text_run_with_validation_under_mpi(data_file, tmp_path):
    """SIGTERM in issue 12's loop under MPI (text mode, a validation split,
    --keep-best): every rank stops at the same step, rank 0 saves once; the
    checkpoint holds the validation history, best.safetensors loads, and the
    run resumes (one process, without --data)."""
    if _mpiexec_flavour() != "hydra":
        pytest.skip("relies on Hydra's mpiexec forwarding SIGTERM to the ranks")
    out, metrics = tmp_path / "run", tmp_path / "m.jsonl"
    cmd = mpiexec(2, sys.executable, "-m", "microgpt_c.train", "--data", str(data_file),
                  "--data-mode", "text", "--val-fraction", "0.05", "--eval-every", "10",
                  "--keep-best", "--n-embd", "8", "--n-head", "2", "--block-size", "8",
                  "--steps", "1000000", "--batch-size", "8", "--out", str(out),
                  "--metrics-out", str(metrics), "--num-samples", "1",
                  "--max-new-tokens", "5")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        wait_for(lambda: metrics.exists() and "val_loss" in metrics.read_text(), proc, "no evaluation")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the job did not end after SIGTERM")
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.startswith("terminated (SIGTERM) after step")]
    assert len(lines) == 1 and "checkpoint saved" in lines[0], err
    step = int(lines[0].split()[4].rstrip(";"))
    ckpt = load_checkpoint(out)
    assert ckpt.train.step == step and "Abort" not in err, err
    history = ckpt.train.train_config["val_history"]
    assert history and history[-1][0] <= step
    assert load_checkpoint(out / "best.safetensors").train.step <= step
    proc = subprocess.run([sys.executable, "-m", "microgpt_c.train", "--resume", str(out),
                           "--out", str(out), "--stop-after", str(step + 2), "-q",
                           "--num-samples", "1"], capture_output=True, text=True,
                          env=clean_env(OMP_NUM_THREADS="1"), timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "notice: data from the checkpoint:" in proc.stderr
    assert _checkpoint_step(out) == step + 2
