"""Shared fixtures and helpers for the kernel and model-parity tests.

Nothing here collects tests.  The helpers convert between NumPy arrays and
nested lists of ``reference.Value`` scalars, so that every C kernel can be
checked against the same computation written with the pure-Python oracle.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from microgpt_c.reference import Value

SHARED_NAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "names.txt"

TINY = 1e-300


@pytest.fixture
def rng():
    """A fresh, seeded NumPy generator for each test."""
    return np.random.default_rng(1234)


# ------------------------------------------------------------ Value <-> numpy
def to_values(arr):
    """Nested lists of ``Value`` with the (float64) entries of ``arr``."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 0:
        return Value(float(arr))
    return [to_values(row) for row in arr]


def _map(nested, fn):
    if isinstance(nested, (list, tuple)):
        return [_map(x, fn) for x in nested]
    return fn(nested)


def values_data(nested) -> np.ndarray:
    """The ``.data`` of nested lists of ``Value`` as a float64 array."""
    return np.array(_map(nested, lambda v: float(v.data)), dtype=np.float64)


def values_grad(nested) -> np.ndarray:
    """The ``.grad`` of nested lists of ``Value`` as a float64 array."""
    return np.array(_map(nested, lambda v: float(v.grad)), dtype=np.float64)


def flatten(nested):
    """The leaves of nested lists, in row-major order."""
    if isinstance(nested, (list, tuple)):
        return [leaf for x in nested for leaf in flatten(x)]
    return [nested]


def backprop_weighted(outputs, upstream) -> Value:
    """Backpropagate ``L = sum(out * G)`` through the reference graph.

    Every output's gradient is seeded exactly with its entry of ``upstream``
    (``Value * float`` passes the float through unchanged), so the gradients
    left in the inputs are the vector-Jacobian product with ``G``.
    """
    outs = flatten(outputs)
    g = np.asarray(upstream, dtype=np.float64).ravel()
    assert len(outs) == g.size, (len(outs), g.size)
    root = sum(o * float(gi) for o, gi in zip(outs, g))
    root.backward()
    return root


# ------------------------------------------------------------ comparisons
def rel_err(actual, expected) -> float:
    """Norm-wise relative error ``max|a - e| / max(max|e|, tiny)``."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - e)) / max(float(np.max(np.abs(e))), TINY))


def assert_close_rel(actual, expected, rtol, atol_scale=None, what=""):
    """Assert ``max|a - e| <= rtol * max(max|e|, atol_scale or tiny)``.

    The tolerance is relative to the largest entry of ``expected`` (norm-wise,
    not element-wise), which is the right measure for sums with cancellation.
    ``atol_scale`` gives a floor for that scale (e.g. when ``expected`` may be
    all zeros).
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    assert np.all(np.isfinite(a)), f"{what}: non-finite values in actual"
    if a.size == 0:
        return
    scale = max(float(np.max(np.abs(e))), atol_scale or 0.0, TINY)
    err = float(np.max(np.abs(a - e)))
    assert err <= rtol * scale, (
        f"{what}: max|actual - expected| = {err:.3e} > {rtol:.1e} * {scale:.3e} "
        f"(relative {err / scale:.3e})")
