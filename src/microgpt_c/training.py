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
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _core
from . import data as data_mod
from . import distributed
from .checkpoint import (CHECKPOINT_NAME, Checkpoint, TrainState, prepare_out_dir,
                         restore_into, save_checkpoint)
from .config import PathArg, TrainConfig
from .errors import ConfigError, NonFiniteLossError, Terminated, TrainingInterrupted
from .model import make_model
from .resume import check_resume_data, check_resume_vocabulary, open_resume
from .safeio import check_outputs_vs_inputs
from .sampling import check_prefix, default_text_prefix, generate, sample_names
from .validate import positive_int

__all__ = ["TrainResult", "train"]

OnSteps = Callable[[int, List[float], List[float]], None]
OnEval = Callable[[int, float], None]
BUILTIN_MAKEMORE = "builtin:makemore"   # data sources recorded in checkpoints
BUILTIN_CENSUS = "builtin:census"
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
    docs: Sequence[str]                 # the documents, shuffled as trained on (a list,
                                        # or data.Documents for a data file)
    losses: List[float]                 # per-step losses from step 1 (incl. resumed history)
    samples: List[str]                  # names sampled after training
    seconds: float                      # wall time of this call's training steps
    start_step: int = 0                 # completed steps before this call (resume)
    checkpoint: Optional[Path] = None   # last checkpoint written, if any
    val_losses: List[Tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, loss)
    best_checkpoint: Optional[Path] = None  # best.safetensors, with keep_best
    samples_in_data: Optional[int] = None   # lines mode: samples that are training documents


