"""The floating-point environment of our calls (issue "Fast on every CPU"):
float32 work flushes subnormals (FTZ/DAZ) on every thread that runs it,
float64 work runs in the IEEE default whatever the caller set, and every
thread's environment is restored on return, so Python, NumPy and other
libraries in the process see no change."""
from __future__ import annotations

import platform
import random

import numpy as np
import pytest

import microgpt_c
from microgpt_c import GPT, _kernels as K

X86 = platform.machine().lower() in ("x86_64", "amd64")
FTZ_DAZ = 0x8040
CONTROL = 0xFFC0   # MXCSR control bits (the low six are sticky exception flags)
pytestmark = pytest.mark.skipif(not X86, reason="MXCSR checks are x86-64 specific")


def data(n_docs=40, V=11, seed=1):
    r = random.Random(seed)
    docs = [[V - 1] + [r.randrange(V - 1) for _ in range(r.randrange(2, 14))] + [V - 1]
            for _ in range(n_docs)]
    starts = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    return np.concatenate(docs).astype(np.int32), starts


def train(dtype, steps=30, batch=8, threads=None, **kw):
    if threads is not None and microgpt_c.openmp_enabled():
        microgpt_c.set_num_threads(threads)
    cfg = dict(vocab_size=11, n_layer=1, n_embd=32, n_head=4, block_size=16)
    cfg.update(kw)
    m = GPT(dtype=dtype, **cfg)
    m.init_weights(random.Random(0))
    c, st = data()
    losses, _ = m.train_steps(c, st, 0, steps, steps, batch_size=batch)
    return m, losses


@pytest.fixture
def restore_threads():
    before = microgpt_c.get_num_threads()
    yield
    if microgpt_c.openmp_enabled():
        microgpt_c.set_num_threads(before)


def subnormal_survives():
    """NumPy float32 arithmetic keeps a subnormal result (FTZ off here)."""
    return np.float32(1e-30) * np.float32(1e-10) != 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_our_calls_restore_every_threads_environment(dtype, threads, restore_threads):
    if microgpt_c.openmp_enabled():
        microgpt_c.set_num_threads(threads)
    before = K.fp_env() & CONTROL
    team_before = {s & CONTROL for s in K.team_fp_envs()}
    assert before & FTZ_DAZ == 0 and subnormal_survives()
    m, _ = train(dtype, threads=threads, n_embd=64)   # big enough for the team step
    m.sample_tokens(random.Random(3).getstate(), 0.5, 0, [], 10, 3)
    assert K.fp_env() & CONTROL == before and subnormal_survives()
    assert {s & CONTROL for s in K.team_fp_envs()} == team_before


def test_float64_ignores_a_callers_flush_to_zero():
    """A caller that set FTZ/DAZ (e.g. a library built with -ffast-math) does
    not change float64 results, and gets its setting back."""
    _, ref = train("float64")
    before = K.fp_env()
    K.set_fp_env(before | FTZ_DAZ)
    try:
        _, flushed = train("float64")
        assert K.fp_env() & CONTROL == (before | FTZ_DAZ) & CONTROL
    finally:
        K.set_fp_env(before)
    assert np.array_equal(ref, flushed)


def test_float32_flushes_subnormal_moments():
    """With FTZ the float32 Adam moments of never-updated parameters never
    go subnormal (they decay to 0 instead)."""
    m, _ = train("float32", steps=700, batch=1, n_embd=16, block_size=16)
    tiny = np.finfo(np.float32).tiny
    for arr in (m.adam_m, m.adam_v):
        a = np.abs(np.asarray(arr))
        assert not np.any((a > 0) & (a < tiny))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_thread_count_does_not_change_results(dtype, restore_threads):
    if not microgpt_c.openmp_enabled():
        pytest.skip("serial build")
    m1, l1 = train(dtype, threads=1, n_embd=64, steps=10)
    m2, l2 = train(dtype, threads=2, n_embd=64, steps=10)
    assert np.array_equal(l1, l2) and np.array_equal(m1.flat_params, m2.flat_params)


