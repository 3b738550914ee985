"""Checkpoints: a model's parameters, Adam moments and training state in one
`safetensors <https://huggingface.co/docs/safetensors>`_ file.

Layout of a checkpoint file (``checkpoint.safetensors``):

* tensors, in the model's dtype (``F64`` or ``F32``):

  - every parameter under its SPEC name: ``wte`` (vocab_size, n_embd),
    ``wpe`` (block_size, n_embd), ``lm_head`` (vocab_size, n_embd), and for each
    layer ``i``: ``layer{i}.attn_wq``, ``layer{i}.attn_wk``, ``layer{i}.attn_wv``,
    ``layer{i}.attn_wo`` (n_embd, n_embd), ``layer{i}.mlp_fc1`` (4*n_embd, n_embd),
    ``layer{i}.mlp_fc2`` (n_embd, 4*n_embd);
  - the Adam moments ``adam.m.<name>`` and ``adam.v.<name>`` with the same shapes;

* ``train.losses`` (float64, one per completed step): the loss history;

* string metadata (safetensors ``__metadata__``), see :data:`METADATA_KEYS`.

Files are written atomically (a temporary file in the same directory, flushed
and fsync-ed, then renamed over the target, see :mod:`microgpt_c.safeio`), so an
interrupted write never replaces a good checkpoint with a partial one; a failed
write (a full disk, ...) is one :class:`CheckpointError` naming the file.
Loading reads regular files only, at most ``MICROGPT_C_MAX_CHECKPOINT_BYTES``
(default 16 GiB), and validates everything (format marker, version, one SHA-256
over the metadata and the tensors, config, tensor names, shapes, dtypes); every
failure is a :class:`CheckpointError` with a one-line message naming the file.

Format versions: 2 (current) has ``sha256`` over the metadata and the tensors;
1 had ``tensors_sha256`` over the tensors only (its metadata was not
protected): it still loads, with a :class:`CheckpointFormatWarning`.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import random
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ._version import __version__
from . import safeio
from .errors import CheckpointError, CheckpointMismatchError  # re-exported here

__all__ = ["CHECKPOINT_NAME", "CHECKSUM_KEY", "FORMAT", "FORMAT_VERSION", "METADATA_KEYS",
           "Checkpoint", "CheckpointError", "CheckpointFormatWarning", "CheckpointMismatchError",
           "TrainState", "atomic_write_bytes", "checkpoint_path", "checksum", "load_checkpoint",
           "model_layout", "prepare_out_dir", "restore_into", "save_checkpoint",
           "tensor_shapes"]

PathArg = Union[str, "os.PathLike[str]"]

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "microgpt_c.checkpoint"
FORMAT_VERSION = 2
#: older versions that still load (with a CheckpointFormatWarning)
OLD_FORMAT_VERSIONS = (1,)
CHECKSUM_KEY = "sha256"
LAYER_TENSORS = ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")
CONFIG_KEYS = ("vocab_size", "n_layer", "n_embd", "n_head", "block_size")
DTYPES = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4")}

#: Metadata keys and what they hold (all values are strings; JSON where noted).
METADATA_KEYS = {
    "format": f"always {FORMAT!r}",
    "format_version": f"integer, currently {FORMAT_VERSION}",
    "microgpt_c_version": "package version that wrote the file",
    "config": "JSON object: vocab_size, n_layer, n_embd, n_head, block_size",
    "dtype": "'float64' or 'float32'",
    "uchars": "the vocabulary: the sorted distinct characters (BOS is id len(uchars))",
    CHECKSUM_KEY: "SHA-256 over every other metadata entry and the tensors (name, dtype, shape, "
                  "bytes), for corruption checks (format version 1 had 'tensors_sha256', over "
                  "the tensors only)",
    # training state (present when saved by training)
    "step": "completed training steps",
    "num_steps": "total steps of the run (the learning-rate schedule's length)",
    "lr": "peak learning rate", "beta1": "Adam beta1", "beta2": "Adam beta2", "eps": "Adam eps",
    "batch_size": "documents per step",
    "seed": "seed of the run's random stream",
    "data_sha256": "SHA-256 of the training documents (before shuffling), joined by newlines",
    "num_docs": "number of training documents",
    "rng_state": "JSON [version, [625 ints], gauss_next]: random.Random.getstate() after "
                 "shuffling and init (the state sampling starts from)",
    "train_config": "JSON object of the full training configuration (informational; "
                    "temperature and num_samples are the sampling defaults)",
}
TRAIN_KEYS = ("step", "num_steps", "lr", "beta1", "beta2", "eps", "batch_size", "seed",
              "data_sha256", "num_docs", "rng_state")


class CheckpointFormatWarning(UserWarning):
    """A checkpoint of an older format version was loaded (it still works)."""


@dataclasses.dataclass
class TrainState:
    """Where a training run is: enough, with the parameters and the Adam
    moments, to continue it exactly."""
    step: int                      # completed steps
    num_steps: int                 # total steps of the run
    lr: float
    beta1: float
    beta2: float
    eps: float
    batch_size: int
    seed: int
    data_sha256: str
    num_docs: int
    rng_state: Tuple[Any, ...]     # random.Random.getstate()
    losses: List[float] = dataclasses.field(default_factory=list)  # history, one per step
    train_config: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Checkpoint:
    """The contents of a checkpoint file."""
    path: Optional[Path]
    config: Dict[str, int]
    dtype: str
    params: Dict[str, np.ndarray]
    adam_m: Optional[Dict[str, np.ndarray]]
    adam_v: Optional[Dict[str, np.ndarray]]
    uchars: Optional[str]
    train: Optional[TrainState]
    metadata: Dict[str, str]

    @property
    def step(self) -> int:
        return self.train.step if self.train is not None else 0

    def describe(self) -> str:
        where = str(self.path) if self.path is not None else "checkpoint"
        if self.train is None:
            return f"{where} (no training state)"
        return f"{where} (step {self.train.step} / {self.train.num_steps})"


# --------------------------------------------------------------------------- helpers
def tensor_shapes(config: Mapping[str, int]) -> Dict[str, Tuple[int, int]]:
    """The SPEC's parameter names and shapes, in order."""
    V, T, C = config["vocab_size"], config["block_size"], config["n_embd"]
    shapes = {"wte": (V, C), "wpe": (T, C), "lm_head": (V, C)}
    for i in range(config["n_layer"]):
        for t in LAYER_TENSORS:
            shapes[f"layer{i}.{t}"] = {"mlp_fc1": (4 * C, C), "mlp_fc2": (C, 4 * C)}.get(t, (C, C))
    return shapes


