"""The Python API: one entry point to train (:func:`train`), a :class:`GPT`
that can :meth:`~GPT.save`, :meth:`~GPT.load` and :meth:`~GPT.sample`, and
:func:`build_info`.

Example::

    import microgpt_c

    cfg = microgpt_c.TrainConfig(steps=1000)              # the SPEC's defaults
    result = microgpt_c.train(cfg, "names.txt", out="run")  # or a list of strings
    print(result.losses[-1], result.samples[:3])
    model = microgpt_c.GPT.load("run/checkpoint.safetensors")
    print(model.sample(num_samples=5, temperature=0.8, prefix="ma"))

    # continue a run that stopped early (same data): bit-identical to an
    # uninterrupted run
    microgpt_c.train(None, "names.txt", resume="run/checkpoint.safetensors")

One ``random.Random(seed)`` stream drives everything random, in this order:
the shuffle of the documents, the parameter init, then sampling.  Training
does not draw from it, so the state saved in a checkpoint is the state
sampling starts from.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from . import _core
from . import data as data_mod
from . import distributed
from ._version import __version__
from .checkpoint import (CHECKPOINT_NAME, Checkpoint, CheckpointError,
                         CheckpointMismatchError, TrainState, atomic_write_bytes,
                         load_checkpoint, prepare_out_dir, restore_into, save_checkpoint)
from .errors import (ConfigError, MicrogptError, NonFiniteLossError, OptionalDependencyError,
                     SequenceLengthError, TrainingInterrupted, VocabularyError)

__all__ = ["BACKENDS", "GPT", "RUN_FIELDS", "TrainConfig", "TrainResult", "TrainingInterrupted",
           "OptionalDependencyError", "VocabularyError", "build_info", "check_plot_target",
           "check_prefix", "config_from_checkpoint", "load", "sampling_defaults", "make_model", "sample_names", "save_loss_plot",
           "train"]

PathArg = Union[str, "os.PathLike[str]"]
BACKENDS = ("c", "reference")
MAX_C_INT = 2**31 - 1    # sizes and threads are C ints
MAX_STEPS = 2**62        # steps are C longs (and int64 step counters)
#: Settings that define a run: resuming with any of them changed is an error.
RUN_FIELDS = ("steps", "n_layer", "n_embd", "n_head", "block_size", "batch_size", "lr",
              "beta1", "beta2", "eps", "seed", "dtype")


# --------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Every setting of a run; defaults are the SPEC's (the original program's)."""
    data: Optional[str] = None          # data file; None: input.txt, else built-in names
    steps: int = 1000                   # total steps (length of the learning-rate schedule)
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
    top_k: Optional[int] = None         # sample only from the k most likely tokens
    prefix: str = ""                    # every sample starts with this text
    dtype: str = "float64"
    backend: str = dataclasses.field(
        default_factory=lambda: os.environ.get("MICROGPT_C_BACKEND", "c") or "c")
    threads: Optional[int] = None       # None: OpenMP's default ($OMP_NUM_THREADS)
    metrics_out: Optional[str] = None

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the first invalid setting; return self."""
        for name in ("steps", "n_layer", "n_embd", "n_head", "block_size", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, "
                                  f"got {value!r}")
            limit = MAX_STEPS if name == "steps" else MAX_C_INT
            if value > limit:
                raise ConfigError(f"{name.replace('_', '-')} must be at most {limit}, "
                                  f"got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if (isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int)
                or self.num_samples < 0):
            raise ConfigError(f"num-samples must be an integer >= 0, got {self.num_samples!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool)
                                       or not isinstance(self.top_k, int) or self.top_k < 1):
            raise ConfigError(f"top-k must be a positive integer, got {self.top_k!r}")
        if not isinstance(self.prefix, str):
            raise ConfigError(f"prefix must be a string, got {self.prefix!r}")
        if self.threads is not None and (isinstance(self.threads, bool)
                                         or not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.threads is not None and self.threads > MAX_C_INT:
            raise ConfigError(f"threads must be at most {MAX_C_INT}, got {self.threads}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n-embd ({self.n_embd}) must be divisible by n-head ({self.n_head})")
        if self.batch_size * self.block_size > MAX_C_INT:
            raise ConfigError(f"batch-size x block-size = {self.batch_size * self.block_size} "
                              f"tokens per step is too many (at most {MAX_C_INT}); reduce "
                              "--batch-size or --block-size")
        for name in ("lr", "temperature", "eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        _check_temperature(self.temperature)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if self.dtype not in ("float64", "float32"):
            raise ConfigError(f"dtype must be float64 or float32, got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got "
                              f"{self.backend!r} (check MICROGPT_C_BACKEND)")
        if self.backend == "reference" and self.dtype != "float64":
            raise ConfigError("the reference backend is float64 only; use --dtype float64")
        return self


def _check_temperature(temperature: float) -> None:
    if 0 < temperature < 1 / sys.float_info.max:
        raise ConfigError(f"temperature {temperature!r} is too small: logits * temperature**-1 "
                          "would overflow; use a temperature of at least 1e-300 (or --top-k 1 "
                          "for the most likely character)")


@dataclass
class TrainResult:
    """What :func:`train` returns."""
    model: Any                          # a GPT (or the reference backend's model)
    tokenizer: data_mod.Tokenizer
    docs: List[str]                     # the documents, shuffled as trained on
    losses: List[float]                 # per-step losses from step 1 (incl. resumed history)
    samples: List[str]                  # names sampled after training
    seconds: float                      # wall time of this call's training steps
    start_step: int = 0                 # completed steps before this call (resume)
    checkpoint: Optional[Path] = None   # last checkpoint written, if any


# --------------------------------------------------------------------------- model
class GPT(_core.GPT):
    """The C-backed GPT (see :class:`microgpt_c._core.GPT`) plus a tokenizer,
    the training state, checkpoints and sampling.

    ``GPT(vocab_size, n_layer=1, n_embd=16, n_head=4, block_size=16,
    dtype="float64")``; ``params``/``grads`` are NumPy views of the C buffers.
    """

    tokenizer: Optional[data_mod.Tokenizer] = None
    train_state: Optional[TrainState] = None

    def save(self, path: PathArg) -> Path:
        """Write a checkpoint (parameters, Adam moments, vocabulary and, if the
        model came from :func:`train` or a checkpoint, the training state) to
        ``path`` atomically; ``path`` may be a directory.  Returns the file."""
        uchars = "".join(self.tokenizer.uchars) if self.tokenizer is not None else None
        return save_checkpoint(path, self, uchars=uchars, train=self.train_state)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> "GPT":
        """A model with the checkpoint's config, dtype, parameters, Adam
        moments, tokenizer and training state."""
        model = cls(dtype=ckpt.dtype, **ckpt.config)
        restore_into(model, ckpt)
        if ckpt.uchars is not None:
            model.tokenizer = data_mod.Tokenizer.from_dict({"uchars": ckpt.uchars})
        model.train_state = ckpt.train
        return model

    @classmethod
    def load(cls, path: PathArg) -> "GPT":
        """Load a checkpoint written by :meth:`save` or by training (``path``
        may be the run's output directory).  Raises CheckpointError."""
        return cls.from_checkpoint(load_checkpoint(path))

    def sample(self, num_samples: int = 20, temperature: float = 0.5, *,
               top_k: Optional[int] = None, prefix: str = "", seed: Optional[int] = None,
               rng: Optional[random.Random] = None) -> List[str]:
        """Sample ``num_samples`` documents as the SPEC does.

        The random stream is ``rng`` if given, else ``random.Random(seed)`` if
        ``seed`` is given, else the stream saved with the training state (so a
        model from :func:`train` or a checkpoint reproduces the names printed at
        the end of its training run), else ``random.Random(42)``.  ``top_k``
        keeps only the k most likely tokens; ``prefix`` starts every sample
        with that text."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer (vocabulary); set model.tokenizer "
                              "or load it from a checkpoint")
        if rng is None:
            rng = random.Random(42 if seed is None else seed)
            if seed is None and self.train_state is not None:
                rng.setstate(self.train_state.rng_state)
        return sample_names(self, self.tokenizer, rng, num_samples, temperature,
                            top_k=top_k, prefix=prefix)


def load(path: PathArg) -> GPT:
    """Same as :meth:`GPT.load`."""
    return GPT.load(path)


def make_model(cfg: TrainConfig, vocab_size: int):
    """A fresh (zero) model of ``cfg``'s size for the configured backend."""
    if cfg.backend == "reference":
        from .pymodel import ReferenceBackendGPT
        return ReferenceBackendGPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head,
                                   cfg.block_size, cfg.dtype)
    return GPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size, cfg.dtype,
               max_tokens=cfg.block_size * cfg.batch_size)


