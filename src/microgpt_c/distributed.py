"""Data-parallel training across processes and machines with MPI (mpi4py).

``mpiexec -n K python -m microgpt_c.train --batch-size B ...`` trains one model
on K processes ("ranks").  Every rank loads the same data, shuffles it with the
same seed and holds a full copy of the model.  At step ``s`` the batch is the
documents ``(s*B + b) % n_docs``, ``b < B`` (as in one process); rank ``r``
takes ``b`` in ``[r*B/K, (r+1)*B/K)`` and computes, in C, the loss and the
gradient of its share with the loss normalised by the whole batch
(``GPT.forward_backward_batch(share, total_docs=B)``), so that the shares'
gradients add up to the batch's.  One MPI ``Allreduce`` over the flat gradient
buffer (a NumPy view of the C buffer, no copy, no loop over tensors) sums them;
then every rank applies the same Adam update, so all ranks hold the same
parameters at every step.  The per-rank losses and a status word travel in a
16-byte ``Iallgather`` overlapped with the gradient reduction; a rank whose step
fails (an exception or a non-finite loss) reports it there, and every rank
then raises the same error at the same step instead of hanging (a non-finite
summed gradient is caught the same way, on every rank, before the update).

Without MPI nothing here imports mpi4py: :func:`launched_size` reads the
launcher's environment variables only, and :func:`session` returns ``None``
unless the process was started by ``mpiexec`` with more than one rank (or is
given a communicator of size > 1).

Pieces
------
* :func:`session` -- the process's :class:`Session` (communicator, rank, size)
  or ``None``; creating it imports mpi4py, sets one OpenMP thread per rank
  unless ``OMP_NUM_THREADS`` is set and installs an excepthook that aborts the
  job on an unhandled exception.
* :class:`DataParallelModel` -- wraps a :class:`~microgpt_c.GPT`; its
  :meth:`~DataParallelModel.train_steps` has the signature and the semantics of
  ``GPT.train_steps`` (losses are the whole batch's), and any other attribute is
  the model's.  With ``comm=None, shards=K`` it emulates K ranks in one process
  (bit-identical to a K-rank run, see "Numbers").
  :meth:`~DataParallelModel.agree` lets a training loop decide, once per
  chunk of steps, the same things on every rank (stop on Ctrl-C, chunk size);
  :meth:`~DataParallelModel.check_consistent` compares the ranks' parameters.
* :func:`run_main` -- runs a command-line ``main`` under MPI: only rank 0
  prints; a rank that fails before training ends every rank with one error
  printed by rank 0; a rank that fails alone after training started aborts the
  whole job (``MPI_Abort``) with a non-zero status.  A rank that dies before
  MPI starts makes the others give up after ``$MICROGPT_C_MPI_INIT_TIMEOUT``
  seconds (default 300) instead of waiting in ``MPI_Init`` for ever.

Numbers
-------
The gradient of a share is computed exactly as in one process, but the batch
gradient is the sum of K partial sums instead of one running sum over the
batch's tokens, so a K-rank run differs from the one-process run by rounding
only (float64: ~1e-15 relative per step; measured <= 1e-12 over hundreds of
steps).  Two K-rank runs are bit-identical, and every rank holds the same bits.
A K-rank run is bit-identical to ``DataParallelModel(model, shards=K)`` in one
process when the reduction sums in a known order: always for K = 2 (a single
IEEE addition per element, whatever the MPI algorithm), and for any K with
``reduction="ordered"`` (an ``Allgather`` of the K partial gradients summed in
rank order on every rank; one collective, K times the data).
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError, DistributedError, NonFiniteLossError, SequenceLengthError

__all__ = ["DataParallelModel", "DistributedError", "Session", "check_batch_size",
           "launched_size", "launched_rank", "mpi_requested", "params_digest", "rank",
           "run_main", "session"]

#: Environment variables through which MPI launchers give the number of
#: processes (MPICH/Hydra, Intel MPI, MVAPICH: PMI_SIZE; Open MPI:
#: OMPI_COMM_WORLD_SIZE; Slurm's srun with PMIx: PMIX_SIZE is not set, hence
#: SLURM_STEP_NUM_TASKS when PMIX_RANK is present).
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")
REDUCTIONS = ("allreduce", "ordered")
INSTALL_HINT = ("pip install mpi4py mpich (or, from a checkout of microgpt_c: "
                "pip install '.[mpi]')")

_OK, _NONFINITE, _ERROR = 0.0, 1.0, 2.0


# --------------------------------------------------------------------------- environment
def _env_int(names: Sequence[str]) -> Optional[int]:
    for name in names:
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                continue
    return None


def launched_size() -> int:
    """Number of processes the MPI launcher started (1 if not under one).
    Reads environment variables only; never imports mpi4py."""
    size = _env_int(SIZE_VARS)
    if size is None and os.environ.get("PMIX_RANK"):
        size = _env_int(("SLURM_STEP_NUM_TASKS",))
    return size if size is not None and size > 0 else 1


def launched_rank() -> int:
    """This process's rank according to the launcher's environment (0 if none)."""
    r = _env_int(RANK_VARS)
    return r if r is not None and r >= 0 else 0


def mpi_requested() -> bool:
    """Whether to train data-parallel: ``MICROGPT_C_MPI=1`` forces it (using
    ``MPI.COMM_WORLD``), ``=0`` disables it; otherwise it is on when an MPI
    launcher started more than one process."""
    flag = os.environ.get("MICROGPT_C_MPI", "").strip().lower()
    if flag in ("0", "no", "off", "false"):
        return False
    if flag in ("1", "yes", "on", "true"):
        return True
    return launched_size() > 1


def rank() -> int:
    """This process's rank: 0 when not running data-parallel (no import)."""
    if _SESSION is not None:
        return _SESSION.rank
    return launched_rank() if mpi_requested() else 0


