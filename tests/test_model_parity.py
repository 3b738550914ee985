"""Whole-model parity: the C GPT against the pure-Python ReferenceGPT.

Weights, loss and every gradient, a 20-step training run with Adam and
sampling, batching, KV-cache inference, thread invariance, a short run on the
real names file, and the model's API errors.
"""
from __future__ import annotations

import functools
import gc
import math
import random
import string

import numpy as np
import pytest

import microgpt_c
from microgpt_c import GPT, reference as R
from microgpt_c import _core

from conftest import SHARED_NAMES, assert_close_rel, rel_err

# float32 model vs the float64 reference (weights rounded to float32 too):
# the forward is ~100 dependent rounding steps of u = 6e-8 (sums of <= 4C
# terms, rmsnorm, softmax, log) that mostly average out; observed <= 1.3e-7
# relative on the loss, we allow 1e-5.
F32_LOSS_RTOL = 1e-5
# gradients go through the backward as well (cancellation in the softmax and
# rmsnorm backward); observed <= 4.4e-7 norm-wise per tensor.  1e-5 keeps a
# 20x margin and is still far below what any real error (a missing term, a
# wrong index: O(1e-2..1) relative) would give.
F32_GRAD_RTOL = 1e-5

DEFAULT = dict(vocab_size=27, n_layer=1, n_embd=16, n_head=4, block_size=16)


def make_pair(vocab_size, n_layer, n_embd, n_head, block_size, dtype="float64", seed=0):
    ref = R.ReferenceGPT(vocab_size, n_layer, n_embd, n_head, block_size,
                         rng=random.Random(seed))
    gpt = GPT(vocab_size, n_layer, n_embd, n_head, block_size, dtype=dtype)
    gpt.init_weights(random.Random(seed))
    return ref, gpt


def random_tokens(vocab_size, n, seed):
    r = random.Random(seed)
    return [r.randrange(vocab_size) for _ in range(n)]


# (config, sequence length): default; 2 layers x 32; a sequence longer than the
# block (truncated); an odd size with 3 heads of 4 and a 5-token block
PARITY_CASES = {
    "default": (DEFAULT, 13),
    "L2-C32": (dict(vocab_size=27, n_layer=2, n_embd=32, n_head=4, block_size=16), 8),
    "longer-than-block": (dict(vocab_size=11, n_layer=1, n_embd=16, n_head=4, block_size=8), 14),
    "odd": (dict(vocab_size=5, n_layer=3, n_embd=12, n_head=3, block_size=5), 7),
}


@functools.lru_cache(maxsize=None)
def reference_loss_and_grads(case):
    """The reference's loss and gradients for one case (computed once: slow)."""
    cfg, n = PARITY_CASES[case]
    ref = R.ReferenceGPT(**cfg, rng=random.Random(0))
    tokens = random_tokens(cfg["vocab_size"], n, seed=7)
    loss = ref.forward_backward(tokens)
    return tokens, loss, {k: np.array(g) for k, g in ref.grads().items()}


# ---------------------------------------------------------------- weights
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_init_weights_identical_to_reference(case, dtype):
    cfg, _ = PARITY_CASES[case]
    ref, gpt = make_pair(**cfg, dtype=dtype, seed=11)
    shapes = R.param_shapes(cfg["vocab_size"], cfg["n_layer"], cfg["n_embd"], cfg["block_size"])
    assert list(gpt.params) == list(shapes) == list(microgpt_c.tensor_names(cfg["n_layer"]))
    assert list(gpt.grads) == list(shapes)
    assert gpt.num_params == len(ref.params) == sum(a * b for a, b in shapes.values())
    for name, w in ref.weights().items():
        p = gpt.params[name]
        assert p.shape == shapes[name] and p.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(p, np.array(w, dtype=dtype), err_msg=name)
    assert all(np.all(g == 0) for g in gpt.grads.values())


def test_default_parameter_count():
    assert GPT(27).num_params == 4192