def softmax_for(model) -> Callable[..., Any]:
    if getattr(model, "backend", "c") == "reference":
        return model.softmax_temperature
    return _core.softmax_temperature


def sample_names(model, tokenizer: data_mod.Tokenizer, rng: random.Random, num_samples: int,
                 temperature: float, top_k: Optional[int] = None,
                 prefix: str = "") -> List[str]:
    """The SPEC's sampling: from BOS, one ``rng.choices`` draw per position,
    stopping at BOS or the end of the block.  ``prefix`` characters are fed
    first (no draws); ``top_k`` zeroes all but the k largest logits'
    probabilities (ties: lower token id first)."""
    import numpy as np

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ConfigError(f"num_samples must be an integer >= 0, got {num_samples!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise ConfigError(f"temperature must be a positive finite number, got {temperature!r}")
    _check_temperature(temperature)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top-k must be a positive integer, got {top_k!r}")
    ids = check_prefix(prefix, tokenizer, model.block_size)
    V = tokenizer.vocab_size
    use_top_k = top_k is not None and top_k < V
    fast = _sample_in_c(model, tokenizer, rng, num_samples, float(temperature),
                        top_k if use_top_k else 0, prefix, ids)
    if fast is not None:
        return fast
    softmax = softmax_for(model)
    population = range(V)
    samples = []
    for _ in range(num_samples):
        token, out = tokenizer.bos, list(prefix)
        for pos, forced in enumerate(ids):
            model.logits(token, pos)          # fills the KV cache
            token = forced
        for pos in range(len(ids), model.block_size):
            logits = model.logits(token, pos)
            probs = softmax(logits, temperature)
            if use_top_k:
                keep = np.argsort(-np.asarray(logits), kind="stable")[:top_k]
                masked = np.zeros_like(probs)
                masked[keep] = probs[keep]
                probs = masked
            token = rng.choices(population, weights=probs.tolist())[0]
            if token == tokenizer.bos:
                break
            out.append(tokenizer.uchars[token])
        samples.append("".join(out))
    return samples


def _sample_in_c(model, tokenizer, rng, num_samples, temperature, top_k, prefix, ids):
    """sample_names' loop run by the C core (``GPT.sample_tokens``): the same
    names and the same random stream afterwards as the Python loop, for a
    plain ``random.Random`` (whose state the C code steps as CPython does).
    None (the caller runs the Python loop) for any other generator or backend,
    and on any error, with the stream restored, so that the Python loop
    raises exactly what it always has."""
    if type(rng) is not random.Random or not hasattr(model, "sample_tokens") \
            or getattr(model, "backend", "c") == "reference":
        return None
    state = rng.getstate()
    try:
        drawn, after = model.sample_tokens(state, temperature, top_k, ids, tokenizer.bos,
                                           num_samples)
    except (MicrogptError, ValueError, TypeError, OverflowError):
        rng.setstate(state)
        return None
    rng.setstate(after)
    chars = tokenizer.uchars
    return [prefix + "".join(chars[t] for t in d) for d in drawn]


def check_prefix(prefix: str, tokenizer: data_mod.Tokenizer, block_size: int) -> List[int]:
    """The token ids of a sampling prefix; raises VocabularyError naming the
    characters that are not in the vocabulary, SequenceLengthError if it is
    longer than the block."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    unknown = sorted(set(prefix) - set(tokenizer.uchars))
    if unknown:
        raise VocabularyError(
            f"the prefix {prefix!r} has characters that are not in the model's vocabulary: "
            f"{', '.join(repr(c) for c in unknown)} (the vocabulary is "
            f"{''.join(tokenizer.uchars)!r})")
    if len(prefix) > block_size:
        raise SequenceLengthError(f"the prefix has {len(prefix)} characters but the model's "
                                  f"block_size is {block_size}")
    return tokenizer.encode(prefix)


# --------------------------------------------------------------------------- resume
def config_from_checkpoint(ckpt: Checkpoint, **overrides: Any) -> TrainConfig:
    """The TrainConfig of the run that wrote ``ckpt``, with ``overrides``
    applied.  Overriding a setting that defines the run (:data:`RUN_FIELDS`)
    with a different value raises CheckpointMismatchError naming every such
    setting."""
    if ckpt.train is None:
        raise CheckpointError(f"{ckpt.path} has no training state (it was saved outside "
                              "training): it can be sampled from but not resumed")
    t = ckpt.train
    run = {"steps": t.num_steps, "n_layer": ckpt.config["n_layer"],
           "n_embd": ckpt.config["n_embd"], "n_head": ckpt.config["n_head"],
           "block_size": ckpt.config["block_size"], "batch_size": t.batch_size, "lr": t.lr,
           "beta1": t.beta1, "beta2": t.beta2, "eps": t.eps, "seed": t.seed,
           "dtype": ckpt.dtype}
    _check_same(ckpt, run, {k: v for k, v in overrides.items() if k in RUN_FIELDS})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
    kwargs: Dict[str, Any] = {"backend": "c"}
    kwargs.update(sampling_defaults(ckpt))  # the run's sampling settings as defaults
    kwargs.update(run)
    kwargs.update({k: v for k, v in overrides.items() if k not in RUN_FIELDS})
    return TrainConfig(**kwargs)


def sampling_defaults(ckpt: Checkpoint) -> Dict[str, Any]:
    """The sampling settings (temperature, num_samples, top_k, prefix) of the
    run that wrote ``ckpt``, for those recorded in it."""
    tc = ckpt.train.train_config if ckpt.train is not None else {}
    out: Dict[str, Any] = {}
    value = tc.get("temperature")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        out["temperature"] = float(value)
    value = tc.get("num_samples")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        out["num_samples"] = value
    value = tc.get("top_k")
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        out["top_k"] = value
    value = tc.get("prefix")
    if isinstance(value, str):
        out["prefix"] = value
    return out


def _check_same(ckpt: Checkpoint, run: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
    diffs = [k for k in RUN_FIELDS if k in mine and mine[k] != run[k]]
    if diffs:
        theirs = ", ".join(f"{k}={run[k]!r}" for k in diffs)
        ours = ", ".join(f"{k}={mine[k]!r}" for k in diffs)
        raise CheckpointMismatchError(
            f"cannot resume: {ckpt.path} was trained with {theirs}, but this run has {ours}")


def check_resume_compatible(cfg: TrainConfig, ckpt: Checkpoint) -> None:
    """Raise CheckpointMismatchError if ``cfg`` differs from the checkpoint's
    run in any of :data:`RUN_FIELDS`."""
    ref = config_from_checkpoint(ckpt)
    _check_same(ckpt, {k: getattr(ref, k) for k in RUN_FIELDS},
                {k: getattr(cfg, k) for k in RUN_FIELDS})


class _DeferredInterrupt:
    """Within the block, a first SIGINT only sets ``requested`` (checked at
    step boundaries); a second one raises KeyboardInterrupt at once.  Only
    active in the main thread and if SIGINT has Python's default handler."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handler(self, signum, frame):  # pragma: no cover - exercised via subprocess
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_DeferredInterrupt":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


# --------------------------------------------------------------------------- training
def _documents(data: Any, cfg: TrainConfig, info: Callable[[str], None]) -> List[str]:
    if data is None or isinstance(data, (str, os.PathLike)):
        docs, description = data_mod.load_documents(cfg.data if data is None else data)
        info(description)
        return list(docs)
    if isinstance(data, (bytes, bytearray)):
        raise TypeError("data must be a path or a list of str documents, not bytes")
    docs = list(data)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"document {i} is a {type(d).__name__}, not a str")
    if not docs:
        raise data_mod.DataError("there are no documents to train on")
    return docs


