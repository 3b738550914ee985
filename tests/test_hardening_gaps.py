"""Issue 13, the gaps a review of the first pass found: large inputs held
compactly (the vectorised parser, shuffle and packing give exactly what the
plain-Python path gives, in less memory), SIGTERM outside the training loop,
outputs against an input.txt read on resume and in the API's ``out``, NaN
parameters through the API's sampling, FIFOs and ``/dev/zero`` through the
CLIs, the metrics file's fsync and output-directory errors that say what to
do.

Subprocesses run with timeouts; no assertion depends on how long anything
takes."""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microgpt_c
from microgpt_c import checkpoint as ck
from microgpt_c import data as data_mod
from microgpt_c import documents as docs_mod
from microgpt_c import safeio, sampling
from microgpt_c import training
from microgpt_c.api import TrainConfig, train
from microgpt_c.data import DataError, Documents, Tokenizer, pack_corpus
from microgpt_c.errors import CheckpointError, NonFiniteLossError, OutputIsInputError

from test_cli import SMALL, assert_error, assert_ok, env, sample_cli, train_cli

TIMEOUT = 120
POSIX = os.name == "posix"


def names(n, seed=0, alphabet="abcdefghijklmnopqrstuvwxyz"):
    r = random.Random(seed)
    return ["".join(r.choice(alphabet) for _ in range(r.randint(2, 11))) for _ in range(n)]


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "d.txt"
    p.write_text("\n".join(names(300, seed=3, alphabet="abcdefghij")) + "\n")
    return p


def small(**kw):
    base = dict(steps=6, n_embd=8, n_head=2, block_size=8, num_samples=0, backend="c")
    base.update(kw)
    return TrainConfig(**base)


# ================================================================== 1. large inputs
# -- the parser: exactly _parse_documents, errors included
_PIECES = ["a", "b", "Z", "é", "ß", "€", "中", "😀", " ", "  ", "\t", "\r", "\n", "\r\n",
           "\n\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u1680", "\u2009",
           "\u2028", "\u2029", "\u202f", "\u3000", "\ufeff", " " * 70, "\u3000" * 70,
           "x" * 30]


def _parse_both(raw):
    """(result or error message) of the reference parser and of the vectorised one."""
    out = []
    for parse in (lambda: data_mod._parse_documents(raw, "f.txt"),
                  lambda: docs_mod.parse_documents(raw, "f.txt", data_mod._HINT,
                                                   DataError).tolist()):
        try:
            out.append(parse())
        except DataError as exc:
            out.append(("error", str(exc)))
    return out


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), max_size=40),
       st.sampled_from([b"", b"\xef\xbb\xbf"]),
       st.sampled_from([b"", b"\xff", b"\x00", b"\xc3"]),
       st.integers(0, 40))
def test_vectorised_parser_is_the_reference_parser(pieces, bom, bad, where):
    raw = bom + "".join(pieces).encode("utf-8")
    if bad:
        raw = raw[:where] + bad + raw[where:]
    reference, vectorised = _parse_both(raw)
    assert vectorised == reference


@pytest.mark.parametrize("raw", [
    b"", b"\n", b" \r\n\t", b"emma", b"emma\n", b"emma\nava", b"\nemma\n\n", b"emma\r\nava\r",
    b"\r\r\n", b"  emma  \n\tava\t\n", b"\xef\xbb\xbfemma\n", "é\nü ".encode(),
    "😀\n a \u3000".encode(), b"a\x00b", b"a\xffb", (" " * 200 + "x" + " " * 200).encode(),
    b"x" * 5000 + b"\n" + b"y"])
def test_vectorised_parser_edge_cases(raw):
    reference, vectorised = _parse_both(raw)
    assert vectorised == reference


def test_whitespace_is_str_isspace():
    every = [c for c in range(0x110000) if chr(c).isspace()]
    assert list(docs_mod.WHITESPACE) == every
    for dtype, top in ((np.uint8, 256), (np.uint16, 0x10000), (np.uint32, 0x110000)):
        cps = np.arange(top, dtype=dtype)
        assert np.flatnonzero(docs_mod._is_space(cps)).tolist() == [c for c in every if c < top]


def test_code_points_are_narrow_and_exact():
    for text, dtype in (("abc", np.uint8), ("aé\xff", np.uint8), ("a€", np.uint16),
                        ("a😀", np.uint32)):
        cps = docs_mod.narrow_code_points(text)
        assert cps.dtype == dtype and cps.tolist() == [ord(c) for c in text]
        assert docs_mod._decode(cps) == text


