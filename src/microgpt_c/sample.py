"""Sample names (documents) from a checkpoint.

``python -m microgpt_c.sample --checkpoint run/checkpoint.safetensors`` prints
``sample  N: name`` lines.  With no other flag it prints exactly the names the
training run that wrote the checkpoint printed at its end: the sampling
settings (temperature, number of samples, top-k, prefix) default to that run's
and the random stream continues from the state saved in the checkpoint.
``--seed`` starts a fresh ``random.Random(seed)`` stream instead.

Errors (a missing, corrupted or foreign checkpoint, a prefix with characters
outside the vocabulary, ...) print one line ``error: ...`` on stderr and exit
with status 2.  Ctrl-C ends it with one line ``interrupted`` (status 130),
SIGTERM with ``terminated (SIGTERM)`` (status 143).
"""
from __future__ import annotations

import argparse
import random
import sys
from typing import Any, Dict, List, Optional

from . import data as data_mod
from ._version import __version__
from .checkpoint import Checkpoint, load_checkpoint
from .cli import (EXPECTED_ERRORS, ArgumentParser, broken_pipe, error, format_samples,
                  format_text_samples, interrupted, nonneg_int, one_line, positive_float,
                  positive_int, sigterm_raises, terminated, thread_count,
                  warnings_as_notices)
from .errors import MicrogptError, Terminated
from .model import GPT
from .resume import check_finite_parameters, sampling_defaults
from .sampling import default_text_prefix, generate, sample_names
from .validate import optional_positive_int

__all__ = ["build_parser", "checkpoint_data_mode", "main", "sample_checkpoint"]

TEXT_SAMPLE_TOKENS = 500  # text mode: characters per sample without --max-new-tokens


def checkpoint_data_mode(ckpt: Checkpoint) -> str:
    """'text' if the run that wrote ``ckpt`` trained in text mode, else 'lines'."""
    tc = ckpt.train.train_config if ckpt.train is not None else {}
    return "text" if tc.get("data_mode") == "text" else "lines"


def sample_checkpoint(ckpt: Checkpoint, *, num_samples: Optional[int] = None,
                      temperature: Optional[float] = None, top_k: Optional[int] = None,
                      prefix: Optional[str] = None, seed: Optional[int] = None,
                      threads: Optional[int] = None, model: Optional[GPT] = None,
                      max_new_tokens: Optional[int] = None) -> List[str]:
    """Sample from a loaded checkpoint.  Settings left as None take the values
    of the run that wrote it (else the SPEC's defaults); ``seed=None``
    continues the checkpoint's saved random stream (``random.Random(42)``
    for a checkpoint without training state)."""
    from ._core import set_num_threads

    if ckpt.uchars is None:
        raise MicrogptError(f"{ckpt.path} has no vocabulary (it was saved without a "
                            "tokenizer), so it cannot be sampled from")
    check_finite_parameters(ckpt, adam=False)
    if optional_positive_int(threads, "threads") is not None:
        set_num_threads(threads)
    settings: Dict[str, Any] = {"num_samples": 20, "temperature": 0.5, "top_k": None,
                                "prefix": "", "max_new_tokens": None}
    settings.update(sampling_defaults(ckpt))
    for key, value in (("num_samples", num_samples), ("temperature", temperature),
                       ("top_k", top_k), ("prefix", prefix), ("max_new_tokens", max_new_tokens)):
        if value is not None:
            settings[key] = value
    if model is None:
        model = GPT.from_checkpoint(ckpt)
    tokenizer = data_mod.Tokenizer.from_dict({"uchars": ckpt.uchars})
    if seed is not None:
        rng = random.Random(seed)
    elif ckpt.train is not None:
        rng = random.Random()
        rng.setstate(ckpt.train.rng_state)
    else:
        rng = random.Random(42)
    if checkpoint_data_mode(ckpt) == "text":
        return generate(model, tokenizer, rng, settings["num_samples"],
                        settings["max_new_tokens"] or TEXT_SAMPLE_TOKENS,
                        settings["temperature"], top_k=settings["top_k"],
                        prefix=settings["prefix"] or default_text_prefix(tokenizer),
                        text_mode=True)
    if settings["max_new_tokens"] is not None:
        return generate(model, tokenizer, rng, settings["num_samples"],
                        settings["max_new_tokens"], settings["temperature"],
                        top_k=settings["top_k"], prefix=settings["prefix"])
    return sample_names(model, tokenizer, rng, settings["num_samples"], settings["temperature"],
                        top_k=settings["top_k"], prefix=settings["prefix"])


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m microgpt_c.sample",
        description="Sample new documents (names) from a microgpt_c checkpoint. With only "
                    "--checkpoint it prints the same names the training run printed.")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="checkpoint file, or a training output directory (--out) holding "
                        "checkpoint.safetensors")
    p.add_argument("--num-samples", type=nonneg_int, default=None, metavar="N",
                   help="number of samples (default: the training run's, else 20)")
    p.add_argument("--temperature", type=positive_float, default=None, metavar="T",
                   help="sampling temperature > 0; lower is more conservative (default: the "
                        "training run's, else 0.5)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                   help="sample only from the K most likely next characters (default: all)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed a fresh random stream (default: continue the checkpoint's saved "
                        "stream, which reproduces the training run's samples)")
    p.add_argument("--prefix", default=None, metavar="TEXT",
                   help="start every sample with TEXT (its characters must be in the "
                        "vocabulary; text mode default: a newline)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                   help="generate N characters per sample, past the block (the context cropped "
                        "to the last block_size characters); lines mode still stops at the end "
                        "of a document (default: the training run's; else lines mode stops at "
                        f"the end of a document or the block, text mode makes "
                        f"{TEXT_SAMPLE_TOKENS})")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N",
                   help="OpenMP threads, at most 1024 (default: $OMP_NUM_THREADS or all cores)")
    p.add_argument("--version", action="version", version=f"microgpt_c {__version__}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_raises():
            with warnings_as_notices(sys.stderr):
                ckpt = load_checkpoint(args.checkpoint)
            samples = sample_checkpoint(ckpt, num_samples=args.num_samples,
                                        temperature=args.temperature, top_k=args.top_k,
                                        prefix=args.prefix, seed=args.seed,
                                        threads=args.threads,
                                        max_new_tokens=args.max_new_tokens)
            text = checkpoint_data_mode(ckpt) == "text"
            sys.stdout.write(format_text_samples(samples) if text else format_samples(samples))
            sys.stdout.flush()
    except Terminated:   # SIGTERM: one line and 143, as Ctrl-C is one line and 130
        return terminated()
    except KeyboardInterrupt:
        return interrupted()
    except BrokenPipeError:
        return broken_pipe()
    except EXPECTED_ERRORS as err:
        return error(one_line(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
