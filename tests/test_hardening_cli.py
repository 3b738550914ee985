"""Issue 13, the CLI half: outputs that are inputs, write errors, a bounded
--threads, the data source taken from the checkpoint, SIGTERM, messages that
name their actual cause, and format-1 checkpoints as one notice line.

Signals are sent to subprocesses, each with a timeout."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from microgpt_c import _core
from microgpt_c import checkpoint as ck
from microgpt_c.api import TrainConfig, train
from microgpt_c.errors import ConfigError

from test_cli import SMALL, assert_error, assert_ok, env, samples_of, sample_cli, train_cli
from test_hardening_io import make_v1

TIMEOUT = 120


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory):
    r = random.Random(1)
    docs = ["".join(r.choice("abcdefghij") for _ in range(r.randint(3, 9))) for _ in range(300)]
    p = tmp_path_factory.mktemp("data") / "d.txt"
    p.write_text("\n".join(docs) + "\n")
    return p


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, docs_file):
    """A run stopped at step 20 of 40, with its checkpoint."""
    d = tmp_path_factory.mktemp("run")
    proc = train_cli("--data", docs_file, "--steps", 40, "--stop-after", 20, *SMALL,
                     "--out", d / "run", "--num-samples", 2, cwd=d)
    assert_ok(proc)
    return d / "run"


# ------------------------------------------------------------------ 1. output is an input
def test_metrics_out_that_is_the_data_file_is_refused(tmp_path, docs_file):
    data = tmp_path / "d.txt"
    data.write_bytes(docs_file.read_bytes())
    before = data.read_bytes()
    proc = train_cli("--data", data, "--metrics-out", data, "--steps", 5, *SMALL, cwd=tmp_path)
    assert_error(proc, "--metrics-out", "is the same file as --data", "choose another path")
    assert data.read_bytes() == before
    # through a symlink as well
    (tmp_path / "link.txt").symlink_to(data)
    proc = train_cli("--data", data, "--metrics-out", tmp_path / "link.txt", "--steps", 5,
                     *SMALL, cwd=tmp_path)
    assert_error(proc, "is the same file as --data")
    assert data.read_bytes() == before


def test_outputs_that_are_the_resumed_checkpoint_are_refused(tmp_path, run_dir, docs_file):
    ckpt_file = run_dir / ck.CHECKPOINT_NAME
    before = ckpt_file.read_bytes()
    for flag in ("--metrics-out", "--plot"):
        proc = train_cli("--resume", run_dir, "--data", docs_file, flag, ckpt_file, "-q",
                         cwd=tmp_path)
        assert_error(proc, flag, "is the same file as --resume")
        assert ckpt_file.read_bytes() == before
    # --plot must not be the data file
    data = tmp_path / "d.svg"
    data.write_bytes(docs_file.read_bytes())
    proc = train_cli("--data", data, "--plot", data, "--steps", 3, *SMALL, cwd=tmp_path)
    assert_error(proc, "--plot", "is the same file as --data")
    assert data.read_bytes() == docs_file.read_bytes()
    # --out's checkpoint file must not be the data file
    out = tmp_path / "o"
    out.mkdir()
    data = out / ck.CHECKPOINT_NAME
    data.write_bytes(docs_file.read_bytes())
    proc = train_cli("--data", data, "--out", out, "--steps", 3, *SMALL, cwd=tmp_path)
    assert_error(proc, "--out", "is the same file as --data")
    assert data.read_bytes() == docs_file.read_bytes()
    # two outputs that are one file
    proc = train_cli("--data", docs_file, "--out", out, "--metrics-out", data, "--steps", 3,
                     *SMALL, cwd=tmp_path)
    assert_error(proc, "--out", "is the same file as --metrics-out", "another output")
    # --out may be the --resume directory (the checkpoint is read before it is replaced)
    import shutil
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert_ok(train_cli("--resume", run, "--out", run, "--stop-after", 21, "-q",
                        "--num-samples", 1, cwd=tmp_path))
    assert ck.load_checkpoint(run).train.step == 21


def test_metrics_file_is_opened_only_after_the_data_is_read(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8\n")
    metrics = tmp_path / "m.jsonl"
    proc = train_cli("--data", bad, "--metrics-out", metrics, "--steps", 3, cwd=tmp_path)
    assert_error(proc, "not valid UTF-8")
    assert not metrics.exists()


# ------------------------------------------------------------------ 2. write errors
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_metrics_out_dev_full_is_one_line(tmp_path, docs_file):
    proc = train_cli("--data", docs_file, "--metrics-out", "/dev/full", "--steps", 5, *SMALL,
                     cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]   # after the run's own messages
    assert last == ("error: cannot write the metrics file /dev/full: no space left on the "
                    "device; free some disk space or write to another file system"), proc.stderr
    assert sum(ln.startswith("error:") for ln in proc.stderr.splitlines()) == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_metrics_write_error_keeps_the_previous_checkpoint(tmp_path, run_dir, docs_file):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = (run / ck.CHECKPOINT_NAME).read_bytes()
    proc = train_cli("--resume", run, "--data", docs_file, "--out", run, "--metrics-out",
                     "/dev/full", "-q", cwd=tmp_path)
    assert_error(proc, "cannot write the metrics file /dev/full")   # -q: the only line
    assert (run / ck.CHECKPOINT_NAME).read_bytes() == before


def test_plot_write_error_is_one_line(tmp_path, docs_file, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    import errno

    import importlib

    from microgpt_c import plotting
    train_mod = importlib.import_module("microgpt_c.train")

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(plotting, "atomic_write_bytes", full)
    monkeypatch.setenv("MICROGPT_C_OFFLINE", "1")
    plot = tmp_path / "loss.png"
    rc = train_mod.main(["--data", str(docs_file), "--steps", "3", *map(str, SMALL), "-q",
                         "--num-samples", "1", "--plot", str(plot)])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"error: cannot write the plot {plot}: no space left on the "
                               "device; free some disk space or write to another file "
                               "system\n"), err


def test_bad_data_leaves_no_output_directory(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"")
    proc = train_cli("--data", bad, "--out", tmp_path / "o", "--steps", 3, cwd=tmp_path)
    assert_error(proc, "contains no documents")
    assert not (tmp_path / "o").exists()


def test_metrics_out_in_a_missing_directory(tmp_path, docs_file):
    proc = train_cli("--data", docs_file, "--metrics-out", tmp_path / "nope" / "m.jsonl",
                     "--steps", 3, *SMALL, cwd=tmp_path)
    assert_error(proc, "cannot write the metrics file", "does not exist")


# ------------------------------------------------------------------ 3. --threads bounded
@pytest.mark.parametrize("n", [1025, 100000, 2147483647])
def test_threads_above_the_maximum_are_refused(tmp_path, docs_file, n):
    proc = train_cli("--data", docs_file, "--threads", n, "--steps", 2, *SMALL, cwd=tmp_path)
    assert_error(proc, "--threads", "at most 1024")
    proc = sample_cli("--checkpoint", tmp_path / "x.safetensors", "--threads", n, cwd=tmp_path)
    assert_error(proc, "--threads", "at most 1024")


def test_set_num_threads_is_bounded():
    from microgpt_c import config
    assert _core.MAX_THREADS == config.MAX_THREADS == 1024
    with pytest.raises(ConfigError, match="at most 1024"):
        _core.set_num_threads(1025)
    with pytest.raises(ConfigError, match="at most 1024"):
        TrainConfig(threads=100000).validate()
    _core.set_num_threads(1)


def test_threads_maximum_is_documented(tmp_path):
    proc = train_cli("--help", cwd=tmp_path)
    assert "at most 1024" in proc.stdout
    readme = Path(__file__).resolve().parents[1] / "README.md"
    assert "at most 1024" in readme.read_text()


# ------------------------------------------------------------------ 4. data source
def test_resume_without_data_takes_the_checkpoints_data_file(tmp_path, run_dir, docs_file):
    proc = train_cli("--resume", run_dir, "--stop-after", 22, "-q", "--num-samples", 1,
                     "--out", tmp_path / "o", cwd=tmp_path)
    assert_ok(proc)
    assert f"notice: data from the checkpoint: {docs_file}" in proc.stderr   # even with -q
    assert ck.load_checkpoint(tmp_path / "o").train.step == 22


def test_resume_without_data_takes_the_builtin_set(tmp_path):
    """A run on the built-in set (here the Census fallback, offline) resumes
    on that set, not on an input.txt in the new directory."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    proc = train_cli("--steps", 4, "--stop-after", 2, *SMALL, "--out", a / "run", "-q",
                     "--num-samples", 1, cwd=a)
    assert_ok(proc)
    c = ck.load_checkpoint(a / "run")
    assert c.train.train_config["data_source"].startswith("builtin:")
    (b / "input.txt").write_text("other\ndata\n")
    proc = train_cli("--resume", a / "run", "-q", "--num-samples", 1, cwd=b)
    assert_ok(proc)
    assert "notice: data from the checkpoint:" in proc.stderr


