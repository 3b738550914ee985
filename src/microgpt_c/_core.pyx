# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Typed Python classes over the C core: GPT (parameters, training, KV-cache
inference) and Adam.  Inputs are validated here, before any C call; C status
codes become the exceptions of microgpt_c.errors; the GIL is released around
all C work."""

from libc.stdint cimport int32_t, int64_t
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES

from ._cmicrogpt cimport *

import operator
import os

import numpy as np

from .errors import (STATUS_EXCEPTIONS, ConfigError, MicrogptError, ModelBusyError,
                     ModelStateError, ModelTooLargeError, NonFiniteLossError,
                     SequenceLengthError, TokenError)

__all__ = ["GPT", "Adam", "softmax_temperature", "openmp_enabled", "get_num_threads",
           "set_num_threads", "simd_variant", "tensor_names"]

DTYPES = {"float64": MG_FLOAT64, "float32": MG_FLOAT32}
LAYER_TENSORS = ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")


cdef int check(int rc, str context) except -1:
    """Turn a C status code into the matching Python exception."""
    if rc == MG_OK:
        return 0
    exc = STATUS_EXCEPTIONS.get(rc, MicrogptError)
    raise exc(f"{context}: {mg_status_string(rc).decode()}")


cdef int as_size(object value, str name, int minimum=1) except? -1:
    """A Python integer >= minimum that fits in a C int, or a clear error."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if v < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {v}")
    if v > 2**31 - 1:
        raise ModelTooLargeError(f"{name}={v} is too large (at most {2**31 - 1})")
    return v


def tensor_names(int n_layer):
    """Parameter names in the SPEC's order."""
    names = ["wte", "wpe", "lm_head"]
    for i in range(n_layer):
        names.extend(f"layer{i}.{t}" for t in LAYER_TENSORS)
    return names


def _available_memory():
    """Bytes of memory available to allocate, or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


cdef char *FMT_F64 = b"d"
cdef char *FMT_F32 = b"f"


cdef class _View:
    """Exports a slice of a model's C buffer through the buffer protocol and
    keeps the model alive while any NumPy array made from it exists."""
    cdef object owner
    cdef char *ptr
    cdef Py_ssize_t shape[2]
    cdef Py_ssize_t strides[2]
    cdef int ndim
    cdef Py_ssize_t itemsize

    def __getbuffer__(self, Py_buffer *buf, int flags):
        buf.buf = self.ptr
        buf.obj = self
        buf.itemsize = self.itemsize
        buf.len = self.shape[0] * (self.shape[1] if self.ndim == 2 else 1) * self.itemsize
        buf.readonly = 0
        buf.ndim = self.ndim
        buf.format = NULL
        if flags & PyBUF_FORMAT:
            buf.format = FMT_F64 if self.itemsize == 8 else FMT_F32
        buf.shape = self.shape
        buf.strides = self.strides
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass


cdef object make_view(object owner, void *base, size_t offset, size_t itemsize,
                      Py_ssize_t rows, Py_ssize_t cols):
    cdef _View v = _View.__new__(_View)
    v.owner = owner
    v.ptr = <char *>base + offset * itemsize
    v.itemsize = itemsize
    if cols > 0:
        v.ndim = 2
        v.shape[0], v.shape[1] = rows, cols
        v.strides[0], v.strides[1] = cols * itemsize, itemsize
    else:
        v.ndim = 1
        v.shape[0] = rows
        v.strides[0] = itemsize
    return np.asarray(v)


FLOAT32_MAX = 3.4028234663852886e38


cdef int check_adam_settings(double lr, double beta1, double beta2, double eps,
                             str dtype) except -1:
    if not (lr > 0 and lr < float("inf")):
        raise ConfigError(f"lr (the learning rate) must be a positive finite number, got {lr}")
    if dtype == "float32" and lr >= FLOAT32_MAX:
        raise ConfigError(f"lr (the learning rate) {lr} does not fit in float32 "
                          f"(at most {FLOAT32_MAX:.3g})")
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ConfigError(f"beta1 and beta2 must be in [0, 1), got {beta1} and {beta2}")
    if not (eps > 0 and eps < float("inf")):
        raise ConfigError(f"eps must be a positive finite number, got {eps}")
    return 0


cdef object token_array(object tokens, int vocab_size, str what, bint check_range=True):
    """A validated, C-contiguous 1-D int32 array of token ids.  With
    check_range=False an int32 array's ids are left for the C core to check
    (it validates them anyway); other dtypes are always checked, since the
    conversion to int32 could wrap them around."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must contain integers, got dtype {arr.dtype}")
    if arr.size and (check_range or arr.dtype != np.int32):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= vocab_size:
            bad = int(np.flatnonzero((arr < 0) | (arr >= vocab_size))[0])
            raise TokenError(f"{what}[{bad}] = {int(arr[bad])} is not a token id "
                             f"(valid ids are 0..{vocab_size - 1})")
    return np.ascontiguousarray(arr, dtype=np.int32)


