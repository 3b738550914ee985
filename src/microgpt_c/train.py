"""Train microgpt on a list of documents and sample new ones.

``python -m microgpt_c.train`` with no arguments does what the original
microgpt program does: it reads ``input.txt`` (else the built-in names), trains
the default one-layer GPT for 1000 steps printing the loss, then prints 20
sampled names.  Every setting has a flag; see ``--help``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, TextIO

from . import data as data_mod
from .errors import ConfigError, MicrogptError, NonFiniteLossError

BACKENDS = ("c", "reference")


@dataclass
class TrainConfig:
    """Every setting of a run; defaults are the SPEC's (the original program's)."""
    data: Optional[str] = None          # data file; None: input.txt, else built-in names
    steps: int = 1000
    n_layer: int = 1
    n_embd: int = 16
    n_head: int = 4
    block_size: int = 16
    batch_size: int = 1
    lr: float = 0.01
    beta1: float = 0.85
    beta2: float = 0.99
    eps: float = 1e-8
    seed: int = 42
    temperature: float = 0.5
    num_samples: int = 20
    dtype: str = "float64"
    backend: str = dataclasses.field(
        default_factory=lambda: os.environ.get("MICROGPT_C_BACKEND", "c") or "c")
    threads: Optional[int] = None
    metrics_out: Optional[str] = None

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the first invalid setting."""
        for name in ("steps", "n_layer", "n_embd", "n_head", "block_size", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.num_samples < 0:
            raise ConfigError(f"num-samples must be >= 0, got {self.num_samples}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n-embd ({self.n_embd}) must be divisible by n-head ({self.n_head})")
        for name in ("lr", "temperature", "eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if self.dtype not in ("float64", "float32"):
            raise ConfigError(f"dtype must be float64 or float32, got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
                              " (check MICROGPT_C_BACKEND)")
        if self.backend == "reference" and self.dtype != "float64":
            raise ConfigError("the reference backend is float64 only; use --dtype float64")
        return self


@dataclass
class TrainResult:
    model: object
    tokenizer: data_mod.Tokenizer
    docs: List[str]
    losses: List[float]
    samples: List[str]
    seconds: float


def make_model(cfg: TrainConfig, vocab_size: int):
    if cfg.backend == "reference":
        from .pymodel import ReferenceBackendGPT
        return ReferenceBackendGPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head,
                                   cfg.block_size, cfg.dtype)
    from ._core import GPT
    return GPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size, cfg.dtype,
               max_tokens=cfg.block_size * cfg.batch_size)


def softmax_for(model):
    if getattr(model, "backend", "c") == "reference":
        return model.softmax_temperature
    from ._core import softmax_temperature
    return softmax_temperature


def sample_names(model, tokenizer: data_mod.Tokenizer, rng: random.Random, num_samples: int,
                 temperature: float) -> List[str]:
    """The SPEC's sampling: from BOS, one ``rng.choices`` draw per position,
    stopping at BOS or the end of the block."""
    softmax = softmax_for(model)
    population = range(tokenizer.vocab_size)
    samples = []
    for _ in range(num_samples):
        token, out = tokenizer.bos, []
        for pos in range(model.block_size):
            probs = softmax(model.logits(token, pos), temperature)
            token = rng.choices(population, weights=probs.tolist())[0]
            if token == tokenizer.bos:
                break
            out.append(tokenizer.uchars[token])
        samples.append("".join(out))
    return samples


def train(cfg: TrainConfig, docs: Optional[List[str]] = None,
          on_steps: Optional[Callable[[int, List[float], List[float]], None]] = None,
          log: Callable[[str], None] = lambda s: None) -> TrainResult:
    """Run the SPEC's program: shuffle, init, train ``cfg.steps`` steps, sample.

    ``docs`` default to :func:`microgpt_c.data.load_documents` of ``cfg.data``.
    ``on_steps(first_step, losses, lrs)`` receives the losses of each chunk of
    steps as they complete (1-based ``first_step``)."""
    cfg.validate()
    if docs is None:
        docs, description = data_mod.load_documents(cfg.data)
        print(description, file=sys.stderr)
    docs = list(docs)
    if not docs:
        raise data_mod.DataError("there are no documents to train on")
    if cfg.threads is not None:
        from ._core import set_num_threads
        set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    rng.shuffle(docs)
    tokenizer = data_mod.Tokenizer(docs)
    log(f"num docs: {len(docs)}")
    log(f"vocab size: {tokenizer.vocab_size}")
    model = make_model(cfg, tokenizer.vocab_size)
    model.init_weights(rng)
    log(f"num params: {model.num_params}")
    corpus, starts = data_mod.pack_corpus(tokenizer, docs)

    losses: List[float] = []
    t0 = time.perf_counter()
    chunk, step = 1, 0
    while step < cfg.steps:
        n = min(chunk, cfg.steps - step)
        tc = time.perf_counter()
        try:
            chunk_losses, lrs = model.train_steps(corpus, starts, step, n, cfg.steps,
                                                  cfg.batch_size, cfg.lr, cfg.beta1,
                                                  cfg.beta2, cfg.eps)
        except NonFiniteLossError as err:
            done = list(getattr(err, "losses", []))
            losses.extend(done)
            if on_steps is not None and done:
                on_steps(step + 1, done, [])
            raise
        chunk_losses, lrs = chunk_losses.tolist(), lrs.tolist()
        losses.extend(chunk_losses)
        if on_steps is not None:
            on_steps(step + 1, chunk_losses, lrs)
        step += n
        # grow the chunk while it takes under 50 ms, so progress stays live
        if time.perf_counter() - tc < 0.05:
            chunk = min(chunk * 2, 1 << 14)
    seconds = time.perf_counter() - t0
    samples = sample_names(model, tokenizer, rng, cfg.num_samples, cfg.temperature)
    return TrainResult(model, tokenizer, docs, losses, samples, seconds)


