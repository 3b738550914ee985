"""Threads: the GIL is released during C work, concurrent use is safe.

* Two models trained at the same time in two Python threads give exactly
  (bit for bit) the losses and parameters they give one after the other, and
  the GIL is really released (the main thread runs Python meanwhile).
* One model used from several threads at once: every call either completes
  with exactly the single-threaded result or is refused with ModelBusyError;
  never a torn result or corrupted parameters.
* NumPy views of the parameters keep the buffers alive: deleting the model
  while a view exists is safe and the view still reads and writes them.
* Results do not depend on the number of OpenMP threads
  (set_num_threads(1) vs 2) at a size where the kernels go parallel.

Docstrings saying "BUG" or "regression" describe bugs found here; all are
fixed and the tests guard against their return.
"""
from __future__ import annotations

import gc
import random
import threading
import time
import weakref

import numpy as np
import pytest

import microgpt_c
from microgpt_c import _core
from microgpt_c.errors import ModelBusyError, ModelStateError

GPT = microgpt_c.GPT


def _corpus(V, n_docs, min_len, max_len, seed):
    """Random documents [BOS] + ids + [BOS] packed as train_steps takes them."""
    r = random.Random(seed)
    bos = V - 1
    docs = [[bos] + [r.randrange(V - 1) for _ in range(r.randint(min_len, max_len))] + [bos]
            for _ in range(n_docs)]
    corpus = np.array([t for d in docs for t in d], dtype=np.int32)
    starts = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    return docs, corpus, starts


def _model(seed, V=27, dtype="float64", **cfg):
    cfg = {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 16, **cfg}
    m = GPT(V, dtype=dtype, **cfg)
    m.init_weights(random.Random(seed))
    return m


def _train(m, corpus, starts, steps, chunk, batch):
    losses = []
    for s in range(0, steps, chunk):
        l, _ = m.train_steps(corpus, starts, s, min(chunk, steps - s), steps, batch_size=batch)
        losses.append(l)
    return np.concatenate(losses)


class _Runner(threading.Thread):
    """A thread that runs fn() and keeps its result or exception."""

    def __init__(self, fn, start_barrier=None):
        super().__init__(daemon=True)
        self.fn, self.barrier = fn, start_barrier
        self.result = self.error = None

    def run(self):
        try:
            if self.barrier is not None:
                self.barrier.wait()
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            self.error = exc

    def get(self, timeout=120):
        self.join(timeout)
        assert not self.is_alive(), "thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


# ======================================================================
# Two models, two threads
# ======================================================================
def _in_thread(fn, omp_threads):
    """A _Runner that sets the OpenMP thread count (a per-thread setting, see
    test_bug_set_num_threads_is_per_thread) before running fn."""
    def run():
        microgpt_c.set_num_threads(omp_threads)
        return fn()
    return run


@pytest.mark.parametrize("dtype, omp", [("float64", 1), ("float32", 1), ("float64", 2)])
def test_two_models_in_two_threads_match_sequential(dtype, omp):
    """Each model's training runs in its own Python thread, first one after
    the other, then both at once; with omp=2 each also uses an OpenMP team."""
    _, corpus, starts = _corpus(27, 300, 2, 12, seed=5)
    steps, chunk, batch = (24, 4, 2) if omp == 1 else (8, 2, 2)
    seq = []
    for seed in (1, 2):
        m = _model(seed, dtype=dtype)
        t = _Runner(_in_thread(lambda m=m: _train(m, corpus, starts, steps, chunk, batch), omp))
        t.start()
        seq.append((t.get(), m.flat_params.copy(), m.adam_m.copy(), m.adam_v.copy()))
    models = [_model(seed, dtype=dtype) for seed in (1, 2)]
    barrier = threading.Barrier(2)
    threads = [_Runner(_in_thread(lambda m=m: _train(m, corpus, starts, steps, chunk, batch),
                                  omp), barrier)
               for m in models]
    for t in threads:
        t.start()
    for (losses, params, am, av), t, m in zip(seq, threads, models):
        got = t.get()
        assert np.array_equal(got, losses), "losses differ from the sequential run"
        assert np.array_equal(m.flat_params, params), "parameters differ"
        assert np.array_equal(m.adam_m, am) and np.array_equal(m.adam_v, av)


