"""The machinery both training loops share (bsrnn.train.engine), on small real models."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bsrnn.sparsity import SparsityConfig, build_method
from bsrnn.train import engine, loop
from bsrnn.train.checkpoint import load_checkpoint
from bsrnn.train.config import OptimConfig
from bsrnn.train.engine import Checkpointer, TrainingDiverged, TrainStep, check_resumable


def _parts(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))  # BN: buffers that forward moves
    optimizer = engine.make_optimizer(OptimConfig(lr=1e-2), model)
    method = build_method(model, SparsityConfig(method="bp", block=(2, 2), target=0.5, start=1, ramp=2, end=3,
                                                freq=1), steps_per_epoch=4, total_steps=8, optimizer=optimizer)
    return model, optimizer, method


def _step(trainer, model, step, pos, poison=False):
    trainer.set_lr(step)
    with trainer.forward():
        out = model(torch.randn(6, 8))
        loss = out.square().mean() * (math.nan if poison else 1.0)
    return trainer.update(loss, step, pos)


def test_a_finite_step_updates_and_a_bad_one_touches_nothing():
    model, optimizer, method = _parts()
    trainer = TrainStep(model, optimizer, method, lr_at=lambda s: 0.1 * (s + 1), grad_clip=1.0, max_bad_batches=1,
                        units=("window", "windows"), advice="lower optim.lr", last=Path("run/last.pt"))
    pos = {"bad_batches": 0}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    done = _step(trainer, model, 0, pos)
    assert done.ok and done.grad_norm > 1.0 and optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert clipped == pytest.approx(1.0, rel=1e-4)  # the norm before clipping is reported; grads are clipped
    assert not torch.equal(model[0].weight, before["0.weight"])
    after = {k: v.clone() for k, v in model.state_dict().items()}
    done = _step(trainer, model, 1, pos, poison=True)
    assert not done.ok and math.isnan(done.grad_norm) and pos["bad_batches"] == 1
    for k, v in model.state_dict().items():  # weights and BatchNorm statistics as before the bad batch
        assert torch.equal(v, after[k]), k
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(TrainingDiverged, match=r"^training stopped at step 2: 2 windows had a non-finite loss or "
                                               r"gradient \(limit train.max_bad_batches = 1\); lower optim.lr; "
                                               r"run/last.pt holds the last good state$"):
        _step(trainer, model, 2, pos, poison=True)


def test_masks_changed_is_reported_and_update_needs_forward():
    model, optimizer, method = _parts()
    trainer = TrainStep(model, optimizer, method, lr_at=lambda s: 1e-2, grad_clip=0.0, max_bad_batches=0)
    pos = {"bad_batches": 0}
    changed = [_step(trainer, model, s, pos).masks_changed for s in range(5)]
    assert changed[0] is False and any(changed[1:4])  # pruning runs from step 1 to 3
    with pytest.raises(RuntimeError, match="inside TrainStep.forward"):
        trainer.update(model(torch.randn(6, 8)).sum(), 5, pos)


def test_checkpointer_resumes_exactly_and_keeps_the_best_among_the_sparsest(tmp_path):
    model, optimizer, method = _parts()
    trainer = TrainStep(model, optimizer, method, lr_at=lambda s: 1e-2, grad_clip=1.0, max_bad_batches=0)
    pos = {"step": 0, "bad_batches": 0, "best_key": [math.inf, math.inf]}
    config = {"train": {"seed": 0, "threads": 1}, "task": "lm"}
    ckpts = Checkpointer(tmp_path, model=model, optimizer=optimizer, method=method, config=config,
                         extra=lambda: {"kind": "test", "note": pos["step"]})
    assert ckpts.save_if_best(pos, sparsity=0.0, metric=2.0)
    assert not ckpts.save_if_best(pos, sparsity=0.0, metric=3.0)  # worse at the same sparsity
    assert ckpts.save_if_best(pos, sparsity=0.5, metric=9.0)  # sparser wins, even with a worse metric
    assert not ckpts.save_if_best(pos, sparsity=0.5, metric=9.5) and ckpts.save_if_best(pos, 0.5, 8.0)
    assert load_checkpoint(tmp_path / "best.pt")["position"]["best_key"] == [-0.5, 8.0]
    for s in range(3):
        _step(trainer, model, s, pos)
        pos["step"] = s + 1
    ckpts.save(pos)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["kind"] == "test" and ckpt["note"] == 3 and "scheduler" not in ckpt and "sampler" not in ckpt
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {k: v.clone() for k, v in method.masks.state_dict().items()}

    model2, optimizer2, method2 = _parts(seed=1)  # other weights, fresh optimizer and masks
    again = Checkpointer(tmp_path, model=model2, optimizer=optimizer2, method=method2, config=config)
    resumed = again.resume({"train": {"threads"}})
    assert resumed["position"] == pos
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected[k]), k
    for k, v in method2.masks.state_dict().items():
        assert torch.equal(v, masks[k]), k
    assert optimizer2.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    other = Checkpointer(tmp_path, model=model2, optimizer=optimizer2, method=method2,
                         config={"train": {"seed": 1, "threads": 1}, "task": "lm"})
    with pytest.raises(ValueError, match=r"last.pt was trained with train.seed = 0, not 1; use another train.run_dir"):
        other.resume({"train": {"threads"}})
    assert Checkpointer(tmp_path / "new", model=model, optimizer=optimizer, method=method,
                        config=config).resume({}) is None


def test_a_writer_cleans_up_what_a_killed_writer_left_and_a_reader_does_not(tmp_path):
    model, optimizer, method = _parts()
    stale = [tmp_path / ".last.pt.abc_1234.tmp", tmp_path / ".best.pt.tmp999"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    Checkpointer(tmp_path, model=model, optimizer=optimizer, method=method, config={}, writer=False)
    assert all(p.exists() for p in stale)  # another rank: only rank 0 writes and cleans up
    reader = Checkpointer(tmp_path, model=model, optimizer=optimizer, method=method, config={}, writer=False)
    reader.save({"step": 0})
    assert not (tmp_path / "last.pt").exists()
    Checkpointer(tmp_path, model=model, optimizer=optimizer, method=method, config={})
    assert not any(p.exists() for p in stale)


def test_check_resumable_free_keys_top_level_values_and_keys_newer_than_the_checkpoint():
    free = {"train": {"max_steps"}, "log": None}
    saved = {"train": {"epochs": 3, "max_steps": 5}, "log": {"every": 1}}  # written before "task" and "precision"
    current = {"train": {"epochs": 3, "max_steps": 0, "precision": "fp32"}, "log": {"every": 7}, "task": "speech"}
    defaults = {"train": {"precision": "fp32"}, "task": "speech"}
    check_resumable(saved, current, Path("last.pt"), free, defaults)  # a missing key counts as its default
    with pytest.raises(ValueError, match=r"last.pt was trained with train.precision = 'fp32', not 'bf16'"):
        check_resumable(saved, {**current, "train": {**current["train"], "precision": "bf16"}}, Path("last.pt"),
                        free, defaults)
    with pytest.raises(ValueError, match=r"last.pt was trained with task = 'speech', not 'lm'"):
        check_resumable(saved, {**current, "task": "lm"}, Path("last.pt"), free, defaults)
    with pytest.raises(ValueError, match=r"last.pt was trained with train.precision = None, not 'fp32'"):
        check_resumable(saved, current, Path("last.pt"), free)  # no default known: a difference


def test_run_dir_that_is_a_file_and_the_old_names(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match=r"train.run_dir .*f is a file, not a directory"):
        engine.prepare_run_dir(tmp_path / "f")
    assert not engine.prepare_run_dir(tmp_path / "later", create=False).exists()
    # the names the speech loop had before the engine existed
    assert loop.TrainingDiverged is TrainingDiverged and loop.make_optimizer is engine.make_optimizer
    assert loop.seed_everything is engine.seed_everything
    from bsrnn.train import TrainingDiverged as exported
    assert exported is TrainingDiverged
