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

# Idle OpenMP threads spin only briefly, then sleep.  Long spinning (the
# runtimes' defaults) made steps 10x slower on a busy 2-core machine: every
# parallel region waits for a descheduled peer.  Sleeping at once
# (OMP_WAIT_POLICY=passive) costs a wake-up at each of a batched step's two
# synchronisations.  Measured, 64/64/1 float32 batch 32 on 2 cores (us/step):
# idle machine: 1 thread 1123-1130; 2 threads passive 656-678, GOMP_SPINCOUNT
# 1000: 643 (1.75x); the other core busy: 1 thread 1108, 2 threads passive
# 1155-1167, spin 1000: 1203-1209.  So: libgomp spins 1000 times (a few
# microseconds) before sleeping; LLVM/Intel libomp sleeps at once
# (KMP_BLOCKTIME=0, as passive).  Must be set before the OpenMP runtime loads
# with _core; an explicit OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME is
# honoured (OMP_WAIT_POLICY=passive is the choice for a loaded machine).
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    _os.environ.setdefault("KMP_BLOCKTIME", "0")

from ._version import __version__
from ._core import (Adam, get_num_threads, openmp_enabled, set_num_threads,
                    softmax_temperature, tensor_names)
from .buildinfo import build_info
from .checkpoint import Checkpoint, TrainState, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .errors import (CheckpointError, CheckpointMismatchError, ConfigError, MicrogptError,
                     ModelBusyError, ModelStateError, ModelTooLargeError, NonFiniteLossError,
                     OptionalDependencyError, SequenceLengthError, TokenError,
                     TrainingInterrupted, VocabularyError)
from .model import GPT, load
from .plotting import save_loss_plot
from .training import TrainResult, train

__all__ = ["__version__", "GPT", "Adam", "softmax_temperature", "tensor_names",
           "openmp_enabled", "get_num_threads", "set_num_threads", "build_info",
           "train", "TrainConfig", "TrainResult", "TrainingInterrupted", "load",
           "save_loss_plot", "Checkpoint", "TrainState", "load_checkpoint", "save_checkpoint",
           "MicrogptError", "ConfigError", "ModelTooLargeError", "TokenError",
           "SequenceLengthError", "ModelStateError", "ModelBusyError", "NonFiniteLossError",
           "CheckpointError", "CheckpointMismatchError", "OptionalDependencyError",
           "VocabularyError"]
