"""The sparsity methods: BP, WP, GL and GLP (BSRNN §3; ESRNN for WP).

Every method is a small object used the same way in a training loop::

    loss = task_loss + method.penalty()
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    method.step(step)          # update masks when the schedule says so, apply them in place

* ``BlockPruning`` (BP): every ``freq`` steps each block's score (max |w| by default) is compared
  with a rising threshold (``NarangSchedule``); blocks at or below it are zeroed for good.
* ``WeightPruning`` (WP): BP with 1×1 blocks and ESRNN's heuristics.
* ``GroupLasso`` (GL): adds lambda_g * sum_g ||w_g||_2 over the same blocks; no pruning. An
  optional proximal step makes exact zeros; ``prune_below(threshold)`` zeros the blocks left
  small (``finish()``, called when training ends, does so with ``final_threshold``).
* ``GroupLassoPruning`` (GLP): BP's schedule and masks plus GL's penalty while pruning runs.

Thresholds come from one of three sources per layer kind (recurrent / non_recurrent):
an explicit ``NarangSchedule``; the paper's heuristic with q measured from the weights at the
first update (``q="auto"``, for users without a trained dense model); or *target mode*: given a
final sparsity, theta is re-solved at every update from the current block scores so that the
last update lands on the target (within a block, up to ties).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import Block, block_reduce, expand, parse_block, tiles
from .history import LayerSparsity, MaskSwap, MaskUpdate
from .masks import MaskSet
from .report import SparsityReport, build_report
from .schedules import NarangSchedule, eq1_theta, weight_quantile
from .targets import KINDS, Target, select_targets


TARGET_SCOPES = ("kind", "matrix")  # target mode: one threshold per layer kind | per matrix


def _per_kind(value, name: str) -> dict:
    """A scalar or a {kind: value} dict -> {kind: value} (unknown kinds are an error)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        bad = set(value) - set(KINDS)
        if bad:
            raise ValueError(f"{name} has unknown layer kinds {sorted(bad)}; valid kinds are {', '.join(KINDS)}")
        return dict(value)
    return {k: value for k in KINDS}