# ---------------------------------------------------------------- loss + gradients
@pytest.fixture(params=["auto", "gemm"])
def matmul_variant(request):
    """The model's automatic matmul variant, and the packed GEMM forced (it is
    chosen automatically only for large batches)."""
    from microgpt_c import _kernels as K
    K.force_variant("matmul", request.param)
    yield request.param
    K.force_variant("matmul", "auto")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_loss_and_every_gradient_match_reference(case, dtype, matmul_variant):
    cfg, _ = PARITY_CASES[case]
    tokens, ref_loss, ref_grads = reference_loss_and_grads(case)
    _, gpt = make_pair(**cfg, dtype=dtype, seed=0)
    loss = gpt.forward_backward(tokens)
    f64 = dtype == "float64"
    assert abs(loss - ref_loss) <= (1e-12 if f64 else F32_LOSS_RTOL) * abs(ref_loss)
    for name, g in ref_grads.items():
        assert np.any(g != 0), name  # every tensor takes part
        assert_close_rel(gpt.grads[name], g, 1e-12 if f64 else F32_GRAD_RTOL, what=name)


def test_forward_backward_accumulates_and_adam_zeroes():
    tokens = reference_loss_and_grads("default")[0]
    _, gpt = make_pair(**DEFAULT)
    gpt.forward_backward(tokens)
    once = {k: v.copy() for k, v in gpt.grads.items()}
    gpt.forward_backward(tokens)
    for name, g in once.items():
        assert_close_rel(gpt.grads[name], 2 * g, 1e-14, what=name)
    before = gpt.flat_params.copy()
    microgpt_c.Adam(gpt, lr=0.01, num_steps=10).step()
    assert np.all(gpt.flat_grads == 0)
    assert not np.array_equal(gpt.flat_params, before)


def test_forward_then_backward_equals_forward_backward():
    tokens, ref_loss, ref_grads = reference_loss_and_grads("odd")
    _, gpt = make_pair(**PARITY_CASES["odd"][0])
    loss = gpt.forward(tokens)
    assert np.all(gpt.flat_grads == 0)  # forward alone leaves the gradients
    gpt.backward()
    assert abs(loss - ref_loss) <= 1e-12 * ref_loss
    for name, g in ref_grads.items():
        assert_close_rel(gpt.grads[name], g, 1e-12, what=name)


# ---------------------------------------------------------------- training
def synthetic_docs(n=50, seed=0):
    """Random lowercase names of length 1..20 (some longer than the block)."""
    r = random.Random(seed)
    return ["".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(1, 20)))
            for _ in range(n)]


def c_train(docs, num_steps, dtype="float64", num_samples=0, temperature=0.5, seed=42,
            **model_kw):
    """The SPEC's program on the C model (same rng stream as reference.train)."""
    rng = random.Random(seed)
    docs = list(docs)
    rng.shuffle(docs)
    uchars = sorted(set("".join(docs)))
    bos = len(uchars)
    model = GPT(len(uchars) + 1, dtype=dtype, **model_kw)
    model.init_weights(rng)
    adam = microgpt_c.Adam(model, lr=0.01, num_steps=num_steps)
    losses = []
    for step in range(num_steps):
        doc = docs[step % len(docs)]
        tokens = [bos] + [uchars.index(ch) for ch in doc] + [bos]
        losses.append(model.forward_backward(tokens))
        adam.step()
    samples = []
    for _ in range(num_samples):
        token, out = bos, []
        for pos in range(model.block_size):
            probs = microgpt_c.softmax_temperature(model.logits(token, pos), temperature)
            token = rng.choices(range(model.vocab_size), weights=probs.tolist())[0]
            if token == bos:
                break
            out.append(uchars[token])
        samples.append("".join(out))
    return losses, samples, model


TRAIN_STEPS, TRAIN_SAMPLES = 20, 8


@pytest.fixture(scope="module")
def reference_run():
    docs = synthetic_docs()
    assert any(len(d) + 1 > 16 for d in docs)  # some documents get truncated
    return docs, R.train(docs, num_steps=TRAIN_STEPS, num_samples=TRAIN_SAMPLES)


def test_training_trajectory_float64(reference_run):
    docs, ref = reference_run
    losses, samples, model = c_train(docs, TRAIN_STEPS, num_samples=TRAIN_SAMPLES)
    assert len(losses) == TRAIN_STEPS
    for step, (a, b) in enumerate(zip(losses, ref["losses"])):
        assert abs(a - b) <= 1e-12 * abs(b), (step, a, b)
    for name, w in ref["model"].weights().items():
        assert_close_rel(model.params[name], np.array(w), 1e-10, what=name)
    assert samples == ref["samples"]


