"""The settings of a run: :class:`TrainConfig` and its validation."""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Optional, Union

from .errors import ConfigError
from .validate import integer, optional_positive_int, positive_float, positive_int

__all__ = ["BACKENDS", "DATA_MODES", "LR_SCHEDULES", "MAX_C_INT", "MAX_STEPS", "MAX_THREADS",
           "OPTION_DEFAULTS", "RUN_FIELDS", "PathArg", "TrainConfig", "check_temperature"]

PathArg = Union[str, "os.PathLike[str]"]
BACKENDS = ("c", "reference")
MAX_C_INT = 2**31 - 1    # sizes and threads are C ints
MAX_STEPS = 2**62        # steps are C longs (and int64 step counters)
MAX_THREADS = 1024       # more OpenMP threads crash libgomp (as _core.MAX_THREADS)
#: Settings that define a run: resuming with any of them changed is an error.
RUN_FIELDS = ("steps", "n_layer", "n_embd", "n_head", "block_size", "batch_size", "lr",
              "beta1", "beta2", "eps", "seed", "dtype", "data_mode", "val_fraction",
              "warmup_steps", "lr_schedule", "min_lr", "weight_decay", "grad_clip")
#: RUN_FIELDS a checkpoint written before they existed did not record: their
#: defaults (the SPEC's).
OPTION_DEFAULTS = {"data_mode": "lines", "val_fraction": 0.0, "warmup_steps": 0,
                   "lr_schedule": "linear", "min_lr": 0.0, "weight_decay": 0.0,
                   "grad_clip": 0.0}
DATA_MODES = ("lines", "text")
LR_SCHEDULES = ("linear", "cosine", "constant")


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
    # ---- opt-in extensions (issue 12); every default is the SPEC
    data_mode: str = "lines"            # lines: one document per line; text: one char stream
    val_fraction: float = 0.0           # held-out share: last docs of the shuffle / end of text
    eval_every: Optional[int] = None    # None: 10 evaluations per run when there is a split
    eval_tokens: Optional[int] = None   # None: the whole split; else a fixed sample of it
    keep_best: bool = False             # also write best.safetensors (lowest val loss)
    warmup_steps: int = 0               # linear warmup from lr/W to lr over W steps
    lr_schedule: str = "linear"         # linear | cosine | constant (after the warmup)
    min_lr: float = 0.0                 # where linear/cosine end
    weight_decay: float = 0.0           # decoupled (AdamW): p -= lr_t * wd * p
    grad_clip: float = 0.0              # global L2 norm clip; 0: off
    max_new_tokens: Optional[int] = None  # generate N tokens (past the block); None: SPEC

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
        if self.data_mode not in DATA_MODES:
            raise ConfigError(f"data-mode must be one of {', '.join(DATA_MODES)}, got "
                              f"{self.data_mode!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got "
                              f"{self.lr_schedule!r}")
        if not (isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1):
            raise ConfigError(f"val-fraction must be in [0, 1), got {self.val_fraction!r}")
        optional_positive_int(self.eval_every, "eval-every")
        optional_positive_int(self.eval_tokens, "eval-tokens")
        optional_positive_int(self.max_new_tokens, "max-new-tokens")
        positive_int(self.warmup_steps, "warmup-steps", minimum=0)
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"warmup-steps ({self.warmup_steps}) must be less than steps "
                              f"({self.steps})")
        for name in ("min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
                raise ConfigError(f"{name.replace('_', '-')} must be a finite number >= 0, "
                                  f"got {value!r}")
        if self.min_lr > self.lr:
            raise ConfigError(f"min-lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if not isinstance(self.keep_best, bool):
            raise ConfigError(f"keep-best must be true or false, got {self.keep_best!r}")
        if self.backend == "reference" and self.dtype != "float64":
            raise ConfigError("the reference backend is float64 only; use --dtype float64")
        return self

    def schedule_options(self) -> dict:
        """The keyword options of ``GPT.train_steps`` that differ from the
        SPEC's (empty for the SPEC's run)."""
        opts = {"warmup_steps": int(self.warmup_steps), "lr_schedule": self.lr_schedule,
                "min_lr": float(self.min_lr), "weight_decay": float(self.weight_decay),
                "grad_clip": float(self.grad_clip)}
        return {k: v for k, v in opts.items() if v != OPTION_DEFAULTS[k]}


def check_temperature(temperature: float) -> None:
    """Raise ConfigError if ``temperature**-1`` would overflow."""
    if 0 < temperature < 1 / sys.float_info.max:
        raise ConfigError(f"temperature {temperature!r} is too small: logits * temperature**-1 "
                          "would overflow; use a temperature of at least 1e-300 (or --top-k 1 "
                          "for the most likely character)")
