"""``bsrnn bench overhead``: what the sparsity methods cost inside a training step.

Times, in interleaved rounds on the same model and batch (the GRU 3×256 CPU speech
model of docs/training-on-cpu.md §3, batch 24 × 230 frames by default): a plain training step
(forward, CTC, backward, Adam); ``BlockPruning.step`` at a mask-update step and at an ordinary step
(masks applied in place, also to Adam's moments); and the group-lasso ``penalty()`` with its
backward. Each is reported as a share of the training step, medians over rounds, with the issue's
goals: BP at freq 100 <= 2 %, mask application every step <= 3 %, GL <= 10 %. It also times the same
training step with the GRU run on a PackedSequence (equal lengths, as in the trainer's
length-bucketed batches) (``rnn_input = "packed"``) against the default padded path
(``padded_recurrent``), since that choice sets the speed of every run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import write_json
from ..models.deepspeech2 import build_model
from ..sparsity import BlockPruning, GroupLasso, NarangSchedule

GOALS = {"bp_freq100": 0.02, "mask_apply": 0.03, "gl_penalty": 0.10}


def _timed(fn, repeats: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def measure(preset: str = "gru256", batch: int = 24, frames: int = 230, rounds: int = 11, block=(4, 4),
            freq: int = 100, threads: int | None = None, seed: int = 0) -> dict:
    """Median times and shares of a training step; see the module docstring."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build_model(preset)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    feats = torch.randn(batch, frames, model.spec.n_mels)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    targets = torch.randint(1, model.spec.n_classes, (batch, 30))
    target_lengths = torch.full((batch,), 30, dtype=torch.long)
    sched = NarangSchedule(start_itr=0, ramp_itr=1000, end_itr=10**9, start_slope=1e-3, ramp_slope=1.5e-3, freq=freq)
    bp = BlockPruning(model, block, sched, exclude=["output.weight"], optimizer=opt)
    gl = GroupLasso(model, block, 1e-4, targets=bp.targets)

    def train_step():
        log_probs, out_lengths = model(feats, lengths)
        loss = F.ctc_loss(log_probs, targets, out_lengths, target_lengths, zero_infinity=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def train_step_packed():
        model.rnn_input = "packed"
        try:
            train_step()
        finally:
            model.rnn_input = "padded"

    def gl_penalty():
        gl.penalty().backward()
        opt.zero_grad(set_to_none=True)

    train_step()  # warm-up: allocates Adam state
    g = torch.Generator().manual_seed(seed)
    for t in bp.targets:  # the state late in a run: 90 % of blocks pruned, applied every step
        bp.masks.prune_(t.name, torch.rand(t.grid, generator=g) > 0.9)
    packable = isinstance(model.rnn, torch.nn.RNNBase)  # the hand-written RNN has no packed path
    rows = {"train_step": [], "train_step_packed": [], "bp_update": [], "bp_apply": [], "gl_penalty": []}
    if not packable:
        del rows["train_step_packed"]
    for r in range(rounds):
        rows["train_step"].append(_timed(train_step))
        if packable:
            rows["train_step_packed"].append(_timed(train_step_packed))
        # an update at a fresh update step recomputes scores of every pruned matrix
        rows["bp_update"].append(_timed(lambda: bp.step(freq * (r + 2))))
        rows["bp_apply"].append(_timed(lambda: bp.step(freq * (r + 2) + 1), repeats=10))
        rows["gl_penalty"].append(_timed(gl_penalty, repeats=3))
    med = {k: statistics.median(v) for k, v in rows.items()}
    share = {
        "bp_freq100": (med["bp_update"] + (freq - 1) * med["bp_apply"]) / freq / med["train_step"],
        "mask_apply": med["bp_apply"] / med["train_step"],
        "gl_penalty": med["gl_penalty"] / med["train_step"],
    }
    return {
        "benchmark": "overhead", "preset": preset, "batch": batch, "frames": frames, "block": list(block),
        "freq": freq, "rounds": rounds, "threads": torch.get_num_threads(),
        "pruned_params": sum(torch.Size(t.shape).numel() for t in bp.targets),
        "model_params": sum(p.numel() for p in model.parameters()),
        "block_sparsity_during_apply": bp.sparsity(),
        "median_s": med, "spread_s": {k: [min(v), max(v)] for k, v in rows.items()},
        "share_of_train_step": share, "goals": GOALS,
        "packed_over_padded": med["train_step_packed"] / med["train_step"] if packable else None,
        "meets_goals": {k: share[k] <= GOALS[k] for k in GOALS},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "loadavg": os.getloadavg(), "torch": torch.__version__, "python": platform.python_version()},
    }


def add_arguments(p) -> None:
    p.add_argument("--preset", default="gru256", help="model preset to time (default: gru256, docs/training-on-cpu.md §3)")
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--frames", type=int, default=230)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/overhead/overhead.json")


def run(args) -> int:
    res = measure(args.preset, args.batch, args.frames, args.rounds, threads=args.threads)
    res["command"] = (f"bsrnn bench overhead --preset {args.preset} --batch {args.batch} --frames {args.frames} "
                      f"--rounds {args.rounds}")
    out = Path(args.out)
    write_json(res, out)
    packed = (f"; with the recurrent layers on a PackedSequence {res['median_s']['train_step_packed'] * 1e3:.1f} ms "
              f"(x{res['packed_over_padded']:.2f})" if res["packed_over_padded"] else "")
    print(f"training step: {res['median_s']['train_step'] * 1e3:.1f} ms (median of {args.rounds}){packed}")
    for k, v in res["share_of_train_step"].items():
        print(f"{k:<12} {v:7.2%} of a step   goal <= {GOALS[k]:.0%}   {'ok' if v <= GOALS[k] else 'MISSED'}")
    print(f"wrote {out}")
    return 0
