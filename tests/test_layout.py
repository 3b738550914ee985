"""The reshaped C core (issue: "The C core, reshaped"): one step in C shared
by the loop, the team and data parallelism (GPT.step_share / step_update),
named op variants that can be forced and give the same float64 bits, the
SIMD variant reported by C, and one copy of the C core for the model and
the kernels."""
from __future__ import annotations

import random

import numpy as np
import pytest

import microgpt_c
from microgpt_c import GPT, _core
from microgpt_c import _kernels as K


def corpus(vocab=11, n_docs=23, seed=3):
    r = random.Random(seed)
    docs = [[vocab - 1] + [r.randrange(vocab - 1) for _ in range(r.randrange(1, 12))] + [vocab - 1]
            for _ in range(n_docs)]
    starts = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    return np.concatenate(docs).astype(np.int32), starts


def model(dtype, seed=0, **kw):
    cfg = dict(vocab_size=11, n_layer=2, n_embd=16, n_head=4, block_size=8)
    cfg.update(kw)
    m = GPT(dtype=dtype, **cfg)
    m.init_weights(random.Random(seed))
    return m


@pytest.fixture
def auto_variants():
    yield
    K.force_variant("matmul", "auto")
    K.force_variant("attention", "auto")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_step_share_and_update_are_the_loop_step(dtype):
    """One step of train_steps == step_share over the whole batch + step_update,
    bit for bit (parameters, moments and loss), for several steps."""
    c, st = corpus()
    a, b = model(dtype), model(dtype)
    losses, lrs = a.train_steps(c, st, 0, 5, 40, batch_size=4)
    for s in range(5):
        loss = b.step_share(c, st, s, 4, 0, 4)
        lr_t = b.step_update(s, 40)
        assert loss == losses[s] and lr_t == lrs[s]
    assert np.array_equal(a.flat_params, b.flat_params)
    assert np.array_equal(a.adam_m, b.adam_m) and np.array_equal(a.adam_v, b.adam_v)


def test_shares_add_up_to_the_batch():
    """Two shares of a step accumulate the whole batch's gradient (the same
    sequential sums over the tokens: bit-identical) and its loss (to
    rounding); a share past the corpus end wraps around as train_steps does."""
    c, st = corpus()
    whole, parts = model("float64"), model("float64")
    s = 7  # (7 * 6) % 23 docs: wraps around the corpus
    lw = whole.step_share(c, st, s, 6, 0, 6)
    l1 = parts.step_share(c, st, s, 6, 0, 2)
    l2 = parts.step_share(c, st, s, 6, 2, 6)
    assert np.array_equal(whole.flat_grads, parts.flat_grads)
    assert abs((l1 + l2) - lw) <= 1e-15 * abs(lw)


def test_step_share_and_update_errors():
    c, st = corpus()
    m = model("float64")
    for lo, hi in ((0, 0), (3, 2), (-1, 2), (0, 5)):
        with pytest.raises(ValueError):
            m.step_share(c, st, 0, 4, lo, hi)
    bad = c.copy()
    bad[3] = 99
    with pytest.raises(microgpt_c.TokenError):
        m.step_share(bad, st, 0, 23, 0, 23)
    with pytest.raises(ValueError):
        m.step_update(-1, 10)
    m.flat_grads[0] = np.nan
    before = m.flat_params.copy()
    with pytest.raises(microgpt_c.NonFiniteLossError):
        m.step_update(0, 10)
    assert np.array_equal(before, m.flat_params) and not m.flat_grads.any()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matmul_variants_give_the_same_bits(dtype, auto_variants):
    """The matmul forward variants are each the sequential sum per output:
    forcing either gives the same training bits."""
    c, st = corpus()
    runs = {}
    for variant in ("token_lanes", "wT", "gemm"):
        K.force_variant("matmul", variant)
        m = model(dtype, n_embd=64, n_head=4)
        runs[variant] = (m.train_steps(c, st, 0, 3, 10, batch_size=1)[0], m.flat_params.copy())
    for variant in ("wT", "gemm"):
        assert np.array_equal(runs["token_lanes"][0], runs[variant][0]), variant
        assert np.array_equal(runs["token_lanes"][1], runs[variant][1]), variant


