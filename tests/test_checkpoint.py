"""Checkpoints: round trip, exact resume, validation of bad files, atomic writes."""
from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest

import microgpt_c
from microgpt_c import checkpoint as ck
from microgpt_c.api import TrainConfig, train

NAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "names.txt"


def synthetic_docs(n=300, seed=0):
    r = random.Random(seed)
    return ["".join(r.choice("abcdefghij") for _ in range(r.randint(2, 9))) for _ in range(n)]


def names_or_synthetic():
    if NAMES.exists():
        return microgpt_c.data.read_documents(NAMES)
    return synthetic_docs(2000)


def small_cfg(**kw):
    base = dict(steps=40, n_embd=8, n_head=2, block_size=8, num_samples=5, backend="c")
    base.update(kw)
    return TrainConfig(**base)


def assert_same_state(a, b):
    assert np.array_equal(a.flat_params, b.flat_params)
    assert np.array_equal(a.adam_m, b.adam_m)
    assert np.array_equal(a.adam_v, b.adam_v)


# ----------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_trip(tmp_path, dtype):
    res = train(small_cfg(dtype=dtype, n_layer=2), synthetic_docs())
    path = res.model.save(tmp_path)           # a directory: checkpoint.safetensors in it
    assert path == tmp_path / ck.CHECKPOINT_NAME and path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    loaded = microgpt_c.GPT.load(path)
    assert isinstance(loaded, microgpt_c.GPT) and isinstance(loaded, microgpt_c._core.GPT)
    assert loaded.dtype == dtype and loaded.config == res.model.config
    assert_same_state(loaded, res.model)
    for name, arr in res.model.params.items():
        assert np.array_equal(loaded.params[name], arr)
    assert loaded.tokenizer == res.tokenizer
    st = loaded.train_state
    assert st.step == 40 and st.num_steps == 40 and st.batch_size == 1 and st.seed == 42
    assert st.losses == res.losses
    assert st.data_sha256 == microgpt_c.data.sha256_of_documents(synthetic_docs())
    # the saved random state is the one sampling started from
    assert loaded.sample(5, 0.5) == res.samples


def test_file_layout_is_plain_safetensors(tmp_path):
    from safetensors import safe_open

    res = train(small_cfg(n_layer=2), synthetic_docs())
    path = res.model.save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        keys = set(f.keys())
        wte = f.get_tensor("wte")
    names = microgpt_c.tensor_names(2)
    assert keys == set(names) | {f"adam.{m}.{n}" for m in "mv" for n in names} | {"train.losses"}
    assert wte.shape == (res.tokenizer.vocab_size, 8) and wte.dtype == np.float64
    assert set(ck.METADATA_KEYS) <= set(meta)
    assert meta["format"] == ck.FORMAT and meta["format_version"] == str(ck.FORMAT_VERSION) == "2"
    assert meta["microgpt_c_version"] == microgpt_c.__version__
    assert json.loads(meta["config"]) == res.model.config
    assert meta["dtype"] == "float64" and meta["uchars"] == "abcdefghij"
    assert meta["step"] == "40" and meta["num_steps"] == "40" and meta["batch_size"] == "1"
    assert float(meta["lr"]) == 0.01 and len(meta["data_sha256"]) == 64
    state = json.loads(meta["rng_state"])
    assert state[0] == 3 and len(state[1]) == 625


def test_model_without_training_state(tmp_path):
    model = microgpt_c.GPT(5, 1, 8, 2, 4)
    model.init_weights(random.Random(1))
    path = model.save(tmp_path / "x.safetensors")
    loaded = microgpt_c.GPT.load(path)
    assert np.array_equal(loaded.flat_params, model.flat_params)
    assert loaded.train_state is None and loaded.tokenizer is None
    with pytest.raises(microgpt_c.ConfigError, match="tokenizer"):
        loaded.sample(1)
    with pytest.raises(microgpt_c.CheckpointError, match="no training state"):
        train(None, synthetic_docs(), resume=path)


# ----------------------------------------------------------------- exact resume
def _resume_case(docs, dtype, total, first, tmp_path, batch_size=1, save_every=None):
    cfg = TrainConfig(steps=total, dtype=dtype, batch_size=batch_size, backend="c")
    straight = train(cfg, docs)
    part = train(cfg, docs, out=tmp_path / "run", stop_after=first, save_every=save_every)
    assert part.checkpoint == tmp_path / "run" / ck.CHECKPOINT_NAME
    assert part.losses == straight.losses[:first]
    resumed = train(None, docs, resume=tmp_path / "run", out=tmp_path / "run")
    assert resumed.start_step == first
    # bit-identical per-step losses, parameters, Adam moments and samples
    assert resumed.losses == straight.losses
    assert_same_state(resumed.model, straight.model)
    assert resumed.samples == straight.samples
    final = ck.load_checkpoint(tmp_path / "run")
    assert final.step == total and final.train.losses == straight.losses


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_resume_is_exact_60_60(tmp_path, dtype):
    _resume_case(names_or_synthetic(), dtype, 120, 60, tmp_path)


