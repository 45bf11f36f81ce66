"""Pure block math: tiling a weight matrix into blocks, scoring blocks, expanding block masks.

Implements the tiling of BSRNN §3.1 (block pruning: "each block's largest magnitude") and the
reductions the paper lists as future work (docs/method.md §6: mean, RMS, geometric mean, median).

Every function here is pure: it never mutates its input. A matrix of ``G`` stacked gates (the
``3H`` rows of a GRU weight, the ``4H`` of an LSTM) is tiled gate by gate, so no block ever
straddles two gates. A block shape that does not tile a matrix is a ``ValueError`` naming the
tensor and the shapes, unless the caller passes ``pad=True``: then each gate is padded at its
bottom/right edge and the partial edge blocks are scored over their real elements only.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

import torch

Block = tuple[int, int]

REDUCTIONS = ("max", "mean", "rms", "l2", "geomean", "median")

# Geometric mean of |w| is exp(mean(log(|w| + GEOMEAN_EPS))) - GEOMEAN_EPS: finite for blocks that
# hold zeros, exactly 0 for an all-zero block, and equal to the plain geometric mean (to ~1e-8)
# for blocks without zeros.
GEOMEAN_EPS = 1e-8


def parse_block(block: int | str | Iterable[int]) -> Block:
    """``4`` -> (4, 4); ``"12x2"`` -> (12, 2); ``(8, 8)`` -> (8, 8). Rejects non-positive sizes."""
    if isinstance(block, int):
        dims = (block, block)
    elif isinstance(block, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:[x×,]\s*(\d+))?\s*", block)
        if not m:
            raise ValueError(f"block {block!r} is not a block shape; use e.g. 4, '4x4' or '12x2'")
        dims = (int(m.group(1)), int(m.group(2) or m.group(1)))
    else:
        dims = tuple(int(b) for b in block)
        if len(dims) != 2:
            raise ValueError(f"block {block!r} must have two sizes (rows, cols), e.g. (4, 4)")
    if dims[0] < 1 or dims[1] < 1:
        raise ValueError(f"block {block!r} must have positive sizes, e.g. (4, 4)")
    return dims  # type: ignore[return-value]


def as_matrix(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """The 2-D view a weight is tiled in: (out, prod(rest)). Conv kernels flatten to (out, in*k)."""
    if len(shape) < 2:
        raise ValueError(f"a weight of shape {tuple(shape)} has fewer than 2 dimensions and cannot be tiled")
    return int(shape[0]), int(math.prod(shape[1:]))


def block_grid(shape, block: Block, gates: int = 1, *, name: str = "weight", pad: bool = False) -> tuple[int, int]:
    """Number of block rows and block columns of a matrix: ``(gates * ceil(H/bh), ceil(C/bw))``.

    ``H`` = rows / gates is one gate's height. Raises ``ValueError`` naming ``name`` when the block
    does not tile the matrix (gate by gate) and ``pad`` is False.
    """
    bh, bw = parse_block(block)
    rows, cols = as_matrix(shape)
    if gates < 1 or rows % gates:
        raise ValueError(f"{name}: {rows} rows cannot hold {gates} stacked gates of equal height")
    h = rows // gates
    if not pad and (h % bh or cols % bw):
        where = f"each of its {gates} gates of {h}×{cols}" if gates > 1 else f"its shape {rows}×{cols}"
        raise ValueError(
            f"{name}: block {bh}×{bw} does not tile {where}; choose a block whose height divides {h} "
            f"and whose width divides {cols}, or pass pad=True to use partial edge blocks"
        )
    return gates * -(-h // bh), -(-cols // bw)


def tiles(w: torch.Tensor, block: Block, gates: int = 1, *, name: str = "weight", pad: bool = False,
          fill: float = 0.0) -> torch.Tensor:
    """View ``w`` as blocks: returns ``(block_rows, block_cols, bh*bw)`` (a copy only when padding).

    Padding (``pad=True``) uses ``fill``; pass ``float('nan')`` to mark padded elements.
    Differentiable: gradients flow back to ``w``.
    """
    bh, bw = parse_block(block)
    nbr, nbc = block_grid(w.shape, (bh, bw), gates, name=name, pad=pad)
    rows, cols = as_matrix(w.shape)
    h = rows // gates
    g = w.reshape(gates, h, cols)  # (G, H, C)
    ph, pw = (nbr // gates) * bh - h, nbc * bw - cols
    if ph or pw:
        g = torch.nn.functional.pad(g, (0, pw, 0, ph), value=fill)  # (G, H', C')
    g = g.reshape(gates, nbr // gates, bh, nbc, bw).permute(0, 1, 3, 2, 4)  # (G, nbh, nbc, bh, bw)
    return g.reshape(nbr, nbc, bh * bw)


def block_reduce(w: torch.Tensor, block: Block, how: str = "max", gates: int = 1, *,
                 name: str = "weight", pad: bool = False) -> torch.Tensor:
    """One score per block from the magnitudes ``|w|``: shape ``(block_rows, block_cols)``.

    ``how``: ``max`` (the paper's), ``mean``, ``rms``, ``l2``, ``geomean`` or ``median`` (the lower
    median for even block sizes). Partial edge blocks (``pad=True``) are scored over their real
    elements only.
    """
    if how not in REDUCTIONS:
        raise ValueError(f"unknown block reduction {how!r}; choose one of {', '.join(REDUCTIONS)}")
    bh, bw = parse_block(block)
    nbr, nbc = block_grid(w.shape, (bh, bw), gates, name=name, pad=pad)
    padded = nbr * bh != as_matrix(w.shape)[0] or nbc * bw != as_matrix(w.shape)[1]
    t = tiles(w.abs(), (bh, bw), gates, name=name, pad=pad, fill=float("nan") if padded else 0.0)
    if not padded:
        if how == "max":
            return t.amax(-1)
        if how == "mean":
            return t.mean(-1)
        if how == "rms":
            return t.square().mean(-1).sqrt()
        if how == "l2":
            return t.square().sum(-1).sqrt()
        if how == "geomean":
            g = torch.exp(torch.log(t + GEOMEAN_EPS).mean(-1)) - GEOMEAN_EPS
            return torch.where(t.amax(-1) > 0, g.clamp_min(0), 0.0)  # exact 0 for an all-zero block
        return t.median(-1).values
    valid = ~torch.isnan(t)
    a = torch.where(valid, t, torch.zeros((), dtype=t.dtype))
    n = valid.sum(-1).to(t.dtype)
    if how == "max":
        return a.amax(-1)  # |w| >= 0, so zero-filled padding never wins
    if how == "mean":
        return a.sum(-1) / n
    if how == "rms":
        return (a.square().sum(-1) / n).sqrt()
    if how == "l2":
        return a.square().sum(-1).sqrt()
    if how == "geomean":
        g = torch.exp((torch.log(a + GEOMEAN_EPS) * valid).sum(-1) / n) - GEOMEAN_EPS
        return torch.where(a.amax(-1) > 0, g.clamp_min(0), 0.0)
    return t.nanmedian(-1).values


def expand(block_mask: torch.Tensor, block: Block, shape, gates: int = 1) -> torch.Tensor:
    """Broadcast a ``(block_rows, block_cols)`` mask back to a matrix of ``shape`` (cropping padding)."""
    bh, bw = parse_block(block)
    rows, cols = as_matrix(shape)
    h = rows // gates
    nbr, nbc = block_mask.shape
    m = block_mask.reshape(gates, nbr // gates, 1, nbc, 1).expand(gates, nbr // gates, bh, nbc, bw)
    m = m.reshape(gates, (nbr // gates) * bh, nbc * bw)[:, :h, :cols]  # (G, H, C)
    return m.reshape(tuple(shape))


def gate_rows(rows: int, gates: int) -> list[slice]:
    """Row slices of each stacked gate (PyTorch order: GRU r,z,n; LSTM i,f,g,o)."""
    h = rows // gates
    return [slice(k * h, (k + 1) * h) for k in range(gates)]
