"""microgpt_c: microgpt (the ~200-line pure-Python GPT) with a C core.

The C kernels (csrc/) have explicit forward and backward passes; the Cython
classes here expose them with parameters as NumPy views; ``microgpt_c.reference``
is the pure-Python scalar-autograd oracle; ``python -m microgpt_c.train`` trains
and samples like the original program.
"""
from ._version import __version__
from ._core import (GPT, Adam, get_num_threads, openmp_enabled, set_num_threads,
                    softmax_temperature, tensor_names)
from .errors import (ConfigError, MicrogptError, ModelBusyError, ModelStateError,
                     ModelTooLargeError, NonFiniteLossError, SequenceLengthError,
                     TokenError)

__all__ = ["__version__", "GPT", "Adam", "softmax_temperature", "tensor_names",
           "openmp_enabled", "get_num_threads", "set_num_threads", "MicrogptError",
           "ConfigError", "ModelTooLargeError", "TokenError", "SequenceLengthError",
           "ModelStateError", "ModelBusyError", "NonFiniteLossError"]
