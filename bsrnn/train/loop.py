"""CTC training with a sparsity method: the one visible training loop (DESIGN.md convention 7).

batch → forward → CTC loss + ``method.penalty()`` → backward → clip → ``optimizer.step()`` →
``method.step(step)`` (BSRNN §3: masks are updated on the pruning schedule and applied in place)
→ log. The paper trains with Nesterov SGD (PAPER.md §7); on CPUs Adam with warm-up and step
decay learns much faster (CALIBRATION.md §3), so both are offered. The first epoch is in length
order (SortaGrad, Deep Speech 2), later ones in shuffled length buckets.

``step`` counts batches since the start of training and is the only clock: the learning rate
and the pruning schedule are functions of it. A run stopped anywhere (``train.max_steps``, a
crash after a checkpoint) and resumed reproduces the uninterrupted run bit for bit on CPU,
because the checkpoint restores every piece of state the loop reads, and batches are drawn
straight from the sampler (a ``DataLoader`` would draw a seed from the global RNG per epoch).

Under ``torchrun`` the same loop runs data-parallel (``distributed.py``): each rank trains on its
shard of every global batch, and N ranks train the model one process would (to float tolerance).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bsrnn.data.batching import BucketBatchSampler, compute_stats
from bsrnn.data.features import FeatureStats
from bsrnn.sparsity import build_method

from . import distributed
from .checkpoint import load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state
from .config import Config, OptimConfig, ScheduleConfig, config_to_dict, save_config
from .evaluate import evaluate, final_report, format_report, manifest_for, model_from_config, open_dataset, write_json
from .metrics import RunLog


class TrainingDiverged(RuntimeError):
    """Too many batches had a non-finite loss or gradient."""


def lr_at(step: int, optim: OptimConfig, sched: ScheduleConfig, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_steps``, then × ``decay_factor`` at epoch ``decay_start`` and
    every ``decay_every`` epochs after it. A pure function of the step: nothing to checkpoint."""
    warm = min(1.0, (step + 1) / sched.warmup_steps) if sched.warmup_steps > 0 else 1.0
    epoch = step // steps_per_epoch
    n_decays = 0 if epoch < sched.decay_start else 1 + (epoch - sched.decay_start) // max(sched.decay_every, 1)
    return optim.lr * warm * sched.decay_factor ** n_decays


def make_optimizer(optim: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if optim.name == "sgd":  # the paper's optimizer
        return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum, nesterov=True,
                               weight_decay=optim.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)


def feature_stats(cfg: Config, run_dir: Path) -> FeatureStats:
    """Normalisation statistics of the training split, computed once and kept in the run directory."""
    path = run_dir / "stats.json"
    if path.is_file():
        return FeatureStats.load(path)
    cache = cfg.data.cache_dir or str(Path(cfg.data.corpus) / "features")
    compute_stats(manifest_for(cfg.data, cfg.data.train), cache_dir=cache).save(path)
    return FeatureStats.load(path)  # a resumed run reads the file: use exactly what it will read


