"""The SPEC's sampling (:func:`sample_names`), run by the C core when it can
(``GPT.sample_tokens``) and by a Python loop otherwise, and the checks of a
sampling prefix."""
from __future__ import annotations

import random
from typing import Any, Callable, List, Optional

from . import _core
from . import data as data_mod
from .config import check_temperature
from .errors import MicrogptError, SequenceLengthError, VocabularyError
from .validate import optional_positive_int, positive_float, positive_int

__all__ = ["check_prefix", "sample_names", "softmax_for"]


def softmax_for(model) -> Callable[..., Any]:
    if getattr(model, "backend", "c") == "reference":
        return model.softmax_temperature
    return _core.softmax_temperature


def sample_names(model, tokenizer: data_mod.Tokenizer, rng: random.Random, num_samples: int,
                 temperature: float, top_k: Optional[int] = None,
                 prefix: str = "") -> List[str]:
    """The SPEC's sampling: from BOS, one ``rng.choices`` draw per position,
    stopping at BOS or the end of the block.  ``prefix`` characters are fed
    first (no draws); ``top_k`` zeroes all but the k largest logits'
    probabilities (ties: lower token id first)."""
    positive_int(num_samples, "num_samples", minimum=0)
    positive_float(temperature, "temperature")
    check_temperature(temperature)
    optional_positive_int(top_k, "top-k")
    ids = check_prefix(prefix, tokenizer, model.block_size)
    use_top_k = top_k is not None and top_k < tokenizer.vocab_size
    fast = _sample_in_c(model, tokenizer, rng, num_samples, float(temperature),
                        top_k if use_top_k else 0, prefix, ids)
    if fast is not None:
        return fast
    return _sample_in_python(model, tokenizer, rng, num_samples, temperature,
                             top_k if use_top_k else None, prefix, ids)


def _sample_in_python(model, tokenizer, rng, num_samples, temperature, top_k, prefix, ids):
    """sample_names' loop in Python (any backend, any ``rng``); ``top_k``
    None keeps every token."""
    import numpy as np

    softmax = softmax_for(model)
    population = range(tokenizer.vocab_size)
    samples = []
    for _ in range(num_samples):
        token, out = tokenizer.bos, list(prefix)
        for pos, forced in enumerate(ids):
            model.logits(token, pos)          # fills the KV cache
            token = forced
        for pos in range(len(ids), model.block_size):
            logits = model.logits(token, pos)
            probs = softmax(logits, temperature)
            if top_k is not None:
                keep = np.argsort(-np.asarray(logits), kind="stable")[:top_k]
                masked = np.zeros_like(probs)
                masked[keep] = probs[keep]
                probs = masked
            token = rng.choices(population, weights=probs.tolist())[0]
            if token == tokenizer.bos:
                break
            out.append(tokenizer.uchars[token])
        samples.append("".join(out))
    return samples


def _sample_in_c(model, tokenizer, rng, num_samples, temperature, top_k, prefix, ids):
    """sample_names' loop run by the C core (``GPT.sample_tokens``): the same
    names and the same random stream afterwards as the Python loop, for a
    plain ``random.Random`` (whose state the C code steps as CPython does).
    None (the caller runs the Python loop) for any other generator or backend,
    and on any error, with the stream restored, so that the Python loop
    raises exactly what it always has."""
    if type(rng) is not random.Random or not hasattr(model, "sample_tokens") \
            or getattr(model, "backend", "c") == "reference":
        return None
    state = rng.getstate()
    try:
        drawn, after = model.sample_tokens(state, temperature, top_k, ids, tokenizer.bos,
                                           num_samples)
    except (MicrogptError, ValueError, TypeError, OverflowError):
        rng.setstate(state)
        return None
    rng.setstate(after)
    chars = tokenizer.uchars
    return [prefix + "".join(chars[t] for t in d) for d in drawn]


def check_prefix(prefix: str, tokenizer: data_mod.Tokenizer, block_size: int) -> List[int]:
    """The token ids of a sampling prefix; raises VocabularyError naming the
    characters that are not in the vocabulary, SequenceLengthError if it is
    longer than the block."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    unknown = sorted(set(prefix) - set(tokenizer.uchars))
    if unknown:
        raise VocabularyError(
            f"the prefix {prefix!r} has characters that are not in the model's vocabulary: "
            f"{', '.join(repr(c) for c in unknown)} (the vocabulary is "
            f"{''.join(tokenizer.uchars)!r})")
    if len(prefix) > block_size:
        raise SequenceLengthError(f"the prefix has {len(prefix)} characters but the model's "
                                  f"block_size is {block_size}")
    return tokenizer.encode(prefix)
