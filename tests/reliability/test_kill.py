"""No data lost: SIGKILL the training process at chosen and random moments, then resume.

Each kill runs ``bsrnn train`` in a child process that kills itself (SIGKILL: no cleanup, no
``finally``) at one point of the run: inside ``optimizer.step`` (during a training step), between
two layers of a mask update (``MaskSet.prune_``), or half-way through writing a checkpoint's bytes.
The points are installed by wrapping those library functions in the child only; the library is
unchanged. Some kills instead come from outside after a random delay. After every kill the last
checkpoint must load (its digest verifies the contents) and be the one before or a newer whole
one; the next child resumes from it. The run that survives all kills must end with the masks,
weights, optimizer, RNG and position of the uninterrupted run, bit for bit.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from bsrnn.data.synth import synthesize
from bsrnn.train.checkpoint import load_checkpoint

PROMPTS = ["the cat sat on the mat", "open the door please", "green apples are sour", "my dog likes to run",
           "rain falls on the hill", "read the book aloud", "call me in the morning", "the sky is blue today",
           "time flies like an arrow", "we need more light here"]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None and shutil.which("flite") is None,
                                reason="needs espeak-ng or flite to synthesize the test utterances")

# The child: train under the overrides in argv, killing itself at the point named by BSRNN_TEST_KILL
# ("step:N" = the N-th optimizer step, "mask:N" = the N-th per-layer mask update,
#  "write:N" = half-way through the N-th checkpoint's bytes).
CHILD = textwrap.dedent('''
    import io, os, signal, sys
    import torch
    from bsrnn.sparsity import masks
    from bsrnn.train import checkpoint, load_config, train
    from bsrnn.train import loop

    where, _, n = os.environ.get("BSRNN_TEST_KILL", "none:0").partition(":")
    count = {"n": 0}

    def hit():
        count["n"] += 1
        if count["n"] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)

    if where == "step":
        make = loop.make_optimizer
        def make_optimizer(*a, **k):
            opt = make(*a, **k)
            step = opt.step
            def killing_step(*sa, **sk):
                out = step(*sa, **sk)  # parameters updated, masks not yet applied: mid-step
                hit()
                return out
            opt.step = killing_step
            return opt
        loop.make_optimizer = make_optimizer
    elif where == "mask":
        prune = masks.MaskSet.prune_
        def prune_(self, *a, **k):
            out = prune(self, *a, **k)
            hit()  # some layers have their new mask, others not yet
            return out
        masks.MaskSet.prune_ = prune_
    elif where == "write":
        real_open = open
        class HalfWriter:
            def __init__(self, f):
                self.f = f
            def write(self, data):
                count["n"] += 1
                if count["n"] == int(n):
                    data = bytes(data)
                    self.f.write(data[: len(data) // 2])
                    self.f.flush()
                    os.fsync(self.f.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
                return self.f.write(data)
            def __getattr__(self, name):
                return getattr(self.f, name)
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.f.close()
        checkpoint.open = lambda path, mode="r": HalfWriter(real_open(path, mode))
    train(load_config(None, sys.argv[1:]))
''')


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, n_utts=10, dev_size=2, test_size=2, unseen_voice_test_size=0, prompts=PROMPTS,
               workers=1, progress=False, seed=3)
    return out  # train holds 6 utterances: 3 steps per epoch


def settings(corpus, run_dir):
    # Block pruning updates masks at every step from 1 to 6; SpecAugment draws from the RNG; a
    # checkpoint at every step makes kills during writes likely and resumes exact.
    return [f"data.corpus={corpus}", f"train.run_dir={run_dir}", "data.test=['test']", "model.preset=gru32",
            "model.hidden=24", "model.conv_channels=4", "train.threads=1", "train.batch_size=2", "train.epochs=3",
            "schedule.warmup_steps=2", "log.progress=false", "log.tensorboard=false", "log.every=1",
            "train.checkpoint_every=1", "sparsity.method=bp", "sparsity.block=[4,4]",
            "sparsity.exclude=['output.*']", "sparsity.freq=1", "sparsity.start=1", "sparsity.ramp=3",
            "sparsity.end=6", "sparsity.target=0.5", "features.spec_augment=true"]


def run_child(script, args, kill=None, delay=None) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BSRNN_TEST_KILL": kill or "none:0"}
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"child failed ({proc.returncode}): {err[-2000:]}")
    return proc.returncode


def state(path):
    ckpt = load_checkpoint(path)  # verifies the digest: a half-written file cannot pass
    position = {k: v for k, v in ckpt["position"].items() if k != "seconds"}
    return {"model": ckpt["model"], "optimizer": ckpt["optimizer"], "sparsity": ckpt["sparsity"],
            "position": position, "rng": ckpt["rng"]}


def assert_identical(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def kill_and_resume(corpus, tmp_path, plan) -> dict:
    """Run ``plan`` (kill specs), resuming after each; returns counts. Ends with a run to completion."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run_child(script, settings(corpus, tmp_path / "whole"))
    reference = state(tmp_path / "whole" / "last.pt")

    run_dir = tmp_path / "killed"
    last = run_dir / "last.pt"
    counts = {"kills": 0, "recoveries": 0, "finished_early": 0}
    for kill, delay in plan:
        before = last.read_bytes() if last.exists() else None
        step_before = state(last)["position"]["step"] if before else -1
        code = run_child(script, settings(corpus, run_dir), kill, delay)
        if code == 0:  # the run ended before the kill point: nothing more to interrupt
            counts["finished_early"] += 1
            break
        counts["kills"] += 1
        if last.exists():
            # Whole and loadable; either untouched or a newer complete checkpoint.
            now = state(last)
            assert now["position"]["step"] >= step_before, kill
            if now["position"]["step"] == step_before:
                assert last.read_bytes() == before, kill
        else:
            assert before is None, kill
        counts["recoveries"] += 1
    assert run_child(script, settings(corpus, run_dir)) == 0  # resume to the end
    assert not list(run_dir.glob(".*.tmp*"))  # no half-written temporaries left behind
    assert_identical(state(last), reference)
    masks = reference["sparsity"]["masks"]
    assert any(not bool(m.all()) for m in masks.values())  # pruning happened, so masks were compared
    return counts


def test_sigkill_during_step_mask_update_and_checkpoint_write_loses_nothing(corpus, tmp_path):
    # Counts are per child process, so each resumed child is killed a little further on.
    plan = [("step:2", None), ("mask:3", None), ("write:2", None), ("step:3", None), ("write:1", None)]
    counts = kill_and_resume(corpus, tmp_path, plan)
    assert counts["kills"] == len(plan) and counts["recoveries"] == len(plan), counts
    print(f"kills {counts['kills']}, recoveries {counts['recoveries']}")


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(corpus, tmp_path):
    rng = random.Random(int(os.environ.get("BSRNN_KILL_SEED", "7")))
    points = [f"{where}:{rng.randint(1, 4)}" for where in rng.choices(["step", "mask", "write"], k=8)]
    plan = [(p, None) for p in points] + [(None, rng.uniform(3.0, 8.0)) for _ in range(4)]
    rng.shuffle(plan)
    started = time.perf_counter()
    counts = kill_and_resume(corpus, tmp_path, plan)
    assert counts["kills"] == counts["recoveries"] and counts["kills"] >= 4, counts
    print(f"kills {counts['kills']}, recoveries {counts['recoveries']}, {time.perf_counter() - started:.0f} s")
