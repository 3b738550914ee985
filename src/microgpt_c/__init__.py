"""microgpt_c: microgpt (the ~200-line pure-Python GPT) with a C core.

The C kernels (csrc/) have explicit forward and backward passes; the Cython
classes expose them with parameters as NumPy views; ``microgpt_c.reference``
is the pure-Python scalar-autograd oracle.

Entry points:

* ``microgpt_c.train(config, data, ...)`` trains (and resumes) a run and
  returns a :class:`TrainResult` (model, losses, samples);
* :class:`GPT` (``save``, ``GPT.load``, ``sample``), :func:`build_info`,
  :func:`set_num_threads`;
* the command lines ``python -m microgpt_c.train`` (reproduces the original
  program with no arguments) and ``python -m microgpt_c.sample``.
"""
import os as _os

# Idle OpenMP threads sleep instead of spinning: on a busy machine spinning
# threads make every parallel region wait for a descheduled peer (10x slower
# steps were measured on 2 loaded cores).  A batched training step has only
# two synchronisations (one team for the whole train_steps call), so the
# sleeping costs little: 64/64/1 float32 batch 32 on 2 cores, 1136 us/step on
# 1 thread, 668 on 2 passive, 646 on 2 active (and with one core busy with
# another process, passive stays the least bad).  Must be set before the
# OpenMP runtime loads with _core; an explicit OMP_WAIT_POLICY is honoured.
_os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from ._version import __version__
from ._core import (Adam, get_num_threads, openmp_enabled, set_num_threads,
                    softmax_temperature, tensor_names)
from .api import (GPT, OptionalDependencyError, TrainConfig, TrainingInterrupted, TrainResult,
                  VocabularyError, build_info, load, save_loss_plot, train)
from .checkpoint import (Checkpoint, CheckpointError, CheckpointMismatchError, TrainState,
                         load_checkpoint, save_checkpoint)
from .errors import (ConfigError, MicrogptError, ModelBusyError, ModelStateError,
                     ModelTooLargeError, NonFiniteLossError, SequenceLengthError,
                     TokenError)

__all__ = ["__version__", "GPT", "Adam", "softmax_temperature", "tensor_names",
           "openmp_enabled", "get_num_threads", "set_num_threads", "build_info",
           "train", "TrainConfig", "TrainResult", "TrainingInterrupted", "load",
           "save_loss_plot", "Checkpoint", "TrainState", "load_checkpoint", "save_checkpoint",
           "MicrogptError", "ConfigError", "ModelTooLargeError", "TokenError",
           "SequenceLengthError", "ModelStateError", "ModelBusyError", "NonFiniteLossError",
           "CheckpointError", "CheckpointMismatchError", "OptionalDependencyError",
           "VocabularyError"]
