"""Shared pieces of the benchmarks: data, model sizes, timing, measurements.

Used by ``bench/run.py`` (the report) and ``tests/test_benchmarks.py`` (the
pytest-benchmark hot paths and ratio checks), so both time the same things the
same way.  Everything measures whatever ``microgpt_c`` is installed.
"""
from __future__ import annotations

import hashlib
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from microgpt_c import GPT, NonFiniteLossError
from microgpt_c.data import Tokenizer, pack_corpus

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
NAMES_FILE = ROOT.parent / "shared" / "data" / "names.txt"

SEED = 42
# a learning-rate horizon far beyond any benchmark, so lr_t stays ~lr while timing
TIMING_NUM_STEPS = 10 ** 12


# ------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class Size:
    """A model configuration of the benchmark matrix, with its batch size."""
    label: str
    n_embd: int
    block_size: int
    n_layer: int
    n_head: int = 4
    batch: int = 16             # the batch size of the batched measurements

    def kwargs(self):
        return dict(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                    block_size=self.block_size)


SIZES = [
    Size("16/16", 16, 16, 1, batch=16),
    Size("64/64 1L", 64, 64, 1, batch=32),
    Size("64/64 4L", 64, 64, 4, batch=32),
]
SIZE_BY_LABEL = {s.label: s for s in SIZES}
DTYPES = ("float64", "float32")


# ------------------------------------------------------------------- data
_SYLLABLES = ["a", "an", "ar", "bel", "ca", "da", "el", "em", "fa", "ge", "ha", "is", "ja",
              "ka", "la", "li", "ma", "mi", "na", "ne", "o", "ra", "ri", "sa", "ta", "th",
              "vi", "wy", "xa", "ya", "za", "ly", "qu", "us", "on", "ie"]


def synthetic_names(n: int = 32033, seed: int = 0) -> List[str]:
    """A deterministic list of name-like documents (used when names.txt is absent)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))[:15]
            for _ in range(n)]


@dataclass
class Dataset:
    docs: List[str]             # shuffled with random.Random(SEED), as the SPEC does
    source: str
    tokenizer: Tokenizer
    corpus: np.ndarray          # int32, every document's [BOS] + ids + [BOS] back to back
    starts: np.ndarray          # int64 offsets, len(docs) + 1

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def doc(self, d: int) -> List[int]:
        d %= len(self.docs)
        return self.corpus[self.starts[d]:self.starts[d + 1]].tolist()

    def batch(self, step: int, batch_size: int) -> List[List[int]]:
        """The documents of training step ``step``, indexed as mg_train_steps does."""
        return [self.doc(step * batch_size + b) for b in range(batch_size)]

    def subset(self, n_docs: int) -> "Dataset":
        """The first ``n_docs`` documents (same tokenizer): a small corpus keeps the
        per-call validation of GPT.train_steps out of single-step timings."""
        end = int(self.starts[n_docs])
        return Dataset(self.docs[:n_docs], f"{self.source}, first {n_docs}", self.tokenizer,
                       self.corpus[:end].copy(), self.starts[:n_docs + 1].copy())


def load_dataset(path: Optional[Path] = None) -> Dataset:
    """The names data set (../shared/data/names.txt) if present, else synthetic names."""
    path = NAMES_FILE if path is None else Path(path)
    if path.is_file():
        docs = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        docs, source = [d for d in docs if d], f"{path} ({len(docs)} names)"
    else:
        docs = synthetic_names()
        source = f"synthetic names ({len(docs)}; {path} not found)"
    random.Random(SEED).shuffle(docs)
    tok = Tokenizer(docs)
    corpus, starts = pack_corpus(tok, docs)
    return Dataset(docs, source, tok, corpus, starts)


# ----------------------------------------------------------------- timing
def measure(run: Callable[[int], object], min_time: float = 0.3, repeats: int = 5,
            start: int = 1, max_units: int = 1 << 22) -> float:
    """Median seconds per unit of work.

    ``run(k)`` does ``k`` units (steps, names, calls).  ``k`` starts at ``start``
    and grows until one call takes at least ``min_time``; that call and
    ``repeats - 1`` more with the same ``k`` are timed; the median per unit is
    returned.  With ``min_time=0`` and ``start=1`` this times single units.
    """
    k = start
    while True:
        t0 = time.perf_counter()
        run(k)
        t = time.perf_counter() - t0
        if t >= min_time or k >= max_units:
            break
        k = min(max_units, max(2 * k, int(k * 1.2 * min_time / max(t, 1e-9))))
    times = [t / k]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        run(k)
        times.append((time.perf_counter() - t0) / k)
    return statistics.median(times)


def interleaved(measures: Sequence[Callable[[], float]], rounds: int = 5) -> List[float]:
    """Median of each measurement over ``rounds`` rounds, taken in turn
    (a, b, a, b, ...), so that a change of machine load affects all alike."""
    samples = [[] for _ in measures]
    for _ in range(rounds):
        for s, m in zip(samples, measures):
            s.append(m())
    return [statistics.median(s) for s in samples]


# ------------------------------------------------------------- microgpt_c
def c_model(size: Size, dtype: str, data: Dataset, batch: int = 1, seed: int = SEED) -> GPT:
    """A microgpt_c GPT of ``size`` with the SPEC's init from random.Random(seed)."""
    model = GPT(data.vocab_size, dtype=dtype, max_tokens=size.block_size * batch,
                **size.kwargs())
    model.init_weights(random.Random(seed))
    return model