# -- the shuffle: exactly random.shuffle, permutation and state
@pytest.mark.parametrize("n", [2, 3, 5, 31, 64, 65, 300, 4097, 12345])
def test_vectorised_shuffle_is_random_shuffle(n):
    for seed in (0, 1, 42, 2**40 + 3):
        a, b = random.Random(seed), random.Random(seed)
        items = list(range(n))
        a.shuffle(items)
        perm = docs_mod._fast_shuffle(b, n, small_bound=4)  # every path, also for small n
        assert perm.tolist() == items
        assert a.getstate() == b.getstate()


def test_long_shuffle_is_random_shuffle():
    n = docs_mod._FAST_SHUFFLE_MIN * 3 + 17     # the real thresholds
    a, b = random.Random(7), random.Random(7)
    items = list(range(n))
    a.shuffle(items)
    assert docs_mod.shuffle_permutation(b, n).tolist() == items
    assert a.getstate() == b.getstate() and a.random() == b.random()
    assert docs_mod._fast_shuffle_ok()


def test_shuffle_of_a_subclass_or_short_list_is_random_shuffle():
    class Mine(random.Random):
        pass
    for rng_a, rng_b, n in ((Mine(3), Mine(3), 50000), (random.Random(3), random.Random(3), 10)):
        items = list(range(n))
        rng_a.shuffle(items)
        assert docs_mod.shuffle_permutation(rng_b, n).tolist() == items
        assert rng_a.getstate() == rng_b.getstate()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 300), st.randoms(use_true_random=False))
def test_permutation_from_draws_is_the_swap_loop(n, r):
    j = np.array([0] + [r.randint(0, i) for i in range(1, n)], dtype=np.int64)
    x = list(range(n))
    for i in range(n - 1, 0, -1):
        x[i], x[j[i]] = x[j[i]], x[i]
    assert docs_mod._permutation_from_draws(j).tolist() == x


def test_shuffle_documents_of_a_list_is_in_place_random_shuffle():
    docs = names(docs_mod._FAST_SHUFFLE_MIN + 5)
    expected = list(docs)
    random.Random(42).shuffle(expected)
    rng = random.Random(42)
    assert data_mod.shuffle_documents(docs, rng) is docs and docs == expected


# -- Documents: a Sequence[str] equal to the list
@pytest.mark.parametrize("alphabet", ["abc", "aé\xff", "a€中", "a😀b"])
def test_documents_behave_like_the_list(alphabet, monkeypatch):
    monkeypatch.setattr(docs_mod, "CHUNK_CHARS", 7)     # many chunks
    ref = names(200, seed=5, alphabet=alphabet)
    d = Documents.from_strings(ref)
    assert len(d) == len(ref) and list(d) == ref and d == ref and d.tolist() == ref
    assert d[0] == ref[0] and d[-1] == ref[-1] and d[17] == ref[17]
    with pytest.raises(IndexError):
        d[len(ref)]
    assert d[10:20] == ref[10:20] and list(d[150:]) == ref[150:] and d[5:5] == []
    assert d[::3] == ref[::3]
    assert d[10:20].lengths().tolist() == [len(x) for x in ref[10:20]]
    assert d.sha256() == data_mod.sha256_of_documents(ref)
    assert d[30:90].sha256() == data_mod.sha256_of_documents(ref[30:90])
    assert Tokenizer(d).uchars == Tokenizer(ref).uchars == sorted(set("".join(ref)))
    perm = np.random.default_rng(0).permutation(len(ref))
    assert d.take(perm) == [ref[i] for i in perm]
    probes = [ref[3], ref[199], "", "zzzzzzzzzzzzzzzz", ref[3] + "x", "a\nb", "😀"]
    assert d.contains(probes) == [p in set(ref) for p in probes]
    assert d != ref[:-1] and (d == 3) is False


def test_pack_corpus_of_documents_is_that_of_the_list(monkeypatch):
    for alphabet in ("abcdefgh", "aé€😀"):
        ref = names(500, seed=9, alphabet=alphabet)
        tok = Tokenizer(ref)
        want_c, want_s = pack_corpus(tok, ref)
        for chunk in (docs_mod.CHUNK_CHARS, 5, 1):
            monkeypatch.setattr(docs_mod, "CHUNK_CHARS", chunk)
            d = Documents.from_strings(ref)
            got_c, got_s = pack_corpus(tok, d)
            assert np.array_equal(got_c, want_c) and np.array_equal(got_s, want_s)
            sub_c, sub_s = pack_corpus(tok, d[100:300])          # a slice (the val split)
            ref_c, ref_s = pack_corpus(tok, ref[100:300])
            assert np.array_equal(sub_c, ref_c) and np.array_equal(sub_s, ref_s)
    with pytest.raises(DataError) as plain:
        pack_corpus(Tokenizer(["abc"]), ["ab", "abd"])
    with pytest.raises(DataError) as compact:
        pack_corpus(Tokenizer(["abc"]), Documents.from_strings(["ab", "abd"]))
    assert str(compact.value) == str(plain.value)


