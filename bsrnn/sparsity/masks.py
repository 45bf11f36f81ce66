"""Block masks: the only sparsity state that touches a model.

A mask is a boolean tensor per pruned parameter, keyed by parameter name, at block resolution
(one entry per block). It is expanded and applied in place (``p.masked_fill_``) after each
optimizer step, and to the optimizer's state tensors (SGD momentum, Adam moments) so that a
pruned weight stays exactly zero and carries no stale momentum. Parameters keep their identity:
no reparametrisation, so cuDNN's flat RNN weight buffer stays valid (docs/method.md §8).

Masks only shrink: ``prune_`` ANDs the new decision into the old one. This is the literal
reading of ESRNN's Algorithm 1 (docs/method.md §9): the next mask is computed from masked weights,
so a pruned block is exactly zero at every later check and never returns.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import expand
from .targets import Target, parameter_aliases


class MaskSet:
    """Block masks for a list of targets, bound to a model (and optionally its optimizer)."""

    def __init__(self, model: nn.Module, targets: list[Target]):
        params = dict(model.named_parameters())
        aliases = parameter_aliases(model)
        self.targets: dict[str, Target] = {}
        for t in targets:
            if t.name not in params:
                if t.name in aliases:
                    raise ValueError(f"{t.name} is the same tensor as {aliases[t.name]} (tied weights); "
                                     f"name the target {aliases[t.name]}, as model.named_parameters() does")
                raise ValueError(f"target {t.name} is not a parameter of the model; parameters are e.g. "
                                 f"{', '.join(list(params)[:6])}")
            if tuple(params[t.name].shape) != tuple(t.shape):
                raise ValueError(f"target {t.name} has shape {tuple(t.shape)} but the parameter has shape "
                                 f"{tuple(params[t.name].shape)}")
            if t.name in self.targets:
                raise ValueError(f"parameter {t.name} is listed twice among the targets; a tensor is pruned once")
            self.targets[t.name] = t
        self.params = {t.name: params[t.name] for t in targets}
        self.block_masks = {t.name: torch.ones(t.grid, dtype=torch.bool, device=self.params[t.name].device)
                            for t in targets}
        self._pruned: dict[str, torch.Tensor] = {}  # expanded ~mask, cached; only for masks with zeros
        # Names whose gradient in the current step is exactly zero at every pruned entry (the
        # block-sparse training path never computes those entries); set by the trainer each step.
        # A parameter in here that was zeroed since its mask last changed stays zero through the
        # optimizer step (Adam/SGD of a zero weight with zero gradient and zero moments is zero),
        # so apply_ skips its three passes over the dense tensors.
        self.exact_grads: frozenset[str] = frozenset()
        self._clean: set[str] = set()  # zeroed (weights and optimizer state) since the mask last changed
        self._clean_for = None  # the optimizer whose state _clean covers

    # -- state ----------------------------------------------------------------------------
    def keep(self, name: str) -> torch.Tensor:
        """The element-resolution keep-mask of ``name`` (True = weight kept)."""
        t = self.targets[name]
        return expand(self.block_masks[name], t.block, t.shape, t.gates)

    def _refresh(self, name: str) -> None:
        self._clean.discard(name)
        bm = self.block_masks[name]
        if bool(bm.all()):
            self._pruned.pop(name, None)
        else:
            self._pruned[name] = ~self.keep(name)

    def prune_(self, name: str, keep_blocks: torch.Tensor) -> int:
        """AND ``keep_blocks`` into the mask of ``name``; returns the number of newly pruned blocks."""
        old = self.block_masks[name]
        new = old & keep_blocks.to(old.device)
        newly = int(old.sum() - new.sum())
        self.block_masks[name] = new
        if newly:
            self._refresh(name)
        return newly

    def set_(self, name: str, keep_blocks: torch.Tensor) -> None:
        """Replace the mask of ``name`` (sparse-training methods regrow blocks; pruning uses prune_)."""
        old = self.block_masks[name]
        if tuple(keep_blocks.shape) != tuple(old.shape):
            raise ValueError(f"mask for {name} has block grid {tuple(keep_blocks.shape)}, expected {tuple(old.shape)}")
        self.block_masks[name] = keep_blocks.to(dtype=torch.bool, device=old.device).clone()
        self._refresh(name)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: m.clone() for n, m in self.block_masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.block_masks) - set(state)
        extra = set(state) - set(self.block_masks)
        if missing or extra:
            raise ValueError(f"mask state does not match the pruned parameters: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        for n, m in state.items():
            if tuple(m.shape) != tuple(self.block_masks[n].shape):
                raise ValueError(f"mask for {n} has block grid {tuple(m.shape)}, expected {tuple(self.block_masks[n].shape)}")
            self.block_masks[n] = m.to(dtype=torch.bool, device=self.block_masks[n].device).clone()
            self._refresh(n)

    # -- application ----------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero pruned weights in place, and the matching entries of the optimizer's state.

        Skipped for a parameter already zeroed since its mask last changed whose gradient this
        step is exactly zero at pruned entries (``exact_grads``): nothing can have moved them."""
        if optimizer is not self._clean_for:
            self._clean.clear()
            self._clean_for = optimizer
        for name, pruned in self._pruned.items():
            if name in self._clean and name in self.exact_grads:
                continue
            p = self.params[name]
            p.masked_fill_(pruned, 0.0)
            if optimizer is not None:
                for buf in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(buf) and buf.shape == p.shape:
                        buf.masked_fill_(pruned, 0.0)
            self._clean.add(name)

    # -- counts ---------------------------------------------------------------------------
    def block_sparsity(self, name: str) -> float:
        m = self.block_masks[name]
        return 1.0 - m.float().mean().item()

    def pruned_blocks(self, names=None) -> tuple[int, int]:
        """(pruned blocks, total blocks) over ``names`` (all targets by default)."""
        names = self.block_masks if names is None else names
        total = sum(self.block_masks[n].numel() for n in names)
        kept = sum(int(self.block_masks[n].sum()) for n in names)
        return total - kept, total
