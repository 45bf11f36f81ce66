"""Which parameters a sparsity method prunes, and how each is tiled.

PAPER.md §5: the input and recurrent matrices of every recurrent layer (both directions, all
gates) and the fully connected layers are pruned; biases, norms, convolutions, embeddings and
the output layer are not. The default rule here prunes the 2-D weights of ``nn.Linear`` and the
``weight_ih*``/``weight_hh*`` matrices of ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (and their cells);
``include``/``exclude`` glob patterns on parameter names override it (so the output layer is
excluded by name, and a convolution can be pruned when asked).

Each target records its gate count (GRU 3, LSTM 4) so that blocks never straddle two gates, and
its *kind*: ``recurrent`` for matrices of recurrent layers and ``non_recurrent`` for fully
connected ones, the two types the paper's patent gives separate hyper-parameters.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .blocks import Block, block_grid, parse_block

KINDS = ("recurrent", "non_recurrent")

_GATES = {nn.RNN: 1, nn.GRU: 3, nn.LSTM: 4, nn.RNNCell: 1, nn.GRUCell: 3, nn.LSTMCell: 4}


@dataclass(frozen=True)
class Target:
    """One pruned parameter: its full name, shape, gate count, kind and block grid."""

    name: str
    shape: tuple[int, ...]
    gates: int
    kind: str
    block: Block
    grid: tuple[int, int]  # (block rows, block cols)

    @property
    def n_blocks(self) -> int:
        return self.grid[0] * self.grid[1]


def gates_of(module: nn.Module, param_name: str) -> int:
    """Number of stacked gates along dim 0 of ``module``'s parameter ``param_name`` (1 if none)."""
    for cls, g in _GATES.items():
        if isinstance(module, cls) and param_name.startswith(("weight_ih", "weight_hh")):
            return g
    # Custom recurrent layers declare theirs, e.g. ``bsrnn_gates = {"weight_hh": 3}``.
    return getattr(module, "bsrnn_gates", {}).get(param_name, 1)


def _is_recurrent(module: nn.Module) -> bool:
    return isinstance(module, tuple(_GATES)) or getattr(module, "bsrnn_recurrent", False)


def _default_rule(module: nn.Module, pname: str, p: nn.Parameter) -> bool:
    if p.dim() != 2:
        return False
    if isinstance(module, nn.Linear):
        return pname == "weight"
    if isinstance(module, tuple(_GATES)):
        return pname.startswith(("weight_ih", "weight_hh"))
    # Custom recurrent layers opt in by listing their matrices in `bsrnn_prunable`.
    return pname in getattr(module, "bsrnn_prunable", ())


def select_targets(model: nn.Module, block: Block | int | str = (4, 4), *,
                   include: Iterable[str] = (), exclude: Iterable[str] = (),
                   pad: bool = False) -> list[Target]:
    """The parameters to prune, in ``model.named_parameters()`` order.

    ``include``: glob patterns on full parameter names (``"rnn.*weight_hh*"``); when given they
    replace the default rule (any parameter of ≥ 2 dimensions may then be named). ``exclude``:
    patterns removed afterwards. A pattern that matches no parameter is a ``ValueError`` (a typo
    would otherwise silently prune nothing), and so is a block that does not tile a target.
    """
    block = parse_block(block)
    include, exclude = list(include), list(exclude)
    names = [n for n, _ in model.named_parameters()]
    for pat in include + exclude:
        if not fnmatch.filter(names, pat):
            raise ValueError(f"parameter pattern {pat!r} matches no parameter of the model; "
                             f"parameters are e.g. {', '.join(names[:6])}")
    targets = []
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            chosen = (any(fnmatch.fnmatchcase(full, pat) for pat in include) if include
                      else _default_rule(module, pname, p))
            if not chosen or any(fnmatch.fnmatchcase(full, pat) for pat in exclude):
                continue
            if p.dim() < 2:
                raise ValueError(f"parameter {full} of shape {tuple(p.shape)} is not a matrix and cannot be pruned in blocks")
            gates = gates_of(module, pname)
            grid = block_grid(p.shape, block, gates, name=full, pad=pad)
            kind = "recurrent" if _is_recurrent(module) else "non_recurrent"
            targets.append(Target(full, tuple(p.shape), gates, kind, block, grid))
    if not targets:
        raise ValueError("no parameter of the model matches the pruning rule; name some with include=[...]")
    return targets


def parameters_by_name(model: nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())
