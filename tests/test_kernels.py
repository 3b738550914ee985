"""Every C kernel of microgpt_c._kernels against the pure-Python reference.

Each op is described once (inputs, C forward, the same computation built from
``reference`` Values, C backward) and the generic tests below check, for
float64 and float32 and several shapes:

1. C forward == reference forward (float64: to rounding, mostly bit-identical);
2. C backward == the reference's autograd for ``L = sum(out * G)``, and the
   backward kernels accumulate (``+=``) into their outputs;
3. the reference's own gradients == central finite differences;
4. the wrappers reject wrong shapes, dtypes and non-contiguous arrays.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import microgpt_c
from microgpt_c import _kernels as K
from microgpt_c import reference as R
from microgpt_c.reference import Value

from conftest import assert_close_rel, backprop_weighted, to_values, values_data, values_grad

DTYPES = [np.float64, np.float32]

# float64: the forward kernels do the reference's operations in the reference's
# order, so they agree to the last bit or within an ulp or two.
F64_FWD_RTOL = 1e-14
# float64 backward: the kernels use closed forms (e.g. softmax: p - onehot) and
# a different summation order than the scalar autograd, so a few ulps of the
# largest gradient entry.
F64_BWD_RTOL = 1e-12
# float32 vs the float64 reference on the same (float32-representable) inputs:
# unit roundoff is u = 6e-8; the longest dot products here have 64 terms, whose
# norm-wise error is bounded by ~n*u = 4e-6 (and is ~sqrt(n)*u ~ 5e-7 in
# practice: the largest seen is 2.4e-7).
F32_FWD_RTOL = 1e-5
# float32 backward: one more level of sums (over N, heads and positions) and
# the softmax backward's cancellation (dw - sum w*dw) add a few more u; the
# largest seen is 3.6e-7, the same n*u bound applies.
F32_BWD_RTOL = 1e-5


def fwd_rtol(dtype):
    return F64_FWD_RTOL if dtype == np.float64 else F32_FWD_RTOL


def bwd_rtol(dtype):
    return F64_BWD_RTOL if dtype == np.float64 else F32_BWD_RTOL


def randn(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# ======================================================================= ops
class Op:
    """One kernel pair: how to make inputs, run C, and build the reference."""

    name = ""
    shapes: list = []            # shapes for the forward tests
    backward_shapes = None       # shapes for the backward tests (default: shapes)
    fd_shape = None              # a small shape for the finite-difference test
    grad_inputs: tuple = ()      # float inputs that receive gradients
    out_grads: tuple = ()        # outputs that carry an upstream gradient
    fwd_floor: dict = {}         # output name -> floor of the error scale (see below)

    def bwd_floor(self, x, fwd, dout):
        """Floor of the error scale of the input gradients (None: max|expected|).

        Needed where the exact gradient is a small difference of larger terms
        that float32 cannot resolve (the error scale is then that of the terms).
        """
        return None

    def make(self, rng, shape, dtype, fd=False):
        raise NotImplementedError

    def forward(self, x):
        """C forward: dict of output arrays."""
        raise NotImplementedError

    def ref_forward(self, vals, x):
        """Reference forward on ``vals`` (float inputs as Values): dict of nested Values."""
        raise NotImplementedError

    def backward(self, x, fwd, dout, grads):
        """C backward, accumulating into the arrays of ``grads``."""
        raise NotImplementedError


def float_values(x):
    """The float arrays of an op's inputs as nested Values (ints and "cfg" stay out)."""
    return {k: to_values(a) for k, a in x.items()
            if isinstance(a, np.ndarray) and a.dtype.kind == "f"}


class Encoder(Op):
    name = "encoder"
    shapes = [(1, 1, 2, 1), (5, 12, 7, 6), (16, 16, 27, 16), (9, 24, 3, 4)]  # (N, C, V, T)
    fd_shape = (4, 3, 3, 3)
    grad_inputs = ("wte", "wpe")
    out_grads = ("out",)

    def make(self, rng, shape, dtype, fd=False):
        N, C, V, T = shape
        # few tokens/positions, so rows of wte and wpe are shared (accumulated)
        return {"inp": rng.integers(0, V, N).astype(np.int32),
                "pos": rng.integers(0, T, N).astype(np.int32),
                "wte": randn(rng, (V, C), dtype), "wpe": randn(rng, (T, C), dtype)}

    def forward(self, x):
        out = np.zeros((len(x["inp"]), x["wte"].shape[1]), x["wte"].dtype)
        K.encoder_forward(out, x["inp"], x["pos"], x["wte"], x["wpe"])
        return {"out": out}

    def ref_forward(self, vals, x):
        return {"out": [[t + p for t, p in zip(vals["wte"][tok], vals["wpe"][pos])]
                        for tok, pos in zip(x["inp"], x["pos"])]}

    def backward(self, x, fwd, dout, grads):
        K.encoder_backward(grads["wte"], grads["wpe"], dout["out"], x["inp"], x["pos"])


class RMSNorm(Op):
    name = "rmsnorm"
    shapes = [(1, 1), (1, 16), (5, 12), (3, 24), (16, 64)]  # (N, C)
    fd_shape = (3, 5)
    grad_inputs = ("inp",)
    out_grads = ("out",)

    def make(self, rng, shape, dtype, fd=False):
        return {"inp": randn(rng, shape, dtype)}

    def forward(self, x):
        N, C = x["inp"].shape
        out, scale = np.zeros((N, C), x["inp"].dtype), np.zeros(N, x["inp"].dtype)
        K.rmsnorm_forward(out, scale, x["inp"])
        return {"out": out, "scale": scale}

    def bwd_floor(self, x, fwd, dout):
        # dx = d*s - x*(x.d)*s^3/C: for C = 1 (or x in the direction of d) the
        # two terms of size |d|*s cancel almost exactly
        return float(np.max(np.abs(dout["out"])) * np.max(fwd["scale"]))

    def ref_forward(self, vals, x):
        rows = vals["inp"]
        # the saved scale: the reference's (mean(x*x) + 1e-5) ** -0.5
        scales = [(sum(xi * xi for xi in row) / len(row) + 1e-5) ** -0.5 for row in rows]
        return {"out": [R.rmsnorm(row) for row in rows], "scale": scales}

    def backward(self, x, fwd, dout, grads):
        K.rmsnorm_backward(grads["inp"], dout["out"], x["inp"], fwd["scale"])