class SparsityMethod:
    """Shared plumbing: targets, masks, optimizer hygiene, state and report."""

    name = "none"
    record = MaskUpdate  # the type of this method's `history` entries

    def __init__(self, model: nn.Module, block: Block | int | str = (4, 4), *, how: str = "max",
                 include=(), exclude=(), pad: bool = False, optimizer: torch.optim.Optimizer | None = None,
                 targets: list[Target] | None = None):
        self.model = model
        self.block = parse_block(block)
        self.how = how
        block_reduce(torch.zeros(self.block), self.block, how)  # validates `how` early
        self.pad = pad
        self.optimizer = optimizer
        self.targets = targets if targets is not None else select_targets(
            model, self.block, include=include, exclude=exclude, pad=pad)
        self.masks = MaskSet(model, self.targets)
        self.thresholds: dict[str, float] = {k: 0.0 for k in self.kinds}
        self.history: list[MaskUpdate | MaskSwap] = []  # one `record` per mask update
        self.layer_history: dict[str, list[LayerSparsity]] = {}  # name -> its block sparsity after each update
        self.last_step = -1

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if any(t.kind == k for t in self.targets)]

    def targets_of(self, kind: str) -> list[Target]:
        return [t for t in self.targets if t.kind == kind]

    def scores(self, t: Target) -> torch.Tensor:
        return block_reduce(self.masks.params[t.name].detach(), t.block, self.how, t.gates, name=t.name, pad=self.pad)

    def penalty(self) -> torch.Tensor:
        return torch.zeros((), device=next(iter(self.masks.params.values())).device)

    def step(self, step: int) -> bool:
        """Called after ``optimizer.step()``; returns True when masks were updated."""
        self.last_step = step
        self.masks.apply_(self.optimizer)
        return False

    def fixed_masks(self, step: int) -> bool:
        """True when training step ``step`` may run on block-sparse kernels: its masks are final for
        that step (BP/GLP after pruning ends; sparse training throughout) and nothing in it reads
        the dense gradient of a pruned weight. The masks may still change in ``step(step)``; the
        trainer repacks then. False here: a dense model, or masks still being decided."""
        return False

    def finish(self) -> None:
        """The end-of-training hook: training loops call it once, before the final evaluation.

        Nothing to do for most methods; ``GroupLasso`` applies its ``final_threshold`` here (with
        ``prune_below``, which can also be called by hand with any threshold).
        """

    def sparsity(self) -> float:
        """Fraction of pruned blocks over all targets."""
        pruned, total = self.masks.pruned_blocks()
        return pruned / max(total, 1)

    def _record(self, step: int, kind: str) -> None:
        """Log the threshold and sparsities of one update (BSRNN Figure 3 plots these over training)."""
        names = [t.name for t in self.targets_of(kind)]
        pruned, total = self.masks.pruned_blocks(names)
        self.history.append(MaskUpdate(step, kind, self.thresholds[kind], pruned / max(total, 1)))
        for n in names:
            self.layer_history.setdefault(n, []).append(LayerSparsity(step, self.masks.block_sparsity(n)))

    def report(self) -> SparsityReport:
        return build_report(self.model, self.targets, self.thresholds, method=self.name, how=self.how, pad=self.pad)

    def state_dict(self) -> dict:
        return {"method": self.name, "masks": self.masks.state_dict(), "thresholds": dict(self.thresholds),
                "history": [r.to_dict() for r in self.history], "last_step": self.last_step,
                "layer_history": {n: [r.to_dict() for r in rows] for n, rows in self.layer_history.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.name:
            raise ValueError(f"sparsity state is for method {state.get('method')!r}, not {self.name!r}")
        self.masks.load_state_dict(state["masks"])
        self.thresholds = dict(state["thresholds"])
        # Older checkpoints hold positional rows; `from_state` reads both forms.
        self.history = [self.record.from_state(r) for r in state["history"]]
        self.layer_history = {n: [LayerSparsity.from_state(r) for r in rows]
                              for n, rows in state.get("layer_history", {}).items()}
        self.last_step = int(state["last_step"])
        self.masks.apply_(self.optimizer)


class NoSparsity(SparsityMethod):
    """The dense baseline with the same interface (it still reports the prunable layers)."""

    name = "none"


class BlockPruning(SparsityMethod):
    """BP (BSRNN §3.1): blocks whose score is at or below the rising threshold are zeroed for good.

    ``schedule``: a ``NarangSchedule`` or ``{kind: NarangSchedule}``. ``target``: a final block
    sparsity (or ``{kind: sparsity}``) — target mode, which keeps the schedule's shape and
    re-solves theta at each update; ``target_scope="kind"`` solves one threshold for all of a
    kind's matrices (the paper's one threshold per layer type: the kind lands on the target, its
    matrices spread around it), ``"matrix"`` one per matrix (each lands on the target).
    ``q="auto"``: the heuristic theta with q = 90th-percentile |w| of the kind's nonzero weights
    at the first update (``weight_quantile``: exact, or from a uniform sample over all the kind's
    matrices when they exceed torch.quantile's input limit).
    """

    name = "bp"

    def __init__(self, model: nn.Module, block=(4, 4), schedule: NarangSchedule | dict | None = None, *,
                 target: float | dict | None = None, q: float | str | dict | None = None,
                 target_scope: str = "kind", how: str = "max", include=(), exclude=(), pad: bool = False,
                 optimizer=None, targets=None):
        super().__init__(model, block, how=how, include=include, exclude=exclude, pad=pad,
                         optimizer=optimizer, targets=targets)
        if target_scope not in TARGET_SCOPES:
            raise ValueError(f"target_scope {target_scope!r} is not one of {', '.join(TARGET_SCOPES)}")
        self.target_scope = target_scope
        self.matrix_thresholds: dict[str, float] = {}  # target_scope="matrix": each matrix's last threshold
        if schedule is None:
            raise ValueError("BlockPruning needs a schedule: a NarangSchedule, {kind: NarangSchedule}, "
                             "or use bsrnn.sparsity.build_method with fractions of training")
        self.schedules = {k: (schedule[k] if isinstance(schedule, dict) else schedule) for k in self.kinds}
        missing = [k for k in self.kinds if self.schedules[k] is None]
        if missing:
            raise ValueError(f"no schedule given for layer kinds {missing}")
        self.target = _per_kind(target, "target")
        for k, s in self.target.items():
            if not 0.0 <= s < 1.0:
                raise ValueError(f"target sparsity for {k} layers must be in [0, 1), got {s}")
        self.q = _per_kind(q, "q")
        self._calibrated: set[str] = set()

    # -- the schedule ---------------------------------------------------------------------
    def _target_theta(self, kind: str, scores: list[torch.Tensor]) -> float:
        """Target mode: the theta whose schedule puts the last update's threshold at the k-th
        smallest of ``scores`` (k = round(target × blocks))."""
        sched = self.schedules[kind]
        flat = torch.cat([s.flatten() for s in scores])
        k = int(round(self.target[kind] * flat.numel()))
        eps_end = float(flat.kthvalue(k).values) if k > 0 else 0.0
        last = sched.last_update()
        unit = sched.unit_epsilon(last) if last is not None else 1.0
        return eps_end / unit if unit > 0 else 0.0

    def _matrix_scope(self, kind: str) -> bool:
        return self.target_scope == "matrix" and kind in self.target

    def _thresholds(self, kind: str, step: int, scores: list[torch.Tensor]) -> list[float]:
        """The threshold each of the kind's matrices is pruned at in the update at ``step``."""
        if self._matrix_scope(kind):  # the kind's schedule gives the shape; each matrix its own theta
            sched = self.schedules[kind]
            return [sched.with_theta(self._target_theta(kind, [s])).epsilon(step) for s in scores]
        self._solve_theta(kind, scores)
        return [self.schedules[kind].epsilon(step)] * len(scores)

    def _solve_theta(self, kind: str, scores: list[torch.Tensor]) -> None:
        sched = self.schedules[kind]
        if kind in self.target:
            self.schedules[kind] = sched.with_theta(self._target_theta(kind, scores))
        elif self.q.get(kind) is not None and kind not in self._calibrated:
            q = self.q[kind]
            if q == "auto":
                q = weight_quantile([self.masks.params[t.name] for t in self.targets_of(kind)], 0.9)
            theta = eq1_theta(float(q), sched.start_itr, sched.ramp_itr, sched.end_itr, sched.freq)
            self.schedules[kind] = sched.with_theta(theta * math.prod(self.block) ** 0.25)
            self._calibrated.add(kind)

    def is_update(self, step: int) -> bool:
        return any(self.schedules[k].is_update(step) for k in self.kinds)

    def fixed_masks(self, step: int) -> bool:
        """Pruning has ended for every kind: the masks stay as they are from ``end_itr`` on."""
        return all(self.schedules[k].frozen(step) for k in self.kinds)

    def step(self, step: int) -> bool:
        self.last_step = step
        updated = False
        for kind in self.kinds:
            if not self.schedules[kind].is_update(step):
                continue
            ts = self.targets_of(kind)
            self.masks.apply_(self.optimizer)  # score masked weights (Algorithm 1: W <- W * M first)
            scores = [self.scores(t) for t in ts]
            eps = self._thresholds(kind, step, scores)
            # per matrix: the kind's threshold is the mean of its matrices' (reports and Figure 3)
            self.thresholds[kind] = sum(eps) / len(eps) if self._matrix_scope(kind) else eps[0]
            for t, s, e in zip(ts, scores, eps):
                self.masks.prune_(t.name, s > e)
                if self._matrix_scope(kind):
                    self.matrix_thresholds[t.name] = e
            self._record(step, kind)
            updated = True
        self.masks.apply_(self.optimizer)
        return updated

    def dry_run(self) -> dict[str, float]:
        """Predicted final block sparsity of each target if the weights stayed as they are now."""
        out = {}
        for kind in self.kinds:
            ts = self.targets_of(kind)
            scores = [self.scores(t) for t in ts]
            saved = self.schedules[kind], set(self._calibrated)
            last = self.schedules[kind].last_update()
            eps = self._thresholds(kind, last, scores) if last is not None else [0.0] * len(scores)
            self.schedules[kind], self._calibrated = saved
            for t, s, e in zip(ts, scores, eps):
                keep = (s > e) & self.masks.block_masks[t.name]
                out[t.name] = 1.0 - keep.float().mean().item()
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["schedules"] = {k: s.to_dict() for k, s in self.schedules.items()}
        state["calibrated"] = sorted(self._calibrated)
        state["matrix_thresholds"] = dict(self.matrix_thresholds)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.schedules = {k: NarangSchedule(**d) for k, d in state["schedules"].items()}
        self._calibrated = set(state["calibrated"])
        self.matrix_thresholds = dict(state.get("matrix_thresholds", {}))  # absent before target_scope
        super().load_state_dict(state)


class WeightPruning(BlockPruning):
    """WP (ESRNN): BlockPruning with 1×1 blocks."""

    name = "wp"

    def __init__(self, model: nn.Module, schedule=None, **kwargs):
        if "block" in kwargs and parse_block(kwargs.pop("block")) != (1, 1):
            raise ValueError("WeightPruning prunes single weights; use BlockPruning for larger blocks")
        super().__init__(model, (1, 1), schedule, **kwargs)


def group_norms(w: torch.Tensor, t: Target, pad: bool) -> torch.Tensor:
    """||w_g||_2 of every block (differentiable; the 1e-12 keeps all-zero blocks' gradient finite)."""
    return tiles(w, t.block, t.gates, name=t.name, pad=pad).square().sum(-1).add(1e-12).sqrt()


def group_lasso_penalty(method: SparsityMethod, lambda_g: float, targets: list[Target] | None = None) -> torch.Tensor:
    """lambda_g * sum over all blocks of ``targets`` (all of the method's by default) of ||w_g||_2.

    Not squared, no sqrt(size) weight.
    """
    targets = method.targets if targets is None else targets
    if not targets:
        return SparsityMethod.penalty(method)
    return lambda_g * sum(group_norms(method.masks.params[t.name], t, method.pad).sum() for t in targets)


class GroupLasso(SparsityMethod):
    """GL (BSRNN §3.2): lambda_g * sum_g ||w_g||_2 over the pruned layers' blocks; no pruning.

    ``proximal=True`` replaces the penalty by its proximal step after each optimizer step,
    ``w_g <- w_g * max(0, 1 - lr * lambda_g / ||w_g||)``, which makes exact zeros. Plain SGD on
    the penalty rarely does, so ``prune_below(threshold)`` zeros the blocks whose score is at or
    below ``threshold`` (the final block threshold of docs/method.md §11); ``finish()`` applies
    ``final_threshold`` that way when training ends.
    """

    name = "gl"

    def __init__(self, model: nn.Module, block=(4, 4), lambda_g: float = 1e-4, *, proximal: bool = False,
                 lr: float | None = None, final_threshold: float | None = None, **kwargs):
        super().__init__(model, block, **kwargs)
        if lambda_g < 0 or not math.isfinite(lambda_g):
            raise ValueError(f"lambda_g must be a finite number >= 0, got {lambda_g}")
        self.lambda_g, self.proximal, self.lr = float(lambda_g), proximal, lr
        self.final_threshold = final_threshold

    def finish(self) -> None:
        if self.final_threshold is not None:
            self.prune_below(self.final_threshold)

    def penalty_active(self) -> bool:
        return True

    def penalty(self) -> torch.Tensor:
        if self.proximal or not self.penalty_active() or self.lambda_g == 0:
            return super().penalty()
        return group_lasso_penalty(self, self.lambda_g)

    def _lr_of(self, p: torch.Tensor) -> float:
        if self.lr is not None:
            return self.lr
        if self.optimizer is None:
            raise ValueError("the proximal group-lasso step needs the learning rate: pass optimizer= or lr=")
        for g in self.optimizer.param_groups:
            if any(q is p for q in g["params"]):
                return float(g["lr"])
        raise ValueError("a pruned parameter is not in the optimizer given to GroupLasso")

    @torch.no_grad()
    def proximal_step_(self) -> None:
        for t in self.targets:
            p = self.masks.params[t.name]
            norms = group_norms(p, t, self.pad)  # (block rows, block cols)
            shrink = (1.0 - self._lr_of(p) * self.lambda_g / norms).clamp_(min=0.0)
            p.mul_(expand(shrink, t.block, t.shape, t.gates))

    def step(self, step: int) -> bool:
        if self.proximal and self.penalty_active() and self.lambda_g > 0:
            self.proximal_step_()
        return super().step(step)

    def prune_below(self, threshold: float) -> float:
        """Zero (and mask) every block whose score is <= ``threshold`` now; returns the block sparsity."""
        self.thresholds = {k: float(threshold) for k in self.kinds}
        for t in self.targets:
            self.masks.prune_(t.name, self.scores(t) > threshold)
        self.masks.apply_(self.optimizer)
        return self.sparsity()

    def finalize(self, threshold: float) -> float:
        """The former name of ``prune_below``, kept as an alias."""
        return self.prune_below(threshold)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "lambda_g": self.lambda_g}


PENALTY_WINDOWS = ("schedule", "until_end")


class GroupLassoPruning(BlockPruning):
    """GLP (BSRNN §3.2): BP's schedule and masks, plus GL's penalty while pruning runs.

    ``penalty_window`` says when the group-lasso term of a layer kind is on:

    * ``"schedule"`` (default): for the loss of step ``s``, on the kind's matrices only while that
      kind is being pruned, ``start_itr <= s < end_itr`` of its own schedule;
    * ``"until_end"``: the earlier behaviour, kept for runs made with it: on for every pruned
      matrix from step 0 until the last kind's schedule ends.
    """

    name = "glp"

    def __init__(self, model: nn.Module, block=(4, 4), schedule=None, lambda_g: float = 1e-5, *,
                 penalty_window: str = "schedule", **kwargs):
        super().__init__(model, block, schedule, **kwargs)
        if lambda_g < 0 or not math.isfinite(lambda_g):
            raise ValueError(f"lambda_g must be a finite number >= 0, got {lambda_g}")
        if penalty_window not in PENALTY_WINDOWS:
            raise ValueError(f"penalty_window {penalty_window!r} is not one of {', '.join(PENALTY_WINDOWS)}")
        self.lambda_g = float(lambda_g)
        self.penalty_window = penalty_window

    def penalty_kinds(self, step: int | None = None) -> list[str]:
        """The layer kinds whose penalty is on in the loss of ``step`` (by default the next step)."""
        step = self.last_step + 1 if step is None else step
        if self.penalty_window == "until_end":
            return list(self.kinds) if any(step < s.end_itr for s in self.schedules.values()) else []
        return [k for k in self.kinds if self.schedules[k].start_itr <= step < self.schedules[k].end_itr]

    def penalty_active(self) -> bool:
        return bool(self.penalty_kinds())

    def penalty(self) -> torch.Tensor:
        kinds = self.penalty_kinds()
        if not kinds or self.lambda_g == 0:
            return super().penalty()
        return group_lasso_penalty(self, self.lambda_g, [t for t in self.targets if t.kind in kinds])
