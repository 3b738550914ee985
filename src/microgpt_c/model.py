"""The C-backed :class:`GPT` with a tokenizer, training state, checkpoints
(``save``/``load``) and sampling; :func:`make_model` for either backend."""
from __future__ import annotations

import random
from pathlib import Path
from typing import List, Optional

from . import _core
from . import data as data_mod
from .checkpoint import Checkpoint, TrainState, load_checkpoint, restore_into, save_checkpoint
from .config import PathArg, TrainConfig
from .errors import ConfigError
from .resume import non_finite_tensor
from .sampling import sample_names

__all__ = ["GPT", "load", "make_model"]


class GPT(_core.GPT):
    """The C-backed GPT (see :class:`microgpt_c._core.GPT`) plus a tokenizer,
    the training state, checkpoints and sampling.

    ``GPT(vocab_size, n_layer=1, n_embd=16, n_head=4, block_size=16,
    dtype="float64")``; ``params``/``grads`` are NumPy views of the C buffers.
    """

    tokenizer: Optional[data_mod.Tokenizer] = None
    train_state: Optional[TrainState] = None
    checkpoint_path: Optional[Path] = None         # set by from_checkpoint / load
    checkpoint_non_finite: Optional[str] = None    # a parameter that was NaN/inf in it

    def save(self, path: PathArg) -> Path:
        """Write a checkpoint (parameters, Adam moments, vocabulary and, if the
        model came from :func:`train` or a checkpoint, the training state) to
        ``path`` atomically; ``path`` may be a directory.  Returns the file."""
        uchars = "".join(self.tokenizer.uchars) if self.tokenizer is not None else None
        return save_checkpoint(path, self, uchars=uchars, train=self.train_state)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> "GPT":
        """A model with the checkpoint's config, dtype, parameters, Adam
        moments, tokenizer and training state."""
        model = cls(dtype=ckpt.dtype, **ckpt.config)
        restore_into(model, ckpt)
        # where the parameters came from, and the first of them that holds a
        # NaN/inf there: sampling then names the checkpoint, as the CLIs do
        model.checkpoint_path = ckpt.path
        bad = non_finite_tensor(ckpt, adam=False)
        model.checkpoint_non_finite = bad[1] if bad is not None else None
        if ckpt.uchars is not None:
            model.tokenizer = data_mod.Tokenizer.from_dict({"uchars": ckpt.uchars})
        model.train_state = ckpt.train
        return model

    @classmethod
    def load(cls, path: PathArg) -> "GPT":
        """Load a checkpoint written by :meth:`save` or by training (``path``
        may be the run's output directory).  Raises CheckpointError."""
        return cls.from_checkpoint(load_checkpoint(path))

    def sample(self, num_samples: int = 20, temperature: float = 0.5, *,
               top_k: Optional[int] = None, prefix: str = "", seed: Optional[int] = None,
               rng: Optional[random.Random] = None) -> List[str]:
        """Sample ``num_samples`` documents as the SPEC does.

        The random stream is ``rng`` if given, else ``random.Random(seed)`` if
        ``seed`` is given, else the stream saved with the training state (so a
        model from :func:`train` or a checkpoint reproduces the names printed at
        the end of its training run), else ``random.Random(42)``.  ``top_k``
        keeps only the k most likely tokens; ``prefix`` starts every sample
        with that text.  A model whose parameters hold NaN/inf (a checkpoint
        of a run that diverged) raises CheckpointError naming the checkpoint
        and the parameter."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer (vocabulary); set model.tokenizer "
                              "or load it from a checkpoint")
        if rng is None:
            rng = random.Random(42 if seed is None else seed)
            if seed is None and self.train_state is not None:
                rng.setstate(self.train_state.rng_state)
        return sample_names(self, self.tokenizer, rng, num_samples, temperature,
                            top_k=top_k, prefix=prefix)


def load(path: PathArg) -> GPT:
    """Same as :meth:`GPT.load`."""
    return GPT.load(path)


def make_model(cfg: TrainConfig, vocab_size: int):
    """A fresh (zero) model of ``cfg``'s size for the configured backend."""
    if cfg.backend == "reference":
        from .pymodel import ReferenceBackendGPT
        return ReferenceBackendGPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head,
                                   cfg.block_size, cfg.dtype)
    return GPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size, cfg.dtype,
               max_tokens=cfg.block_size * cfg.batch_size)