class CTrainer:
    """``run(k)``: k steps of GPT.train_steps, continuing through the corpus."""

    def __init__(self, model: GPT, data: Dataset, batch: int = 1, lr: float = 0.01):
        self.model, self.data, self.batch, self.lr = model, data, batch, lr
        self.step = 0

    def __call__(self, k: int):
        try:
            losses, _ = self.model.train_steps(self.data.corpus, self.data.starts, self.step,
                                               k, TIMING_NUM_STEPS, self.batch, self.lr)
        except NonFiniteLossError as err:
            # the learning rate does not decay while timing: if a long run diverges,
            # start again from a fresh init (the steps done so far were timed anyway)
            losses = err.losses
            self.model.init_weights(random.Random(self.step))
            self.model.adam_m[:] = 0
            self.model.adam_v[:] = 0
            self.model.zero_grad()
        self.step += k
        return losses


def time_c_step(size: Size, dtype: str, data: Dataset, batch: int = 1,
                min_time: float = 0.3, repeats: int = 5) -> float:
    """Median seconds per training step of microgpt_c (GPT.train_steps)."""
    trainer = CTrainer(c_model(size, dtype, data, batch), data, batch)
    return measure(trainer, min_time, repeats)


def determinism_fingerprint(size: Size, dtype: str, data: Dataset, batch: int,
                            steps: int = 20):
    """Losses (exact floats) and a SHA-256 of the final parameters of a fixed run."""
    model = c_model(size, dtype, data, batch)
    losses, _ = model.train_steps(data.corpus, data.starts, 0, steps, steps, batch)
    digest = hashlib.sha256(np.ascontiguousarray(model.flat_params).tobytes()).hexdigest()
    return [float(x) for x in losses], digest


# ------------------------------------------------------------- baselines
class StepLoop:
    """``run(k)``: k training steps of a Python-driven model with
    ``train_step(seqs, step, num_steps) -> loss`` (reference adapter, NumPy, torch)."""

    def __init__(self, model, data: Dataset, batch: int = 1):
        self.model, self.data, self.batch = model, data, batch
        self.step = 0

    def __call__(self, k: int):
        for _ in range(k):
            self.model.train_step(self.data.batch(self.step, self.batch), self.step,
                                  TIMING_NUM_STEPS)
            self.step += 1


class ReferenceStepper:
    """microgpt_c.reference.ReferenceGPT with the ``train_step`` of StepLoop
    (one document per step, as the reference program)."""

    def __init__(self, size: Size, data: Dataset, seed: int = SEED):
        from microgpt_c.reference import ReferenceGPT
        self.gpt = ReferenceGPT(data.vocab_size, rng=random.Random(seed), **size.kwargs())

    def train_step(self, seqs: Sequence[Sequence[int]], step: int, num_steps: int) -> float:
        if len(seqs) != 1:
            raise ValueError("the reference trains on one document per step")
        loss = self.gpt.forward_backward(seqs[0])
        self.gpt.adam_step(step, num_steps)
        return loss