# What a resumed run may change: where it stops, how it logs, how many threads it uses.
RESUME_FREE = {"train": {"max_steps", "resume", "threads", "checkpoint_every", "max_bad_batches", "run_dir"},
               "log": None, "data": {"cache_dir", "corpus"}}


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Refuse to continue a run under a config that would make it a different run."""
    for section, values in current.items():
        free = RESUME_FREE.get(section, set())
        if free is None:
            continue
        for key, value in values.items():
            if key not in free and saved.get(section, {}).get(key) != value:
                raise ValueError(f"{path} was trained with {section}.{key} = {saved.get(section, {}).get(key)!r}, "
                                 f"not {value!r}; use another train.run_dir, or train.resume=false to start over")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: Config, *, model: torch.nn.Module | None = None) -> dict:
    """Train (or resume) the run of ``cfg``; returns the final report (or the stop position).

    ``model`` replaces the one ``cfg.model`` describes (it must take the same inputs).
    """
    ctx = distributed.setup()  # rank and world from torchrun's environment; one process otherwise
    try:
        result = _train(cfg, model, ctx)
        distributed.barrier(ctx)  # leave together: gloo aborts a rank whose peer tears down under it
        return result
    finally:
        distributed.teardown(ctx)


def _train(cfg: Config, model: torch.nn.Module | None, ctx: distributed.Dist) -> dict:
    run_dir = Path(cfg.train.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"train.run_dir {run_dir} is a file, not a directory; name a new or existing directory")
    if ctx.is_main:  # rank 0 alone writes; the others wait for its files at the barriers
        run_dir.mkdir(parents=True, exist_ok=True)
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

    last = run_dir / "last.pt"
    if ctx.is_main:  # a writer killed mid-write (SIGKILL) left its temporary; the checkpoint is whole
        for path in (last, run_dir / "best.pt"):
            remove_stale_temporaries(path)
    if cfg.train.resume and last.is_file():
        ckpt = load_checkpoint(last)
        check_resumable(json.loads(ckpt["config"]), config_to_dict(cfg), last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        method.load_state_dict(ckpt["sparsity"])
        pos = dict(ckpt["position"])
        set_rng_state(ckpt["rng"])
        tqdm.write(f"resumed {last} at epoch {pos['epoch']}, batch {pos['batch']} (step {pos['step']})")

    def checkpoint(path: Path) -> None:
        if not ctx.is_main:
            return
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": {"lr": lr_at(pos["step"], cfg.optim, cfg.schedule, steps_per_epoch)},
                         "sparsity": method.state_dict(), "position": dict(pos), "rng": rng_state(),
                         "sampler": {"seed": cfg.train.seed, "epoch": pos["epoch"], "skip": pos["batch"]},
                         "config": json.dumps(config_to_dict(cfg))}, path)

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
                lr = lr_at(step, cfg.optim, cfg.schedule, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                # --- the training step ---------------------------------------------------------
                # Every rank reads the whole global batch (SpecAugment's RNG draws stay those of one
                # process) and trains on its shard of it.
                feats, feat_lens, targets, target_lens, _ = distributed.collate_shard(
                    [train_set[i] for i in indices], ctx)
                buffers = [b.clone() for b in model.buffers()]  # BN statistics, restored if the batch is bad
                log_probs, out_lens = forward(feats, feat_lens)  # (T', N, 29), (N,)
                ctc = distributed.ctc_loss(log_probs, targets, out_lens, target_lens, len(indices), ctx)
                penalty = method.penalty()  # in full on every rank: DDP's average leaves it unchanged
                loss = ctc + penalty
                optimizer.zero_grad(set_to_none=True)
                grad_norm = math.nan
                ctc_value, finite = distributed.agree_on_batch(ctc, float(loss.detach()), ctx)
                if finite:
                    loss.backward()
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                                     cfg.optim.grad_clip or math.inf))
                if math.isfinite(grad_norm):
                    optimizer.step()
                    if method.step(step) and ctx.enabled:  # prune on schedule; masks applied in place
                        distributed.verify_same("sparsity masks", method.masks.state_dict(), step, ctx)
                        distributed.verify_same("weights", model.state_dict(), step, ctx)
                else:  # a NaN/inf loss or gradient: skip this batch, never let it touch the model
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        for b, saved in zip(model.buffers(), buffers):
                            b.copy_(saved)
                    pos["bad_batches"] += 1
                    tqdm.write(f"step {step}: non-finite loss/gradient, batch skipped "
                               f"({pos['bad_batches']} so far)")
                    if pos["bad_batches"] > cfg.train.max_bad_batches:
                        raise TrainingDiverged(
                            f"training stopped at step {step}: {pos['bad_batches']} batches had a non-finite "
                            f"loss or gradient (limit train.max_bad_batches = {cfg.train.max_bad_batches}); "
                            f"lower optim.lr or check the data; {last} holds the last good state")
                pos["step"], pos["batch"] = step + 1, pos["batch"] + 1
                # ---------------------------------------------------------------------------------

                if finite:
                    window.append(ctc_value)
                if pos["step"] % cfg.log.every == 0 and window and log is not None:
                    log.write(pos["step"], "train", epoch=epoch + pos["batch"] / steps_per_epoch,
                              loss=sum(window) / len(window), penalty=float(penalty.detach()), lr=lr,
                              grad_norm=grad_norm, sparsity=method.sparsity(), bad_batches=pos["bad_batches"],
                              seconds=time.perf_counter() - started)
                    bar.set_postfix(loss=f"{sum(window) / len(window):.3f}", lr=f"{lr:.2e}",
                                    sparsity=f"{method.sparsity():.2f}")
                    window = []
                if pos["batch"] < steps_per_epoch and pos["step"] % cfg.train.checkpoint_every == 0:
                    checkpoint(last)
                    distributed.barrier(ctx)
                if cfg.train.max_steps and pos["step"] >= cfg.train.max_steps:
                    checkpoint(last)
                    distributed.barrier(ctx)
                    bar.close()
                    return {"stopped_at": dict(pos), "run_dir": str(run_dir)}
            bar.close()

            pos["epoch"], pos["batch"] = epoch + 1, 0
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
            checkpoint(last)
            # Best = lowest dev CER among the sparsest states, so a pruned run's best.pt is at its
            # final sparsity rather than an earlier, denser epoch.
            key = [-round(method.sparsity(), 3), dev["cer"]]
            if key < pos["best_key"]:
                pos["best_key"] = key
                checkpoint(run_dir / "best.pt")
            distributed.barrier(ctx)
    finally:
        if log is not None:
            log.close()

    if not ctx.is_main:
        return {"rank": ctx.rank, "steps": pos["step"], "run_dir": str(run_dir)}

    method.finish()  # e.g. group lasso's final block threshold, before the final evaluation
    report = final_report(cfg, model, method, stats, [cfg.data.dev, *cfg.data.test],
                          extra={"epochs": cfg.train.epochs, "steps": pos["step"], "bad_batches": pos["bad_batches"],
                                 "history": {k: pos[k] for k in ("dev_cer", "sparsity", "seconds")},
                                 "train_utterances": len(train_set), "session_seconds": time.perf_counter() - started})
    write_json(report, run_dir / "report.json")
    print(method.report().table(gates=False))
    print(format_report(report))
    return report
