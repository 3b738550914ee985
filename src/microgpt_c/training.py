"""Training: :func:`train` (a run from data to sampled names, resumable),
its steps, and the deferred handling of Ctrl-C.

One ``random.Random(seed)`` stream drives everything random, in this order:
the shuffle of the documents, the parameter init, then sampling.  Training
does not draw from it, so the state saved in a checkpoint is the state
sampling starts from.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

from . import _core
from . import data as data_mod
from . import distributed
from .checkpoint import (CHECKPOINT_NAME, Checkpoint, TrainState, prepare_out_dir,
                         restore_into, save_checkpoint)
from .config import PathArg, TrainConfig
from .errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from .model import make_model
from .resume import check_resume_data, check_resume_vocabulary, open_resume
from .sampling import check_prefix, default_text_prefix, generate, sample_names
from .validate import positive_int

__all__ = ["TrainResult", "train"]

OnSteps = Callable[[int, List[float], List[float]], None]
OnEval = Callable[[int, float], None]
MAX_CHUNK = 1 << 14      # steps per train_steps call at the most
MAX_WINDOW_TOKENS = 1 << 22  # text mode: tokens of the windows packed for one call at the most
BEST_NAME = "best.safetensors"
TEXT_SAMPLE_TOKENS = 500  # text mode: characters per sample without max_new_tokens
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
    val_losses: List[Tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, loss)
    best_checkpoint: Optional[Path] = None  # best.safetensors, with keep_best
    samples_in_data: Optional[int] = None   # lines mode: samples that are training documents


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
    if cfg.keep_best and out is None:
        raise ConfigError("keep-best needs an output directory (--out)")
    if cfg.keep_best and not cfg.val_fraction:
        raise ConfigError("keep-best needs a validation split (--val-fraction)")
    if stop_after is None:
        return cfg.steps
    return min(positive_int(stop_after, "stop-after"), cfg.steps)


def _prepare_data(data: Any, cfg: TrainConfig, ckpt: Optional[Checkpoint],
                  info: Callable[[str], None]
                  ) -> Tuple[List[str], str, data_mod.Tokenizer, random.Random]:
    """The documents (checked against ``ckpt``, then shuffled), their
    SHA-256 before the shuffle, the tokenizer and the run's random stream."""
    text_mode = cfg.data_mode == "text"
    documents = _text(data, cfg, info) if text_mode else _documents(data, cfg, info)
    data_sha = data_mod.sha256_of_documents(documents)
    check_resume_data(ckpt, documents, data_sha)
    if cfg.threads is not None:
        _core.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    if not text_mode:   # text mode: one stream, nothing to shuffle
        rng.shuffle(documents)
        _say_if_cut(documents, cfg.block_size, info)
    tokenizer = data_mod.Tokenizer(documents)
    if cfg.prefix:  # fail before training
        check_prefix(cfg.prefix, tokenizer, max(cfg.block_size, len(cfg.prefix)) if text_mode
                     else cfg.block_size)
    check_resume_vocabulary(ckpt, tokenizer)
    return documents, data_sha, tokenizer, rng


def _text(data: Any, cfg: TrainConfig, info: Callable[[str], None]) -> List[str]:
    """Text mode's data: one document, the whole text (of a path, or a list
    of strings joined with newlines)."""
    if data is None or isinstance(data, (str, os.PathLike)):
        text, description = data_mod.load_text(cfg.data if data is None else data)
        info(description)
    else:
        text = "\n".join(_documents(data, cfg, info))
    if len(text) < cfg.block_size + 1:
        raise data_mod.DataError(f"the text has {len(text)} characters; text mode needs at "
                                 f"least block_size + 1 = {cfg.block_size + 1}")
    return [text]


def _say_if_cut(documents: List[str], block_size: int, info: Callable[[str], None]) -> None:
    """Lines mode: one line when documents do not fit in the block."""
    cut = sum(1 for d in documents if len(d) > block_size - 1)
    if cut:
        info(f"{cut} of {len(documents)} documents are longer than block_size - 1 = "
             f"{block_size - 1} characters and are cut to their first block_size = "
             f"{block_size} positions; use --data-mode text for continuous text")