def test_encode_text_and_sha_in_chunks_are_unchanged(monkeypatch):
    text = "Hello, wörld!\n\tcode € 😀\n" * 50
    tok = Tokenizer([text])
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")   # the former encode_text
    uniq, inverse = np.unique(codes, return_inverse=True)
    table = {ord(ch): i for i, ch in enumerate(tok.uchars)}
    want = np.array([table[int(c)] for c in uniq], dtype=np.int32)[inverse.reshape(-1)]
    docs = ["abc", "déf", "", "😀x"] * 40
    sha = __import__("hashlib").sha256("\n".join(docs).encode()).hexdigest()
    for chunk in (data_mod._CHUNK_CHARS, 7, 1):
        monkeypatch.setattr(data_mod, "_CHUNK_CHARS", chunk)
        got = data_mod.encode_text(tok, text)
        assert got.dtype == np.int32 and np.array_equal(got, want)
        assert data_mod.sha256_of_documents(docs) == sha
        assert data_mod.sha256_of_documents([text]) == \
            __import__("hashlib").sha256(text.encode()).hexdigest()
        assert Tokenizer([text]).uchars == tok.uchars
    with pytest.raises(DataError, match="not in the tokenizer vocabulary: 'Q'"):
        data_mod.encode_text(tok, text + "Q")


def test_training_on_a_file_is_training_on_its_list(tmp_path):
    """A data file (read into Documents) trains exactly as its documents
    given as a list: losses, parameters, samples, the split, the data hash
    (a run on the file resumes with the list)."""
    path = tmp_path / "d.txt"
    lines = names(400, seed=11) + ["  padded  ", "", "\tx"]
    path.write_text("\r\n".join(lines) + "\r\n")
    listed = data_mod.read_documents(path)
    cfg = small(steps=12, val_fraction=0.1, eval_every=4, num_samples=5)
    a = train(cfg, path, out=tmp_path / "run", stop_after=6)
    b = train(cfg, listed, stop_after=6)
    assert isinstance(a.docs, Documents) and isinstance(b.docs, list)
    assert a.docs == b.docs and a.losses == b.losses and a.val_losses == b.val_losses
    assert a.samples == b.samples and a.samples_in_data == b.samples_in_data
    assert np.array_equal(a.model.flat_params, b.model.flat_params)
    c = train(None, listed, resume=tmp_path / "run")   # same data hash, so it resumes
    d = train(cfg, listed)
    assert c.losses == d.losses


def _traced_peak_and_retained(path, mode):
    cfg = TrainConfig(data=str(path), data_mode=mode, steps=1, num_samples=0).validate()
    tracemalloc.start()
    try:
        docs, _, tok, _, _ = training._prepare_data(None, cfg, None, lambda m: None)
        run = training._RunData(cfg, docs, tok, lambda m: None)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del run, docs
    return peak / path.stat().st_size, retained / path.stat().st_size


def test_loading_memory_is_a_small_multiple_of_the_file(tmp_path):
    """Traced memory (Python objects and NumPy buffers) of reading, checking,
    shuffling and packing a 4 MB file of names: the documents and the packed
    corpus held are under 10x the file in lines mode (a list of str and the
    corpus was 15x), text mode's peak under 20x (np.unique over the text
    was 38x)."""
    path = tmp_path / "big.txt"
    path.write_text("\n".join(names(540_000, seed=1)) + "\n")
    assert path.stat().st_size > 3_500_000
    _, retained = _traced_peak_and_retained(path, "lines")
    assert retained < 10
    peak, _ = _traced_peak_and_retained(path, "text")
    assert peak < 20


def test_reading_a_small_file_allocates_what_it_holds(tmp_path):
    """os.read allocates its whole request first: asking a small file for
    1 GiB (the read chunk) would fail under a memory limit."""
    p = tmp_path / "small.txt"
    p.write_text("emma\nava\n")
    tracemalloc.start()
    try:
        raw = safeio.read_regular_file(p, what="data file", error=DataError, limit=2**31)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raw == b"emma\nava\n" and peak < 2**20


