"""Sparse training throughout: block-sparse from the first step (BSRNN §6 future work).

* ``StaticSparsity``: one block mask at the target sparsity, chosen at initialisation (random
  blocks, or the smallest blocks of the initial weights), applied before the first step and never
  changed.
* ``DynamicSparsity``: the same start, then every ``freq`` steps until ``end`` it drops the
  weakest live blocks (smallest score of |w|) and regrows as many pruned blocks, either where the
  dense gradient is largest (``regrow="gradient"``, RigL, Evci et al. 2020) or at random
  (``regrow="random"``, SET, Mocanu et al. 2018). The dropped fraction decays with a cosine,
  ``alpha/2 * (1 + cos(pi * step / end))``, as in RigL. Regrown blocks start at zero, with zero
  optimizer state. The sparsity of every matrix is constant at every step.

Layer sparsities: ``uniform`` (every matrix at the target) or ``erk`` (Erdős–Rényi-Kernel: denser
small matrices, density proportional to (rows + cols) / (rows * cols), scaled to hit the target
over all pruned weights).

What this saves. In principle the weights, gradients and optimizer state of a matrix at sparsity s
need (1 - s) of the dense memory and the matmuls (1 - s) of the flops, from the first step. In
practice, here, training still runs dense PyTorch kernels on dense-with-zeros tensors (there is
no block-sparse backward in torch, docs/kernels.md §10), so memory and time are those of the dense
model; what a user gains is never having to train or store a dense model first, the same
final sparsity from step 0, and a model that the block-sparse export and kernels run fast.
RigL reads the dense gradient at update steps, which a truly sparse implementation would have to
compute only then.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import block_reduce
from .history import MaskSwap
from .methods import SparsityMethod

DISTRIBUTIONS = ("uniform", "erk")


def layer_densities(shapes: list[tuple[int, int]], sparsity: float, distribution: str = "uniform") -> list[float]:
    """Density (1 - sparsity) of each matrix so that the whole set is at ``sparsity``."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparse-training sparsity must be in [0, 1), got {sparsity}")
    if distribution == "uniform":
        return [1.0 - sparsity] * len(shapes)
    if distribution != "erk":
        raise ValueError(f"layer distribution {distribution!r} is not one of {', '.join(DISTRIBUTIONS)}")
    sizes = [r * c for r, c in shapes]
    raw = [(r + c) / (r * c) for r, c in shapes]
    dense: set[int] = set()
    while True:  # ERK: scale, then fix matrices whose density would exceed 1 at 1 and rescale the rest
        budget = (1.0 - sparsity) * sum(sizes) - sum(sizes[i] for i in dense)
        free = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        eps = budget / free if free > 0 else 0.0
        over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0]
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(over)


class StaticSparsity(SparsityMethod):
    """A fixed block mask at ``sparsity`` from initialisation on (``init``: random | magnitude)."""

    name = "static"

    def __init__(self, model: nn.Module, block=(4, 4), sparsity: float = 0.9, *, init: str = "random",
                 distribution: str = "uniform", seed: int = 0, **kwargs):
        super().__init__(model, block, **kwargs)
        if init not in ("random", "magnitude"):
            raise ValueError(f"sparse-training init {init!r} is not one of random, magnitude")
        self.target_sparsity, self.init, self.distribution = float(sparsity), init, distribution
        self.generator = torch.Generator().manual_seed(seed)
        densities = layer_densities([t.grid for t in self.targets], self.target_sparsity, distribution)
        for t, d in zip(self.targets, densities):
            n_keep = int(round(d * t.n_blocks))
            score = (torch.rand(t.grid, generator=self.generator) if init == "random" else self.scores(t).cpu())
            self.masks.set_(t.name, _top_k_mask(score, n_keep))
        self.masks.apply_(self.optimizer)

    def fixed_masks(self, step: int) -> bool:
        return True  # the mask is fixed from initialisation on

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


def _top_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.zeros(score.numel(), dtype=torch.bool)
    if k > 0:
        keep[score.flatten().topk(k).indices] = True
    return keep.reshape(score.shape)


class DynamicSparsity(StaticSparsity):
    """Drop-and-regrow at block granularity (RigL by gradient, SET at random)."""

    name = "dynamic"
    record = MaskSwap

    def __init__(self, model: nn.Module, block=(4, 4), sparsity: float = 0.9, *, regrow: str = "gradient",
                 freq: int = 100, end: int = 10_000, alpha: float = 0.3, **kwargs):
        if regrow not in ("gradient", "random"):
            raise ValueError(f"regrow {regrow!r} is not one of gradient (RigL), random (SET)")
        super().__init__(model, block, sparsity, **kwargs)
        self.regrow, self.freq, self.end, self.alpha = regrow, int(freq), int(end), float(alpha)
        self._grad_scores: dict[str, torch.Tensor] = {}
        self._hooks = []
        if regrow == "gradient":
            for t in self.targets:
                p = self.masks.params[t.name]
                self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(t)))

    def _make_hook(self, t):
        def hook(p):  # only at the step before an update: the dense gradient's block scores
            if self.is_update(self.last_step + 1):
                self._grad_scores[t.name] = block_reduce(p.grad.detach(), t.block, "l2", t.gates, pad=self.pad)
        return hook

    def is_update(self, step: int) -> bool:
        return 0 < step < self.end and step % self.freq == 0

    def fixed_masks(self, step: int) -> bool:
        """Masks change only inside ``step()`` (the trainer repacks after); RigL reads the dense
        gradient of pruned blocks in the backward pass of an update step, so those steps run dense."""
        return not (self.regrow == "gradient" and self.is_update(step))

    def drop_fraction(self, step: int) -> float:
        return self.alpha / 2 * (1 + math.cos(math.pi * step / self.end))

    @torch.no_grad()
    def step(self, step: int) -> bool:
        self.last_step = step
        if not self.is_update(step):
            self.masks.apply_(self.optimizer)
            return False
        frac = self.drop_fraction(step)
        for t in self.targets:
            keep = self.masks.block_masks[t.name].cpu()
            n_live = int(keep.sum())
            n_swap = min(int(round(frac * n_live)), int((~keep).sum()))
            if n_swap == 0:
                continue
            mag = self.scores(t).cpu().masked_fill(~keep, float("inf"))
            drop = mag.flatten().topk(n_swap, largest=False).indices
            if self.regrow == "gradient" and t.name in self._grad_scores:
                grow_score = self._grad_scores[t.name].cpu().clone()
            else:
                grow_score = torch.rand(t.grid, generator=self.generator)
            grow_score = grow_score.masked_fill(keep, -float("inf")).flatten()
            grow = grow_score.topk(n_swap).indices  # among blocks pruned before this update
            new = keep.flatten().clone()
            new[drop] = False
            new[grow] = True
            # Regrown blocks were pruned until now, so their weights and optimizer state are
            # exactly zero already: they restart from zero, as in RigL.
            self.masks.set_(t.name, new.reshape(t.grid))
        self._grad_scores.clear()
        self.masks.apply_(self.optimizer)
        self.history.append(MaskSwap(step, frac, self.sparsity()))
        return True
