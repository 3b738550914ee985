"""Training: :func:`train` (a run from data to sampled names, resumable),
its steps, and the deferred handling of Ctrl-C.

One ``random.Random(seed)`` stream drives everything random, in this order:
the shuffle of the documents, the parameter init, then sampling.  Training
does not draw from it, so the state saved in a checkpoint is the state
sampling starts from.
"""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from . import _core
from . import data as data_mod
from . import distributed
from .checkpoint import (CHECKPOINT_NAME, Checkpoint, TrainState, prepare_out_dir,
                         restore_into, save_checkpoint)
from .config import PathArg, TrainConfig
from .errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from .model import make_model
from .resume import check_resume_data, check_resume_vocabulary, open_resume
from .sampling import check_prefix, sample_names
from .validate import positive_int

__all__ = ["TrainResult", "train"]

OnSteps = Callable[[int, List[float], List[float]], None]
BUILTIN_MAKEMORE = "builtin:makemore"   # data sources recorded in checkpoints
BUILTIN_CENSUS = "builtin:census"
MAX_CHUNK = 1 << 14      # steps per train_steps call at the most
CHUNK_SECONDS = 0.05     # a chunk doubles while it takes less than this


def _quiet(message: str) -> None:
    """A log/info callback that drops the message."""


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


class _DeferredInterrupt:
    """Within the block, a first SIGINT or SIGTERM only sets ``requested``
    (checked at step boundaries; ``signum`` says which); a second one raises
    KeyboardInterrupt at once.  Only active in the main thread, for SIGINT if
    it has Python's default handler and for SIGTERM if it has the system's."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def _handler(self, signum, frame):  # pragma: no cover - exercised via subprocess
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __enter__(self) -> "_DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler)
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()

    def interrupted(self, state: TrainState, saved: Optional[Path]) -> TrainingInterrupted:
        """The TrainingInterrupted to raise (``.signum``: the signal)."""
        exc = TrainingInterrupted(state.step, saved, state.losses)
        exc.signum = self.signum if self.signum is not None else signal.SIGINT  # type: ignore[attr-defined]
        return exc


class _Saver:
    """Writes the checkpoint of the run (if it has an output file), at most
    once per step; remembers the last one written."""

    def __init__(self, out_file: Optional[Path], model, state: TrainState):
        self.out_file, self.model, self.state = out_file, model, state
        self.saved: Optional[Path] = None
        self.saved_step = -1

    def __call__(self) -> None:
        if self.out_file is None or self.saved_step == self.state.step:
            return
        uchars = "".join(self.model.tokenizer.uchars)
        self.saved = save_checkpoint(self.out_file, self.model, uchars=uchars, train=self.state)
        self.saved_step = self.state.step


# --------------------------------------------------------------------------- the steps
def data_source_of(ckpt: Optional[Checkpoint]) -> Optional[str]:
    """Where the run of ``ckpt`` took its documents from: a file path, or
    ``builtin:makemore`` / ``builtin:census`` (a built-in set); None if the
    checkpoint does not say (older checkpoints record only a given data
    file)."""
    if ckpt is None or ckpt.train is None:
        return None
    tc = ckpt.train.train_config
    for key in ("data_source", "data"):
        value = tc.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _load_source(source: str) -> Tuple[List[str], str]:
    """The documents of a data source as :func:`data_source_of` names it."""
    if source == BUILTIN_CENSUS:
        docs = data_mod._census_names()
        return docs, f"US Census first names from the 'names' package ({len(docs)} names)"
    if source == BUILTIN_MAKEMORE:
        docs, description = data_mod.builtin_names()
        if description.startswith("notice:"):  # the fallback set: not the run's data
            raise data_mod.DataError(
                "the checkpoint was trained on the makemore names data set, which is not "
                "available (not cached and not downloadable); give it with --data PATH")
        return docs, description
    docs = data_mod.read_documents(source)
    return docs, f"{source} ({len(docs)} documents)"


def _documents(data: Any, cfg: TrainConfig, info: Callable[[str], None],
               ckpt: Optional[Checkpoint] = None) -> Tuple[List[str], str]:
    """The documents and their source (see :func:`data_source_of`)."""
    if data is None and cfg.data is None and data_source_of(ckpt) is not None:
        source = data_source_of(ckpt)
        assert source is not None
        docs, description = _load_source(source)
        info(f"notice: data from the checkpoint: {description}")
        return list(docs), source
    if data is None or isinstance(data, (str, os.PathLike)):
        path = cfg.data if data is None else data
        docs, description = data_mod.load_documents(path)
        info(description)
        if path is None:
            if description.startswith("data: input.txt"):
                path = os.path.abspath("input.txt")
            else:
                return list(docs), (BUILTIN_CENSUS if description.startswith("notice:")
                                    else BUILTIN_MAKEMORE)
        return list(docs), os.path.abspath(os.fspath(path))
    if isinstance(data, (bytes, bytearray)):
        raise TypeError("data must be a path or a list of str documents, not bytes")
    docs = list(data)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"document {i} is a {type(d).__name__}, not a str")
    if not docs:
        raise data_mod.DataError("there are no documents to train on")
    return docs, ""


def _check_run_options(cfg: TrainConfig, dp, out: Optional[PathArg], ckpt: Optional[Checkpoint],
                       save_every: Optional[int], stop_after: Optional[int]) -> int:
    """Check the options of the run against each other; return the step to stop after."""
    if dp is not None:
        if cfg.backend != "c":
            raise ConfigError("data-parallel (MPI) training needs the C backend")
        distributed.check_batch_size(cfg.batch_size, dp.size)
    if cfg.backend == "reference" and (out is not None or ckpt is not None):
        raise ConfigError("checkpoints (out/resume) need the C backend, not the reference one")
    if save_every is not None:
        positive_int(save_every, "save-every")
        if out is None:
            raise ConfigError("save-every needs an output directory (--out)")
    if stop_after is None:
        return cfg.steps
    return min(positive_int(stop_after, "stop-after"), cfg.steps)


def _prepare_data(data: Any, cfg: TrainConfig, ckpt: Optional[Checkpoint],
                  info: Callable[[str], None]
                  ) -> Tuple[List[str], str, data_mod.Tokenizer, random.Random, str]:
    """The documents (checked against ``ckpt``, then shuffled), their
    SHA-256 before the shuffle, the tokenizer and the run's random stream."""
    documents, source = _documents(data, cfg, info, ckpt)
    data_sha = data_mod.sha256_of_documents(documents)
    check_resume_data(ckpt, documents, data_sha)
    if cfg.threads is not None:
        _core.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    rng.shuffle(documents)
    tokenizer = data_mod.Tokenizer(documents)
    if cfg.prefix:
        check_prefix(cfg.prefix, tokenizer, cfg.block_size)  # fail before training
    check_resume_vocabulary(ckpt, tokenizer)
    return documents, data_sha, tokenizer, rng, source