def test_training_trajectory_float32(reference_run):
    docs, ref = reference_run
    losses, _, model = c_train(docs, TRAIN_STEPS, dtype="float32")
    # per-step losses: observed 1.1e-7 norm-wise after 20 steps; allow 1e-5.
    assert rel_err(losses, ref["losses"]) <= 1e-5
    # Adam normalises each update (m_hat / sqrt(v_hat) ~ +-1 in the first steps),
    # so a float32 gradient error could only flip an update (2*lr = 0.02) for a
    # gradient within ~1e-6 relative of zero; gradients that are exactly zero
    # stay zero in both.  Observed 5e-7 norm-wise; 1e-4 leaves a margin while
    # still catching a single flipped update (~0.02 / 0.3).
    for name, w in ref["model"].weights().items():
        assert_close_rel(model.params[name], np.array(w), 1e-4, what=name)


# ---------------------------------------------------------------- batching
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_is_mean_of_documents(dtype):
    """Documents packed back to back never attend across their boundaries."""
    seqs = [random_tokens(27, 13, 1), random_tokens(27, 4, 2), random_tokens(27, 30, 3)]
    _, gpt = make_pair(**DEFAULT, dtype=dtype)
    losses, grads = [], []
    for s in seqs:
        losses.append(gpt.forward_backward(s))
        grads.append(gpt.flat_grads.astype(np.float64))
        gpt.zero_grad()
    loss = gpt.forward_backward_batch(seqs)
    f64 = dtype == "float64"
    assert abs(loss - np.mean(losses)) <= (1e-14 if f64 else 1e-6) * abs(loss)
    assert_close_rel(gpt.flat_grads, np.mean(grads, axis=0), 1e-12 if f64 else 1e-5)
    # and the order of the documents does not matter
    gpt.zero_grad()
    loss2 = gpt.forward_backward_batch(seqs[::-1])
    assert abs(loss2 - loss) <= (1e-14 if f64 else 1e-6) * abs(loss)


# ---------------------------------------------------------------- inference
@pytest.mark.parametrize("case", ["default", "odd"])
def test_kv_cache_logits_match_reference(case):
    cfg, _ = PARITY_CASES[case]
    ref, gpt = make_pair(**cfg, seed=5)
    tokens = random_tokens(cfg["vocab_size"], cfg["block_size"], seed=9)
    keys = [[] for _ in range(cfg["n_layer"])]
    values = [[] for _ in range(cfg["n_layer"])]
    first = []
    for pos, tok in enumerate(tokens):
        want = np.array([v.data for v in ref.gpt(tok, pos, keys, values)])
        got = gpt.logits(tok, pos)
        assert got.dtype == np.float64 and got.shape == (cfg["vocab_size"],)
        assert_close_rel(got, want, 1e-13, what=f"pos {pos}")
        first.append(got)
    # a new sample restarts at position 0 and overwrites the cache
    for pos, tok in enumerate(tokens[:3]):
        np.testing.assert_array_equal(gpt.logits(tok, pos), first[pos])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kv_cache_consistent_with_training_forward(dtype):
    """softmax(logits) at the last position == the training forward's probs.

    n * loss(seq + [v]) - (n - 1) * loss(seq) = -log p(v | seq) for every v.
    """
    V = DEFAULT["vocab_size"]
    _, gpt = make_pair(**DEFAULT, dtype=dtype, seed=3)
    seq = random_tokens(V, 6, seed=4)
    n = len(seq)
    for pos, tok in enumerate(seq):
        logits = gpt.logits(tok, pos)
    probs = microgpt_c.softmax_temperature(logits, 1.0)
    prefix = (n - 1) * gpt.forward(seq)
    from_training = np.array([math.exp(prefix - n * gpt.forward(seq + [v])) for v in range(V)])
    assert_close_rel(from_training, probs, 1e-12 if dtype == "float64" else 1e-5)


# ---------------------------------------------------------------- threads
@pytest.fixture
def restore_threads():
    n = microgpt_c.get_num_threads()
    yield
    microgpt_c.set_num_threads(n)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_results_do_not_depend_on_threads(dtype, restore_threads):
    """Sizes where the kernels go parallel (N*C*OC and N*N*C >= 200000)."""
    cfg = dict(vocab_size=27, n_layer=1, n_embd=128, n_head=4, block_size=64)
    seqs = [random_tokens(27, 65, seed=s) for s in range(4)]
    results = {}
    for threads in (1, 2):
        microgpt_c.set_num_threads(threads)
        gpt = GPT(**cfg, dtype=dtype)
        gpt.init_weights(random.Random(1))
        single = gpt.forward_backward(seqs[0])
        g_single = gpt.flat_grads.copy()
        gpt.zero_grad()
        batch = gpt.forward_backward_batch(seqs)
        results[threads] = (single, g_single, batch, gpt.flat_grads.copy(),
                            gpt.logits(seqs[0][0], 0))
    one, two = results[1], results[2]
    assert one[0] == two[0] and one[2] == two[2]
    for a, b in zip(one[1:], two[1:]):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------- real data