class Matmul(Op):
    name = "matmul"
    shapes = [(1, 1, 1), (1, 16, 27), (5, 12, 48), (7, 24, 3), (16, 16, 64), (4, 64, 16)]
    fd_shape = (3, 4, 5)  # (N, C, OC)
    grad_inputs = ("inp", "weight")
    out_grads = ("out",)

    def make(self, rng, shape, dtype, fd=False):
        N, C, OC = shape
        return {"inp": randn(rng, (N, C), dtype), "weight": randn(rng, (OC, C), dtype)}

    def forward(self, x):
        out = np.zeros((x["inp"].shape[0], x["weight"].shape[0]), x["inp"].dtype)
        K.matmul_forward(out, x["inp"], x["weight"])
        return {"out": out}

    def ref_forward(self, vals, x):
        return {"out": [R.linear(row, vals["weight"]) for row in vals["inp"]]}

    def backward(self, x, fwd, dout, grads):
        K.matmul_backward(grads["inp"], grads["weight"], dout["out"], x["inp"], x["weight"])


def ref_attention_weights(q, k, n_head, p0, T):
    """(N, NH, T) softmax weights as the reference's attend() computes them."""
    N, hd = len(q), len(q[0]) // n_head
    att = np.zeros((N, n_head, T))
    for i in range(N):
        for h in range(n_head):
            hs = h * hd
            logits = [sum(q[i][hs + j] * k[t][hs + j] for j in range(hd)) / hd ** 0.5
                      for t in range(p0 + i + 1)]
            att[i, h, :p0 + i + 1] = values_data(R.softmax(logits))
    return att


class Attention(Op):
    name = "attention"
    # (N, p0, C, NH, T); p0 > 0 is KV-cache inference (queries at p0 .. p0+N-1)
    shapes = [(1, 0, 16, 4, 1), (5, 0, 12, 3, 5), (6, 0, 24, 3, 9), (4, 0, 8, 1, 4),
              (4, 0, 6, 6, 7), (16, 0, 16, 4, 16), (1, 7, 16, 4, 16), (3, 2, 12, 3, 8),
              (1, 4, 6, 6, 5)]
    backward_shapes = [s for s in shapes if s[1] == 0]
    fd_shape = (4, 0, 6, 2, 5)
    grad_inputs = ("q", "k", "v")
    out_grads = ("out",)

    def make(self, rng, shape, dtype, fd=False):
        N, p0, C, NH, T = shape
        return {"q": randn(rng, (N, C), dtype), "k": randn(rng, (p0 + N, C), dtype),
                "v": randn(rng, (p0 + N, C), dtype), "cfg": (p0, NH, T)}

    def forward(self, x):
        (N, C), (p0, NH, T) = x["q"].shape, x["cfg"]
        out = np.zeros((N, C), x["q"].dtype)
        att = np.zeros((N, NH, T), x["q"].dtype)
        K.attention_forward(out, att, x["q"], x["k"], x["v"], p0)
        return {"out": out, "att": att}

    def ref_forward(self, vals, x):
        q, k, v = vals["q"], vals["k"], vals["v"]
        p0, NH, T = x["cfg"]
        if p0 == 0:
            out = R.attention(q, k, v, NH)
        else:
            out = [R.attend(qi, k[:p0 + i + 1], v[:p0 + i + 1], NH) for i, qi in enumerate(q)]
        att = ref_attention_weights(q, k, NH, p0, T)
        return {"out": out, "att": [[[Value(w) for w in row] for row in mat] for mat in att]}

    def backward(self, x, fwd, dout, grads):
        assert x["cfg"][0] == 0, "attention_backward is the training (p0 = 0) backward"
        K.attention_backward(grads["q"], grads["k"], grads["v"], dout["out"], fwd["att"],
                             x["q"], x["k"], x["v"])


class Relu(Op):
    name = "relu"
    shapes = [(1,), (7,), (100,)]
    fd_shape = (12,)
    grad_inputs = ("inp",)
    out_grads = ("out",)

    def make(self, rng, shape, dtype, fd=False):
        x = randn(rng, shape, dtype)
        if fd:  # keep away from the kink for finite differences
            x = (np.sign(x) * np.maximum(np.abs(x), 0.1)).astype(dtype)
        elif x.size > 3:  # exact zeros: relu'(0) = 0 in both implementations
            x[::4] = 0
        return {"inp": x}

    def forward(self, x):
        out = np.zeros_like(x["inp"])
        K.relu_forward(out, x["inp"])
        return {"out": out}

    def ref_forward(self, vals, x):
        return {"out": R.relu(vals["inp"])}

    def backward(self, x, fwd, dout, grads):
        K.relu_backward(grads["inp"], dout["out"], x["inp"])


class Residual(Op):
    name = "residual"
    shapes = [(1,), (13,), (64,)]
    fd_shape = (5,)
    grad_inputs = ("inp1", "inp2")
    out_grads = ("out",)

    def make(self, rng, shape, dtype, fd=False):
        return {"inp1": randn(rng, shape, dtype), "inp2": randn(rng, shape, dtype)}

    def forward(self, x):
        out = np.zeros_like(x["inp1"])
        K.residual_forward(out, x["inp1"], x["inp2"])
        return {"out": out}

    def ref_forward(self, vals, x):
        return {"out": [a + b for a, b in zip(vals["inp1"], vals["inp2"])]}

    def backward(self, x, fwd, dout, grads):
        K.residual_backward(grads["inp1"], grads["inp2"], dout["out"])