def _build_model(cfg: TrainConfig, documents: List[str], data_sha: str,
                 tokenizer: data_mod.Tokenizer, rng: random.Random, ckpt: Optional[Checkpoint],
                 log: Callable[[str], None], info: Callable[[str], None]):
    """A model initialised from ``rng``, or restored from ``ckpt`` (and
    ``rng`` set to its saved state), with its tokenizer and training state."""
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
    model.tokenizer = tokenizer
    model.train_state = TrainState(
        step=step, num_steps=cfg.steps, lr=float(cfg.lr), beta1=float(cfg.beta1),
        beta2=float(cfg.beta2), eps=float(cfg.eps), batch_size=cfg.batch_size, seed=cfg.seed,
        data_sha256=data_sha, num_docs=len(documents), rng_state=rng.getstate(),
        losses=history, train_config={k: v for k, v in dataclasses.asdict(cfg).items()
                                      if k not in ("threads", "metrics_out")})
    return model


def _keep_steps_before_failure(err: NonFiniteLossError, state: TrainState,
                               on_steps: Optional[OnSteps], save: _Saver) -> None:
    """Record the steps of a failed chunk that completed before the loss
    became non-finite, and attach the last checkpoint to ``err``."""
    done = [float(x) for x in getattr(err, "losses", [])]
    state.losses.extend(done)
    state.step += len(done)
    if on_steps is not None and done:
        on_steps(state.step - len(done) + 1, done, [])
    err.checkpoint = save.saved           # type: ignore[attr-defined]
    err.checkpoint_step = save.saved_step if save.saved is not None else None  # type: ignore[attr-defined]