LR_SCHEDULES = ("linear", "cosine", "constant")


cdef mg_schedule make_schedule(long num_steps, double lr, double beta1, double beta2,
                               double eps, long warmup_steps, str lr_schedule, double min_lr,
                               double weight_decay, double grad_clip) except *:
    """The C schedule of these settings; ValueError naming a bad one."""
    cdef mg_schedule S
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                         f"got {lr_schedule!r}")
    S.lr, S.beta1, S.beta2, S.eps, S.num_steps = lr, beta1, beta2, eps, num_steps
    S.warmup_steps = warmup_steps
    S.kind = LR_SCHEDULES.index(lr_schedule)
    S.min_lr, S.weight_decay, S.grad_clip = min_lr, weight_decay, grad_clip
    if not 0 <= warmup_steps < num_steps:
        raise ValueError(f"warmup_steps must be in [0, num_steps), got {warmup_steps} "
                         f"(num_steps {num_steps})")
    if not 0 <= min_lr <= lr:
        raise ValueError(f"min_lr must be in [0, lr], got {min_lr!r} (lr {lr!r})")
    if not (weight_decay >= 0 and weight_decay != float("inf")):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not (grad_clip >= 0 and grad_clip != float("inf")):
        raise ValueError(f"grad_clip must be a finite number >= 0 (0: off), got {grad_clip!r}")
    check(mg_schedule_check(&S), "schedule")
    return S


def schedule_lr(long step, long num_steps, double lr=0.01, *, long warmup_steps=0,
                str lr_schedule="linear", double min_lr=0.0):
    """lr_t of 0-based step ``step`` (csrc/train.c's mg_schedule_lr): with the
    defaults the SPEC's lr * (1 - step / num_steps)."""
    cdef mg_schedule S = make_schedule(num_steps, lr, 0.85, 0.99, 1e-8, warmup_steps,
                                       lr_schedule, min_lr, 0.0, 0.0)
    return mg_schedule_lr(&S, step)


cdef class _Handle:
    """Owns the C model.  The GPT object and every NumPy view of its buffers
    reference the handle (never the GPT), so there is no reference cycle and
    the memory is freed as soon as the model and its views are gone."""
    cdef mg_model *m

    def __dealloc__(self):
        if self.m is not NULL:
            mg_model_free(self.m)
            self.m = NULL