class CrossEntropy(Op):
    name = "crossentropy_softmax"
    shapes = [(1, 2), (1, 27), (5, 5), (8, 27), (3, 100)]  # (N, V)
    fd_shape = (3, 6)
    grad_inputs = ("logits",)
    out_grads = ("losses",)  # the upstream gradient is dlosses, the weight of each row
    # -log(p) for p near 1 is small, but its error is ~u in absolute terms
    # (p itself is rounded to float32); 1.0 is the scale of log V here
    fwd_floor = {"losses": 1.0}

    def bwd_floor(self, x, fwd, dout):
        # dlogits = dl * (p - onehot): absolute error ~ u * dl even when p ~ onehot
        return float(np.max(np.abs(dout["losses"])))

    def make(self, rng, shape, dtype, fd=False):
        N, V = shape
        return {"logits": randn(rng, shape, dtype, scale=2.0),
                "targets": rng.integers(0, V, N).astype(np.int32)}

    def forward(self, x):
        N, V = x["logits"].shape
        losses, probs = np.zeros(N, x["logits"].dtype), np.zeros((N, V), x["logits"].dtype)
        K.crossentropy_softmax_forward(losses, probs, x["logits"], x["targets"])
        return {"losses": losses, "probs": probs}

    def ref_forward(self, vals, x):
        probs = [R.softmax(row) for row in vals["logits"]]
        return {"losses": [-p[t].log() for p, t in zip(probs, x["targets"])], "probs": probs}

    def backward(self, x, fwd, dout, grads):
        K.crossentropy_softmax_backward(grads["logits"], dout["losses"], fwd["probs"],
                                        x["targets"])


class MatmulGemm(Matmul):
    """The same products through the packed GEMM (the model's variant for
    large batches), forced: shapes past its register tile (AVX-512: 6 x 64
    float32, 6 x 32 float64; AVX2: 6 x 16 / 6 x 8) and k block (256) with
    ragged edges."""
    name = "matmul_gemm"
    shapes = [(1, 1, 1), (5, 12, 48), (15, 33, 31), (29, 130, 70), (64, 300, 40)]
    backward_shapes = [(1, 1, 1), (7, 24, 3), (15, 33, 31), (40, 70, 130), (300, 20, 33)]

    def _forced(self, fn, *a):
        K.force_variant("matmul", "gemm")
        try:
            fn(*a)
        finally:
            K.force_variant("matmul", "auto")

    def forward(self, x):
        out = np.zeros((x["inp"].shape[0], x["weight"].shape[0]), x["inp"].dtype)
        self._forced(K.matmul_forward, out, x["inp"], x["weight"])
        return {"out": out}

    def backward(self, x, fwd, dout, grads):
        self._forced(K.matmul_backward, grads["inp"], grads["weight"], dout["out"], x["inp"],
                     x["weight"])


class AttentionGemm(Attention):
    """The query-block GEMM variant forced on short documents too (the model
    takes it from 48 tokens): every block edge case of small shapes."""
    name = "attention_gemm"
    shapes = [(1, 0, 16, 4, 1), (5, 0, 12, 3, 5), (6, 0, 24, 3, 9), (4, 0, 8, 1, 4),
              (16, 0, 16, 4, 16), (20, 0, 10, 2, 23)]
    backward_shapes = None

    def forward(self, x):
        K.force_variant("attention", "gemm")
        try:
            return super().forward(x)
        finally:
            K.force_variant("attention", "auto")

    def backward(self, x, fwd, dout, grads):
        K.force_variant("attention", "gemm")
        try:
            super().backward(x, fwd, dout, grads)
        finally:
            K.force_variant("attention", "auto")


# every float64 forward kernel must be bit-identical to the reference
OPS = [Encoder(), RMSNorm(), Matmul(), MatmulGemm(), Attention(), AttentionGemm(), Relu(),
       Residual(), CrossEntropy()]


def cases(kind):
    out = []
    for op in OPS:
        shapes = op.shapes if kind == "forward" else (op.backward_shapes or op.shapes)
        out.extend(pytest.param(op, s, id=f"{op.name}-{'x'.join(map(str, s))}") for s in shapes)
    return out


def upstream(rng, op, fwd, dtype):
    """A random upstream gradient for each output in ``op.out_grads``."""
    g = {}
    for name in op.out_grads:
        shape = fwd[name].shape
        if op.name == "crossentropy_softmax":  # per-row loss weights, like 1/N
            g[name] = (rng.uniform(0.5, 1.5, shape) / shape[0]).astype(dtype)
        else:
            g[name] = randn(rng, shape, dtype)
    return g


def reference_grads(op, x, dout):
    """The reference's input gradients of ``L = sum(out * G)``."""
    vals = float_values(x)
    outs = op.ref_forward(vals, x)
    backprop_weighted([outs[k] for k in op.out_grads],
                      np.concatenate([dout[k].astype(np.float64).ravel() for k in op.out_grads]))
    return {name: values_grad(vals[name]) for name in op.grad_inputs}


# ============================================================ 1. forward
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,shape", cases("forward"))
def test_forward_matches_reference(op, shape, dtype, rng):
    x = op.make(rng, shape, dtype)
    got = op.forward(x)
    ref = op.ref_forward(float_values(x), x)
    assert set(got) == set(ref)
    for name in got:
        assert got[name].dtype == dtype
        assert_close_rel(got[name], values_data(ref[name]), fwd_rtol(dtype),
                         atol_scale=op.fwd_floor.get(name), what=f"{op.name} {name}")


# 3846 ** -1 (libm pow, as the reference's "/ len(x)") != 1 / 3846
RECIPROCAL_CASES = [pytest.param(RMSNorm(), (4, 3846), id="rmsnorm-4x3846")]


