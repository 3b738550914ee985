"""Bad input gets a clear error, and nothing is lost.

Every case here is one row of the README's table of bad inputs:

* the command line (``python -m microgpt_c.train``, run as a subprocess) exits
  with status 2 and prints one ``error: ...`` line on stderr that says what
  is wrong (and how to fix it), never a traceback;
* the Python API raises a specific exception (ValueError, TypeError,
  FileNotFoundError, MemoryError or one of ``microgpt_c.errors``, all of
  which subclass one of those) with the same kind of message;
* a NaN/inf loss stops training with NonFiniteLossError naming the step, with
  the completed steps' losses and parameters intact.

Docstrings saying "BUG" or "regression" describe bugs these tests found;
all of them are fixed and the tests guard against their return.
"""
from __future__ import annotations

import concurrent.futures
import gc
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import microgpt_c
from microgpt_c import _core, _kernels as K
from microgpt_c import api, data
from microgpt_c.errors import (ConfigError, MicrogptError, ModelStateError, ModelTooLargeError,
                               NonFiniteLossError, SequenceLengthError, TokenError)

GPT = microgpt_c.GPT
TrainConfig = microgpt_c.TrainConfig

# what the API may raise for bad input (MemoryError: ModelTooLargeError)
API_ERRORS = (ValueError, TypeError, FileNotFoundError, MemoryError, MicrogptError)

SANITIZED = os.environ.get("MICROGPT_C_SANITIZE") == "1"


# ======================================================================
# The command line: every case runs as its own subprocess.  They are
# started together (a few at a time) the first time any CLI test needs a
# result, so the whole table costs a couple of seconds.
# ======================================================================
DATA_FILES = {
    "names.txt": "emma\nolivia\nava\nisabella\nsophia\nmia\n".encode(),
    "empty.txt": b"",
    "blank.txt": b"\n   \n\t\n \r\n",
    "binary.bin": b"emma\x00\x01\x02\xff\xfe\n",
    "latin1.txt": "caf\xe9\nna\xefve\n".encode("latin-1"),
    "single.txt": b"a\naa\naaa\n  a  \n",
    "long.txt": ("abcdefghij" * 12 + "\n" + "xyz" * 50 + "\n").encode(),
}

# id -> (command-line arguments, expected exit status, words the error line
# (or, for status 0, stdout) must contain (case-insensitive; a tuple means
# "any of these"))
NAMES = ["--data", "names.txt", "--num-samples", "2"]
CLI_CASES = {
    # data
    "missing-file": (["--data", "no-such-file.txt", "--steps", "2"], 2,
                     ["no-such-file.txt", "not found"]),
    "empty-file": (["--data", "empty.txt", "--steps", "2"], 2, ["empty.txt", "no documents"]),
    "blank-lines-only": (["--data", "blank.txt", "--steps", "2"], 2, ["no documents"]),
    "binary-file": (["--data", "binary.bin", "--steps", "2"], 2, ["binary"]),
    "not-utf8": (["--data", "latin1.txt", "--steps", "2"], 2, ["utf-8"]),
    "directory": (["--data", ".", "--steps", "2"], 2, ["directory"]),
    "single-character": (["--data", "single.txt", "--steps", "20", "--num-samples", "3"], 0,
                         ["vocab size: 2", "sample  3:"]),
    "longer-than-block": (["--data", "long.txt", "--steps", "10", "--block-size", "8",
                           "--num-samples", "2"], 0, ["sample  2:"]),
    # model size
    "n-embd-not-divisible": (NAMES + ["--n-embd", "10", "--n-head", "3"], 2,
                             ["divisible", "n-head"]),
    "n-layer-0": (NAMES + ["--n-layer", "0"], 2, ["n-layer"]),
    "n-embd-0": (NAMES + ["--n-embd", "0"], 2, ["n-embd"]),
    "n-head-negative": (NAMES + ["--n-head", "-4"], 2, ["n-head"]),
    "block-size-0": (NAMES + ["--block-size", "0"], 2, ["block-size"]),
    # training settings
    "steps-0": (NAMES + ["--steps", "0"], 2, ["steps"]),
    "steps-negative": (NAMES + ["--steps", "-3"], 2, ["steps"]),
    "steps-not-a-number": (NAMES + ["--steps", "ten"], 2, ["steps"]),
    "batch-size-0": (NAMES + ["--batch-size", "0"], 2, ["batch-size"]),
    "batch-size-negative": (NAMES + ["--batch-size", "-1"], 2, ["batch-size"]),
    "lr-0": (NAMES + ["--lr", "0"], 2, ["lr"]),
    "lr-negative": (NAMES + ["--lr", "-0.01"], 2, ["lr"]),
    "lr-nan": (NAMES + ["--lr", "nan"], 2, ["lr"]),
    "lr-inf": (NAMES + ["--lr", "inf"], 2, ["lr"]),
    "temperature-0": (NAMES + ["--temperature", "0"], 2, ["temperature"]),
    "temperature-negative": (NAMES + ["--temperature", "-0.5"], 2, ["temperature"]),
    "threads-0": (NAMES + ["--threads", "0"], 2, ["threads"]),
    "threads-negative": (NAMES + ["--threads", "-2"], 2, ["threads"]),
    "num-samples-negative": (NAMES + ["--num-samples", "-1"], 2, ["num-samples"]),
    # sizes too large for memory or size_t
    "too-large-for-memory": (NAMES + ["--n-embd", "1048576", "--n-head", "1"], 2,
                             [("gib", "overflow")]),
    "size-overflow": (NAMES + ["--n-embd", "268435456", "--n-head", "1",
                               "--block-size", "2000000000"], 2, [("gib", "overflow")]),
    "too-many-layers": (NAMES + ["--n-layer", "2000000000"], 2, [("gib", "overflow")]),
    "batch-too-large": (NAMES + ["--batch-size", "1000000000"], 2,
                        [("gib", "overflow", "too large", "too many"), "batch"]),
    # the loss becomes NaN: the message names the step
    "lr-1e300-nan-loss": (NAMES + ["--lr", "1e300", "--steps", "50"], 2,
                          ["step", ("nan", "inf", "finite")]),
    # integers too large for a C long / int
    "steps-1e20": (NAMES + ["--steps", "1" + "0" * 20], 2, ["steps"]),
    "threads-1e10": (NAMES + ["--threads", "10000000000", "--steps", "2"], 2, ["threads"]),
}
# cases whose failure is an open bug (tested by test_bug_* below, not by the table test)
CLI_BUG_CASES: set = set()
# cases whose refusal must come quickly (before allocating anything)
CLI_FAST_CASES = {"too-large-for-memory", "size-overflow", "too-many-layers", "batch-too-large"}


