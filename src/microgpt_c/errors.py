"""Exceptions raised by microgpt_c, and the mapping from C status codes."""
from __future__ import annotations


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