@pytest.mark.parametrize("op,shape", cases("forward") + RECIPROCAL_CASES)
def test_forward_float64_bit_identical(op, shape, rng):
    """Same operations in the same order as the reference: the same bits.

    (SPEC section 8: the reference's divisions are multiplications by
    ``x ** -1``, a reciprocal computed by libm's pow, which is not always the
    correctly rounded 1/x.)"""
    x = op.make(rng, shape, np.float64)
    got = op.forward(x)
    ref = op.ref_forward(float_values(x), x)
    for name in got:
        np.testing.assert_array_equal(got[name], values_data(ref[name]),
                                      err_msg=f"{op.name} {name}")


# z with (0 + 1 + exp(z)) ** -1 != 1 / (0 + 1 + exp(z)) in Python (libm pow is
# not always the correctly rounded reciprocal): a softmax over scores [0, z]
# tells a pow(total, -1) reciprocal (the reference's) from a division.
RECIPROCAL_Z = (-1.246, -1.584, -3.65)


@pytest.mark.parametrize("z", RECIPROCAL_Z)
def test_softmax_reciprocal_is_pow_like_reference(z):
    """Targeted bit-parity of the two softmax kernels (SPEC section 8)."""
    total = 0.0 + 1.0 + math.exp(z)
    assert total ** -1 != 1 / total  # the premise
    logits = np.array([[0.0, z]])
    losses, probs = np.zeros(1), np.zeros((1, 2))
    K.crossentropy_softmax_forward(losses, probs, logits, i32(0))
    ref_probs = values_data(R.softmax(to_values(logits[0])))
    # one query at position 1 with head_dim 1: scores [0 * 1, z * 1]
    q, k, v = np.array([[1.0]]), np.array([[0.0], [z]]), np.array([[1.0], [0.0]])
    out, att = np.zeros((1, 1)), np.zeros((1, 1, 2))
    K.attention_forward(out, att, q, k, v, 1)
    ref_out = values_data(R.attend(to_values(q[0]), to_values(k), to_values(v), 1))
    mismatches = [f"{what}: C {got.tolist()} != reference {want.tolist()}"
                  for what, got, want in (("crossentropy probs", probs[0], ref_probs),
                                          ("attention out", out[0], ref_out))
                  if not np.array_equal(got, want)]
    assert not mismatches, "; ".join(mismatches)


def test_attention_forward_leaves_future_positions_alone(rng):
    """Row i of att uses p0 + i + 1 entries; the rest of the buffer is not written."""
    N, p0, C, NH, T = 3, 2, 12, 3, 9
    q, k, v = randn(rng, (N, C), np.float64), randn(rng, (p0 + N, C), np.float64), \
        randn(rng, (p0 + N, C), np.float64)
    out = np.zeros((N, C))
    att = np.full((N, NH, T), -7.0)
    K.attention_forward(out, att, q, k, v, p0)
    for i in range(N):
        used = att[i, :, :p0 + i + 1]
        np.testing.assert_allclose(used.sum(axis=1), 1.0, rtol=1e-14, atol=0)
        assert np.all(att[i, :, p0 + i + 1:] == -7.0)


def test_attention_inference_equals_training_rows(rng):
    """Query i of a training pass (p0 = 0) == one-query KV-cache pass at p0 = i."""
    N, C, NH, T = 6, 12, 3, 8
    q, k, v = (randn(rng, (N, C), np.float64) for _ in range(3))
    out = np.zeros((N, C))
    K.attention_forward(out, np.zeros((N, NH, T)), q, k, v, 0)
    for i in range(N):
        o1 = np.zeros((1, C))
        K.attention_forward(o1, np.zeros((1, NH, T)), q[i:i + 1], k[:i + 1], v[:i + 1], i)
        np.testing.assert_array_equal(o1[0], out[i])