@pytest.mark.skipif(not SHARED_NAMES.exists(), reason=f"{SHARED_NAMES} not found")
def test_real_names_first_steps():
    with open(SHARED_NAMES) as f:
        docs = [line.strip() for line in f if line.strip()]
    assert len(docs) == 32033
    ref = R.train(docs, num_steps=3, num_samples=2)
    losses, samples, model = c_train(docs, 3, num_samples=2)
    assert model.vocab_size == 27 and model.num_params == 4192
    assert f"{ref['losses'][0]:.4f}" == "3.3660"
    assert f"{losses[0]:.4f}" == "3.3660"
    for a, b in zip(losses, ref["losses"]):
        assert abs(a - b) <= 1e-12 * b
    assert samples == ref["samples"]


# ---------------------------------------------------------------- API errors
@pytest.mark.parametrize("kwargs", [
    dict(vocab_size=0), dict(vocab_size=-3), dict(vocab_size=27, n_layer=0),
    dict(vocab_size=27, n_embd=0), dict(vocab_size=27, n_head=0),
    dict(vocab_size=27, block_size=0), dict(vocab_size=27, block_size=-16),
    dict(vocab_size=27, dtype="float16"), dict(vocab_size=27, dtype="int32"),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_bad_config(kwargs):
    with pytest.raises(microgpt_c.ConfigError) as info:
        GPT(**kwargs)
    assert isinstance(info.value, ValueError)


def test_n_embd_not_divisible_by_n_head():
    with pytest.raises(microgpt_c.ConfigError, match="divisible") as info:
        GPT(27, n_embd=10, n_head=4)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs", [dict(vocab_size=27.0), dict(vocab_size=27, n_embd="16"),
                                    dict(vocab_size=27, n_layer=True)])
def test_non_integer_config(kwargs):
    with pytest.raises(TypeError):
        GPT(**kwargs)


def test_huge_config_overflow_raises_before_allocating():
    with pytest.raises(microgpt_c.ModelTooLargeError) as info:
        GPT(27, n_embd=2**30, n_head=1)
    assert isinstance(info.value, MemoryError)
    assert "GiB" in str(info.value) or "overflow" in str(info.value)


def test_config_larger_than_memory_raises_before_allocating(monkeypatch):
    """The size check against available memory comes before any allocation
    (n_embd=4096 needs ~7 GiB; pretend only 1 GiB is available)."""
    monkeypatch.setattr(_core, "_available_memory", lambda: 2**30)
    with pytest.raises(microgpt_c.ModelTooLargeError, match="GiB") as info:
        GPT(27, n_embd=4096, n_head=1)
    assert isinstance(info.value, MemoryError)
    GPT(27)  # small models still fit


@pytest.fixture(scope="module")
def model():
    gpt = GPT(**DEFAULT)
    gpt.init_weights(random.Random(0))
    return gpt


@pytest.mark.parametrize("seqs,exc", [
    ([[0, 27]], microgpt_c.TokenError),
    ([[-1, 0, 1]], microgpt_c.TokenError),
    ([[0, 1], [0, 100]], microgpt_c.TokenError),
    ([[0.0, 1.0, 2.0]], TypeError),
    ([np.array([0.5, 1.0])], TypeError),
    ([[5]], microgpt_c.SequenceLengthError),
    ([[]], microgpt_c.SequenceLengthError),
    ([[0, 1, 2], [3]], microgpt_c.SequenceLengthError),
    ([], microgpt_c.SequenceLengthError),
    ([[[0, 1], [2, 3]]], ValueError),
], ids=["token-too-big", "negative-token", "second-doc", "float-tokens", "float-array",
        "one-token", "empty-doc", "short-second-doc", "empty-batch", "2d-doc"])
def test_bad_sequences(model, seqs, exc):
    before = model.flat_grads.copy()
    with pytest.raises(exc):
        model.forward_backward_batch(seqs)
    np.testing.assert_array_equal(model.flat_grads, before)
    if len(seqs) == 1:
        with pytest.raises(exc):
            model.forward_backward(seqs[0])


