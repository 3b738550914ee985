"""The rules of resuming a run from a checkpoint: the settings it defines
(:data:`~microgpt_c.config.RUN_FIELDS`) must not change, the data and the
vocabulary must be the same; sampling settings default to the run's."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from . import data as data_mod
from .checkpoint import Checkpoint, load_checkpoint
from .config import OPTION_DEFAULTS, RUN_FIELDS, PathArg, TrainConfig
from .errors import CheckpointError, CheckpointMismatchError
from .validate import is_int, is_number

__all__ = ["check_finite_parameters", "check_resume_compatible", "check_resume_data",
           "check_resume_vocabulary", "config_from_checkpoint", "non_finite_message",
           "non_finite_tensor", "open_resume", "sampling_defaults"]


def config_from_checkpoint(ckpt: Checkpoint, **overrides: Any) -> TrainConfig:
    """The TrainConfig of the run that wrote ``ckpt``, with ``overrides``
    applied.  Overriding a setting that defines the run (:data:`RUN_FIELDS`)
    with a different value raises CheckpointMismatchError naming every such
    setting."""
    if ckpt.train is None:
        raise CheckpointError(f"{ckpt.path} has no training state (it was saved outside "
                              "training): it can be sampled from but not resumed")
    run = run_settings(ckpt)
    mine = {k: v for k, v in overrides.items() if k in RUN_FIELDS}
    if _extends(ckpt, mine.get("steps")):
        run["steps"] = mine["steps"]   # extending the run: the schedule over the new total
    _check_same(ckpt, run, mine)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
    kwargs: Dict[str, Any] = {"backend": "c"}
    kwargs.update(sampling_defaults(ckpt))  # the run's sampling settings as defaults
    kwargs.update(run)
    kwargs.update({k: v for k, v in overrides.items() if k not in RUN_FIELDS})
    return TrainConfig(**kwargs)


def run_settings(ckpt: Checkpoint) -> Dict[str, Any]:
    """The settings of :data:`RUN_FIELDS` of the run that wrote ``ckpt``
    (those a checkpoint from before they existed lacks: their defaults)."""
    t = ckpt.train
    assert t is not None
    run = {"steps": t.num_steps, "n_layer": ckpt.config["n_layer"],
           "n_embd": ckpt.config["n_embd"], "n_head": ckpt.config["n_head"],
           "block_size": ckpt.config["block_size"], "batch_size": t.batch_size, "lr": t.lr,
           "beta1": t.beta1, "beta2": t.beta2, "eps": t.eps, "seed": t.seed,
           "dtype": ckpt.dtype}
    for key, default in OPTION_DEFAULTS.items():
        run[key] = t.train_config.get(key, default)
    return run


def _extends(ckpt: Checkpoint, steps: Any) -> bool:
    """True if ``steps`` is a longer total than the checkpoint's run: resuming
    then continues it to the new total, the learning-rate schedule computed
    over the new total from the current step on."""
    return (ckpt.train is not None and is_int(steps, 1) and steps > ckpt.train.num_steps)


#: settings (not defining the run) that resuming takes from the checkpoint's run
#: unless given
_CARRIED = {"eval_every": lambda v: v is None or is_int(v, 1),
            "eval_tokens": lambda v: v is None or is_int(v, 1),
            "keep_best": lambda v: isinstance(v, bool),
            "max_new_tokens": lambda v: v is None or is_int(v, 1)}


def sampling_defaults(ckpt: Checkpoint) -> Dict[str, Any]:
    """The sampling settings (temperature, num_samples, top_k, prefix) of the
    run that wrote ``ckpt``, for those recorded in it."""
    tc = ckpt.train.train_config if ckpt.train is not None else {}
    out: Dict[str, Any] = {}
    value = tc.get("temperature")
    if is_number(value) and value > 0:
        out["temperature"] = float(value)
    value = tc.get("num_samples")
    if is_int(value, 0):
        out["num_samples"] = value
    value = tc.get("top_k")
    if value is None or is_int(value, 1):
        out["top_k"] = value
    value = tc.get("prefix")
    if isinstance(value, str):
        out["prefix"] = value
    for key, ok in _CARRIED.items():
        if key in tc and ok(tc[key]):
            out[key] = tc[key]
    return out


def _check_same(ckpt: Checkpoint, run: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
    diffs = [k for k in RUN_FIELDS if k in mine and mine[k] != run[k]]
    if diffs:
        theirs = ", ".join(f"{k}={run[k]!r}" for k in diffs)
        ours = ", ".join(f"{k}={mine[k]!r}" for k in diffs)
        raise CheckpointMismatchError(
            f"cannot resume: {ckpt.path} was trained with {theirs}, but this run has {ours}")


def check_resume_compatible(cfg: TrainConfig, ckpt: Checkpoint) -> None:
    """Raise CheckpointMismatchError if ``cfg`` differs from the checkpoint's
    run in any of :data:`RUN_FIELDS`."""
    ref = config_from_checkpoint(ckpt)
    run = {k: getattr(ref, k) for k in RUN_FIELDS}
    if _extends(ckpt, cfg.steps):
        run["steps"] = cfg.steps
    _check_same(ckpt, run, {k: getattr(cfg, k) for k in RUN_FIELDS})


def non_finite_tensor(ckpt: Checkpoint, adam: bool = True) -> Optional[Tuple[str, str]]:
    """``(kind, name)`` of the first parameter (or, with ``adam``, Adam
    moment) of ``ckpt`` holding a NaN or infinite value, else None."""
    import numpy as np

    groups = [("parameter", ckpt.params)]
    if adam:
        groups += [("Adam moment", ckpt.adam_m), ("Adam moment", ckpt.adam_v)]
    for kind, tensors in groups:
        for name, t in (tensors or {}).items():
            if not np.isfinite(t).all():
                return kind, name
    return None


def non_finite_message(path: Any, kind: str, name: str) -> str:
    """The message for a checkpoint holding NaN/inf values (CLI and API)."""
    return (f"{path} holds non-finite values (NaN or inf) in the {kind} {name!r}: the run "
            "that saved it had diverged; use an earlier checkpoint")


def check_finite_parameters(ckpt: Checkpoint, adam: bool = True) -> None:
    """Raise CheckpointError naming the file if a parameter (or, with
    ``adam``, an Adam moment) of ``ckpt`` is NaN or infinite."""
    bad = non_finite_tensor(ckpt, adam)
    if bad is not None:
        raise CheckpointError(non_finite_message(ckpt.path, *bad))


def open_resume(resume: Union[PathArg, Checkpoint], config: Optional[TrainConfig]
                ) -> Tuple[Checkpoint, TrainConfig]:
    """The checkpoint to resume (loaded if ``resume`` is a path) and the
    run's config: ``config`` checked against the checkpoint's, or the
    checkpoint's own.  Raises CheckpointError if it has no optimizer state."""
    ckpt = resume if isinstance(resume, Checkpoint) else load_checkpoint(resume)
    check_finite_parameters(ckpt)
    if config is None:
        config = config_from_checkpoint(ckpt)
    else:
        check_resume_compatible(config, ckpt)
    if ckpt.adam_m is None or ckpt.train is None:
        raise CheckpointError(f"{ckpt.path} has no optimizer state: it cannot be resumed")
    return ckpt, config


def check_resume_data(ckpt: Optional[Checkpoint], documents: List[str], data_sha: str) -> None:
    """Raise CheckpointMismatchError if the documents (SHA-256 ``data_sha``)
    are not those ``ckpt`` was trained on."""
    if ckpt is not None and ckpt.train is not None and data_sha != ckpt.train.data_sha256:
        raise CheckpointMismatchError(
            f"cannot resume: the training data differs from the checkpoint's (it was trained "
            f"on {ckpt.train.num_docs} documents with sha256 {ckpt.train.data_sha256[:16]}..., "
            f"this data has {len(documents)} documents with sha256 {data_sha[:16]}...); "
            "use the same --data")


def check_resume_vocabulary(ckpt: Optional[Checkpoint], tokenizer: data_mod.Tokenizer) -> None:
    """Raise CheckpointMismatchError if ``tokenizer``'s vocabulary is not the checkpoint's."""
    if ckpt is not None and ckpt.uchars is not None and ckpt.uchars != "".join(tokenizer.uchars):
        raise CheckpointMismatchError("cannot resume: the vocabulary differs from the "
                                      "checkpoint's")