def checkpoint_path(path: PathArg) -> Path:
    """``path`` itself, or ``path/checkpoint.safetensors`` if ``path`` is a directory."""
    p = Path(os.fspath(path))
    return p / CHECKPOINT_NAME if p.is_dir() else p


def atomic_write_bytes(path: PathArg, raw: bytes) -> Path:
    """Write ``raw`` to ``path`` atomically (see :func:`safeio.atomic_write_bytes`):
    a temporary file in the same directory is written, fsync-ed, then renamed
    over ``path`` (and the directory fsync-ed).  On any failure, including
    KeyboardInterrupt, the temporary file is removed and ``path`` is
    untouched; I/O errors propagate as OSError."""
    return safeio.atomic_write_bytes(path, raw)



def prepare_out_dir(out: PathArg) -> Path:
    """Create the output directory ``out`` if needed and check that files can
    be created in it; raises CheckpointError with the reason otherwise."""
    d = Path(os.fspath(out))
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"output directory {d} exists and is not a directory; choose "
                              "another output directory (a new or an existing directory)")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".microgpt_c-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(_out_dir_message(exc, d)) from None
    return d


def _out_dir_message(exc: OSError, d: Path) -> str:
    """``cannot write to the output directory D: <reason>; <what to do>``."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"cannot write to the output directory {d}: permission denied; check the "
                "permissions of it and its parent directories, or choose another output "
                "directory")
    message = safeio.describe_oserror(exc, d, "write to the output directory")
    if exc.errno not in safeio.KNOWN_ERRNOS:  # no advice from describe_oserror
        message += "; choose another output directory"
    return message


def _tensors_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """Format version 1's checksum: the tensors only."""
    h = hashlib.sha256()
    _hash_tensors(h, tensors)
    return h.hexdigest()


