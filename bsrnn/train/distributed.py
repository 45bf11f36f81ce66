"""Data-parallel training on several processes and machines with PyTorch's own engine.

The paper trained on 2,100 hours of speech with many GPUs (docs/method.md §16); this module lets the
one visible training loop (``loop.py``) run as N copies that together train exactly the model one
process would train on the same global batches. It is driven by ``torchrun``, which starts the
processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.

Running it
----------
One machine, N processes (CPU processes use the gloo backend; give each 1-2 threads)::

    torchrun --standalone --nproc_per_node=2 -m bsrnn train --config configs/main_dense.toml \\
        --set train.threads=1 train.run_dir=runs/gru-ddp

Several machines: run the same command on every node, with the node count, this node's rank and
a rendezvous endpoint (host:port of node 0, reachable from all nodes) that all nodes share::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=node0.example:29400 --rdzv_id=gru-ddp \\
        -m bsrnn train --config configs/main_dense.toml --set train.run_dir=/shared/runs/gru-ddp

(``--node_rank=1`` on the second node; with the c10d rendezvous ``--node_rank`` may be omitted.)
``train.run_dir`` must be on storage that rank 0 can write; only rank 0 writes checkpoints, logs,
statistics and reports, and the feature cache of ``data.corpus`` must be reachable from every node.

What makes N processes equal one
--------------------------------
* Every rank builds the same global batch order (same sampler seed) and trains on its shard of
  each global batch (``train.batch_size`` stays the global batch size, so results do not depend
  on the world size). Every rank reads all items of the global batch, so SpecAugment draws the
  same random numbers as one process and the RNG states of all ranks stay equal; shards are
  padded to the global batch's longest utterance, as one process pads them.
* Each rank's CTC loss is ``sum of its per-sample losses (divided by target length, as
  F.ctc_loss(reduction='mean')) × world / global batch``, so DDP's gradient average is the single
  process gradient of the global batch. Each rank adds the full sparsity penalty (group lasso),
  which DDP's average leaves unchanged.
* The conv front end's BatchNorm statistics are reduced over all ranks (``SyncBatchNorm2d`` on CPU,
  ``nn.SyncBatchNorm`` on CUDA), with the padded frames counted exactly as one process counts them.
* Pruning decisions are made independently on every rank from identical weights; after every mask
  update the ranks compare checksums of their masks and weights and stop with ``RankDivergence``
  naming the step and ranks if they differ.
* A NaN/inf loss on any rank makes every rank skip the batch (an all-reduced flag).
* A checkpoint stores the global position (step, epoch, global batch), so a run resumes under any
  world size, including a single process.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bsrnn.data.batching import collate


class RankDivergence(RuntimeError):
    """Ranks that must hold identical state (masks, weights) do not."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, world size, local rank; ``owner`` if it started the group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owner: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (torchrun sets it)") from None


def backend_for(device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU tensors (nccl cannot reduce CPU tensors)."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: torch.device = torch.device("cpu"), timeout_s: float = 1800.0) -> Dist:
    """Join the process group torchrun describes in the environment; a no-op for one process.

    Returns ``Dist(owner=True)`` when this call created the group, so the caller tears it down.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return Dist()
    if not 0 <= rank < world:
        raise ValueError(f"environment variable RANK={rank} must lie in [0, WORLD_SIZE={world})")
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, owner=False)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world, local_rank, owner=True)


def teardown(ctx: Dist) -> None:
    if ctx.owner and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def wrap(model: nn.Module, ctx: Dist) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks (``model`` itself otherwise).

    Buffers are not re-broadcast before each forward: the synchronised BN keeps them equal on all
    ranks, and the weight checksums at each mask update verify it.
    """
    if not ctx.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)


# -- batches ------------------------------------------------------------------------------------

def check_shardable(n_items: int, batch_size: int, world: int) -> None:
    """Every global batch (the last, shorter one included) must give each rank at least one item."""
    last = n_items % batch_size
    if batch_size < world or 0 < last < world:
        raise ValueError(f"train.batch_size = {batch_size} on {n_items} training utterances leaves a global batch "
                         f"of {last if batch_size >= world else batch_size} for {world} ranks; every global batch "
                         f"needs at least one utterance per rank: use a batch size >= {world} that leaves a "
                         f"remainder of 0 or >= {world}, or fewer ranks")


def shard(indices: list[int], ctx: Dist) -> list[int]:
    """This rank's positions in a global batch: a contiguous slice, sizes differing by at most one."""
    n = len(indices)
    lo, hi = n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world
    return list(range(lo, hi))


def collate_shard(items: list, ctx: Dist):
    """``collate`` of this rank's shard of the global batch ``items``, padded to the global T_max.

    One process pads every utterance to the global batch's longest one, and the conv BatchNorm
    counts those padded frames (deepspeech2.py), so a shard must carry the same padding.
    """
    if not ctx.enabled:
        return collate(items)
    t_max = max(f.shape[0] for f, _, _ in items)
    feats, feat_lens, targets, target_lens, ids = collate([items[i] for i in shard(list(range(len(items))), ctx)])
    feats = F.pad(feats, (0, 0, 0, t_max - feats.shape[1]))  # (N_r, T_max, F)
    return feats, feat_lens, targets, target_lens, ids