def time_reference_step(size: Size, data: Dataset, steps: int = 3) -> float:
    """Median seconds of single reference training steps (``steps`` of them)."""
    return measure(StepLoop(ReferenceStepper(size, data), data), 0.0, steps)


def numpy_model(size: Size, dtype: str, data: Dataset, seed: int = SEED):
    from numpy_gpt import NumpyGPT
    model = NumpyGPT(data.vocab_size, dtype=dtype, **size.kwargs())
    model.init_weights(random.Random(seed))
    return model


def time_numpy_step(size: Size, dtype: str, data: Dataset, batch: int = 1,
                    min_time: float = 0.3, repeats: int = 5) -> float:
    return measure(StepLoop(numpy_model(size, dtype, data), data, batch), min_time, repeats)


def torch_available() -> bool:
    """Whether torch is installed (found without importing it: importing it
    costs seconds and ~200 MB)."""
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def torch_model(size: Size, dtype: str, data: Dataset, seed: int = SEED):
    from torch_gpt import TorchGPT
    model = TorchGPT(data.vocab_size, dtype=dtype, **size.kwargs())
    model.init_weights(random.Random(seed))
    return model


def time_torch_step(size: Size, dtype: str, data: Dataset, batch: int = 1,
                    min_time: float = 0.3, repeats: int = 5) -> float:
    return measure(StepLoop(torch_model(size, dtype, data), data, batch), min_time, repeats)


# --------------------------------------------------------------- sampling
def trained_model(size: Size, dtype: str, data: Dataset, steps: int = 1000) -> GPT:
    """A model after the SPEC's default training run (``steps`` steps, lr decaying to 0)."""
    model = c_model(size, dtype, data)
    model.train_steps(data.corpus, data.starts, 0, steps, steps)
    return model


class _PythonLoopRandom(random.Random):
    """random.Random under another type: sample_names then runs its Python
    loop (model.logits + rng.choices per token) instead of the C loop."""


def time_sampling(model: GPT, data: Dataset, min_time: float = 0.3, repeats: int = 5,
                  temperature: float = 0.5, loop: str = "c") -> float:
    """Median seconds per sampled name (KV-cache inference + the SPEC's
    sampling): ``loop="c"`` the C sampling loop (GPT.sample_tokens, what
    sample_names uses), ``"python"`` the Python loop over GPT.logits."""
    from microgpt_c.train import sample_names
    rng = random.Random(SEED) if loop == "c" else _PythonLoopRandom(SEED)
    return measure(lambda k: sample_names(model, data.tokenizer, rng, k, temperature),
                   min_time, repeats)


# ------------------------------------------------------------ peak memory
def peak_rss_kib() -> int:
    """Peak RSS of this process in KiB: VmHWM where /proc has it, else ru_maxrss.

    VmHWM belongs to this process's address space only; Linux's ru_maxrss also
    keeps the parent's peak at the time of the fork/exec that started us."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def default_run(steps: int, data_path: str) -> dict:
    """A default training run (microgpt_c.train.train: 16/16 float64, 20 samples)
    and this process's peak RSS afterwards."""
    from microgpt_c.data import read_documents
    from microgpt_c.train import TrainConfig, train
    result = train(TrainConfig(data=data_path, steps=steps, backend="c"),
                   docs=read_documents(data_path))
    return {"steps": steps, "maxrss_kib": peak_rss_kib(),
            "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "train_seconds": result.seconds, "final_loss": result.losses[-1],
            "samples": result.samples[:5]}


def measure_rss(steps_list: Sequence[int] = (1000, 5000)) -> dict:
    """``default_run`` of each number of steps, each in a fresh Python process."""
    with tempfile.TemporaryDirectory() as tmp:
        data_path = NAMES_FILE
        if not data_path.is_file():
            data_path = Path(tmp) / "names.txt"
            data_path.write_text("\n".join(synthetic_names()) + "\n", encoding="utf-8")
        out = {}
        for steps in steps_list:
            proc = subprocess.run([sys.executable, __file__, "default-run", str(steps),
                                   str(data_path)], stdout=subprocess.PIPE, text=True,
                                  check=True)
            out[str(steps)] = json.loads(proc.stdout.strip().splitlines()[-1])
        return out


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "default-run":
    print(json.dumps(default_run(int(sys.argv[2]), sys.argv[3])))