def _hash_tensors(h: Any, tensors: Mapping[str, np.ndarray]) -> None:
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")


def checksum(meta: Mapping[str, str], tensors: Mapping[str, np.ndarray]) -> str:
    """The ``sha256`` of format version 2: SHA-256 over every metadata entry
    except ``sha256`` itself (as canonical JSON: sorted keys, ASCII) and then
    the tensors (sorted by name: name, dtype, shape, bytes)."""
    h = hashlib.sha256(b"microgpt_c.checkpoint/2\n")
    body = {k: v for k, v in meta.items() if k != CHECKSUM_KEY}
    h.update(json.dumps(body, sort_keys=True, ensure_ascii=True).encode("ascii"))
    h.update(b"\n")
    _hash_tensors(h, tensors)
    return h.hexdigest()


def model_layout(model) -> Dict[str, Tuple[int, Tuple[int, int]]]:
    """Offset (in elements) and shape of every parameter tensor in the model's
    flat buffers, from the C core's layout (``tensor_names`` order, the SPEC's
    shapes), not from the user-visible (mutable) ``model.params`` dict."""
    from ._core import tensor_names

    config = {k: int(getattr(model, k)) for k in CONFIG_KEYS}
    shapes = tensor_shapes(config)
    out: Dict[str, Tuple[int, Tuple[int, int]]] = {}
    off = 0
    for name in tensor_names(config["n_layer"]):
        shape = shapes[name]
        out[name] = (off, shape)
        off += shape[0] * shape[1]
    n = int(model.num_params)
    if off != n or model.flat_params.shape != (n,):
        raise CheckpointError(f"internal error: the model's parameter layout ({n} values) does "
                              f"not match its configuration ({off} values)")
    return out


_flat_slices = model_layout  # the former name


def _flat(model, attr: str) -> np.ndarray:
    arr = getattr(model, attr)
    if not isinstance(arr, np.ndarray) or arr.shape != (int(model.num_params),):
        raise CheckpointError(f"internal error: model.{attr} is not the model's flat buffer")
    return arr



def _rng_state_to_json(state: Tuple[Any, ...]) -> str:
    version, internal, gauss_next = state
    return json.dumps([version, list(internal), gauss_next])


def _rng_state_from_json(text: str) -> Tuple[Any, ...]:
    value = json.loads(text)
    if (not isinstance(value, list) or len(value) != 3 or not isinstance(value[1], list)
            or not all(isinstance(x, int) for x in value[1])
            or not (value[2] is None or isinstance(value[2], float))):
        raise ValueError("malformed random state")
    if len(value[1]) != 625:
        raise ValueError("malformed random state")
    state = (value[0], tuple(value[1]), value[2])
    random.Random().setstate(state)  # validates
    return state


