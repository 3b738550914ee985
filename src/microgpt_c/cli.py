"""What the command lines ``python -m microgpt_c.train`` and
``python -m microgpt_c.sample`` share: the argument parser that reports a bad
option in one line, the argparse types of numbers, the output of samples, and
how an error, Ctrl-C or a closed stdout ends the program."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from typing import Callable, Iterator, List, TextIO

from .errors import MicrogptError, Terminated

__all__ = ["ArgumentParser", "EXPECTED_ERRORS", "broken_pipe", "error", "format_samples",
           "format_text_samples", "interrupted", "nonneg_int", "one_line", "positive_float",
           "positive_int", "sigterm_raises", "terminated", "thread_count",
           "warnings_as_notices"]

#: Exceptions a command line reports as one ``error: ...`` line (exit 2):
#: ours, bad values, and what the operating system refuses.
EXPECTED_ERRORS = (MicrogptError, ValueError, OverflowError, OSError, MemoryError)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


positive_int = _int_at_least(1)
nonneg_int = _int_at_least(0)


def thread_count(text: str) -> int:
    """An argparse type: a number of OpenMP threads, 1 to MAX_THREADS."""
    from .config import MAX_THREADS
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _one_line_text(text: str) -> str:
    return " ".join(text.split())


def one_line(err: BaseException) -> str:
    """The exception's message on one line (its class name if it has none)."""
    return _one_line_text(str(err)) or type(err).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line ``error: ...`` on stderr (exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {_one_line_text(message)} (see {self.prog} --help)\n")


@contextlib.contextmanager
def warnings_as_notices(err: TextIO) -> Iterator[None]:
    """Within the block, a CheckpointFormatWarning is one ``notice: ...`` line
    on ``err`` (not the warnings module's two lines with the source)."""
    from .checkpoint import CheckpointFormatWarning

    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, CheckpointFormatWarning):
                print(f"notice: {_one_line_text(str(message))}", file=err, flush=True)
            else:
                original(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        yield


def format_samples(samples: List[str]) -> str:
    """The ``sample  N: name`` lines."""
    return "".join(f"sample {i + 1:2d}: {name}\n" for i, name in enumerate(samples))


def format_text_samples(samples: List[str]) -> str:
    """Text-mode samples: each under a ``--- sample N ---`` line, as it is."""
    return "".join(f"--- sample {i + 1} ---\n{text}" + ("" if text.endswith("\n") else "\n")
                   for i, text in enumerate(samples))


def error(message: str) -> int:
    """Print ``error: message`` on stderr; return the exit status, 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def interrupted() -> int:
    """Ctrl-C outside training: say so on stderr; return the exit status, 130."""
    print("interrupted", file=sys.stderr)
    return 130


def terminated() -> int:
    """SIGTERM outside training: say so on stderr; return the exit status, 143."""
    print("terminated (SIGTERM)", file=sys.stderr)
    return 143


def _raise_terminated(signum, frame):
    raise Terminated(signum)


#: the training loop's deferred handler may replace this one (as it replaces
#: Python's default SIGINT handler): SIGTERM then stops at a step boundary
_raise_terminated.deferrable = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`~microgpt_c.errors.Terminated`
    (a KeyboardInterrupt) where it would have killed the process: while the
    data or a checkpoint is read, or samples are drawn, it ends the command
    as Ctrl-C does, with one line and nothing half-written.  Only if SIGTERM
    has the system's default disposition and in the main thread (an ignored
    or handled SIGTERM is left alone)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL):
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def broken_pipe() -> int:
    """stdout was closed early (e.g. piped into ``head``): exit quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141