def check_batch_size(batch_size: int, size: int) -> None:
    """ConfigError unless ``batch_size`` is a multiple of the number of ranks."""
    if size > 1 and batch_size % size:
        lo = batch_size // size * size
        hint = f"{lo} or {lo + size}" if lo else f"{size}"
        raise ConfigError(f"batch-size {batch_size} must be divisible by the number of MPI "
                          f"ranks ({size}): each rank takes batch-size / ranks documents of "
                          f"every step; use e.g. --batch-size {hint}")


def _waiting_in_MPI_Init_for_every_rank_to_start():
    """Importing mpi4py.MPI calls MPI_Init, which waits for every rank.  A
    rank that died before it (e.g. an exception in a script before
    microgpt_c started MPI) leaves the others waiting for ever; this frame in
    a "Timeout" traceback on stderr means that happened."""
    from mpi4py import MPI
    return MPI


def _import_mpi():
    """mpi4py.MPI; under a launcher, MPI_Init is given
    ``$MICROGPT_C_MPI_INIT_TIMEOUT`` seconds (default 300, 0: no limit) before
    this process dumps its traceback and exits with status 1, so that the job
    ends instead of hanging (faulthandler's watchdog runs without the GIL)."""
    armed = False
    if "mpi4py.MPI" not in sys.modules and launched_size() > 1:
        try:
            timeout = float(os.environ.get("MICROGPT_C_MPI_INIT_TIMEOUT", "300") or 0)
        except ValueError:
            timeout = 300.0
        if timeout > 0:
            import faulthandler
            try:
                faulthandler.dump_traceback_later(timeout, exit=True,
                                                  file=sys.__stderr__ or sys.stderr)
                armed = True
            except (ValueError, RuntimeError, AttributeError, OSError):
                armed = False
    try:
        return _waiting_in_MPI_Init_for_every_rank_to_start()
    except ImportError as exc:
        raise DistributedError(
            f"data-parallel training needs mpi4py, which cannot be imported ({exc}); "
            f"{INSTALL_HINT}") from None
    finally:
        if armed:
            import faulthandler
            faulthandler.cancel_dump_traceback_later()