def test_old_checkpoint_without_data_source_still_resumes(tmp_path, docs_file):
    """A checkpoint without ``data_source`` (older versions) still resumes with --data."""
    d = tmp_path / "run"
    r = train(TrainConfig(steps=6, n_embd=8, n_head=2, block_size=8, num_samples=0,
                          backend="c"), docs_file, out=d, stop_after=3)
    state = r.model.train_state
    state.train_config.pop("data_source", None)
    ck.save_checkpoint(d, r.model, uchars="".join(r.tokenizer.uchars), train=state)
    proc = train_cli("--resume", d, "--data", docs_file, "-q", "--num-samples", 1, cwd=tmp_path)
    assert_ok(proc)


# ------------------------------------------------------------------ 5. SIGTERM
def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, docs_file):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "microgpt_c.train", "--data", str(docs_file), "--steps",
         "50000000", "--progress", "plain", "--log-every", "500", "--out", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if proc.stdout.readline().startswith("step"):
                break
        else:
            pytest.fail("training did not start")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    m = re.match(r"terminated \(SIGTERM\) after step (\d+); checkpoint saved to (.+) "
                 r"\(continue with --resume", last)
    assert m, stderr
    c = ck.load_checkpoint(out)
    assert c.train.step == int(m.group(1)) > 0