# Attention takes one of three C paths by shape: lanes over channels (head
# size HS divides the register's lane count L = 8 doubles / 16 floats, L
# divides C, at most 64 keys), else lanes over queries (p0 = 0) or plain rows.
# These shapes (N, p0, C, NH, T) cover HS in {1, 2, 4, 8, 16} and C in
# {8, 16, 32, 64}, some on the channel-lane path in one dtype only (C = 8:
# float64 only; HS = 16: float32 only), and the fallbacks: C = 24 (no L
# divides it), more than 64 keys, KV-cache queries (p0 > 0).
ATTENTION_PATH_SHAPES = [
    (1, 0, 16, 16, 1), (7, 0, 16, 8, 9), (17, 0, 16, 4, 20), (5, 0, 16, 2, 5),
    (9, 0, 16, 1, 12), (3, 0, 8, 8, 3), (12, 0, 8, 2, 12), (2, 0, 8, 1, 4),
    (16, 0, 32, 4, 16), (11, 0, 32, 2, 13), (6, 0, 32, 16, 6), (13, 0, 64, 4, 14),
    (4, 0, 64, 16, 4), (10, 0, 24, 6, 10), (8, 0, 24, 2, 8), (1, 9, 16, 4, 16),
    (3, 5, 32, 8, 10), (2, 15, 8, 4, 17), (1, 70, 16, 4, 80), (66, 0, 16, 4, 66),
    # the gemm variant (documents of >= 48 tokens with heads of >= 32, of >=
    # 128 with heads of 16): one query block, two (64 + 6), three with a
    # ragged head width
    (50, 0, 64, 2, 56), (70, 0, 96, 3, 70), (130, 0, 36, 2, 131),
    # float32 query lanes over channel lanes (heads of 16, >= 32 queries)
    (40, 0, 64, 4, 40),
]
ATTENTION_PATH_CASES = [pytest.param(s, id="x".join(map(str, s))) for s in ATTENTION_PATH_SHAPES]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", ATTENTION_PATH_CASES)
def test_attention_paths_forward_match_reference(shape, dtype, rng):
    """Every attention path == the reference; float64 to the last bit."""
    op = Attention()
    x = op.make(rng, shape, dtype)
    got = op.forward(x)
    ref = op.ref_forward(float_values(x), x)
    for name in got:
        if dtype == np.float64:
            np.testing.assert_array_equal(got[name], values_data(ref[name]),
                                          err_msg=f"attention {name} {shape}")
        else:
            assert_close_rel(got[name], values_data(ref[name]), F32_FWD_RTOL,
                             what=f"attention {name} {shape}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [c for c in ATTENTION_PATH_CASES if c.values[0][1] == 0])
def test_attention_paths_backward_match_reference_autograd(shape, dtype, rng):
    """Every attention backward path == the reference's autograd, accumulating."""
    op = Attention()
    x = op.make(rng, shape, dtype)
    fwd = op.forward(x)
    dout = upstream(rng, op, fwd, dtype)
    ref = reference_grads(op, x, dout)
    base = {name: randn(rng, x[name].shape, dtype) for name in op.grad_inputs}
    grads = {name: b.copy() for name, b in base.items()}
    op.backward(x, fwd, dout, grads)
    for name in op.grad_inputs:
        assert_close_rel(grads[name] - base[name].astype(np.float64), ref[name],
                         bwd_rtol(dtype), atol_scale=1.0 if dtype == np.float32 else None,
                         what=f"attention d{name} {shape}")


def test_attention_paths_are_deterministic(rng):
    """The same inputs give the same bits on every call (fixed orders)."""
    for shape in [(17, 0, 16, 4, 20), (9, 0, 16, 1, 12), (12, 0, 8, 2, 12)]:
        for dtype in DTYPES:
            op = Attention()
            x = op.make(rng, shape, dtype)
            f1, f2 = op.forward(x), op.forward(x)
            dout = upstream(rng, op, f1, dtype)
            g1 = {n: np.zeros_like(x[n]) for n in op.grad_inputs}
            g2 = {n: np.zeros_like(x[n]) for n in op.grad_inputs}
            op.backward(x, f1, dout, g1)
            op.backward(x, f2, dout, g2)
            for n in f1:
                np.testing.assert_array_equal(f1[n], f2[n])
            for n in g1:
                np.testing.assert_array_equal(g1[n], g2[n])


# ============================================================ 2. backward
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,shape", cases("backward"))
def test_backward_matches_reference_autograd(op, shape, dtype, rng):
    x = op.make(rng, shape, dtype)
    fwd = op.forward(x)
    dout = upstream(rng, op, fwd, dtype)
    ref = reference_grads(op, x, dout)

    grads = {name: np.zeros_like(x[name]) for name in op.grad_inputs}
    op.backward(x, fwd, dout, grads)
    floor = op.bwd_floor(x, fwd, dout)
    for name in op.grad_inputs:
        assert grads[name].dtype == dtype
        assert_close_rel(grads[name], ref[name], bwd_rtol(dtype), atol_scale=floor,
                         what=f"{op.name} d{name}")

    # backward kernels accumulate (+=): start from non-zero buffers
    base = {name: randn(rng, x[name].shape, dtype) for name in op.grad_inputs}
    acc = {name: b.copy() for name, b in base.items()}
    op.backward(x, fwd, dout, acc)
    for name in op.grad_inputs:
        expected = base[name].astype(np.float64) + grads[name]
        # (a kernel that overwrote instead of adding would be off by |base| ~ 1)
        assert_close_rel(acc[name], expected, bwd_rtol(dtype), atol_scale=1.0,
                         what=f"{op.name} d{name} accumulated")


def test_encoder_backward_accumulates_shared_rows():
    """Repeated tokens/positions add up in the same row of dwte/dwpe."""
    dwte, dwpe = np.zeros((3, 2)), np.zeros((4, 2))
    dout = np.array([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    K.encoder_backward(dwte, dwpe, dout, np.array([1, 1, 0], np.int32),
                       np.array([3, 0, 3], np.int32))
    np.testing.assert_array_equal(dwte, [[100, 200], [11, 22], [0, 0]])
    np.testing.assert_array_equal(dwpe, [[10, 20], [0, 0], [0, 0], [101, 202]])


def test_crossentropy_backward_is_probs_minus_onehot(rng):
    logits = randn(rng, (4, 7), np.float64)
    targets = np.array([0, 6, 3, 3], np.int32)
    losses, probs = np.zeros(4), np.zeros((4, 7))
    K.crossentropy_softmax_forward(losses, probs, logits, targets)
    dlogits = np.zeros((4, 7))
    K.crossentropy_softmax_backward(dlogits, np.full(4, 0.25), probs, targets)
    expected = probs.copy()
    expected[np.arange(4), targets] -= 1
    np.testing.assert_allclose(dlogits, 0.25 * expected, rtol=0, atol=1e-16)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-15)


# ------------------------------------------------------------------ Adam
def reference_adam(params, m, v, grads, step, num_steps, lr):
    """Run ReferenceGPT.adam_step itself on plain Values holding ``params``."""
    ref = object.__new__(R.ReferenceGPT)
    ref.params = [Value(float(p)) for p in params]
    for p, g in zip(ref.params, grads):
        p.grad = float(g)
    ref.m, ref.v = [float(a) for a in m], [float(a) for a in v]
    lr_t = ref.adam_step(step, num_steps, learning_rate=lr)
    assert all(p.grad == 0 for p in ref.params)
    return lr_t, np.array([p.data for p in ref.params]), np.array(ref.m), np.array(ref.v)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n,t", [(1, 1), (50, 1), (37, 7), (200, 1000)])
def test_adam_update_matches_reference(n, t, dtype, rng):
    params = randn(rng, n, dtype, 0.1)
    grads = randn(rng, n, dtype, 0.3)
    if t == 1:
        m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    else:
        m = randn(rng, n, dtype, 0.1)
        v = (rng.uniform(0, 0.05, n)).astype(dtype)
    lr_t, p_ref, m_ref, v_ref = reference_adam(params, m, v, grads, t - 1, 1000, 0.01)
    K.adam_update(params, m, v, grads, lr_t, 0.85, 0.99, 1e-8, t)
    # float32: every quantity is rounded to float32 a few times (u = 6e-8) and
    # the update is about lr relative to the parameters.
    rtol = F64_FWD_RTOL if dtype == np.float64 else 1e-6
    for got, exp, what in ((params, p_ref, "params"), (m, m_ref, "m"), (v, v_ref, "v")):
        assert_close_rel(got, exp, rtol, what=what)


def test_adam_update_zero_gradient_leaves_params():
    params = np.array([0.5, -0.25])
    m, v = np.zeros(2), np.zeros(2)
    K.adam_update(params, m, v, np.zeros(2), 0.01, 0.85, 0.99, 1e-8, 1)
    np.testing.assert_array_equal(params, [0.5, -0.25])
    np.testing.assert_array_equal(m, 0)
    np.testing.assert_array_equal(v, 0)


# ============================================================ 3. reference vs finite differences
FD_STEP = 1e-6
FD_RTOL = 1e-6


def finite_difference(f, arr, step=FD_STEP):
    """Central differences of the scalar ``f()`` w.r.t. every entry of ``arr`` (in place)."""
    g = np.zeros(arr.shape)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + step
        fp = f()
        arr[idx] = old - step
        fm = f()
        arr[idx] = old
        g[idx] = (fp - fm) / (2 * step)
    return g


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_reference_gradients_vs_finite_differences(op, rng):
    x = op.make(rng, op.fd_shape, np.float64, fd=True)
    fwd = op.forward(x)
    dout = upstream(rng, op, fwd, np.float64)
    ref = reference_grads(op, x, dout)

    def loss():
        outs = op.ref_forward(float_values(x), x)
        return sum(float(np.sum(values_data(outs[k]) * dout[k])) for k in op.out_grads)

    for name in op.grad_inputs:
        fd = finite_difference(loss, x[name])
        assert_close_rel(ref[name], fd, FD_RTOL, what=f"{op.name} d{name}")


def test_reference_gpt_sequence_loss_vs_finite_differences():
    """Gradients of a whole tiny ReferenceGPT (2 layers, sequence longer than the block)."""
    import random
    model = R.ReferenceGPT(5, n_layer=2, n_embd=8, n_head=2, block_size=4,
                           rng=random.Random(3), std=0.5)
    tokens = [4, 0, 1, 3, 2, 2, 4]
    model.forward_backward(tokens)
    pick = random.Random(5)
    checked = 0
    for name, mat in model.state_dict.items():
        for _ in range(3):
            p = pick.choice(pick.choice(mat))
            old = p.data
            p.data = old + FD_STEP
            lp = model.sequence_loss(tokens).data
            p.data = old - FD_STEP
            lm = model.sequence_loss(tokens).data
            p.data = old
            fd = (lp - lm) / (2 * FD_STEP)
            # entry-wise, relative to the scale of the gradients (~1e-2..1)
            assert abs(p.grad - fd) <= FD_RTOL * max(abs(fd), 1e-2), (name, p.grad, fd)
            checked += 1
    # every tensor (both layers, all of wpe's 4 rows) takes part in the loss
    assert checked == 3 * len(model.state_dict)
    assert all(any(q.grad != 0 for row in mat for q in row) for mat in model.state_dict.values())


# ============================================================ softmax_temperature
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 0.1, 3.7])
@pytest.mark.parametrize("V", [1, 2, 27])
def test_softmax_temperature_equals_reference_bits(temperature, V, rng):
    logits = rng.standard_normal(V) * 3
    got = microgpt_c.softmax_temperature(logits, temperature)
    ref = R.softmax([Value(float(z)) / temperature for z in logits])
    assert got.dtype == np.float64 and got.shape == (V,)
    np.testing.assert_array_equal(got, values_data(ref))