# --------------------------------------------------------------------------- save
def save_checkpoint(path: PathArg, model, *, uchars: Optional[str] = None,
                    train: Optional[TrainState] = None) -> Path:
    """Write ``model`` (a :class:`microgpt_c.GPT`), its Adam moments, the
    vocabulary ``uchars`` and the training state ``train`` to ``path``
    (atomically).  ``path`` may be a directory: the file is then
    ``path/checkpoint.safetensors``.  Returns the file's path.

    The tensors are taken from the model's flat buffers in the C core's
    layout (``model.params`` is not consulted, so a modified dict cannot make
    an unloadable file).  A failed write (full disk, permissions, ...) raises
    one :class:`CheckpointError` naming the file; the previous checkpoint is
    left intact."""
    import safetensors.numpy

    path = checkpoint_path(path)
    if not hasattr(model, "adam_m"):
        raise CheckpointError("only the C backend's GPT can be saved (the reference backend "
                              "keeps no Adam state in arrays)")
    config = {k: int(getattr(model, k)) for k in CONFIG_KEYS}
    if model.dtype not in DTYPES:
        raise CheckpointError(f"cannot save a model of dtype {model.dtype!r}")
    dtype: Any = DTYPES[model.dtype]
    flat_p, flat_m, flat_v = (_flat(model, a) for a in ("flat_params", "adam_m", "adam_v"))
    tensors: Dict[str, np.ndarray] = {}
    for name, (off, shape) in model_layout(model).items():
        size = shape[0] * shape[1]
        for key, flat in ((name, flat_p), (f"adam.m.{name}", flat_m), (f"adam.v.{name}", flat_v)):
            tensors[key] = np.array(flat[off:off + size], dtype=dtype, copy=True).reshape(shape)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "microgpt_c_version": __version__,
        "config": json.dumps(config),
        "dtype": model.dtype,
    }
    if uchars is not None:
        meta["uchars"] = uchars
    if train is not None:
        tensors["train.losses"] = np.asarray(train.losses, dtype="<f8").reshape(-1)
        meta.update({
            "step": str(int(train.step)), "num_steps": str(int(train.num_steps)),
            "lr": repr(float(train.lr)), "beta1": repr(float(train.beta1)),
            "beta2": repr(float(train.beta2)), "eps": repr(float(train.eps)),
            "batch_size": str(int(train.batch_size)), "seed": str(int(train.seed)),
            "data_sha256": train.data_sha256, "num_docs": str(int(train.num_docs)),
            "rng_state": _rng_state_to_json(train.rng_state),
            "train_config": json.dumps(train.train_config, sort_keys=True),
        })
    meta[CHECKSUM_KEY] = checksum(meta, tensors)
    raw = safetensors.numpy.save(tensors, metadata=meta)
    try:
        return safeio.atomic_write_bytes(path, raw)
    except OSError as exc:
        raise CheckpointError(safeio.describe_oserror(exc, path, "write the checkpoint")
                              + " (the previous checkpoint, if any, is unchanged)") from None



# --------------------------------------------------------------------------- load
#: what a crafted or corrupted field can raise while it is parsed: all become CheckpointError
_PARSE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, MemoryError, KeyError,
                 IndexError, AttributeError, struct.error)


def _read_header(raw: bytes, where: str) -> Dict[str, Any]:
    bad = (f"{where} is not a valid checkpoint: not a safetensors file, or truncated or "
           "corrupted")
    if len(raw) == 0:
        raise CheckpointError(f"{where} is empty (0 bytes): not a checkpoint")
    if len(raw) < 8:
        raise CheckpointError(bad)
    (n,) = struct.unpack("<Q", raw[:8])
    if n < 2 or n > len(raw) - 8:
        raise CheckpointError(bad)
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except RecursionError:
        raise CheckpointError(f"{where} is not a valid checkpoint: its header is JSON nested "
                              "too deeply") from None
    except _PARSE_ERRORS:
        raise CheckpointError(bad) from None
    if not isinstance(header, dict):
        raise CheckpointError(bad)
    return header


def _json_field(meta: Mapping[str, str], key: str, where: str, default: Optional[str] = None):
    text = meta.get(key, default)
    if text is None:
        raise CheckpointError(f"{where}: metadata {key!r} is missing")
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{where}: metadata {key!r} is malformed (JSON nested too "
                              "deeply)") from None
    except _PARSE_ERRORS:
        raise CheckpointError(f"{where}: metadata {key!r} is malformed (not valid JSON)") from None


def _meta_int(meta: Mapping[str, str], key: str, where: str, minimum: int = 0) -> int:
    try:
        value = int(meta[key])
    except _PARSE_ERRORS:
        raise CheckpointError(f"{where}: metadata {key!r} is missing or not an integer") from None
    if value < minimum:
        raise CheckpointError(f"{where}: metadata {key!r} = {value} must be >= {minimum}")
    return value


def _meta_float(meta: Mapping[str, str], key: str, where: str) -> float:
    try:
        value = float(meta[key])
    except _PARSE_ERRORS:
        raise CheckpointError(f"{where}: metadata {key!r} is missing or not a number") from None
    if not math.isfinite(value):
        raise CheckpointError(f"{where}: metadata {key!r} = {value} is not finite")
    return value