def test_gil_is_released_during_training():
    """While a thread is inside one long train_steps call, the main thread
    keeps running Python: it sees the model busy (which it can only observe
    from Python code running during the C call) and makes progress."""
    _, corpus, starts = _corpus(27, 200, 5, 14, seed=3)
    m = _model(7)
    # one OpenMP thread: this thread's polling occupies the other core
    worker = _Runner(_in_thread(
        lambda: m.train_steps(corpus, starts, 0, 120, 120, batch_size=4), 1))
    busy_seen, spins = 0, 0
    worker.start()
    while worker.is_alive():
        spins += 1
        try:
            m.zero_grad()          # no-op between steps; refused while in C
        except ModelBusyError:
            busy_seen += 1
        time.sleep(0.0002)
    losses, _ = worker.get()
    assert np.all(np.isfinite(losses))
    assert busy_seen > 0, "never observed the model inside C: is the GIL held?"
    assert spins > 20


# ======================================================================
# One model, many threads
# ======================================================================
def test_one_model_hammered_from_threads_never_corrupts():
    """4 threads call forward / logits / backward / zero_grad on one model for
    >= 1 s.  Each call completes with exactly the single-threaded result, or is
    refused (ModelBusyError; ModelStateError for a backward whose forward was
    replaced by another thread's logits); the parameters never change."""
    V = 27
    docs, _, _ = _corpus(V, 8, 10, 15, seed=9)
    m = _model(11, V=V, n_embd=96, block_size=16)
    params = m.flat_params.copy()
    expected_loss = [m.forward(d) for d in docs]
    expected_logits = [m.logits(d[0], 0) for d in docs]
    m.zero_grad()
    # at least 1 s and 200 completed calls in all (slow builds, e.g. under
    # ASan, take longer), at most 30 s
    t0 = time.perf_counter()
    counts = {"ok": 0, "busy": 0, "state": 0}
    lock = threading.Lock()
    wrong = []
    done_calls = [0]

    def more():
        t = time.perf_counter() - t0
        return t < 30 and (t < 1.0 or done_calls[0] < 200)

    def hammer(k):
        r = random.Random(k)
        ok = busy = state = 0
        while more():
            i = r.randrange(len(docs))
            op = r.choice(("forward", "logits", "backward", "zero_grad"))
            try:
                if op == "forward":
                    loss = m.forward(docs[i])
                    if loss != expected_loss[i]:
                        wrong.append(("forward", i, loss, expected_loss[i]))
                elif op == "logits":
                    z = m.logits(docs[i][0], 0)
                    if not np.array_equal(z, expected_logits[i]):
                        wrong.append(("logits", i))
                elif op == "backward":
                    m.backward()
                else:
                    m.zero_grad()
                ok += 1
                done_calls[0] += 1
            except ModelBusyError:
                busy += 1
            except ModelStateError:
                state += 1
        with lock:
            counts["ok"] += ok
            counts["busy"] += busy
            counts["state"] += state

    threads = [_Runner(lambda k=k: hammer(k)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.get()
    assert wrong == [], f"wrong results under concurrency: {wrong[:5]}"
    assert np.array_equal(m.flat_params, params), "parameters changed"
    assert counts["ok"] >= 200, counts
    assert counts["busy"] > 0, f"no concurrent call was ever refused: {counts}"


def test_training_while_other_threads_read_gives_the_serial_result():
    """One thread trains (train_steps in chunks) while 3 others call forward
    and logits on the same model: those are refused or complete, and the
    training ends with exactly the parameters of an undisturbed run."""
    V = 27
    docs, corpus, starts = _corpus(V, 100, 3, 15, seed=2)
    steps, chunk, batch = 30, 3, 2
    ref = _model(4, V=V)
    ref_losses = _train(ref, corpus, starts, steps, chunk, batch)
    m = _model(4, V=V)
    done = threading.Event()
    counts = {"busy": 0, "ok": 0}

    def reader(k):
        r = random.Random(k)
        while not done.is_set():
            try:
                if r.random() < 0.5:
                    m.forward(docs[r.randrange(len(docs))])
                else:
                    m.logits(r.randrange(V), 0)
                counts["ok"] += 1
            except ModelBusyError:
                counts["busy"] += 1
            # The busy flag refuses, it does not queue: a thread that calls
            # back-to-back holds the GIL whenever the model is free, so
            # without a pause the trainer would rarely find it free.
            time.sleep(0.0005)

    readers = [_Runner(lambda k=k: reader(k)) for k in range(3)]
    for t in readers:
        t.start()
    try:
        losses = _train_retrying(m, corpus, starts, steps, chunk, batch)
    finally:
        done.set()
        for t in readers:
            t.get()
    assert np.array_equal(losses, ref_losses)
    assert np.array_equal(m.flat_params, ref.flat_params)
    assert np.array_equal(m.adam_m, ref.adam_m) and np.array_equal(m.adam_v, ref.adam_v)


def _train_retrying(m, corpus, starts, steps, chunk, batch, timeout=60.0):
    """_train, retrying a chunk the readers made busy."""
    losses, s = [], 0
    end = time.perf_counter() + timeout
    while s < steps:
        try:
            l, _ = m.train_steps(corpus, starts, s, min(chunk, steps - s), steps,
                                 batch_size=batch)
        except ModelBusyError:
            assert time.perf_counter() < end, "the trainer never got the model"
            time.sleep(0.0002)
            continue
        losses.append(l)
        s += chunk
    return np.concatenate(losses)


def _wait_until_busy(m, worker, timeout=30.0):
    """Spin until the worker thread is inside a C call on m."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end and worker.is_alive():
        try:
            m.zero_grad()
        except ModelBusyError:
            return True
    return False


def test_calls_during_training_are_refused():
    """While another thread is inside train_steps, every method that touches
    the model's buffers raises ModelBusyError.  (Regression: init_weights
    wrote every parameter without taking the busy flag, racing with the C
    code.)"""
    _, corpus, starts = _corpus(27, 200, 5, 14, seed=3)
    m = _model(8)
    calls = {
        "init_weights": lambda: m.init_weights(random.Random(0)),
        "forward": lambda: m.forward([26, 1, 2, 26]),
        "forward_backward_batch": lambda: m.forward_backward_batch([[26, 1, 26], [26, 26]]),
        "backward": lambda: m.backward(),
        "logits": lambda: m.logits(26, 0),
        "adam_step": lambda: m.adam_step(0.01, 1),
        "train_steps": lambda: m.train_steps(corpus, starts, 0, 1, 10),
        "zero_grad": lambda: m.zero_grad(),
    }
    pending = list(calls)
    for _ in range(20):                      # a fresh worker when one finishes
        worker = _Runner(lambda: m.train_steps(corpus, starts, 0, 80, 80, batch_size=4))
        worker.start()
        try:
            while pending and _wait_until_busy(m, worker):
                try:
                    calls[pending[0]]()
                except ModelBusyError:
                    pending.pop(0)
                    continue
                # not refused: the worker's call may have returned between the
                # busy probe and this call (a loaded machine); try again with a
                # fresh worker (a method that never checks stays pending, and
                # the assert below fails)
                break
        finally:
            worker.get()
        if not pending:
            break
    assert not pending, f"never checked: {pending}"


# ======================================================================
# Views keep the buffers alive
# ======================================================================
@pytest.mark.parametrize("cls", [_core.GPT, GPT], ids=["_core.GPT", "microgpt_c.GPT"])
def test_views_outlive_the_model(cls):
    m = cls(27, dtype="float32")
    m.init_weights(random.Random(1))
    wte, flat, grads, am = m.params["wte"], m.flat_params, m.grads["lm_head"], m.adam_m
    expected = wte.copy()
    del m
    gc.collect()
    # churn the allocator so that freed memory would be reused
    junk = [cls(27, dtype="float32") for _ in range(20)]
    for j in junk:
        j.flat_params[:] = 7.0
    blobs = [np.full(50_000, 3.0) for _ in range(20)]
    del junk, blobs
    gc.collect()
    assert np.array_equal(wte, expected)
    wte[0, 0] = 42.0
    assert flat[0] == 42.0            # the same buffer
    grads[...] = 1.0
    am[:] = -1.0
    assert np.all(grads == 1.0) and np.all(am == -1.0)
    s = float(wte.sum()) + float(flat.sum())
    assert np.isfinite(s)


def test_view_of_a_model_deleted_in_another_thread():
    """A model created and dropped in a worker thread; its view is used here."""
    box = {}

    def make():
        m = GPT(27)
        m.init_weights(random.Random(2))
        box["view"] = m.params["lm_head"]
        box["copy"] = box["view"].copy()

    _Runner(make).start()
    for _ in range(100):
        if "copy" in box:
            break
        time.sleep(0.01)
    gc.collect()
    assert np.array_equal(box["view"], box["copy"])
    box["view"][:] = 0.5
    assert np.all(box["view"] == 0.5)


def test_model_is_freed_when_model_and_views_are_dropped():
    """The model is freed once it and its views are gone.  (Regression:
    GPT -> its NumPy views -> memoryview -> _View -> GPT was a cycle through
    ndarray, which the cyclic GC cannot traverse; see
    test_hardening.test_models_are_freed_rss_stable.)"""
    m = GPT(27)               # microgpt_c.GPT (a Python subclass) is weak-referenceable
    ref = weakref.ref(m)
    view = m.params["wte"]
    del m
    gc.collect()
    view[0, 0] = 1.0          # still usable
    del view
    gc.collect()
    assert ref() is None, "the model is still alive after dropping it and its views"


# ======================================================================
# Results do not depend on the number of OpenMP threads
# ======================================================================
@pytest.fixture
def restore_threads():
    before = microgpt_c.get_num_threads()
    yield
    microgpt_c.set_num_threads(before)


def _on_1_and_2_threads(run):
    """{n: run(n)} for n = 1, 2, each in a fresh thread that first calls
    set_num_threads(n)."""
    results = {}
    for n in (1, 2):
        t = _Runner(_in_thread(lambda n=n: run(n), n))
        t.start()
        results[n] = t.get()
    return results


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_single_document_steps_same_with_1_and_2_threads(dtype, restore_threads):
    """One document per step (the SPEC's loop, no team): at n_embd=256 and 64
    positions the MLP products (64 x 256 x 1024 multiply-adds) are above the
    kernels' own OpenMP threshold, so the kernels split their rows across
    threads; the result must not change."""
    V = 29
    _, corpus, starts = _corpus(V, 6, 70, 90, seed=17)

    def run(n):
        if microgpt_c.openmp_enabled():
            assert microgpt_c.get_num_threads() == n
        m = GPT(V, n_layer=1, n_embd=256, n_head=4, block_size=64, dtype=dtype)
        m.init_weights(random.Random(5))
        losses, _ = m.train_steps(corpus, starts, 0, 3, 10, batch_size=1)
        loss = m.forward_backward(corpus[starts[3]:starts[4]])
        return losses, m.flat_params.copy(), m.flat_grads.copy(), loss

    results = _on_1_and_2_threads(run)
    for a, b in zip(results[1], results[2]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_same_results_with_1_and_2_threads(dtype, restore_threads):
    """n_embd=128, block 64, 8 documents of >= 64 tokens per step: 512 tokens,
    a matmul of 512 x 128 x 512 multiply-adds and attention over 64 positions,
    well above the kernels' OpenMP threshold.  Each run is in a fresh thread
    that first calls set_num_threads(n).  (On a serial build this still
    checks determinism.)"""
    V = 29
    _, corpus, starts = _corpus(V, 24, 60, 90, seed=13)

    def run(n):
        if microgpt_c.openmp_enabled():
            assert microgpt_c.get_num_threads() == n
        m = GPT(V, n_layer=1, n_embd=128, n_head=4, block_size=64, dtype=dtype)
        m.init_weights(random.Random(21))
        losses, _ = m.train_steps(corpus, starts, 0, 2, 10, batch_size=8)
        loss = m.forward_backward_batch([corpus[starts[i]:starts[i + 1]] for i in range(8)])
        z = [m.logits(int(corpus[p]), p) for p in range(16)]
        return losses, m.flat_params.copy(), m.flat_grads.copy(), loss, np.array(z)

    results = _on_1_and_2_threads(run)
    # and in this thread, through set_num_threads here
    microgpt_c.set_num_threads(2)
    results["main"] = run(2)
    for other in (2, "main"):
        for a, b in zip(results[1], results[other]):
            assert np.array_equal(a, b)


def test_set_num_threads_is_process_wide(restore_threads):
    """BUG: microgpt_c.set_num_threads(n) calls omp_set_num_threads, which
    sets OpenMP's nthreads ICV of the *calling* thread only: a model trained
    in another Python thread (e.g. a worker/server thread, or a
    ThreadPoolExecutor) still uses the default thread count, although the
    docstring says it sets the threads "for the C kernels".  Fix: keep the
    count in a process-wide variable in the C core (mg_set_num_threads
    stores it; mg_get_max_threads returns it) and apply it in each parallel
    region (``num_threads(mg_threads())`` clause, or omp_set_num_threads at
    the entry of mg_forward/mg_backward/mg_train_steps/mg_infer_logits when
    it differs)."""
    if not microgpt_c.openmp_enabled():
        pytest.skip("serial build: one thread everywhere")
    default = _Runner(microgpt_c.get_num_threads)
    default.start()
    target = 1 if default.get() != 1 else 2
    microgpt_c.set_num_threads(target)
    assert microgpt_c.get_num_threads() == target
    other = _Runner(microgpt_c.get_num_threads)
    other.start()
    assert other.get() == target, "set_num_threads did not apply to another thread"


# ======================================================================
# Batched training: document-parallel steps, bit-identical for any thread
# count
# ======================================================================
BATCHES = [1, 2, 3, 7, 16, 33]


def _batched_run(dtype, batch, n_threads):
    """train_steps in three calls (the first step of each call is the
    unfused backward + checked Adam, the others fused and reusing the
    transposed weights), then forward_backward_batch + adam_step (the
    Python API's path); in a fresh thread with n_threads OpenMP threads."""
    V = 27
    docs, corpus, starts = _corpus(V, 61, 1, 22, seed=batch)  # some longer than the block

    def run():
        m = _model(7, V=V, dtype=dtype, n_layer=4, n_embd=64, block_size=16)
        losses = [m.train_steps(corpus, starts, s, n, 9, batch_size=batch)[0]
                  for s, n in ((0, 4), (4, 1), (5, 3))]
        seqs = docs[:batch]
        loss = m.forward_backward_batch(seqs)
        grads = m.flat_grads.copy()
        m.adam_step(0.003, 9)
        return (np.concatenate(losses), np.array([loss]), grads, m.flat_params.copy(),
                m.adam_m.copy(), m.adam_v.copy())

    t = _Runner(_in_thread(run, n_threads))
    t.start()
    return t.get()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", BATCHES)
def test_batched_training_same_bits_with_1_and_2_threads(dtype, batch, restore_threads):
    """Losses, gradients, parameters and Adam moments are equal (not close)
    with 1 and 2 OpenMP threads, at batch sizes where the 2-thread step runs
    its documents in pieces across the team (batch >= 2: above the team's
    work threshold of 4M multiply-adds a step, ~12 C^2 L per token) and at
    batch 1 (no team)."""
    one = _batched_run(dtype, batch, 1)
    two = _batched_run(dtype, batch, 2)
    for name, a, b in zip(["losses", "loss", "grads", "params", "adam_m", "adam_v"], one, two):
        assert np.array_equal(a, b), f"{name} differ between 1 and 2 threads (batch {batch})"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [2, 7, 33])
@pytest.mark.parametrize("threads", [1, 2])
def test_train_steps_equals_the_python_loop(dtype, batch, threads, restore_threads):
    """mg_train_steps (fused backward + Adam, the transposed weights kept up
    to date by the update instead of rebuilt) gives exactly what the Python
    API's unfused loop gives: forward_backward_batch on the step's documents
    (s * B + b) % n_docs, then adam_step with lr_t = lr (1 - s / num_steps)."""
    V = 27
    docs, corpus, starts = _corpus(V, 29, 1, 22, seed=3 + batch)
    steps = 5

    def run():
        a = _model(4, V=V, dtype=dtype, n_layer=4, n_embd=64, block_size=16)
        b = _model(4, V=V, dtype=dtype, n_layer=4, n_embd=64, block_size=16)
        got, _ = a.train_steps(corpus, starts, 0, steps, steps, batch_size=batch)
        want = []
        for s in range(steps):
            seqs = [docs[(s * batch + i) % len(docs)] for i in range(batch)]
            want.append(b.forward_backward_batch(seqs))
            b.adam_step(0.01 * (1 - s / steps), s + 1)
        return got, np.array(want), a, b

    t = _Runner(_in_thread(run, threads))
    t.start()
    got, want, a, b = t.get()
    assert np.array_equal(got, want)
    assert np.array_equal(a.flat_params, b.flat_params)
    assert np.array_equal(a.adam_m, b.adam_m) and np.array_equal(a.adam_v, b.adam_v)


@pytest.mark.parametrize("dtype, lr", [("float64", 1e300), ("float32", 1e30)])
def test_batched_nonfinite_step_same_with_1_and_2_threads(dtype, lr, restore_threads):
    """A run that blows up (huge learning rate) in the batched team path:
    the same error at the same step with 1 and 2 threads and in one call or
    step by step, the last completed step's parameters intact and equal."""
    from microgpt_c.errors import NonFiniteLossError
    V = 27
    _, corpus, starts = _corpus(V, 40, 3, 14, seed=9)

    def run(one_call):
        m = _model(3, V=V, dtype=dtype, n_layer=4, n_embd=64, block_size=16)
        try:
            if one_call:
                m.train_steps(corpus, starts, 0, 30, 30, batch_size=4, lr=lr)
            else:
                for k in range(30):
                    m.train_steps(corpus, starts, k, 1, 30, batch_size=4, lr=lr)
        except NonFiniteLossError as exc:
            return exc.step, m.flat_params.copy(), m.adam_m.copy(), m.adam_v.copy()
        pytest.fail("no NonFiniteLossError")

    results = []
    for threads in (1, 2):
        for one_call in (True, False):
            t = _Runner(_in_thread(lambda o=one_call: run(o), threads))
            t.start()
            results.append(t.get())
    first = results[0]
    assert np.all(np.isfinite(first[1]))
    for r in results[1:]:
        assert r[0] == first[0]
        for a, b in zip(r[1:], first[1:]):
            assert np.array_equal(a, b)
