"""The per-ISA copies of the kernels (csrc/isa.h, csrc/dispatch.c).

A multi-ISA build (GCC, x86-64 Linux) holds the kernels compiled for
baseline x86-64, x86-64-v3 (AVX2 + FMA) and x86-64-v4 (AVX-512), each with
its own register width; the process runs the best the CPU supports, or a
lower one named by MICROGPT_C_ISA.  float64 must give the same bits in every
copy (every output element is the same sequential sum whatever the width);
float32 the same bits for 1 and 2 threads within a copy.  Each copy runs in
its own subprocess (the choice is made once per process).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import microgpt_c
from microgpt_c import _core

ORDER = ["x86-64", "x86-64-v3", "x86-64-v4"]
MULTI = bool(microgpt_c.build_info().get("simd_clones")) and _core.simd_variant() in ORDER

# Training steps over configurations that take each kernel variant: heads of
# 4 (channel lanes where a head divides the register), 8 and 16, several
# layers, batches that pack documents, documents long enough for the GEMM
# attention, both dtypes; prints a digest of the parameters after training.
SCRIPT = r"""
import hashlib, json, random, sys
import numpy as np
import microgpt_c
from microgpt_c import _core, GPT
out = {"variant": _core.simd_variant()}
cfgs = [dict(vocab_size=27, n_layer=1, n_embd=16, n_head=4, block_size=16),
        dict(vocab_size=27, n_layer=2, n_embd=32, n_head=4, block_size=32),
        dict(vocab_size=30, n_layer=1, n_embd=64, n_head=4, block_size=64),
        dict(vocab_size=20, n_layer=1, n_embd=96, n_head=3, block_size=80)]
for threads in (1, 2):
    microgpt_c.set_num_threads(threads)
    for i, cfg in enumerate(cfgs):
        for dtype in ("float64", "float32"):
            rng = random.Random(i)
            V, T = cfg["vocab_size"], cfg["block_size"]
            seqs = [[rng.randrange(V) for _ in range(rng.randrange(3, T + 2))] for _ in range(6)]
            gpt = GPT(**cfg, dtype=dtype)
            gpt.init_weights(random.Random(1))
            losses = [gpt.forward_backward(seqs[0])]
            gpt.zero_grad()
            losses.append(gpt.forward_backward_batch(seqs))
            h = hashlib.sha256(np.ascontiguousarray(gpt.flat_grads).tobytes())
            h.update(repr(losses).encode())
            h.update(np.ascontiguousarray(gpt.logits(seqs[0][0], 0)).tobytes())
            out[f"{i}-{dtype}-{threads}"] = h.hexdigest()
print(json.dumps(out))
"""


def _run(isa):
    env = dict(os.environ)
    if isa is None:
        env.pop("MICROGPT_C_ISA", None)
    else:
        env["MICROGPT_C_ISA"] = isa
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs():
    if not MULTI:
        pytest.skip("a single-copy build (one ISA)")
    best = _run(None)
    res = {best["variant"]: best}
    for isa in ORDER[:ORDER.index(best["variant"])]:
        res[isa] = _run(isa)
    return res


def test_the_variant_is_the_best_or_the_one_asked_for(runs):
    best = max(runs, key=ORDER.index)
    for isa, r in runs.items():
        assert r["variant"] == isa
    # a level the CPU lacks, or an unknown name, is not taken
    assert _run("x86-64-v99")["variant"] == best
    if best != "x86-64-v4":
        assert _run("x86-64-v4")["variant"] == best


def test_float64_same_bits_in_every_copy(runs):
    assert len(runs) >= 2 or pytest.skip("only one ISA copy runs on this CPU")
    first = next(iter(runs.values()))
    for isa, r in runs.items():
        for key, digest in r.items():
            if "float64" in key:
                assert digest == first[key], (isa, key)


def test_float32_same_bits_for_1_and_2_threads_in_each_copy(runs):
    for isa, r in runs.items():
        for key, digest in r.items():
            if key.endswith("-1") and "float32" in key:
                assert digest == r[key[:-2] + "-2"], (isa, key)


def test_fma_copies_agree_in_float32_where_the_width_does_not_matter(runs):
    """float32: x86-64-v3 and -v4 both fuse multiply-adds; the baseline copy
    does not (README: float32 bits are not promised across CPUs).  Here only
    that the FMA copies differ from the baseline where a product is long
    enough to round differently: a check that the copies really differ in
    their code, not only in their name."""
    if "x86-64" not in runs or "x86-64-v3" not in runs:
        pytest.skip("needs the baseline and the x86-64-v3 copy")
    base, v3 = runs["x86-64"], runs["x86-64-v3"]
    assert any(base[k] != v3[k] for k in base if "float32" in k)