def test_resume_is_exact_with_batches(tmp_path):
    _resume_case(synthetic_docs(500), "float32", 50, 17, tmp_path, batch_size=4)


@pytest.mark.skipif(not NAMES.exists(), reason="shared names.txt not available")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_resume_is_exact_500_500(tmp_path, dtype):
    _resume_case(microgpt_c.data.read_documents(NAMES), dtype, 1000, 500, tmp_path)


def test_resume_from_periodic_checkpoint(tmp_path):
    docs = synthetic_docs()
    cfg = small_cfg(steps=30)
    straight = train(cfg, docs)
    seen = []
    orig = ck.save_checkpoint

    def spy(path, model, **kw):
        seen.append(kw["train"].step)
        return orig(path, model, **kw)

    import microgpt_c.training as training
    training.save_checkpoint, saved = spy, training.save_checkpoint
    try:
        train(cfg, docs, out=tmp_path, save_every=7, stop_after=16)
    finally:
        training.save_checkpoint = saved
    assert seen == [7, 14, 16]
    resumed = train(cfg, docs, resume=tmp_path)
    assert resumed.losses == straight.losses
    assert_same_state(resumed.model, straight.model)


def test_resume_finished_run_only_samples(tmp_path):
    docs = synthetic_docs()
    res = train(small_cfg(), docs, out=tmp_path)
    again = train(None, docs, resume=tmp_path)
    assert again.start_step == 40 and again.losses == res.losses
    assert again.samples == res.samples


# ----------------------------------------------------------------- mismatches
def test_resume_with_other_data_config_or_dtype(tmp_path):
    docs = synthetic_docs()
    train(small_cfg(), docs, out=tmp_path, stop_after=10)
    with pytest.raises(microgpt_c.CheckpointMismatchError, match="training data differs"):
        train(None, synthetic_docs(seed=1), resume=tmp_path)
    with pytest.raises(microgpt_c.CheckpointMismatchError,
                       match=r"n_embd=8.*this run has n_embd=16"):
        train(small_cfg(n_embd=16), docs, resume=tmp_path)
    with pytest.raises(microgpt_c.CheckpointMismatchError,
                       match=r"dtype='float64'.*dtype='float32'"):
        train(small_cfg(dtype="float32"), docs, resume=tmp_path)
    with pytest.raises(microgpt_c.CheckpointMismatchError, match=r"steps=40.*lr=0\.01"):
        train(small_cfg(steps=30, lr=0.02), docs, resume=tmp_path)
    # a longer total extends the run, but the other settings must still agree
    with pytest.raises(microgpt_c.CheckpointMismatchError, match=r"lr=0\.01.*lr=0\.02"):
        train(small_cfg(steps=50, lr=0.02), docs, resume=tmp_path)
    # sampling settings may change
    res = train(small_cfg(temperature=0.9, num_samples=2), docs, resume=tmp_path)
    assert len(res.samples) == 2


# ----------------------------------------------------------------- bad files
@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    train(small_cfg(steps=5), synthetic_docs(), out=d)
    return d / ck.CHECKPOINT_NAME


def _write_safetensors(path, tensors, metadata):
    import safetensors.numpy
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))


def _rewrite(good_file, path, mutate_meta=None, mutate_tensors=None, fix_checksum=True):
    import safetensors.numpy
    raw = good_file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    tensors = safetensors.numpy.load(raw)
    if mutate_meta:
        mutate_meta(meta)
    if mutate_tensors:
        mutate_tensors(tensors)
    if fix_checksum:
        meta[ck.CHECKSUM_KEY] = ck.checksum(meta, tensors)
    _write_safetensors(path, tensors, meta)
    return path