# --------------------------------------------------------------------------- session
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Session:
    """The MPI state of this process: ``comm``, ``rank``, ``size``.

    ``synced`` becomes True at the first agreement of all ranks (the start of
    training); before it, a failing rank reports to the others through
    :meth:`finish`; after it, failures inside training steps are agreed on at
    the step, others abort the job.  ``collective_failure`` is set when an
    error was raised on every rank at the same point (no abort needed)."""

    def __init__(self, comm: Any, MPI: Any):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.synced = False
        self.collective_failure = False
        self.real_stderr = sys.stderr

    def __repr__(self) -> str:
        return f"Session(rank={self.rank}, size={self.size})"

    # the agreement: one allgather of (kind, payload) that both the start of
    # training and a rank failing before it take part in
    def agree(self, kind: str, payload: Any) -> List[Tuple[str, Any]]:
        gathered = self.comm.allgather((kind, payload))
        self.synced = True
        return gathered

    def abort(self, code: int, message: str) -> None:
        """Print ``message`` (this rank's) and end the whole job."""
        try:
            print(message, file=self.real_stderr, flush=True)
        except Exception:
            pass
        self.comm.Abort(code if 0 < code < 256 else 1)

    def finish(self, rc: int, detail: str = "") -> int:
        """Exit status of this rank, after making sure no other rank is left
        waiting: before training, all ranks agree on the outcome (rank 0 prints
        the other ranks' errors); after, a rank failing alone aborts the job."""
        if not self.synced:
            gathered = self.agree("exit", (rc, detail))
            failed = [(r, p) for r, (k, p) in enumerate(gathered) if k == "exit" and p[0] != 0]
            if not failed:
                return 0
            if self.rank == 0:
                for r, (code, msg) in failed:
                    if r != 0 and not (rc != 0 and msg == detail):  # not a repeat of mine
                        print(f"error: rank {r} of {self.size} failed (exit status {code})"
                              + (f": {msg}" if msg else ""), file=sys.stderr, flush=True)
            self.collective_failure = True
            return rc if rc != 0 else max(p[0] for _, p in failed)
        if rc == 0 or self.collective_failure:
            return rc
        self.abort(rc, f"error: rank {self.rank} of {self.size} failed (exit status {rc})"
                       + (f": {detail}" if detail else "")
                       + f"; aborting all {self.size} ranks")
        return rc  # not reached

    def excepthook(self, tp, value, tb) -> None:
        """Unhandled exception (Python API under mpiexec): print it (rank 0,
        or any rank for a failure of its own) and abort the job unless every
        rank raised the same error."""
        if self.collective_failure:
            if self.rank == 0:
                sys.__excepthook__(tp, value, tb)
            return
        text = "".join(traceback.format_exception(tp, value, tb))
        prefix = f"[rank {self.rank}] "
        self.abort(1, "".join(prefix + line + "\n" for line in text.rstrip().split("\n"))
                   + f"{prefix}unhandled exception: aborting all {self.size} ranks")


_SESSION: Optional[Session] = None
_LOCK = threading.Lock()