class _RunData:
    """What a run trains and evaluates on: the packed corpus of each chunk
    of steps (lines: the training documents, fixed; text: the windows of
    those steps) and the validation sequences."""

    def __init__(self, cfg: TrainConfig, documents: List[str], tokenizer: data_mod.Tokenizer,
                 info: Callable[[str], None]):
        import numpy as np

        self.cfg = cfg
        self.text_mode = cfg.data_mode == "text"
        frac = float(cfg.val_fraction)
        T = cfg.block_size
        if self.text_mode:
            ids = data_mod.encode_text(tokenizer, documents[0])
            n_val = int(len(ids) * frac) if frac > 0 else 0
            if frac > 0 and n_val < 2:
                raise ConfigError(f"val-fraction {frac} of {len(ids)} characters leaves "
                                  "no validation text (at least 2 characters are needed)")
            self.train_ids = ids[:len(ids) - n_val]
            if len(self.train_ids) < T + 1:
                raise ConfigError(f"the training text has {len(self.train_ids)} characters; "
                                  f"text mode needs at least block_size + 1 = {T + 1}")
            val = data_mod.text_eval_windows(ids[len(ids) - n_val:], T) if n_val else []
            self.train_docs: List[str] = []
            self.max_chunk = max(1, MAX_WINDOW_TOKENS // (cfg.batch_size * (T + 1)))
            if n_val:
                info(f"validation: the last {n_val} of {len(ids)} characters "
                     f"({len(val)} windows)")
        else:
            n_val = int(len(documents) * frac) if frac > 0 else 0
            if frac > 0:
                n_val = max(1, n_val)
            if len(documents) - n_val < 1:
                raise ConfigError(f"val-fraction {frac} of {len(documents)} documents leaves "
                                  "no training documents")
            self.train_docs = documents[:len(documents) - n_val]
            val_docs = documents[len(documents) - n_val:]
            self.corpus, self.starts = data_mod.pack_corpus(tokenizer, self.train_docs)
            val = [np.asarray(tokenizer.doc_tokens(d), dtype=np.int32) for d in val_docs]
            self.max_chunk = MAX_CHUNK
            if n_val:
                info(f"validation: {n_val} of {len(documents)} documents held out")
        if val and cfg.eval_tokens is not None:
            val = _fixed_sample(val, cfg.eval_tokens, cfg.seed, T)
        self.val = val

    def for_steps(self, step0: int, n: int):
        """(corpus, doc_starts) for train_steps of steps step0 .. step0 + n - 1."""
        if not self.text_mode:
            return self.corpus, self.starts
        return data_mod.pack_windows(self.train_ids, self.cfg.block_size, self.cfg.seed,
                                     step0, n, self.cfg.batch_size)


def _fixed_sample(seqs: List[Any], tokens: int, seed: int, block_size: int) -> List[Any]:
    """A fixed sample of the validation sequences: a seeded permutation's
    first ones holding at least ``tokens`` predicted positions."""
    import numpy as np

    key = int.from_bytes(hashlib.sha256(f"microgpt_c.eval:{int(seed)}".encode()).digest()[:8],
                         "little")
    order = np.random.default_rng(key).permutation(len(seqs))
    out, total = [], 0
    for i in order:
        out.append(seqs[int(i)])
        total += min(block_size, len(seqs[int(i)]) - 1)
        if total >= tokens:
            break
    return out


def _val_loss(model, seqs: List[Any], batch_docs: int) -> float:
    """Mean loss over the validation sequences (each sequence's mean token
    loss, averaged; text windows all have block_size positions, so this is
    the mean over all positions), forward only, ``batch_docs`` at a time."""
    total = len(seqs)
    loss = 0.0
    for i in range(0, total, batch_docs):
        loss += model.forward_batch(seqs[i:i + batch_docs], total_docs=total)
    return loss


def _build_model(cfg: TrainConfig, documents: List[str], data_sha: str,
                 tokenizer: data_mod.Tokenizer, rng: random.Random, ckpt: Optional[Checkpoint],
                 log: Callable[[str], None], info: Callable[[str], None]):
    """A model initialised from ``rng``, or restored from ``ckpt`` (and
    ``rng`` set to its saved state), with its tokenizer and training state."""
    model = make_model(cfg, tokenizer.vocab_size)
    if cfg.data_mode == "text":
        log(f"num chars: {len(documents[0])}")
    else:
        log(f"num docs: {len(documents)}")
    log(f"vocab size: {tokenizer.vocab_size}")
    history: List[float] = []
    schedule: List[List[int]] = [[0, int(cfg.steps)]]
    val_history: List[List[float]] = []
    if ckpt is not None and ckpt.train is not None:
        restore_into(model, ckpt)
        rng.setstate(ckpt.train.rng_state)
        step = ckpt.train.step
        history = list(ckpt.train.losses[:step])
        tc = ckpt.train.train_config
        schedule = _pairs(tc.get("schedule_history"), int, int) or \
            [[0, int(ckpt.train.num_steps)]]
        if schedule[-1][1] != cfg.steps:  # extending the run: the schedule over the new total
            schedule.append([int(step), int(cfg.steps)])
        val_history = [x for x in _pairs(tc.get("val_history"), int, float) if x[0] <= step]
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
    # [from_step, num_steps] of every schedule the run has had (an extension
    # with --steps adds one) and the validation losses so far
    model.train_state.train_config["schedule_history"] = schedule
    model.train_state.train_config["val_history"] = val_history
    return model


def _pairs(value: Any, first: type, second: type) -> List[List[Any]]:
    """A checkpoint's list of [a, b] pairs (schedule or validation history),
    or [] if it is missing or malformed."""
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)):
            return []
        out.append([first(item[0]), second(item[1])])
    return out


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