def test_a_signal_during_the_mpi_agreement_stops_every_rank_together():
    """Under MPI only the agreed stop counts: a signal that arrives while a
    rank waits in the collective (so after the others contributed "go on") is
    acted on at the next agreement, by every rank, not by that rank alone
    (which would abort the job)."""
    from microgpt_c import training

    interrupt = training._DeferredInterrupt()
    calls = []

    class Trainer:   # one rank's view of DataParallelModel.agree
        def agree(self, stop, fast):
            calls.append(stop)
            if len(calls) == 1:            # SIGTERM lands during the first collective
                interrupt.requested, interrupt.signum = True, signal.SIGTERM
                return False, fast         # ... which every rank agreed as "go on"
            return stop, fast

    assert training._agree_stop(Trainer(), interrupt, True, dp=object()) == (False, True)
    assert training._agree_stop(Trainer(), interrupt, True, dp=object()) == (True, True)
    assert calls == [False, signal.SIGTERM] and interrupt.signum == signal.SIGTERM
    # one process: the local flag
    assert training._agree_stop(None, interrupt, False, dp=None) == (True, False)


# ------------------------------------------------------------------ 6. messages
def test_tiny_temperature_is_named(tmp_path, docs_file):
    proc = train_cli("--data", docs_file, "--temperature", "1e-310", "--steps", 2, *SMALL,
                     cwd=tmp_path)
    line = assert_error(proc, "temperature 1e-310 is too small")
    assert "softmax" not in line


def _nan_checkpoint(tmp_path, docs_file):
    d = tmp_path / "nan"
    r = train(TrainConfig(steps=6, n_embd=8, n_head=2, block_size=8, num_samples=0,
                          backend="c"), docs_file, out=d, stop_after=3)
    r.model.flat_params[0] = float("nan")
    ck.save_checkpoint(d, r.model, uchars="".join(r.tokenizer.uchars), train=r.model.train_state)
    return d / ck.CHECKPOINT_NAME


