"""The command lines: python -m microgpt_c.train and python -m microgpt_c.sample.

Every flag is exercised at least once; errors must be one line ``error: ...`` on
stderr with exit status 2 and no traceback."""
from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import microgpt_c
from microgpt_c import checkpoint as ck

NAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "names.txt"
HEADER = "--- inference (new, hallucinated names) ---"
# the original microgpt's 20 names (seed 42, 1000 steps, temperature 0.5)
REFERENCE_NAMES = ["kamon", "ann", "karai", "jaire", "vialan", "karia", "yeran", "anna",
                   "areli", "kaina", "konna", "keylen", "liole", "alerin", "earan", "lenne",
                   "kana", "lara", "alela", "anton"]
STEP_LINE = re.compile(r"^step +(\d+) / +(\d+) \| loss \d+\.\d{4}$")
PLAIN_LINE = re.compile(r"^step +(\d+) / +(\d+) \| loss \d+\.\d{4} \| avg \d+\.\d{4} \| "
                        r"\d+ steps/s \| eta [\d:?]+$")
SAMPLE_LINE = re.compile(r"^sample +(\d+): (.*)$")

needs_names = pytest.mark.skipif(not NAMES.exists(), reason="shared names.txt not available")


def env(**extra):
    e = dict(os.environ)
    e.pop("MICROGPT_C_BACKEND", None)
    e["MICROGPT_C_OFFLINE"] = "1"
    e["PYTHONUNBUFFERED"] = "1"
    e.update(extra)
    return e


def run(module, *args, cwd, timeout=120, raw=False, **envkw):
    """Run a CLI module; ``raw``: keep stdout/stderr as bytes (no newline translation)."""
    return subprocess.run([sys.executable, "-m", f"microgpt_c.{module}", *map(str, args)],
                          cwd=cwd, capture_output=True, text=not raw, env=env(**envkw),
                          timeout=timeout)


def train_cli(*args, cwd, **kw):
    return run("train", *args, cwd=cwd, **kw)


def sample_cli(*args, cwd, **kw):
    return run("sample", *args, cwd=cwd, **kw)


def samples_of(stdout):
    out = []
    for line in stdout.splitlines():
        m = SAMPLE_LINE.match(line)
        if m:
            assert int(m.group(1)) == len(out) + 1
            out.append(m.group(2))
    return out


