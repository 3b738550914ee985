"""Issue 12, item 9: the training options (warmup, linear/cosine/constant
schedules with a floor, decoupled weight decay, global-norm gradient
clipping, Adam betas) in the C core against the pure-Python reference, and
the SPEC's run unchanged when they are off."""
from __future__ import annotations

import random

import numpy as np
import pytest

import microgpt_c as mc
from microgpt_c import _core, data as data_mod
from microgpt_c.pymodel import ReferenceBackendGPT
from microgpt_c.reference import schedule_lr as ref_schedule_lr

DOCS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "harper", "evelyn"]


def _pair(batch=1):
    tok = data_mod.Tokenizer(DOCS)
    corpus, starts = data_mod.pack_corpus(tok, DOCS)
    c = mc.GPT(tok.vocab_size, 1, 8, 2, 8, "float64", max_tokens=8 * batch)
    c.init_weights(random.Random(3))
    r = ReferenceBackendGPT(tok.vocab_size, 1, 8, 2, 8)
    r.init_weights(random.Random(3))
    return c, r, corpus, starts


def _close(a, b, rel=1e-12):
    """max|a - b| <= rel * max|b| (norm-wise, as conftest.assert_close_rel)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert np.max(np.abs(a - b)) <= rel * max(np.max(np.abs(b)), 1e-300), \
        np.max(np.abs(a - b)) / np.max(np.abs(b))


OPTIONS = [
    {"warmup_steps": 3},
    {"lr_schedule": "cosine", "min_lr": 0.001},
    {"lr_schedule": "constant"},
    {"warmup_steps": 2, "lr_schedule": "linear", "min_lr": 0.002},
    {"weight_decay": 0.1},
    {"grad_clip": 0.05},   # small enough to clip every step
    {"grad_clip": 1e6},    # never clips
    {"weight_decay": 0.05, "grad_clip": 0.1, "warmup_steps": 2, "lr_schedule": "cosine"},
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("batch", [1, 3])
def test_options_match_the_reference(opts, batch):
    c, r, corpus, starts = _pair(batch)
    n = 6
    lc, rc_ = c.train_steps(corpus, starts, 0, n, 10, batch, 0.02, 0.8, 0.95, 1e-8, **opts)
    lr_, rr = r.train_steps(corpus, starts, 0, n, 10, batch, 0.02, 0.8, 0.95, 1e-8, **opts)
    _close(lc, lr_)
    _close(rc_, rr, 1e-15)
    for name, value in r.params.items():
        _close(c.params[name], value)


def test_options_change_the_run():
    """Each option does something (the comparison above is not vacuous)."""
    base_c, _, corpus, starts = _pair()
    base, _ = base_c.train_steps(corpus, starts, 0, 6, 10, 1, 0.02)
    for opts in OPTIONS:
        if opts == {"grad_clip": 1e6}:
            continue
        c, _, corpus, starts = _pair()
        losses, _ = c.train_steps(corpus, starts, 0, 6, 10, 1, 0.02, **opts)
        assert not np.array_equal(losses, base), opts


def test_clip_scales_to_the_norm():
    c, _, corpus, starts = _pair()
    c.forward_backward(corpus[starts[0]:starts[1]])
    norm = c.grad_norm()
    assert norm == pytest.approx(float(np.sqrt(np.sum(c.flat_grads ** 2))), rel=1e-14)
    assert norm > 0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_options_off_is_the_spec(dtype):
    """Passing the options at their defaults gives the bits of the SPEC's call."""
    tok = data_mod.Tokenizer(DOCS)
    corpus, starts = data_mod.pack_corpus(tok, DOCS)
    runs = []
    for kw in ({}, {"warmup_steps": 0, "lr_schedule": "linear", "min_lr": 0.0,
                    "weight_decay": 0.0, "grad_clip": 0.0}):
        m = mc.GPT(tok.vocab_size, 1, 8, 2, 8, dtype)
        m.init_weights(random.Random(3))
        losses, lrs = m.train_steps(corpus, starts, 0, 20, 20, 1, 0.01, **kw)
        runs.append((losses.tobytes(), lrs.tobytes(), m.flat_params.tobytes()))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_clip_and_decay_bit_identical_for_any_thread_count(dtype):
    tok = data_mod.Tokenizer(DOCS * 8)
    corpus, starts = data_mod.pack_corpus(tok, DOCS * 8)
    out = []
    before = _core.get_num_threads()
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            m = mc.GPT(tok.vocab_size, 1, 32, 4, 16, dtype, max_tokens=16 * 16)
            m.init_weights(random.Random(5))
            losses, _ = m.train_steps(corpus, starts, 0, 8, 8, 16, 0.01, grad_clip=0.5,
                                      weight_decay=0.1)
            out.append((losses.tobytes(), m.flat_params.tobytes()))
    finally:
        _core.set_num_threads(before)
    assert out[0] == out[1]


