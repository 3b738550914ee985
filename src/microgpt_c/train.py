"""Train microgpt on a list of documents and sample new ones.

``python -m microgpt_c.train`` with no arguments does what the original
microgpt program does: it reads ``input.txt`` (else the built-in names), trains
the default one-layer GPT for 1000 steps showing the loss, then prints 20
sampled names.  Every setting has a flag; see ``--help``.

Also: checkpoints (``--out``, ``--save-every``, ``--resume``, exact resume),
``--sample-only``, progress display (``--progress``, ``--quiet``), loss plots
(``--plot``).  Errors print one line ``error: ...`` on stderr and exit with
status 2; Ctrl-C saves a checkpoint (with ``--out``) and exits with 130, SIGTERM
likewise with 143 (outside the training loop, while the data is loaded or
samples are drawn, both end the program with one line and write nothing
half-way).

This module is also callable: ``microgpt_c.train(config, data, ...)`` is
:func:`microgpt_c.api.train`, even after ``import microgpt_c.train``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import stat
import sys
import time
import types
from typing import Any, Dict, List, Optional, TextIO, Tuple

from ._version import __version__
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .cli import (EXPECTED_ERRORS, ArgumentParser, broken_pipe, error, format_samples,
                  format_text_samples, interrupted, nonneg_int, one_line, positive_float,
                  positive_int, sigterm_raises, terminated, thread_count,
                  warnings_as_notices)
from .config import BACKENDS, DATA_MODES, LR_SCHEDULES, RUN_FIELDS, TrainConfig
from .errors import (ConfigError, MicrogptError, NonFiniteLossError, Terminated,
                     TrainingInterrupted)
from .model import GPT, make_model
from .plotting import check_plot_target, save_loss_plot
from .resume import config_from_checkpoint
from .safeio import check_outputs_vs_inputs, describe_oserror, read_regular_file
from .sample import checkpoint_data_mode, sample_checkpoint
from .sampling import sample_names, softmax_for
from .training import BEST_NAME, TrainResult, data_file_of_run, train

__all__ = ["BACKENDS", "RUN_FIELDS", "GPT", "TrainConfig", "TrainResult", "build_parser", "main",
           "make_model", "sample_names", "softmax_for", "train"]

PROGRESS_MODES = ("auto", "bar", "plain", "steps")
TEXT_SAMPLES = 500       # text mode: characters per sample without --max-new-tokens
HEADER = "--- inference (new, hallucinated names) ---"
# CLI options that are not TrainConfig fields
RUN_OPTIONS = ("out", "save_every", "resume", "stop_after", "plot", "progress", "log_every",
               "quiet", "sample_only", "config", "print_config")
TEXT_HEADER = "--- inference (new text) ---"
EMA_BETA = 0.98          # the progress bar's smoothed loss: ema = b * ema + (1 - b) * loss


class OutputWriteError(MicrogptError, OSError):
    """Writing an output of the run (metrics, plot) failed; the message
    names the file and what to do."""


# ------------------------------------------------------------------ the CLI
def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


_beta = _fraction


def nonneg_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


# CLI options are absent unless given (argparse.SUPPRESS): with --resume, what is
# not given is taken from the checkpoint; the help shows the SPEC's defaults.
_S = argparse.SUPPRESS


def _add_data_model(g, d: TrainConfig) -> None:
    g.add_argument("--data", default=_S, metavar="PATH",
                   help="UTF-8 text file, one document per line (default: input.txt in the "
                        "current directory if present, else the built-in names data set)")
    g.add_argument("--n-layer", type=positive_int, default=_S, metavar="N",
                   help=f"number of transformer layers (default: {d.n_layer})")
    g.add_argument("--n-embd", type=positive_int, default=_S, metavar="N",
                   help=f"embedding width (default: {d.n_embd})")
    g.add_argument("--n-head", type=positive_int, default=_S, metavar="N",
                   help=f"attention heads, must divide --n-embd (default: {d.n_head})")
    g.add_argument("--block-size", type=positive_int, default=_S, metavar="N",
                   help="maximum context length; longer documents are truncated "
                        f"(default: {d.block_size})")
    g.add_argument("--dtype", choices=("float64", "float32"), default=_S,
                   help=f"floating-point precision of the model (default: {d.dtype})")
    g.add_argument("--data-mode", choices=DATA_MODES, default=_S,
                   help="lines: every stripped non-empty line is a document (the SPEC); text: "
                        "the file is one character stream (newlines, indentation and blank "
                        "lines kept) and a training example is a window of block-size + 1 "
                        "characters at a seeded random offset (nanoGPT's get_batch) "
                        f"(default: {d.data_mode})")
    g.add_argument("--val-fraction", type=_fraction, default=_S, metavar="F",
                   help="hold out a validation split: lines mode, the last F of the shuffled "
                        "documents; text mode, the last F of the text (default: 0, none)")
    g.add_argument("--backend", choices=BACKENDS, default=_S,
                   help="'c' (fast) or 'reference' (pure-Python oracle, float64, no "
                        "checkpoints) (default: $MICROGPT_C_BACKEND or c)")


def _add_training(g, d: TrainConfig) -> None:
    g.add_argument("--steps", type=positive_int, default=_S, metavar="N",
                   help=f"total training steps; the learning rate decays linearly to 0 over "
                        f"them (default: {d.steps}); with --resume, a larger N extends the run "
                        "(even a finished one): from the current step s0 on, lr_t is the "
                        "schedule computed over the new total N (linear: lr * (1 - s / N))")
    g.add_argument("--batch-size", type=positive_int, default=_S, metavar="N",
                   help=f"documents per step; 1 is exactly the original program "
                        f"(default: {d.batch_size})")
    g.add_argument("--lr", type=positive_float, default=_S,
                   help=f"peak learning rate of Adam (default: {d.lr})")
    g.add_argument("--seed", type=int, default=_S,
                   help=f"seed of the random stream: shuffle, init, sampling (default: {d.seed})")
    g.add_argument("--threads", type=thread_count, default=_S, metavar="N",
                   help="OpenMP threads for the C kernels (default: $OMP_NUM_THREADS or all "
                        "cores; at most 1024); results do not depend on it")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=_S,
                   help="after the warmup: linear (to --min-lr at the last step), cosine "
                        "(min-lr + (lr - min-lr)(1 + cos(pi f))/2) or constant "
                        f"(default: {d.lr_schedule}, the SPEC's lr * (1 - s / steps))")
    g.add_argument("--warmup-steps", type=nonneg_int, default=_S, metavar="W",
                   help="linear warmup: lr * (s + 1) / W for steps s < W (default: 0)")
    g.add_argument("--min-lr", type=nonneg_float, default=_S, metavar="LR",
                   help="where linear/cosine decay end (default: 0)")
    g.add_argument("--weight-decay", type=nonneg_float, default=_S, metavar="WD",
                   help="decoupled weight decay (AdamW): p -= lr_t * WD * p before each Adam "
                        "update, every parameter (default: 0, off)")
    g.add_argument("--grad-clip", type=nonneg_float, default=_S, metavar="C",
                   help="scale the gradients by min(1, C / ||g||), ||g|| the global L2 norm "
                        "over all gradients (default: 0, off)")
    g.add_argument("--beta1", type=_beta, default=_S,
                   help=f"Adam beta1 (default: {d.beta1})")
    g.add_argument("--beta2", type=_beta, default=_S,
                   help=f"Adam beta2 (default: {d.beta2})")
    g.add_argument("--eval-every", type=positive_int, default=_S, metavar="K",
                   help="with --val-fraction: the validation loss every K steps and at the "
                        "last (default: 10 evaluations per run)")
    g.add_argument("--eval-tokens", type=positive_int, default=_S, metavar="N",
                   help="evaluate on a fixed sample of about N positions of the split "
                        "(default: all of it)")


def _add_checkpoints(g) -> None:
    g.add_argument("--out", default=_S, metavar="DIR",
                   help=f"save DIR/{CHECKPOINT_NAME} at the end, every --save-every steps and "
                        "on Ctrl-C (atomically); DIR is created if needed")
    g.add_argument("--save-every", type=positive_int, default=_S, metavar="K",
                   help="also save a checkpoint every K steps (needs --out)")
    g.add_argument("--resume", default=_S, metavar="PATH",
                   help="continue the run saved in this checkpoint (or --out directory) "
                        "exactly; the data must be the same (default: the data file or "
                        "built-in set it was trained on)")
    g.add_argument("--stop-after", type=positive_int, default=_S, metavar="N",
                   help="stop (save and sample) after step N; the learning-rate schedule still "
                        "spans --steps, so --resume continues the same run")
    g.add_argument("--keep-best", action="store_true", default=_S,
                   help="also write DIR/best.safetensors, the checkpoint of the lowest "
                        "validation loss (needs --out and --val-fraction)")
    g.add_argument("--sample-only", action="store_true", default=_S,
                   help="do not train: sample from the --resume checkpoint (like "
                        "python -m microgpt_c.sample; --seed then seeds a fresh sampling "
                        "stream instead of continuing the checkpoint's)")


def _add_sampling(g, d: TrainConfig) -> None:
    g.add_argument("--num-samples", type=nonneg_int, default=_S, metavar="N",
                   help=f"names (text mode: text blocks) to sample after training "
                        f"(default: {d.num_samples})")
    g.add_argument("--temperature", type=positive_float, default=_S, metavar="T",
                   help=f"sampling temperature > 0; lower is more conservative "
                        f"(default: {d.temperature})")
    g.add_argument("--top-k", type=positive_int, default=_S, metavar="K",
                   help="sample only from the K most likely next characters (default: all)")
    g.add_argument("--prefix", default=_S, metavar="TEXT",
                   help="start every sample with TEXT (its characters must occur in the data; "
                        "text mode default: a newline)")
    g.add_argument("--max-new-tokens", type=positive_int, default=_S, metavar="N",
                   help="generate N characters per sample, past the block (the context "
                        "cropped to the last block-size characters); lines mode still stops "
                        "at the end of a document (default: lines mode, the SPEC's: stop at "
                        f"the end of a document or the block; text mode, {TEXT_SAMPLES})")


def _add_output(g) -> None:
    g.add_argument("--progress", choices=PROGRESS_MODES, default=_S,
                   help="auto: a progress bar on a terminal, else 'plain'; bar: a tqdm bar "
                        "(loss, steps/s, ETA) on stderr; plain: a line every --log-every "
                        "steps; steps: the original program's per-step line, rewritten with "
                        "\\r (default: auto)")
    g.add_argument("--log-every", type=positive_int, default=_S, metavar="N",
                   help="steps between lines of --progress plain (default: steps/10)")
    g.add_argument("--quiet", "-q", action="store_true", default=_S,
                   help="print only the sampled names (errors still go to stderr)")
    g.add_argument("--plot", default=_S, metavar="FILE",
                   help="save the loss curve (per-step loss and a moving average) to FILE, "
                        "e.g. loss.png; needs matplotlib: pip install matplotlib (or, from a "
                        "checkout, pip install '.[plot]')")
    g.add_argument("--metrics-out", default=_S, metavar="FILE",
                   help='write one JSON object per step: {"step", "loss", "lr"}, and '
                        '"val_loss" on evaluation steps; appended to on --resume')
    g.add_argument("--config", default=_S, metavar="FILE.toml",
                   help="read settings from a TOML file: keys are the flag names (with - or "
                        "_), e.g. steps = 5000, data-mode = \"text\"; flags given on the "
                        "command line override it")
    g.add_argument("--print-config", action="store_true", default=_S,
                   help="print the merged settings (defaults, --config, --resume, flags) as "
                        "TOML and exit")


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(backend="c")
    p = ArgumentParser(
        prog="python -m microgpt_c.train",
        description="Train microgpt (a one-layer character GPT) on a list of documents, one "
                    "per line, and print sampled new ones. With no arguments it reproduces "
                    "the original microgpt program.",
        epilog="With --resume, settings not given are taken from the checkpoint; giving a "
               "setting that defines the run (data, data mode, validation split, model size, "
               "batch size, lr and its schedule, weight decay, clipping, betas, seed, dtype) "
               "with a different value is an error, except a larger --steps, which extends "
               "the run. Every flag can also come from --config FILE.toml.")
    _add_data_model(p.add_argument_group("data and model"), d)
    _add_training(p.add_argument_group("training"), d)
    _add_checkpoints(p.add_argument_group("checkpoints"))
    _add_sampling(p.add_argument_group("sampling"), d)
    _add_output(p.add_argument_group("output"))
    p.add_argument("--version", action="version", version=f"microgpt_c {__version__}")
    return p


# ------------------------------------------------------------------ progress
def _fmt_eta(seconds: float) -> str:
    if not seconds < 1e8:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Receives each chunk of completed steps (``on_steps``) and shows it."""

    def __init__(self, mode: str, num_steps: int, stop: int, out: TextIO, err: TextIO,
                 log_every: Optional[int] = None, metrics: Optional[TextIO] = None):
        self.mode, self.num_steps, self.stop, self.out, self.err = mode, num_steps, stop, out, err
        self.log_every = log_every or max(1, num_steps // 10)
        self.metrics = metrics
        self.bar: Any = None
        self.t0: Optional[float] = None
        self.first_step: Optional[int] = None
        self.pending: List[float] = []   # losses since the last plain line
        self.wrote_cr = False            # 'steps' mode left the cursor on a \r line
        self.ema: Optional[float] = None  # smoothed loss (EMA_BETA), for the bar and summary
        self.val: Optional[float] = None  # the last validation loss
        self.best_val: Optional[Tuple[int, float]] = None
        self.val_at: Dict[int, float] = {}  # validation losses not yet in the metrics file
        self.last_step: Optional[int] = None

    def on_eval(self, step: int, loss: float) -> None:
        """A validation loss after step ``step`` (before its on_steps call)."""
        self.val = loss
        self.val_at[step] = loss
        if self.best_val is None or loss < self.best_val[1]:
            self.best_val = (step, loss)
        if self.mode == "plain":
            self.out.write(f"step {step:4d} / {self.num_steps:4d} | val loss {loss:.4f}\n")
            self.out.flush()

    def __call__(self, first: int, losses: List[float], lrs: List[float]) -> None:
        if self.t0 is None:
            self.t0, self.first_step = time.perf_counter(), first
        for loss in losses:
            self.ema = loss if self.ema is None else EMA_BETA * self.ema + (1 - EMA_BETA) * loss
        if losses:
            self.last_step = first + len(losses) - 1
        if self.mode == "steps":
            lines = [f"step {first + i:4d} / {self.num_steps:4d} | loss {loss:.4f}"
                     for i, loss in enumerate(losses)]
            self.out.write("\r".join(lines) + "\r")
            self.out.flush()
            self.wrote_cr = True
        elif self.mode == "plain":
            self._plain(first, losses)
        elif self.mode == "bar":
            self._bar(first, losses)
        if self.metrics is not None:
            for i, (loss, lr) in enumerate(zip(losses, lrs)):
                row = {"step": first + i, "loss": loss, "lr": lr}
                if first + i in self.val_at:
                    row["val_loss"] = self.val_at.pop(first + i)
                self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()

    def _plain(self, first: int, losses: List[float]) -> None:
        assert self.t0 is not None and self.first_step is not None
        for i, loss in enumerate(losses):
            step = first + i
            self.pending.append(loss)
            if step % self.log_every == 0 or step == self.stop:
                elapsed = time.perf_counter() - self.t0
                done = step - self.first_step + 1
                rate = done / elapsed if elapsed > 0 else float("inf")
                eta = (self.stop - step) / rate if rate > 0 else float("inf")
                avg = sum(self.pending) / len(self.pending)
                self.out.write(f"step {step:4d} / {self.num_steps:4d} | loss {loss:.4f} | "
                               f"avg {avg:.4f} | {rate:.0f} steps/s | eta {_fmt_eta(eta)}\n")
                self.pending = []
        self.out.flush()

    def _bar(self, first: int, losses: List[float]) -> None:
        if self.bar is None:
            from tqdm import tqdm
            try:  # a terminal reporting a 0x0 size (e.g. a fresh pty) would hide the bar
                size = os.get_terminal_size(self.err.fileno())
                sized = size.columns > 0 and size.lines > 0
            except (AttributeError, ValueError, OSError):
                sized = False
            self.bar = tqdm(total=self.stop, initial=first - 1, unit="step", file=self.err,
                            dynamic_ncols=sized, ncols=None if sized else 100,
                            nrows=None if sized else 24, leave=True, desc="training")
        self.bar.update(len(losses))
        if losses:
            text = f"loss {self.ema:.4f}"
            if self.val is not None:
                text += f" | val {self.val:.4f}"
            self.bar.set_postfix_str(text, refresh=False)

    def summary(self, seconds: float,
                val_losses: Optional[List[Tuple[int, float]]] = None) -> Optional[str]:
        """One line about the steps this run trained in ``seconds`` (None if
        none, or in 'steps' mode, whose lines stay the SPEC's); the best of
        ``val_losses`` (the whole run's, a resumed one's included), else of
        the validation losses seen."""
        if self.mode in ("steps", "none") or self.first_step is None or self.last_step is None:
            return None
        done = self.last_step - self.first_step + 1
        rate = done / seconds if seconds > 0 else float("inf")
        line = (f"done: {done} steps in {seconds:.2f} s ({rate:.0f} steps/s) | smoothed loss "
                f"{self.ema:.4f}")
        best = min(val_losses, key=lambda x: x[1]) if val_losses else self.best_val
        if best is not None:
            line += f" | best val loss {best[1]:.4f} (step {best[0]})"
        return line

    def close(self, newline: bool = True, interrupted: bool = False) -> None:
        """Close the bar (cleared if ``interrupted``, so that the message that
        follows is the one line left); end a \r-rewritten line with a newline
        if ``newline``."""
        if self.bar is not None:
            if interrupted:
                self.bar.leave = False
            self.bar.close()
            self.bar = None
        if self.wrote_cr and newline:
            self.out.write("\n")
            self.out.flush()
            self.wrote_cr = False


def _resolve_progress(mode: str, err: TextIO) -> str:
    if mode != "auto":
        return mode
    try:
        return "bar" if err.isatty() else "plain"
    except (AttributeError, ValueError):
        return "plain"


# ------------------------------------------------------------------ main
class _Messages:
    """The run's ``log`` (header lines, stdout) and ``info`` (other
    messages, stderr) callbacks; nothing with ``quiet``.  Messages for stderr
    wait until the run has passed its checks (the first header line), so that
    an error before that is the only line on stderr."""

    def __init__(self, quiet: bool, out: TextIO, err: TextIO):
        self.quiet, self.out, self.err = quiet, out, err
        self.pending: List[str] = []
        self.started = False

    def log(self, line: str) -> None:
        if self.quiet:
            return
        if not self.started:
            self.started = True
            for message in self.pending:
                print(message, file=self.err, flush=True)
            self.pending.clear()
        print(line, file=self.out, flush=True)

    def info(self, line: str) -> None:
        if self.quiet:
            if line.startswith("notice:"):  # notices show even with --quiet
                print(line, file=self.err, flush=True)
            return
        if self.started:
            print(line, file=self.err, flush=True)
        else:
            self.pending.append(line)


class _MetricsFile:
    """The --metrics-out file, opened at its first write (after the inputs
    have been read and checked), for appending with ``append`` (a resumed
    run); an I/O error at write, flush, fsync or close is an
    OutputWriteError naming the file."""

    def __init__(self, path: str, append: bool = False):
        self.path = path
        self.mode = "a" if append else "w"
        self.file: Optional[TextIO] = None

    def _fail(self, exc: OSError, action: str = "write the metrics file") -> "OutputWriteError":
        return OutputWriteError(describe_oserror(exc, self.path, action))

    def write(self, text: str) -> None:
        try:
            if self.file is None:
                self.file = open(self.path, self.mode, encoding="utf-8")
            self.file.write(text)
        except OSError as exc:
            raise self._fail(exc) from None

    def flush(self) -> None:
        if self.file is not None:
            try:
                self.file.flush()
            except OSError as exc:
                raise self._fail(exc) from None

    def close(self) -> None:
        """Flush, fsync (a regular file: the lines are on the disk when the
        run reports success) and close; an error at any of them is an
        OutputWriteError naming the file."""
        f, self.file = self.file, None
        if f is not None:
            try:
                try:
                    f.flush()
                    if stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # not /dev/stdout, a pipe
                        os.fsync(f.fileno())
                finally:
                    f.close()
            except OSError as exc:
                raise self._fail(exc) from None

    def discard(self) -> None:
        """Close after a failure, ignoring a second error."""
        try:
            self.close()
        except OutputWriteError:
            pass


class _Outputs:
    """The progress display and the metrics file of a run, once opened."""

    def __init__(self) -> None:
        self.progress: Optional[Progress] = None
        self.metrics: Optional[_MetricsFile] = None

    def close_progress(self, interrupted: bool = False) -> None:
        if self.progress is not None:
            self.progress.close(interrupted=interrupted)

    def close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def discard_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.discard()


def _check_paths(opts: Dict[str, Any], cfg: TrainConfig, ckpt) -> None:
    """Refuse (OutputIsInputError) an output path (--metrics-out, --plot,
    --out's checkpoint, --keep-best's best.safetensors) that is an input
    (--data or the data file the run will read, --resume's checkpoint,
    --config) or another output, before anything is opened for writing;
    check that the metrics file's directory exists."""
    # the file the run reads: --data, else the checkpoint's data file, else
    # input.txt (also when resuming a checkpoint that names no data source)
    data = data_file_of_run(None, cfg, ckpt)
    inputs = {"--data": data, "--config": opts.get("config"),
              "--resume": ckpt.path if ckpt is not None else None}
    out_dir = os.fspath(opts["out"]) if "out" in opts else None
    out_file = os.path.join(out_dir, CHECKPOINT_NAME) if out_dir is not None else None
    best_file = (os.path.join(out_dir, BEST_NAME) if out_dir is not None and cfg.keep_best
                 else None)
    outputs = {"--metrics-out": cfg.metrics_out, "--plot": opts.get("plot")}
    check_outputs_vs_inputs(outputs, inputs)
    # --out (and its best.safetensors) may be the --resume checkpoint: it is read
    # whole before it is replaced (atomically); it must not be another input or
    # another output
    check_outputs_vs_inputs({**outputs, "--out": out_file, "--out (--keep-best)": best_file},
                            {k: v for k, v in inputs.items() if k != "--resume"})
    if cfg.metrics_out:
        parent = os.path.dirname(os.path.abspath(cfg.metrics_out))
        if not os.path.isdir(parent):
            raise OutputWriteError(f"cannot write the metrics file {cfg.metrics_out}: "
                                   f"directory {parent} does not exist")


def _sample_only(opts: Dict[str, Any], given: Dict[str, Any], out: TextIO, quiet: bool) -> int:
    if "resume" not in opts:
        return error("--sample-only needs --resume PATH (a checkpoint to sample from)")
    ckpt = load_checkpoint(opts["resume"])
    samples = sample_checkpoint(ckpt, num_samples=given.get("num_samples"),
                                temperature=given.get("temperature"), top_k=given.get("top_k"),
                                prefix=given.get("prefix"), seed=given.get("seed"),
                                threads=given.get("threads"),
                                max_new_tokens=given.get("max_new_tokens"))
    _print_samples(samples, checkpoint_data_mode(ckpt), out, quiet)
    return 0


def _train_and_print(opts: Dict[str, Any], given: Dict[str, Any], messages: _Messages,
                     outputs: _Outputs, root: bool) -> int:
    """Check the settings, train with progress, print the samples; 0 on success."""
    out, err, quiet = messages.out, messages.err, messages.quiet
    ckpt = load_checkpoint(opts["resume"]) if "resume" in opts else None
    cfg = config_from_checkpoint(ckpt, **given) if ckpt is not None else TrainConfig(**given)
    cfg.validate()
    _check_paths(opts, cfg, ckpt)
    if "plot" in opts:
        check_plot_target(opts["plot"])
    if "save_every" in opts and "out" not in opts:
        return error("--save-every needs --out DIR")
    stop = min(opts.get("stop_after", cfg.steps), cfg.steps)
    mode = "none" if quiet else _resolve_progress(opts.get("progress", "auto"), err)
    if cfg.metrics_out and root:  # a resumed run appends to its metrics
        outputs.metrics = _MetricsFile(cfg.metrics_out, append=ckpt is not None)
    progress = outputs.progress = Progress(mode, cfg.steps, stop, out, err,
                                           opts.get("log_every"), outputs.metrics)
    result = train(cfg, None, on_steps=progress, log=messages.log, resume=ckpt,
                   out=opts.get("out"), save_every=opts.get("save_every"),
                   stop_after=opts.get("stop_after"), info=messages.info,
                   on_eval=progress.on_eval)
    progress.close(newline=False)  # the header below starts with one, as the original's
    outputs.close_metrics()
    summary = progress.summary(result.seconds, result.val_losses)
    if summary is not None:
        messages.info(summary)
    if result.checkpoint is not None:
        messages.info(f"checkpoint: {result.checkpoint} (step {len(result.losses)} / "
                      f"{cfg.steps})")
    if result.best_checkpoint is not None:
        best = min(result.val_losses, key=lambda x: x[1])
        messages.info(f"best checkpoint: {result.best_checkpoint} (val loss {best[1]:.4f} at "
                      f"step {best[0]})")
    if "plot" in opts and root:
        try:
            plot = save_loss_plot(result.losses, opts["plot"], val_losses=result.val_losses)
        except OSError as exc:
            raise OutputWriteError(describe_oserror(exc, opts["plot"], "write the plot")) from None
        messages.info(f"loss plot: {plot}")
    _print_samples(result.samples, cfg.data_mode, out, quiet, newline=True)
    if result.samples_in_data is not None:
        messages.info(f"{result.samples_in_data} of {len(result.samples)} samples are in the "
                      "training data")
    return 0


def _print_samples(samples: List[str], data_mode: str, out: TextIO, quiet: bool,
                   newline: bool = False) -> None:
    """Lines mode: the header and the ``sample  N: name`` lines; text mode:
    each sample as a block of text under a ``--- sample N ---`` line."""
    if not quiet:
        out.write(("\n" if newline else "") + (TEXT_HEADER if data_mode == "text" else HEADER)
                  + "\n")
    if data_mode == "text":
        out.write(format_text_samples(samples))
    else:
        out.write(format_samples(samples))
    out.flush()


def _non_finite_message(exc: NonFiniteLossError) -> str:
    saved = getattr(exc, "checkpoint", None)
    note = (f"; the last checkpoint, at step {getattr(exc, 'checkpoint_step', '?')}, is "
            f"{saved} (left unchanged)" if saved is not None else "")
    resumed = getattr(exc, "resumed_from", None)
    if saved is None and resumed is not None:
        note = (f"; this run was resumed from {resumed[0]} (step {resumed[1]}), the last good "
                "checkpoint, which is unchanged: go back to it")
    return one_line(exc) + note


def _run(opts: Dict[str, Any], given: Dict[str, Any], messages: _Messages, outputs: _Outputs,
         root: bool) -> int:
    if opts.get("print_config"):
        ckpt = load_checkpoint(opts["resume"]) if "resume" in opts else None
        cfg = (config_from_checkpoint(ckpt, **given) if ckpt is not None
               else TrainConfig(**given)).validate()
        sys.stdout.write(settings_toml(cfg, opts))
        sys.stdout.flush()
        return 0
    if opts.get("sample_only"):
        return _sample_only(opts, given, messages.out, messages.quiet)
    return _train_and_print(opts, given, messages, outputs, root)


def main(argv: Optional[List[str]] = None) -> int:
    from . import distributed  # imports mpi4py only under mpiexec with > 1 ranks
    if distributed.mpi_requested():
        return distributed.run_main(_main, argv)
    return _main(argv)


# ------------------------------------------------------------------ config files
#: flags a config file cannot set
_NOT_IN_CONFIG = ("help", "version", "config", "print_config")
MAX_CONFIG_BYTES = 2**20  # a config file larger than 1 MiB is refused before reading


def _load_toml(path: str) -> Dict[str, Any]:
    """The settings of a TOML file: a regular file (not a FIFO or device,
    which could block or never end) of at most MAX_CONFIG_BYTES, UTF-8."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python < 3.11
        import tomli as tomllib
    raw = read_regular_file(path, what="config file", error=ConfigError,
                            limit=MAX_CONFIG_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not valid UTF-8 (invalid byte at byte offset "
                          f"{exc.start}); a config file is UTF-8 TOML") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path} is not valid TOML: its values are nested too deeply") from None


def config_file_settings(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """The settings of a TOML config file as parsed flags (dest -> value):
    keys are flag names (``data-mode`` or ``data_mode``), values are checked
    as the flag's would be.  ConfigError names a bad key or value."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    out: Dict[str, Any] = {}
    for key, value in _load_toml(path).items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None or dest in _NOT_IN_CONFIG:
            raise ConfigError(f"{path}: unknown setting {key!r} (the keys are the flag names "
                              f"of {parser.prog}, e.g. steps, data-mode)")
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") \
            else action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key} must be true or false, got {value!r}")
            out[dest] = value
            continue
        if isinstance(value, (dict, list)) or isinstance(value, bool):
            raise ConfigError(f"{path}: {key} must be a {'string' if action.type is None else 'number'}, got {value!r}")
        text = value if isinstance(value, str) else repr(value)
        try:
            converted = action.type(text) if action.type is not None else text
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(f"{path}: {key} ({flag}) {exc}") from None
        if action.choices is not None and converted not in action.choices:
            raise ConfigError(f"{path}: {key} must be one of "
                              f"{', '.join(map(str, action.choices))}, got {value!r}")
        out[dest] = converted
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def settings_toml(cfg: TrainConfig, opts: Dict[str, Any]) -> str:
    """The merged settings as TOML (what --print-config prints; --config
    reads it back): every TrainConfig field and the run options given, keys
    as flag names; unset (None) settings as comments."""
    lines = ["# microgpt_c.train settings (python -m microgpt_c.train --config FILE.toml)"]
    flags = {a.dest for a in build_parser()._actions if a.option_strings}
    for field in dataclasses.fields(TrainConfig):
        if field.name not in flags:   # e.g. eps: not a flag
            continue
        value = getattr(cfg, field.name)
        key = field.name.replace("_", "-")
        lines.append(f"# {key} = (not set)" if value is None else f"{key} = {_toml_value(value)}")
    for name in RUN_OPTIONS:
        if name in _NOT_IN_CONFIG or name not in opts:
            continue
        lines.append(f"{name.replace('_', '-')} = {_toml_value(opts[name])}")
    return "\n".join(lines) + "\n"


