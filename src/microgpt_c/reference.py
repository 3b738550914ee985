"""Pure-Python reference implementation of microgpt (scalar autograd).

This module is the oracle for microgpt_c: it follows ``SPEC.md`` operation by
operation, the way the original ~200-line microgpt does, with a scalar
``Value`` autograd engine and no NumPy.  It shares no model code with the C
path.  It is slow (about a quarter of a second per training step at the
default size) and meant for tests, benchmarks and as the ``reference`` backend.
"""
from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Sequence

__all__ = [
    "Value", "linear", "rmsnorm", "softmax", "relu", "attend", "attention",
    "cross_entropy", "param_shapes", "ReferenceGPT", "train",
]


class Value:
    """A scalar in the computation graph: data, grad, children, local grads."""

    __slots__ = ("data", "grad", "_children", "_local_grads")

    def __init__(self, data, children=(), local_grads=()):
        self.data = data
        self.grad = 0
        self._children = children
        self._local_grads = local_grads

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), (1, 1))

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), (other.data, self.data))

    def __pow__(self, other):
        return Value(self.data ** other, (self,), (other * self.data ** (other - 1),))

    def log(self):
        return Value(math.log(self.data), (self,), (1 / self.data,))

    def exp(self):
        return Value(math.exp(self.data), (self,), (math.exp(self.data),))

    def relu(self):
        return Value(max(0, self.data), (self,), (float(self.data > 0),))

    def __neg__(self):
        return self * -1

    def __radd__(self, other):
        return self + other

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return other + (-self)

    def __rmul__(self, other):
        return self * other

    def __truediv__(self, other):
        return self * other ** -1

    def __rtruediv__(self, other):
        return other * self ** -1

    def backward(self):
        """Reverse-mode autograd from this node (iterative topological sort)."""
        topo, visited = [], set()
        stack = [(self, False)]
        while stack:
            v, expanded = stack.pop()
            if expanded:
                topo.append(v)
                continue
            if id(v) in visited:
                continue
            visited.add(id(v))
            stack.append((v, True))
            for child in reversed(v._children):
                if id(child) not in visited:
                    stack.append((child, False))
        self.grad = 1
        for v in reversed(topo):
            for child, local_grad in zip(v._children, v._local_grads):
                child.grad += local_grad * v.grad

    def __repr__(self):
        return f"Value(data={self.data!r}, grad={self.grad!r})"


# ---------------------------------------------------------------- operations
def linear(x, w):
    """``out[o] = sum_i w[o][i] * x[i]`` (no bias), summed left to right."""
    return [sum(wi * xi for wi, xi in zip(wo, x)) for wo in w]


def softmax(logits):
    max_val = max(val.data for val in logits)
    exps = [(val - max_val).exp() for val in logits]
    total = sum(exps)
    return [e / total for e in exps]


def rmsnorm(x):
    ms = sum(xi * xi for xi in x) / len(x)
    scale = (ms + 1e-5) ** -0.5
    return [xi * scale for xi in x]


def relu(x):
    return [xi.relu() for xi in x]


def attend(q, keys, values, n_head):
    """Causal attention of one query over the cached keys/values (all heads)."""
    head_dim = len(q) // n_head
    x_attn = []
    for h in range(n_head):
        hs = h * head_dim
        q_h = q[hs:hs + head_dim]
        k_h = [ki[hs:hs + head_dim] for ki in keys]
        v_h = [vi[hs:hs + head_dim] for vi in values]
        attn_logits = [sum(q_h[j] * k_h[t][j] for j in range(head_dim)) / head_dim ** 0.5
                       for t in range(len(k_h))]
        attn_weights = softmax(attn_logits)
        head_out = [sum(attn_weights[t] * v_h[t][j] for t in range(len(v_h)))
                    for j in range(head_dim)]
        x_attn.extend(head_out)
    return x_attn


def attention(q_seq, k_seq, v_seq, n_head):
    """Causal self-attention over a whole sequence: position p sees 0..p."""
    return [attend(q_seq[p], k_seq[:p + 1], v_seq[:p + 1], n_head) for p in range(len(q_seq))]


def cross_entropy(logits_seq, targets):
    """Mean over positions of ``-log(softmax(logits)[target])``."""
    losses = [-softmax(logits)[t].log() for logits, t in zip(logits_seq, targets)]
    return (1 / len(losses)) * sum(losses)