def train(config: Optional[TrainConfig] = None, data: Any = None,
          on_steps: Optional[Callable[[int, List[float], List[float]], None]] = None,
          log: Optional[Callable[[str], None]] = None, *,
          docs: Optional[Iterable[str]] = None,
          resume: Union[PathArg, Checkpoint, None] = None,
          out: Optional[PathArg] = None,
          save_every: Optional[int] = None,
          stop_after: Optional[int] = None,
          info: Optional[Callable[[str], None]] = None,
          sample: bool = True,
          comm: Any = None) -> TrainResult:
    """Train a GPT as the SPEC does, then sample from it.

    * ``config``: a :class:`TrainConfig` (default: the SPEC's settings, or with
      ``resume``, the checkpoint's).
    * ``data``: a path to a text file (one document per line), a list of
      documents, or None for ``config.data`` / ``input.txt`` / the built-in
      names.  ``docs=`` is an alias.
    * ``resume``: a checkpoint (path, run directory or :class:`Checkpoint`)
      to continue exactly; the data must be the same (checked by SHA-256) and
      ``config`` must agree on every setting of :data:`RUN_FIELDS`.
    * ``out``: a directory; ``out/checkpoint.safetensors`` is written
      (atomically) at the end, every ``save_every`` steps, and on Ctrl-C.
    * ``stop_after``: stop after this many completed steps (the learning-rate
      schedule still spans ``config.steps``), e.g. to resume later.
    * ``on_steps(first_step, losses, lrs)`` receives each chunk of completed
      steps (1-based ``first_step``); ``log`` receives the reference program's
      header lines ("num docs: ..."), ``info`` other messages.

    Returns a :class:`TrainResult`.  Raises NonFiniteLossError (with ``.step``
    and ``.checkpoint``, the last checkpoint saved, if any) if the loss
    becomes NaN/inf, and :class:`TrainingInterrupted` on Ctrl-C.
    """
    log = log or (lambda s: None)
    info = info or (lambda s: None)
    if docs is not None:
        if data is not None:
            raise TypeError("give the documents as data or docs, not both")
        data = docs
    ckpt: Optional[Checkpoint] = None
    if resume is not None:
        ckpt = resume if isinstance(resume, Checkpoint) else load_checkpoint(resume)
        if config is None:
            config = config_from_checkpoint(ckpt)
        else:
            check_resume_compatible(config, ckpt)
        if ckpt.adam_m is None or ckpt.train is None:
            raise CheckpointError(f"{ckpt.path} has no optimizer state: it cannot be resumed")
    cfg = (config if config is not None else TrainConfig()).validate()
    # data-parallel over MPI ranks: None (nothing changes) unless launched by
    # mpiexec with more than one process, or given a communicator of size > 1
    dp = distributed.session(comm)
    if dp is not None:
        if cfg.backend != "c":
            raise ConfigError("data-parallel (MPI) training needs the C backend")
        distributed.check_batch_size(cfg.batch_size, dp.size)
        if dp.rank != 0:  # only rank 0 reports progress and writes checkpoints
            on_steps, log, info = None, (lambda s: None), (lambda s: None)
    if cfg.backend == "reference" and (out is not None or ckpt is not None):
        raise ConfigError("checkpoints (out/resume) need the C backend, not the reference one")
    if save_every is not None:
        if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
            raise ConfigError(f"save-every must be a positive integer, got {save_every!r}")
        if out is None:
            raise ConfigError("save-every needs an output directory (--out)")
    stop = cfg.steps
    if stop_after is not None:
        if isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1:
            raise ConfigError(f"stop-after must be a positive integer, got {stop_after!r}")
        stop = min(stop_after, cfg.steps)
    out_file = (prepare_out_dir(out) / CHECKPOINT_NAME
                if out is not None and (dp is None or dp.rank == 0) else None)

    documents = _documents(data, cfg, info)
    data_sha = data_mod.sha256_of_documents(documents)
    if ckpt is not None and ckpt.train is not None and data_sha != ckpt.train.data_sha256:
        raise CheckpointMismatchError(
            f"cannot resume: the training data differs from the checkpoint's (it was trained "
            f"on {ckpt.train.num_docs} documents with sha256 {ckpt.train.data_sha256[:16]}..., "
            f"this data has {len(documents)} documents with sha256 {data_sha[:16]}...); "
            "use the same --data")
    if cfg.threads is not None:
        _core.set_num_threads(cfg.threads)

    rng = random.Random(cfg.seed)
    rng.shuffle(documents)
    tokenizer = data_mod.Tokenizer(documents)
    if cfg.prefix:
        check_prefix(cfg.prefix, tokenizer, cfg.block_size)  # fail before training
    if ckpt is not None and ckpt.uchars is not None and ckpt.uchars != "".join(tokenizer.uchars):
        raise CheckpointMismatchError("cannot resume: the vocabulary differs from the "
                                      "checkpoint's")
    model = make_model(cfg, tokenizer.vocab_size)
    log(f"num docs: {len(documents)}")
    log(f"vocab size: {tokenizer.vocab_size}")
    history: List[float] = []
    if ckpt is not None and ckpt.train is not None:
        restore_into(model, ckpt)
        rng.setstate(ckpt.train.rng_state)
        step = ckpt.train.step
        history = list(ckpt.train.losses[:step])
    else:
        model.init_weights(rng)
        step = 0
    log(f"num params: {model.num_params}")
    if ckpt is not None:
        info(f"resuming from {ckpt.path} at step {step} / {cfg.steps}")
    corpus, starts = data_mod.pack_corpus(tokenizer, documents)

    model.tokenizer = tokenizer
    state = TrainState(step=step, num_steps=cfg.steps, lr=float(cfg.lr),
                       beta1=float(cfg.beta1), beta2=float(cfg.beta2), eps=float(cfg.eps),
                       batch_size=cfg.batch_size, seed=cfg.seed, data_sha256=data_sha,
                       num_docs=len(documents), rng_state=rng.getstate(), losses=history,
                       train_config={k: v for k, v in dataclasses.asdict(cfg).items()
                                     if k not in ("threads", "metrics_out")})
    model.train_state = state
    saved: Optional[Path] = None
    saved_step = -1

    def save() -> None:
        nonlocal saved, saved_step
        if out_file is None or saved_step == state.step:
            return
        saved = save_checkpoint(out_file, model, uchars="".join(tokenizer.uchars), train=state)
        saved_step = state.step

    trainer = distributed.DataParallelModel(model, dp) if dp is not None else model
    start_step = step
    t0 = time.perf_counter()
    chunk = 1
    with _DeferredInterrupt() as interrupt:
        while state.step < stop:
            target = stop
            if save_every is not None:
                target = min(target, (state.step // save_every + 1) * save_every)
            n = min(chunk, target - state.step)
            tc = time.perf_counter()
            try:
                losses, lrs = trainer.train_steps(corpus, starts, state.step, n, cfg.steps,
                                                cfg.batch_size, cfg.lr, cfg.beta1, cfg.beta2,
                                                cfg.eps)
            except NonFiniteLossError as err:
                done = [float(x) for x in getattr(err, "losses", [])]
                history.extend(done)
                state.step += len(done)
                if on_steps is not None and done:
                    on_steps(state.step - len(done) + 1, done, [])
                err.checkpoint = saved           # type: ignore[attr-defined]
                err.checkpoint_step = saved_step if saved is not None else None  # type: ignore[attr-defined]
                raise
            chunk_losses = losses.tolist()
            history.extend(chunk_losses)
            state.step += n
            if on_steps is not None:
                on_steps(state.step - n + 1, chunk_losses, lrs.tolist())
            if save_every is not None and state.step % save_every == 0:
                save()
            fast = time.perf_counter() - tc < 0.05
            if dp is not None:  # every rank stops at the same step, chunks alike
                interrupt.requested, fast = trainer.agree(interrupt.requested, fast)
            if interrupt.requested:
                save()
                raise TrainingInterrupted(state.step, saved, history)
            # grow the chunk while it takes under 50 ms, so progress stays live
            if fast:
                chunk = min(chunk * 2, 1 << 14)
        seconds = time.perf_counter() - t0
        if dp is not None:
            trainer.check_consistent()  # every rank holds the same parameters
        save()
        if interrupt.requested:
            raise TrainingInterrupted(state.step, saved, history)
    samples: List[str] = []
    if sample and cfg.num_samples:
        samples = sample_names(model, tokenizer, rng, cfg.num_samples, cfg.temperature,
                               top_k=cfg.top_k, prefix=cfg.prefix)
    return TrainResult(model, tokenizer, documents, history, samples, seconds,
                       start_step=start_step, checkpoint=saved)


# --------------------------------------------------------------------------- plots
_PLOT_HINT = "install it with: pip install 'microgpt-c[plot]' (or pip install matplotlib)"


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OptionalDependencyError(f"plotting needs matplotlib, which is not installed; "
                                      f"{_PLOT_HINT}") from None
    return Figure, FigureCanvasAgg


def check_plot_target(path: PathArg) -> Path:
    """Check, before training, that a loss plot can be written to ``path``:
    matplotlib is installed, the format (from the suffix) is supported and the
    directory exists.  Returns the path."""
    path = Path(os.fspath(path))
    Figure, FigureCanvasAgg = _matplotlib()
    fmt = path.suffix.lstrip(".").lower()
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(f"cannot save a plot as {path.name!r}: use one of the suffixes "
                          f"{', '.join('.' + s for s in sorted(supported))}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot save the plot to {path}: directory {parent} does not exist")
    return path


def save_loss_plot(losses: Sequence[float], path: PathArg, window: Optional[int] = None,
                   title: Optional[str] = None) -> Path:
    """Save the loss curve (per-step loss and its moving average over
    ``window`` steps, default ~1/20 of the run) to ``path`` (atomically); the
    format follows the suffix (.png, .svg, .pdf, ...).  Needs matplotlib."""
    import numpy as np

    path = check_plot_target(path)
    Figure, FigureCanvasAgg = _matplotlib()
    y = np.asarray(losses, dtype=np.float64)
    n = len(y)
    if window is None:
        window = max(1, min(200, n // 20))
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = np.arange(1, n + 1)
    ax.plot(steps, y, lw=0.6, alpha=0.35, color="tab:blue", label="loss")
    if n >= window > 1:
        c = np.cumsum(np.insert(y, 0, 0.0))
        ma = (c[window:] - c[:-window]) / window
        ax.plot(steps[window - 1:], ma, lw=1.8, color="tab:orange",
                label=f"moving average ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or f"microgpt_c training loss ({n} steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower(), dpi=120)
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- build info
_SIMD_FLAGS = {"sse2": "SSE2", "sse4_1": "SSE4.1", "sse4_2": "SSE4.2", "avx": "AVX",
               "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX512F", "neon": "NEON",
               "asimd": "NEON"}
_X86_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe"}
_X86_V4 = _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def _cpu_flags() -> set:
    """The CPU feature flags from /proc/cpuinfo (Linux), else empty."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _cpu_simd(flags: set) -> List[str]:
    """SIMD instruction sets this CPU supports (best effort)."""
    found = {_SIMD_FLAGS[f] for f in flags if f in _SIMD_FLAGS}
    if platform.machine().lower() in ("arm64", "aarch64"):
        found.add("NEON")
    order = list(dict.fromkeys(_SIMD_FLAGS.values()))
    return [s for s in order if s in found]


def _active_clone(clones: Sequence[str], flags: set) -> Optional[str]:
    if not clones:
        return None
    if "x86-64-v4" in clones and _X86_V4 <= flags:
        return "x86-64-v4"
    if "x86-64-v3" in clones and _X86_V3 <= flags:
        return "x86-64-v3"
    return "default"


def build_info() -> Dict[str, Any]:
    """How this microgpt_c was built and what it runs with.

    Keys: ``version``; ``openmp`` (compiled with OpenMP); ``num_threads``
    (threads the kernels use now; honours ``OMP_NUM_THREADS`` and
    :func:`set_num_threads`); ``compiler`` and ``compiler_version``;
    ``cflags`` and ``ldflags`` (the flags the C core was compiled and linked
    with); ``openmp_flags``; ``simd`` (SIMD instruction sets of the baseline
    target); ``simd_clones`` (the targets the hot kernels are additionally
    compiled for, one picked at load time; empty if none) and ``simd_active``
    (the one this CPU gets, best effort); ``cpu_simd`` (SIMD sets this CPU
    supports); ``platform``; ``python``.  Build details are None/empty if
    the package was built without microgpt_c's setup.py."""
    try:
        from ._build_config import BUILD_CONFIG  # written by setup.py at build time
        config: Dict[str, Any] = dict(BUILD_CONFIG)
    except ImportError:
        config = {"compiler": None, "compiler_version": None, "cflags": [], "ldflags": [],
                  "openmp_flags": [], "simd": []}
    config.setdefault("simd_clones", [])
    flags = _cpu_flags()
    info: Dict[str, Any] = {"version": __version__}
    info.update(config)
    info["openmp"] = _core.openmp_enabled()  # what the compiled module says wins
    info["num_threads"] = _core.get_num_threads()
    info["simd_active"] = _active_clone(config["simd_clones"], flags)
    info["cpu_simd"] = _cpu_simd(flags)
    info["platform"] = platform.platform()
    info["python"] = sys.version.split()[0]
    return info
