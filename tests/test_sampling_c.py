"""The C sampling loop (GPT.sample_tokens, used by sample_names) against the
Python loop it replaces: the same names and the same random stream afterwards,
for every option; other generators and every error take the Python loop."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

import microgpt_c as mc
from microgpt_c import api, sampling
from microgpt_c.data import Tokenizer
from microgpt_c.errors import NonFiniteLossError

DOCS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "harper", "evelyn",
        "abigail", "emily", "ella", "elizabeth", "camila", "luna", "sofia", "avery", "mila",
        "aria", "scarlett", "penelope", "layla", "chloe", "victoria", "madison", "eleanor",
        "grace", "nora", "riley", "zoey", "hannah", "hazel", "lily", "ellie", "violet",
        "lillian", "zoe", "stella", "aurora", "natalie", "emilia", "everly", "leah", "aubrey",
        "willow", "addison", "lucy", "audrey", "bella", "nova", "brooklyn", "paisley", "xander",
        "quinn", "jack", "kyle", "yusuf", "wyatt"]
TOK = Tokenizer(DOCS)


def python_loop(monkeypatch, *args, **kwargs):
    """sample_names with the C loop switched off."""
    with monkeypatch.context() as m:
        m.setattr(sampling, "_sample_in_c", lambda *a, **k: None)
        return api.sample_names(*args, **kwargs)


def model(dtype, n_embd=16, block_size=16, n_layer=1, seed=0, std=0.08):
    m = mc.GPT(TOK.vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=4,
               block_size=block_size, dtype=dtype)
    m.init_weights(random.Random(seed), std=std)
    return m


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(16, 16, 1), (32, 8, 2), (64, 64, 1), (8, 3, 1)],
                         ids=["16/16", "32/8x2", "64/64", "8/3"])
@pytest.mark.parametrize("temperature,top_k,prefix",
                         [(0.5, None, ""), (1.0, None, "em"), (2.0, 3, ""), (0.05, 1, "a"),
                          (1.0, TOK.vocab_size, "")])
def test_c_loop_gives_the_python_loops_names_and_stream(monkeypatch, dtype, shape,
                                                         temperature, top_k, prefix):
    n_embd, block_size, n_layer = shape
    if len(prefix) > block_size:
        pytest.skip("prefix longer than the block")
    for seed, std in ((1, 0.08), (2, 0.5)):
        m = model(dtype, n_embd, block_size, n_layer, seed, std)
        r_c, r_py = random.Random(seed + 10), random.Random(seed + 10)
        fast = api.sample_names(m, TOK, r_c, 15, temperature, top_k=top_k, prefix=prefix)
        slow = python_loop(monkeypatch, m, TOK, r_py, 15, temperature, top_k=top_k,
                           prefix=prefix)
        assert fast == slow
        assert r_c.getstate() == r_py.getstate()
        assert all(s.startswith(prefix) for s in fast)


def test_c_loop_is_used_and_matches_the_spec_stream():
    """sample_tokens itself: the names of the SPEC's loop written out here with
    model.logits and rng.choices."""
    m = model("float64", seed=3, std=0.3)
    rng = random.Random(7)
    drawn, state = m.sample_tokens(rng.getstate(), 0.5, 0, [], TOK.bos, 10)
    ref_rng = random.Random(7)
    expect = []
    for _ in range(10):
        token, out = TOK.bos, []
        for pos in range(m.block_size):
            probs = mc.softmax_temperature(m.logits(token, pos), 0.5)
            token = ref_rng.choices(range(TOK.vocab_size), weights=probs.tolist())[0]
            if token == TOK.bos:
                break
            out.append(token)
        expect.append(out)
    assert drawn == expect
    rng.setstate(state)
    assert rng.random() == ref_rng.random()


def test_stream_continues_across_calls(monkeypatch):
    """Two C runs in a row leave the stream where two Python runs do (the
    624-word regeneration is crossed many times)."""
    m = model("float32", seed=4, std=0.4)
    r_c, r_py = random.Random(5), random.Random(5)
    a = api.sample_names(m, TOK, r_c, 300, 1.0) + api.sample_names(m, TOK, r_c, 7, 0.7)
    b = (python_loop(monkeypatch, m, TOK, r_py, 300, 1.0)
         + python_loop(monkeypatch, m, TOK, r_py, 7, 0.7))
    assert a == b and r_c.getstate() == r_py.getstate()


def test_other_generators_take_the_python_loop(monkeypatch):
    class Counting(random.Random):
        calls = 0

        def random(self):
            Counting.calls += 1
            return super().random()

    m = model("float64", seed=5)
    got = api.sample_names(m, TOK, Counting(9), 5, 0.5)
    assert Counting.calls > 0  # the overridden random() was used
    assert got == python_loop(monkeypatch, m, TOK, random.Random(9), 5, 0.5)


def test_non_finite_weights_raise_as_before_and_leave_the_stream(monkeypatch):
    m = model("float64", seed=6)
    m.params["lm_head"][:] = np.nan
    rng = random.Random(1)
    before = rng.getstate()
    with pytest.raises(NonFiniteLossError):
        api.sample_names(m, TOK, rng, 3, 0.5)
    with pytest.raises(NonFiniteLossError):
        python_loop(monkeypatch, m, TOK, random.Random(1), 3, 0.5)
    # nothing was drawn: the first draw needs a finite softmax
    assert rng.getstate() == before


@pytest.mark.parametrize("bad", [
    lambda m, st: m.sample_tokens(st, 0.5, 0, [], TOK.vocab_size, 1),       # bos out of range
    lambda m, st: m.sample_tokens(st, 0.5, 0, [TOK.vocab_size], TOK.bos, 1),  # prefix id
    lambda m, st: m.sample_tokens(st, 0.5, 0, [2 ** 32], TOK.bos, 1),       # no int32 wrap
    lambda m, st: m.sample_tokens(st, 0.5, 0, [0] * 17, TOK.bos, 1),        # prefix too long
    lambda m, st: m.sample_tokens((3, (0,) * 10, None), 0.5, 0, [], TOK.bos, 1),  # not a state
    lambda m, st: m.sample_tokens(st, 0.5, 0, [], TOK.bos, -1),             # count
    lambda m, st: m.sample_tokens(st, math.nan, 0, [], TOK.bos, 1),         # temperature
])
def test_sample_tokens_rejects_bad_arguments(bad):
    m = model("float64")
    with pytest.raises((ValueError, mc.MicrogptError)):
        bad(m, random.Random(0).getstate())


def test_zero_samples():
    m = model("float64")
    rng = random.Random(0)
    drawn, state = m.sample_tokens(rng.getstate(), 0.5, 0, [], TOK.bos, 0)
    assert drawn == [] and state == rng.getstate()