def bad_files(good_file, d):
    raw = good_file.read_bytes()
    rng = np.random.default_rng(0)
    cases = {}

    def add(name, data):
        p = d / name
        p.write_bytes(data)
        cases[name] = p

    add("empty", b"")
    add("tiny", b"\x01\x02")
    add("truncated_header", raw[:100])
    add("truncated_data", raw[: len(raw) - 1000])
    add("random", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    add("text", b"hello, this is not a checkpoint\n" * 10)
    flipped = bytearray(raw)
    flipped[-50] ^= 0x40
    add("bitflip", bytes(flipped))
    foreign = d / "foreign"
    _write_safetensors(foreign, {"w": np.zeros((2, 2))}, None)
    cases["foreign"] = foreign
    other = d / "other_meta"
    _write_safetensors(other, {"w": np.zeros((2, 2))}, {"format": "pt"})
    cases["other_meta"] = other
    cases["future_version"] = _rewrite(good_file, d / "future_version",
                                       lambda m: m.update(format_version="99"))
    cases["missing_tensor"] = _rewrite(good_file, d / "missing_tensor",
                                       mutate_tensors=lambda t: t.pop("wpe"))
    cases["wrong_shape"] = _rewrite(good_file, d / "wrong_shape",
                                    mutate_tensors=lambda t: t.update(wte=np.zeros((3, 3))))
    cases["wrong_dtype"] = _rewrite(
        good_file, d / "wrong_dtype",
        mutate_tensors=lambda t: t.update(wte=t["wte"].astype(np.float32)))
    cases["bad_config"] = _rewrite(good_file, d / "bad_config",
                                   lambda m: m.update(config="{not json"))
    cases["bad_rng"] = _rewrite(good_file, d / "bad_rng", lambda m: m.update(rng_state="[1, 2]"))
    cases["bad_step"] = _rewrite(good_file, d / "bad_step", lambda m: m.update(step="many"))
    cases["bad_uchars"] = _rewrite(good_file, d / "bad_uchars", lambda m: m.update(uchars="ba"))
    cases["directory_without_checkpoint"] = d / "emptydir"
    (d / "emptydir").mkdir()
    cases["missing"] = d / "does-not-exist.safetensors"
    return cases


def test_bad_checkpoints_raise_checkpoint_error(good_file, tmp_path):
    ck.load_checkpoint(good_file)  # the base file is fine
    for name, path in bad_files(good_file, tmp_path).items():
        with pytest.raises(ck.CheckpointError) as info:
            ck.load_checkpoint(path)
        msg = str(info.value)
        assert "\n" not in msg and len(msg) < 400, (name, msg)
        assert str(path) in msg or str(path / ck.CHECKPOINT_NAME) in msg, (name, msg)


def test_bad_checkpoint_messages(good_file, tmp_path):
    cases = bad_files(good_file, tmp_path)

    def msg(name):
        with pytest.raises(ck.CheckpointError) as info:
            ck.load_checkpoint(cases[name])
        return str(info.value)

    assert "empty" in msg("empty")
    assert "truncated or corrupted" in msg("truncated_data")
    assert "not a microgpt_c checkpoint" in msg("foreign")
    assert "not a microgpt_c checkpoint" in msg("other_meta")
    assert "checksum" in msg("bitflip")
    assert "version 99" in msg("future_version")
    assert "'wpe' is missing" in msg("missing_tensor")
    assert "shape" in msg("wrong_shape")
    assert "dtype" in msg("wrong_dtype")
    assert "not found" in msg("missing")


# ----------------------------------------------------------------- atomic writes
def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    docs = synthetic_docs()
    res = train(small_cfg(steps=10), docs, out=tmp_path)
    before = (tmp_path / ck.CHECKPOINT_NAME).read_bytes()

    def boom(fd):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a write

    monkeypatch.setattr(ck.os, "fsync", boom)
    res.model.train_state.step = 999  # something different
    with pytest.raises(KeyboardInterrupt):
        res.model.save(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / ck.CHECKPOINT_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.CHECKPOINT_NAME]
    assert ck.load_checkpoint(tmp_path).step == 10


def test_checkpoint_file_mode_follows_umask(tmp_path):
    res = train(small_cfg(steps=2), synthetic_docs(), out=tmp_path)
    mask = os.umask(0o022)
    os.umask(mask)
    assert (res.checkpoint.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_unwritable_output_directory(tmp_path):
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    calls = []
    with pytest.raises(ck.CheckpointError, match="not a directory"):
        train(small_cfg(), synthetic_docs(), out=not_dir, on_steps=lambda *a: calls.append(a))
    with pytest.raises(ck.CheckpointError, match="cannot write to the output directory"):
        train(small_cfg(), synthetic_docs(), out=not_dir / "sub", on_steps=lambda *a: calls.append(a))
    assert calls == []  # nothing was trained


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs a non-root POSIX user for permission checks")
def test_read_only_output_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ck.CheckpointError, match="permission denied; check the permissions"):
            train(small_cfg(), synthetic_docs(), out=ro)
    finally:
        ro.chmod(0o700)
