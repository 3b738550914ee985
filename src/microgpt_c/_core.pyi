"""Type stubs for the Cython module microgpt_c._core (see _core.pyx)."""
import random
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Tokens = Union[Sequence[int], npt.NDArray[np.integer]]
_Float = Union[np.float64, np.float32]

DTYPES: Dict[str, int]
LAYER_TENSORS: Tuple[str, ...]

def tensor_names(n_layer: int) -> List[str]: ...

class GPT:
    """The microgpt model on the C core; parameters are NumPy views of C buffers."""
    dtype: Literal["float64", "float32"]
    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    block_size: int
    params: Dict[str, npt.NDArray[_Float]]
    grads: Dict[str, npt.NDArray[_Float]]
    flat_params: npt.NDArray[_Float]
    flat_grads: npt.NDArray[_Float]
    adam_m: npt.NDArray[_Float]
    adam_v: npt.NDArray[_Float]
    def __init__(self, vocab_size: int, n_layer: int = 1, n_embd: int = 16, n_head: int = 4,
                 block_size: int = 16, dtype: str = "float64",
                 max_tokens: Optional[int] = None) -> None: ...
    @property
    def num_params(self) -> int: ...
    @property
    def config(self) -> Dict[str, int]: ...
    def init_weights(self, rng: random.Random, std: float = 0.08) -> None: ...
    def forward_backward(self, tokens: _Tokens) -> float: ...
    def forward_backward_batch(self, sequences: Sequence[_Tokens],
                               total_docs: Optional[int] = None) -> float: ...
    def forward(self, tokens: _Tokens) -> float: ...
    def forward_batch(self, sequences: Sequence[_Tokens],
                      total_docs: Optional[int] = None) -> float: ...
    def backward(self) -> None: ...
    def zero_grad(self) -> None: ...
    def adam_step(self, lr_t: float, t: int, beta1: float = 0.85, beta2: float = 0.99,
                  eps: float = 1e-8) -> None: ...
    def train_steps(self, corpus: _Tokens, doc_starts: Union[Sequence[int], npt.NDArray[np.integer]],
                    step0: int, n_steps: int, num_steps: int, batch_size: int = 1,
                    lr: float = 0.01, beta1: float = 0.85, beta2: float = 0.99,
                    eps: float = 1e-8, *, warmup_steps: int = 0, lr_schedule: str = "linear",
                    min_lr: float = 0.0, weight_decay: float = 0.0, grad_clip: float = 0.0
                    ) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
    def step_share(self, corpus: _Tokens, doc_starts: Union[Sequence[int], npt.NDArray[np.integer]],
                   step: int, batch_size: int, lo: int, hi: int) -> float: ...
    def step_update(self, step: int, num_steps: int, lr: float = 0.01, beta1: float = 0.85,
                    beta2: float = 0.99, eps: float = 1e-8, *, warmup_steps: int = 0,
                    lr_schedule: str = "linear", min_lr: float = 0.0, weight_decay: float = 0.0,
                    grad_clip: float = 0.0) -> float: ...
    def grad_norm(self) -> float: ...
    def logits(self, token: int, pos: int) -> npt.NDArray[np.float64]: ...
    def sample_tokens(self, rng_state: Tuple[Any, ...], temperature: float, top_k: int,
                      prefix: Sequence[int], bos: int,
                      num_samples: int) -> Tuple[List[List[int]], Tuple[Any, ...]]: ...

LR_SCHEDULES: Tuple[str, ...]

def schedule_lr(step: int, num_steps: int, lr: float = 0.01, *, warmup_steps: int = 0,
                lr_schedule: str = "linear", min_lr: float = 0.0) -> float: ...

def softmax_temperature(logits: Union[Sequence[float], npt.NDArray[np.floating]],
                        temperature: float = 1.0) -> npt.NDArray[np.float64]: ...

class Adam:
    model: GPT
    lr: float
    num_steps: int
    beta1: float
    beta2: float
    eps: float
    step_count: int
    def __init__(self, model: GPT, lr: float = 0.01, num_steps: int = 1000, beta1: float = 0.85,
                 beta2: float = 0.99, eps: float = 1e-8) -> None: ...
    def lr_at(self, step: int) -> float: ...
    def step(self) -> float: ...

def openmp_enabled() -> bool: ...
def get_num_threads() -> int: ...
MAX_THREADS: int

def set_num_threads(n: int) -> None: ...
def simd_variant() -> str: ...
