"""CTC training with a sparsity method: the one visible training loop (docs/architecture.md §5).

batch → forward → CTC loss + ``method.penalty()`` → backward → clip → ``optimizer.step()`` →
``method.step(step)`` (BSRNN §3: masks are updated on the pruning schedule and applied in place)
→ log. The paper trains with Nesterov SGD (docs/method.md §16); on CPUs the recipe uses Adam with
warm-up and step decay (docs/training-on-cpu.md §3 says why), so both are offered. The first epoch
is in length order (SortaGrad, Deep Speech 2), later ones in shuffled length buckets.

``step`` counts batches since the start of training and is the only clock: the learning rate
and the pruning schedule are functions of it. A run stopped anywhere (``train.max_steps``, a
crash after a checkpoint) and resumed reproduces the uninterrupted run bit for bit on CPU,
because the checkpoint restores every piece of state the loop reads, and batches are drawn
straight from the sampler (a ``DataLoader`` would draw a seed from the global RNG per epoch).

Under ``torchrun`` the same loop runs data-parallel (``distributed.py``): each rank trains on its
shard of every global batch, and N ranks train the model one process would (to float tolerance).

What this loop shares with the language-model loop (``lm.py``) is in ``engine.py``: checkpoints
and resume, the learning-rate setting, and the optimizer update with its non-finite-batch guard.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from tqdm import tqdm

from bsrnn.data.batching import BucketBatchSampler
from bsrnn.models.precision import native_bf16
from bsrnn.models.precision import resolve as resolve_precision
from bsrnn.sparsity import build_method

from . import distributed
from .build import feature_stats, model_from_config, open_dataset
from .config import Config, OptimConfig, ScheduleConfig, config_to_dict, save_config
# TrainingDiverged, make_optimizer, seed_everything, feature_stats: also importable from here,
# where they once lived
from .engine import (Checkpointer, TrainingDiverged, TrainStep, make_optimizer, prepare_run_dir,  # noqa: F401
                     seed_everything)
from .engine import check_resumable as _check_resumable
from .evaluate import evaluate, final_report, format_report, write_json
from .memory import allocator_name, bound_primitive_cache, peak_rss_mb, release_free_memory
from .metrics import RunLog

__all__ = ["train", "lr_at", "TrainingDiverged", "RESUME_FREE"]


def lr_at(step: int, optim: OptimConfig, sched: ScheduleConfig, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_steps``, then × ``decay_factor`` at epoch ``decay_start`` and
    every ``decay_every`` epochs after it. A pure function of the step: nothing to checkpoint."""
    warm = min(1.0, (step + 1) / sched.warmup_steps) if sched.warmup_steps > 0 else 1.0
    epoch = step // steps_per_epoch
    n_decays = 0 if epoch < sched.decay_start else 1 + (epoch - sched.decay_start) // max(sched.decay_every, 1)
    return optim.lr * warm * sched.decay_factor ** n_decays


# What a resumed run may change: where it stops, how it logs, how many threads it uses.
RESUME_FREE = {"train": {"max_steps", "resume", "threads", "checkpoint_every", "max_bad_batches", "run_dir"},
               "log": None, "data": {"cache_dir", "corpus"}}


def resume_defaults() -> dict:
    """What a key missing from a saved config meant: its default, except that runs from before
    ``train.precision`` existed trained in fp32 (the default is now ``auto``)."""
    defaults = config_to_dict(Config())
    defaults["train"]["precision"] = "fp32"
    defaults["train"]["sparse_kernels"] = "off"  # and on dense kernels throughout
    return defaults


def check_resumable(saved: dict, current: dict, path) -> None:
    """Refuse to continue a speech run under a config that would make it a different run."""
    _check_resumable(saved, current, path, RESUME_FREE, resume_defaults())


def train(cfg: Config, *, model: torch.nn.Module | None = None) -> dict:
    """Train (or resume) the run of ``cfg``; returns the final report (or the stop position).

    ``model`` replaces the one ``cfg.model`` describes (it must take the same inputs).
    """
    bound_primitive_cache()  # before the first convolution: oneDNN reads it once (bsrnn.train.memory)
    ctx = distributed.setup()  # rank and world from torchrun's environment; one process otherwise
    try:
        result = _train(cfg, model, ctx)
        distributed.barrier(ctx)  # leave together: gloo aborts a rank whose peer tears down under it
        return result
    finally:
        distributed.teardown(ctx)