# ---------------------------------------------------------------- the model
def param_shapes(vocab_size, n_layer, n_embd, block_size):
    """Parameter names and (nout, nin) shapes, in the SPEC's init order."""
    shapes = {"wte": (vocab_size, n_embd), "wpe": (block_size, n_embd),
              "lm_head": (vocab_size, n_embd)}
    for i in range(n_layer):
        for name in ("attn_wq", "attn_wk", "attn_wv", "attn_wo"):
            shapes[f"layer{i}.{name}"] = (n_embd, n_embd)
        shapes[f"layer{i}.mlp_fc1"] = (4 * n_embd, n_embd)
        shapes[f"layer{i}.mlp_fc2"] = (n_embd, 4 * n_embd)
    return shapes


LR_SCHEDULES = ("linear", "cosine", "constant")


def schedule_lr(step, num_steps, lr=0.01, *, warmup_steps=0, lr_schedule="linear", min_lr=0.0):
    """lr_t of 0-based step ``step``: the SPEC's ``lr * (1 - step / num_steps)``
    by default; W = warmup_steps, f = (step - W) / (num_steps - W):
    step < W: lr * (step + 1) / W; linear: min_lr + (lr - min_lr) * (1 - f);
    cosine: min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * f)); constant: lr."""
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    w = max(warmup_steps, 0)
    if step < w:
        return lr * (step + 1) / w
    if lr_schedule == "constant":
        return lr
    if w == 0 and min_lr == 0.0 and lr_schedule == "linear":
        return lr * (1 - step / num_steps)
    f = (step - w) / (num_steps - w)
    if lr_schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * f))
    return min_lr + (lr - min_lr) * (1.0 - f)