def full_corpus(vocab, T, n_docs, seed=0):
    """Documents that fill the block (BOS + T tokens each)."""
    r = np.random.default_rng(seed)
    docs = np.concatenate([np.concatenate([[vocab - 1], r.integers(0, vocab - 1, T)])
                           for _ in range(n_docs)]).astype(np.int32)
    return docs, np.arange(0, (T + 1) * n_docs + 1, T + 1, dtype=np.int64)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cfg", [dict(n_embd=48, n_head=4, block_size=32, n_layer=2, vocab_size=11),
                                 dict(n_embd=64, n_head=2, block_size=40, n_layer=1, vocab_size=70)],
                         ids=["C48-L2-V11", "C64-V70"])
def test_gemm_variant_gives_the_same_bits(dtype, cfg, auto_variants):
    """The packed GEMM (forward, dinp and the weight gradient fused with Adam)
    gives the bits of the wT variant: each output is the same sequential sum.
    Batches large enough for the automatic rule to pick it (>= 256 tokens),
    widths that leave ragged register tiles, on 1 thread and on 2 (the team
    step, its tasks split among threads)."""
    c, st = full_corpus(cfg["vocab_size"], cfg["block_size"], 24)
    runs = {}
    threads = [1, 2] if microgpt_c.openmp_enabled() else [1]
    before = microgpt_c.get_num_threads()
    try:
        for variant in ("wT", "gemm", "auto"):
            for nt in threads:
                K.force_variant("matmul", variant)
                microgpt_c.set_num_threads(nt)
                m = GPT(dtype=dtype, **cfg)
                m.init_weights(random.Random(1))
                losses = m.train_steps(c, st, 0, 4, 10, batch_size=8)[0]
                runs[variant, nt] = (losses, m.flat_params.copy(), m.adam_m.copy())
    finally:
        microgpt_c.set_num_threads(before)
    base = runs["wT", 1]
    for key, run in runs.items():
        for a, b in zip(run, base):
            assert np.array_equal(a, b), key


@pytest.mark.parametrize("N,C,NH", [(7, 16, 4), (13, 32, 4), (5, 16, 16), (30, 64, 2)])
def test_attention_forward_variants_are_bit_identical(N, C, NH, auto_variants):
    """Every attention forward variant (where it applies) gives the float64
    bits of the rows variant (the reference's operations)."""
    r = np.random.default_rng(N * C)
    q, k, v = (r.standard_normal((N, C)) for _ in range(3))
    outs = {}
    for variant in ("rows", "query_lanes", "channel_lanes", "gemm"):
        K.force_variant("attention", variant)
        out, att = np.zeros((N, C)), np.zeros((N, NH, N))
        K.attention_forward(out, att, q, k, v)
        outs[K.attention_variant(N, 0, C, NH)] = (out, att)
    assert "rows" in outs and len(outs) >= 2
    for name, (out, att) in outs.items():
        assert np.array_equal(out, outs["rows"][0]), name
        assert np.array_equal(att, outs["rows"][1]), name


# float64 lanes of one register in the copy of the kernels that runs (csrc/vbytes.h)
F64_LANES = {"x86-64-v4": 8, "avx512": 8, "x86-64-v3": 4, "avx2": 4}.get(_core.simd_variant(), 2)


def test_attention_variant_rule():
    # small heads, short: channel lanes where a head divides the register
    # (heads of 4 need 4 float64 lanes: AVX2 or AVX-512), else query lanes
    assert K.attention_variant(7, 0, 16, 4) == (
        "channel_lanes" if F64_LANES % 4 == 0 else "query_lanes")
    assert K.attention_variant(7, 0, 16, 8) == "channel_lanes"    # heads of 2 fit any register
    assert K.attention_variant(100, 0, 64, 4) == "query_lanes"    # one document
    assert K.attention_variant(1, 200, 64, 4) == "rows"           # inference, long cache
    assert K.attention_variant(64, 0, 128, 4) == "gemm"           # long document, wide heads
    assert K.attention_variant(200, 0, 64, 4) == "gemm"           # longer, heads of 16
    with pytest.raises(ValueError):
        K.force_variant("attention", "nonsense")
    with pytest.raises(ValueError):
        K.force_variant("nonsense", "auto")


def test_simd_variant_comes_from_c():
    v = _core.simd_variant()
    assert isinstance(v, str) and v
    info = microgpt_c.build_info()
    if info.get("simd_clones"):
        assert v in ("x86-64-v4", "x86-64-v3", "x86-64")
        assert info["simd_active"] == v


def test_one_core_for_model_and_kernels():
    """The kernels are the model's module: one C core, one thread setting."""
    assert K.matmul_forward is _core.matmul_forward
    assert microgpt_c.set_num_threads is _core.set_num_threads