def session(comm: Any = None) -> Optional[Session]:
    """The data-parallel :class:`Session`, or None (one process: nothing changes).

    With ``comm`` (an mpi4py communicator) a session over it if its size is
    > 1.  Without, a session over ``MPI.COMM_WORLD`` if :func:`mpi_requested`
    (``mpiexec -n K`` with K > 1, or ``MICROGPT_C_MPI=1``); mpi4py is imported
    only then.  The first session of a process sets one OpenMP thread per rank
    (unless ``OMP_NUM_THREADS`` is set; ``--threads`` still wins) and installs
    :meth:`Session.excepthook`."""
    global _SESSION
    if comm is None:
        if _SESSION is not None:
            return _SESSION
        if not mpi_requested():
            return None
        MPI = _import_mpi()
        comm = MPI.COMM_WORLD
        want = launched_size()
        if want > 1 and comm.Get_size() != want:
            raise DistributedError(
                f"the launcher started {want} processes but MPI reports {comm.Get_size()}: "
                "mpiexec and the MPI library mpi4py uses do not match (each process runs "
                "alone); use the mpiexec of that MPI, e.g. the one next to this Python "
                f"({os.path.dirname(sys.executable)}/mpiexec)")
    else:
        if _SESSION is not None and comm is _SESSION.comm:
            return _SESSION
        MPI = _import_mpi()
    if comm.Get_size() < 2:
        return None
    with _LOCK:
        if _SESSION is not None and comm is _SESSION.comm:
            return _SESSION
        sess = Session(comm, MPI)
        if _SESSION is None:
            _SESSION = sess
            if "OMP_NUM_THREADS" not in os.environ:
                from . import _core
                _core.set_num_threads(1)
            sys.excepthook = sess.excepthook
    return sess


# --------------------------------------------------------------------------- run_main
class _Capture:
    """A rank's stderr, its last 64 KiB kept: on rank 0 also written through
    to the real stream (``tee``), on other ranks only kept (rank 0 prints)."""

    def __init__(self, tee: Any = None) -> None:
        self.parts: List[str] = []
        self.size = 0
        self.tee = tee

    def __getattr__(self, name: str) -> Any:   # fileno, encoding, ... of the real stream
        if self.tee is None:
            raise AttributeError(name)
        return getattr(self.tee, name)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(self.tee is not None and self.tee.isatty())

    def flush(self) -> None:
        if self.tee is not None:
            self.tee.flush()

    def write(self, s: str) -> int:
        if self.tee is not None:
            self.tee.write(s)
        self.parts.append(s)
        self.size += len(s)
        while self.size > 65536 and len(self.parts) > 1:
            self.size -= len(self.parts.pop(0))
        return len(s)

    def text(self) -> str:
        return "".join(self.parts)


def _error_line(text: str) -> str:
    """The last ``error: ...`` line of a rank's stderr (else its last line)."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return lines[-1] if lines else ""


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_main(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None,
             comm: Any = None) -> int:
    """Run a command-line ``main(argv) -> exit status`` data-parallel.

    Not under MPI (or one rank): just ``main(argv)``.  Otherwise rank 0 runs
    with the real stdout/stderr and ranks > 0 with stdout discarded and stderr
    captured, and the exit statuses are reconciled by :meth:`Session.finish`:
    a rank failing before training (bad arguments or data, a missing
    checkpoint) makes every rank exit with an error printed once by rank 0; a
    failure during training is raised on every rank at that step; a rank
    failing alone later aborts the job (non-zero status from ``mpiexec``)."""
    try:
        sess = session(comm)
    except DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if sess is None:
        return main(argv)
    sess.real_stderr = sys.__stderr__ or sys.stderr
    old_out, old_err = sys.stdout, sys.stderr
    devnull = None
    if sess.rank != 0:
        devnull = open(os.devnull, "w")
        capture = _Capture()
        sys.stdout, sys.stderr = devnull, capture
    else:
        capture = _Capture(tee=old_err)
        sys.stderr = capture
    detail = ""
    try:
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = _exit_code(exc.code)
        except KeyboardInterrupt:
            rc = 130
        except BaseException as exc:  # noqa: B902 - report any failure, then reconcile
            traceback.print_exc()
            detail = _describe(exc)
            rc = 1
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        if devnull is not None:
            devnull.close()
    if not detail:
        detail = _error_line(capture.text())
    if (rc != 0 and sess.rank != 0 and sess.synced and not sess.collective_failure):
        # about to abort alone: show this rank's stderr, which rank 0 cannot print
        tail = capture.text().strip()
        if tail:
            print("\n".join(f"[rank {sess.rank}] {ln}" for ln in tail.split("\n")[-20:]),
                  file=sess.real_stderr, flush=True)
    return sess.finish(rc, detail)


# --------------------------------------------------------------------------- digests
def params_digest(model: Any, adam: bool = True) -> str:
    """SHA-256 of the model's parameters (and Adam moments): equal on all
    ranks of a data-parallel run at every step."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(model.flat_params).tobytes())
    if adam:
        h.update(np.ascontiguousarray(model.adam_m).tobytes())
        h.update(np.ascontiguousarray(model.adam_v).tobytes())
    return h.hexdigest()


