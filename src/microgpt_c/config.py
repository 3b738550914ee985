"""The settings of a run: :class:`TrainConfig` and its validation."""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Optional, Union

from .errors import ConfigError
from .validate import integer, optional_positive_int, positive_float, positive_int

__all__ = ["BACKENDS", "MAX_C_INT", "MAX_STEPS", "MAX_THREADS", "RUN_FIELDS", "PathArg", "TrainConfig",
           "check_temperature"]

PathArg = Union[str, "os.PathLike[str]"]
BACKENDS = ("c", "reference")
MAX_C_INT = 2**31 - 1    # sizes and threads are C ints
MAX_STEPS = 2**62        # steps are C longs (and int64 step counters)
MAX_THREADS = 1024       # more OpenMP threads crash libgomp (as _core.MAX_THREADS)
#: Settings that define a run: resuming with any of them changed is an error.
RUN_FIELDS = ("steps", "n_layer", "n_embd", "n_head", "block_size", "batch_size", "lr",
              "beta1", "beta2", "eps", "seed", "dtype")


@dataclass
class TrainConfig:
    """Every setting of a run; defaults are the SPEC's (the original program's)."""
    data: Optional[str] = None          # data file; None: input.txt, else built-in names
    steps: int = 1000                   # total steps (length of the learning-rate schedule)
    n_layer: int = 1
    n_embd: int = 16
    n_head: int = 4
    block_size: int = 16
    batch_size: int = 1
    lr: float = 0.01
    beta1: float = 0.85
    beta2: float = 0.99
    eps: float = 1e-8
    seed: int = 42
    temperature: float = 0.5
    num_samples: int = 20
    top_k: Optional[int] = None         # sample only from the k most likely tokens
    prefix: str = ""                    # every sample starts with this text
    dtype: str = "float64"
    backend: str = dataclasses.field(
        default_factory=lambda: os.environ.get("MICROGPT_C_BACKEND", "c") or "c")
    threads: Optional[int] = None       # None: OpenMP's default ($OMP_NUM_THREADS)
    metrics_out: Optional[str] = None

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the first invalid setting; return self."""
        for name in ("steps", "n_layer", "n_embd", "n_head", "block_size", "batch_size"):
            positive_int(getattr(self, name), name.replace("_", "-"),
                         maximum=MAX_STEPS if name == "steps" else MAX_C_INT)
        integer(self.seed, "seed")
        positive_int(self.num_samples, "num-samples", minimum=0)
        optional_positive_int(self.top_k, "top-k")
        if not isinstance(self.prefix, str):
            raise ConfigError(f"prefix must be a string, got {self.prefix!r}")
        optional_positive_int(self.threads, "threads", maximum=MAX_THREADS)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n-embd ({self.n_embd}) must be divisible by n-head ({self.n_head})")
        if self.batch_size * self.block_size > MAX_C_INT:
            raise ConfigError(f"batch-size x block-size = {self.batch_size * self.block_size} "
                              f"tokens per step is too many (at most {MAX_C_INT}); reduce "
                              "--batch-size or --block-size")
        for name in ("lr", "temperature", "eps"):
            positive_float(getattr(self, name), name)
        check_temperature(self.temperature)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if self.dtype not in ("float64", "float32"):
            raise ConfigError(f"dtype must be float64 or float32, got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got "
                              f"{self.backend!r} (check MICROGPT_C_BACKEND)")
        if self.backend == "reference" and self.dtype != "float64":
            raise ConfigError("the reference backend is float64 only; use --dtype float64")
        return self


def check_temperature(temperature: float) -> None:
    """Raise ConfigError if ``temperature**-1`` would overflow."""
    if 0 < temperature < 1 / sys.float_info.max:
        raise ConfigError(f"temperature {temperature!r} is too small: logits * temperature**-1 "
                          "would overflow; use a temperature of at least 1e-300 (or --top-k 1 "
                          "for the most likely character)")
