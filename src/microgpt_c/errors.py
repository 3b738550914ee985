"""Every exception class of microgpt_c, and the mapping from C status codes.

Each derives from :class:`MicrogptError` and from the standard class it has
always been (``except ValueError`` keeps working), except
:class:`TrainingInterrupted`, a :class:`KeyboardInterrupt` only, so that
``except Exception`` never swallows a Ctrl-C.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional


class MicrogptError(Exception):
    """Base class of every error specific to microgpt_c."""


class ConfigError(MicrogptError, ValueError):
    """A model or training setting is invalid (sizes, n_embd % n_head, ...)."""


class ModelTooLargeError(MicrogptError, MemoryError):
    """The buffers for this configuration would overflow or exceed memory."""


class TokenError(MicrogptError, ValueError):
    """A token id is outside [0, vocab_size)."""


class SequenceLengthError(MicrogptError, ValueError):
    """A sequence or batch has a length the model cannot take."""


class ModelStateError(MicrogptError, RuntimeError):
    """The call is not valid in the model's current state (e.g. backward first)."""


class ModelBusyError(ModelStateError):
    """The model is being used by another thread."""


class NonFiniteLossError(MicrogptError, FloatingPointError):
    """The loss became NaN or infinite."""


class DataError(MicrogptError, ValueError):
    """The training data is missing, unreadable or unusable; the message says how to fix it."""


class DataFileNotFound(DataError, FileNotFoundError):
    """The data file does not exist (catchable as DataError or FileNotFoundError)."""


class CheckpointError(MicrogptError, ValueError):
    """A checkpoint file is missing, unreadable, corrupted, foreign or unusable."""


class CheckpointMismatchError(CheckpointError):
    """Resuming with data, a configuration or a dtype that differs from the checkpoint's."""


class VocabularyError(MicrogptError, ValueError):
    """Text contains characters that are not in the model's vocabulary."""


class OptionalDependencyError(MicrogptError, ImportError):
    """An optional dependency (e.g. matplotlib for plots) is not installed."""


class DistributedError(MicrogptError, RuntimeError):
    """A rank failed, or the ranks disagree (data, parameters, settings).

    Raised on every rank at the same point, with the same message."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a step boundary because of Ctrl-C (SIGINT).

    ``step`` is the number of completed steps, ``checkpoint`` the path of the
    checkpoint saved at that step (None without ``out``), ``losses`` the loss
    history."""

    def __init__(self, step: int, checkpoint: Optional[Path], losses: List[float]):
        super().__init__(f"training interrupted after step {step}")
        self.step, self.checkpoint, self.losses = step, checkpoint, losses


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived outside the training loop (while the data was loaded,
    a checkpoint read, or samples drawn): the command lines raise it from
    their SIGTERM handler and exit with status 143, as for Ctrl-C (130).
    Inside the training loop SIGTERM stops at a step boundary instead
    (:class:`TrainingInterrupted` with ``signum``)."""

    def __init__(self, signum: int = 15):
        super().__init__("terminated (SIGTERM)")
        self.signum = signum


class OutputIsInputError(MicrogptError, ValueError):
    """An output file given on the command line is one of the input files."""


# C status code -> exception class (codes from csrc/microgpt.h)
STATUS_EXCEPTIONS = {
    1: ConfigError,
    2: ModelTooLargeError,
    3: ModelTooLargeError,
    4: TokenError,
    5: SequenceLengthError,
    6: ModelStateError,
    7: ConfigError,
    8: ValueError,
    9: NonFiniteLossError,
}