def test_nan_checkpoint_is_named_for_training_and_sampling(tmp_path, docs_file):
    path = _nan_checkpoint(tmp_path, docs_file)
    for proc in (train_cli("--resume", path, "--data", docs_file, cwd=tmp_path),
                 train_cli("--resume", path, "--sample-only", cwd=tmp_path),
                 sample_cli("--checkpoint", path, cwd=tmp_path)):
        line = assert_error(proc, str(path), "non-finite values (NaN or inf)", "'wte'")
        assert "softmax" not in line and "learning rate" not in line


def test_divergence_after_resume_names_the_checkpoint(tmp_path, docs_file):
    d = tmp_path / "run"
    r = train(TrainConfig(steps=400, n_embd=8, n_head=2, block_size=8, num_samples=0,
                          backend="c", dtype="float32", lr=1e7), docs_file, out=d,
              stop_after=1)
    assert np.isfinite(r.losses).all()
    proc = train_cli("--resume", d, "--data", docs_file, "-q", cwd=tmp_path)
    line = assert_error(proc, f"resumed from {d / ck.CHECKPOINT_NAME} (step 1)", "go back to it")
    assert "loss became" in line or "gradient became" in line


# ------------------------------------------------------------------ 7. format-1 notice
def test_format_1_checkpoint_is_one_notice_line(tmp_path, run_dir, docs_file):
    v1 = make_v1(run_dir / ck.CHECKPOINT_NAME, tmp_path / "v1.safetensors")
    for proc in (train_cli("--resume", v1, "--sample-only", "--num-samples", 2, cwd=tmp_path),
                 sample_cli("--checkpoint", v1, "--num-samples", 2, cwd=tmp_path),
                 train_cli("--resume", v1, "--data", docs_file, "-q", "--num-samples", 1,
                           cwd=tmp_path)):
        assert_ok(proc)
        lines = [ln for ln in proc.stderr.splitlines() if "format version 1" in ln]
        assert len(lines) == 1 and lines[0].startswith("notice: "), proc.stderr
        assert "warnings.warn" not in proc.stderr and "Warning" not in proc.stderr
        assert samples_of(proc.stdout)


# ------------------------------------------------------------------ 8. issue 12's paths
# The same rules for what issue 12 (text mode, validation, --keep-best,
# --config) reads and writes: the --config file is an input, best.safetensors
# an output; SIGTERM, resuming without --data and write errors in that loop.
from test_own_text import make_source  # noqa: E402


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "source.txt"
    p.write_text(make_source(), encoding="utf-8")
    return p


TEXT = ["--data-mode", "text", *SMALL]


def test_outputs_that_are_the_config_file_are_refused(tmp_path, docs_file):
    config = tmp_path / "run.toml"
    config.write_text("steps = 3\nn-embd = 8\nn-head = 2\nblock-size = 8\n")
    before = config.read_bytes()
    for flag in ("--metrics-out", "--plot"):
        proc = train_cli("--config", config, "--data", docs_file, flag, config, cwd=tmp_path)
        assert_error(proc, flag, "is the same file as --config", "choose another path")
        assert config.read_bytes() == before
    # set in the config file itself
    inside = tmp_path / "self.toml"
    inside.write_text(f"steps = 3\nmetrics-out = {str(inside)!r}\n".replace("'", '"'))
    before = inside.read_bytes()
    proc = train_cli("--config", inside, "--data", docs_file, *SMALL, cwd=tmp_path)
    assert_error(proc, "--metrics-out", "is the same file as --config")
    assert inside.read_bytes() == before
    # --out's checkpoint file
    out = tmp_path / "o"
    out.mkdir()
    as_ckpt = out / ck.CHECKPOINT_NAME
    as_ckpt.write_bytes(before)
    proc = train_cli("--config", as_ckpt, "--data", docs_file, "--out", out, *SMALL,
                     cwd=tmp_path)
    assert_error(proc, "--out", "is the same file as --config")
    assert as_ckpt.read_bytes() == before


