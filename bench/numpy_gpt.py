"""A NumPy baseline of the SPEC's microgpt with a hand-written backward pass.

Whole documents at once: the tokens of a batch are packed back to back and
attention uses a mask that is causal and never crosses a document.  The loss
is the mean over the documents of each one's mean token loss (for one
document: the SPEC's loss), as in microgpt_c.  Parameters, gradients and
Adam's moments are flat arrays in the SPEC's order (the layout of
microgpt_c.GPT.flat_params), each tensor a view into them.

:func:`self_check` compares loss and gradients with microgpt_c.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from microgpt_c.reference import param_shapes

EPS_NORM = 1e-5
LAYER_TENSORS = ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")


def rmsnorm(x):
    s = (np.mean(x * x, axis=1, keepdims=True) + EPS_NORM) ** -0.5
    return x * s, s


def rmsnorm_backward(dout, x, s):
    """out = x * s with s = (mean(x^2) + eps)^-1/2, so ds/dx = -s^3 x / C."""
    return s * dout - (s ** 3 / x.shape[1]) * x * np.sum(dout * x, axis=1, keepdims=True)


class NumpyGPT:
    def __init__(self, vocab_size, n_layer=1, n_embd=16, n_head=4, block_size=16,
                 dtype="float64"):
        if n_embd % n_head:
            raise ValueError("n_embd must be divisible by n_head")
        self.vocab_size, self.n_layer, self.n_embd = vocab_size, n_layer, n_embd
        self.n_head, self.block_size = n_head, block_size
        self.dtype = np.dtype(dtype)
        shapes = param_shapes(vocab_size, n_layer, n_embd, block_size)
        self.num_params = sum(r * c for r, c in shapes.values())
        self.flat_params, self.flat_grads, self.m, self.v = (
            np.zeros(self.num_params, self.dtype) for _ in range(4))
        self.params, self.grads, off = {}, {}, 0
        for name, (r, c) in shapes.items():
            self.params[name] = self.flat_params[off:off + r * c].reshape(r, c)
            self.grads[name] = self.flat_grads[off:off + r * c].reshape(r, c)
            off += r * c

    def init_weights(self, rng: random.Random, std=0.08):
        self.flat_params[:] = [rng.gauss(0.0, std) for _ in range(self.num_params)]

    def _layer(self, tensors, i):
        return [tensors[f"layer{i}.{t}"] for t in LAYER_TENSORS]

    # -------------------------------------------------------- forward/backward
    def forward_backward_batch(self, seqs: Sequence[Sequence[int]]) -> float:
        """Loss of a batch of documents ([BOS] + ids + [BOS], truncated to the
        block); the gradient is accumulated into :attr:`grads`."""
        P, G = self.params, self.grads
        NH, C = self.n_head, self.n_embd
        HS = C // NH
        lens = [min(self.block_size, len(s) - 1) for s in seqs]
        inp = np.concatenate([np.asarray(s[:n]) for s, n in zip(seqs, lens)])
        tgt = np.concatenate([np.asarray(s[1:n + 1]) for s, n in zip(seqs, lens)])
        pos = np.concatenate([np.arange(n) for n in lens])
        doc = np.repeat(np.arange(len(lens)), lens)
        N = len(inp)
        # key t is visible to query i iff same document and t <= i
        mask = (doc[:, None] == doc[None, :]) & (np.arange(N)[None, :] <= np.arange(N)[:, None])
        weight = np.repeat([1.0 / (n * len(lens)) for n in lens], lens).astype(self.dtype)
        scale = (HS ** 0.5) ** -1

        def heads(a):                          # (N, C) -> (NH, N, HS)
            return a.reshape(N, NH, HS).transpose(1, 0, 2)

        def unheads(a):                        # (NH, N, HS) -> (N, C)
            return a.transpose(1, 0, 2).reshape(N, C)

        # ---- forward
        emb = P["wte"][inp] + P["wpe"][pos]
        x, s0 = rmsnorm(emb)
        cache = []
        for i in range(self.n_layer):
            wq, wk, wv, wo, fc1, fc2 = self._layer(P, i)
            ln1, s1 = rmsnorm(x)
            q, k, v = heads(ln1 @ wq.T), heads(ln1 @ wk.T), heads(ln1 @ wv.T)
            scores = np.where(mask, (q @ k.transpose(0, 2, 1)) * scale, -np.inf)
            att = np.exp(scores - scores.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            y = unheads(att @ v)
            res2 = y @ wo.T + x
            ln2, s2 = rmsnorm(res2)
            h = ln2 @ fc1.T
            hr = np.maximum(h, 0)
            cache.append((x, ln1, s1, q, k, v, att, y, res2, ln2, s2, h, hr))
            x = hr @ fc2.T + res2
        logits = x @ P["lm_head"].T
        rows = np.arange(N)
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        total = probs.sum(axis=1)
        probs /= total[:, None]
        # -log softmax[target], in the log domain (finite even if probs underflow)
        loss = float(np.sum(weight * (np.log(total) - shifted[rows, tgt])))

        # ---- backward
        dlogits = probs
        dlogits[rows, tgt] -= 1
        dlogits *= weight[:, None]
        G["lm_head"] += dlogits.T @ x
        dx = dlogits @ P["lm_head"]
        for i in reversed(range(self.n_layer)):
            wq, wk, wv, wo, fc1, fc2 = self._layer(P, i)
            dwq, dwk, dwv, dwo, dfc1, dfc2 = self._layer(G, i)
            x_in, ln1, s1, q, k, v, att, y, res2, ln2, s2, h, hr = cache[i]
            dfc2 += dx.T @ hr
            dh = (dx @ fc2) * (h > 0)
            dfc1 += dh.T @ ln2
            dres2 = dx + rmsnorm_backward(dh @ fc1, res2, s2)
            dwo += dres2.T @ y
            dy = heads(dres2 @ wo)
            datt = dy @ v.transpose(0, 2, 1)
            dv = att.transpose(0, 2, 1) @ dy
            dscores = att * (datt - np.sum(att * datt, axis=-1, keepdims=True)) * scale
            dq, dk = dscores @ k, dscores.transpose(0, 2, 1) @ q
            dq, dk, dv = unheads(dq), unheads(dk), unheads(dv)
            dwq += dq.T @ ln1
            dwk += dk.T @ ln1
            dwv += dv.T @ ln1
            dln1 = dq @ wq + dk @ wk + dv @ wv
            dx = dres2 + rmsnorm_backward(dln1, x_in, s1)
        demb = rmsnorm_backward(dx, emb, s0)
        np.add.at(G["wte"], inp, demb)
        np.add.at(G["wpe"], pos, demb)
        return loss

    def forward_backward(self, tokens: Sequence[int]) -> float:
        return self.forward_backward_batch([tokens])

    def zero_grad(self):
        self.flat_grads[:] = 0

    # ------------------------------------------------------------------- Adam
    def adam_step(self, lr_t, t, beta1=0.85, beta2=0.99, eps=1e-8):
        """The SPEC's Adam at 1-based step ``t``; then the gradients are zeroed."""
        g, m, v = self.flat_grads, self.m, self.v
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        self.flat_params -= lr_t * m_hat / (np.sqrt(v_hat) + eps)
        g[:] = 0

    def train_step(self, seqs, step, num_steps, lr=0.01, beta1=0.85, beta2=0.99, eps=1e-8):
        """One step of the SPEC's loop (0-based ``step``) on a batch of documents."""
        loss = self.forward_backward_batch(seqs)
        self.adam_step(lr * (1 - step / num_steps), step + 1, beta1, beta2, eps)
        return loss


