"""Issue 13, the I/O half: special files, size limits, outputs that are inputs,
the checkpoint checksum over metadata and tensors, crafted JSON, a fuzzed
reader, write errors, stale temporary files, the vectorised tokenizer path and
checkpoints taken from the model's own layout.

Nothing here can hang: the tests that give a FIFO or a device to the code under
test run it in a subprocess with a timeout."""
from __future__ import annotations

import errno
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microgpt_c
from microgpt_c import checkpoint as ck
from microgpt_c import data as data_mod
from microgpt_c import safeio
from microgpt_c.api import TrainConfig, train
from microgpt_c.data import DataError, Tokenizer, pack_corpus, read_documents

POSIX = os.name == "posix" and hasattr(os, "mkfifo")
SUBPROCESS_TIMEOUT = 120


def small_cfg(**kw):
    base = dict(steps=3, n_embd=8, n_head=2, block_size=8, num_samples=2, backend="c")
    base.update(kw)
    return TrainConfig(**base)


def synthetic_docs(n=60, seed=0):
    r = random.Random(seed)
    return ["".join(r.choice("abcdefgh") for _ in range(r.randint(2, 7))) for _ in range(n)]


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    train(small_cfg(), synthetic_docs(), out=d)
    return d / ck.CHECKPOINT_NAME


def run_python(code, *args, env=None, timeout=SUBPROCESS_TIMEOUT):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


# ============================================================ 1. special files, size limits
LOAD_DATA = """
import sys
from microgpt_c.data import read_documents, DataError
try:
    read_documents(sys.argv[1])
except DataError as exc:
    print("DataError:", exc)
"""
LOAD_CKPT = """
import sys
from microgpt_c.checkpoint import load_checkpoint, CheckpointError
try:
    load_checkpoint(sys.argv[1])
except CheckpointError as exc:
    print("CheckpointError:", exc)
"""


@pytest.mark.skipif(not POSIX, reason="needs mkfifo")
@pytest.mark.parametrize("code,cls", [(LOAD_DATA, "DataError"), (LOAD_CKPT, "CheckpointError")])
def test_fifo_is_refused_not_read(tmp_path, code, cls):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = run_python(code, fifo)  # a blocking open/read would hit the timeout
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{cls}: {fifo} is a FIFO (named pipe), not a regular file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
@pytest.mark.parametrize("code,cls", [(LOAD_DATA, "DataError"), (LOAD_CKPT, "CheckpointError")])
def test_dev_zero_is_refused_not_read(code, cls):
    proc = run_python(code, "/dev/zero")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{cls}: /dev/zero is a character device, not a regular file")


