"""The Python API in one namespace: one entry point to train (:func:`train`),
a :class:`GPT` that can :meth:`~GPT.save`, :meth:`~GPT.load` and
:meth:`~GPT.sample`, and :func:`build_info`.  The code lives in the modules
named below; this module re-exports their public names.

Example::

    import microgpt_c

    cfg = microgpt_c.TrainConfig(steps=1000)              # the SPEC's defaults
    result = microgpt_c.train(cfg, "names.txt", out="run")  # or a list of strings
    print(result.losses[-1], result.samples[:3])
    model = microgpt_c.GPT.load("run/checkpoint.safetensors")
    print(model.sample(num_samples=5, temperature=0.8, prefix="ma"))

    # continue a run that stopped early (same data): bit-identical to an
    # uninterrupted run
    microgpt_c.train(None, "names.txt", resume="run/checkpoint.safetensors")
"""
from __future__ import annotations

# Every name below stays importable from microgpt_c.api, as before the split;
# __all__ lists the ones api.py has always advertised.
from .buildinfo import build_info
from .checkpoint import (CHECKPOINT_NAME, Checkpoint, CheckpointError, CheckpointMismatchError,
                         TrainState, atomic_write_bytes, load_checkpoint, prepare_out_dir,
                         restore_into, save_checkpoint)
from .config import BACKENDS, MAX_C_INT, MAX_STEPS, RUN_FIELDS, PathArg, TrainConfig
from .errors import (ConfigError, MicrogptError, NonFiniteLossError, OptionalDependencyError,
                     SequenceLengthError, TrainingInterrupted, VocabularyError)
from .model import GPT, load, make_model
from .plotting import check_plot_target, save_loss_plot
from .resume import check_resume_compatible, config_from_checkpoint, sampling_defaults
from .sampling import check_prefix, sample_names, softmax_for
from .training import TrainResult, train

__all__ = ["BACKENDS", "GPT", "RUN_FIELDS", "TrainConfig", "TrainResult", "TrainingInterrupted",
           "OptionalDependencyError", "VocabularyError", "build_info", "check_plot_target",
           "check_prefix", "config_from_checkpoint", "load", "sampling_defaults", "make_model",
           "sample_names", "save_loss_plot", "train"]