def assert_ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def assert_error(proc, *fragments):
    """Exit 2, exactly one line on stderr: 'error: ...' containing the fragments."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory):
    r = random.Random(0)
    docs = ["".join(r.choice("abcdefghijkl") for _ in range(r.randint(3, 10)))
            for _ in range(400)]
    p = tmp_path_factory.mktemp("data") / "docs.txt"
    p.write_text("\n".join(docs) + "\n")
    return p


SMALL = ["--n-embd", 8, "--n-head", 2, "--block-size", 8]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, docs_file):
    """A finished small run with a checkpoint, and its stdout."""
    d = tmp_path_factory.mktemp("run")
    proc = train_cli("--data", docs_file, "--steps", 60, *SMALL, "--out", d / "out",
                     "--num-samples", 8, "--temperature", 0.7, cwd=d)
    assert_ok(proc)
    return d / "out" / ck.CHECKPOINT_NAME, samples_of(proc.stdout), proc


# ------------------------------------------------------------------ defaults
@needs_names
def test_default_run_reproduces_the_reference(tmp_path):
    (tmp_path / "input.txt").write_bytes(NAMES.read_bytes())
    proc = train_cli(cwd=tmp_path)
    assert_ok(proc)
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["num docs: 32033", "vocab size: 27", "num params: 4192"]
    steps = [l for l in lines if l.startswith("step ")]
    assert steps and all(PLAIN_LINE.match(l) for l in steps)
    assert [int(PLAIN_LINE.match(l).group(1)) for l in steps] == list(range(100, 1001, 100))
    assert lines[-21] == HEADER
    assert samples_of(proc.stdout) == REFERENCE_NAMES
    assert "data: input.txt" in proc.stderr


@needs_names
def test_progress_steps_is_the_original_output(tmp_path):
    (tmp_path / "input.txt").write_bytes(NAMES.read_bytes())
    proc = train_cli("--progress", "steps", "--metrics-out", "m.jsonl", cwd=tmp_path, raw=True)
    assert proc.returncode == 0, proc.stderr
    head, rest = proc.stdout.decode().split("num params: 4192\n")
    assert head == "num docs: 32033\nvocab size: 27\n"
    progress, tail = rest.split("\r\n")  # the last step line ends with \r, then "\n--- ..."
    parts = progress.split("\r")
    metrics = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert parts == [f"step {m['step']:4d} / 1000 | loss {m['loss']:.4f}" for m in metrics]
    assert len(metrics) == 1000 and metrics[0]["lr"] == 0.01
    assert tail.startswith(HEADER + "\n")
    assert samples_of(tail) == REFERENCE_NAMES


@needs_names
def test_quiet_prints_only_samples(tmp_path):
    (tmp_path / "input.txt").write_bytes(NAMES.read_bytes())
    proc = train_cli("--quiet", "--num-samples", 3, cwd=tmp_path)
    assert_ok(proc)
    assert proc.stdout == "".join(f"sample {i + 1:2d}: {n}\n"
                                  for i, n in enumerate(REFERENCE_NAMES[:3]))
    assert proc.stderr == ""


def test_progress_plain_and_log_every(tmp_path, docs_file):
    proc = train_cli("--data", docs_file, "--steps", 20, *SMALL, "--progress", "plain",
                     "--log-every", 7, "--num-samples", 0, cwd=tmp_path)
    assert_ok(proc)
    steps = [int(PLAIN_LINE.match(l).group(1)) for l in proc.stdout.splitlines()
             if l.startswith("step")]
    assert steps == [7, 14, 20]


def test_progress_bar(tmp_path, docs_file):
    proc = train_cli("--data", docs_file, "--steps", 50, *SMALL, "--progress", "bar",
                     "--num-samples", 1, cwd=tmp_path)
    assert_ok(proc)
    assert "step/s" in proc.stderr and "loss " in proc.stderr and "50/50" in proc.stderr
    assert "step " not in proc.stdout  # no plain lines
    assert len(samples_of(proc.stdout)) == 1


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_progress_auto_is_a_bar_on_a_terminal(tmp_path, docs_file):
    import pty

    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24x100
    proc = subprocess.Popen([sys.executable, "-m", "microgpt_c.train", "--data", str(docs_file),
                             "--steps", "30", *map(str, SMALL), "--num-samples", "1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave, text=True,
                            env=env())
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert "30/30" in tty and "step/s" in tty
    assert "step " not in stdout and len(samples_of(stdout)) == 1


# ------------------------------------------------------------------ flags
def test_every_training_flag(tmp_path, docs_file):
    out = tmp_path / "out"
    proc = train_cli("--data", docs_file, "--steps", 30, "--n-layer", 2, "--n-embd", 8,
                     "--n-head", 2, "--block-size", 8, "--batch-size", 3, "--lr", 0.02,
                     "--seed", 7, "--temperature", 0.8, "--num-samples", 4, "--dtype", "float32",
                     "--backend", "c", "--threads", 1, "--metrics-out", tmp_path / "m.jsonl",
                     "--top-k", 3, "--prefix", "ab", "--out", out, "--save-every", 10,
                     "--plot", tmp_path / "loss.png", "--progress", "plain", "--log-every", 10,
                     cwd=tmp_path)
    assert_ok(proc)
    names = samples_of(proc.stdout)
    assert len(names) == 4 and all(n.startswith("ab") for n in names)
    metrics = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert metrics[0]["lr"] == 0.02 and metrics[-1]["lr"] == pytest.approx(0.02 / 30)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    c = ck.load_checkpoint(out)
    assert c.config == {"vocab_size": 13, "n_layer": 2, "n_embd": 8, "n_head": 2,
                        "block_size": 8}
    assert c.dtype == "float32" and c.train.batch_size == 3 and c.train.lr == 0.02
    assert c.train.seed == 7 and c.train.step == 30
    assert [m["loss"] for m in metrics] == c.train.losses
    assert "checkpoint: " in proc.stderr and "loss plot: " in proc.stderr
    # the sampling settings are the checkpoint's defaults: same names again
    again = sample_cli("--checkpoint", out, cwd=tmp_path)
    assert_ok(again)
    assert samples_of(again.stdout) == names


def test_threads_do_not_change_results(tmp_path, docs_file):
    runs = []
    for n in (1, 2):
        m = tmp_path / f"m{n}.jsonl"
        proc = train_cli("--data", docs_file, "--steps", 25, "--batch-size", 4, "--threads", n,
                         "--metrics-out", m, "-q", cwd=tmp_path)
        assert_ok(proc)
        runs.append((m.read_text(), proc.stdout))
    assert runs[0] == runs[1]


def test_reference_backend(tmp_path, docs_file):
    args = ["--data", docs_file, "--steps", 2, "--n-embd", 4, "--n-head", 1, "--block-size", 4,
            "--num-samples", 2, "-q", "--metrics-out"]
    ref = train_cli(*args, tmp_path / "r.jsonl", "--backend", "reference", cwd=tmp_path)
    c = train_cli(*args, tmp_path / "c.jsonl", cwd=tmp_path)
    assert_ok(ref)
    assert_ok(c)
    lr = [json.loads(l)["loss"] for l in (tmp_path / "r.jsonl").read_text().splitlines()]
    lc = [json.loads(l)["loss"] for l in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert lr == pytest.approx(lc, rel=1e-9)
    assert_error(train_cli("--data", docs_file, "--backend", "reference", "--out",
                           tmp_path / "o", cwd=tmp_path), "C backend")


def test_version_flags(tmp_path):
    for module in ("train", "sample"):
        proc = run(module, "--version", cwd=tmp_path)
        assert proc.returncode == 0 and microgpt_c.__version__ in proc.stdout


# ------------------------------------------------------------------ resume and sampling
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cli_resume_is_exact(tmp_path, docs_file, dtype):
    common = ["--data", docs_file, "--steps", 80, *SMALL, "--dtype", dtype]
    full = train_cli(*common, "--metrics-out", tmp_path / "full.jsonl", "--out", tmp_path / "a",
                     cwd=tmp_path)
    part = train_cli(*common, "--metrics-out", tmp_path / "p1.jsonl", "--out", tmp_path / "b",
                     "--stop-after", 30, cwd=tmp_path)
    rest = train_cli("--data", docs_file, "--resume", tmp_path / "b", "--out", tmp_path / "b",
                     "--metrics-out", tmp_path / "p2.jsonl", cwd=tmp_path)
    for p in (full, part, rest):
        assert_ok(p)
    assert "resuming from" in rest.stderr
    assert ((tmp_path / "p1.jsonl").read_text() + (tmp_path / "p2.jsonl").read_text()
            == (tmp_path / "full.jsonl").read_text())
    assert samples_of(rest.stdout) == samples_of(full.stdout)
    a, b = ck.load_checkpoint(tmp_path / "a"), ck.load_checkpoint(tmp_path / "b")
    for name in a.params:
        assert (a.params[name] == b.params[name]).all()
        assert (a.adam_m[name] == b.adam_m[name]).all() and (a.adam_v[name] == b.adam_v[name]).all()
    assert a.train.losses == b.train.losses and a.train.rng_state == b.train.rng_state


def test_resume_mismatch_errors(tmp_path, docs_file, small_run):
    path, _, _ = small_run
    line = assert_error(train_cli("--data", docs_file, "--resume", path, "--n-embd", 16,
                                  "--dtype", "float32", cwd=tmp_path), "cannot resume")
    assert "n_embd=8" in line and "n_embd=16" in line and "float32" in line
    other = tmp_path / "other.txt"
    other.write_text("abc\ndef\n")
    assert_error(train_cli("--data", other, "--resume", path, cwd=tmp_path),
                 "training data differs")
    # a shorter total is refused (a longer one extends the run: tests/test_own_text.py)
    assert_error(train_cli("--data", docs_file, "--resume", path, "--steps", 59, cwd=tmp_path),
                 "steps=60", "steps=59")


def test_sample_only(tmp_path, small_run):
    path, names, _ = small_run
    proc = train_cli("--sample-only", "--resume", path, cwd=tmp_path)
    assert_ok(proc)
    assert proc.stdout.splitlines()[0] == HEADER and samples_of(proc.stdout) == names
    proc = train_cli("--sample-only", "--resume", path.parent, "-q", "--num-samples", 2,
                     "--seed", 3, "--temperature", 1.0, "--top-k", 2, "--prefix", "a",
                     "--threads", 1, cwd=tmp_path)
    assert_ok(proc)
    got = samples_of(proc.stdout)
    assert proc.stdout.startswith("sample  1: a") and len(got) == 2
    assert_error(train_cli("--sample-only", cwd=tmp_path), "--resume")


def test_sample_cli(tmp_path, small_run):
    path, names, _ = small_run
    proc = sample_cli("--checkpoint", path, cwd=tmp_path)
    assert_ok(proc)
    assert samples_of(proc.stdout) == names and proc.stderr == ""
    assert proc.stdout.splitlines()[0].startswith("sample  1: ")
    proc = sample_cli("--checkpoint", path, "--num-samples", 3, cwd=tmp_path)
    assert samples_of(proc.stdout) == names[:3]
    seeded = [samples_of(sample_cli("--checkpoint", path, "--seed", 5, "--num-samples", 6,
                                    "--temperature", 1.5, "--threads", 1,
                                    cwd=tmp_path).stdout) for _ in range(2)]
    assert seeded[0] == seeded[1] and len(seeded[0]) == 6
    greedy = samples_of(sample_cli("--checkpoint", path, "--top-k", 1, "--num-samples", 4,
                                   cwd=tmp_path).stdout)
    assert len(set(greedy)) == 1  # top-1 is deterministic
    prefixed = samples_of(sample_cli("--checkpoint", path, "--prefix", "ab",
                                     cwd=tmp_path).stdout)
    assert len(prefixed) == 8 and all(n.startswith("ab") for n in prefixed)


def test_sample_cli_errors(tmp_path, small_run):
    path, _, _ = small_run
    line = assert_error(sample_cli("--checkpoint", path, "--prefix", "aZ!", cwd=tmp_path),
                        "vocabulary", "'Z'", "'!'")
    assert "'a'" not in line.split("vocabulary:")[1].split("(")[0]
    assert_error(sample_cli("--checkpoint", path, "--prefix", "a" * 9, cwd=tmp_path),
                 "block_size")
    assert_error(train_cli("--sample-only", "--resume", path, "--prefix", "Z", cwd=tmp_path),
                 "'Z'")
    assert_error(sample_cli("--checkpoint", tmp_path / "nope", cwd=tmp_path), "not found")
    bad = sample_cli("--checkpoint", path, "--temperature", 0, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_bad_checkpoints_on_the_command_line(tmp_path, small_run):
    import safetensors.numpy
    import numpy as np

    path, _, _ = small_run
    raw = path.read_bytes()
    files = {"empty.safetensors": b"", "truncated.safetensors": raw[: len(raw) // 2],
             "random.bin": bytes(random.Random(1).getrandbits(8) for _ in range(4096)),
             "foreign.safetensors": safetensors.numpy.save({"x": np.ones(3)})}
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        assert_error(sample_cli("--checkpoint", p, cwd=tmp_path), str(p))
        assert_error(train_cli("--resume", p, cwd=tmp_path), str(p))
        assert_error(train_cli("--sample-only", "--resume", p, cwd=tmp_path), str(p))


# ------------------------------------------------------------------ errors before training
def test_errors_before_training(tmp_path, docs_file):
    d = ["--data", docs_file]
    assert_error(train_cli(*d, "--save-every", 5, cwd=tmp_path), "--save-every needs --out")
    assert_error(train_cli(*d, "--n-embd", 10, "--n-head", 4, cwd=tmp_path), "divisible")
    assert_error(train_cli("--data", tmp_path / "missing.txt", cwd=tmp_path), "not found")
    f = tmp_path / "a-file"
    f.write_text("x")
    for out in (f, f / "sub"):
        proc = train_cli(*d, "--out", out, cwd=tmp_path)
        assert_error(proc, "output directory")
        assert proc.stdout == ""  # nothing trained
    assert_error(train_cli(*d, "--plot", tmp_path / "loss.xyz", cwd=tmp_path), ".png")
    assert_error(train_cli(*d, "--plot", tmp_path / "no" / "loss.png", cwd=tmp_path),
                 "does not exist")
    assert_error(train_cli(*d, "--prefix", "Q", cwd=tmp_path), "'Q'")


def test_plot_without_matplotlib(tmp_path, docs_file, monkeypatch, capsys):
    import importlib

    train_mod = importlib.import_module("microgpt_c.train")  # the module, not the function

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc = train_mod.main(["--data", str(docs_file), "--steps", "5", "--plot",
                         str(tmp_path / "loss.png"), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("error: plotting needs matplotlib")
    assert "pip install matplotlib" in captured.err and "pip install '.[plot]'" in captured.err
    assert "microgpt-c[plot]" not in captured.err  # no such distribution on any index
    assert captured.out == "" and not (tmp_path / "o").exists()  # checked before training


# ------------------------------------------------------------------ interrupts and NaN
def _default_sigint():
    """In the child before exec: SIGINT back to its default disposition, in
    case the test runner inherited it ignored (a background job of a
    non-interactive shell, nohup); Python then installs its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_saves_a_checkpoint(tmp_path, docs_file):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "microgpt_c.train", "--data", str(docs_file), "--steps",
         "50000000", "--progress", "plain", "--log-every", "500", "--out", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        preexec_fn=_default_sigint)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stdout.readline()
            if line.startswith("step"):
                break
        else:
            pytest.fail("training did not start")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    m = re.match(r"interrupted after step (\d+); checkpoint saved to (.+) \(continue with "
                 r"--resume", last)
    assert m, stderr
    assert Path(m.group(2)) == out / ck.CHECKPOINT_NAME
    c = ck.load_checkpoint(out)
    assert c.train.step == int(m.group(1)) > 0 and len(c.train.losses) == c.train.step
    assert sorted(p.name for p in out.iterdir()) == [ck.CHECKPOINT_NAME]
    assert "sample " not in stdout
    # and it resumes
    more = train_cli("--data", docs_file, "--resume", out, "--stop-after", c.train.step + 3,
                     "-q", "--num-samples", 1, cwd=tmp_path)
    assert_ok(more)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, docs_file):
    out = tmp_path / "out"
    proc = train_cli("--data", docs_file, "--steps", 100, "--lr", "1e7", "--dtype", "float32",
                     "--out", out, "--save-every", 2, "--progress", "steps", cwd=tmp_path,
                     raw=True)
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    m = re.match(r"error: the (?:loss became (?:nan|inf|-inf)|gradient became NaN or infinite) "
                 r"at step (\d+);.*the last checkpoint, "
                 r"at step (\d+), is (.+) \(left unchanged\)$", last)
    assert m, stderr
    bad, good = int(m.group(1)), int(m.group(2))
    assert good == (bad - 1) // 2 * 2 and good >= 2
    c = ck.load_checkpoint(out)
    assert c.train.step == good
    assert all(map(lambda x: x == x and abs(x) != float("inf"), c.train.losses))
    assert "sample " not in stdout
    assert stdout.endswith("\r\n")  # the \r progress line was ended