def _merged_settings(argv: Optional[List[str]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(run options, TrainConfig fields given): the command line over the
    --config file."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    if "config" in args:
        args = {**config_file_settings(parser, args["config"]), **args}
    opts = {k: args.pop(k) for k in RUN_OPTIONS if k in args}
    return opts, args


def _main(argv: Optional[List[str]] = None) -> int:
    from .distributed import rank
    root = rank() == 0  # under MPI, only rank 0 writes metrics and plots
    try:
        opts, given = _merged_settings(argv)  # given: TrainConfig fields given
    except EXPECTED_ERRORS as exc:
        return error(one_line(exc))
    messages = _Messages(bool(opts.get("quiet", False)), sys.stdout, sys.stderr)
    outputs = _Outputs()
    try:
        with warnings_as_notices(messages.err), sigterm_raises():
            return _run(opts, given, messages, outputs, root)
    except TrainingInterrupted as exc:
        outputs.close_progress(interrupted=True)
        where = (f"; checkpoint saved to {exc.checkpoint} (continue with --resume "
                 f"{exc.checkpoint})" if exc.checkpoint is not None
                 else " (no --out given: nothing saved)")
        ema = outputs.progress.ema if outputs.progress is not None else None
        loss = f"; smoothed loss {ema:.4f}" if ema is not None else ""
        by_sigterm = getattr(exc, "signum", signal.SIGINT) == signal.SIGTERM
        print(f"{'terminated (SIGTERM)' if by_sigterm else 'interrupted'} after step "
              f"{exc.step}{where}{loss}", file=messages.err)
        return 143 if by_sigterm else 130
    except Terminated:   # SIGTERM outside the step loop (loading, sampling): as Ctrl-C
        outputs.close_progress(interrupted=True)
        return terminated()
    except KeyboardInterrupt:
        outputs.close_progress(interrupted=True)
        return interrupted()
    except NonFiniteLossError as exc:
        outputs.close_progress()
        return error(_non_finite_message(exc))
    except BrokenPipeError:
        return broken_pipe()
    except EXPECTED_ERRORS as exc:
        outputs.close_progress()
        return error(one_line(exc))
    finally:
        outputs.discard_metrics()


class _CallableModule(types.ModuleType):
    """``import microgpt_c.train`` rebinds the package attribute ``train`` to
    this module; calling it still trains."""

    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