def _cli_env():
    env = dict(os.environ)
    env["MICROGPT_C_OFFLINE"] = "1"         # never download the names in a test
    env.pop("MICROGPT_C_BACKEND", None)
    env["OMP_NUM_THREADS"] = "1"            # the cases run side by side
    return env


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess, seconds: float):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.seconds = seconds

    def __repr__(self):
        return (f"exit status {self.returncode} after {self.seconds:.1f} s\n"
                f"--- stderr:\n{self.stderr}\n--- stdout (end):\n{self.stdout[-600:]}")


def _run_cli(args, cwd) -> CliResult:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "microgpt_c.train", *args], cwd=cwd,
                          env=_cli_env(), capture_output=True, text=True, timeout=300)
    return CliResult(proc, time.perf_counter() - t0)


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    for name, content in DATA_FILES.items():
        (d / name).write_bytes(content)
    return d


@pytest.fixture(scope="module")
def cli_results(cli_dir):
    """Every CLI case's result, run 4 at a time."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(_run_cli, args, cli_dir)
                   for case, (args, _, _) in CLI_CASES.items()}
        return {case: f.result() for case, f in futures.items()}


def _matches(text: str, words) -> bool:
    text = text.lower()
    for w in words:
        alternatives = w if isinstance(w, tuple) else (w,)
        if not any(a.lower() in text for a in alternatives):
            return False
    return True


def assert_cli_error(res: CliResult, words):
    """Exit status 2, no traceback, exactly one ``error`` line, and it says
    what is wrong (contains ``words``)."""
    assert res.returncode == 2, res
    assert "Traceback" not in res.stderr, res
    error_lines = [line for line in res.stderr.splitlines() if "error:" in line.lower()]
    assert len(error_lines) == 1, res
    assert _matches(error_lines[0], words), (f"the error line {error_lines[0]!r} does not "
                                             f"mention {words}")
    assert len(error_lines[0]) < 400, "the error message should be one short line"


@pytest.mark.parametrize("case", sorted(set(CLI_CASES) - CLI_BUG_CASES))
def test_cli_bad_input(case, cli_results):
    args, status, words = CLI_CASES[case]
    res = cli_results[case]
    if status == 0:
        assert res.returncode == 0, res
        assert "Traceback" not in res.stderr, res
        assert _matches(res.stdout, words), res
    else:
        assert_cli_error(res, words)
    if case in CLI_FAST_CASES:
        # the size check happens before any model is built (no timing here:
        # speed is for the benchmarks; the subprocess timeout catches a hang)
        assert "num params" not in res.stdout, res


def test_cli_nan_loss_message_names_the_step(cli_results):
    res = cli_results["lr-1e300-nan-loss"]
    assert_cli_error(res, ["step"])
    line = [ln for ln in res.stderr.splitlines() if "error:" in ln.lower()][0]
    step = int(line.lower().split("step", 1)[1].split()[0].strip(";:,."))
    assert 1 <= step <= 50


@pytest.mark.parametrize("case", ["steps-0", "lr-nan", "n-embd-not-divisible", "missing-file",
                                  "too-large-for-memory", "steps-1e20"])
def test_cli_error_is_a_single_line(case, cli_results):
    """One ``error: ...`` line on stderr, also for option values rejected by
    argparse (no usage dump).  Informational lines such as ``data: ...``
    are allowed."""
    res = cli_results[case]
    assert res.returncode == 2, res
    other = [ln for ln in res.stderr.splitlines()
             if ln.strip() and "error:" not in ln.lower()
             and not ln.startswith(("data:", "notice:", "using "))]
    assert other == [], f"stderr has more than the error line:\n{res.stderr}"


def test_cli_batch_too_large_message_says_how_to_fix_it(cli_results):
    """batch-size * block-size tokens per step beyond the C core's int32
    capacity: the message names the options to reduce."""
    assert_cli_error(cli_results["batch-too-large"], ["batch", "reduce"])


# ======================================================================
# The API: data files
# ======================================================================
@pytest.fixture
def data_dir(tmp_path):
    for name, content in DATA_FILES.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("name, exc, words", [
    ("no-such-file.txt", FileNotFoundError, ["not found"]),
    ("empty.txt", data.DataError, ["no documents"]),
    ("blank.txt", data.DataError, ["no documents"]),
    ("binary.bin", data.DataError, ["binary"]),
    ("latin1.txt", data.DataError, ["utf-8"]),
])
def test_api_bad_data_file(data_dir, name, exc, words):
    path = data_dir / name
    with pytest.raises(exc) as info:
        data.read_documents(path)
    assert _matches(str(info.value), words)
    assert isinstance(info.value, ValueError) or isinstance(info.value, FileNotFoundError)
    # and through the training entry point, before any training
    with pytest.raises(exc) as info:
        api.train(TrainConfig(steps=2, num_samples=1), str(path))
    assert _matches(str(info.value), words)


def test_api_documents_all_empty():
    with pytest.raises(data.DataError, match="no characters|no documents"):
        api.train(TrainConfig(steps=2, num_samples=1), ["", ""])
    with pytest.raises(data.DataError):
        api.train(TrainConfig(steps=2, num_samples=1), [])


def test_api_single_distinct_character_trains(data_dir):
    res = api.train(TrainConfig(steps=30, num_samples=5, seed=1), str(data_dir / "single.txt"))
    assert res.tokenizer.vocab_size == 2
    assert len(res.losses) == 30 and all(math.isfinite(x) for x in res.losses)
    assert res.losses[-1] < res.losses[0]
    assert all(set(s) <= {"a"} for s in res.samples)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_documents_longer_than_the_block_are_truncated(dtype):
    """SPEC 5: n = min(block_size, len(tokens) - 1); the rest is ignored."""
    V, T = 5, 6
    rng = np.random.default_rng(0)
    long_doc = [V - 1] + list(rng.integers(0, V - 1, size=40)) + [V - 1]
    a = GPT(V, 1, 8, 2, T, dtype)
    a.init_weights(__import__("random").Random(3))
    b = GPT(V, 1, 8, 2, T, dtype)
    b.flat_params[:] = a.flat_params
    assert a.forward_backward(long_doc) == b.forward_backward(long_doc[:T + 1])
    assert np.array_equal(a.flat_grads, b.flat_grads)
    # and in the C training loop
    corpus = np.array(long_doc + [V - 1, 0, V - 1], dtype=np.int32)
    starts = np.array([0, len(long_doc), len(corpus)])
    losses, _ = a.train_steps(corpus, starts, 0, 4, 4, batch_size=2)
    assert np.all(np.isfinite(losses))


# ======================================================================
# The API: configuration
# ======================================================================
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(n_embd=10, n_head=3), ConfigError, ["divisible"]),
    (dict(n_embd=16, n_head=32), ConfigError, ["divisible"]),
    (dict(vocab_size=0), ConfigError, ["vocab_size"]),
    (dict(vocab_size=1), ConfigError, ["vocab_size"]),
    (dict(vocab_size=-5), ConfigError, ["vocab_size"]),
    (dict(n_layer=0), ConfigError, ["n_layer"]),
    (dict(n_layer=-1), ConfigError, ["n_layer"]),
    (dict(n_embd=0), ConfigError, ["n_embd"]),
    (dict(n_embd=-16), ConfigError, ["n_embd"]),
    (dict(n_head=0), ConfigError, ["n_head"]),
    (dict(n_head=-4), ConfigError, ["n_head"]),
    (dict(block_size=0), ConfigError, ["block_size"]),
    (dict(block_size=-16), ConfigError, ["block_size"]),
    (dict(max_tokens=0), ConfigError, ["max_tokens"]),
    (dict(n_embd=16.0), TypeError, ["n_embd"]),
    (dict(n_layer="1"), TypeError, ["n_layer"]),
    (dict(block_size=True), TypeError, ["block_size"]),
    (dict(block_size=None), TypeError, ["block_size"]),
    (dict(dtype="float16"), ConfigError, ["dtype"]),
    (dict(dtype=np.float64), ConfigError, ["dtype"]),
])
def test_gpt_bad_config(kwargs, exc, words):
    args = dict(vocab_size=27)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        GPT(**args)
    assert isinstance(info.value, API_ERRORS)
    assert _matches(str(info.value), words), str(info.value)


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("steps", -1), ("steps", 1.5), ("steps", "10"), ("steps", True),
    ("n_layer", 0), ("n_embd", 0), ("n_embd", -16), ("n_head", 0), ("block_size", 0),
    ("batch_size", 0), ("batch_size", -8),
    ("lr", 0), ("lr", -0.01), ("lr", float("nan")), ("lr", float("inf")),
    ("temperature", 0), ("temperature", -1.0), ("temperature", float("nan")),
    ("threads", 0), ("threads", -2),
    ("num_samples", -1), ("eps", 0), ("beta1", 1.0), ("beta2", -0.1),
    ("dtype", "float16"), ("backend", "cuda"),
])
def test_train_config_validate(field, value):
    cfg = TrainConfig(**{field: value})
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    name = field.split("_")[0]
    assert name in str(info.value).replace("-", "_"), str(info.value)


def test_train_config_n_embd_not_divisible():
    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig(n_embd=10, n_head=3).validate()
    assert TrainConfig(n_embd=12, n_head=3).validate().n_embd == 12


# ---------------------------------------------------------------- train_steps
def _small_model(dtype="float64", V=5, seed=0):
    m = GPT(V, 1, 8, 2, 6, dtype)
    m.init_weights(__import__("random").Random(seed))
    return m


def _small_corpus(V=5):
    bos = V - 1
    docs = [[bos, 0, 1, 2, bos], [bos, 3, bos], [bos, 1, 1, 1, 1, 1, 1, 1, 1, bos]]
    corpus = np.array([t for d in docs for t in d], dtype=np.int32)
    starts = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    return corpus, starts


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_steps=-1), ["n_steps"]),
    (dict(step0=-1), ["step0"]),
    (dict(num_steps=0), ["num_steps"]),
    (dict(num_steps=-10), ["num_steps"]),
    (dict(batch_size=0), ["batch_size"]),
    (dict(batch_size=-3), ["batch_size"]),
    (dict(lr=float("nan")), [("lr", "learning rate")]),
    (dict(lr=float("inf")), [("lr", "learning rate")]),
    (dict(beta1=float("nan")), ["beta1"]),
    (dict(eps=float("inf")), ["eps"]),
])
def test_train_steps_bad_arguments(kwargs, words):
    m = _small_model()
    corpus, starts = _small_corpus()
    before = m.flat_params.copy()
    args = dict(step0=0, n_steps=2, num_steps=10)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as info:
        m.train_steps(corpus, starts, **args)
    assert _matches(str(info.value), words), str(info.value)
    assert np.array_equal(m.flat_params, before), "a refused call must not train"


@pytest.mark.parametrize("lr", [0.0, -0.01])
def test_train_steps_refuses_non_positive_learning_rate(lr):
    """lr <= 0 is refused, as by TrainConfig, Adam and the CLI (regression:
    train_steps used to check only that lr was finite, and lr < 0 climbed
    the loss)."""
    m = _small_model()
    corpus, starts = _small_corpus()
    before = m.flat_params.copy()
    with pytest.raises(ValueError, match="lr|learning rate"):
        m.train_steps(corpus, starts, 0, 2, 10, lr=lr)
    assert np.array_equal(m.flat_params, before)


def test_train_steps_zero_steps_is_a_no_op():
    m = _small_model()
    corpus, starts = _small_corpus()
    before = m.flat_params.copy()
    losses, lrs = m.train_steps(corpus, starts, 0, 0, 10)
    assert losses.shape == (0,) and lrs.shape == (0,)
    assert np.array_equal(m.flat_params, before)


@pytest.mark.parametrize("corpus, starts, exc", [
    ([4, 0, 9, 4], [0, 4], TokenError),                  # token id >= vocab
    ([4, 0, -1, 4], [0, 4], TokenError),                 # negative id
    ([4.0, 0.0, 1.0, 4.0], [0, 4], TypeError),           # float tokens
    ([[4, 0], [1, 4]], [0, 4], ValueError),              # 2-D corpus
    ([4, 0, 1, 4], [0, 3], SequenceLengthError),         # does not end at len(corpus)
    ([4, 0, 1, 4], [1, 4], SequenceLengthError),         # does not start at 0
    ([4, 0, 1, 4], [0, 1, 4], SequenceLengthError),      # a 1-token document
    ([4, 0, 1, 4], [0, 3, 2, 4], SequenceLengthError),   # decreasing offsets
    ([4, 0, 1, 4], [0.0, 4.0], ValueError),              # float offsets
    ([4, 0, 1, 4], [4], ValueError),                     # no documents
    ([], [0], ValueError),                               # empty corpus
    ([], [0, 0], SequenceLengthError),                   # an empty document
])
def test_train_steps_bad_corpus(corpus, starts, exc):
    m = _small_model()
    with pytest.raises(exc):
        m.train_steps(np.array(corpus), np.array(starts), 0, 1, 10)


def test_train_steps_accepts_any_integer_layout():
    """int64, non-contiguous and list corpora are converted, with the same result."""
    corpus, starts = _small_corpus()
    strided = np.zeros(2 * len(corpus), dtype=np.int64)[::2]
    strided[:] = corpus
    results = []
    for c in (corpus, corpus.astype(np.int64), strided, corpus.tolist()):
        m = _small_model()
        losses, _ = m.train_steps(c, starts.tolist(), 0, 3, 10, batch_size=2)
        results.append((losses, m.flat_params.copy()))
    for losses, params in results[1:]:
        assert np.array_equal(losses, results[0][0])
        assert np.array_equal(params, results[0][1])


# ======================================================================
# Sizes that overflow size_t or exceed memory: refused before allocating
# ======================================================================
def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("kwargs", [
    dict(vocab_size=2**31 - 1, n_embd=2**28, n_head=1),                 # overflows size_t
    dict(vocab_size=27, n_embd=2**29, n_head=1),                        # 4*n_embd overflows int
    dict(vocab_size=27, block_size=2**31 - 1, n_embd=4096, n_head=1),   # overflows size_t
    dict(vocab_size=27, n_layer=2**31 - 1, n_embd=1024, n_head=1),      # ~800 million GiB
    dict(vocab_size=50000, n_embd=2**20, n_head=1),                     # ~400,000 GiB
    dict(vocab_size=27, n_embd=16384, n_head=4, n_layer=64),            # ~1.5 TiB
    dict(vocab_size=27, max_tokens=2**31 - 1, n_embd=512, n_head=8),    # huge activations
])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_too_large_is_refused_before_allocating(kwargs, dtype):
    rss0 = _rss()
    with pytest.raises(ModelTooLargeError) as info:
        GPT(dtype=dtype, **kwargs)
    msg = str(info.value)
    assert "GiB" in msg or "overflow" in msg, msg
    assert "reduce" in msg or "at most" in msg, f"no hint how to fix it: {msg}"
    assert isinstance(info.value, MemoryError)
    assert _rss() - rss0 < 64 * 2**20, "it must refuse before allocating"


def test_too_large_message_says_how_much_is_needed():
    with pytest.raises(ModelTooLargeError) as info:
        GPT(50000, n_embd=2**20, n_head=1)
    msg = str(info.value)
    needed = float(msg.split("needs", 1)[1].split("GiB")[0])
    assert needed > 1000, msg


# ======================================================================
# Tokens, dtypes, shapes and contiguity at the GPT methods
# ======================================================================
@pytest.mark.parametrize("seq, exc", [
    ([4, 0, 5], TokenError),              # == vocab_size
    ([4, -1, 4], TokenError),
    ([4, 2**40, 4], TokenError),
    (np.array([4, 0, 4], dtype=np.uint64) + np.uint64(2**63), TokenError),
    ([4.0, 0.0, 4.0], TypeError),
    (np.array([True, False]), TypeError),
    (["a", "b"], TypeError),
    ([[4, 0], [0, 4]], ValueError),       # 2-D
    ("abc", ValueError),
    ([4], SequenceLengthError),           # one token: nothing to predict
    ([], SequenceLengthError),
])
def test_forward_bad_tokens(seq, exc):
    m = _small_model()
    with pytest.raises(exc):
        m.forward_backward(seq)
    with pytest.raises(exc):
        m.forward(seq)
    assert not np.any(m.flat_grads), "a refused call must not touch the gradients"


def test_forward_batch_bad_arguments():
    m = _small_model()
    with pytest.raises(SequenceLengthError):
        m.forward_backward_batch([])
    with pytest.raises(TypeError):
        m.forward_backward_batch("abc")
    with pytest.raises(TypeError):
        m.forward_backward_batch(42)
    with pytest.raises(TokenError, match="document 1"):
        m.forward_backward_batch([[4, 0, 4], [4, 7, 4]])
    with pytest.raises((ConfigError, ValueError)):
        m.forward_batch([[4, 0, 4], [4, 1, 4]], total_docs=1)   # fewer than the batch


def test_non_contiguous_and_int64_tokens_are_accepted():
    m = _small_model()
    seq = np.array([4, 0, 1, 2, 3, 4], dtype=np.int64)
    strided = np.repeat(seq, 2)[::2]
    assert not strided.flags.c_contiguous
    assert m.forward(seq) == m.forward(strided) == m.forward(seq.astype(np.int32).tolist())


@pytest.mark.parametrize("token, pos, exc", [
    (5, 0, TokenError), (-1, 0, TokenError), (0, 6, SequenceLengthError),
    (0, -1, SequenceLengthError), (1.0, 0, TypeError), (0, "1", TypeError),
])
def test_logits_bad_arguments(token, pos, exc):
    m = _small_model()
    with pytest.raises(exc):
        m.logits(token, pos)


@pytest.mark.parametrize("token, pos, exc", [(2**40, 0, TokenError),
                                             (0, 2**40, SequenceLengthError),
                                             (-2**70, 0, TokenError)])
def test_logits_huge_integers(token, pos, exc):
    """Python ints beyond a C int are range errors, not OverflowError."""
    m = _small_model()
    with pytest.raises(exc):
        m.logits(token, pos)


def test_backward_without_forward():
    m = _small_model()
    with pytest.raises(ModelStateError, match="forward"):
        m.backward()
    m.forward([4, 0, 4])
    m.logits(4, 0)        # inference discards the saved forward
    with pytest.raises(ModelStateError):
        m.backward()
    with pytest.raises(TokenError):
        m.forward([4, 9, 4])  # a refused forward leaves none behind either
    with pytest.raises(ModelStateError):
        m.backward()


def test_adam_step_bad_arguments():
    m = _small_model()
    for kwargs in (dict(lr_t=0.01, t=0), dict(lr_t=float("nan"), t=1),
                   dict(lr_t=0.01, t=1, beta2=float("inf"))):
        with pytest.raises(ValueError):
            m.adam_step(**kwargs)


# ======================================================================
# microgpt_c._kernels: dtype, shape, contiguity, ndim, read-only, ranges
# ======================================================================
def _kernel_calls(dt):
    """name -> (function, a factory of valid arguments)."""
    r = np.random.default_rng(0)

    def a(*shape):
        return r.standard_normal(shape).astype(dt)

    i32 = lambda *v: np.array(v, dtype=np.int32)  # noqa: E731
    N, C, OC, V, T, NH = 3, 4, 5, 6, 4, 2
    return {
        "encoder_forward": (K.encoder_forward,
                            lambda: [a(N, C), i32(0, 5, 2), i32(0, 1, 2), a(V, C), a(T, C)]),
        "encoder_backward": (K.encoder_backward,
                             lambda: [a(V, C), a(T, C), a(N, C), i32(0, 5, 2), i32(0, 1, 2)]),
        "rmsnorm_forward": (K.rmsnorm_forward, lambda: [a(N, C), a(N), a(N, C)]),
        "rmsnorm_backward": (K.rmsnorm_backward, lambda: [a(N, C), a(N, C), a(N, C), a(N)]),
        "matmul_forward": (K.matmul_forward, lambda: [a(N, OC), a(N, C), a(OC, C)]),
        "matmul_backward": (K.matmul_backward,
                            lambda: [a(N, C), a(OC, C), a(N, OC), a(N, C), a(OC, C)]),
        "attention_forward": (K.attention_forward,
                              lambda: [a(N, C), a(N, NH, T), a(N, C), a(N, C), a(N, C)]),
        "attention_backward": (K.attention_backward,
                               lambda: [a(N, C), a(N, C), a(N, C), a(N, C), a(N, NH, T),
                                        a(N, C), a(N, C), a(N, C)]),
        "relu_forward": (K.relu_forward, lambda: [a(7), a(7)]),
        "relu_backward": (K.relu_backward, lambda: [a(7), a(7), a(7)]),
        "residual_forward": (K.residual_forward, lambda: [a(7), a(7), a(7)]),
        "residual_backward": (K.residual_backward, lambda: [a(7), a(7), a(7)]),
        "crossentropy_softmax_forward": (K.crossentropy_softmax_forward,
                                         lambda: [a(N), a(N, V), a(N, V), i32(0, 5, 3)]),
        "crossentropy_softmax_backward": (K.crossentropy_softmax_backward,
                                          lambda: [a(N, V), a(N), a(N, V), i32(0, 5, 3)]),
        "adam_update": (K.adam_update,
                        lambda: [a(7), a(7), a(7), a(7), 0.01, 0.85, 0.99, 1e-8, 1]),
    }


KERNELS = sorted(_kernel_calls(np.float64))


def _float_positions(args):
    return [i for i, x in enumerate(args) if isinstance(x, np.ndarray) and x.dtype.kind == "f"]


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_valid_call_works(name, dt):
    fn, make = _kernel_calls(dt)[name]
    fn(*make())


@pytest.mark.parametrize("mutation", ["int-dtype", "mixed-dtype", "wrong-shape",
                                      "non-contiguous", "wrong-ndim", "read-only-output",
                                      "list-instead-of-array"])
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_rejects_bad_arrays(name, mutation):
    fn, make = _kernel_calls(np.float64)[name]
    args = make()
    floats = _float_positions(args)
    first, last = floats[0], floats[-1]
    if mutation == "int-dtype":
        args = [x.astype(np.int64) if i in floats else x for i, x in enumerate(args)]
    elif mutation == "mixed-dtype":
        args[last] = args[last].astype(np.float32)
    elif mutation == "wrong-shape":
        x = args[last]
        args[last] = np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), dtype=x.dtype)
    elif mutation == "non-contiguous":
        x = args[last]
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        big[..., ::2] = x
        args[last] = big[..., ::2]
    elif mutation == "wrong-ndim":
        args[last] = args[last][..., None]
    elif mutation == "read-only-output":
        args[first].setflags(write=False)
    elif mutation == "list-instead-of-array":
        args[last] = args[last].tolist()
    with pytest.raises((ValueError, TypeError)):
        fn(*args)


@pytest.mark.parametrize("name, index, value", [
    ("encoder_forward", 1, [0, 6, 2]),               # token id >= V
    ("encoder_forward", 1, [0, -1, 2]),
    ("encoder_forward", 2, [0, 1, 4]),               # position >= T
    ("encoder_backward", 3, [0, 6, 2]),
    ("encoder_backward", 4, [-1, 1, 2]),
    ("crossentropy_softmax_forward", 3, [0, 6, 3]),  # target >= V
    ("crossentropy_softmax_backward", 3, [0, -2, 3]),
    ("encoder_forward", 1, [0, 1]),                  # N mismatch
])
def test_kernel_rejects_bad_indices(name, index, value):
    fn, make = _kernel_calls(np.float64)[name]
    args = make()
    before = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
    args[index] = np.array(value, dtype=np.int32)
    with pytest.raises(ValueError):
        fn(*args)
    # nothing was written
    assert np.array_equal(args[0], before[0])


def test_kernel_attention_positions_must_fit():
    fn, make = _kernel_calls(np.float64)["attention_forward"]
    args = make()
    with pytest.raises(ValueError):
        fn(*args, p0=2)          # p0 + N > T and k/v too short
    with pytest.raises(ValueError):
        fn(*args, p0=-1)
    out, att, q, k, v = args
    with pytest.raises(ValueError):   # n_head (att.shape[1]) must divide C
        fn(out, np.zeros((3, 3, 4)), q, k, v)


def test_kernel_adam_needs_a_positive_step():
    fn, make = _kernel_calls(np.float64)["adam_update"]
    args = make()
    args[-1] = 0
    with pytest.raises(ValueError):
        fn(*args)


# ======================================================================
# NaN / inf in the loss: NonFiniteLossError naming the step; nothing lost
# ======================================================================
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("tensor, value", [("wte", np.inf), ("wpe", -np.inf),
                                           ("lm_head", np.nan), ("layer0.attn_wq", np.nan),
                                           ("layer0.mlp_fc2", np.inf)])
def test_non_finite_parameter_stops_training(dtype, tensor, value):
    """A NaN/inf parameter makes the next step's loss non-finite: that step is
    reported (1-based, counting from step0) and nothing is updated."""
    m = _small_model(dtype)
    corpus, starts = _small_corpus()
    good, _ = m.train_steps(corpus, starts, 0, 4, 20)
    m.params[tensor][...] = value
    before = m.flat_params.copy()
    m_before, v_before = m.adam_m.copy(), m.adam_v.copy()
    with pytest.raises(NonFiniteLossError) as info:
        m.train_steps(corpus, starts, 4, 10, 20)
    err = info.value
    assert err.step == 5
    assert "step 5" in str(err)
    assert len(err.losses) == 0
    # the failing step's update was not applied: nothing else changed
    assert np.array_equal(m.flat_params, before, equal_nan=True)
    assert np.array_equal(m.adam_m, m_before) and np.array_equal(m.adam_v, v_before)
    assert np.all(np.isfinite(good))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_non_finite_gradient_is_not_applied(dtype):
    """A step whose loss is finite but whose gradient is not stops training
    too, before its update.  Here inf in mlp_fc1 makes the pre-activations
    NaN, ReLU maps NaN to 0 (as the reference's max(0, x) does), so the
    loss stays finite while the backward computes 0 * inf = NaN.
    (Regression: the NaN update used to be applied and the error came one
    step later, with the parameters and Adam moments already destroyed.)"""
    m = _small_model(dtype)
    corpus, starts = _small_corpus()
    m.train_steps(corpus, starts, 0, 4, 20)
    m.params["layer0.mlp_fc1"][...] = np.inf
    before = m.flat_params.copy()
    m_before, v_before = m.adam_m.copy(), m.adam_v.copy()
    with pytest.raises(NonFiniteLossError) as info:
        m.train_steps(corpus, starts, 4, 10, 20)
    assert info.value.step == 5 and "step 5" in str(info.value)
    assert np.array_equal(m.flat_params, before)
    assert np.array_equal(m.adam_m, m_before) and np.array_equal(m.adam_v, v_before)


@pytest.mark.parametrize("dtype, lr", [("float64", 1e300), ("float32", 1e30)])
def test_fused_training_step_checks_the_gradient(dtype, lr):
    """BUG: mg_train_steps checks the gradient for NaN/inf only on the first
    step of each call (i == 0: separate mg_backward + mg_adam_step, which
    refuses a non-finite gradient); the later steps use the fused
    mg_backward_adam_f64/_f32, which applies each weight's update as soon as
    its gradient tile is done and never checks.  So the same run fails at a
    different step, with different parameters, depending on how it is cut
    into train_steps calls (api.train grows its chunks, the CLI too):
    lr=1e300 (float64; 1e30 float32): one call reports "the loss became nan
    at step 3" with every parameter NaN; step-by-step calls report "the
    gradient became NaN or infinite at step 2" with the step-1 parameters
    intact.  (At step 2 the weights are ~lr, RMSNorm's mean(x*x) overflows,
    the forward is finite (loss log V) and the backward is 0 * inf = NaN.)
    Fix: in the fused path, check the gradient tiles before applying them
    (e.g. accumulate the isfinite flag of every tile, and for a
    non-finite one stop before any update -- which needs the check before
    the first weight is touched: compute the backward's activation
    gradients first, or fall back to the unfused path when the loss or any
    activation gradient is non-finite), or check the weights' updates and
    undo; the cheapest correct option may be to keep the fused path only
    when a finite check of the activation gradients (dacts) passes."""
    corpus, starts = _small_corpus()
    a = _small_model(dtype)
    with pytest.raises(NonFiniteLossError) as one_call:
        a.train_steps(corpus, starts, 0, 50, 50, lr=lr)
    b = _small_model(dtype)
    for k in range(50):
        try:
            b.train_steps(corpus, starts, k, 1, 50, lr=lr)
        except NonFiniteLossError as exc:
            per_step = exc
            break
    else:
        pytest.fail("no NonFiniteLossError step by step")
    assert one_call.value.step == per_step.step, (
        f"one call: {one_call.value}; step by step: {per_step}")
    for name, buf in (("params", a.flat_params), ("adam_m", a.adam_m), ("adam_v", a.adam_v)):
        assert np.all(np.isfinite(buf)), f"{name} of the last completed step are not finite"


def test_float32_learning_rate_beyond_float_range():
    """(Was a bug, low severity): a float32 model accepts lr=1e300, which is inf as
    a float: the first update makes every parameter inf/NaN and the error
    only comes at the next step.  Fix: refuse, in train_steps / adam_step /
    Adam for float32 models, a learning rate that is not finite as a float32
    (lr >= 3.4e38) with a ValueError naming lr."""
    corpus, starts = _small_corpus()
    m = _small_model("float32")
    try:
        m.train_steps(corpus, starts, 0, 5, 5, lr=1e300)
    except ValueError as exc:
        if not isinstance(exc, NonFiniteLossError):
            assert "lr" in str(exc) or "learning rate" in str(exc)
            return
    assert np.all(np.isfinite(m.flat_params)), "parameters destroyed by an lr of inf"


def test_non_finite_forward():
    m = _small_model()
    m.params["wpe"][0, 0] = np.inf
    with pytest.raises(NonFiniteLossError):
        m.forward_backward([4, 0, 1, 4])
    with pytest.raises(ModelStateError):
        m.backward()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_huge_learning_rate_keeps_completed_steps(dtype):
    """lr=1e300 blows the loss up after a few steps: the error names the step,
    carries the completed steps' losses, and the parameters are those after
    the last completed step (same as a run that stopped there)."""
    corpus, starts = _small_corpus()
    a = _small_model(dtype)
    lr = 1e300 if dtype == "float64" else 1e30   # float32 refuses an lr beyond its range
    with pytest.raises(NonFiniteLossError) as info:
        a.train_steps(corpus, starts, 0, 50, 50, lr=lr)
    err = info.value
    done = err.step - 1
    assert 0 <= done < 50 and f"step {err.step}" in str(err)
    assert len(err.losses) == done
    b = _small_model(dtype)
    if done:
        losses, _ = b.train_steps(corpus, starts, 0, done, 50, lr=lr)
        assert np.array_equal(losses, err.losses)
    assert np.array_equal(a.flat_params, b.flat_params, equal_nan=True)
    assert np.array_equal(a.adam_m, b.adam_m, equal_nan=True)
    # (that they are finite: test_bug_fused_training_step_skips_the_gradient_check)


def test_api_train_nan_loss_raises_with_step():
    cfg = TrainConfig(steps=50, lr=1e300, num_samples=1)
    with pytest.raises(NonFiniteLossError) as info:
        api.train(cfg, ["emma", "olivia", "ava", "mia"])
    assert info.value.step >= 1
    assert f"step {info.value.step}" in str(info.value)


# ======================================================================
# softmax_temperature: bad temperatures and logits
# ======================================================================
@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan"), float("inf"), -float("inf")])
def test_softmax_temperature_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        microgpt_c.softmax_temperature(np.zeros(3), temperature)


def test_softmax_temperature_bad_logits():
    with pytest.raises(ValueError):
        microgpt_c.softmax_temperature(np.zeros(0), 1.0)
    with pytest.raises(ValueError):
        microgpt_c.softmax_temperature(np.zeros((2, 2)), 1.0)
    with pytest.raises((ValueError, FloatingPointError)):
        microgpt_c.softmax_temperature(np.array([0.0, np.nan]), 1.0)


def test_softmax_tiny_temperature():
    """A tiny positive temperature whose reciprocal overflows (1e-320) is
    either refused with a message naming the temperature or gives the
    one-hot argmax -- not "softmax: loss is not finite" (regression)."""
    z = np.array([0.5, 2.0, -1.0])
    try:
        p = microgpt_c.softmax_temperature(z, 1e-320)
    except ValueError as exc:
        assert "temperature" in str(exc), str(exc)
    else:
        assert np.array_equal(p, [0.0, 1.0, 0.0])


# ======================================================================
# Memory: creating and freeing models does not leak
# ======================================================================
@pytest.mark.skipif(SANITIZED, reason="ASan's allocator quarantines freed memory")
@pytest.mark.parametrize("cls", [_core.GPT, GPT], ids=["_core.GPT", "microgpt_c.GPT"])
def test_models_are_freed_rss_stable(cls):
    """Creating and freeing 1000 models leaves RSS where it was.
    (Regression: GPT -> its NumPy views -> memoryview -> _View -> GPT was a
    reference cycle through ndarray, which the cyclic GC cannot traverse, so
    no model was ever freed: +230 MiB for these 1000 default models.)"""
    for _ in range(50):          # warm up the allocator and caches
        cls(27)
    gc.collect()
    rss0 = _rss()
    for _ in range(1000):
        m = cls(27)
        m.params["wte"][0, 0] = 1.0     # touch the buffers
        del m
    gc.collect()
    grown = _rss() - rss0
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 1000 models"


@pytest.mark.skipif(SANITIZED, reason="ASan's allocator quarantines freed memory")
def test_training_does_not_grow_memory():
    """Repeated train_steps / forward / logits calls on one model reuse its buffers."""
    m = _small_model()
    corpus, starts = _small_corpus()
    m.train_steps(corpus, starts, 0, 5, 10_000, batch_size=3)
    gc.collect()
    rss0 = _rss()
    for i in range(300):
        m.train_steps(corpus, starts, 5 + i, 1, 10_000, batch_size=3)
        m.forward_backward([4, 0, 1, 4])
        m.zero_grad()
        m.logits(4, 0)
    gc.collect()
    assert _rss() - rss0 < 8 * 2**20
