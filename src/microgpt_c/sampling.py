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

__all__ = ["check_finite_model", "check_prefix", "default_text_prefix", "generate", "sample_names",
           "softmax_for"]

C_SAMPLE_CHUNK = 4096  # names per call of the C sampler at the most


def softmax_for(model) -> Callable[..., Any]:
    if getattr(model, "backend", "c") == "reference":
        return model.softmax_temperature
    return _core.softmax_temperature


def check_finite_model(model) -> None:
    """Refuse to sample from a (C backend) model whose parameters hold a NaN
    or an infinity: CheckpointError naming the checkpoint and the parameter
    if it came from one that held them (``GPT.load``; the CLIs' message),
    else NonFiniteLossError naming the parameter (instead of the softmax's
    "loss or gradient is not finite" at the first draw)."""
    import numpy as np

    flat = getattr(model, "flat_params", None)
    if not isinstance(flat, np.ndarray) or np.isfinite(flat).all():
        return
    from .checkpoint import model_layout
    from .errors import CheckpointError, NonFiniteLossError
    from .resume import non_finite_message

    in_checkpoint = getattr(model, "checkpoint_non_finite", None)
    if in_checkpoint is not None:
        raise CheckpointError(non_finite_message(model.checkpoint_path, "parameter",
                                                 in_checkpoint))
    name = next((n for n, (off, shape) in model_layout(model).items()
                 if not np.isfinite(flat[off:off + shape[0] * shape[1]]).all()), "?")
    raise NonFiniteLossError(f"the model's parameter {name!r} holds non-finite values (NaN or "
                             "inf), so it cannot be sampled from; load or train finite "
                             "parameters")


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
    check_finite_model(model)
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
    chars = tokenizer.uchars
    samples: List[str] = []
    after = state
    try:
        # in calls of at most C_SAMPLE_CHUNK names, each continuing the stream
        # where the last one left it (the same names as one call): a signal
        # (Ctrl-C, SIGTERM) is handled between two calls, not after all of them
        for lo in range(0, num_samples, C_SAMPLE_CHUNK):
            drawn, after = model.sample_tokens(after, temperature, top_k, ids, tokenizer.bos,
                                               min(C_SAMPLE_CHUNK, num_samples - lo))
            samples.extend(prefix + "".join(chars[t] for t in d) for d in drawn)
    except (MicrogptError, ValueError, TypeError, OverflowError):
        rng.setstate(state)
        return None
    rng.setstate(after)
    return samples


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


def default_text_prefix(tokenizer: data_mod.Tokenizer) -> str:
    """Where a text-mode sample starts without ``--prefix``: a newline, or
    (a text without one) its first character in the vocabulary."""
    return "\n" if "\n" in tokenizer.uchars else tokenizer.uchars[0]


def generate(model, tokenizer: data_mod.Tokenizer, rng: random.Random, num_samples: int,
             max_new_tokens: int, temperature: float, top_k: Optional[int] = None,
             prefix: str = "", text_mode: bool = False) -> List[str]:
    """Generate ``max_new_tokens`` tokens per sample, past the block if need
    be (nanoGPT's ``generate``: the context is cropped to its last
    block_size tokens).  Lines mode (``text_mode`` False): the context starts
    as ``[BOS] + prefix`` and a sample stops early at BOS (the SPEC's
    sampling, without the block limit).  Text mode: the context is the
    prefix alone (training windows have no BOS; BOS is never drawn) and
    every sample has exactly ``max_new_tokens`` characters after it.

    One ``rng.choices`` draw per token, as the SPEC's sampling.  The KV cache:
    while the context fits in the block each token costs one forward; when
    it is full, the cache is rebuilt from the last ``block_size // 2`` tokens
    (that many forwards), so the model always sees between block_size // 2
    and block_size tokens of context and a token costs at most 2 forwards on
    average (re-feeding the whole cropped window for every token, exact
    nanoGPT, would cost block_size)."""
    import numpy as np

    positive_int(num_samples, "num_samples", minimum=0)
    positive_int(max_new_tokens, "max_new_tokens")
    positive_float(temperature, "temperature")
    check_temperature(temperature)
    optional_positive_int(top_k, "top-k")
    T = model.block_size
    ids = check_prefix(prefix, tokenizer, T if not text_mode else max(T, len(prefix)))
    if text_mode and not ids:
        raise VocabularyError("a text-mode sample needs a prefix of at least one character")
    check_finite_model(model)
    softmax = softmax_for(model)
    population = range(tokenizer.vocab_size)
    bos = tokenizer.bos
    keep = max(1, T // 2)
    samples = []

    def feed(tokens):
        logits = None
        for pos, tok in enumerate(tokens):
            logits = model.logits(tok, pos)
        return logits

    for _ in range(num_samples):
        context = list(ids) if text_mode else [bos, *ids]
        out = list(prefix)
        window = context[-T:]
        logits = feed(window)
        filled = len(window)
        for _ in range(max_new_tokens):
            probs = np.asarray(softmax(logits, temperature), dtype=np.float64)
            if top_k is not None and top_k < tokenizer.vocab_size:
                keep_ids = np.argsort(-np.asarray(logits), kind="stable")[:top_k]
                masked = np.zeros_like(probs)
                masked[keep_ids] = probs[keep_ids]
                probs = masked
            if text_mode:
                probs[bos] = 0.0
            token = rng.choices(population, weights=probs.tolist())[0]
            if token == bos:
                break
            out.append(tokenizer.uchars[token])
            context.append(token)
            if filled < T:
                logits = model.logits(token, filled)
                filled += 1
            else:  # the block is full: rebuild the cache from the last `keep` tokens
                logits = feed(context[-keep:])
                filled = keep
        samples.append("".join(out))
    return samples
