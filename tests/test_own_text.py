"""Issue 12, "your own text, the nanoGPT way": text mode, validation,
--keep-best, extending a finished run, generation past the block, the
progress summary, --config TOML, and the notices of lines mode.  The
default run (the SPEC's) is checked unchanged by tests/test_cli.py."""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import microgpt_c
from microgpt_c import TrainConfig, checkpoint as ck, data as data_mod
from microgpt_c.sampling import generate
from microgpt_c.train import Progress, build_parser, config_file_settings, settings_toml


def make_source(n_funcs=60, seed=0):
    """A multi-line, indented, Python-like text."""
    r = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "value", "item", "count", "total"]
    out = []
    for i in range(n_funcs):
        a, b = r.choice(words), r.choice(words)
        out.append(f"def {a}_{i}({b}):\n    if {b} > {i}:\n        return {b} - {i}\n"
                   f"    return {a}_{i}({b} + 1)\n\n")
    return "".join(out)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "source.py.txt"
    path.write_text(make_source(), encoding="utf-8")
    return path


def text_cfg(**kw):
    base = dict(steps=60, n_layer=1, n_embd=16, n_head=2, block_size=24, batch_size=4,
                num_samples=2, data_mode="text", backend="c", lr=0.01)
    base.update(kw)
    return TrainConfig(**base)


def env():
    e = dict(os.environ)
    e.pop("MICROGPT_C_BACKEND", None)
    e["MICROGPT_C_OFFLINE"] = "1"
    return e