cdef class GPT:
    """The microgpt model on the C core.

    ``GPT(vocab_size, n_layer=1, n_embd=16, n_head=4, block_size=16,
    dtype="float64")``.  Parameters are zero until :meth:`init_weights` (or
    assignment through :attr:`params`).  ``params[name]`` and ``grads[name]``
    are NumPy views of the C buffers (names as in the SPEC); they keep the
    model alive.  One model must not be used by two threads at once: a second
    concurrent call raises :class:`~microgpt_c.errors.ModelBusyError`.
    """
    cdef mg_model *_m          # borrowed from _handle, which owns it
    cdef _Handle _handle
    cdef bint _busy
    cdef readonly str dtype
    cdef readonly int vocab_size, n_layer, n_embd, n_head, block_size
    cdef readonly object params, grads
    cdef readonly object flat_params, flat_grads, adam_m, adam_v
    cdef object _logits

    def __cinit__(self, vocab_size, n_layer=1, n_embd=16, n_head=4, block_size=16,
                  dtype="float64", max_tokens=None):
        cdef mg_config cfg
        cdef size_t nbytes = 0, offset, rows, cols, tokens
        cdef int rc, dt
        cdef mg_model *m = NULL
        self._m = NULL
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        cfg.vocab_size = as_size(vocab_size, "vocab_size", 2)
        cfg.n_layer = as_size(n_layer, "n_layer")
        cfg.n_embd = as_size(n_embd, "n_embd")
        cfg.n_head = as_size(n_head, "n_head")
        cfg.block_size = as_size(block_size, "block_size")
        if cfg.n_embd % cfg.n_head:
            raise ConfigError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
        dt = DTYPES[dtype]
        tokens = cfg.block_size if max_tokens is None else as_size(max_tokens, "max_tokens")
        rc = mg_model_bytes(&cfg, dt, tokens, &nbytes)
        if rc == MG_ERR_OVERFLOW:
            raise ModelTooLargeError(
                "this configuration's buffers would not fit in memory "
                "(their size overflows a 64-bit count); reduce n_embd, n_layer, "
                "block_size or vocab_size")
        check(rc, "invalid configuration")
        avail = _available_memory()
        if avail is not None and nbytes > avail:
            raise ModelTooLargeError(
                f"this configuration needs {nbytes / 2**30:.2f} GiB but only "
                f"{avail / 2**30:.2f} GiB of memory is available; reduce n_embd, "
                "n_layer, block_size or vocab_size")
        with nogil:
            rc = mg_model_create(&m, &cfg, dt, tokens)
        check(rc, f"could not create the model ({nbytes} bytes)")
        self._handle = _Handle.__new__(_Handle)
        self._handle.m = m
        self._m = m
        owner = self._handle
        self.dtype = dtype
        self.vocab_size, self.n_layer, self.n_embd = cfg.vocab_size, cfg.n_layer, cfg.n_embd
        self.n_head, self.block_size = cfg.n_head, cfg.block_size
        itemsize = 8 if dtype == "float64" else 4
        n = mg_model_num_params(m)
        self.flat_params = make_view(owner, mg_model_params(m), 0, itemsize, n, 0)
        self.flat_grads = make_view(owner, mg_model_grads(m), 0, itemsize, n, 0)
        self.adam_m = make_view(owner, mg_model_adam_m(m), 0, itemsize, n, 0)
        self.adam_v = make_view(owner, mg_model_adam_v(m), 0, itemsize, n, 0)
        self.params, self.grads = {}, {}
        for i, name in enumerate(tensor_names(cfg.n_layer)):
            check(mg_tensor_info(&cfg, i, &offset, &rows, &cols), "tensor layout")
            self.params[name] = make_view(owner, mg_model_params(m), offset, itemsize, rows, cols)
            self.grads[name] = make_view(owner, mg_model_grads(m), offset, itemsize, rows, cols)
        self._logits = np.zeros(cfg.vocab_size, dtype=np.float64)

    # ------------------------------------------------------------ helpers
    cdef int _enter(self) except -1:
        if self._busy:
            raise ModelBusyError("this GPT is in use by another thread; use one model "
                                 "per thread (or a lock)")
        self._busy = True
        return 0

    @property
    def num_params(self):
        return mg_model_num_params(self._m)

    @property
    def config(self):
        return {"vocab_size": self.vocab_size, "n_layer": self.n_layer,
                "n_embd": self.n_embd, "n_head": self.n_head, "block_size": self.block_size}

    def __repr__(self):
        return (f"GPT(vocab_size={self.vocab_size}, n_layer={self.n_layer}, "
                f"n_embd={self.n_embd}, n_head={self.n_head}, block_size={self.block_size}, "
                f"dtype={self.dtype!r})")

    def init_weights(self, rng, double std=0.08):
        """Draw every parameter from ``rng.gauss(0, std)`` in the SPEC's order
        (a ``random.Random``; the same stream the reference uses)."""
        gauss = rng.gauss
        values = [gauss(0.0, std) for _ in range(mg_model_num_params(self._m))]
        self._enter()
        try:
            self.flat_params[:] = values
        finally:
            self._busy = False

    # ----------------------------------------------------------- training
    def forward_backward(self, tokens):
        """Loss of one document ``tokens = [BOS] + ids + [BOS]`` (truncated to
        the block) and its gradient, ACCUMULATED into :attr:`grads`."""
        return self.forward_backward_batch([tokens])

    def forward_backward_batch(self, sequences, total_docs=None):
        """Mean over the documents of each one's mean token loss; gradients
        accumulated.  Documents are packed back to back; attention never
        crosses a document boundary.  See :meth:`forward_batch` for
        ``total_docs``."""
        loss = self.forward_batch(sequences, total_docs)
        self.backward()
        return loss

    def forward(self, tokens):
        """Loss of one document, saving activations for :meth:`backward`."""
        return self.forward_batch([tokens])

    def forward_batch(self, sequences, total_docs=None):
        """Forward a batch; ``total_docs`` (default: the number of documents)
        is the count the loss is averaged over, so that shares of one batch
        (e.g. one per MPI rank) have losses and gradients that add up."""
        cdef double loss = 0
        cdef int rc, n_docs, total
        inputs, targets, lens = [], [], []
        if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__"):
            raise TypeError("sequences must be a list of token sequences")
        if len(sequences) == 0:
            raise SequenceLengthError("a batch needs at least one document")
        for d, seq in enumerate(sequences):
            arr = token_array(seq, self.vocab_size, f"document {d}")
            if arr.shape[0] < 2:
                raise SequenceLengthError(
                    f"document {d} has {arr.shape[0]} token(s); a training sequence needs "
                    "at least 2 (e.g. [BOS] + ids + [BOS])")
            n = min(self.block_size, arr.shape[0] - 1)
            inputs.append(arr[:n])
            targets.append(arr[1:n + 1])
            lens.append(n)
        cdef int32_t[::1] inp = np.concatenate(inputs)
        cdef int32_t[::1] tgt = np.concatenate(targets)
        cdef int32_t[::1] dl = np.asarray(lens, dtype=np.int32)
        n_docs = len(lens)
        total = n_docs if total_docs is None else as_size(total_docs, "total_docs", n_docs)
        self._enter()
        try:
            with nogil:
                rc = mg_forward_partial(self._m, &inp[0], &tgt[0], &dl[0], n_docs, total, &loss)
        finally:
            self._busy = False
        check(rc, "forward")
        return loss

    def backward(self):
        """Accumulate the gradient of the last forward's loss into :attr:`grads`."""
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = mg_backward(self._m)
        finally:
            self._busy = False
        if rc == MG_ERR_STATE:
            raise ModelStateError("backward() needs a forward() first (inference with "
                                  "logits() discards the saved forward)")
        check(rc, "backward")

    def zero_grad(self):
        self._enter()
        try:
            mg_zero_grad(self._m)
        finally:
            self._busy = False

    def adam_step(self, double lr_t, long t, double beta1=0.85, double beta2=0.99,
                  double eps=1e-8):
        """Adam update at 1-based step ``t`` with learning rate ``lr_t``; then
        the gradients are zeroed."""
        cdef int rc
        if t < 1:
            raise ValueError(f"t is the 1-based step number, got {t}")
        if self.dtype == "float32" and abs(lr_t) >= FLOAT32_MAX:
            raise ConfigError(f"lr_t {lr_t} does not fit in float32")
        for name, val in (("lr_t", lr_t), ("beta1", beta1), ("beta2", beta2), ("eps", eps)):
            if not np.isfinite(val):
                raise ValueError(f"{name} must be finite, got {val}")
        self._enter()
        try:
            with nogil:
                rc = mg_adam_step(self._m, lr_t, beta1, beta2, eps, t)
        finally:
            self._busy = False
        if rc == MG_ERR_NONFINITE:
            raise NonFiniteLossError("the gradient is NaN or infinite; the update was not "
                                     "applied (gradients were zeroed)")
        check(rc, "adam step")

    def train_steps(self, corpus, doc_starts, long step0, long n_steps, long num_steps,
                    int batch_size=1, double lr=0.01, double beta1=0.85, double beta2=0.99,
                    double eps=1e-8, *, long warmup_steps=0, str lr_schedule="linear",
                    double min_lr=0.0, double weight_decay=0.0, double grad_clip=0.0):
        """Run ``n_steps`` steps of the SPEC's training loop in C.

        ``corpus`` (int32) holds every document's tokens back to back, document
        ``d`` being ``corpus[doc_starts[d]:doc_starts[d + 1]]`` = [BOS] + ids +
        [BOS] (see :func:`microgpt_c.data.pack_corpus`).  Step ``s`` (0-based,
        from ``step0``) trains on documents ``(s * batch_size + b) % n_docs``.
        Returns ``(losses, lrs)``, float64 arrays of ``n_steps``.  If a loss
        becomes NaN/inf, raises NonFiniteLossError with ``.step`` (1-based) and
        ``.losses`` (the completed steps) set; that step's update is not applied.
        The keyword options (all off by default: the SPEC) are those of
        :func:`schedule_lr` and ``weight_decay`` (decoupled, AdamW) and
        ``grad_clip`` (global L2 norm; 0 = off), see csrc/microgpt.h.
        """
        cdef long done = 0
        cdef int rc
        if n_steps < 0 or step0 < 0 or num_steps < 1 or batch_size < 1:
            raise ValueError("n_steps and step0 must be >= 0; num_steps, batch_size >= 1")
        check_adam_settings(lr, beta1, beta2, eps, self.dtype)
        cdef mg_schedule S = make_schedule(num_steps, lr, beta1, beta2, eps, warmup_steps,
                                           lr_schedule, min_lr, weight_decay, grad_clip)
        cdef int32_t[::1] c
        cdef int64_t[::1] st
        c, st = self._corpus(corpus, doc_starts, batch_size)
        cdef int64_t n_docs = st.shape[0] - 1
        losses = np.zeros(max(n_steps, 1), dtype=np.float64)
        lrs = np.zeros(max(n_steps, 1), dtype=np.float64)
        cdef double[::1] lv = losses, rv = lrs
        self._enter()
        try:
            with nogil:
                rc = mg_train_steps_sched(self._m, &c[0], &st[0], n_docs, step0, n_steps,
                                          batch_size, &S, &lv[0], &rv[0], &done)
        finally:
            self._busy = False
        if rc == MG_ERR_NONFINITE:
            what = (f"the loss became {losses[done]}" if not np.isfinite(losses[done])
                    else "the gradient became NaN or infinite")
            hint = "lower the learning rate" + (" or use float64" if self.dtype == "float32" else "")
            err = NonFiniteLossError(
                f"{what} at step {step0 + done + 1}; {hint} (that step's update was not applied)")
            err.step = step0 + done + 1
            err.losses = losses[:done].copy()
            raise err
        if rc == MG_ERR_TOKEN:
            token_array(corpus, self.vocab_size, "corpus")  # raises the detailed TokenError
        check(rc, "training")
        return losses[:n_steps], lrs[:n_steps]

    def _corpus(self, corpus, doc_starts, int batch_size):
        """The validated (corpus, doc_starts) arrays of train_steps / step_share."""
        # the C core checks every id it uses; on MG_ERR_TOKEN the Python
        # check of the caller names the offending one
        c = token_array(corpus, self.vocab_size, "corpus", False)
        starts = np.asarray(doc_starts)
        if starts.ndim != 1 or starts.shape[0] < 2 or starts.dtype.kind not in "iu":
            raise ValueError("doc_starts must be a 1-D integer array of n_docs + 1 offsets")
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        if starts[0] != 0 or starts[-1] != c.shape[0] or np.any(np.diff(starts) < 2):
            raise SequenceLengthError("doc_starts must start at 0, end at len(corpus) and give "
                                      "every document at least 2 tokens ([BOS] + ids + [BOS])")
        if batch_size > 2**31 // max(self.block_size, 1):
            raise ConfigError(f"batch_size={batch_size} is too large")
        return c, starts

    def step_share(self, corpus, doc_starts, long step, int batch_size, int lo, int hi):
        """Forward and backward of documents ``lo .. hi-1`` of training step
        ``step``'s batch (the documents train_steps uses), the gradients
        ACCUMULATED into :attr:`grads`; returns this share's loss (the sum of
        its documents' mean token losses / batch_size), so the shares of a
        batch add up to its loss and gradients (data parallelism)."""
        cdef double loss = 0
        cdef int rc
        if step < 0 or batch_size < 1 or not 0 <= lo < hi <= batch_size:
            raise ValueError("need step >= 0, batch_size >= 1 and 0 <= lo < hi <= batch_size")
        cdef int32_t[::1] c
        cdef int64_t[::1] st
        c, st = self._corpus(corpus, doc_starts, batch_size)
        cdef int64_t n_docs = st.shape[0] - 1
        self._enter()
        try:
            with nogil:
                rc = mg_step_share(self._m, &c[0], &st[0], n_docs, step, batch_size, lo, hi,
                                   &loss)
        finally:
            self._busy = False
        if rc == MG_ERR_TOKEN:
            token_array(corpus, self.vocab_size, "corpus")  # raises the detailed TokenError
        check(rc, "training step")
        return loss

    def step_update(self, long step, long num_steps, double lr=0.01, double beta1=0.85,
                    double beta2=0.99, double eps=1e-8, *, long warmup_steps=0,
                    str lr_schedule="linear", double min_lr=0.0, double weight_decay=0.0,
                    double grad_clip=0.0):
        """The Adam update of training step ``step`` (0-based) with the
        SPEC's schedule lr_t = lr * (1 - step / num_steps), then the gradients
        zeroed; returns lr_t.  A gradient that is not finite raises
        NonFiniteLossError (nothing applied, gradients zeroed)."""
        cdef double lr_t = 0
        cdef int rc
        if step < 0 or num_steps < 1:
            raise ValueError("need step >= 0 and num_steps >= 1")
        check_adam_settings(lr, beta1, beta2, eps, self.dtype)
        cdef mg_schedule S = make_schedule(num_steps, lr, beta1, beta2, eps, warmup_steps,
                                           lr_schedule, min_lr, weight_decay, grad_clip)
        self._enter()
        try:
            with nogil:
                rc = mg_step_update_sched(self._m, step, &S, &lr_t)
        finally:
            self._busy = False
        check(rc, "adam step")
        return lr_t

    def grad_norm(self):
        """The global L2 norm of the accumulated gradients (what ``grad_clip``
        compares with): a double sum in parameter order, then sqrt."""
        cdef double norm = 0
        self._enter()
        try:
            check(mg_grad_norm(self._m, &norm), "gradient norm")
        finally:
            self._busy = False
        return norm

    # ---------------------------------------------------------- inference
    def logits(self, token, pos):
        """Next-token logits (float64 array of vocab_size) for ``token`` at
        position ``pos``, using the KV cache: positions 0..pos-1 must have been
        fed before (a new sample starts at pos 0)."""
        cdef int rc, tok, p
        token, pos = operator.index(token), operator.index(pos)
        if not 0 <= token < self.vocab_size:
            raise TokenError(f"token {token} is not a token id "
                             f"(valid ids are 0..{self.vocab_size - 1})")
        if not 0 <= pos < self.block_size:
            raise SequenceLengthError(f"pos {pos} is outside the block (0..{self.block_size - 1})")
        tok, p = token, pos
        out = np.empty(self.vocab_size, dtype=np.float64)
        cdef double[::1] z = out
        self._enter()
        try:
            with nogil:
                rc = mg_infer_logits(self._m, tok, p, &z[0])
        finally:
            self._busy = False
        check(rc, "inference")
        return out

    def sample_tokens(self, rng_state, double temperature, int top_k, prefix, int bos,
                      int num_samples):
        """The SPEC's sampling loop in C (see ``mg_sample`` in microgpt.h) with
        CPython's random stream.  ``rng_state`` is ``random.Random.getstate()``;
        returns ``(samples, state)``: the drawn token ids of each sample (the
        prefix not included) and the state the stream is left in, for
        ``setstate``.  ``top_k`` 0 keeps every token.  Raises what the C status
        says (``NonFiniteLossError`` for a non-finite or zero total weight)."""
        cdef mg_mt19937 st
        cdef int rc, done = 0, n_prefix, i
        version, internal, gauss = rng_state
        if len(internal) != 625:
            raise ValueError("rng_state is not a random.Random state (625 words expected)")
        for i in range(624):
            st.mt[i] = internal[i]
        st.index = internal[624]
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        ids = [operator.index(t) for t in prefix]
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise TokenError(f"prefix token {bad[0]} is not a token id "
                             f"(valid ids are 0..{self.vocab_size - 1})")
        pre = np.array(ids, dtype=np.int32)
        n_prefix = pre.shape[0]
        cdef int32_t[::1] pv = pre if n_prefix > 0 else np.zeros(1, dtype=np.int32)
        toks = np.zeros((max(num_samples, 1), self.block_size), dtype=np.int32)
        lens = np.zeros(max(num_samples, 1), dtype=np.int32)
        cdef int32_t[:, ::1] tv = toks
        cdef int32_t[::1] lv = lens
        self._enter()
        try:
            with nogil:
                rc = mg_sample(self._m, &st, temperature, top_k, &pv[0], n_prefix, bos,
                               num_samples, &tv[0, 0], &lv[0], &done)
        finally:
            self._busy = False
        check(rc, "sampling")
        state = (version, tuple(int(st.mt[i]) for i in range(624)) + (int(st.index),), gauss)
        return [toks[s, :lens[s]].tolist() for s in range(num_samples)], state