def load_checkpoint(path: PathArg) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.
    ``path`` may be a directory containing ``checkpoint.safetensors``.

    Only a regular file is read (a FIFO, a device, ... is refused before it
    is opened), of at most ``$MICROGPT_C_MAX_CHECKPOINT_BYTES`` bytes (default
    16 GiB).  Raises :class:`CheckpointError` (one-line message naming the
    file) for a missing, unreadable, special, too large, empty, truncated,
    corrupted, crafted or foreign file; never another exception for the
    file's contents.  A file of format version 1 (its metadata not covered by
    the checksum) loads with a :class:`CheckpointFormatWarning`."""
    path = checkpoint_path(path)
    where = str(path)
    try:
        limit = safeio.max_bytes(safeio.MAX_CHECKPOINT_ENV, safeio.DEFAULT_MAX_CHECKPOINT_BYTES)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    raw = safeio.read_regular_file(path, what="checkpoint", error=CheckpointError, limit=limit,
                                   env_var=safeio.MAX_CHECKPOINT_ENV,
                                   hint="give a checkpoint.safetensors file or its directory")
    try:
        return _parse_checkpoint(raw, path, where)
    except CheckpointError:
        raise
    except _PARSE_ERRORS as exc:
        raise CheckpointError(f"{where} is not a valid checkpoint: a field cannot be parsed "
                              f"({type(exc).__name__})") from None


def _parse_checkpoint(raw: bytes, path: Path, where: str) -> Checkpoint:
    import safetensors.numpy

    header = _read_header(raw, where)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} is a safetensors file but not a microgpt_c checkpoint (its metadata has "
            f"no format={FORMAT!r})")
    if not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{where}: malformed metadata (values must be strings)")
    version = _meta_int(meta, "format_version", where, 1)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has checkpoint format version {version}, but this microgpt_c "
            f"({__version__}) reads versions up to {FORMAT_VERSION}; upgrade microgpt_c")
    if version != FORMAT_VERSION and version not in OLD_FORMAT_VERSIONS:
        raise CheckpointError(f"{where} has checkpoint format version {version}, which this "
                              f"microgpt_c ({__version__}) cannot read")
    try:
        tensors = safetensors.numpy.load(raw)
    except Exception as exc:  # safetensors raises its own error types
        text = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{where} is truncated or corrupted ({text})") from None
    if version >= 2:
        if meta.get(CHECKSUM_KEY) != checksum(meta, tensors):
            raise CheckpointError(f"{where} is corrupted: its metadata or tensor data does not "
                                  "match the checksum stored in it")
    else:
        if meta.get("tensors_sha256") != _tensors_digest(tensors):
            raise CheckpointError(f"{where} is corrupted: its tensor data does not match the "
                                  "checksum stored in it")
        warnings.warn(f"{where} has checkpoint format version {version}, whose metadata is not "
                      "covered by its checksum; save it again to upgrade it",
                      CheckpointFormatWarning, stacklevel=3)

    config = _json_field(meta, "config", where)
    try:
        config = {k: int(config[k]) for k in CONFIG_KEYS}
    except _PARSE_ERRORS:
        raise CheckpointError(f"{where}: metadata 'config' is missing or malformed") from None
    if min(config.values()) < 1 or config["n_embd"] % config["n_head"] or config["vocab_size"] < 2:
        raise CheckpointError(f"{where}: invalid model config {config}")
    dtype = meta.get("dtype")
    if dtype not in DTYPES:
        raise CheckpointError(f"{where}: metadata 'dtype' must be float64 or float32, got "
                              f"{dtype!r:.40}")

    uchars = meta.get("uchars")
    if uchars is not None:
        if list(uchars) != sorted(set(uchars)):
            raise CheckpointError(f"{where}: metadata 'uchars' is not a sorted set of characters")
        if len(uchars) + 1 != config["vocab_size"]:
            raise CheckpointError(f"{where}: {len(uchars)} vocabulary characters do not match "
                                  f"vocab_size {config['vocab_size']}")

    want = DTYPES[dtype]
    shapes = tensor_shapes(config)

    def get(name: str, required: bool = True):
        arr = tensors.get(name)
        if arr is None:
            if required:
                raise CheckpointError(f"{where}: tensor {name!r} is missing")
            return None
        base = name.split(".", 2)[2] if name.startswith("adam.") else name
        if tuple(arr.shape) != shapes[base]:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(arr.shape)}, "
                                  f"expected {shapes[base]}")
        if arr.dtype != want:
            raise CheckpointError(f"{where}: tensor {name!r} has dtype {arr.dtype}, expected {dtype}")
        return arr

    params = {name: get(name) for name in shapes}
    have_adam = any(k.startswith("adam.") for k in tensors)
    adam_m = {n: get(f"adam.m.{n}") for n in shapes} if have_adam else None
    adam_v = {n: get(f"adam.v.{n}") for n in shapes} if have_adam else None

    train = None
    if "step" in meta:
        missing = [k for k in TRAIN_KEYS if k not in meta]
        if missing:
            raise CheckpointError(f"{where}: training metadata {', '.join(missing)} missing")
        try:
            rng_state = _rng_state_from_json(meta["rng_state"])
        except _PARSE_ERRORS:
            raise CheckpointError(f"{where}: metadata 'rng_state' is malformed") from None
        train_config = _json_field(meta, "train_config", where, "{}")
        if not isinstance(train_config, dict):
            raise CheckpointError(f"{where}: metadata 'train_config' is malformed (not a JSON "
                                  "object)")
        losses = tensors.get("train.losses")
        step = _meta_int(meta, "step", where)
        num_steps = _meta_int(meta, "num_steps", where, 1)
        if step > num_steps:
            raise CheckpointError(f"{where}: step {step} is beyond num_steps {num_steps}")
        if losses is None or losses.ndim != 1 or losses.dtype != np.dtype("<f8"):
            raise CheckpointError(f"{where}: tensor 'train.losses' is missing or malformed")
        if losses.shape[0] != step:
            raise CheckpointError(f"{where}: {losses.shape[0]} losses recorded for {step} steps")
        sha = meta["data_sha256"]
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise CheckpointError(f"{where}: metadata 'data_sha256' is malformed")
        train = TrainState(
            step=step, num_steps=num_steps,
            lr=_meta_float(meta, "lr", where), beta1=_meta_float(meta, "beta1", where),
            beta2=_meta_float(meta, "beta2", where), eps=_meta_float(meta, "eps", where),
            batch_size=_meta_int(meta, "batch_size", where, 1),
            seed=_meta_int(meta, "seed", where, -(2**63)),
            data_sha256=sha, num_docs=_meta_int(meta, "num_docs", where, 1),
            rng_state=rng_state, losses=losses.tolist(), train_config=train_config)
    return Checkpoint(path=path, config=config, dtype=dtype, params=params, adam_m=adam_m,
                      adam_v=adam_v, uchars=uchars, train=train, metadata=dict(meta))


def restore_into(model, ckpt: Checkpoint, *, adam: bool = True) -> None:
    """Copy the checkpoint's parameters (and Adam moments) into ``model``,
    which must have the checkpoint's config and dtype."""
    mine = {k: int(getattr(model, k)) for k in CONFIG_KEYS}
    if mine != ckpt.config or model.dtype != ckpt.dtype:
        raise CheckpointMismatchError(
            f"the model ({mine}, {model.dtype}) does not match the checkpoint "
            f"({ckpt.config}, {ckpt.dtype})")
    flat_p, flat_m, flat_v = (_flat(model, a) for a in ("flat_params", "adam_m", "adam_v"))
    for name, (off, shape) in model_layout(model).items():
        size = shape[0] * shape[1]
        flat_p[off:off + size] = ckpt.params[name].reshape(-1)
        if adam:
            if ckpt.adam_m is None or ckpt.adam_v is None:
                flat_m[off:off + size] = 0
                flat_v[off:off + size] = 0
            else:
                flat_m[off:off + size] = ckpt.adam_m[name].reshape(-1)
                flat_v[off:off + size] = ckpt.adam_v[name].reshape(-1)