# ================================================================== 2. SIGTERM outside training
_SLOW_LOAD = r"""
import sys, time
from microgpt_c import safeio
real = safeio.read_regular_file
def read_then_wait(path, **kw):
    raw = real(path, **kw)
    if kw.get("what") == "data file":    # the data is being loaded: signal now
        print("MARK loading", file=sys.stderr, flush=True)
        for _ in range(1200):
            time.sleep(0.05)
    return raw
safeio.read_regular_file = read_then_wait
from microgpt_c.train import main
sys.exit(main(sys.argv[1:]))
"""

_MARK_SAMPLING = r"""
import sys
from microgpt_c import sampling
real = sampling._sample_in_c
def mark_then_sample(*a, **k):
    print("MARK sampling", file=sys.stderr, flush=True)
    return real(*a, **k)
sampling._sample_in_c = mark_then_sample
from microgpt_c.{module} import main
sys.exit(main(sys.argv[1:]))
"""


def _sigterm_after_mark(code, args, cwd):
    """Run ``code`` with ``args``; SIGTERM it once it prints MARK on stderr.
    Returns (returncode, stdout, the stderr lines after the mark)."""
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), preexec_fn=lambda: signal.signal(signal.SIGTERM,
                                                                        signal.SIG_DFL))
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            line = proc.stderr.readline()
            if line.startswith("MARK") or not line:
                break
        else:
            pytest.fail("the marker never came")
        assert line.startswith("MARK"), proc.communicate(timeout=TIMEOUT)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, stderr.splitlines()


def test_sigterm_while_the_data_is_loaded(tmp_path, docs_file):
    out, metrics = tmp_path / "out", tmp_path / "m.jsonl"
    rc, stdout, err = _sigterm_after_mark(
        _SLOW_LOAD, ["--data", docs_file, "--steps", 5, *SMALL, "--out", out,
                     "--metrics-out", metrics], tmp_path)
    assert rc == 143 and err == ["terminated (SIGTERM)"], (rc, err)
    assert stdout == "" and not out.exists() and not metrics.exists()


def test_sigterm_while_sampling_from_a_checkpoint(tmp_path, docs_file):
    d = tmp_path / "run"
    train(small(), docs_file, out=d)
    code = _MARK_SAMPLING.replace("{module}", "sample")
    rc, stdout, err = _sigterm_after_mark(code, ["--checkpoint", d, "--num-samples", 3_000_000],
                                          tmp_path)
    assert rc == 143 and err == ["terminated (SIGTERM)"], (rc, err)
    assert stdout == ""


def test_sigterm_while_sampling_after_training_keeps_the_checkpoint(tmp_path, docs_file):
    out = tmp_path / "out"
    code = _MARK_SAMPLING.replace("{module}", "train")
    rc, stdout, err = _sigterm_after_mark(
        code, ["--data", docs_file, "--steps", 8, *SMALL, "--out", out, "-q",
               "--num-samples", 3_000_000], tmp_path)
    assert rc == 143 and err == ["terminated (SIGTERM)"], (rc, err)
    c = ck.load_checkpoint(out)            # saved before sampling: nothing lost
    assert c.train.step == 8 and len(c.train.losses) == 8


def test_sampling_in_chunks_is_sampling_at_once(monkeypatch):
    tok = Tokenizer(names(50, seed=2))
    m = microgpt_c.GPT(tok.vocab_size, 1, 8, 2, 8)
    m.init_weights(random.Random(0))
    whole_rng = random.Random(5)
    whole = sampling.sample_names(m, tok, whole_rng, 50, 0.7, top_k=5, prefix="a")
    monkeypatch.setattr(sampling, "C_SAMPLE_CHUNK", 3)
    calls = []
    orig = microgpt_c.GPT.sample_tokens
    monkeypatch.setattr(microgpt_c.GPT, "sample_tokens",
                        lambda self, *a: calls.append(a[-1]) or orig(self, *a))
    rng = random.Random(5)
    assert sampling.sample_names(m, tok, rng, 50, 0.7, top_k=5, prefix="a") == whole
    assert rng.getstate() == whole_rng.getstate()
    assert calls == [3] * 16 + [2]          # in C, 3 names a call