def test_softmax_temperature_reciprocal_is_pow():
    """Targeted: logits [1, 0] at T with ``T ** -1 != 1 / T`` (the reference
    scales the logits by ``T ** -1``, SPEC section 6 and 8)."""
    for temperature in (0.2483, 0.2495, 0.3132, 0.4966, 0.499):
        assert temperature ** -1 != 1 / temperature  # the premise, in Python
        ref = R.softmax([Value(1.0) / temperature, Value(0.0) / temperature])
        got = microgpt_c.softmax_temperature(np.array([1.0, 0.0]), temperature)
        np.testing.assert_array_equal(got, values_data(ref), err_msg=f"T={temperature}")


def test_softmax_temperature_is_stable_for_large_logits():
    p = microgpt_c.softmax_temperature(np.array([1000.0, -1000.0, 999.0]), 0.5)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-15)
    assert p[0] > p[2] > p[1] == 0.0


def test_softmax_temperature_accepts_lists_and_float32():
    z = [0.5, -1.0, 2.0]
    expected = microgpt_c.softmax_temperature(np.array(z), 0.7)
    np.testing.assert_array_equal(microgpt_c.softmax_temperature(z, 0.7), expected)
    z32 = np.array(z, np.float32)
    np.testing.assert_array_equal(microgpt_c.softmax_temperature(z32, 0.7),
                                  microgpt_c.softmax_temperature(z32.astype(np.float64), 0.7))


@pytest.mark.parametrize("temperature", [0.0, -0.0, -1.0, -math.inf, math.nan, math.inf])
def test_softmax_temperature_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError):
        microgpt_c.softmax_temperature(np.array([0.1, 0.2]), temperature)


def test_softmax_temperature_rejects_empty_logits():
    with pytest.raises(ValueError):
        microgpt_c.softmax_temperature(np.array([]), 1.0)


# ============================================================ 4. input validation
def z(dt, *shape):
    return np.zeros(shape, dt)


def i32(*vals):
    return np.array(vals, np.int32)


def readonly(a):
    a.flags.writeable = False
    return a