def softmax_temperature(logits, double temperature=1.0):
    """``softmax(logits * temperature**-1)`` in float64, computed as the SPEC does."""
    cdef int rc
    if not (temperature > 0) or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if not np.isfinite(1.0 / temperature):
        raise ValueError(f"temperature {temperature} is too small (its reciprocal overflows); "
                         "use a temperature of at least 1e-300")
    cdef double[::1] z = np.ascontiguousarray(logits, dtype=np.float64)
    if z.shape[0] < 1:
        raise ValueError("logits must not be empty")
    out = np.empty(z.shape[0], dtype=np.float64)
    cdef double[::1] p = out
    with nogil:
        rc = mg_softmax_temperature(&p[0], &z[0], <int>z.shape[0], temperature)
    check(rc, "softmax")
    return out


class Adam:
    """Adam with the SPEC's linearly decaying learning rate:
    ``lr_t = lr * (1 - step / num_steps)`` at 0-based ``step``."""

    def __init__(self, model, lr=0.01, num_steps=1000, beta1=0.85, beta2=0.99, eps=1e-8):
        if not (lr > 0):
            raise ConfigError(f"learning rate must be > 0, got {lr}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got {beta1}, {beta2}")
        if not (eps > 0):
            raise ConfigError(f"eps must be > 0, got {eps}")
        self.model, self.lr, self.num_steps = model, float(lr), int(num_steps)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.step_count = 0

    def lr_at(self, step):
        return self.lr * (1 - step / self.num_steps)

    def step(self):
        """Apply one update from the accumulated gradients (then zero them)."""
        lr_t = self.lr_at(self.step_count)
        self.model.adam_step(lr_t, self.step_count + 1, self.beta1, self.beta2, self.eps)
        self.step_count += 1
        return lr_t


def openmp_enabled():
    """True if the C core was compiled with OpenMP."""
    return bool(mg_openmp_enabled())


def get_num_threads():
    return mg_get_max_threads()


def simd_variant():
    """The SIMD variant the C kernels run on this CPU, as the C core reports
    it (e.g. "x86-64-v4" for the AVX-512 clones)."""
    return mg_simd_variant().decode()


MAX_THREADS = 1024


def set_num_threads(n):
    """Threads for the C kernels (results do not depend on it), 1 to
    MAX_THREADS (1024)."""
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if n > MAX_THREADS:
        raise ConfigError(f"threads must be at most {MAX_THREADS}, got {n}")
    mg_set_num_threads(n)


# The kernels, for tests (microgpt_c._kernels re-exports them): compiled into
# this module, so one copy of the C core (and of its thread setting) serves
# the model and the kernels.
include "_kernels.pxi"