class _DeferredInterrupt:
    """Within the block, a first SIGINT or SIGTERM only sets ``requested``
    (checked at step boundaries; ``signum`` says which); a second one raises
    KeyboardInterrupt (:class:`~microgpt_c.errors.Terminated` for SIGTERM) at
    once.  Only active in the main thread, for SIGINT if it has Python's
    default handler and for SIGTERM if it has the system's or the command
    lines' (``cli.sigterm_raises``, which raises outside the loop)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def _handler(self, signum, frame):  # pragma: no cover - exercised via subprocess
        if self.requested:
            raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __enter__(self) -> "_DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler)
            term = signal.getsignal(signal.SIGTERM)
            if term == signal.SIG_DFL or getattr(term, "deferrable", False):
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


def data_file_of_run(data: Any, cfg: TrainConfig, ckpt: Optional[Checkpoint]) -> Optional[str]:
    """The data file a run of :func:`train` reads, for checking outputs
    against it: ``data`` if it is a path, else ``cfg.data``, else the
    checkpoint's data source if it is a file, else ``input.txt`` in the
    current directory if it exists and the checkpoint names no source (as
    :func:`data_mod.load_documents` does); None for a built-in set and for
    documents given as a list."""
    if data is not None:
        return os.fspath(data) if isinstance(data, (str, os.PathLike)) else None
    if cfg.data is not None:
        return os.fspath(cfg.data)
    source = data_source_of(ckpt)
    if source is not None:
        return None if source.startswith("builtin:") else source
    return "input.txt" if os.path.exists("input.txt") else None


def _load_source(source: str, text_mode: bool) -> Tuple[Any, str]:
    """The documents of a data source as :func:`data_source_of` names it (text
    mode: one document, the whole text; a built-in set as one name a line)."""
    if source in (BUILTIN_CENSUS, BUILTIN_MAKEMORE):
        if source == BUILTIN_CENSUS:
            docs = data_mod._census_names()
            description = f"US Census first names from the 'names' package ({len(docs)} names)"
        else:
            docs, description = data_mod.builtin_names()
            if description.startswith("notice:"):  # the fallback set: not the run's data
                raise data_mod.DataError(
                    "the checkpoint was trained on the makemore names data set, which is not "
                    "available (not cached and not downloadable); give it with --data PATH")
        if text_mode:
            text = "\n".join(docs) + "\n"
            return [text], f"{description}, as one text of {len(text)} characters (text mode)"
        return list(docs), description
    if text_mode:
        text = data_mod.read_text(source)
        return [text], f"{source} ({len(text)} characters, text mode)"
    docs = data_mod.read_documents_compact(source)
    return docs, f"{source} ({len(docs)} documents)"


def _from_checkpoint(data: Any, cfg: TrainConfig, ckpt: Optional[Checkpoint]) -> Optional[str]:
    """The checkpoint's data source if the run reads its data from there (no
    data given, neither as ``data`` nor as ``cfg.data``)."""
    return data_source_of(ckpt) if data is None and cfg.data is None else None


def _source_of(path: Optional[PathArg], description: str) -> str:
    """The data source (see :func:`data_source_of`) that
    :func:`data_mod.load_documents` / :func:`data_mod.load_text` of ``path``
    read, from its description."""
    if path is None:
        if description.startswith("data: input.txt"):
            path = "input.txt"
        else:
            return BUILTIN_CENSUS if description.startswith("notice:") else BUILTIN_MAKEMORE
    return os.path.abspath(os.fspath(path))


def _documents(data: Any, cfg: TrainConfig, info: Callable[[str], None],
               ckpt: Optional[Checkpoint] = None) -> Tuple[Any, str]:
    """Lines mode's documents (a list of str, or a :class:`data_mod.Documents`
    for a data file) and their source (see :func:`data_source_of`; "" for
    documents given as a list)."""
    source = _from_checkpoint(data, cfg, ckpt)
    if source is not None:
        docs, description = _load_source(source, text_mode=False)
        info(f"notice: data from the checkpoint: {description}")
        return docs, source
    if data is None or isinstance(data, (str, os.PathLike)):
        path = cfg.data if data is None else data
        # a file's documents as one array (data_mod.Documents), not a list of str
        docs, description = data_mod.load_documents(path, compact=True)
        info(description)
        if not isinstance(docs, data_mod.Documents):
            docs = list(docs)   # (the built-in set) a list of our own, shuffled in place
        return docs, _source_of(path, description)
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
    if cfg.keep_best and out is None:
        raise ConfigError("keep-best needs an output directory (--out)")
    if cfg.keep_best and not cfg.val_fraction:
        raise ConfigError("keep-best needs a validation split (--val-fraction)")
    if stop_after is None:
        return cfg.steps
    return min(positive_int(stop_after, "stop-after"), cfg.steps)


def _prepare_data(data: Any, cfg: TrainConfig, ckpt: Optional[Checkpoint],
                  info: Callable[[str], None]
                  ) -> Tuple[List[str], str, data_mod.Tokenizer, random.Random, str]:
    """The documents (checked against ``ckpt``, then shuffled), their
    SHA-256 before the shuffle, the tokenizer, the run's random stream and
    the data source (see :func:`data_source_of`)."""
    text_mode = cfg.data_mode == "text"
    documents, source = (_text if text_mode else _documents)(data, cfg, info, ckpt)
    data_sha = data_mod.sha256_of_documents(documents)
    check_resume_data(ckpt, documents, data_sha)
    if cfg.threads is not None:
        _core.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    if not text_mode:   # text mode: one stream, nothing to shuffle
        # rng.shuffle(documents), vectorised for long lists and Documents
        documents = data_mod.shuffle_documents(documents, rng)
        _say_if_cut(documents, cfg.block_size, info)
    tokenizer = data_mod.Tokenizer(documents)
    if cfg.prefix:  # fail before training
        check_prefix(cfg.prefix, tokenizer, max(cfg.block_size, len(cfg.prefix)) if text_mode
                     else cfg.block_size)
    check_resume_vocabulary(ckpt, tokenizer)
    return documents, data_sha, tokenizer, rng, source


def _text(data: Any, cfg: TrainConfig, info: Callable[[str], None],
          ckpt: Optional[Checkpoint] = None) -> Tuple[List[str], str]:
    """Text mode's data: one document, the whole text (of a path, of the
    checkpoint's data source, or a list of strings joined with newlines),
    and its source (see :func:`data_source_of`)."""
    source = _from_checkpoint(data, cfg, ckpt)
    if source is not None:
        (text,), description = _load_source(source, text_mode=True)
        info(f"notice: data from the checkpoint: {description}")
    elif data is None or isinstance(data, (str, os.PathLike)):
        path = cfg.data if data is None else data
        text, description = data_mod.load_text(path)
        info(description)
        source = _source_of(path, description)
    else:
        text, source = "\n".join(_documents(data, cfg, info)[0]), ""
    if len(text) < cfg.block_size + 1:
        raise data_mod.DataError(f"the text has {len(text)} characters; text mode needs at "
                                 f"least block_size + 1 = {cfg.block_size + 1}")
    return [text], source


def _say_if_cut(documents: List[str], block_size: int, info: Callable[[str], None]) -> None:
    """Lines mode: one line when documents do not fit in the block."""
    if isinstance(documents, data_mod.Documents):
        cut = int((documents.lengths() > block_size - 1).sum())
    else:
        cut = sum(1 for d in documents if len(d) > block_size - 1)
    if cut:
        info(f"{cut} of {len(documents)} documents are longer than block_size - 1 = "
             f"{block_size - 1} characters and are cut to their first block_size = "
             f"{block_size} positions; use --data-mode text for continuous text")


class _RunData:
    """What a run trains and evaluates on: the packed corpus of each chunk
    of steps (lines: the training documents, fixed; text: the windows of
    those steps) and the validation sequences."""

    def __init__(self, cfg: TrainConfig, documents: Sequence[str],
                 tokenizer: data_mod.Tokenizer, info: Callable[[str], None]):
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
            self.train_docs: Sequence[str] = []
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
            val = []
            if n_val:   # [BOS] + ids + [BOS] of each, views of one packed array
                packed, bounds = data_mod.pack_corpus(tokenizer, val_docs)
                b = bounds.tolist()
                val = [packed[b[i]:b[i + 1]] for i in range(n_val)]
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
            stopping, fast = _agree_stop(trainer, interrupt, fast, dp)
            if stopping:
                save()
                raise interrupt.interrupted(state, save.saved)
            # grow the chunk while it takes under CHUNK_SECONDS, so progress stays live
            if fast:
                chunk = min(chunk * 2, MAX_CHUNK)
        seconds = time.perf_counter() - t0
        if dp is not None:
            trainer.check_consistent()  # every rank holds the same parameters
        save()
        if _agree_stop(trainer, interrupt, True, dp)[0]:
            raise interrupt.interrupted(state, save.saved)
    return seconds


def _agree_stop(trainer, interrupt: _DeferredInterrupt, fast: bool, dp) -> Tuple[bool, bool]:
    """(stop now, the chunk was fast).  Under MPI both are agreed by every
    rank, and only the agreed stop counts: a signal that arrives during or
    after the collective (while a rank waits in it) is seen by every rank at
    the next one, so no rank stops alone."""
    if dp is None:
        return interrupt.requested, fast
    stop_now, fast = trainer.agree(interrupt.signum or interrupt.requested, fast)
    if stop_now:
        interrupt.requested = True
        if stop_now is not True:   # the signal number agreed (SIGTERM over SIGINT)
            interrupt.signum = stop_now
    return bool(stop_now), fast


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
      It (and ``best.safetensors``) must not be the data file the run reads
      (:class:`~microgpt_c.errors.OutputIsInputError`, before the data is
      read or anything written); it may be the ``resume`` checkpoint.
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
    if out is not None:  # before the data is read or anything written
        out_path = Path(os.fspath(out))
        check_outputs_vs_inputs(
            {"out": out_path / CHECKPOINT_NAME,
             "out (keep_best)": out_path / BEST_NAME if cfg.keep_best else None},
            {"data": data_file_of_run(data, cfg, ckpt)})
    if dp is not None and dp.rank != 0:  # only rank 0 reports progress and writes checkpoints
        on_steps, on_eval, log, info = None, None, _quiet, _quiet
    documents, data_sha, tokenizer, rng, source = _prepare_data(data, cfg, ckpt, info)
    run_data = _RunData(cfg, documents, tokenizer, info)
    # the output directory is created only once the inputs are read and checked
    out_file = (prepare_out_dir(out) / CHECKPOINT_NAME
                if out is not None and (dp is None or dp.rank == 0) else None)
    model = _build_model(cfg, documents, data_sha, tokenizer, rng, ckpt, log, info)
    if source:
        model.train_state.train_config["data_source"] = source
    state = model.train_state
    start_step = state.step
    save = _Saver(out_file, model, state)
    best_file = out_file.parent / BEST_NAME if out_file is not None and cfg.keep_best else None
    evaluate = _Evaluator(model, run_data, cfg, state, on_eval, best_file)
    trainer = distributed.DataParallelModel(model, dp) if dp is not None else model
    try:
        seconds = _step_loop(trainer, run_data, cfg, state, stop, save_every, save,
                             on_steps, dp, evaluate)
    except NonFiniteLossError as err:
        if ckpt is not None:  # the checkpoint this run was resumed from
            err.resumed_from = (ckpt.path, ckpt.step)  # type: ignore[attr-defined]
        raise
    samples: List[str] = []
    if sample and cfg.num_samples:
        samples = _sample(model, tokenizer, rng, cfg)
    in_data = None
    if cfg.data_mode == "lines" and samples:
        if isinstance(run_data.train_docs, data_mod.Documents):
            in_data = sum(run_data.train_docs.contains(samples))
        else:
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