def test_second_sigterm_in_the_loop_is_terminated_not_interrupted():
    deferred = training._DeferredInterrupt()
    deferred._handler(signal.SIGTERM, None)
    with pytest.raises(microgpt_c.errors.Terminated):
        deferred._handler(signal.SIGTERM, None)
    deferred = training._DeferredInterrupt()
    deferred._handler(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt) as info:
        deferred._handler(signal.SIGINT, None)
    assert not isinstance(info.value, microgpt_c.errors.Terminated)


# ================================================================== 3. outputs vs input.txt
def _old_checkpoint_of_input_txt(tmp_path):
    """A run on ./input.txt whose checkpoint names no data source (older versions)."""
    (tmp_path / "input.txt").write_text("\n".join(names(200, seed=4)) + "\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = train(small(), None, out="run", stop_after=3)
    finally:
        os.chdir(cwd)
    state = r.model.train_state
    assert state.train_config.pop("data_source") == str(tmp_path / "input.txt")
    state.train_config.pop("data", None)
    ck.save_checkpoint(tmp_path / "run", r.model, uchars="".join(r.tokenizer.uchars),
                       train=state)
    return tmp_path / "input.txt"


def test_resume_reading_input_txt_refuses_it_as_an_output(tmp_path):
    data = _old_checkpoint_of_input_txt(tmp_path)
    before = data.read_bytes()
    for flag in ("--metrics-out", "--plot"):
        proc = train_cli("--resume", "run", flag, "input.txt", "-q", cwd=tmp_path)
        assert_error(proc, f"{flag} input.txt is the same file as --data input.txt",
                     "would destroy an input")
        assert data.read_bytes() == before
    # it does resume on input.txt with another metrics file
    proc = train_cli("--resume", "run", "--metrics-out", "m.jsonl", "-q", "--num-samples", 1,
                     cwd=tmp_path)
    assert_ok(proc)
    assert data.read_bytes() == before and (tmp_path / "m.jsonl").read_text().count("\n") == 3


def test_api_out_that_is_the_data_file_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    data = out / ck.CHECKPOINT_NAME
    data.write_text("\n".join(names(100)) + "\n")
    before = data.read_bytes()
    with pytest.raises(OutputIsInputError, match="is the same file as data"):
        train(small(), data, out=out)
    link = tmp_path / "link.txt"
    link.symlink_to(data)
    with pytest.raises(OutputIsInputError, match="out .* is the same file as data"):
        train(small(), link, out=out)
    with pytest.raises(OutputIsInputError):
        train(small(data=str(link)), None, out=out)
    other = tmp_path / "o2"
    other.mkdir()
    (other / training.BEST_NAME).symlink_to(data)
    with pytest.raises(OutputIsInputError, match=r"out \(keep_best\)"):
        train(small(keep_best=True, val_fraction=0.2), data, out=other)
    # input.txt read from the current directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "input.txt").symlink_to(data)
    with pytest.raises(OutputIsInputError, match="data input.txt"):
        train(small(), None, out=out)
    assert data.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [ck.CHECKPOINT_NAME]
    # documents given as a list read no file: nothing to refuse
    assert train(small(), names(50), out=tmp_path / "fine").checkpoint is not None


# ================================================================== 4. NaN parameters, API
def _nan_checkpoint(tmp_path, docs_file):
    d = tmp_path / "nan"
    r = train(small(), docs_file, out=d, stop_after=3)
    r.model.flat_params[0] = float("nan")
    ck.save_checkpoint(d, r.model, uchars="".join(r.tokenizer.uchars), train=r.model.train_state)
    return d / ck.CHECKPOINT_NAME


def test_api_sampling_of_a_nan_checkpoint_names_it(tmp_path, docs_file):
    path = _nan_checkpoint(tmp_path, docs_file)
    cli_line = assert_error(sample_cli("--checkpoint", path, cwd=tmp_path), str(path))
    message = cli_line[len("error: "):]
    model = microgpt_c.GPT.load(path)
    for call in (lambda: model.sample(),
                 lambda: model.sample(3, seed=1, prefix="a"),
                 lambda: microgpt_c.load(path).sample(num_samples=2),
                 lambda: sampling.sample_names(model, model.tokenizer, random.Random(0), 2, 0.5),
                 lambda: sampling.generate(model, model.tokenizer, random.Random(0), 2, 30, 0.5),
                 lambda: sampling.generate(model, model.tokenizer, random.Random(0), 1, 5, 0.5,
                                           prefix="a", text_mode=True)):
        with pytest.raises(CheckpointError) as info:
            call()
        assert str(info.value) == message
        assert "softmax" not in message and "'wte'" in message


def test_api_sampling_of_a_model_made_non_finite_names_the_parameter(tmp_path, docs_file):
    d = tmp_path / "ok"
    train(small(), docs_file, out=d)
    model = microgpt_c.GPT.load(d)
    assert len(model.sample(2)) == 2 and model.checkpoint_non_finite is None
    model.params["lm_head"][0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="parameter 'lm_head' holds non-finite"):
        model.sample(2)


# ================================================================== 5. special files, CLI
@pytest.mark.skipif(not POSIX, reason="needs mkfifo")
def test_cli_resume_from_a_fifo_is_one_error(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for args in (("--resume", fifo), ("--resume", fifo, "--sample-only")):
        proc = train_cli(*args, cwd=tmp_path, timeout=60)
        assert_error(proc, f"{fifo} is a FIFO (named pipe), not a regular file: cannot use it "
                           "as a checkpoint")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_cli_dev_zero_as_data_or_checkpoint_is_one_error(tmp_path):
    for mode in ("lines", "text"):
        proc = train_cli("--data", "/dev/zero", "--data-mode", mode, cwd=tmp_path, timeout=60)
        assert_error(proc, "/dev/zero is a character device, not a regular file: cannot use it "
                           "as a data file")
    assert_error(train_cli("--resume", "/dev/zero", cwd=tmp_path, timeout=60),
                 "/dev/zero is a character device", "checkpoint")
    assert_error(sample_cli("--checkpoint", "/dev/zero", cwd=tmp_path, timeout=60),
                 "/dev/zero is a character device", "checkpoint")


# ================================================================== 6. metrics fsync, out dir
def _run_main(argv, capsys):
    from microgpt_c.train import main
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


def test_metrics_file_is_fsynced_at_close(tmp_path, docs_file, monkeypatch, capsys):
    metrics = tmp_path / "m.jsonl"
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                      else fd)
        return real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    rc, _ = _run_main(["--data", docs_file, "--steps", 4, *SMALL, "-q", "--num-samples", 0,
                       "--metrics-out", metrics], capsys)
    assert rc == 0 and metrics.read_text().count("\n") == 4
    if os.path.exists("/proc/self/fd"):
        assert str(metrics) in synced


def test_metrics_fsync_error_is_one_line_naming_the_file(tmp_path, docs_file, monkeypatch,
                                                         capsys):
    metrics = tmp_path / "m.jsonl"
    real = os.fsync

    def failing(fd):
        if os.fstat(fd).st_ino == metrics.stat().st_ino:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)
    monkeypatch.setattr(os, "fsync", failing)
    rc, captured = _run_main(["--data", docs_file, "--steps", 4, *SMALL, "-q",
                              "--num-samples", 0, "--metrics-out", metrics], capsys)
    assert rc == 2 and "Traceback" not in captured.err
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: cannot write the metrics file {metrics}: input/output error; "
                      "the disk or network file system may be failing; check it"]


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_metrics_to_a_device_is_not_fsynced(tmp_path, docs_file):
    assert_ok(train_cli("--data", docs_file, "--steps", 3, *SMALL, "-q", "--num-samples", 0,
                        "--metrics-out", "/dev/null", cwd=tmp_path))