def cli(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", f"microgpt_c.{module}", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, env=env(), timeout=300)


# ------------------------------------------------------------------ text mode
def test_read_text_keeps_newlines_and_indentation(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbfdef f():\r\n    return 1\r\n\r\n\r\nx = 2\n")
    assert data_mod.read_text(p) == "def f():\n    return 1\n\n\nx = 2\n"


def test_windows_are_a_function_of_the_step_only():
    ids = np.arange(1000, dtype=np.int32) % 50
    one, _ = data_mod.pack_windows(ids, 8, 7, 10, 6, 3)
    a, _ = data_mod.pack_windows(ids, 8, 7, 10, 2, 3)
    b, _ = data_mod.pack_windows(ids, 8, 7, 12, 4, 3)

    def window(corpus, n_steps, step0, s, bb):   # the window train_steps uses for (s, b)
        d = (s * 3 + bb) % (n_steps * 3)
        return corpus[d * 9:(d + 1) * 9].tolist()

    for s in range(10, 16):
        for bb in range(3):
            want = window(one, 6, 10, s, bb)
            got = window(a, 2, 10, s, bb) if s < 12 else window(b, 4, 12, s, bb)
            assert got == want
    # windows are contiguous slices of the text
    w = window(one, 6, 10, 13, 1)
    start = w[0]
    assert w == [(start + k) % 50 for k in range(9)]
    # another seed, other windows
    other, _ = data_mod.pack_windows(ids, 8, 8, 10, 6, 3)
    assert not np.array_equal(one, other)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_text_mode_trains_and_samples_text(source, dtype):
    res = microgpt_c.train(text_cfg(dtype=dtype, steps=150, max_new_tokens=80), source)
    assert "\n" in res.tokenizer.uchars and " " in res.tokenizer.uchars
    assert res.docs == [source.read_text()]
    assert res.losses[-1] < res.losses[0] - 0.5
    assert len(res.samples) == 2
    for text in res.samples:
        assert text.startswith("\n") and len(text) == 1 + 80
    assert res.samples_in_data is None


def test_single_line_file_trains_in_text_mode(tmp_path):
    """The issue's 35 KB single-line file: text mode trains on all of it."""
    r = random.Random(1)
    line = " ".join(r.choice(["the", "cat", "sat", "on", "a", "mat", "and", "ran"])
                    for _ in range(9500))
    p = tmp_path / "oneline.txt"
    p.write_text(line)
    assert len(line) > 30000
    res = microgpt_c.train(text_cfg(steps=200, block_size=16, num_samples=1,
                                    max_new_tokens=120, val_fraction=0.1), p)
    assert "\n" not in res.tokenizer.uchars
    sample = res.samples[0]
    assert len(sample) == 121          # from the first character, 120 more
    words = sample.split()
    known = sum(w in {"the", "cat", "sat", "on", "a", "mat", "and", "ran"} for w in words)
    assert known >= len(words) // 2, sample    # mostly real words, not its first 16 chars
    assert res.val_losses[-1][1] < res.val_losses[0][1]


def test_text_mode_resume_is_exact(source, tmp_path):
    straight = microgpt_c.train(text_cfg(), source)
    microgpt_c.train(text_cfg(), source, out=tmp_path, stop_after=25)
    resumed = microgpt_c.train(None, source, resume=tmp_path, out=tmp_path)
    assert resumed.losses == straight.losses
    assert resumed.samples == straight.samples


def test_text_mode_batched_threads_identical(source):
    before = microgpt_c.get_num_threads()
    try:
        runs = []
        for t in (1, 2):
            microgpt_c.set_num_threads(t)
            runs.append(microgpt_c.train(text_cfg(batch_size=8, n_embd=32, steps=20,
                                                  num_samples=0), source).losses)
    finally:
        microgpt_c.set_num_threads(before)
    assert runs[0] == runs[1]


# ------------------------------------------------------------------ validation
def test_val_loss_falls_text_mode(source):
    res = microgpt_c.train(text_cfg(steps=200, val_fraction=0.2, eval_every=50, num_samples=0),
                           source)
    steps = [s for s, _ in res.val_losses]
    assert steps == [50, 100, 150, 200]
    assert res.val_losses[-1][1] < res.val_losses[0][1]


def test_val_loss_falls_lines_mode():
    r = random.Random(0)
    docs = ["".join(r.choice("abcab") for _ in range(r.randint(3, 7))) for _ in range(400)]
    cfg = TrainConfig(steps=300, n_embd=16, n_head=2, block_size=8, batch_size=4,
                      val_fraction=0.25, num_samples=3)
    res = microgpt_c.train(cfg, docs)
    assert len(res.val_losses) == 10        # the default: 10 evaluations per run
    assert res.val_losses[-1][1] < res.val_losses[0][1]
    assert res.samples_in_data is not None and 0 <= res.samples_in_data <= 3


def test_val_fraction_zero_changes_nothing():
    r = random.Random(0)
    docs = ["".join(r.choice("abcdef") for _ in range(r.randint(3, 7))) for _ in range(100)]
    a = microgpt_c.train(TrainConfig(steps=50), docs)
    b = microgpt_c.train(TrainConfig(steps=50, val_fraction=0.0, eval_every=5), docs)
    assert a.losses == b.losses and a.samples == b.samples and b.val_losses == []


def test_lines_split_is_the_end_of_the_shuffle_and_eval_leaves_training_alone():
    r = random.Random(0)
    docs = ["".join(r.choice("abcdef") for _ in range(r.randint(3, 7))) for _ in range(100)]
    a = microgpt_c.train(TrainConfig(steps=40, val_fraction=0.1, eval_every=1), docs)
    b = microgpt_c.train(TrainConfig(steps=40, val_fraction=0.1, eval_every=40), docs)
    assert a.losses == b.losses and a.samples == b.samples   # evaluation changes nothing
    assert len(a.val_losses) == 40 and a.val_losses[-1] == b.val_losses[-1]
    shuffled = list(docs)
    random.Random(42).shuffle(shuffled)
    assert a.docs == shuffled     # the SPEC's shuffle, unchanged by the split
    # the training documents are the first 90 of it: no sample of the held-out ones counted
    assert a.samples_in_data == sum(x in set(shuffled[:90]) for x in a.samples)


def test_eval_tokens_uses_a_fixed_sample(source):
    a = microgpt_c.train(text_cfg(steps=20, val_fraction=0.3, eval_tokens=50, num_samples=0,
                                  eval_every=10), source)
    b = microgpt_c.train(text_cfg(steps=20, val_fraction=0.3, num_samples=0, eval_every=10),
                         source)
    assert a.losses == b.losses
    assert a.val_losses != b.val_losses


def test_forward_batch_touches_no_gradient():
    m = microgpt_c.GPT(10, 1, 8, 2, 8)
    m.init_weights(random.Random(0))
    before = m.flat_grads.copy()
    m.forward_batch([[9, 1, 2, 9], [9, 3, 9]])
    assert np.array_equal(m.flat_grads, before)


def test_keep_best_and_val_in_the_checkpoint(source, tmp_path):
    res = microgpt_c.train(text_cfg(steps=200, val_fraction=0.2, eval_every=20, lr=0.03,
                                    keep_best=True, num_samples=0), source, out=tmp_path)
    best_step, best_loss = min(res.val_losses, key=lambda x: x[1])
    assert res.best_checkpoint == tmp_path / "best.safetensors"
    best = ck.load_checkpoint(tmp_path / "best.safetensors")
    last = ck.load_checkpoint(tmp_path)
    assert best.train.step == best_step
    assert last.train.train_config["val_history"] == [list(x) for x in res.val_losses]
    assert best.train.train_config["val_history"][-1] == [best_step, best_loss]
    with pytest.raises(microgpt_c.ConfigError, match="keep-best needs an output"):
        microgpt_c.train(text_cfg(keep_best=True, val_fraction=0.2), source)
    with pytest.raises(microgpt_c.ConfigError, match="keep-best needs a validation split"):
        microgpt_c.train(text_cfg(keep_best=True), source, out=tmp_path / "x")


def test_malformed_histories_in_a_checkpoint_are_ignored(tmp_path):
    docs = _docs()
    microgpt_c.train(TrainConfig(steps=20, num_samples=0), docs, out=tmp_path, stop_after=10)
    c = ck.load_checkpoint(tmp_path)
    c.train.train_config["schedule_history"] = "garbage"
    c.train.train_config["val_history"] = [[1, "x"]]
    straight = microgpt_c.train(TrainConfig(steps=20, num_samples=0), docs)
    rest = microgpt_c.train(None, docs, resume=c)
    assert rest.losses == straight.losses and rest.val_losses == []


# ------------------------------------------------------------------ extending a run
def _docs():
    r = random.Random(3)
    return ["".join(r.choice("abcdefg") for _ in range(r.randint(2, 8))) for _ in range(200)]


def test_extending_a_finished_run(tmp_path):
    docs = _docs()
    cfg = TrainConfig(steps=40, num_samples=3)
    first = microgpt_c.train(cfg, docs, out=tmp_path)
    ext = microgpt_c.train(TrainConfig(steps=70, num_samples=3), docs, resume=tmp_path,
                           out=tmp_path)
    assert ext.start_step == 40 and len(ext.losses) == 70
    assert ext.losses[:40] == first.losses
    saved = ck.load_checkpoint(tmp_path)
    assert saved.train.step == 70 and saved.train.num_steps == 70
    assert saved.train.train_config["schedule_history"] == [[0, 40], [40, 70]]
    # the schedule: lr * (1 - s / 70) from step 40 on
    lrs = []
    microgpt_c.train(TrainConfig(steps=40), docs, out=tmp_path / "b")
    got = microgpt_c.train(TrainConfig(steps=70, num_samples=0), docs, resume=tmp_path / "b",
                           on_steps=lambda f, l, r: lrs.extend(r))
    assert got.losses == ext.losses
    assert lrs == [0.01 * (1 - s / 70) for s in range(40, 70)]


def test_extension_resumed_midway_is_exact(tmp_path):
    docs = _docs()
    microgpt_c.train(TrainConfig(steps=30, num_samples=0), docs, out=tmp_path / "a")
    straight = microgpt_c.train(TrainConfig(steps=60, num_samples=2), docs,
                                resume=tmp_path / "a", out=tmp_path / "a")
    microgpt_c.train(TrainConfig(steps=30, num_samples=0), docs, out=tmp_path / "b")
    microgpt_c.train(TrainConfig(steps=60, num_samples=2), docs, resume=tmp_path / "b",
                     out=tmp_path / "b", stop_after=45)
    # the checkpoint at 45 knows the run is 60 steps long: no --steps needed
    rest = microgpt_c.train(None, docs, resume=tmp_path / "b", out=tmp_path / "b")
    assert rest.losses == straight.losses and rest.samples == straight.samples
    assert ck.load_checkpoint(tmp_path / "b").train.train_config["schedule_history"] == \
        [[0, 30], [30, 60]]


def test_resume_with_the_same_total_stays_bit_exact(tmp_path):
    docs = _docs()
    straight = microgpt_c.train(TrainConfig(steps=50, num_samples=4), docs)
    microgpt_c.train(TrainConfig(steps=50), docs, out=tmp_path, stop_after=20)
    rest = microgpt_c.train(TrainConfig(steps=50, num_samples=4), docs, resume=tmp_path)
    assert rest.losses == straight.losses and rest.samples == straight.samples
    assert ck.load_checkpoint(tmp_path).train.train_config["schedule_history"] == [[0, 50]]


def test_cli_extends_and_appends_metrics(tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(_docs()))
    m = tmp_path / "m.jsonl"
    p = cli("train", "--data", docs, "--steps", 20, "--out", "run", "--metrics-out", m, "-q",
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = cli("train", "--data", docs, "--resume", "run", "--steps", 30, "--out", "run",
            "--metrics-out", m, "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in m.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[25]["lr"] == 0.01 * (1 - 25 / 30)


# ------------------------------------------------------------------ generation past the block
def test_max_new_tokens_past_the_block(source):
    res = microgpt_c.train(text_cfg(steps=80, num_samples=0), source)
    model, tok = res.model, res.tokenizer
    out = generate(model, tok, random.Random(1), 3, 100, 0.8, text_mode=True, prefix="def ")
    assert all(len(s) == 4 + 100 and s.startswith("def ") for s in out)
    assert 100 > 4 * model.block_size
    # the same stream gives the same text; top-k 1 is deterministic
    again = generate(model, tok, random.Random(1), 3, 100, 0.8, text_mode=True, prefix="def ")
    assert out == again
    g1 = generate(model, tok, random.Random(1), 1, 60, 0.8, top_k=1, text_mode=True,
                  prefix="def ")
    g2 = generate(model, tok, random.Random(2), 1, 60, 0.8, top_k=1, text_mode=True,
                  prefix="def ")
    assert g1 == g2


def test_generation_with_the_cache_matches_a_recomputed_window(source):
    """Until the block is full, generate() equals feeding the whole context
    afresh for every token (the cache is only reused, never wrong)."""
    res = microgpt_c.train(text_cfg(steps=30, num_samples=0), source)
    model, tok = res.model, res.tokenizer
    T = model.block_size
    got = generate(model, tok, random.Random(5), 1, T - 2, 1.0, text_mode=True, prefix="de")[0]
    rng = random.Random(5)
    ctx = tok.encode("de")
    for _ in range(T - 2):
        for p, t in enumerate(ctx):
            logits = model.logits(t, p)
        probs = microgpt_c.softmax_temperature(logits, 1.0)
        probs[tok.bos] = 0
        ctx.append(rng.choices(range(tok.vocab_size), weights=probs.tolist())[0])
    assert got == tok.decode(ctx)


def test_lines_mode_max_new_tokens_cli_and_sample_cli(tmp_path):
    r = random.Random(0)
    docs = tmp_path / "long.txt"
    docs.write_text("\n".join("".join(r.choice("ab ") for _ in range(40)).strip() or "a"
                              for _ in range(200)))
    p = cli("train", "--data", docs, "--steps", 30, "--block-size", 8, "--n-embd", 8,
            "--n-head", 2, "--max-new-tokens", 30, "--out", "run", "--num-samples", 4,
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "are longer than block_size - 1 = 7 characters" in p.stderr
    assert "use --data-mode text" in p.stderr
    names = [line.split(": ", 1)[1] if ": " in line else "" for line in p.stdout.splitlines()
             if line.startswith("sample ")]
    assert len(names) == 4 and all(len(n) <= 30 for n in names)
    s = cli("sample", "--checkpoint", "run", cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    assert [l for l in s.stdout.splitlines()] == [l for l in p.stdout.splitlines()
                                                  if l.startswith("sample ")]


def test_text_mode_cli_and_sample_cli(source, tmp_path):
    p = cli("train", "--data", source, "--data-mode", "text", "--steps", 40, "--block-size", 16,
            "--n-embd", 16, "--n-head", 2, "--num-samples", 2, "--max-new-tokens", 50,
            "--val-fraction", 0.2, "--eval-every", 10, "--out", "run", "--progress", "plain",
            "--metrics-out", "m.jsonl", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "--- inference (new text) ---\n--- sample 1 ---\n" in p.stdout
    assert "val loss" in p.stdout
    assert "done: 40 steps" in p.stderr and "best val loss" in p.stderr
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20, 30, 40]
    s = cli("sample", "--checkpoint", "run", "--max-new-tokens", 50, cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    assert s.stdout == p.stdout.split("--- inference (new text) ---\n", 1)[1]
    s = cli("sample", "--checkpoint", "run", "--max-new-tokens", 100, "--prefix", "def",
            "--num-samples", 1, cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    body = s.stdout.split("--- sample 1 ---\n", 1)[1]
    assert body.startswith("def") and len(body.rstrip("\n")) >= 90


# ------------------------------------------------------------------ lines-mode notices
def test_samples_in_training_data_line(tmp_path):
    docs = tmp_path / "d.txt"
    docs.write_text("\n".join(["ab", "ba", "aab"] * 50))
    p = cli("train", "--data", docs, "--steps", 100, "--num-samples", 5, "--progress", "steps",
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    samples = [line.split(": ", 1)[1] for line in p.stdout.splitlines()
               if line.startswith("sample ")]
    n = sum(s in {"ab", "ba", "aab"} for s in samples)
    assert p.stderr.splitlines()[-1] == f"{n} of 5 samples are in the training data"
    assert "samples are in the training data" not in p.stdout   # stdout stays the SPEC's
    assert "are longer than" not in p.stderr


# ------------------------------------------------------------------ progress
def test_progress_ema_val_metrics_and_summary():
    out, err, metrics = io.StringIO(), io.StringIO(), io.StringIO()
    prog = Progress("plain", 4, 4, out, err, 2, metrics)
    prog(1, [3.0, 2.0], [0.1, 0.1])
    prog.on_eval(4, 1.5)
    prog(3, [1.0, 1.0], [0.1, 0.1])
    ema = 3.0
    for x in (2.0, 1.0, 1.0):
        ema = 0.98 * ema + 0.02 * x
    line = prog.summary(2.0)
    assert line == f"done: 4 steps in 2.00 s (2 steps/s) | smoothed loss {ema:.4f} | " \
                   "best val loss 1.5000 (step 4)"
    rows = [json.loads(x) for x in metrics.getvalue().splitlines()]
    assert [("val_loss" in r) for r in rows] == [False, False, False, True]
    assert Progress("steps", 4, 4, out, err).summary(1.0) is None
    # a resumed run: the best of the whole run's history
    assert prog.summary(2.0, [(2, 1.2), (4, 1.5)]).endswith("best val loss 1.2000 (step 2)")


def test_bar_shows_smoothed_and_val_loss_and_interrupt_clears_it():
    pytest.importorskip("tqdm")
    out, err = io.StringIO(), io.StringIO()
    prog = Progress("bar", 10, 10, out, err)
    prog(1, [2.0, 1.0], [0.1, 0.1])
    prog.on_eval(2, 1.25)
    prog(3, [1.0], [0.1])
    assert "val 1.2500" in prog.bar.postfix and "loss 1.9" in prog.bar.postfix
    prog.close(interrupted=True)
    tail = err.getvalue().rsplit("\r", 1)[-1]
    assert tail.strip() == ""        # the bar is cleared: the message after it is the one line


# ------------------------------------------------------------------ config files
def test_toml_round_trip(tmp_path):
    parser = build_parser()
    cfg = TrainConfig(steps=123, data_mode="text", val_fraction=0.1, lr_schedule="cosine",
                      warmup_steps=5, min_lr=0.001, weight_decay=0.1, grad_clip=1.0,
                      prefix='say "hi"\n', top_k=3, keep_best=True, max_new_tokens=77)
    text = settings_toml(cfg, {"out": "run", "save_every": 10})
    f = tmp_path / "c.toml"
    f.write_text(text)
    got = config_file_settings(parser, str(f))
    opts = {k: got.pop(k) for k in ("out", "save_every")}
    assert opts == {"out": "run", "save_every": 10}
    assert TrainConfig(**got) == TrainConfig(**{**cfg.__dict__, "data": None, "threads": None,
                                                "metrics_out": None})


def test_config_file_cli(tmp_path):
    docs = tmp_path / "d.txt"
    docs.write_text("\n".join(_docs()))
    (tmp_path / "c.toml").write_text(f'data = "{docs}"\nsteps = 30\nnum-samples = 3\n'
                                     'weight_decay = 0.01\nout = "run"\n')
    p = cli("train", "--config", "c.toml", "--steps", 25, "--print-config", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "steps = 25\n" in p.stdout and "weight-decay = 0.01\n" in p.stdout
    assert 'out = "run"' in p.stdout
    p = cli("train", "--config", "c.toml", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 3
    saved = ck.load_checkpoint(tmp_path / "run")
    assert saved.train.num_steps == 30 and saved.train.train_config["weight_decay"] == 0.01
    (tmp_path / "bad.toml").write_text("stepz = 3\n")
    p = cli("train", "--config", "bad.toml", cwd=tmp_path)
    assert p.returncode == 2 and "unknown setting 'stepz'" in p.stderr
    (tmp_path / "bad2.toml").write_text('steps = "many"\n')
    p = cli("train", "--config", "bad2.toml", cwd=tmp_path)
    assert p.returncode == 2 and "steps" in p.stderr and len(p.stderr.splitlines()) == 1


def test_options_through_train_match_the_reference():
    docs = _docs()[:40]
    kw = dict(steps=8, n_embd=8, n_head=2, block_size=8, batch_size=2, num_samples=0,
              warmup_steps=2, lr_schedule="cosine", min_lr=0.001, weight_decay=0.1,
              grad_clip=0.5, beta1=0.9, beta2=0.95)
    c = microgpt_c.train(TrainConfig(backend="c", **kw), docs)
    r = microgpt_c.train(TrainConfig(backend="reference", **kw), docs)
    np.testing.assert_allclose(c.losses, r.losses, rtol=1e-12)
    for name, value in r.model.params.items():
        scale = np.max(np.abs(value))
        assert np.max(np.abs(c.model.params[name] - value)) <= 1e-12 * scale


def test_plot_draws_the_validation_loss(tmp_path):
    pytest.importorskip("matplotlib")
    from microgpt_c.plotting import save_loss_plot

    a = save_loss_plot([3.0, 2.5, 2.0, 1.8] * 10, tmp_path / "a.svg")
    b = save_loss_plot([3.0, 2.5, 2.0, 1.8] * 10, tmp_path / "b.svg",
                       val_losses=[(10, 2.9), (20, 2.4), (40, 2.2)])
    assert "validation loss" in b.read_text() and "validation loss" not in a.read_text()