def _data_digest(corpus: np.ndarray, starts: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(corpus, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(starts, dtype=np.int64).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the model wrapper
class DataParallelModel:
    """A :class:`~microgpt_c.GPT` trained data-parallel.

    ``DataParallelModel(model, comm)``: ``comm`` is an mpi4py communicator (or
    a :class:`Session`); every rank wraps its own copy of the same model.
    ``DataParallelModel(model, shards=K)`` (no ``comm``) computes the K shares
    one after the other in this process and sums them as K ranks would: the
    result is bit-identical to a K-rank run (K = 2, or any K with
    ``reduction="ordered"``).

    :meth:`train_steps` takes the arguments of ``GPT.train_steps`` and
    returns the same ``(losses, lrs)`` (each loss is the whole batch's).
    ``reduction``: ``"allreduce"`` (default; ``$MICROGPT_C_MPI_REDUCTION``)
    or ``"ordered"``.  Every other attribute is the wrapped model's
    (``params``, ``init_weights``, ``logits``, ``save``, ...).

    ``stats`` accumulates wall time: ``steps``, ``compute`` (forward +
    backward of the share), ``reduce`` (the gradient collective, including
    waiting for slower ranks), ``update`` (Adam)."""

    model: Any
    session: Optional[Session]
    size: int
    rank: int
    reduction: str
    stats: Dict[str, float]
    _synced: bool
    _parts: Optional[np.ndarray]

    def __init__(self, model: Any, comm: Any = None, *, shards: Optional[int] = None,
                 reduction: Optional[str] = None):
        sess: Optional[Session]
        if isinstance(comm, Session):
            sess = comm
        elif comm is not None:
            sess = session(comm)
        else:
            sess = None
        if reduction is None:
            reduction = os.environ.get("MICROGPT_C_MPI_REDUCTION", "") or "allreduce"
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, "
                              f"got {reduction!r}")
        if sess is not None:
            if shards not in (None, sess.size):
                raise ConfigError(f"shards={shards} but the communicator has {sess.size} ranks")
            size, rank_ = sess.size, sess.rank
        else:
            size = 1 if shards is None else int(shards)
            if size < 1:
                raise ConfigError(f"shards must be >= 1, got {shards}")
            rank_ = 0
        d = self.__dict__
        d["model"], d["session"], d["size"], d["rank"] = model, sess, size, rank_
        d["reduction"] = reduction
        d["stats"] = {"steps": 0, "compute": 0.0, "reduce": 0.0, "update": 0.0}
        d["_synced"] = False
        d["_parts"] = None

    # everything else is the model's
    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.model, name, value)

    def __repr__(self) -> str:
        where = (f"rank {self.rank} of {self.size}" if self.session is not None
                 else f"{self.size} shard(s) in one process")
        return f"DataParallelModel({self.model!r}, {where}, reduction={self.reduction!r})"

    @property
    def is_root(self) -> bool:
        """True on rank 0 (the rank that prints and writes files)."""
        return self.rank == 0

    def shard_range(self, batch_size: int, r: Optional[int] = None) -> Tuple[int, int]:
        """The positions ``[lo, hi)`` in each step's batch that rank ``r`` takes."""
        check_batch_size(batch_size, self.size)
        per = batch_size // self.size
        r = self.rank if r is None else r
        return r * per, (r + 1) * per

    # ---------------------------------------------------------------- agreement
    def sync(self, fingerprint: Optional[Dict[str, Any]] = None) -> None:
        """Agree with every rank that training can start and that all ranks
        have the same data, settings, parameters and Adam state (compared
        through digests).  Raises DistributedError on every rank otherwise,
        naming the ranks that failed or differ.  Collective; called by the
        first :meth:`train_steps`, and by :meth:`check_consistent`."""
        sess = self.session
        if sess is None:
            return
        fp = dict(fingerprint or {})
        fp.setdefault("state", params_digest(self.model))
        gathered = sess.agree("sync", fp)
        errors = [(r, p) for r, (kind, p) in enumerate(gathered) if kind != "sync"]
        if errors:
            sess.collective_failure = True
            r, (code, msg) = errors[0]
            more = f" (and {len(errors) - 1} more ranks)" if len(errors) > 1 else ""
            raise DistributedError(
                f"rank {r} of {sess.size} failed before training started{more}"
                + (f": {msg}" if msg else f" (exit status {code})"))
        mine = gathered[0][1]
        what = {"data": "training data (use the same --data file on every rank)",
                "settings": "training settings",
                "state": "parameters or Adam state (same seed / checkpoint on every rank?)"}
        for r, (_, theirs) in enumerate(gathered[1:], start=1):
            for key, label in what.items():
                if key in mine and key in theirs and mine[key] != theirs[key]:
                    sess.collective_failure = True
                    raise DistributedError(
                        f"rank {r} of {sess.size} differs from rank 0 in its {label}: "
                        f"sha256 {theirs[key][:12]}... vs {mine[key][:12]}...; every rank "
                        "must load the same data and start from the same state")

    def check_consistent(self) -> str:
        """Collective: check that all ranks hold the same parameters and Adam
        moments (SHA-256); returns the digest, raises DistributedError on
        every rank if they differ."""
        digest = params_digest(self.model)
        sess = self.session
        if sess is None:
            return digest
        if not sess.synced:
            self.sync({"state": digest})
            return digest
        digests = sess.comm.allgather(digest)
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        if bad:
            sess.collective_failure = True
            raise DistributedError(
                f"the parameters of rank(s) {', '.join(map(str, bad))} differ from rank 0's "
                f"(sha256 {digests[bad[0]][:12]}... vs {digests[0][:12]}...): the ranks "
                "diverged (different CPUs or builds on different machines?)")
        return digest

    def agree(self, stop: bool, fast: bool) -> Tuple[bool, bool]:
        """Collective, once per chunk of steps in a training loop: ``(any
        rank wants to stop, every rank found the chunk fast)``, so that all
        ranks stop at the same step (e.g. on Ctrl-C, which reaches the ranks
        at different moments) and size their chunks alike.  When a stop is
        agreed, the exception that follows is raised on every rank (no
        abort).  One process: ``(stop, fast)``."""
        # ``stop`` may be a signal number (SIGTERM > SIGINT): the largest is agreed
        sess = self.session
        if sess is None:
            return stop, bool(fast)
        flags = np.array([int(stop), 0 if fast else 1], dtype=np.int32)
        sess.comm.Allreduce(sess.MPI.IN_PLACE, flags, op=sess.MPI.MAX)
        if flags[0]:
            sess.collective_failure = True
        return (int(flags[0]) if flags[0] > 1 else bool(flags[0])), not flags[1]

    # ---------------------------------------------------------------- training
    def train_steps(self, corpus, doc_starts, step0: int, n_steps: int, num_steps: int,
                    batch_size: int = 1, lr: float = 0.01, beta1: float = 0.85,
                    beta2: float = 0.99, eps: float = 1e-8, **options):
        """``GPT.train_steps`` data-parallel: step ``s`` trains on documents
        ``(s * batch_size + b) % n_docs``, this rank on its share of ``b``;
        the gradients are summed over the ranks, then every rank applies
        Adam with ``lr_t = lr * (1 - s / num_steps)`` at ``t = s + 1``.
        Returns ``(losses, lrs)`` (whole-batch losses).  A non-finite loss
        raises NonFiniteLossError (``.step``, ``.losses``) and a failing rank
        DistributedError, on every rank, at that step, without its update.
        ``options`` (warmup_steps, lr_schedule, min_lr, weight_decay,
        grad_clip) are ``GPT.train_steps``'s, applied to the summed gradients
        by ``GPT.step_update``."""
        step0, n_steps, num_steps = int(step0), int(n_steps), int(num_steps)
        batch_size = int(batch_size)
        if n_steps < 0 or step0 < 0 or num_steps < 1 or batch_size < 1:
            raise ValueError("n_steps and step0 must be >= 0; num_steps, batch_size >= 1")
        for name, val in (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps)):
            if not np.isfinite(val):
                raise ValueError(f"{name} must be finite, got {val}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        lr, beta1, beta2, eps = float(lr), float(beta1), float(beta2), float(eps)
        check_batch_size(batch_size, self.size)
        corpus = np.asarray(corpus)
        starts = np.asarray(doc_starts)
        if starts.ndim != 1 or starts.shape[0] < 2 or starts.dtype.kind not in "iu":
            raise ValueError("doc_starts must be a 1-D integer array of n_docs + 1 offsets")
        if (corpus.ndim != 1 or starts[0] != 0 or starts[-1] != corpus.shape[0]
                or np.any(np.diff(starts) < 2)):
            raise SequenceLengthError("doc_starts must start at 0, end at len(corpus) and give "
                                      "every document at least 2 tokens ([BOS] + ids + [BOS])")
        n_docs = starts.shape[0] - 1
        sess = self.session
        if sess is not None:
            sess.collective_failure = False
            if not self._synced:
                # once per wrapper, on every rank alike (never data-dependent)
                settings = repr((num_steps, batch_size, lr, beta1, beta2, eps, step0,
                                 self.model.dtype, sorted(self.model.config.items()),
                                 self.reduction, sess.size)).encode()
                self.sync({"data": _data_digest(corpus, starts),
                           "settings": hashlib.sha256(settings).hexdigest()})
                self._synced = True
        losses = np.zeros(n_steps, dtype=np.float64)
        lrs = np.zeros(n_steps, dtype=np.float64)
        # the C core selects each step's documents and computes the schedule
        # (GPT.step_share / step_update); this module only combines the shares
        corpus = np.ascontiguousarray(corpus, dtype=np.int32)
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        per = batch_size // self.size
        step = self._mpi_step if sess is not None else self._local_step
        for i in range(n_steps):
            s = step0 + i
            losses[i], lrs[i] = step(corpus, starts, per, batch_size, s, num_steps, lr, beta1,
                                     beta2, eps, losses[:i], options)
        return losses, lrs

    def _nonfinite(self, value: float, s: int, done: np.ndarray,
                   what: str = "loss") -> NonFiniteLossError:
        err = NonFiniteLossError(
            f"the {what} became {'non-finite' if what == 'gradient' else value} at step "
            f"{s + 1}; lower the learning rate or use float64 (that step's update was not "
            "applied)")
        err.step = s + 1              # type: ignore[attr-defined]
        err.losses = done.copy()      # type: ignore[attr-defined]
        return err

    def _local_step(self, corpus, starts, per, batch_size, s, num_steps, lr, beta1, beta2,
                    eps, done, options=None):
        """The K shares one after the other in this process, their gradients
        summed in rank order (as ``reduction="ordered"`` does, and as any
        Allreduce does for K = 2)."""
        model, K = self.model, self.size
        t0 = time.perf_counter()
        parts = None
        if K > 1:
            parts = self._parts
            if parts is None or parts.shape != (K, model.num_params):
                parts = np.empty((K, model.num_params), dtype=model.flat_grads.dtype)
                self.__dict__["_parts"] = parts
        partial = []
        for k in range(K):
            try:
                partial.append(model.step_share(corpus, starts, s, batch_size, k * per,
                                                (k + 1) * per))
            except NonFiniteLossError:
                model.zero_grad()
                raise self._nonfinite(float("nan"), s, done) from None
            if parts is not None:
                parts[k] = model.flat_grads
                model.zero_grad()
        t1 = time.perf_counter()
        loss = partial[0]
        for k in range(1, K):
            loss += partial[k]
        if parts is not None:
            grads = model.flat_grads
            np.add(parts[0], parts[1], out=grads)
            for k in range(2, K):
                grads += parts[k]
        t2 = time.perf_counter()
        try:
            lr_t = model.step_update(s, num_steps, lr, beta1, beta2, eps, **(options or {}))
        except NonFiniteLossError:   # nothing applied, the gradients zeroed
            raise self._nonfinite(float("nan"), s, done, "gradient") from None
        st = self.stats
        st["compute"] += t1 - t0
        st["reduce"] += t2 - t1
        st["update"] += time.perf_counter() - t2
        st["steps"] += 1
        return loss, lr_t

    def _mpi_step(self, corpus, starts, per, batch_size, s, num_steps, lr, beta1, beta2, eps,
                  done, options=None):
        sess = self.session
        assert sess is not None
        MPI, comm, model, K = sess.MPI, sess.comm, self.model, sess.size
        lo = self.rank * per
        t0 = time.perf_counter()
        status, loss, failure = _OK, 0.0, None
        try:
            loss = model.step_share(corpus, starts, s, batch_size, lo, lo + per)
        except NonFiniteLossError:
            status, loss = _NONFINITE, float("nan")
        except Exception as exc:  # noqa: BLE001 - reported to every rank below
            status, loss, failure = _ERROR, float("nan"), exc
        if status != _OK:
            model.zero_grad()      # take part in the reduction with a zero gradient
        mine = np.array([loss, status], dtype=np.float64)
        every = np.empty((K, 2), dtype=np.float64)
        t1 = time.perf_counter()
        req = comm.Iallgather(mine, every)
        grads = model.flat_grads
        if self.reduction == "allreduce":
            comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
        else:
            parts = self._parts
            if parts is None or parts.shape != (K, model.num_params):
                parts = np.empty((K, model.num_params), dtype=grads.dtype)
                self.__dict__["_parts"] = parts
            comm.Allgather(grads, parts)
            np.add(parts[0], parts[1], out=grads)
            for k in range(2, K):
                grads += parts[k]
        req.Wait()
        t2 = time.perf_counter()
        self.stats["compute"] += t1 - t0
        self.stats["reduce"] += t2 - t1
        statuses = every[:, 1]
        if np.any(statuses != _OK):
            model.zero_grad()      # the update is not applied on any rank
            if np.any(statuses == _ERROR):
                msgs = comm.allgather(_describe(failure) if failure is not None else None)
                sess.collective_failure = True
                bad = [r for r in range(K) if statuses[r] == _ERROR]
                err = DistributedError(
                    f"rank {bad[0]} of {K} failed at step {s + 1}: {msgs[bad[0]]}"
                    + (f" (also ranks {', '.join(map(str, bad[1:]))})" if len(bad) > 1 else "")
                    + "; that step's update was not applied on any rank")
                err.step = s + 1           # type: ignore[attr-defined]
                err.losses = done.copy()   # type: ignore[attr-defined]
                if failure is not None:
                    raise err from failure
                raise err
            sess.collective_failure = True
            raise self._nonfinite(float(every[:, 0].sum()), s, done)
        total = float(every[0, 0])
        for k in range(1, K):
            total += float(every[k, 0])
        try:   # the same reduced gradient on every rank, so the same answer
            lr_t = model.step_update(s, num_steps, lr, beta1, beta2, eps, **(options or {}))
        except NonFiniteLossError:   # nothing applied, the gradients zeroed
            sess.collective_failure = True
            raise self._nonfinite(float("nan"), s, done, "gradient") from None
        self.stats["update"] += time.perf_counter() - t2
        self.stats["steps"] += 1
        return total, lr_t
