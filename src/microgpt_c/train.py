"""Train microgpt on a list of documents and sample new ones.

``python -m microgpt_c.train`` with no arguments does what the original
microgpt program does: it reads ``input.txt`` (else the built-in names), trains
the default one-layer GPT for 1000 steps showing the loss, then prints 20
sampled names.  Every setting has a flag; see ``--help``.

Also: checkpoints (``--out``, ``--save-every``, ``--resume``, exact resume),
``--sample-only``, progress display (``--progress``, ``--quiet``), loss plots
(``--plot``).  Errors print one line ``error: ...`` on stderr and exit with
status 2; Ctrl-C saves a checkpoint (with ``--out``) and exits with 130, SIGTERM
likewise with 143.

This module is also callable: ``microgpt_c.train(config, data, ...)`` is
:func:`microgpt_c.api.train`, even after ``import microgpt_c.train``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import types
from typing import Any, Dict, List, Optional, TextIO

from ._version import __version__
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .cli import (EXPECTED_ERRORS, ArgumentParser, broken_pipe, error, format_samples,
                  interrupted, nonneg_int, one_line, positive_float, positive_int,
                  thread_count, warnings_as_notices)
from .config import BACKENDS, RUN_FIELDS, TrainConfig
from .errors import MicrogptError, NonFiniteLossError, TrainingInterrupted
from .model import GPT, make_model
from .plotting import check_plot_target, save_loss_plot
from .resume import config_from_checkpoint
from .safeio import check_outputs_vs_inputs, describe_oserror
from .sample import sample_checkpoint
from .sampling import sample_names, softmax_for
from .training import TrainResult, data_source_of, train

__all__ = ["BACKENDS", "RUN_FIELDS", "GPT", "TrainConfig", "TrainResult", "build_parser", "main",
           "make_model", "sample_names", "softmax_for", "train"]

PROGRESS_MODES = ("auto", "bar", "plain", "steps")
HEADER = "--- inference (new, hallucinated names) ---"
# CLI options that are not TrainConfig fields
RUN_OPTIONS = ("out", "save_every", "resume", "stop_after", "plot", "progress", "log_every",
               "quiet", "sample_only")




class OutputWriteError(MicrogptError, OSError):
    """Writing an output of the run (metrics, plot) failed; the message
    names the file and what to do."""


# ------------------------------------------------------------------ the CLI
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
    g.add_argument("--backend", choices=BACKENDS, default=_S,
                   help="'c' (fast) or 'reference' (pure-Python oracle, float64, no "
                        "checkpoints) (default: $MICROGPT_C_BACKEND or c)")


def _add_training(g, d: TrainConfig) -> None:
    g.add_argument("--steps", type=positive_int, default=_S, metavar="N",
                   help=f"total training steps; the learning rate decays linearly to 0 over "
                        f"them (default: {d.steps})")
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
    g.add_argument("--sample-only", action="store_true", default=_S,
                   help="do not train: sample from the --resume checkpoint (like "
                        "python -m microgpt_c.sample; --seed then seeds a fresh sampling "
                        "stream instead of continuing the checkpoint's)")


def _add_sampling(g, d: TrainConfig) -> None:
    g.add_argument("--num-samples", type=nonneg_int, default=_S, metavar="N",
                   help=f"names to sample after training (default: {d.num_samples})")
    g.add_argument("--temperature", type=positive_float, default=_S, metavar="T",
                   help=f"sampling temperature > 0; lower is more conservative "
                        f"(default: {d.temperature})")
    g.add_argument("--top-k", type=positive_int, default=_S, metavar="K",
                   help="sample only from the K most likely next characters (default: all)")
    g.add_argument("--prefix", default=_S, metavar="TEXT",
                   help="start every sample with TEXT (its characters must occur in the data)")


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
                        "e.g. loss.png; needs matplotlib: pip install 'microgpt-c[plot]'")
    g.add_argument("--metrics-out", default=_S, metavar="FILE",
                   help='write one JSON object per step: {"step", "loss", "lr"}')


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(backend="c")
    p = ArgumentParser(
        prog="python -m microgpt_c.train",
        description="Train microgpt (a one-layer character GPT) on a list of documents, one "
                    "per line, and print sampled new ones. With no arguments it reproduces "
                    "the original microgpt program.",
        epilog="With --resume, settings not given are taken from the checkpoint; giving a "
               "setting that defines the run (data, steps, model size, batch size, lr, seed, "
               "dtype) with a different value is an error.")
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

    def __call__(self, first: int, losses: List[float], lrs: List[float]) -> None:
        if self.t0 is None:
            self.t0, self.first_step = time.perf_counter(), first
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
                self.metrics.write(json.dumps({"step": first + i, "loss": loss, "lr": lr}) + "\n")
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
            self.bar.set_postfix_str(f"loss {losses[-1]:.4f}", refresh=False)

    def close(self, newline: bool = True) -> None:
        """Close the bar; end a \r-rewritten line with a newline if ``newline``."""
        if self.bar is not None:
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
    have been read and checked); an I/O error at write, flush or close is an
    OutputWriteError naming the file."""

    def __init__(self, path: str):
        self.path = path
        self.file: Optional[TextIO] = None

    def _fail(self, exc: OSError, action: str = "write the metrics file") -> "OutputWriteError":
        return OutputWriteError(describe_oserror(exc, self.path, action))

    def write(self, text: str) -> None:
        try:
            if self.file is None:
                self.file = open(self.path, "w", encoding="utf-8")
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
        f, self.file = self.file, None
        if f is not None:
            try:
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

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def discard_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.discard()