class ReferenceGPT:
    """The one-token-at-a-time GPT of the SPEC, with Adam, on ``Value`` scalars."""

    def __init__(self, vocab_size, n_layer=1, n_embd=16, n_head=4, block_size=16,
                 rng: Optional[random.Random] = None, std=0.08):
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.vocab_size, self.n_layer, self.n_embd = vocab_size, n_layer, n_embd
        self.n_head, self.block_size = n_head, block_size
        rng = rng if rng is not None else random.Random(42)
        self.state_dict = {
            name: [[Value(rng.gauss(0, std)) for _ in range(nin)] for _ in range(nout)]
            for name, (nout, nin) in param_shapes(vocab_size, n_layer, n_embd, block_size).items()
        }
        self.params = [p for mat in self.state_dict.values() for row in mat for p in row]
        self.m = [0.0] * len(self.params)
        self.v = [0.0] * len(self.params)

    # -- forward
    def gpt(self, token_id, pos_id, keys, values):
        sd = self.state_dict
        x = [t + p for t, p in zip(sd["wte"][token_id], sd["wpe"][pos_id])]
        x = rmsnorm(x)
        for li in range(self.n_layer):
            x_residual = x
            x = rmsnorm(x)
            q = linear(x, sd[f"layer{li}.attn_wq"])
            k = linear(x, sd[f"layer{li}.attn_wk"])
            v = linear(x, sd[f"layer{li}.attn_wv"])
            keys[li].append(k)
            values[li].append(v)
            x = linear(attend(q, keys[li], values[li], self.n_head), sd[f"layer{li}.attn_wo"])
            x = [a + b for a, b in zip(x, x_residual)]
            x_residual = x
            x = rmsnorm(x)
            x = relu(linear(x, sd[f"layer{li}.mlp_fc1"]))
            x = linear(x, sd[f"layer{li}.mlp_fc2"])
            x = [a + b for a, b in zip(x, x_residual)]
        return linear(x, sd["lm_head"])

    def sequence_loss(self, tokens: Sequence[int]) -> Value:
        """Graph of the mean next-token loss over ``tokens`` (truncated to the block)."""
        n = min(self.block_size, len(tokens) - 1)
        if n < 1:
            raise ValueError("a sequence needs at least 2 tokens")
        keys, values = [[] for _ in range(self.n_layer)], [[] for _ in range(self.n_layer)]
        losses = []
        for pos_id in range(n):
            logits = self.gpt(tokens[pos_id], pos_id, keys, values)
            losses.append(-softmax(logits)[tokens[pos_id + 1]].log())
        return (1 / n) * sum(losses)

    def forward_backward(self, tokens: Sequence[int]) -> float:
        """Loss of one sequence; its gradient is accumulated into ``p.grad``."""
        loss = self.sequence_loss(tokens)
        loss.backward()
        return loss.data

    # -- optimiser
    def adam_step(self, step, num_steps, learning_rate=0.01, beta1=0.85, beta2=0.99,
                  eps_adam=1e-8, *, warmup_steps=0, lr_schedule="linear", min_lr=0.0,
                  weight_decay=0.0, grad_clip=0.0):
        """The SPEC's Adam step (defaults), or with the options of the C core
        (csrc/microgpt.h's mg_schedule): the schedule of :func:`schedule_lr`,
        clipping to the global L2 norm ``grad_clip`` and decoupled weight
        decay, as the C core does them (clip, decay, then Adam)."""
        lr_t = schedule_lr(step, num_steps, learning_rate, warmup_steps=warmup_steps,
                           lr_schedule=lr_schedule, min_lr=min_lr)
        m, v = self.m, self.v
        if grad_clip > 0 or weight_decay > 0:
            acc = 0.0
            for p in self.params:
                acc += p.grad * p.grad
            norm = math.sqrt(acc)
            if math.isfinite(norm):
                if grad_clip > 0 and norm > grad_clip:
                    scale = grad_clip / norm
                    for p in self.params:
                        p.grad = p.grad * scale
                if weight_decay > 0:
                    k = lr_t * weight_decay
                    for p in self.params:
                        p.data = p.data - k * p.data
        for i, p in enumerate(self.params):
            m[i] = beta1 * m[i] + (1 - beta1) * p.grad
            v[i] = beta2 * v[i] + (1 - beta2) * p.grad ** 2
            m_hat = m[i] / (1 - beta1 ** (step + 1))
            v_hat = v[i] / (1 - beta2 ** (step + 1))
            p.data -= lr_t * m_hat / (v_hat ** 0.5 + eps_adam)
            p.grad = 0
        return lr_t

    # -- inspection
    def weights(self) -> Dict[str, List[List[float]]]:
        return {k: [[p.data for p in row] for row in mat] for k, mat in self.state_dict.items()}

    def grads(self) -> Dict[str, List[List[float]]]:
        return {k: [[float(p.grad) for p in row] for row in mat] for k, mat in self.state_dict.items()}

    def set_weights(self, weights) -> None:
        for name, mat in self.state_dict.items():
            for row, new_row in zip(mat, weights[name]):
                for p, w in zip(row, new_row):
                    p.data = float(w)

    # -- inference
    def sample(self, rng: random.Random, uchars, temperature=0.5) -> str:
        bos = len(uchars)
        keys, values = [[] for _ in range(self.n_layer)], [[] for _ in range(self.n_layer)]
        token_id, out = bos, []
        for pos_id in range(self.block_size):
            logits = self.gpt(token_id, pos_id, keys, values)
            probs = softmax([l / temperature for l in logits])
            token_id = rng.choices(range(self.vocab_size), weights=[p.data for p in probs])[0]
            if token_id == bos:
                break
            out.append(uchars[token_id])
        return "".join(out)


def train(docs: List[str], num_steps=1000, n_layer=1, n_embd=16, n_head=4, block_size=16,
          learning_rate=0.01, temperature=0.5, num_samples=20, seed=42, callback=None):
    """Run the whole reference program on ``docs``; returns a dict of results.

    ``callback(step, loss)`` (1-based step) is called after every step.
    """
    rng = random.Random(seed)
    docs = list(docs)
    rng.shuffle(docs)
    uchars = sorted(set("".join(docs)))
    bos = len(uchars)
    model = ReferenceGPT(len(uchars) + 1, n_layer, n_embd, n_head, block_size, rng)
    losses = []
    for step in range(num_steps):
        doc = docs[step % len(docs)]
        tokens = [bos] + [uchars.index(ch) for ch in doc] + [bos]
        loss = model.forward_backward(tokens)
        model.adam_step(step, num_steps, learning_rate)
        losses.append(loss)
        if callback is not None:
            callback(step + 1, loss)
    samples = [model.sample(rng, uchars, temperature) for _ in range(num_samples)]
    return {"losses": losses, "samples": samples, "model": model, "uchars": uchars,
            "docs": docs}