def ctc_loss(log_probs, targets, out_lens, target_lens, global_batch: int, ctx: Dist) -> torch.Tensor:
    """``F.ctc_loss(reduction='mean')`` of the global batch, as this rank's share of it.

    One process: exactly ``F.ctc_loss(..., zero_infinity=True)``. N ranks: each returns
    ``Σ_own (loss_i / U_i) × world / B`` so that DDP's average of the ranks' gradients is the
    gradient of ``(1/B) Σ_all loss_i / U_i``.
    """
    if not ctx.enabled:
        return F.ctc_loss(log_probs, targets, out_lens, target_lens, zero_infinity=True)
    per_sample = F.ctc_loss(log_probs, targets, out_lens, target_lens, reduction="none", zero_infinity=True)
    return (per_sample / target_lens.clamp_min(1).to(per_sample)).sum() * (ctx.world / global_batch)


def agree_on_batch(ctc: torch.Tensor, loss_value: float, ctx: Dist) -> tuple[float, bool]:
    """(global mean CTC loss or NaN, whether every rank's loss is finite), in one all-reduce.

    A batch is skipped on all ranks or on none: a rank that skipped backward alone would leave
    the others waiting in DDP's gradient all-reduce.
    """
    value = float(ctc.detach())
    if not ctx.enabled:
        return value, bool(torch.isfinite(torch.tensor(loss_value)))
    bad = 0.0 if torch.isfinite(torch.tensor(loss_value)) else 1.0
    flags = torch.tensor([value / ctx.world if bad == 0.0 else 0.0, bad], dtype=torch.float64)
    dist.all_reduce(flags)
    finite = bool(flags[1] == 0)
    return (float(flags[0]) if finite else math.nan), finite


# -- synchronised BatchNorm ---------------------------------------------------------------------

class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the whole global batch on all ranks.

    ``nn.SyncBatchNorm`` runs only on CUDA, so on CPU each rank would normalise with its own
    shard's statistics and N ranks would train a different model than one process. This layer
    all-reduces the per-channel count, sum and sum of squares (in float64, so the one-pass variance
    matches the single-process two-pass one to float tolerance) with the differentiable
    ``torch.distributed.nn.functional.all_reduce``, so gradients flow through the global statistics
    as they do in one process. Every frame of the input counts, padding included, exactly as in
    ``nn.BatchNorm2d`` on the full padded batch. Evaluation uses the running statistics.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable collective

        xd = x.double()
        count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=torch.float64)
        stats = torch.cat([xd.sum((0, 2, 3)), xd.square().sum((0, 2, 3)), count])  # (2C + 1,)
        with warnings.catch_warnings():  # torch 2.x deprecates it for compile's functional
            warnings.simplefilter("ignore")  # collectives (private); it stays the public differentiable one
            stats = all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean.square()).clamp_min(0.0)  # biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean) * m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var) * m)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype)[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def sync_batchnorm(model: nn.Module, device: torch.device = torch.device("cpu")) -> nn.Module:
    """Replace every BatchNorm2d of ``model`` by a synchronised one (in place; same parameter objects).

    The parameters and buffers are moved, not copied, so an optimizer or sparsity method built on
    them stays bound; state_dict keys are unchanged, so checkpoints load under any world size.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device)
    return model


# -- consistency checks -------------------------------------------------------------------------

def checksum(tensors: dict[str, torch.Tensor]) -> int:
    """A 63-bit SHA-256 prefix of the names, shapes, dtypes and bytes of ``tensors``.

    Boolean masks are bit-packed first (a mask's meaning is its bits; packing makes it 8x cheaper).
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        if t.dtype == torch.bool:
            import numpy as np
            h.update(np.packbits(t.reshape(-1).numpy()).tobytes())
        else:
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "big") >> 1


def verify_same(what: str, tensors: dict[str, torch.Tensor], step: int, ctx: Dist) -> None:
    """All-gather ``checksum(tensors)``; ``RankDivergence`` naming the step and ranks if they differ."""
    if not ctx.enabled:
        return
    mine = torch.tensor([checksum(tensors)], dtype=torch.int64)
    gathered = [torch.zeros_like(mine) for _ in range(ctx.world)]
    dist.all_gather(gathered, mine)
    sums = [int(g) for g in gathered]
    differ = [r for r, s in enumerate(sums) if s != sums[0]]
    if differ:
        raise RankDivergence(
            f"{what} differ between ranks at step {step}: rank(s) {', '.join(map(str, differ))} disagree with "
            f"rank 0 (checksums {', '.join(f'{r}:{s:016x}' for r, s in enumerate(sums))}); data-parallel "
            f"ranks must hold identical state, so the run stops here; resume it from the last checkpoint")
