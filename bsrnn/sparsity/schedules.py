"""The pruning threshold schedule: a pure function of the training step.

ESRNN Algorithm 1 (Narang et al. 2017a), reused by BSRNN §3.1 for blocks. Between ``start_itr``
and ``end_itr``, every ``freq`` iterations, the threshold is

    eps(it) = theta * (it - start_itr + 1) / freq                                  it <  ramp_itr
    eps(it) = (theta * (ramp_itr - start_itr + 1) + phi * (it - ramp_itr + 1)) / freq   it >= ramp_itr

and the mask is recomputed as ``score > eps`` (updates happen when ``start_itr < it < end_itr``
and ``it % freq == 0``). Before the first update nothing is pruned; after ``end_itr`` the mask
is frozen.

The heuristics (docs/method.md §4):
  * Eq. 1:  theta_w = 2 q freq / (2 (ramp - start) + 3 (end - ramp)), q = 90th-percentile |w|
    of a trained dense model. With phi = 1.5 theta the last threshold is about q.
  * blocks: theta_b = theta_w * N_b ** (1/4), N_b = weights per block.
  * phi = 1.5–2 theta (weights), 1.2–1.7 theta (blocks).
  * start/ramp/end: weights 1 epoch / 25 % / 50 % of training; blocks 1 epoch / 20 % / 40 %.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable

import torch

from .blocks import Block, parse_block

# Fractions of training where the slope changes and where pruning ends (docs/method.md §4).
HEURISTIC_FRACTIONS = {"weight": (0.25, 0.50), "block": (0.20, 0.40)}

# torch.quantile takes at most 2**24 values: above this many nonzero weights, q is measured on a
# uniform sample of this size (read at call time, so a test can lower it).
QUANTILE_LIMIT = 16_000_000


def weight_quantile(weights: Iterable[torch.Tensor], q: float = 0.9, *, seed: int = 0) -> float:
    """The ``q``-quantile of |w| over the nonzero entries of all ``weights`` (0.0 if there are none).

    Exact when they number at most ``QUANTILE_LIMIT``. Above it, the quantile of ``QUANTILE_LIMIT``
    entries drawn uniformly, with replacement, from all of them: every matrix contributes in
    proportion to its nonzero count, not the first ones in parameter order. The draw comes from a
    generator seeded with ``seed``, so the same weights always give the same q.
    """
    weights = [w.detach() for w in weights]
    counts = [int(torch.count_nonzero(w)) for w in weights]
    total, limit = sum(counts), int(QUANTILE_LIMIT)
    if total == 0:
        return 0.0
    if total <= limit:
        values = torch.cat([w[w != 0].abs().float() for w in weights])
    else:
        picks = torch.randint(total, (limit,), generator=torch.Generator().manual_seed(seed)).sort().values
        bounds = torch.tensor([0] + counts).cumsum(0)
        edges = torch.searchsorted(picks, bounds).tolist()  # picks[edges[i]:edges[i+1]] fall in matrix i
        parts = []
        for i, w in enumerate(weights):
            if edges[i + 1] > edges[i]:
                local = (picks[edges[i]:edges[i + 1]] - bounds[i]).to(w.device)
                parts.append(w[w != 0].abs().float()[local])
        values = torch.cat(parts)
    return float(torch.quantile(values, q))


def eq1_theta(q: float, start_itr: int, ramp_itr: int, end_itr: int, freq: int) -> float:
    """ESRNN Eq. 1: the start slope that makes eps(end_itr) ≈ q when phi = 1.5 theta."""
    denom = 2 * (ramp_itr - start_itr) + 3 * (end_itr - ramp_itr)
    if denom <= 0:
        raise ValueError(f"schedule needs start_itr < ramp_itr <= end_itr, got {start_itr}, {ramp_itr}, {end_itr}")
    return 2.0 * q * freq / denom


@dataclass(frozen=True)
class NarangSchedule:
    """Threshold schedule with the paper's names. ``ramp_slope`` is phi (absolute, not a ratio)."""

    start_itr: int  # first iteration after which pruning may happen
    ramp_itr: int  # iteration where the slope changes from theta to phi
    end_itr: int  # no update at or after this iteration; the mask is frozen
    start_slope: float  # theta: rise of the threshold per `freq` iterations before ramp_itr
    ramp_slope: float  # phi: rise per `freq` iterations from ramp_itr on
    freq: int = 100  # iterations between threshold/mask updates

    def __post_init__(self):
        if not (0 <= self.start_itr < self.ramp_itr <= self.end_itr):
            raise ValueError(f"schedule needs 0 <= start_itr < ramp_itr <= end_itr, got start_itr={self.start_itr}, "
                             f"ramp_itr={self.ramp_itr}, end_itr={self.end_itr}")
        if self.freq < 1:
            raise ValueError(f"schedule freq must be a positive number of iterations, got {self.freq}")
        if self.start_slope < 0 or self.ramp_slope < 0:
            raise ValueError(f"schedule slopes must be >= 0, got start_slope={self.start_slope}, ramp_slope={self.ramp_slope}")

    def is_update(self, step: int) -> bool:
        """True at the iterations where the mask is recomputed."""
        return self.start_itr < step < self.end_itr and step % self.freq == 0

    def epsilon(self, step: int) -> float:
        """The threshold formula at ``step`` (meaningful at update steps; 0 before ``start_itr``)."""
        if step <= self.start_itr:
            return 0.0
        if step < self.ramp_itr:
            return self.start_slope * (step - self.start_itr + 1) / self.freq
        return (self.start_slope * (self.ramp_itr - self.start_itr + 1)
                + self.ramp_slope * (step - self.ramp_itr + 1)) / self.freq

    def update_steps(self) -> range:
        first = (self.start_itr // self.freq + 1) * self.freq
        return range(first, self.end_itr, self.freq)

    def last_update(self) -> int | None:
        steps = self.update_steps()
        return steps[-1] if len(steps) else None

    def threshold(self, step: int) -> float:
        """The threshold in force at ``step``: that of the last update at or before it (0 before any)."""
        steps = self.update_steps()
        if not len(steps) or step < steps[0]:
            return 0.0
        last = min(step, steps[-1])
        return self.epsilon(last - (last - steps[0]) % self.freq)

    def frozen(self, step: int) -> bool:
        return step >= self.end_itr

    def unit_epsilon(self, step: int) -> float:
        """eps(step) / theta with phi/theta kept: the schedule's shape, used to solve for theta."""
        if self.start_slope == 0:
            raise ValueError("unit_epsilon needs a non-zero start_slope to know phi/theta")
        return self.epsilon(step) / self.start_slope

    def with_theta(self, theta: float) -> "NarangSchedule":
        """The same schedule shape (phi/theta ratio kept) with start slope ``theta``."""
        ratio = self.ramp_slope / self.start_slope if self.start_slope else 1.5
        return replace(self, start_slope=theta, ramp_slope=ratio * theta)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_heuristic(cls, q: float, *, total_itr: int, itr_per_epoch: int, block: Block | int = (1, 1),
                       freq: int = 100, ramp_ratio: float | None = None, start_itr: int | None = None,
                       ramp_itr: int | None = None, end_itr: int | None = None) -> "NarangSchedule":
        """The paper's heuristic schedule from q (90th-percentile |w| of a trained dense model).

        1×1 blocks follow ESRNN (ramp at 25 %, end at 50 %, phi = 1.5 theta); larger blocks BSRNN
        (ramp at 20 %, end at 40 %, theta_b = theta_w * N_b^(1/4), phi = 1.5 theta_b by default,
        inside the paper's 1.2–1.7 range). Any of start/ramp/end may be given explicitly.
        """
        bh, bw = parse_block(block)
        kind = "weight" if bh * bw == 1 else "block"
        ramp_frac, end_frac = HEURISTIC_FRACTIONS[kind]
        start = itr_per_epoch if start_itr is None else start_itr
        ramp = max(int(round(ramp_frac * total_itr)), start + 1) if ramp_itr is None else ramp_itr
        end = max(int(round(end_frac * total_itr)), ramp) if end_itr is None else end_itr
        theta = eq1_theta(q, start, ramp, end, freq) * (bh * bw) ** 0.25
        ratio = 1.5 if ramp_ratio is None else ramp_ratio
        return cls(start, ramp, end, theta, ratio * theta, freq)

    @classmethod
    def from_fractions(cls, *, total_itr: int, start: float | int, ramp: float | int, end: float | int,
                       freq: int = 100, theta: float = 1.0, ramp_ratio: float = 1.5) -> "NarangSchedule":
        """A schedule whose start/ramp/end are fractions of training (``0 <= x <= 1``) or iterations."""
        def at(x):
            return int(round(x * total_itr)) if isinstance(x, float) and x <= 1.0 else int(x)
        s, r, e = at(start), at(ramp), at(end)
        return cls(s, max(r, s + 1), max(e, r, s + 1), theta, ramp_ratio * theta, freq)