class _Evaluator:
    """The validation of a run: every ``every`` steps and at its last step,
    the mean loss over the split (recorded in the training state, reported
    to ``on_eval``); with ``best_file``, the checkpoint of the lowest one."""

    def __init__(self, model, run_data: "_RunData", cfg: TrainConfig, state: TrainState,
                 on_eval: Optional[OnEval], best_file: Optional[Path]):
        self.model, self.seqs, self.state, self.on_eval = model, run_data.val, state, on_eval
        self.every = cfg.eval_every or max(1, cfg.steps // 10)
        self.batch_docs = max(1, cfg.batch_size)
        self.best_file = best_file
        self.best_saved: Optional[Path] = None
        history = state.train_config["val_history"]
        self.best = min((v for _, v in history), default=float("inf"))

    @property
    def active(self) -> bool:
        return bool(self.seqs)

    def next_step(self, step: int) -> int:
        return (step // self.every + 1) * self.every

    def __call__(self, stop: int) -> None:
        step = self.state.step
        if not self.active or not (step % self.every == 0 or step == stop):
            return
        history = self.state.train_config["val_history"]
        if history and history[-1][0] == step:
            return
        loss = float(_val_loss(self.model, self.seqs, self.batch_docs))
        history.append([step, loss])
        if self.on_eval is not None:
            self.on_eval(step, loss)
        if loss < self.best:
            self.best = loss
            if self.best_file is not None:
                uchars = "".join(self.model.tokenizer.uchars)
                self.best_saved = save_checkpoint(self.best_file, self.model, uchars=uchars,
                                                  train=self.state)


def _step_loop(trainer, run_data: "_RunData", cfg: TrainConfig, state: TrainState, stop: int,
               save_every: Optional[int], save: _Saver, on_steps: Optional[OnSteps],
               dp, evaluate: Optional[_Evaluator] = None) -> float:
    """Train from ``state.step`` to ``stop`` in chunks of steps, saving every
    ``save_every`` steps and at the end, evaluating as ``evaluate`` says;
    return the seconds it took.  Ctrl-C stops at a chunk boundary, saves,
    and raises TrainingInterrupted."""
    t0 = time.perf_counter()
    chunk = 1
    options = cfg.schedule_options()
    with _DeferredInterrupt() as interrupt:
        while state.step < stop:
            target = stop
            if save_every is not None:
                target = min(target, (state.step // save_every + 1) * save_every)
            if evaluate is not None and evaluate.active:
                target = min(target, evaluate.next_step(state.step))
            n = min(chunk, target - state.step, run_data.max_chunk)
            tc = time.perf_counter()
            corpus, starts = run_data.for_steps(state.step, n)
            try:
                losses, lrs = trainer.train_steps(corpus, starts, state.step, n, cfg.steps,
                                                  cfg.batch_size, cfg.lr, cfg.beta1, cfg.beta2,
                                                  cfg.eps, **options)
            except NonFiniteLossError as err:
                _keep_steps_before_failure(err, state, on_steps, save)
                raise
            chunk_losses = losses.tolist()
            state.losses.extend(chunk_losses)
            state.step += n
            if evaluate is not None:
                evaluate(stop)
            if on_steps is not None:
                on_steps(state.step - n + 1, chunk_losses, lrs.tolist())
            if save_every is not None and state.step % save_every == 0:
                save()
            fast = time.perf_counter() - tc < CHUNK_SECONDS
            if dp is not None:  # every rank stops at the same step, chunks alike
                interrupt.requested, fast = trainer.agree(interrupt.requested, fast)
            if interrupt.requested:
                save()
                raise TrainingInterrupted(state.step, save.saved, state.losses)
            # grow the chunk while it takes under CHUNK_SECONDS, so progress stays live
            if fast:
                chunk = min(chunk * 2, MAX_CHUNK)
        seconds = time.perf_counter() - t0
        if dp is not None:
            trainer.check_consistent()  # every rank holds the same parameters
        save()
        if interrupt.requested:
            raise TrainingInterrupted(state.step, save.saved, state.losses)
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
          comm: Any = None,
          on_eval: Optional[OnEval] = None) -> TrainResult:
    """Train a GPT as the SPEC does, then sample from it.

    * ``config``: a :class:`TrainConfig` (default: the SPEC's settings, or with
      ``resume``, the checkpoint's).
    * ``data``: a path to a text file (one document per line; with
      ``data_mode="text"`` one character stream), a list of documents (text
      mode: joined with newlines), or None for ``config.data`` /
      ``input.txt`` / the built-in names.  ``docs=`` is an alias.
    * ``resume``: a checkpoint (path, run directory or :class:`Checkpoint`)
      to continue exactly; the data must be the same (checked by SHA-256) and
      ``config`` must agree on every setting of :data:`RUN_FIELDS`.
    * ``out``: a directory; ``out/checkpoint.safetensors`` is written
      (atomically) at the end, every ``save_every`` steps, and on Ctrl-C.
    * ``stop_after``: stop after this many completed steps (the learning-rate
      schedule still spans ``config.steps``), e.g. to resume later.
    * ``on_steps(first_step, losses, lrs)`` receives each chunk of completed
      steps (1-based ``first_step``); ``log`` receives the reference program's
      header lines ("num docs: ..."), ``info`` other messages;
      ``on_eval(step, val_loss)`` each validation loss (``val_fraction`` > 0).

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
        on_steps, on_eval, log, info = None, None, _quiet, _quiet
    out_file = (prepare_out_dir(out) / CHECKPOINT_NAME
                if out is not None and (dp is None or dp.rank == 0) else None)

    documents, data_sha, tokenizer, rng = _prepare_data(data, cfg, ckpt, info)
    run_data = _RunData(cfg, documents, tokenizer, info)
    model = _build_model(cfg, documents, data_sha, tokenizer, rng, ckpt, log, info)
    state = model.train_state
    start_step = state.step
    save = _Saver(out_file, model, state)
    best_file = out_file.parent / BEST_NAME if out_file is not None and cfg.keep_best else None
    evaluate = _Evaluator(model, run_data, cfg, state, on_eval, best_file)
    trainer = distributed.DataParallelModel(model, dp) if dp is not None else model
    seconds = _step_loop(trainer, run_data, cfg, state, stop, save_every, save,
                         on_steps, dp, evaluate)
    samples: List[str] = []
    if sample and cfg.num_samples:
        samples = _sample(model, tokenizer, rng, cfg)
    in_data = None
    if cfg.data_mode == "lines" and samples:
        known = set(run_data.train_docs)
        in_data = sum(1 for x in samples if x in known)
    best = evaluate.best_saved
    if best is None and best_file is not None and best_file.exists():
        best = best_file
    return TrainResult(model, tokenizer, documents, state.losses, samples, seconds,
                       start_step=start_step, checkpoint=save.saved,
                       val_losses=[(int(a), float(b)) for a, b in
                                   state.train_config["val_history"]],
                       best_checkpoint=best, samples_in_data=in_data)


def _sample(model, tokenizer: data_mod.Tokenizer, rng: random.Random, cfg: TrainConfig):
    """The samples after training: the SPEC's (lines mode), or generated
    past the block with ``max_new_tokens`` (text mode: always, from
    ``prefix``, by default a newline)."""
    if cfg.data_mode == "text":
        return generate(model, tokenizer, rng, cfg.num_samples,
                        cfg.max_new_tokens or TEXT_SAMPLE_TOKENS, cfg.temperature,
                        top_k=cfg.top_k, prefix=cfg.prefix or default_text_prefix(tokenizer),
                        text_mode=True)
    if cfg.max_new_tokens is not None:
        return generate(model, tokenizer, rng, cfg.num_samples, cfg.max_new_tokens,
                        cfg.temperature, top_k=cfg.top_k, prefix=cfg.prefix)
    return sample_names(model, tokenizer, rng, cfg.num_samples, cfg.temperature,
                        top_k=cfg.top_k, prefix=cfg.prefix)