@pytest.fixture
def adam_variant():
    yield K.force_variant
    K.force_variant("adam", "auto")


@pytest.mark.parametrize("variant", ["plain", "quiet"])
def test_float64_adam_quiet_path_is_ieee_exact(variant, adam_variant):
    """float64 Adam on elements whose gradient is zero and whose first
    moment is tiny or subnormal (the exact 'quiet' path that avoids slow
    subnormal arithmetic) gives NumPy's IEEE bits, including subnormal
    results, signed zeros, tiny parameters and tiny second moments."""
    r = np.random.default_rng(7)
    n = 20000
    m = r.choice([1, -1], n) * np.ldexp(r.uniform(0.5, 1, n), r.integers(-1080, -940, n))
    v = np.where(r.random(n) < 0.3,
                 np.ldexp(r.uniform(0.5, 1, n), r.integers(-1080, -940, n)),
                 r.uniform(0, 1e-3, n))
    p = np.where(r.random(n) < 0.1, np.ldexp(r.uniform(-1, 1, n), r.integers(-1074, -900, n)),
                 r.normal(0, 0.1, n))
    g = np.where(r.random(n) < 0.8, r.choice([0.0, -0.0], n), r.normal(0, 1e-3, n))
    m[:50] = 0.0
    m[50:100] = -0.0
    adam_variant("adam", variant)
    p[100:110] = 0.0
    for lr, b1, b2, eps, t in ((0.01, 0.85, 0.99, 1e-8, 5000), (3e-4, 0.9, 0.999, 1e-8, 3),
                               (1.0, 0.5, 0.5, 1e-300, 10)):
        P, Mm, V = p.copy(), m.copy(), v.copy()
        K.adam_update(P, Mm, V, g, lr, b1, b2, eps, t)
        ibc1 = 1.0 / (1.0 - b1 ** t)
        ibc2 = 1.0 / (1.0 - b2 ** t)
        with np.errstate(all="ignore"):
            em = b1 * m + (1.0 - b1) * g
            ev = b2 * v + (1.0 - b2) * (g * g)
            ep = p - lr * (em * ibc1) / (np.sqrt(ev * ibc2) + eps)
        for got, want in ((Mm, em), (V, ev), (P, ep)):
            assert np.array_equal(got.view(np.int64), want.view(np.int64))


def test_float64_adam_variants_agree_over_a_long_run(adam_variant):
    """6,000 one-name steps at 16/16 float64, the last 5,950 on short
    documents only, so the moments of the late position rows decay into the
    subnormal range (after ~4,300 steps): the quiet and the plain Adam give
    the same losses, parameters and moments, bit for bit."""
    r = random.Random(5)

    def corpus(lo, hi):
        docs = [[10] + [r.randrange(10) for _ in range(r.randrange(lo, hi))] + [10]
                for _ in range(30)]
        starts = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
        return np.concatenate(docs).astype(np.int32), starts
    long_docs, short_docs = corpus(12, 15), corpus(2, 6)
    runs = []
    for variant in ("plain", "quiet"):
        adam_variant("adam", variant)
        m = GPT(vocab_size=11, n_layer=1, n_embd=16, n_head=4, block_size=16, dtype="float64")
        m.init_weights(random.Random(0))
        l1, _ = m.train_steps(*long_docs, 0, 50, 6000)
        l2, _ = m.train_steps(*short_docs, 50, 5950, 6000)
        runs.append((np.concatenate([l1, l2]), np.array(m.flat_params), np.array(m.adam_m),
                     np.array(m.adam_v)))
    moments = np.abs(runs[0][2])
    assert np.any((moments > 0) & (moments < 2.0 ** -960)), "no tiny moments: path not taken"
    for a, b in zip(*runs):
        assert np.array_equal(a.view(np.int64), b.view(np.int64))
