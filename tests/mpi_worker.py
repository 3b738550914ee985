"""Training driver for tests/test_mpi.py and the MPI benchmark: a small
version of ``microgpt_c.train()`` built on ``microgpt_c.distributed``, run
under ``mpiexec -n K`` (data-parallel) or alone (one process).

    mpiexec -n 2 python tests/mpi_worker.py --data names.txt --steps 100 \
        --batch-size 8 --result out/result   # writes out/result.<rank>.json

Each rank writes ``<result>.<rank>.json``: rank, size, the per-step losses
(as float.hex, so comparisons are bit-exact), the digest of the final
parameters and Adam moments, the timing stats.  ``--out DIR`` saves
``DIR/checkpoint.safetensors`` (rank 0 only) every ``--save-every`` steps and
at the end; ``--resume`` continues from it.  ``--fault KIND:RANK:STEP``
injects a failure on one rank: ``raise`` (an exception in that step's
forward), ``nonfinite`` (a non-finite loss in that step), ``kill`` (SIGKILL
at that step), ``crash`` (an exception outside the training steps, after
that step), ``missing-data`` / ``other-data`` (that rank reads a missing
file / a different file; STEP is ignored), ``exit-before-init`` (that rank
exits before MPI is initialised).  ``--no-guard`` runs without
``distributed.run_main`` (exceptions reach the excepthook, as in a script).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time

from microgpt_c import _core, api, distributed
from microgpt_c import data as data_mod
from microgpt_c.checkpoint import (CHECKPOINT_NAME, TrainState, load_checkpoint,
                                   restore_into, save_checkpoint)
from microgpt_c.errors import NonFiniteLossError


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-layer", type=int, default=1)
    p.add_argument("--n-embd", type=int, default=16)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--chunk", type=int, default=0,
                   help="steps per train_steps call (0: grow like train(), by wall time)")
    p.add_argument("--mode", choices=("dp", "plain"), default="dp",
                   help="dp: DataParallelModel (MPI when launched by mpiexec, else --shards "
                        "in one process); plain: GPT.train_steps (the one-process C path)")
    p.add_argument("--shards", type=int, default=None)
    p.add_argument("--reduction", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--result", default=None)
    p.add_argument("--fault", default=None)
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (benchmark)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    sess = distributed.session()
    rank = sess.rank if sess is not None else 0
    size = sess.size if sess is not None else 1
    fault_kind, fault_rank, fault_step = None, -1, -1
    if args.fault:
        kind, r, s = args.fault.split(":")
        fault_kind, fault_rank, fault_step = kind, int(r), int(s)
    mine = fault_rank == rank

    if args.threads:
        _core.set_num_threads(args.threads)
    path = args.data
    if mine and fault_kind == "missing-data":
        path = path + ".missing"
    docs = data_mod.read_documents(path)
    if mine and fault_kind == "other-data":
        docs[0] = docs[0] + "a"
    data_sha = data_mod.sha256_of_documents(docs)
    rng = random.Random(args.seed)
    rng.shuffle(docs)
    tok = data_mod.Tokenizer(docs)
    model = api.GPT(tok.vocab_size, args.n_layer, args.n_embd, args.n_head, args.block_size,
                    args.dtype, max_tokens=args.block_size * args.batch_size)
    out_file = os.path.join(args.out, CHECKPOINT_NAME) if args.out else None
    history = []
    if args.resume:
        ckpt = load_checkpoint(out_file)
        restore_into(model, ckpt)
        rng.setstate(ckpt.train.rng_state)
        step = ckpt.train.step
        history = list(ckpt.train.losses)
    else:
        model.init_weights(rng)
        step = 0
    corpus, starts = data_mod.pack_corpus(tok, docs)

    if args.mode == "plain":
        trainer = model
    else:
        trainer = distributed.DataParallelModel(model, sess, shards=args.shards,
                                                reduction=args.reduction)
    if fault_kind in ("raise", "nonfinite", "kill") and mine:
        inner = model.step_share
        calls = {"n": step}

        def faulty(*args):
            calls["n"] += 1
            if calls["n"] == fault_step:
                if fault_kind == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if fault_kind == "raise":
                    raise RuntimeError(f"injected failure at step {fault_step}")
                raise NonFiniteLossError("forward: injected non-finite loss")
            return inner(*args)
        model.step_share = faulty

    state = TrainState(step=step, num_steps=args.steps, lr=args.lr, beta1=0.85, beta2=0.99,
                       eps=1e-8, batch_size=args.batch_size, seed=args.seed,
                       data_sha256=data_sha, num_docs=len(docs), rng_state=rng.getstate(),
                       losses=history)
    if out_file is not None and rank == 0:
        os.makedirs(args.out, exist_ok=True)
    stop = min(args.stop_after or args.steps, args.steps)

    def save():
        if out_file is not None and rank == 0:
            save_checkpoint(out_file, model, uchars="".join(tok.uchars), train=state)

    def run(n_total):
        nonlocal chunk
        while state.step < n_total:
            target = n_total
            if args.save_every:
                target = min(target, (state.step // args.save_every + 1) * args.save_every)
            n = min(chunk, target - state.step)
            tc = time.perf_counter()
            try:
                losses, _ = trainer.train_steps(corpus, starts, state.step, n, args.steps,
                                                args.batch_size, args.lr, 0.85, 0.99, 1e-8)
            except NonFiniteLossError as err:
                done = [float(x) for x in err.losses]
                history.extend(done)
                state.step += len(done)
                raise
            history.extend(float(x) for x in losses)
            state.step += n
            if args.save_every and state.step % args.save_every == 0:
                save()
            if fault_kind == "crash" and mine and state.step >= fault_step:
                raise RuntimeError(f"injected crash after step {state.step}")
            if not args.chunk and time.perf_counter() - tc < 0.05:
                chunk = min(chunk * 2, 1 << 14)

    chunk = args.chunk or 1
    start_step = state.step
    if args.warmup:
        run(min(stop, state.step + args.warmup))
        if hasattr(trainer, "stats"):
            trainer.stats.update(steps=0, compute=0.0, reduce=0.0, update=0.0)
    t0 = time.perf_counter()
    timed_from = state.step
    run(stop)
    seconds = time.perf_counter() - t0
    save()
    digest = (trainer.check_consistent() if isinstance(trainer, distributed.DataParallelModel)
              else distributed.params_digest(model))
    if args.result:
        result = {"rank": rank, "size": size, "start_step": start_step,
                  "losses": [float(x).hex() for x in history], "digest": digest,
                  "seconds": seconds, "timed_steps": state.step - timed_from,
                  "stats": getattr(trainer, "stats", None),
                  "threads": _core.get_num_threads()}
        with open(f"{args.result}.{rank}.json", "w") as f:
            json.dump(result, f)
    if rank == 0:
        print(f"trained {state.step} steps on {size} rank(s); loss {history[-1]:.6f}")
    return 0


def cli(argv=None) -> int:
    """``main`` with the CLI's error handling: one ``error:`` line, status 2."""
    try:
        return main(argv)
    except Exception as exc:  # noqa: BLE001
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    argv = sys.argv[1:]
    for i, a in enumerate(argv):   # a rank that dies before MPI is initialised
        if a == "--fault" and argv[i + 1].startswith("exit-before-init:"):
            if distributed.launched_rank() == int(argv[i + 1].split(":")[1]):
                print("error: injected exit before MPI_Init", file=sys.stderr)
                sys.exit(3)
    if "--no-guard" in argv:       # the Python API way: exceptions reach the excepthook
        argv.remove("--no-guard")
        distributed.session()
        sys.exit(main(argv))
    sys.exit(distributed.run_main(cli, argv))