def _train(cfg: Config, model: torch.nn.Module | None, ctx: distributed.Dist) -> dict:
    # "auto" precision becomes this machine's choice before the config is saved, so a run resumed
    # on a machine that would choose otherwise is refused rather than silently continued differently
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=resolve_precision(cfg.train.precision)))
    run_dir = prepare_run_dir(cfg.train.run_dir, create=ctx.is_main)  # rank 0 alone writes; the
    if ctx.is_main:                                                   # others wait at the barriers
        save_config(cfg, run_dir / "config.json")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)

    if ctx.enabled and ctx.is_main:  # statistics and feature caches are computed once, by rank 0
        open_dataset(cfg.data, cfg.data.dev, feature_stats(cfg, run_dir))
    distributed.barrier(ctx)
    stats = feature_stats(cfg, run_dir)
    train_set = open_dataset(cfg.data, cfg.data.train, stats, spec_augment=cfg.features.spec_augment,
                             limit=cfg.data.max_train_utts)
    dev_set = open_dataset(cfg.data, cfg.data.dev, stats)
    if ctx.enabled:
        distributed.check_shardable(len(train_set), cfg.train.batch_size, ctx.world)
    sampler = BucketBatchSampler(train_set.lengths, cfg.train.batch_size, sortagrad=cfg.train.sortagrad,
                                 seed=cfg.train.seed)
    steps_per_epoch = len(sampler)
    total_steps = cfg.train.epochs * steps_per_epoch

    model = model if model is not None else model_from_config(cfg.model)
    if ctx.enabled:  # BN statistics over the global batch, as one process computes them
        distributed.sync_batchnorm(model)
    optimizer = make_optimizer(cfg.optim, model)
    method = build_method(model, cfg.sparsity, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                          optimizer=optimizer)
    pos = {"step": 0, "epoch": 0, "batch": 0, "bad_batches": 0, "best_key": [math.inf, math.inf],
           "dev_cer": [], "sparsity": [], "seconds": []}  # per-epoch history

    checkpoints = Checkpointer(run_dir, model=model, optimizer=optimizer, method=method,
                               config=config_to_dict(cfg), writer=ctx.is_main)
    resumed = checkpoints.resume(RESUME_FREE, defaults=resume_defaults()) if cfg.train.resume else None
    if resumed is not None:  # every rank restores the same state
        pos = dict(resumed["position"])
        tqdm.write(f"resumed {checkpoints.last} at epoch {pos['epoch']}, batch {pos['batch']} (step {pos['step']})")
    trainer = TrainStep(model, optimizer, method,
                        lr_at=lambda step: lr_at(step, cfg.optim, cfg.schedule, steps_per_epoch),
                        grad_clip=cfg.optim.grad_clip, max_bad_batches=cfg.train.max_bad_batches,
                        units=("batch", "batches"), advice="lower optim.lr or check the data",
                        last=checkpoints.last, precision=cfg.train.precision,
                        recurrent_precision=cfg.train.recurrent_precision,
                        block_sparse=cfg.train.sparse_kernels == "auto")
    if ctx.is_main and resumed is None:
        tqdm.write(f"precision {trainer.precision} (recurrent products "
                   f"{getattr(model, 'recurrent_precision', trainer.precision)}; native bf16: {native_bf16() or 'none'})")

    def checkpoint() -> None:  # last.pt, then every rank goes on together
        checkpoints.save(pos)
        distributed.barrier(ctx)

    forward = distributed.wrap(model, ctx)  # DDP all-reduces the gradients in backward
    log = RunLog(run_dir, tensorboard=cfg.log.tensorboard) if ctx.is_main else None
    window: list[float] = []  # losses since the last log row
    started = time.perf_counter()
    try:
        while pos["epoch"] < cfg.train.epochs:
            epoch = pos["epoch"]
            sampler.set_epoch(epoch)
            sampler.skip(pos["batch"])  # resume inside an epoch at the next unseen batch
            model.train()
            bar = tqdm(sampler, total=steps_per_epoch, initial=pos["batch"], desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                       unit="batch", disable=not (cfg.log.progress and ctx.is_main), dynamic_ncols=True)
            for indices in bar:
                step = pos["step"]
                lr = trainer.set_lr(step)

                # --- the training step ---------------------------------------------------------
                # Every rank reads the whole global batch (SpecAugment's RNG draws stay those of one
                # process) and trains on its shard of it.
                feats, feat_lens, targets, target_lens, _ = distributed.collate_shard(
                    [train_set[i] for i in indices], ctx)
                with trainer.forward(step):
                    log_probs, out_lens = forward(feats, feat_lens)  # (T', N, 29), (N,)
                    ctc = distributed.ctc_loss(log_probs, targets, out_lens, target_lens, len(indices), ctx)
                penalty = method.penalty()  # in full on every rank: DDP's average leaves it unchanged
                loss = ctc + penalty
                # A batch is skipped on every rank or on none (a NaN on one rank skips it everywhere).
                ctc_value, finite = distributed.agree_on_batch(ctc, float(loss.detach()), ctx)
                done = trainer.update(loss, step, pos, finite=finite)  # masks updated on schedule
                if done.masks_changed and ctx.enabled:
                    distributed.verify_same("sparsity masks", method.masks.state_dict(), step, ctx)
                    distributed.verify_same("weights", model.state_dict(), step, ctx)
                pos["step"], pos["batch"] = step + 1, pos["batch"] + 1
                # ---------------------------------------------------------------------------------

                if finite:
                    window.append(ctc_value)
                if pos["step"] % cfg.log.every == 0 and window and log is not None:
                    log.write(pos["step"], "train", epoch=epoch + pos["batch"] / steps_per_epoch,
                              loss=sum(window) / len(window), penalty=float(penalty.detach()), lr=lr,
                              grad_norm=done.grad_norm, sparsity=method.sparsity(), bad_batches=pos["bad_batches"],
                              seconds=time.perf_counter() - started)
                    bar.set_postfix(loss=f"{sum(window) / len(window):.3f}", lr=f"{lr:.2e}",
                                    sparsity=f"{method.sparsity():.2f}")
                    window = []
                if pos["batch"] < steps_per_epoch and pos["step"] % cfg.train.checkpoint_every == 0:
                    checkpoint()
                if cfg.train.max_steps and pos["step"] >= cfg.train.max_steps:
                    checkpoint()
                    bar.close()
                    return {"stopped_at": dict(pos), "run_dir": str(run_dir)}
            bar.close()

            pos["epoch"], pos["batch"] = epoch + 1, 0
            release_free_memory()  # give back the heap pages this epoch's batch shapes left free
            distributed.verify_same("weights", model.state_dict(), pos["step"], ctx)
            if not ctx.is_main:  # rank 0 evaluates and writes; evaluation draws no random numbers
                distributed.barrier(ctx)
                continue
            dev = evaluate(model, dev_set)
            pos["dev_cer"].append(dev["cer"])
            pos["sparsity"].append(method.sparsity())
            pos["seconds"].append(time.perf_counter() - started)
            log.write(pos["step"], "dev", epoch=epoch + 1, loss=dev["loss"], cer=dev["cer"], wer=dev["wer"],
                      sparsity=method.sparsity(), seconds=time.perf_counter() - started)
            tqdm.write(f"epoch {epoch + 1}: dev CER {dev['cer']:.2f}%  WER {dev['wer']:.2f}%  "
                       f"loss {dev['loss']:.3f}  sparsity {method.sparsity():.3f}  "
                       f"e.g. {dev['examples'][0]['hyp']!r}")
            # best.pt first, so that last.pt carries the updated best key (a run resumed from it
            # judges the next epochs against the same best as the uninterrupted run)
            checkpoints.save_if_best(pos, method.sparsity(), dev["cer"])
            checkpoint()
    finally:
        if log is not None:
            log.close()

    if not ctx.is_main:
        return {"rank": ctx.rank, "steps": pos["step"], "run_dir": str(run_dir)}

    method.finish()  # e.g. group lasso's final block threshold, before the final evaluation
    report = final_report(cfg, model, method, stats, [cfg.data.dev, *cfg.data.test],
                          extra={"epochs": cfg.train.epochs, "steps": pos["step"], "bad_batches": pos["bad_batches"],
                                 "history": {k: pos[k] for k in ("dev_cer", "sparsity", "seconds")},
                                 "train_utterances": len(train_set), "session_seconds": time.perf_counter() - started,
                                 "precision": cfg.train.precision,
                                 "recurrent_precision": getattr(model, "recurrent_precision", cfg.train.precision),
                                 "peak_rss_mb": peak_rss_mb(), "allocator": allocator_name()})
    write_json(report, run_dir / "report.json")
    print(method.report().table(gates=False))
    print(format_report(report))
    return report
