"""The ``reference`` backend: the GPT interface the trainer uses, over the
pure-Python scalar-autograd engine of :mod:`microgpt_c.reference`.

Select it with ``--backend reference`` or ``MICROGPT_C_BACKEND=reference``.
It runs the same loop as the C backend, about 100 ms per training step at the
default size, float64 only.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from . import reference
from .errors import ConfigError, SequenceLengthError, TokenError
from .validate import positive_int


class ReferenceBackendGPT:
    """Same methods as :class:`microgpt_c.GPT` used for training and sampling."""

    backend = "reference"

    def __init__(self, vocab_size, n_layer=1, n_embd=16, n_head=4, block_size=16,
                 dtype="float64"):
        if dtype != "float64":
            raise ConfigError(f"the reference backend computes in float64 only, not {dtype!r}")
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.n_layer = positive_int(n_layer, "n_layer")
        self.n_embd = positive_int(n_embd, "n_embd")
        self.n_head = positive_int(n_head, "n_head")
        self.block_size = positive_int(block_size, "block_size")
        if n_embd % n_head:
            raise ConfigError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.dtype = dtype
        self._ref = None
        self._cache = None
        shapes = reference.param_shapes(vocab_size, n_layer, n_embd, block_size)
        self.num_params = sum(r * c for r, c in shapes.values())

    def init_weights(self, rng: random.Random, std: float = 0.08) -> None:
        self._ref = reference.ReferenceGPT(self.vocab_size, self.n_layer, self.n_embd,
                                           self.n_head, self.block_size, rng, std)

    def _model(self) -> reference.ReferenceGPT:
        if self._ref is None:
            self.init_weights(random.Random(0), 0.0)
        return self._ref

    @property
    def params(self):
        """Copies of the parameters as NumPy arrays (read-only snapshots)."""
        return {k: np.array(v) for k, v in self._model().weights().items()}

    @property
    def grads(self):
        return {k: np.array(v) for k, v in self._model().grads().items()}

    def _check_tokens(self, seq, what):
        seq = [int(t) for t in seq]
        if len(seq) < 2:
            raise SequenceLengthError(f"{what} has {len(seq)} token(s); at least 2 are needed")
        for i, t in enumerate(seq):
            if not 0 <= t < self.vocab_size:
                raise TokenError(f"{what}[{i}] = {t} is not a token id "
                                 f"(valid ids are 0..{self.vocab_size - 1})")
        return seq

    def forward_backward_batch(self, sequences: Sequence[Sequence[int]]) -> float:
        if len(sequences) == 0:
            raise SequenceLengthError("a batch needs at least one document")
        model = self._model()
        seqs = [self._check_tokens(s, f"document {d}") for d, s in enumerate(sequences)]
        losses = [model.sequence_loss(s) for s in seqs]
        loss = losses[0] if len(losses) == 1 else (1 / len(losses)) * sum(losses)
        loss.backward()
        return loss.data

    def forward_backward(self, tokens: Sequence[int]) -> float:
        return self.forward_backward_batch([tokens])

    def train_steps(self, corpus, doc_starts, step0, n_steps, num_steps, batch_size=1,
                    lr=0.01, beta1=0.85, beta2=0.99, eps=1e-8, **options):
        model = self._model()
        corpus = np.asarray(corpus).tolist()
        starts = np.asarray(doc_starts).tolist()
        n_docs = len(starts) - 1
        losses, lrs = np.zeros(n_steps), np.zeros(n_steps)
        for i in range(n_steps):
            s = step0 + i
            docs = [(s * batch_size + b) % n_docs for b in range(batch_size)]
            losses[i] = self.forward_backward_batch(
                [corpus[starts[d]:starts[d + 1]] for d in docs])
            lrs[i] = model.adam_step(s, num_steps, lr, beta1, beta2, eps, **options)
        return losses, lrs

    def forward_batch(self, sequences: Sequence[Sequence[int]], total_docs=None) -> float:
        """Loss of a batch without gradients: (sum of the documents' mean
        token losses) / total_docs (default: their number)."""
        model = self._model()
        seqs = [self._check_tokens(s, f"document {d}") for d, s in enumerate(sequences)]
        total = len(seqs) if total_docs is None else total_docs
        return sum(model.sequence_loss(s).data for s in seqs) / total

    def logits(self, token: int, pos: int):
        if not 0 <= pos < self.block_size:
            raise SequenceLengthError(f"pos {pos} is outside the block (0..{self.block_size - 1})")
        if not 0 <= token < self.vocab_size:
            raise TokenError(f"token {token} is not a token id")
        model = self._model()
        if pos == 0 or self._cache is None:
            self._cache = ([[] for _ in range(self.n_layer)], [[] for _ in range(self.n_layer)])
        keys, values = self._cache
        for kl, vl in zip(keys, values):  # forget positions >= pos
            del kl[pos:], vl[pos:]
        return np.array([v.data for v in model.gpt(token, pos, keys, values)])

    @staticmethod
    def softmax_temperature(logits, temperature=1.0):
        probs = reference.softmax([reference.Value(float(l)) / temperature for l in logits])
        return np.array([p.data for p in probs])