@pytest.mark.parametrize("kw", [dict(lr_schedule="cosine", min_lr=0.001, warmup_steps=5),
                                dict(lr_schedule="linear", min_lr=0.003),
                                dict(warmup_steps=7), dict(lr_schedule="constant")])
def test_schedule_c_equals_reference(kw):
    for s in range(30):
        assert _core.schedule_lr(s, 30, 0.01, **kw) == ref_schedule_lr(s, 30, 0.01, **kw)
    assert _core.schedule_lr(0, 30, 0.01) == 0.01


def test_schedule_bad_settings():
    with pytest.raises(ValueError, match="warmup_steps"):
        _core.schedule_lr(0, 10, 0.01, warmup_steps=10)
    with pytest.raises(ValueError, match="min_lr"):
        _core.schedule_lr(0, 10, 0.01, min_lr=0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        _core.schedule_lr(0, 10, 0.01, lr_schedule="step")


@pytest.mark.parametrize("shards", [1, 2])
def test_options_through_the_data_parallel_path(shards):
    """DataParallelModel (the MPI code path, here its shards in one process)
    applies the same schedule, clipping and decay to the summed gradients."""
    from microgpt_c.distributed import DataParallelModel

    tok = data_mod.Tokenizer(DOCS * 4)
    corpus, starts = data_mod.pack_corpus(tok, DOCS * 4)
    opts = dict(warmup_steps=2, lr_schedule="cosine", min_lr=0.001, weight_decay=0.1,
                grad_clip=0.3)
    a = mc.GPT(tok.vocab_size, 1, 8, 2, 8, "float64", max_tokens=8 * 4)
    b = mc.GPT(tok.vocab_size, 1, 8, 2, 8, "float64", max_tokens=8 * 4)
    a.init_weights(random.Random(2))
    b.init_weights(random.Random(2))
    la, ra = a.train_steps(corpus, starts, 0, 10, 10, 4, 0.01, **opts)
    lb, rb = DataParallelModel(b, shards=shards).train_steps(corpus, starts, 0, 10, 10, 4,
                                                             0.01, **opts)
    assert np.array_equal(ra, rb)
    _close(lb, la)
    _close(b.flat_params, a.flat_params)


def test_schedule_in_the_threaded_team_path():
    """A batch big enough for the persistent team (model_impl.h's
    train_steps_team) uses the same schedule, for any thread count."""
    r = random.Random(0)
    docs = ["".join(r.choice("abcdefghij") for _ in range(70)) for _ in range(64)]
    tok = data_mod.Tokenizer(docs)
    corpus, starts = data_mod.pack_corpus(tok, docs)
    opts = dict(warmup_steps=2, lr_schedule="cosine", min_lr=0.001)
    out = []
    before = _core.get_num_threads()
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            m = mc.GPT(tok.vocab_size, 1, 64, 4, 64, "float32", max_tokens=64 * 32)
            m.init_weights(random.Random(1))
            losses, lrs = m.train_steps(corpus, starts, 0, 4, 6, 32, 0.01, **opts)
            out.append((losses.tobytes(), m.flat_params.tobytes()))
            assert lrs.tolist() == [_core.schedule_lr(s, 6, 0.01, **opts) for s in range(4)]
    finally:
        _core.set_num_threads(before)
    assert out[0] == out[1]