# each entry: (dt, other) -> a call that must raise ValueError or TypeError
BAD_CALLS = {
    # matmul: out (N, OC), inp (N, C), weight (OC, C)
    "matmul-out-shape": lambda dt, o: K.matmul_forward(z(dt, 2, 4), z(dt, 2, 3), z(dt, 5, 3)),
    "matmul-weight-cols": lambda dt, o: K.matmul_forward(z(dt, 2, 5), z(dt, 2, 3), z(dt, 5, 4)),
    "matmul-int64-inp": lambda dt, o: K.matmul_forward(z(dt, 2, 5), z(np.int64, 2, 3), z(dt, 5, 3)),
    "matmul-mixed-dtype": lambda dt, o: K.matmul_forward(z(dt, 2, 5), z(o, 2, 3), z(dt, 5, 3)),
    "matmul-mixed-out": lambda dt, o: K.matmul_forward(z(o, 2, 5), z(dt, 2, 3), z(dt, 5, 3)),
    "matmul-strided": lambda dt, o: K.matmul_forward(z(dt, 2, 5), z(dt, 2, 6)[:, ::2], z(dt, 5, 3)),
    "matmul-fortran": lambda dt, o: K.matmul_forward(z(dt, 2, 5), z(dt, 2, 3),
                                                     np.asfortranarray(z(dt, 5, 3))),
    "matmul-transposed-out": lambda dt, o: K.matmul_forward(z(dt, 5, 2).T, z(dt, 2, 3), z(dt, 5, 3)),
    "matmul-readonly-out": lambda dt, o: K.matmul_forward(readonly(z(dt, 2, 5)), z(dt, 2, 3),
                                                          z(dt, 5, 3)),
    "matmul-1d-inp": lambda dt, o: K.matmul_forward(z(dt, 2, 5), z(dt, 6), z(dt, 5, 3)),
    "matmul-list-inp": lambda dt, o: K.matmul_forward(z(dt, 1, 2), [[1.0, 2.0]], z(dt, 2, 2)),
    "matmul_backward-dweight": lambda dt, o: K.matmul_backward(
        z(dt, 2, 3), z(dt, 3, 5), z(dt, 2, 5), z(dt, 2, 3), z(dt, 5, 3)),
    "matmul_backward-dinp": lambda dt, o: K.matmul_backward(
        z(dt, 3, 3), z(dt, 5, 3), z(dt, 2, 5), z(dt, 2, 3), z(dt, 5, 3)),
    "matmul_backward-dout": lambda dt, o: K.matmul_backward(
        z(dt, 2, 3), z(dt, 5, 3), z(dt, 2, 4), z(dt, 2, 3), z(dt, 5, 3)),
    "matmul_backward-mixed": lambda dt, o: K.matmul_backward(
        z(dt, 2, 3), z(o, 5, 3), z(dt, 2, 5), z(dt, 2, 3), z(dt, 5, 3)),
    # rmsnorm
    "rmsnorm-scale-size": lambda dt, o: K.rmsnorm_forward(z(dt, 2, 3), z(dt, 3), z(dt, 2, 3)),
    "rmsnorm-out-shape": lambda dt, o: K.rmsnorm_forward(z(dt, 3, 2), z(dt, 2), z(dt, 2, 3)),
    "rmsnorm-int-inp": lambda dt, o: K.rmsnorm_forward(z(dt, 2, 3), z(dt, 2), z(np.int32, 2, 3)),
    "rmsnorm_backward-dout": lambda dt, o: K.rmsnorm_backward(
        z(dt, 2, 3), z(dt, 2, 4), z(dt, 2, 3), z(dt, 2)),
    "rmsnorm_backward-scale": lambda dt, o: K.rmsnorm_backward(
        z(dt, 2, 3), z(dt, 2, 3), z(dt, 2, 3), z(dt, 1)),
    # encoder: out (N, C), inp (N), pos (N), wte (V, C), wpe (T, C)
    "encoder-token-range": lambda dt, o: K.encoder_forward(
        z(dt, 2, 3), i32(0, 5), i32(0, 1), z(dt, 5, 3), z(dt, 4, 3)),
    "encoder-negative-token": lambda dt, o: K.encoder_forward(
        z(dt, 2, 3), i32(0, -1), i32(0, 1), z(dt, 5, 3), z(dt, 4, 3)),
    "encoder-pos-range": lambda dt, o: K.encoder_forward(
        z(dt, 2, 3), i32(0, 1), i32(0, 4), z(dt, 5, 3), z(dt, 4, 3)),
    "encoder-int64-tokens": lambda dt, o: K.encoder_forward(
        z(dt, 2, 3), np.array([0, 1]), i32(0, 1), z(dt, 5, 3), z(dt, 4, 3)),
    "encoder-inp-length": lambda dt, o: K.encoder_forward(
        z(dt, 2, 3), i32(0, 1, 2), i32(0, 1), z(dt, 5, 3), z(dt, 4, 3)),
    "encoder-wpe-cols": lambda dt, o: K.encoder_forward(
        z(dt, 2, 3), i32(0, 1), i32(0, 1), z(dt, 5, 3), z(dt, 4, 2)),
    "encoder_backward-token-range": lambda dt, o: K.encoder_backward(
        z(dt, 5, 3), z(dt, 4, 3), z(dt, 2, 3), i32(0, 9), i32(0, 1)),
    "encoder_backward-pos-range": lambda dt, o: K.encoder_backward(
        z(dt, 5, 3), z(dt, 4, 3), z(dt, 2, 3), i32(0, 1), i32(-3, 1)),
    # attention: out (N, C), att (N, NH, T), q (N, C), k, v (p0 + N, C)
    "attention-heads-divide": lambda dt, o: K.attention_forward(
        z(dt, 2, 4), z(dt, 2, 3, 4), z(dt, 2, 4), z(dt, 2, 4), z(dt, 2, 4)),
    "attention-zero-heads": lambda dt, o: K.attention_forward(
        z(dt, 2, 4), z(dt, 2, 0, 4), z(dt, 2, 4), z(dt, 2, 4), z(dt, 2, 4)),
    "attention-T-too-small": lambda dt, o: K.attention_forward(
        z(dt, 3, 4), z(dt, 3, 2, 2), z(dt, 3, 4), z(dt, 3, 4), z(dt, 3, 4)),
    "attention-p0-past-T": lambda dt, o: K.attention_forward(
        z(dt, 1, 4), z(dt, 1, 2, 4), z(dt, 1, 4), z(dt, 5, 4), z(dt, 5, 4), 4),
    "attention-kv-too-short": lambda dt, o: K.attention_forward(
        z(dt, 1, 4), z(dt, 1, 2, 8), z(dt, 1, 4), z(dt, 3, 4), z(dt, 3, 4), 3),
    "attention-negative-p0": lambda dt, o: K.attention_forward(
        z(dt, 1, 4), z(dt, 1, 2, 8), z(dt, 1, 4), z(dt, 3, 4), z(dt, 3, 4), -1),
    "attention-v-cols": lambda dt, o: K.attention_forward(
        z(dt, 2, 4), z(dt, 2, 2, 4), z(dt, 2, 4), z(dt, 2, 4), z(dt, 2, 6)),
    "attention-att-rows": lambda dt, o: K.attention_forward(
        z(dt, 2, 4), z(dt, 3, 2, 4), z(dt, 2, 4), z(dt, 2, 4), z(dt, 2, 4)),
    "attention-mixed": lambda dt, o: K.attention_forward(
        z(dt, 2, 4), z(o, 2, 2, 4), z(dt, 2, 4), z(dt, 2, 4), z(dt, 2, 4)),
    "attention_backward-N-gt-T": lambda dt, o: K.attention_backward(
        *(z(dt, 3, 4) for _ in range(4)), z(dt, 3, 2, 2), *(z(dt, 3, 4) for _ in range(3))),
    "attention_backward-dk-shape": lambda dt, o: K.attention_backward(
        z(dt, 2, 4), z(dt, 3, 4), z(dt, 2, 4), z(dt, 2, 4), z(dt, 2, 2, 4),
        z(dt, 2, 4), z(dt, 2, 4), z(dt, 2, 4)),
    "attention_backward-att-rows": lambda dt, o: K.attention_backward(
        *(z(dt, 2, 4) for _ in range(4)), z(dt, 1, 2, 4), *(z(dt, 2, 4) for _ in range(3))),
    # relu / residual
    "relu-size": lambda dt, o: K.relu_forward(z(dt, 3), z(dt, 4)),
    "relu-2d": lambda dt, o: K.relu_forward(z(dt, 2, 2), z(dt, 2, 2)),
    "relu_backward-size": lambda dt, o: K.relu_backward(z(dt, 3), z(dt, 3), z(dt, 2)),
    "relu-strided": lambda dt, o: K.relu_forward(z(dt, 3), z(dt, 6)[::2]),
    "residual-size": lambda dt, o: K.residual_forward(z(dt, 3), z(dt, 3), z(dt, 4)),
    "residual-mixed": lambda dt, o: K.residual_forward(z(dt, 3), z(dt, 3), z(o, 3)),
    "residual_backward-size": lambda dt, o: K.residual_backward(z(dt, 3), z(dt, 2), z(dt, 3)),
    # cross entropy: losses (N), probs (N, V), logits (N, V), targets (N)
    "crossentropy-target-range": lambda dt, o: K.crossentropy_softmax_forward(
        z(dt, 2), z(dt, 2, 3), z(dt, 2, 3), i32(0, 3)),
    "crossentropy-negative-target": lambda dt, o: K.crossentropy_softmax_forward(
        z(dt, 2), z(dt, 2, 3), z(dt, 2, 3), i32(-1, 0)),
    "crossentropy-probs-shape": lambda dt, o: K.crossentropy_softmax_forward(
        z(dt, 2), z(dt, 2, 4), z(dt, 2, 3), i32(0, 1)),
    "crossentropy-losses-size": lambda dt, o: K.crossentropy_softmax_forward(
        z(dt, 3), z(dt, 2, 3), z(dt, 2, 3), i32(0, 1)),
    "crossentropy-float-targets": lambda dt, o: K.crossentropy_softmax_forward(
        z(dt, 2), z(dt, 2, 3), z(dt, 2, 3), z(dt, 2)),
    "crossentropy_backward-target-range": lambda dt, o: K.crossentropy_softmax_backward(
        z(dt, 2, 3), z(dt, 2), z(dt, 2, 3), i32(0, 7)),
    "crossentropy_backward-dlosses": lambda dt, o: K.crossentropy_softmax_backward(
        z(dt, 2, 3), z(dt, 1), z(dt, 2, 3), i32(0, 1)),
    # adam
    "adam-t-zero": lambda dt, o: K.adam_update(z(dt, 3), z(dt, 3), z(dt, 3), z(dt, 3),
                                               0.01, 0.85, 0.99, 1e-8, 0),
    "adam-size": lambda dt, o: K.adam_update(z(dt, 3), z(dt, 3), z(dt, 2), z(dt, 3),
                                             0.01, 0.85, 0.99, 1e-8, 1),
    "adam-mixed": lambda dt, o: K.adam_update(z(dt, 3), z(dt, 3), z(dt, 3), z(o, 3),
                                              0.01, 0.85, 0.99, 1e-8, 1),
    "adam-int-grads": lambda dt, o: K.adam_update(z(dt, 3), z(dt, 3), z(dt, 3),
                                                  z(np.int64, 3), 0.01, 0.85, 0.99, 1e-8, 1),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_kernel_wrappers_reject_bad_arguments(case, dtype):
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises((ValueError, TypeError)):
        BAD_CALLS[case](dtype, other)


def test_rejected_call_does_not_write_outputs():
    """Validation happens before the C call: a bad index leaves the output alone."""
    out = np.full((2, 3), 5.0)
    with pytest.raises(ValueError):
        K.encoder_forward(out, i32(0, 7), i32(0, 1), np.ones((5, 3)), np.ones((4, 3)))
    assert np.all(out == 5.0)
    dlogits = np.full((2, 3), 5.0)
    with pytest.raises(ValueError):
        K.crossentropy_softmax_backward(dlogits, np.ones(2), np.ones((2, 3)), i32(2, 3))
    assert np.all(dlogits == 5.0)