# ------------------------------------------------------------------ the CLI
def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(backend="c")
    p = argparse.ArgumentParser(
        prog="python -m microgpt_c.train",
        description="Train microgpt (a one-layer character GPT) on a list of documents, one "
                    "per line, and print sampled new ones. With no arguments it reproduces "
                    "the original microgpt program.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, metavar="PATH",
                   help="UTF-8 text file, one document per line (default: input.txt in the "
                        "current directory if present, else the built-in names data set)")
    p.add_argument("--steps", type=int, default=d.steps, help="number of training steps")
    p.add_argument("--n-layer", type=int, default=d.n_layer, help="number of transformer layers")
    p.add_argument("--n-embd", type=int, default=d.n_embd, help="embedding width")
    p.add_argument("--n-head", type=int, default=d.n_head,
                   help="attention heads (must divide --n-embd)")
    p.add_argument("--block-size", type=int, default=d.block_size,
                   help="maximum context length; longer documents are truncated")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="documents per step (1 is exactly the original program)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="peak learning rate of Adam (decays linearly to 0)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the random stream (shuffle, init, sampling)")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help="sampling temperature, > 0 (lower is more conservative)")
    p.add_argument("--num-samples", type=int, default=d.num_samples,
                   help="names to sample after training")
    p.add_argument("--dtype", choices=("float64", "float32"), default=d.dtype,
                   help="floating-point precision of the model")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="'c' (fast) or 'reference' (pure-Python oracle, float64); default: "
                        "$MICROGPT_C_BACKEND or c")
    p.add_argument("--threads", type=int, default=None,
                   help="OpenMP threads for the C kernels (default: $OMP_NUM_THREADS or all "
                        "cores); results do not depend on it")
    p.add_argument("--metrics-out", default=None, metavar="FILE",
                   help="write one JSON object per step: {\"step\", \"loss\", \"lr\"}")
    return p


class _StepPrinter:
    """Prints the reference program's per-step line (rewritten with \\r) and
    writes --metrics-out lines."""

    def __init__(self, num_steps: int, out: TextIO, metrics: Optional[TextIO]):
        self.num_steps, self.out, self.metrics = num_steps, out, metrics

    def __call__(self, first: int, losses: List[float], lrs: List[float]) -> None:
        lines = [f"step {first + i:4d} / {self.num_steps:4d} | loss {loss:.4f}"
                 for i, loss in enumerate(losses)]
        self.out.write("\r".join(lines) + "\r")
        self.out.flush()
        if self.metrics is not None:
            for i, (loss, lr) in enumerate(zip(losses, lrs)):
                self.metrics.write(json.dumps({"step": first + i, "loss": loss, "lr": lr}) + "\n")
            self.metrics.flush()


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items() if v is not None}
    cfg = TrainConfig(**kwargs)
    out = sys.stdout
    metrics = None
    try:
        cfg.validate()
        if cfg.metrics_out:
            metrics = open(cfg.metrics_out, "w", encoding="utf-8")
        result = train(cfg, on_steps=_StepPrinter(cfg.steps, out, metrics),
                       log=lambda s: print(s, file=out, flush=True))
    except NonFiniteLossError as err:
        print(file=out)
        return _error(str(err))
    except (data_mod.DataError, MicrogptError, ValueError, OSError, MemoryError) as err:
        return _error(str(err))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if metrics is not None:
            metrics.close()
    print("\n--- inference (new, hallucinated names) ---", file=out)
    for i, name in enumerate(result.samples):
        print(f"sample {i + 1:2d}: {name}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