def test_error_classes():
    assert issubclass(microgpt_c.TokenError, ValueError)
    assert issubclass(microgpt_c.SequenceLengthError, ValueError)
    assert issubclass(microgpt_c.ModelTooLargeError, MemoryError)
    assert issubclass(microgpt_c.ModelStateError, RuntimeError)


def test_backward_needs_a_forward():
    gpt = GPT(**DEFAULT)
    with pytest.raises(microgpt_c.ModelStateError):
        gpt.backward()
    gpt.forward([0, 1, 2])
    gpt.logits(0, 0)  # inference discards the saved forward
    with pytest.raises(microgpt_c.ModelStateError):
        gpt.backward()
    gpt.forward([0, 1, 2])
    gpt.backward()
    gpt.params["wte"][:] = np.inf
    with pytest.raises(microgpt_c.NonFiniteLossError):
        gpt.forward([0, 1, 2])  # a forward that fails in C discards the saved one
    with pytest.raises(microgpt_c.ModelStateError):
        gpt.backward()


@pytest.mark.parametrize("token,pos,exc", [
    (0, 16, microgpt_c.SequenceLengthError), (0, -1, microgpt_c.SequenceLengthError),
    (27, 0, microgpt_c.TokenError), (-1, 0, microgpt_c.TokenError), (1.0, 0, TypeError),
    (0, 0.5, TypeError),
    # ids beyond a C int are out of range too (not an OverflowError)
    (2**40, 0, microgpt_c.TokenError), (0, 2**40, microgpt_c.SequenceLengthError)])
def test_bad_logits_arguments(model, token, pos, exc):
    with pytest.raises(exc):
        model.logits(token, pos)


def test_non_finite_loss_is_an_error():
    gpt = GPT(**DEFAULT)
    gpt.params["wte"][:] = np.nan
    with pytest.raises(microgpt_c.NonFiniteLossError):
        gpt.forward_backward([0, 1, 2])
    with pytest.raises(microgpt_c.ModelStateError):
        gpt.backward()


# ---------------------------------------------------------------- parameter views
def test_views_keep_the_model_alive():
    p = GPT(27).params["wte"]
    g = GPT(27).grads["lm_head"]
    flat = GPT(27).flat_params
    gc.collect()
    assert p.shape == (27, 16) and p.sum() == 0 and g.sum() == 0 and flat.sum() == 0
    p[:] = 1.5  # still writable memory owned by the (otherwise dropped) model
    assert p.sum() == 1.5 * 27 * 16


def test_writing_params_changes_the_model():
    _, gpt = make_pair(**DEFAULT)
    tokens = [26, 3, 4, 26]
    loss = gpt.forward(tokens)
    gpt.params["lm_head"][:] = 0.0  # uniform predictions
    assert gpt.forward(tokens) == pytest.approx(math.log(27), rel=1e-15)
    assert loss != pytest.approx(math.log(27), rel=1e-6)
    np.testing.assert_array_equal(gpt.logits(26, 0), np.zeros(27))
    # the flat view and the named views share memory
    gpt.flat_params[:] = 0.25
    assert np.all(gpt.params["layer0.mlp_fc2"] == 0.25)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_docs", [2, 3, 7])
def test_batched_gradients_match_reference(n_docs, threads, restore_threads):
    """A batched forward/backward: its loss and gradients are the mean of
    the reference's per-document ones, to float64 rounding.  (At this size
    the step is serial; the team path gives the same bits as the serial one,
    checked in test_threads.py at sizes above the team's threshold.)"""
    microgpt_c.set_num_threads(threads)
    seqs, ref_loss, ref_grads = _reference_batch(n_docs)
    _, gpt = make_pair(**BATCH_CFG, seed=2)
    loss = gpt.forward_backward_batch(seqs)
    assert abs(loss - ref_loss) <= 1e-13 * abs(loss)
    for name, g in ref_grads.items():
        assert_close_rel(gpt.grads[name], g, 1e-12, what=name)


BATCH_CFG = dict(vocab_size=27, n_layer=1, n_embd=32, n_head=4, block_size=16)


@functools.lru_cache(maxsize=None)
def _reference_batch(n_docs):
    """Documents, the reference's mean loss and mean gradients (slow: once)."""
    seqs = [random_tokens(27, 5 + 4 * (i % 4), seed=40 + i) for i in range(n_docs)]
    ref, _ = make_pair(**BATCH_CFG, seed=2)
    losses = [ref.forward_backward(s) for s in seqs]  # gradients accumulate: their sum
    return seqs, float(np.mean(losses)), {k: np.array(g) / n_docs for k, g in ref.grads().items()}
