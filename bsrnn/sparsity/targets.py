"""Which parameters a sparsity method prunes, and how each is tiled.

docs/method.md §7: the input and recurrent matrices of every recurrent layer (both directions, all
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


def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """Every name a parameter is reachable under -> the name ``model.named_parameters()`` gives it.

    A tied weight (an LM's decoder sharing the embedding's matrix) is one tensor with two names;
    ``named_parameters()`` lists it once, under the first. Untied parameters map to themselves.
    """
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}


def select_targets(model: nn.Module, block: Block | int | str = (4, 4), *,
                   include: Iterable[str] = (), exclude: Iterable[str] = (),
                   pad: bool = False) -> list[Target]:
    """The parameters to prune, in ``model.named_parameters()`` order.

    ``include``: glob patterns on full parameter names (``"rnn.*weight_hh*"``); when given they
    replace the default rule (any parameter of ≥ 2 dimensions may then be named). ``exclude``:
    patterns removed afterwards. A pattern that matches no parameter is a ``ValueError`` (a typo
    would otherwise silently prune nothing), and so is a block that does not tile a target.

    A tied weight is one tensor and one target, named as ``named_parameters()`` names it: it is
    chosen when any of its names is (by the rule or by ``include``) and left out when any of its
    names matches ``exclude`` (so ``exclude=["decoder.*"]`` keeps an LM's tied embedding dense).
    """
    block = parse_block(block)
    include, exclude = list(include), list(exclude)
    aliases = parameter_aliases(model)
    names = list(aliases)
    for pat in include + exclude:
        if not fnmatch.filter(names, pat):
            raise ValueError(f"parameter pattern {pat!r} matches no parameter of the model; "
                             f"parameters are e.g. {', '.join(names[:6])}")
    # Every (module, local name) a tensor is reachable under, grouped by the tensor's one name.
    uses: dict[str, list[tuple[str, nn.Module, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            uses.setdefault(aliases[full], []).append((full, module, pname))
    params = dict(model.named_parameters())
    targets = []
    for name, p in params.items():
        chosen = [(full, module, pname) for full, module, pname in uses[name]
                  if (any(fnmatch.fnmatchcase(full, pat) for pat in include) if include
                      else _default_rule(module, pname, p))]
        if not chosen or any(fnmatch.fnmatchcase(full, pat) for full, _, _ in uses[name] for pat in exclude):
            continue
        shown = " = ".join(dict.fromkeys(full for full, _, _ in uses[name]))  # "embedding.weight = decoder.weight"
        if p.dim() < 2:
            raise ValueError(f"parameter {shown} of shape {tuple(p.shape)} is not a matrix and cannot be pruned in blocks")
        layout = {(gates_of(module, pname), "recurrent" if _is_recurrent(module) else "non_recurrent")
                  for _, module, pname in chosen}
        if len(layout) > 1:
            raise ValueError(f"tied parameter {shown} is used by layers that tile it differently "
                             f"(gates, kind: {sorted(layout)}); exclude one of its names or untie it")
        (gates, kind), = layout
        grid = block_grid(p.shape, block, gates, name=shown, pad=pad)
        targets.append(Target(name, tuple(p.shape), gates, kind, block, grid))
    if not targets:
        raise ValueError("no parameter of the model matches the pruning rule; name some with include=[...]")
    return targets