def test_best_checkpoint_that_is_an_input_or_an_output_is_refused(tmp_path, text_file):
    out = tmp_path / "o"
    out.mkdir()
    data = out / "best.safetensors"
    data.write_bytes(text_file.read_bytes())
    proc = train_cli("--data", data, *TEXT, "--val-fraction", 0.1, "--keep-best", "--out", out,
                     "--steps", 3, cwd=tmp_path)
    assert_error(proc, "--out (--keep-best)", "best.safetensors", "is the same file as --data")
    assert data.read_bytes() == text_file.read_bytes()
    proc = train_cli("--data", text_file, *TEXT, "--val-fraction", 0.1, "--keep-best",
                     "--out", tmp_path / "p", "--metrics-out", tmp_path / "p" / "best.safetensors",
                     "--steps", 3, cwd=tmp_path)
    assert_error(proc, "--out (--keep-best)", "is the same file as --metrics-out",
                 "another output")
    assert not (tmp_path / "p").exists()   # nothing created before the refusal


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "nested", "binary", "large"])
def test_config_file_is_read_safely(tmp_path, kind):
    """--config gets the data file's rules: a regular file of bounded size
    (a FIFO would block), and no traceback for any content."""
    path = tmp_path / "c.toml"
    expect = {"fifo": "is a FIFO (named pipe), not a regular file",
              "device": "is a character device, not a regular file",
              "directory": "is a directory, not a regular file",
              "nested": "nested too deeply", "binary": "is not valid UTF-8",
              "large": "more than the limit"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("needs /dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "nested":
        path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    elif kind == "binary":
        path.write_bytes(b"steps = 3\n# \xff\xfe\n")
    else:
        path.write_text("# " + "x" * (2**20) + "\nsteps = 3\n")
    proc = train_cli("--config", path, cwd=tmp_path, timeout=60)
    assert_error(proc, str(path), expect)


def test_resume_without_data_of_a_text_checkpoint(tmp_path, text_file):
    """A text-mode run resumed without --data (in a directory whose input.txt
    would otherwise be read) reads the checkpoint's text file, and continues
    exactly: the same losses as the run never stopped."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "input.txt").write_text("something else entirely\n" * 10)
    opts = [*TEXT, "--val-fraction", 0.1, "--eval-every", 2, "--steps", 6, "-q",
            "--num-samples", 1, "--max-new-tokens", 10]
    assert_ok(train_cli("--data", text_file, *opts, "--out", a / "full", cwd=a))
    assert_ok(train_cli("--data", text_file, *opts, "--stop-after", 3, "--out", a / "half",
                        cwd=a))
    proc = train_cli("--resume", a / "half", "--out", a / "half", "-q", "--num-samples", 1,
                     cwd=b)
    assert_ok(proc)
    assert (f"notice: data from the checkpoint: {text_file} "
            f"({len(text_file.read_text())} characters, text mode)") in proc.stderr
    full, resumed = ck.load_checkpoint(a / "full"), ck.load_checkpoint(a / "half")
    assert resumed.train.step == 6
    assert resumed.train.losses == full.train.losses
    # the same evaluations (and one more, at the --stop-after step)
    assert [x for x in resumed.train.train_config["val_history"] if x[0] != 3] == \
        full.train.train_config["val_history"]
    assert resumed.train.train_config["data_source"] == str(text_file)
    assert samples_of(proc.stdout) == [] and proc.stdout   # text blocks, not name lines


def test_resume_without_data_of_a_text_checkpoint_on_the_builtin_set(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    proc = train_cli(*TEXT, "--steps", 4, "--stop-after", 2, "--out", a / "run", "-q",
                     "--num-samples", 1, "--max-new-tokens", 5, cwd=a)
    assert_ok(proc)
    c = ck.load_checkpoint(a / "run")
    assert c.train.train_config["data_source"] == "builtin:census"   # offline: the fallback
    (b / "input.txt").write_text("other text, which must not be read\n" * 5)
    proc = train_cli("--resume", a / "run", "-q", "--num-samples", 1, cwd=b)
    assert_ok(proc)
    assert "notice: data from the checkpoint: US Census first names" in proc.stderr
    assert "(text mode)" in proc.stderr
    assert ck.load_checkpoint(a / "run").train.step == 2   # no --out: not written again


def _wait_for(proc, predicate, what):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        if predicate(line):
            return line
    pytest.fail(f"{what} did not happen")


def test_sigterm_during_a_text_run_with_validation_saves_and_resumes(tmp_path, text_file):
    """SIGTERM in issue 12's loop (text mode, a validation split, --keep-best,
    metrics): the checkpoint holds the validation history, best.safetensors is
    intact, and a resume without --data continues the metrics file."""
    out, metrics = tmp_path / "out", tmp_path / "m.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "microgpt_c.train", "--data", str(text_file), *map(str, TEXT),
         "--val-fraction", "0.1", "--eval-every", "20", "--keep-best", "--steps", "50000000",
         "--progress", "plain", "--log-every", "1000", "--out", str(out),
         "--metrics-out", str(metrics), "--num-samples", "1", "--max-new-tokens", "5"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        _wait_for(proc, lambda line: "val loss" in line, "an evaluation")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    m = re.match(r"terminated \(SIGTERM\) after step (\d+); checkpoint saved to .+ "
                 r"\(continue with --resume .+\); smoothed loss \d+\.\d{4}$", last)
    assert m, stderr
    step = int(m.group(1))
    c = ck.load_checkpoint(out)
    assert c.train.step == step
    history = c.train.train_config["val_history"]
    assert history and all(s <= step and s % 20 == 0 for s, _ in history)
    best = ck.load_checkpoint(out / "best.safetensors")   # a valid checkpoint
    assert min(v for _, v in history) == min(v for _, v in best.train.train_config["val_history"])
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, step + 1))
    # resume without --data, somewhere else: continues the run and its metrics
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = train_cli("--resume", out, "--out", out, "--metrics-out", metrics, "--stop-after",
                     step + 3, "-q", "--num-samples", 1, cwd=elsewhere)
    assert_ok(proc)
    assert "notice: data from the checkpoint:" in proc.stderr
    c = ck.load_checkpoint(out)
    assert c.train.step == step + 3
    assert c.train.train_config["val_history"][:len(history)] == history
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, step + 4))
    assert "val_loss" in rows[-1]    # evaluated at the stop


def test_resuming_from_the_best_checkpoint_into_its_directory(tmp_path, text_file):
    """--resume DIR/best.safetensors --out DIR --keep-best is allowed (as
    --out DIR with --resume DIR): best.safetensors is read before it could
    be replaced."""
    out = tmp_path / "o"
    opts = [*TEXT, "--val-fraction", 0.1, "--eval-every", 2, "--keep-best", "--steps", 10]
    assert_ok(train_cli("--data", text_file, *opts, "--stop-after", 6, "--out", out, "-q",
                        "--num-samples", 0, cwd=tmp_path))
    best = ck.load_checkpoint(out / "best.safetensors")
    proc = train_cli("--resume", out / "best.safetensors", "--out", out, "--stop-after", 8,
                     "-q", "--num-samples", 0, cwd=tmp_path)
    assert_ok(proc)
    assert ck.load_checkpoint(out).train.step == 8
    assert ck.load_checkpoint(out / "best.safetensors").train.step >= best.train.step


def test_best_checkpoint_write_error_is_one_line(tmp_path, text_file, monkeypatch, capsys):
    import errno
    import importlib

    from microgpt_c import safeio
    train_mod = importlib.import_module("microgpt_c.train")
    real = safeio.atomic_write_bytes

    def full_for_best(path, data, **kw):
        if Path(path).name == "best.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, **kw)
    monkeypatch.setattr(safeio, "atomic_write_bytes", full_for_best)
    monkeypatch.setenv("MICROGPT_C_OFFLINE", "1")
    out = tmp_path / "o"
    rc = train_mod.main(["--data", str(text_file), *map(str, TEXT), "--val-fraction", "0.1",
                         "--eval-every", "2", "--keep-best", "--steps", "4", "--out", str(out),
                         "-q", "--num-samples", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"error: cannot write the checkpoint {out / 'best.safetensors'}: "
                               "no space left on the device; free some disk space or write to "
                               "another file system (the previous checkpoint, if any, is "
                               "unchanged)\n"), err
