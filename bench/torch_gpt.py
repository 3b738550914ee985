"""A PyTorch (CPU, eager, autograd) baseline of the SPEC's microgpt.

The same computation as ``numpy_gpt`` (documents packed back to back, a
causal, document-local attention mask; loss = mean over documents of each
one's mean token loss), with the gradient from autograd and
``torch.optim.Adam`` (whose update is the SPEC's: m_hat / (sqrt(v_hat) + eps)).
All parameters are views of one flat leaf tensor in the SPEC's order, so
``flat_params`` / ``flat_grads`` line up with microgpt_c's.  Needs ``torch``.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn.functional as F

from microgpt_c.reference import param_shapes

DTYPES = {"float64": torch.float64, "float32": torch.float32}
LAYER_TENSORS = ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")


def rmsnorm(x):
    return x * (x.pow(2).mean(dim=-1, keepdim=True) + 1e-5).rsqrt()


class TorchGPT:
    def __init__(self, vocab_size, n_layer=1, n_embd=16, n_head=4, block_size=16,
                 dtype="float64", lr=0.01, beta1=0.85, beta2=0.99, eps=1e-8):
        if n_embd % n_head:
            raise ValueError("n_embd must be divisible by n_head")
        self.vocab_size, self.n_layer, self.n_embd = vocab_size, n_layer, n_embd
        self.n_head, self.block_size, self.lr = n_head, block_size, lr
        self.shapes = param_shapes(vocab_size, n_layer, n_embd, block_size)
        self.num_params = sum(r * c for r, c in self.shapes.values())
        self.flat_params = torch.zeros(self.num_params, dtype=DTYPES[dtype], requires_grad=True)
        self.optimizer = torch.optim.Adam([self.flat_params], lr=lr, betas=(beta1, beta2),
                                          eps=eps)

    def init_weights(self, rng: random.Random, std=0.08):
        with torch.no_grad():
            self.flat_params.copy_(torch.tensor(
                [rng.gauss(0.0, std) for _ in range(self.num_params)], dtype=torch.float64))

    @property
    def flat_grads(self):
        g = self.flat_params.grad
        return torch.zeros_like(self.flat_params) if g is None else g

    def _tensors(self):
        out, off = {}, 0
        for name, (r, c) in self.shapes.items():
            out[name] = self.flat_params[off:off + r * c].view(r, c)
            off += r * c
        return out

    def loss(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        P = self._tensors()
        NH, C = self.n_head, self.n_embd
        lens = [min(self.block_size, len(s) - 1) for s in seqs]
        inp = torch.tensor([t for s, n in zip(seqs, lens) for t in s[:n]])
        tgt = torch.tensor([t for s, n in zip(seqs, lens) for t in s[1:n + 1]])
        pos = torch.cat([torch.arange(n) for n in lens])
        doc = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
        N = len(inp)
        mask = (doc[:, None] == doc[None, :]) & torch.ones(N, N, dtype=torch.bool).tril()
        x = rmsnorm(P["wte"][inp] + P["wpe"][pos])
        for i in range(self.n_layer):
            wq, wk, wv, wo, fc1, fc2 = (P[f"layer{i}.{t}"] for t in LAYER_TENSORS)
            h = rmsnorm(x)
            q, k, v = (F.linear(h, w).view(N, NH, C // NH).transpose(0, 1) for w in (wq, wk, wv))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = F.linear(y.transpose(0, 1).reshape(N, C), wo) + x
            x = F.linear(F.relu(F.linear(rmsnorm(x), fc1)), fc2) + x
        logits = F.linear(x, P["lm_head"])
        token_losses = F.cross_entropy(logits, tgt, reduction="none")
        weight = torch.repeat_interleave(
            torch.tensor([1.0 / (n * len(lens)) for n in lens], dtype=logits.dtype),
            torch.tensor(lens))
        return (token_losses * weight).sum()

    def forward_backward_batch(self, seqs) -> float:
        """Loss of a batch of documents; the gradient accumulates in ``flat_grads``."""
        loss = self.loss(seqs)
        loss.backward()
        return loss.item()

    def forward_backward(self, tokens) -> float:
        return self.forward_backward_batch([tokens])

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=False)

    def train_step(self, seqs, step, num_steps) -> float:
        """One step of the SPEC's loop (0-based ``step``) on a batch of documents."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_backward_batch(seqs)
        self.optimizer.param_groups[0]["lr"] = self.lr * (1 - step / num_steps)
        self.optimizer.step()
        return loss


def self_check(dtype="float64", **kwargs) -> dict:
    """``numpy_gpt.self_check`` on this model: its errors against microgpt_c."""
    from numpy_gpt import self_check as check
    return check(dtype, TorchGPT, **kwargs)


if __name__ == "__main__":
    print(self_check())


# ------------------------------------------------------------------ full blocks
ATTENTION = ("masked", "sdpa")


class TorchBlockGPT(TorchGPT):
    """The same model on a batch of documents that fill the block: ``tokens`` is
    a (B, T + 1) int64 tensor, every row BOS + T ids, positions 0..T-1 predict
    the next token.  All documents have the same length, so the SPEC's batch loss
    (mean over documents of their mean token loss) is the mean over all B*T
    positions, and the causal mask is the whole attention mask.  ``attention``:
    ``"masked"``, scores q k^T / sqrt(hd) with the upper triangle set to -inf,
    softmax, times v; ``"sdpa"``, ``F.scaled_dot_product_attention(is_causal=True)``.
    ``compile=True`` wraps the loss in ``torch.compile`` (the first steps compile)."""

    def __init__(self, vocab_size, attention="sdpa", compile=False, **kwargs):
        super().__init__(vocab_size, **kwargs)
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}")
        self.attention = attention
        T = self.block_size
        self.causal = torch.ones(T, T, dtype=torch.bool).tril()
        self._loss = torch.compile(self.block_loss) if compile else self.block_loss

    def block_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        P = self._tensors()
        NH, C = self.n_head, self.n_embd
        Bt, T = tokens.shape[0], tokens.shape[1] - 1
        hd = C // NH
        inp, tgt = tokens[:, :-1], tokens[:, 1:]
        x = rmsnorm(P["wte"][inp] + P["wpe"][:T])
        for i in range(self.n_layer):
            wq, wk, wv, wo, fc1, fc2 = (P[f"layer{i}.{t}"] for t in LAYER_TENSORS)
            h = rmsnorm(x)
            q, k, v = (F.linear(h, w).view(Bt, T, NH, hd).transpose(1, 2) for w in (wq, wk, wv))
            if self.attention == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                s = (q @ k.transpose(-2, -1)) * (hd ** -0.5)
                s = s.masked_fill(~self.causal[:T, :T], float("-inf"))
                y = torch.softmax(s, dim=-1) @ v
            x = F.linear(y.transpose(1, 2).reshape(Bt, T, C), wo) + x
            x = F.linear(F.relu(F.linear(rmsnorm(x), fc1)), fc2) + x
        logits = F.linear(x, P["lm_head"])
        return F.cross_entropy(logits.reshape(Bt * T, -1), tgt.reshape(-1))

    def train_step(self, tokens, step, num_steps) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(tokens)
        loss.backward()
        self.optimizer.param_groups[0]["lr"] = self.lr * (1 - step / num_steps)
        self.optimizer.step()
        return loss.item()