def _check_paths(opts: Dict[str, Any], cfg: TrainConfig, ckpt) -> None:
    """Refuse (OutputIsInputError) an output path that is an input, before
    anything is opened for writing; check that the metrics file's directory
    exists."""
    data = cfg.data
    if data is None:
        source = data_source_of(ckpt)
        if source is not None and not source.startswith("builtin:"):
            data = source
        elif ckpt is None and os.path.exists("input.txt"):
            data = "input.txt"
    inputs = {"--data": data, "--resume": ckpt.path if ckpt is not None else None}
    out_file = (os.path.join(os.fspath(opts["out"]), CHECKPOINT_NAME) if "out" in opts
                else None)
    outputs = {"--metrics-out": cfg.metrics_out, "--plot": opts.get("plot")}
    check_outputs_vs_inputs(outputs, inputs)
    # --out may be the --resume directory: the checkpoint is read whole before
    # it is replaced (atomically); it must not be the data or another output
    check_outputs_vs_inputs({**outputs, "--out": out_file}, {"--data": data})
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
                                threads=given.get("threads"))
    if not quiet:
        out.write(f"{HEADER}\n")
    out.write(format_samples(samples))
    out.flush()
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
    if cfg.metrics_out and root:
        outputs.metrics = _MetricsFile(cfg.metrics_out)
    progress = outputs.progress = Progress(mode, cfg.steps, stop, out, err,
                                           opts.get("log_every"), outputs.metrics)
    result = train(cfg, None, on_steps=progress, log=messages.log, resume=ckpt,
                   out=opts.get("out"), save_every=opts.get("save_every"),
                   stop_after=opts.get("stop_after"), info=messages.info)
    progress.close(newline=False)  # the header below starts with one, as the original's
    outputs.close_metrics()
    if result.checkpoint is not None:
        messages.info(f"checkpoint: {result.checkpoint} (step {len(result.losses)} / "
                      f"{cfg.steps})")
    if "plot" in opts and root:
        try:
            plot = save_loss_plot(result.losses, opts["plot"])
        except OSError as exc:
            raise OutputWriteError(describe_oserror(exc, opts["plot"], "write the plot")) from None
        messages.info(f"loss plot: {plot}")
    if not quiet:
        out.write(f"\n{HEADER}\n")
    out.write(format_samples(result.samples))
    out.flush()
    return 0


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
    if opts.get("sample_only"):
        return _sample_only(opts, given, messages.out, messages.quiet)
    return _train_and_print(opts, given, messages, outputs, root)


def main(argv: Optional[List[str]] = None) -> int:
    from . import distributed  # imports mpi4py only under mpiexec with > 1 ranks
    if distributed.mpi_requested():
        return distributed.run_main(_main, argv)
    return _main(argv)


def _main(argv: Optional[List[str]] = None) -> int:
    from .distributed import rank
    root = rank() == 0  # under MPI, only rank 0 writes metrics and plots
    args = vars(build_parser().parse_args(argv))
    opts = {k: args.pop(k) for k in RUN_OPTIONS if k in args}
    given = args  # TrainConfig fields given on the command line
    messages = _Messages(bool(opts.get("quiet", False)), sys.stdout, sys.stderr)
    outputs = _Outputs()
    try:
        with warnings_as_notices(messages.err):
            return _run(opts, given, messages, outputs, root)
    except TrainingInterrupted as exc:
        outputs.close_progress()
        where = (f"; checkpoint saved to {exc.checkpoint} (continue with --resume "
                 f"{exc.checkpoint})" if exc.checkpoint is not None
                 else " (no --out given: nothing saved)")
        terminated = getattr(exc, "signum", signal.SIGINT) == signal.SIGTERM
        print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'} after step "
              f"{exc.step}{where}", file=messages.err)
        return 143 if terminated else 130
    except KeyboardInterrupt:
        outputs.close_progress()
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