@pytest.mark.parametrize("err, text", [
    (errno.EACCES, "permission denied; check the permissions of it and its parent "
                   "directories, or choose another output directory"),
    (errno.EPERM, "permission denied; check the permissions"),
    (errno.ENOSPC, "no space left on the device; free some disk space or write to another "
                   "file system"),
    (errno.EROFS, "read-only file system; write to a writable location"),
    (errno.EBADMSG, "; choose another output directory")])
def test_output_directory_errors_say_what_to_do(tmp_path, monkeypatch, err, text):
    def refuse(*a, **k):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(ck.tempfile, "mkstemp", refuse)
    d = tmp_path / "o"
    with pytest.raises(CheckpointError) as info:
        ck.prepare_out_dir(d)
    assert str(info.value).startswith(f"cannot write to the output directory {d}: ")
    assert text in str(info.value)


def test_cli_output_directory_errors_say_what_to_do(tmp_path, docs_file):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert_error(train_cli("--data", docs_file, "--out", f, cwd=tmp_path),
                 f"output directory {f} exists and is not a directory; choose another output "
                 "directory")
    assert_error(train_cli("--data", docs_file, "--out", f / "sub", cwd=tmp_path),
                 f"cannot write to the output directory {f / 'sub'}: a component of the path "
                 "is not a directory; check the path")