def self_check(dtype="float64", model_cls=NumpyGPT, sizes=((16, 16, 1), (32, 16, 2)),
               steps=3, seed=0) -> dict:
    """Compare ``model_cls`` with microgpt_c on random documents from a random
    init: loss and gradients of one document and of a batch, then ``steps``
    training steps.  Returns the largest errors (gradients relative to their
    largest entry), as floats keyed ``loss``, ``grad``, ``train_loss``,
    ``params``."""
    from microgpt_c import GPT
    rng = random.Random(seed)
    vocab = 27
    errs = {"loss": 0.0, "grad": 0.0, "train_loss": 0.0, "params": 0.0}
    for n_embd, block, n_layer in sizes:
        docs = [[vocab - 1] + [rng.randrange(vocab - 1) for _ in range(rng.randint(1, block + 3))]
                + [vocab - 1] for _ in range(6)]
        kw = dict(n_layer=n_layer, n_embd=n_embd, n_head=4, block_size=block)
        c = GPT(vocab, dtype=dtype, max_tokens=block * 4, **kw)
        other = model_cls(vocab, dtype=dtype, **kw)
        c.init_weights(random.Random(seed))
        other.init_weights(random.Random(seed))
        for batch in ([docs[0]], docs[1:5]):
            lc, lo = c.forward_backward_batch(batch), other.forward_backward_batch(batch)
            gc, go = np.asarray(c.flat_grads, np.float64), _np(other.flat_grads)
            errs["loss"] = max(errs["loss"], abs(lc - lo))
            errs["grad"] = max(errs["grad"], float(np.max(np.abs(gc - go)) / np.max(np.abs(gc))))
            c.zero_grad()
            other.zero_grad()
        corpus = np.concatenate([np.asarray(d, np.int32) for d in docs])
        starts = np.cumsum([0] + [len(d) for d in docs])
        lc, _ = c.train_steps(corpus, starts, 0, steps, steps, 2)
        lo = [other.train_step([docs[(2 * s) % 6], docs[(2 * s + 1) % 6]], s, steps)
              for s in range(steps)]
        errs["train_loss"] = max(errs["train_loss"], float(np.max(np.abs(lc - np.array(lo)))))
        errs["params"] = max(errs["params"], float(np.max(np.abs(
            np.asarray(c.flat_params, np.float64) - _np(other.flat_params)))))
    return errs


def _np(a) -> np.ndarray:
    """A float64 NumPy copy of an array or tensor."""
    a = a.detach().numpy() if hasattr(a, "detach") else a
    return np.array(a, dtype=np.float64)


if __name__ == "__main__":
    print(self_check())