@pytest.mark.skipif(not POSIX, reason="needs mkfifo")
def test_cli_fifo_as_data_and_checkpoint(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for module, flag in (("microgpt_c.train", "--data"), ("microgpt_c.sample", "--checkpoint")):
        proc = subprocess.run([sys.executable, "-m", module, flag, str(fifo)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
        assert proc.returncode == 2, (module, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "is a FIFO" in last and str(fifo) in last
        assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not POSIX, reason="needs mkfifo")
def test_file_swapped_for_fifo_after_stat_is_refused(tmp_path, monkeypatch):
    """stat says regular file, the opened file is a FIFO: the fstat after the
    O_NONBLOCK open catches it (a non-blocking open of a FIFO returns at once)."""
    regular = tmp_path / "regular.txt"
    regular.write_text("emma\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    real_stat = os.stat

    def lying_stat(p, *a, **k):
        return real_stat(regular) if os.fspath(p) == str(fifo) else real_stat(p, *a, **k)

    monkeypatch.setattr(safeio.os, "stat", lying_stat)
    with pytest.raises(DataError, match="is a FIFO"):
        read_documents(fifo)
    with pytest.raises(ck.CheckpointError, match="is a FIFO"):
        ck.load_checkpoint(fifo)


def test_directory_is_refused(tmp_path):
    with pytest.raises(DataError, match="is a directory, not a regular file"):
        read_documents(tmp_path)


def test_symlink_to_regular_file_is_fine(tmp_path, good_ckpt):
    (tmp_path / "d.txt").write_text("emma\nava\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "d.txt")
    assert read_documents(tmp_path / "link.txt") == ["emma", "ava"]
    (tmp_path / "c.safetensors").symlink_to(good_ckpt)
    assert ck.load_checkpoint(tmp_path / "c.safetensors").step == 3


def test_data_size_limit_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "d.txt"
    path.write_text("emma\n" * 10)  # 50 bytes
    monkeypatch.setenv(safeio.MAX_DATA_ENV, "49")
    with pytest.raises(DataError) as info:
        read_documents(path)
    msg = str(info.value)
    assert str(path) in msg and "is 50 bytes, more than the limit of 49 bytes" in msg
    assert safeio.MAX_DATA_ENV in msg
    monkeypatch.setenv(safeio.MAX_DATA_ENV, "50")
    assert len(read_documents(path)) == 10
    monkeypatch.setenv(safeio.MAX_DATA_ENV, "lots")
    with pytest.raises(DataError, match=f"{safeio.MAX_DATA_ENV}='lots' is not a positive"):
        read_documents(path)


def test_checkpoint_size_limit_from_environment(good_ckpt, monkeypatch):
    size = good_ckpt.stat().st_size
    monkeypatch.setenv(safeio.MAX_CHECKPOINT_ENV, str(size - 1))
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_checkpoint(good_ckpt)
    assert safeio.MAX_CHECKPOINT_ENV in str(info.value) and str(good_ckpt) in str(info.value)
    monkeypatch.setenv(safeio.MAX_CHECKPOINT_ENV, str(size))
    assert ck.load_checkpoint(good_ckpt).step == 3


def test_default_limits_are_documented_values(monkeypatch):
    monkeypatch.delenv(safeio.MAX_DATA_ENV, raising=False)
    monkeypatch.delenv(safeio.MAX_CHECKPOINT_ENV, raising=False)
    assert safeio.max_bytes(safeio.MAX_DATA_ENV, safeio.DEFAULT_MAX_DATA_BYTES) == 2 * 2**30
    assert safeio.max_bytes(safeio.MAX_CHECKPOINT_ENV,
                            safeio.DEFAULT_MAX_CHECKPOINT_BYTES) == 16 * 2**30


def test_file_growing_past_the_limit_while_read(tmp_path, monkeypatch):
    path = tmp_path / "d.txt"
    path.write_bytes(b"a\n" * 10)
    real_read = os.read

    def growing_read(fd, n):  # the file gets longer between fstat and read
        chunk = real_read(fd, n)
        return chunk + b"b\n" * 10 if chunk else chunk

    monkeypatch.setattr(safeio.os, "read", growing_read)
    with pytest.raises(DataError, match="grew beyond the limit of 25 bytes"):
        safeio.read_regular_file(path, what="data file", error=DataError, limit=25)


# ============================================================ 2. outputs that are inputs
def test_same_file(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x")
    os.link(a, tmp_path / "hard.txt")
    (tmp_path / "sym.txt").symlink_to(a)
    (tmp_path / "sub").mkdir()
    (tmp_path / "dirlink").symlink_to(tmp_path / "sub")
    b = tmp_path / "b.txt"
    b.write_text("x")
    assert safeio.same_file(a, a)
    assert safeio.same_file(a, tmp_path / "hard.txt")
    assert safeio.same_file(tmp_path / "sym.txt", a)
    assert safeio.same_file(str(a), tmp_path / "sub" / ".." / "a.txt")
    assert not safeio.same_file(a, b)
    # paths that do not exist yet: by resolved path
    assert safeio.same_file(tmp_path / "sub" / "new.txt", tmp_path / "dirlink" / "new.txt")
    assert not safeio.same_file(tmp_path / "sub" / "new.txt", tmp_path / "sub" / "other.txt")
    assert not safeio.same_file(tmp_path / "new.txt", a)


def test_check_outputs_vs_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("d.txt").write_text("emma\n")
    Path("link.txt").symlink_to("d.txt")
    with pytest.raises(safeio.OutputIsInputError) as info:
        safeio.check_outputs_vs_inputs({"--metrics-out": "d.txt"}, {"--data": "d.txt"})
    assert str(info.value).startswith("--metrics-out d.txt is the same file as --data d.txt")
    assert isinstance(info.value, ValueError) and isinstance(info.value, microgpt_c.MicrogptError)
    with pytest.raises(safeio.OutputIsInputError, match="--plot link.txt is the same file as "
                                                        "--data d.txt"):
        safeio.check_outputs_vs_inputs({"--plot": "link.txt"}, {"--data": "d.txt"})
    with pytest.raises(safeio.OutputIsInputError, match="--plot m.txt is the same file as "
                                                        "--metrics-out m.txt"):
        safeio.check_outputs_vs_inputs({"--metrics-out": "m.txt", "--plot": "m.txt"}, {})
    # fine: different files, None skipped, outputs that do not exist yet
    safeio.check_outputs_vs_inputs({"--metrics-out": "m.txt", "--plot": None},
                                   {"--data": "d.txt", "--resume": None})


# ============================================================ 3. checksum over metadata
def _header(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8:8 + n])


def _same_length_edit(raw, key, old, new):
    """Replace ``old`` by ``new`` (same length) inside metadata value ``key``."""
    assert len(old) == len(new)
    n, header = _header(raw)
    text = raw[8:8 + n].decode()
    value = header["__metadata__"][key]
    assert old in value, (key, value[:80])
    enc_old = json.dumps(key) + ":" + json.dumps(value)  # safetensors writes compact JSON
    enc_new = json.dumps(key) + ":" + json.dumps(value.replace(old, new, 1))
    assert len(enc_old) == len(enc_new) and text.count(enc_old) == 1
    out = raw[:8] + text.replace(enc_old, enc_new).encode() + raw[8 + n:]
    assert len(out) == len(raw)
    return out


@pytest.mark.parametrize("key,old,new", [
    ("lr", "0.01", "0.02"),
    ("train_config", '"temperature": 0.5', '"temperature": 0.9'),
    ("uchars", "abc", "abd"),
    ("rng_state", "[3, [", "[3, ["),  # placeholder replaced below by a digit edit
    ("step", "3", "2"),
])
def test_same_length_metadata_edits_are_detected(good_ckpt, tmp_path, key, old, new):
    raw = good_ckpt.read_bytes()
    if key == "rng_state":
        value = _header(raw)[1]["__metadata__"]["rng_state"]
        digit_at = value.index(", ", 8) - 1
        old = value[digit_at - 3:digit_at + 1]
        new = old[:-1] + str((int(old[-1]) + 1) % 10)
    path = tmp_path / "edited.safetensors"
    path.write_bytes(_same_length_edit(raw, key, old, new))
    with pytest.raises(ck.CheckpointError, match="does not match the checksum") as info:
        ck.load_checkpoint(path)
    assert str(path) in str(info.value)


def make_v1(good_ckpt, path):
    """The format-1 file the previous version wrote: tensors_sha256 over the
    tensors only, no 'sha256'."""
    import safetensors.numpy
    raw = good_ckpt.read_bytes()
    meta = _header(raw)[1]["__metadata__"]
    tensors = safetensors.numpy.load(raw)
    del meta[ck.CHECKSUM_KEY]
    meta["format_version"] = "1"
    meta["tensors_sha256"] = ck._tensors_digest(tensors)
    path.write_bytes(safetensors.numpy.save(tensors, metadata=meta))
    return path


def test_format_1_checkpoints_still_load_with_a_warning(good_ckpt, tmp_path):
    v1 = make_v1(good_ckpt, tmp_path / "v1.safetensors")
    with pytest.warns(ck.CheckpointFormatWarning) as rec:
        old = ck.load_checkpoint(v1)
    assert len(rec) == 1 and "\n" not in str(rec[0].message) and str(v1) in str(rec[0].message)
    new = ck.load_checkpoint(good_ckpt)
    assert old.config == new.config and old.uchars == new.uchars
    assert old.train.rng_state == new.train.rng_state and old.train.lr == new.train.lr
    for name in new.params:
        assert np.array_equal(old.params[name], new.params[name])
    # resaving upgrades it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.warns(ck.CheckpointFormatWarning):
            model = microgpt_c.GPT.load(v1)
        model.save(v1)
        assert ck.load_checkpoint(v1).metadata["format_version"] == "2"


def test_format_1_tensor_corruption_is_still_detected(good_ckpt, tmp_path):
    raw = bytearray(make_v1(good_ckpt, tmp_path / "v1.safetensors").read_bytes())
    raw[-20] ^= 1
    (tmp_path / "v1.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ck.CheckpointError, match="tensor data does not match"):
        ck.load_checkpoint(tmp_path / "v1.safetensors")


def test_format_2_file_without_checksum_is_refused(good_ckpt, tmp_path):
    import safetensors.numpy
    raw = good_ckpt.read_bytes()
    meta = _header(raw)[1]["__metadata__"]
    del meta[ck.CHECKSUM_KEY]
    path = tmp_path / "nosum.safetensors"
    path.write_bytes(safetensors.numpy.save(safetensors.numpy.load(raw), metadata=meta))
    with pytest.raises(ck.CheckpointError, match="checksum"):
        ck.load_checkpoint(path)


# ============================================================ 4. crafted JSON
DEEP = "[" * 100_000 + "]" * 100_000


def _rewrite_meta(good_ckpt, path, fix_checksum=True, **changes):
    import safetensors.numpy
    raw = good_ckpt.read_bytes()
    meta = _header(raw)[1]["__metadata__"]
    tensors = safetensors.numpy.load(raw)
    meta.update(changes)
    if fix_checksum:  # a crafted file can carry a valid checksum: the parse must hold
        meta[ck.CHECKSUM_KEY] = ck.checksum(meta, tensors)
    path.write_bytes(safetensors.numpy.save(tensors, metadata=meta))
    return path


def test_deeply_nested_header_is_a_checkpoint_error(tmp_path):
    body = DEEP.encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(ck.CheckpointError, match="nested too deeply") as info:
        ck.load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("changes", [
    {"config": DEEP}, {"rng_state": DEEP}, {"train_config": DEEP},
    {"config": '{"vocab_size": 1e400, "n_layer": 1, "n_embd": 8, "n_head": 2, "block_size": 8}'},
    {"config": "[1, 2]"}, {"config": '"text"'},
    {"rng_state": json.dumps([3, [2**200] * 625, None])},
    {"rng_state": json.dumps([3, list(range(624)) + [700], None])},
    {"rng_state": "[3, [1e999], null]"}, {"rng_state": "null"},
    {"train_config": "[]"},
    {"step": "9" * 5000}, {"lr": "1e999"}, {"lr": "nan"}, {"seed": "1" * 10_000},
    {"format_version": "9" * 5000}, {"format_version": "0"},
    {"num_docs": "-1"}, {"dtype": DEEP}, {"uchars": "ba"}, {"data_sha256": "xyz"},
])
def test_crafted_metadata_fields_are_checkpoint_errors(good_ckpt, tmp_path, changes):
    for v1 in (False, True) if "format_version" not in changes else (False,):
        path = tmp_path / "crafted.safetensors"
        if v1:  # format 1: no metadata checksum, the parser alone must hold
            make_v1(_rewrite_meta(good_ckpt, tmp_path / "tmp.safetensors", **changes), path)
        else:
            _rewrite_meta(good_ckpt, path, **changes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ck.CheckpointFormatWarning)
            with pytest.raises(ck.CheckpointError) as info:
                ck.load_checkpoint(path)
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg and len(msg) < 500, msg


def test_header_that_is_not_utf8_or_json(tmp_path):
    for body in (b"\xff\xfe{}", b'{"a": 1', b"{}" + b" " * 6, b'{"__metadata__": 5}',
                 b'{"__metadata__": {"format": "microgpt_c.checkpoint", "format_version": 2}}'):
        path = tmp_path / "bad.safetensors"
        path.write_bytes(struct.pack("<Q", len(body)) + body)
        with pytest.raises(ck.CheckpointError) as info:
            ck.load_checkpoint(path)
        assert str(path) in str(info.value)


# ============================================================ 5. fuzzing the reader
@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    model = microgpt_c.GPT(vocab_size=4, n_layer=1, n_embd=4, n_head=2, block_size=2)
    model.init_weights(random.Random(0))
    model.tokenizer = Tokenizer(["abc"])
    path = model.save(d / "base.safetensors")
    return d, path.read_bytes(), ck.load_checkpoint(path)


def _check_fuzzed(fuzz_base, raw):
    d, _, base = fuzz_base
    fd, name = tempfile.mkstemp(dir=d, suffix=".safetensors")
    try:
        os.write(fd, raw)
        os.close(fd)
        try:
            got = ck.load_checkpoint(name)
        except ck.CheckpointError as exc:
            assert "\n" not in str(exc) and name in str(exc)
            return
        assert got.config == base.config and got.dtype == base.dtype
        assert got.uchars == base.uchars and got.metadata == base.metadata
        for name_ in base.params:
            assert np.array_equal(got.params[name_], base.params[name_])
            assert np.array_equal(got.adam_m[name_], base.adam_m[name_])
    finally:
        os.unlink(name)


FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_fuzz_byte_flips(fuzz_base, data):
    raw = bytearray(fuzz_base[1])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    _check_fuzzed(fuzz_base, bytes(raw))


@FUZZ
@given(data=st.data())
def test_fuzz_truncations_and_insertions(fuzz_base, data):
    raw = fuzz_base[1]
    i = data.draw(st.integers(0, len(raw)))
    if data.draw(st.booleans()):
        raw = raw[:i] + raw[data.draw(st.integers(i, len(raw))):]        # cut a piece out
    else:
        raw = raw[:i] + data.draw(st.binary(min_size=1, max_size=16)) + raw[i:]  # insert
    _check_fuzzed(fuzz_base, raw)


@FUZZ
@given(data=st.data())
def test_fuzz_header_text(fuzz_base, data):
    """Edits inside the JSON header (the parser's input), length field adjusted."""
    raw = fuzz_base[1]
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n]
    i = data.draw(st.integers(0, n))
    j = data.draw(st.integers(i, min(n, i + 8)))
    piece = data.draw(st.sampled_from([b"", b"[", b"{", b'"', b"0", b"-", b"9e999", b",",
                                       b"\\u00", b"null", b"\xff", b"]]]]"]))
    header = header[:i] + piece + header[j:]
    _check_fuzzed(fuzz_base, struct.pack("<Q", len(header)) + header + raw[8 + n:])


# ============================================================ 6. write errors
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("where", ["write", "fsync", "replace", "close"])
def test_full_disk_on_save_is_one_clear_error(tmp_path, monkeypatch, where):
    res = train(small_cfg(), synthetic_docs(), out=tmp_path)
    target = tmp_path / ck.CHECKPOINT_NAME
    before = target.read_bytes()
    real = getattr(os, where)

    def failing(*args, **kwargs):
        if where in ("write", "fsync", "close"):
            try:
                fname = os.readlink(f"/proc/self/fd/{args[0]}")
            except OSError:
                fname = ""
            if not fname.startswith(str(tmp_path)):
                return real(*args, **kwargs)
            if where == "close":  # e.g. NFS reports the write error at close
                real(*args, **kwargs)
        _enospc()

    monkeypatch.setattr(safeio.os, where, failing)
    res.model.train_state.step = 1
    with pytest.raises(ck.CheckpointError) as info:
        res.model.save(tmp_path)
    monkeypatch.undo()
    msg = str(info.value)
    assert msg.startswith(f"cannot write the checkpoint {target}: no space left on the device")
    assert "free some disk space" in msg and "unchanged" in msg and "\n" not in msg
    assert isinstance(info.value.__cause__, type(None))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.CHECKPOINT_NAME]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dev_full_write_error_message():
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as info:
            safeio._write_all(fd, b"x" * 10000)
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    msg = safeio.describe_oserror(info.value, "/dev/full", "write the metrics file")
    assert msg == ("cannot write the metrics file /dev/full: no space left on the device; free "
                   "some disk space or write to another file system")


def test_describe_oserror_messages(tmp_path):
    e = OSError(errno.EACCES, "Permission denied", "x.txt")
    assert safeio.describe_oserror(e, action="open") == (
        "cannot open x.txt: permission denied; check the permissions of the file and its "
        "directory")
    assert "read-only file system" in safeio.describe_oserror(
        OSError(errno.EROFS, "Read-only file system"), tmp_path, "write")
    odd = OSError(errno.ECHILD, "No child\nprocesses")
    assert safeio.describe_oserror(odd, "p", "do") == "cannot do p: No child processes"
    try:
        open(tmp_path / "missing" / "f.txt", "rb")
    except OSError as exc:
        assert safeio.describe_oserror(exc, action="read").startswith(
            f"cannot read {tmp_path / 'missing' / 'f.txt'}: no such file or directory")


# ============================================================ 7. stale temporary files
def test_stale_temp_files_of_this_checkpoint_are_removed(tmp_path):
    res = train(small_cfg(), synthetic_docs(), out=tmp_path)
    old = time.time() - 3600
    stale = [tmp_path / ".checkpoint.safetensors.ab_cd123.tmp",
             tmp_path / ".checkpoint.safetensors.zzzzzzzz.tmp"]
    keep = [tmp_path / ".other.safetensors.abcd1234.tmp",       # another target
            tmp_path / ".checkpoint.safetensors.abcd1234.tmp.x",  # not our pattern
            tmp_path / "checkpoint.safetensors.abcd1234.tmp",
            tmp_path / ".checkpoint.safetensors.abcd12345.tmp",
            tmp_path / ".checkpoint.safetensors.ABCD1234.tmp",
            tmp_path / "notes.txt"]
    for p in stale + keep:
        p.write_bytes(b"partial")
        os.utime(p, (old, old))
    newer = tmp_path / ".checkpoint.safetensors.new12345.tmp"  # e.g. a save running now
    newer.write_bytes(b"partial")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    outside = tmp_path / "sub"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    link = tmp_path / ".checkpoint.safetensors.link1234.tmp"  # a symlink: never followed
    link.symlink_to(outside / "precious")
    os.utime(link, (old, old), follow_symlinks=False)
    res.model.save(tmp_path)
    for p in stale:
        assert not p.exists(), p
    for p in keep + [newer, outside / "precious"]:
        assert p.exists(), p
    assert link.is_symlink()
    assert ck.load_checkpoint(tmp_path).step == 3


def test_temp_file_pattern_matches_mkstemp_names(tmp_path):
    fd, name = tempfile.mkstemp(dir=tmp_path, prefix=".checkpoint.safetensors.", suffix=".tmp")
    os.close(fd)
    assert safeio.temp_file_pattern("checkpoint.safetensors").match(os.path.basename(name))


# ============================================================ 8. vectorised tokenizer path
def reference_documents(raw: bytes):
    """The documented rules, written plainly: BOM ignored, lines end with \\n,
    \\r\\n or \\r, each line str.strip()-ed, empty lines dropped."""
    text = raw.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch in "\r\n":
            lines.append("".join(cur))
            cur = []
            if ch == "\r" and text[i + 1:i + 2] == "\n":
                i += 1
        else:
            cur.append(ch)
        i += 1
    lines.append("".join(cur))
    return [line.strip() for line in lines if line.strip()]


def reference_pack(docs):
    uchars = sorted(set("".join(docs)))
    ids = {c: i for i, c in enumerate(uchars)}
    bos = len(uchars)
    tokens, starts = [], [0]
    for doc in docs:
        tokens += [bos] + [ids[c] for c in doc] + [bos]
        starts.append(len(tokens))
    return uchars, np.array(tokens, dtype=np.int32), np.array(starts, dtype=np.int64)


TRICKY = (b"\xef\xbb\xbf  emma  \r\n\r\n\tava\t\rzo\xc3\xab\n   \n\n"
          b"\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 x\r\n"   # CJK, an emoji (4 UTF-8 bytes)
          b"a\x0bb\x0cc\xe2\x80\xa8d\x1ce\n"                   # separators inside a line
          b"\xc2\x85 nel-padded \xc2\x85\n" + b"q" * 300_000 + b"\r" + b"  trailing  ")


@pytest.mark.parametrize("chunk_chars", [1 << 23, 3, 1])
def test_vectorised_path_matches_reference(tmp_path, monkeypatch, chunk_chars):
    monkeypatch.setattr(data_mod, "_CHUNK_CHARS", chunk_chars)
    monkeypatch.setattr(data_mod, "_FIRST_CHUNK_DOCS", 2)
    path = tmp_path / "tricky.txt"
    path.write_bytes(TRICKY)
    docs = read_documents(path)
    assert docs == reference_documents(TRICKY)
    assert docs[0] == "emma" and docs[-1] == "trailing" and len(docs[-2]) == 300_000
    random.Random(1).shuffle(docs)
    uchars, corpus_ref, starts_ref = reference_pack(docs)
    tok = Tokenizer(docs)
    assert tok.uchars == uchars
    corpus, starts = pack_corpus(tok, docs)
    assert corpus.dtype == np.int32 and starts.dtype == np.int64
    assert np.array_equal(corpus, corpus_ref) and np.array_equal(starts, starts_ref)


def test_lone_long_line_and_documents_with_newlines(monkeypatch):
    monkeypatch.setattr(data_mod, "_CHUNK_CHARS", 5)
    # API documents may contain newlines and be empty: measured one by one then
    for docs in (["x" * 1_000_003], ["a\nb", "", "\n", "cd", "\r\n"], ["", "y", ""], ["\ud800z"]):
        uchars, corpus_ref, starts_ref = reference_pack(docs)
        tok = Tokenizer(docs)
        assert tok.uchars == uchars
        corpus, starts = pack_corpus(tok, docs)
        assert np.array_equal(corpus, corpus_ref) and np.array_equal(starts, starts_ref)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(docs=st.lists(st.text(alphabet=st.sampled_from("ab \n\r\té日😀\x00\u2028"), max_size=12),
                     min_size=1, max_size=30),
       chunk=st.integers(1, 40))
def test_pack_corpus_property(docs, chunk):
    old = data_mod._CHUNK_CHARS, data_mod._FIRST_CHUNK_DOCS
    data_mod._CHUNK_CHARS, data_mod._FIRST_CHUNK_DOCS = chunk, max(1, chunk // 4)
    try:
        uchars, corpus_ref, starts_ref = reference_pack(docs)
        if not uchars:
            with pytest.raises(DataError):
                Tokenizer(docs)
            return
        tok = Tokenizer(docs)
        assert tok.uchars == uchars
        corpus, starts = pack_corpus(tok, docs)
        assert np.array_equal(corpus, corpus_ref) and np.array_equal(starts, starts_ref)
    finally:
        data_mod._CHUNK_CHARS, data_mod._FIRST_CHUNK_DOCS = old


def test_pack_corpus_unknown_character_message():
    tok = Tokenizer(["abc"])
    with pytest.raises(DataError, match="characters not in the tokenizer vocabulary: 'z'"):
        pack_corpus(tok, ["ab", "cz"])
    with pytest.raises(DataError, match="no documents"):
        pack_corpus(tok, [])


# ============================================================ 9. save from the model's layout
def test_save_ignores_a_modified_params_dict(tmp_path):
    res = train(small_cfg(n_layer=2), synthetic_docs())
    model = res.model
    flat = model.flat_params.copy()
    del model.params["wte"]
    model.params["wpe"] = np.zeros((1, 1))
    model.params["bogus"] = np.ones(3)
    path = model.save(tmp_path / "m.safetensors")
    loaded = microgpt_c.GPT.load(path)
    assert np.array_equal(loaded.flat_params, flat)
    assert np.array_equal(loaded.adam_m, model.adam_m)
    assert sorted(loaded.params) == sorted(microgpt_c.tensor_names(2))


def test_model_layout_matches_the_c_views():
    for n_layer in (1, 3):
        model = microgpt_c.GPT(vocab_size=7, n_layer=n_layer, n_embd=8, n_head=2, block_size=5,
                               dtype="float32")
        base = model.flat_params.__array_interface__["data"][0]
        layout = ck.model_layout(model)
        assert list(layout) == microgpt_c.tensor_names(n_layer)
        for name, (off, shape) in layout.items():
            view = model.params[name]
            assert view.shape == shape
            assert (view.__array_interface__["data"][0] - base) // 4 == off
