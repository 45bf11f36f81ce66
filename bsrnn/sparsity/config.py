"""``SparsityConfig``: the ``[sparsity]`` table of a run configuration, and ``build_method``.

Start, ramp and end of pruning are given as fractions of training (``0.2``), as iterations
(``1500``), or left out for the paper's heuristics (start after one epoch; ramp/end at 20 %/40 %
of training for blocks, 25 %/50 % for single weights, docs/method.md §4). Theta comes from
``target`` (target mode), or from ``q`` (a number, or ``"auto"``: the 90th-percentile |w| of the
weights at the first update, for users without a trained dense model). GLP's group-lasso term is
on while each layer kind is pruned (``penalty_window = "schedule"``); ``"until_end"`` restores the
earlier window, from step 0 until the last kind's pruning ends.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from .blocks import parse_block
from .dynamic import DynamicSparsity, StaticSparsity
from .methods import PENALTY_WINDOWS, TARGET_SCOPES, BlockPruning, GroupLasso, GroupLassoPruning, NoSparsity, SparsityMethod, WeightPruning
from .schedules import HEURISTIC_FRACTIONS, NarangSchedule

METHODS = ("none", "wp", "bp", "gl", "glp", "static", "rigl", "set")


@dataclass
class SparsityConfig:
    method: str = "none"  # none | wp | bp | gl | glp | static | rigl | set (sparse from the first step)
    block: list[int] = field(default_factory=lambda: [4, 4])  # block rows, cols (wp forces 1×1)
    how: str = "max"  # block score: max (paper) | mean | rms | l2 | geomean | median
    include: list[str] = field(default_factory=list)  # glob patterns of parameters to prune (empty: default rule)
    exclude: list[str] = field(default_factory=list)  # glob patterns never pruned (e.g. the output layer)
    pad: bool = False  # allow partial edge blocks when a block does not tile a matrix
    freq: int = 100  # iterations between mask updates
    start: float | None = None  # first pruning iteration: fraction of training, iteration, or None = 1 epoch
    ramp: float | None = None  # slope change: fraction/iteration, None = 20 % (blocks) / 25 % (weights)
    end: float | None = None  # masks frozen from here: fraction/iteration, None = 40 % / 50 %
    ramp_ratio: float = 1.5  # phi / theta
    q: float | str | None = "auto"  # 90th-percentile |w| for Eq. 1, or "auto" (measured at the first update)
    target: float | None = None  # final block sparsity for every layer kind (target mode; overrides q)
    target_recurrent: float | None = None  # target for recurrent-layer matrices only
    target_non_recurrent: float | None = None  # target for fully connected matrices only
    # target mode: "kind" = one threshold for all of a layer kind's matrices (the paper; the kind
    # lands on the target, single matrices above or below it) | "matrix" = each matrix lands on it
    target_scope: str = "kind"
    lambda_g: float = 0.0  # group-lasso weight (gl: large, glp: small)
    penalty_window: str = "schedule"  # glp: penalty while each kind is pruned (start..end) | until_end (from step 0)
    proximal: bool = False  # gl: proximal step instead of the penalty gradient (exact zeros)
    final_threshold: float | None = None  # gl: zero blocks with score <= this at the end of training
    init: str = "random"  # static/rigl/set: initial block mask, random | magnitude
    distribution: str = "uniform"  # static/rigl/set: per-matrix sparsity, uniform | erk
    alpha: float = 0.3  # rigl/set: fraction of live blocks swapped at the first update (cosine decay)
    seed: int = 0  # static/rigl/set: seed of the random block choices

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"sparsity.method {self.method!r} is not one of {', '.join(METHODS)}")
        parse_block(self.block)
        for name in ("target", "target_recurrent", "target_non_recurrent"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                raise ValueError(f"sparsity.{name} must be in [0, 1), got {v}")
        if self.freq < 1:
            raise ValueError(f"sparsity.freq must be >= 1, got {self.freq}")
        if self.lambda_g < 0:
            raise ValueError(f"sparsity.lambda_g must be >= 0, got {self.lambda_g}")
        if self.penalty_window not in PENALTY_WINDOWS:
            raise ValueError(f"sparsity.penalty_window {self.penalty_window!r} is not one of {', '.join(PENALTY_WINDOWS)}")
        if self.target_scope not in TARGET_SCOPES:
            raise ValueError(f"sparsity.target_scope {self.target_scope!r} is not one of {', '.join(TARGET_SCOPES)}")
        if isinstance(self.q, str) and self.q != "auto":
            raise ValueError(f"sparsity.q must be a number or 'auto', got {self.q!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "SparsityConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown sparsity keys {sorted(unknown)}; valid keys are {', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def targets(self) -> dict[str, float] | None:
        per = {"recurrent": self.target_recurrent, "non_recurrent": self.target_non_recurrent}
        per = {k: (v if v is not None else self.target) for k, v in per.items()}
        return {k: v for k, v in per.items() if v is not None} or None

    def schedule(self, total_steps: int, steps_per_epoch: int) -> NarangSchedule:
        block = (1, 1) if self.method == "wp" else parse_block(self.block)
        ramp_f, end_f = HEURISTIC_FRACTIONS["weight" if block == (1, 1) else "block"]
        return NarangSchedule.from_fractions(
            total_itr=total_steps, start=steps_per_epoch if self.start is None else self.start,
            ramp=ramp_f if self.ramp is None else self.ramp, end=end_f if self.end is None else self.end,
            freq=self.freq, theta=1.0, ramp_ratio=self.ramp_ratio)


def build_method(model: nn.Module, cfg: SparsityConfig | dict | None, *, steps_per_epoch: int, total_steps: int,
                 optimizer: torch.optim.Optimizer | None = None) -> SparsityMethod:
    """The sparsity method a config asks for, bound to ``model`` (and ``optimizer``)."""
    if cfg is None:
        cfg = SparsityConfig()
    if isinstance(cfg, dict):
        cfg = SparsityConfig.from_dict(cfg)
    common = dict(how=cfg.how, include=cfg.include, exclude=cfg.exclude, pad=cfg.pad, optimizer=optimizer)
    if cfg.method == "none":
        try:
            return NoSparsity(model, cfg.block, **common)
        except ValueError:  # nothing prunable (or the block does not tile): a dense run needs no targets
            return NoSparsity(model, (1, 1), **{**common, "pad": True})
    if cfg.method == "gl":
        return GroupLasso(model, cfg.block, cfg.lambda_g, proximal=cfg.proximal,
                          final_threshold=cfg.final_threshold, **common)
    if cfg.method in ("static", "rigl", "set"):
        if cfg.target is None:
            raise ValueError(f"sparsity.method {cfg.method!r} trains sparse from the first step and needs "
                             "sparsity.target, the sparsity to hold throughout")
        kw = dict(init=cfg.init, distribution=cfg.distribution, seed=cfg.seed, **common)
        if cfg.method == "static":
            return StaticSparsity(model, cfg.block, cfg.target, **kw)
        end = cfg.end if cfg.end is not None else 0.75  # RigL stops updating at 75 % of training
        end_itr = int(round(end * total_steps)) if isinstance(end, float) and end <= 1 else int(end)
        return DynamicSparsity(model, cfg.block, cfg.target, regrow="gradient" if cfg.method == "rigl" else "random",
                               freq=cfg.freq, end=end_itr, alpha=cfg.alpha, **kw)
    schedule = cfg.schedule(total_steps, steps_per_epoch)
    targets = cfg.targets()
    kw = dict(target=targets, q=None if targets else cfg.q, target_scope=cfg.target_scope, **common)
    if cfg.method == "wp":
        return WeightPruning(model, schedule, **kw)
    if cfg.method == "bp":
        return BlockPruning(model, cfg.block, schedule, **kw)
    return GroupLassoPruning(model, cfg.block, schedule, lambda_g=cfg.lambda_g, penalty_window=cfg.penalty_window, **kw)