def _step_loop(trainer, corpus, starts, cfg: TrainConfig, state: TrainState, stop: int,
               save_every: Optional[int], save: _Saver, on_steps: Optional[OnSteps],
               dp) -> float:
    """Train from ``state.step`` to ``stop`` in chunks of steps, saving every
    ``save_every`` steps and at the end; return the seconds it took.  Ctrl-C
    stops at a chunk boundary, saves, and raises TrainingInterrupted."""
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
                _keep_steps_before_failure(err, state, on_steps, save)
                raise
            chunk_losses = losses.tolist()
            state.losses.extend(chunk_losses)
            state.step += n
            if on_steps is not None:
                on_steps(state.step - n + 1, chunk_losses, lrs.tolist())
            if save_every is not None and state.step % save_every == 0:
                save()
            fast = time.perf_counter() - tc < CHUNK_SECONDS
            if dp is not None:  # every rank stops at the same step, chunks alike
                stop_now, fast = trainer.agree(interrupt.signum or interrupt.requested, fast)
                if stop_now and not interrupt.requested:
                    interrupt.requested = True
                    interrupt.signum = stop_now if stop_now is not True else None
            if interrupt.requested:
                save()
                raise interrupt.interrupted(state, save.saved)
            # grow the chunk while it takes under CHUNK_SECONDS, so progress stays live
            if fast:
                chunk = min(chunk * 2, MAX_CHUNK)
        seconds = time.perf_counter() - t0
        if dp is not None:
            trainer.check_consistent()  # every rank holds the same parameters
        save()
        if interrupt.requested:
            raise interrupt.interrupted(state, save.saved)
    return seconds


# --------------------------------------------------------------------------- train
def train(config: Optional[TrainConfig] = None, data: Any = None,
          on_steps: Optional[OnSteps] = None,
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
    log = log or _quiet
    info = info or _quiet
    if docs is not None:
        if data is not None:
            raise TypeError("give the documents as data or docs, not both")
        data = docs
    ckpt: Optional[Checkpoint] = None
    if resume is not None:
        ckpt, config = open_resume(resume, config)
    cfg = (config if config is not None else TrainConfig()).validate()
    # data-parallel over MPI ranks: None (nothing changes) unless launched by
    # mpiexec with more than one process, or given a communicator of size > 1
    dp = distributed.session(comm)
    stop = _check_run_options(cfg, dp, out, ckpt, save_every, stop_after)
    if dp is not None and dp.rank != 0:  # only rank 0 reports progress and writes checkpoints
        on_steps, log, info = None, _quiet, _quiet
    documents, data_sha, tokenizer, rng, source = _prepare_data(data, cfg, ckpt, info)
    # the output directory is created only once the inputs are read and checked
    out_file = (prepare_out_dir(out) / CHECKPOINT_NAME
                if out is not None and (dp is None or dp.rank == 0) else None)
    model = _build_model(cfg, documents, data_sha, tokenizer, rng, ckpt, log, info)
    if source:
        model.train_state.train_config["data_source"] = source
    corpus, starts = data_mod.pack_corpus(tokenizer, documents)
    state = model.train_state
    start_step = state.step
    save = _Saver(out_file, model, state)
    trainer = distributed.DataParallelModel(model, dp) if dp is not None else model
    try:
        seconds = _step_loop(trainer, corpus, starts, cfg, state, stop, save_every, save,
                             on_steps, dp)
    except NonFiniteLossError as err:
        if ckpt is not None:  # the checkpoint this run was resumed from
            err.resumed_from = (ckpt.path, ckpt.step)  # type: ignore[attr-defined]
        raise
    samples: List[str] = []
    if sample and cfg.num_samples:
        samples = sample_names(model, tokenizer, rng, cfg.num_samples, cfg.temperature,
                               top_k=cfg.top_k, prefix=cfg.prefix)
    return TrainResult(model, tokenizer, documents, state.losses, samples, seconds,
                       start_step=start_step, checkpoint=save.saved)
