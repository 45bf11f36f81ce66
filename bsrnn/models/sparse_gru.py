"""Block-sparse training of ``nn.GRU`` layers: forward and backward cost follows the kept blocks.

Once a GRU's block masks are fixed, ``enable_block_sparse(model, block_masks, block)`` packs a
BSR layout for every ``nn.GRU`` of ``model`` whose ``weight_ih``/``weight_hh`` matrices have
masks, and ``padded_recurrent`` (so ``DeepSpeech2.forward``) then runs those GRUs through the
C++ kernels of ``csrc/bsr_train.cpp``:

* the input projection ``W_ih x + b_ih`` of all time steps and both directions: one BSR × dense
  product over every frame; backward: the transposed BSR product for ``dx`` and a
  block-sampled product (SDDMM) for ``dW_ih`` at kept blocks only;
* the recurrence: per time step one BSR product ``W_hh h`` (batch = the batch size, both
  directions in one block-diagonal matrix), fused with the gates, the whole time loop in one
  parallel region; backward: per step the transposed product ``W_hhᵀ dgh`` (a BSR of ``Wᵀ``
  packed once per mask change), and ``dW_hh`` as one SDDMM over all time steps.

The math is ``GRUScan``'s (``recurrent.py``) and so are the results, to float rounding. The
parameters stay the module's own dense ``nn.GRU`` parameters (pruned entries zero, same names),
so pruning, checkpoints, export and ``sparsify_`` are untouched: each forward gathers the kept
blocks' values from the dense parameters (nnz copies) and each backward scatters the block
gradients into dense gradients, which are exactly zero at pruned positions (never computed).
The masks define the weights: a pruned entry counts as zero even where the dense parameter is not.

Call ``enable_block_sparse`` again whenever masks change (RigL/SET); it repacks only GRUs whose
masks changed, and packing costs a few ms. ``disable_block_sparse`` returns to the dense path.
Gradients at pruned weights are zero on this path, so a method that scores pruned blocks by
their dense gradient (RigL's regrowth) must run the step before each mask update on the dense
path (disable, step, enable again).

Layout: activations travel between layers step-major, ``(T, features, NP)`` with the batch
padded to ``NP`` lanes (a multiple of 8): every product is a BSR matrix times ``(K, NP)``
panels, which is what a BSR kernel wants. The reverse direction runs backward in time with its
state reset to zero on padding frames, which is the same as running forward over each utterance
reversed within its length (as ``recurrent.py`` does), without any copies.

Without a C++ compiler (or with ``BSRNN_TRAIN_KERNEL=torch``) the same API runs ``GRUScan`` on
the masked weights: the same results and zero gradients at pruned positions, at dense cost.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..sparsity.blocks import block_grid, expand, parse_block
from . import _bsr_train_lib
from .recurrent import BSR_ATTR, _gru_layer_scan, length_mask

GATES = 3
FAST_BLOCKS = {(1, 1), (2, 2), (4, 4), (8, 8), (4, 8), (8, 4)}  # compiled specialisations (f32)
LANE = 8  # the batch is padded to a multiple of this many lanes


# --------------------------------------------------------------------------- packed matrices
@dataclass
class BsrMat:
    """One BSR matrix packed from ``len(parts)`` dense parameters: stacked rows, and with
    ``diag`` block-diagonal (part ``d``'s columns after part ``d-1``'s). Block values are gathered
    from the dense parameters at each use; ``t_*`` is the CSR of the transposed matrix."""

    block: tuple[int, int]  # (R, C) of the kernel (may refine the mask's block)
    shape: tuple[int, int]  # (M, K) of the whole packed matrix
    part_shapes: list[tuple[int, int]]
    block_masks: list[torch.Tensor]  # per part, at the kernel block (for the torch fallback)
    indptr: torch.Tensor  # int32 (M/R + 1)
    indices: torch.Tensor  # int32 (nnzb,)
    part: torch.Tensor  # int64 (nnzb,): the parameter each block lives in
    offset: torch.Tensor  # int64 (nnzb,): element offset of each block's (0, 0) in its parameter
    part_ranges: list[tuple[int, int]]  # the blocks of each part, in block order
    t_indptr: torch.Tensor  # int32 (K/C + 1)
    t_indices: torch.Tensor  # int32 (nnzb,)
    t_perm: torch.Tensor  # int64 (nnzb,): block p of the transposed matrix is block t_perm[p] transposed
    cost: torch.Tensor | None = None  # int64 cumulative cost of the recurrent kernel's unit groups

    @property
    def nnzb(self) -> int:
        return int(self.indices.numel())

    def values(self, params) -> torch.Tensor:
        """The kept blocks' values gathered from the dense parameters: ``(nnzb * R * C,)``, blocks
        ``(R, C)`` row-major in block order."""
        params = [p.detach().contiguous() for p in params]
        bases = torch.tensor([p.data_ptr() for p in params], dtype=torch.int64)
        return self._gather(bases, self.part, self.offset, None, self.part_shapes[0][1], False, params[0].dtype)

    def t_values(self, values: torch.Tensor) -> torch.Tensor:
        """The transposed matrix's blocks ``(C, R)`` in its block order, from ``values``."""
        bases = torch.tensor([values.data_ptr()], dtype=torch.int64)
        return self._gather(bases, None, None, self.t_perm, self.block[1], True, values.dtype)

    def _gather(self, bases, part, offset, perm, ld: int, transposed: bool, dtype: torch.dtype) -> torch.Tensor:
        r, c = self.block
        out = torch.empty(self.nnzb * r * c, dtype=dtype)
        _check(_fn("gather_blocks", dtype)(r, c, self.nnzb, _ptr(bases), _ptr(part), _ptr(offset), _ptr(perm), ld,
                                           _ptr(out), int(transposed), torch.get_num_threads()), "gather_blocks")
        return out

    def dense_grads(self, dv: torch.Tensor, params) -> list[torch.Tensor]:
        """Block gradients ``dv`` scattered into dense zeros shaped like each parameter."""
        r, c = self.block
        out = []
        for p, (a, b) in zip(params, self.part_ranges):
            g = torch.empty(p.shape, dtype=dv.dtype)  # zeroed by the kernel, in the same parallel region
            _check(_fn("scatter_blocks", dv.dtype)(
                r, c, b - a, _ptr(dv) + a * r * c * dv.element_size(), _ptr(g),
                _ptr(self.offset) + a * self.offset.element_size(), p.shape[1], g.numel(), torch.get_num_threads()),
                "scatter_blocks")
            out.append(g)
        return out


def _pack(block_masks: list[torch.Tensor], block: tuple[int, int], shapes: list[tuple[int, int]],
          diag: bool) -> BsrMat:
    r, c = block
    rows, cols, parts, offsets, ranges = [], [], [], [], []
    row_off = col_off = start = 0
    for d, (bm, (m, k)) in enumerate(zip(block_masks, shapes)):
        bi, bj = bm.nonzero(as_tuple=True)  # row-major: CSR order
        parts.append(torch.full_like(bi, d))
        offsets.append(bi * r * k + bj * c)
        ranges.append((start, start + bi.numel()))
        start += bi.numel()
        rows.append(bi + row_off)
        cols.append(bj + col_off)
        row_off += m // r
        col_off += k // c if diag else 0
    bi, bj = torch.cat(rows), torch.cat(cols)
    nbr, nbc = row_off, (col_off if diag else shapes[0][1] // c)
    indptr = torch.zeros(nbr + 1, dtype=torch.int64)
    indptr[1:] = torch.bincount(bi, minlength=nbr).cumsum(0)
    t_perm = torch.argsort(bj * nbr + bi)
    t_indptr = torch.zeros(nbc + 1, dtype=torch.int64)
    t_indptr[1:] = torch.bincount(bj, minlength=nbc).cumsum(0)
    return BsrMat(block, (nbr * r, nbc * c), list(shapes), block_masks, indptr.int(), bj.int(), torch.cat(parts),
                  torch.cat(offsets), ranges, t_indptr.int(), bi[t_perm].int(), t_perm)


def kernel_block(block: tuple[int, int], shape: tuple[int, int], gates: int = GATES) -> tuple[int, int]:
    """The block the kernels run for a mask of ``block`` on a ``shape`` matrix of ``gates`` gates:
    the mask's block where it tiles each gate, else the largest block that tiles both the gate and
    the mask's partial edge blocks (gcd); shapes without a compiled specialisation whose sides are
    multiples of 4 run as 4×4 (exact: a finer tiling of the same mask)."""
    bh, bw = block
    h, k = shape[0] // gates, shape[1]
    r, c = (bh, bw) if (h % bh == 0 and k % bw == 0) else (math.gcd(bh, h), math.gcd(bw, k))
    if (r, c) not in FAST_BLOCKS and r % 4 == 0 and c % 4 == 0:
        r, c = 4, 4
    return r, c


def _kernel_mask(bm: torch.Tensor, block: tuple[int, int], shape: tuple[int, int], kb: tuple[int, int],
                 name: str) -> torch.Tensor:
    """The mask ``bm`` (at ``block``, gate-aware, possibly padded) as a mask at kernel block ``kb``."""
    tiles = shape[0] % GATES == 0 and (shape[0] // GATES) % block[0] == 0 and shape[1] % block[1] == 0
    grid = block_grid(shape, block, GATES, name=name, pad=not tiles)
    bm = torch.as_tensor(bm).detach().to("cpu", torch.bool)
    if tuple(bm.shape) != grid:
        raise ValueError(f"the block mask of {name} has shape {tuple(bm.shape)}, but a {block[0]}×{block[1]} "
                         f"block grid of its {shape[0]}×{shape[1]} matrix ({GATES} gates) is {grid}")
    if tiles and kb == block:
        return bm.contiguous()
    elem = expand(bm, block, shape, GATES)  # (rows, cols)
    r, c = kb
    return elem.reshape(shape[0] // r, r, shape[1] // c, c).any(3).any(1).contiguous()


@dataclass
class LayerLayout:
    ih: BsrMat  # W_ih of all directions stacked: (D*3H, In)
    hh: BsrMat  # W_hh block-diagonal: (D*3H, D*H); .cost: per (direction, unit block) group
    ih_dx_indices: torch.Tensor  # ih.t_indices with the n gates' rows moved to where the backward keeps dgi_n


def _dx_indices(ih: BsrMat, hidden: int, dirs: int) -> torch.Tensor:
    """The backward keeps per frame ``dgh`` (rows ``d*3H + gate*H + j``) and then ``dgi`` of the n
    gates (rows ``3DH + d*H + j``); ``dx = W_ihᵀ dgi`` reads the n gates from there."""
    r = ih.block[0]
    m0 = ih.t_indices.long() * r  # first row of each block of W_ih
    d, gate, j = m0 // (GATES * hidden), (m0 // hidden) % GATES, m0 % hidden
    moved = (dirs * GATES * hidden + d * hidden + j) // r
    return torch.where(gate == 2, moved, m0 // r).int()


@dataclass
class GRULayout:
    """The packed layout of one ``nn.GRU``: per layer its input and recurrent BSR matrices."""

    block: tuple[int, int]  # the masks' block
    layers: list[LayerLayout]
    masks: dict[str, torch.Tensor] = field(repr=False)  # the block masks it was packed from

    def density(self) -> float:
        """The fraction of the GRU's weights (all weight_ih/weight_hh) the layout keeps."""
        kept = sum(m.ih.nnzb * math.prod(m.ih.block) + m.hh.nnzb * math.prod(m.hh.block) for m in self.layers)
        total = sum(math.prod(m.ih.shape) + math.prod(m.hh.shape) // (len(m.hh.part_shapes)) for m in self.layers)
        return kept / total


def _dirs(rnn: nn.GRU) -> tuple[str, ...]:
    return ("", "_reverse")[: 2 if rnn.bidirectional else 1]


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run torch ops on ``n`` intra-op threads: packing is ~100 small ops, and on a machine with
    more runnable threads than cores each parallel op can wait out a scheduler slice for its
    partner thread (measured: 22 ms on one thread, 2.2 s on two, for a 3×1024 GRU)."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pack_gru(rnn: nn.GRU, masks: Mapping[str, torch.Tensor], block) -> GRULayout:
    """A ``GRULayout`` of ``rnn`` for block masks keyed by its own parameter names
    (``weight_ih_l0``, ``weight_hh_l0_reverse``, ...); a weight without a mask is kept whole."""
    with _torch_threads(1):
        return _pack_gru(rnn, masks, block)


def _pack_gru(rnn: nn.GRU, masks: Mapping[str, torch.Tensor], block) -> GRULayout:
    block = parse_block(block)
    if not isinstance(rnn, nn.GRU):
        raise ValueError(f"block-sparse training kernels run nn.GRU modules, not {type(rnn).__name__}")
    if rnn.batch_first or rnn.dropout or getattr(rnn, "proj_size", 0):
        raise ValueError(f"block-sparse training runs time-major GRUs without dropout, not {rnn}")
    h, dirs, layers, used = rnn.hidden_size, _dirs(rnn), [], {}
    for k in range(rnn.num_layers):
        mats = {}
        for kind in ("ih", "hh"):
            names = [f"weight_{kind}_l{k}{s}" for s in dirs]
            shape = tuple(getattr(rnn, names[0]).shape)
            kb = kernel_block(block, shape)
            bms = []
            for n in names:
                if n in masks:
                    bms.append(_kernel_mask(masks[n], block, shape, kb, n))
                    used[n] = torch.as_tensor(masks[n]).detach().to("cpu", torch.bool).clone()
                else:
                    bms.append(torch.ones(shape[0] // kb[0], shape[1] // kb[1], dtype=torch.bool))
            mats[kind] = _pack(bms, kb, [shape] * len(dirs), diag=kind == "hh")
        hh = mats["hh"]
        r, c = hh.block
        per_row = torch.diff(hh.indptr.long()).view(len(dirs), GATES, h // r).sum(1).reshape(-1)
        hh.cost = torch.cat([torch.zeros(1, dtype=torch.int64), (per_row * r * c + r * 48).cumsum(0)])
        layers.append(LayerLayout(mats["ih"], hh, _dx_indices(mats["ih"], h, len(dirs))))
    return GRULayout(block, layers, used)


# --------------------------------------------------------------------------- public API
def enable_block_sparse(model: nn.Module, block_masks: Mapping[str, torch.Tensor], block=(4, 4)) -> list[str]:
    """Give every ``nn.GRU`` of ``model`` with masks on its ``weight_ih``/``weight_hh`` a block-sparse layout.

    ``block_masks``: full parameter names (as in ``model.named_parameters()``, e.g.
    ``MaskSet.block_masks``) to boolean block masks at ``block``, laid out gate by gate as
    ``bsrnn.sparsity`` lays them out (padded edge blocks included); masks of other parameters are
    ignored. A GRU whose masks equal those it was packed from keeps its layout, so this is cheap
    to call at every mask change (or every step). Returns the names of the GRUs (re)packed.
    """
    block = parse_block(block)
    repacked = []
    for mname, module in model.named_modules():
        if not isinstance(module, nn.GRU):
            continue
        prefix = f"{mname}." if mname else ""
        own = {n[len(prefix):]: m for n, m in block_masks.items()
               if n.startswith(prefix) and n[len(prefix):].startswith(("weight_ih_l", "weight_hh_l"))
               and "." not in n[len(prefix):]}
        if not own:
            continue
        old = getattr(module, BSR_ATTR, None)
        if (old is not None and old.block == block and set(old.masks) == set(own)
                and all(torch.equal(old.masks[n], torch.as_tensor(m).detach().to("cpu", torch.bool))
                        for n, m in own.items())):
            continue
        setattr(module, BSR_ATTR, pack_gru(module, own, block))
        repacked.append(mname)
    return repacked


def disable_block_sparse(model: nn.Module) -> list[str]:
    """Remove every block-sparse layout from ``model``'s GRUs (back to the dense path); returns their names."""
    removed = []
    for mname, module in model.named_modules():
        if getattr(module, BSR_ATTR, None) is not None:
            delattr(module, BSR_ATTR)
            removed.append(mname)
    return removed


def exact_gradient_params(model: nn.Module) -> frozenset[str]:
    """Full names of the parameters whose gradients the block-sparse path leaves exactly zero at
    every entry its layout's masks prune (those entries are never computed): the ``weight_ih`` /
    ``weight_hh`` of every GRU with a layout. ``MaskSet.exact_grads`` takes this set."""
    names = []
    for mname, module in model.named_modules():
        layout = getattr(module, BSR_ATTR, None)
        if layout is not None:
            prefix = f"{mname}." if mname else ""
            names += [prefix + n for n in layout.masks]
    return frozenset(names)


def block_sparse_layout(rnn: nn.Module) -> GRULayout | None:
    """The layout ``enable_block_sparse`` gave ``rnn``, or None."""
    return getattr(rnn, BSR_ATTR, None)


def kernels_available() -> bool:
    """Whether the compiled kernels are in use (else the torch implementation runs)."""
    return _bsr_train_lib.library() is not None


# --------------------------------------------------------------------------- autograd
def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(rc: int, what: str) -> None:
    if rc:
        raise RuntimeError(f"bsr_train kernel {what} refused its arguments (code {rc}); this is a bug in bsrnn")


def _fn(name: str, dtype: torch.dtype):
    return getattr(_bsr_train_lib.library(), f"{name}_{ {torch.float32: 'f32', torch.float64: 'f64'}[dtype]}")


def bsr_mm(mat: BsrMat, values: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None, *,
           transposed: bool = False, t_indices: torch.Tensor | None = None) -> torch.Tensor:
    """``W x_t (+ bias)`` (or ``Wᵀ x_t``) for every frame of a step-major ``x (T, rows, NP)``:
    ``(T, M, NP)``. ``t_indices`` replaces the transposed matrix's block columns (rows of ``x``)."""
    r, c = mat.block
    if transposed:
        r, c, indptr, m = c, r, mat.t_indptr, mat.shape[1]
        indices = mat.t_indices if t_indices is None else t_indices
    else:
        indptr, indices, m = mat.indptr, mat.indices, mat.shape[0]
    t, _, np_ = x.shape
    y = x.new_empty(t, m, np_)
    _check(_fn("bsr_mm", x.dtype)(r, c, m // r, _ptr(indptr), _ptr(indices), _ptr(values), _ptr(x), x.stride(0),
                                  _ptr(y), y.stride(0), np_, t, _ptr(bias), torch.get_num_threads()), "bsr_mm")
    return y


def _rows(t: torch.Tensor, rows: torch.Tensor, shift=0) -> torch.Tensor:
    """int64 addresses of rows ``rows`` of a step-major ``t (T, F, NP)``, ``shift`` frames on."""
    return t.data_ptr() + (rows * t.stride(1) + shift * t.stride(0)) * t.element_size()


def sddmm(mat: BsrMat, grow: torch.Tensor, hrow: torch.Tensor, g_stride: int, h_stride: int, frames: int,
          np_: int, dtype: torch.dtype) -> torch.Tensor:
    """Block gradients ``Σ_t g_t[rows] h_t[cols]ᵀ`` at ``mat``'s kept blocks, ``(nnzb * R * C,)``:
    ``grow``/``hrow`` hold the int64 address of each row's first frame, frames ``*_stride`` apart."""
    r, c = mat.block
    out = torch.empty(mat.nnzb * r * c, dtype=dtype)
    _check(_fn("sddmm", dtype)(r, c, mat.shape[0] // r, _ptr(mat.indptr), _ptr(mat.indices), _ptr(grow), _ptr(hrow),
                               g_stride, h_stride, frames, np_, _ptr(out), torch.get_num_threads()), "sddmm")
    return out


class BsrGRULayer(torch.autograd.Function):
    """One GRU layer (all directions) on the block-sparse kernels, step-major.

    ``x (T, In, NP)`` → ``y (T, D*H, NP)`` (zero at frames ``t ≥ lens[n]`` and on padding lanes,
    whose ``lens`` is 0); then the layer's dense parameters, ``D`` each of ``weight_ih``,
    ``weight_hh`` and (when ``bias``) ``bias_ih``, ``bias_hh``. Same math as ``GRUScan`` over
    ``W_ih x + b_ih``, the reverse direction over each utterance reversed within its length;
    gradients for ``x`` and every parameter, exactly zero at pruned weights.
    """

    @staticmethod
    def forward(ctx, x, lens: torch.Tensor, lay: LayerLayout, bias: bool, *params):
        x = x.contiguous()
        t, _, np_ = x.shape
        d = len(lay.hh.part_shapes)
        w_ih, w_hh = params[:d], params[d:2 * d]
        h = w_hh[0].shape[1]
        b_ih = torch.cat([p.detach() for p in params[2 * d:3 * d]]) if bias else None
        b_hh = torch.cat([p.detach() for p in params[3 * d:4 * d]]) if bias else x.new_zeros(d * GATES * h)
        v_ih = lay.ih.values(w_ih)
        gi = bsr_mm(lay.ih, v_ih, x, b_ih)  # (T, D*3H, NP)
        v_hh = lay.hh.values(w_hh)
        y = x.new_empty(t, d * h, np_)
        saved = [x.new_empty(t, d * h, np_) for _ in range(4)]  # r, z, n, gh_n
        r, c = lay.hh.block
        _check(_fn("gru_fwd", x.dtype)(
            r, c, d, h, np_, t, _ptr(lay.hh.indptr), _ptr(lay.hh.indices), _ptr(v_hh), _ptr(lay.hh.cost),
            _ptr(b_hh), _ptr(gi), _ptr(lens), None, _ptr(y), *[_ptr(a) for a in saved],
            torch.get_num_threads()), "gru_fwd")
        ctx.save_for_backward(x, y, *saved, v_ih, v_hh, *w_ih, *w_hh)
        ctx.lens, ctx.lay, ctx.bias = lens, lay, bias
        return y

    @staticmethod
    def backward(ctx, dy):
        lens, lay, bias = ctx.lens, ctx.lay, ctx.bias
        x, y, sr, sz, sn, sg, v_ih, v_hh, *ws = ctx.saved_tensors
        d = len(lay.hh.part_shapes)
        w_ih, w_hh = ws[:d], ws[d:]
        t, _, np_ = x.shape
        h, dt = w_hh[0].shape[1], x.dtype
        dy = dy.contiguous()
        dg = x.new_empty(t, d * (GATES + 1) * h, np_)  # rows [0, 3DH): dgh; [3DH, 4DH): dgi of the n gates
        dbi, dbhn = x.new_zeros(d * GATES * h), x.new_zeros(d * h)
        vt_hh = lay.hh.t_values(v_hh)
        dh_buf = x.new_empty(d * h, np_)
        r, c = lay.hh.block
        _check(_fn("gru_bwd", dt)(
            r, c, d, h, np_, t, _ptr(lay.hh.t_indptr), _ptr(lay.hh.t_indices), _ptr(vt_hh), _ptr(dy), _ptr(lens),
            None, _ptr(y), _ptr(sr), _ptr(sz), _ptr(sn), _ptr(sg), _ptr(dg), _ptr(dbi), _ptr(dbhn),
            _ptr(dh_buf), torch.get_num_threads()), "gru_bwd")
        # dW_hh = Σ_t dgh_t h_prev(t)ᵀ, h_prev(t) = y one frame earlier (forward direction) or later
        # (reverse), zero past the edge: pair dgh of frames 1.. with y of frames 0.. (and the other
        # way round for the reverse direction) over T - 1 frames.
        rows = torch.arange(d * GATES * h)
        rd, gate, j = rows // (GATES * h), (rows // h) % GATES, rows % h
        units = torch.arange(d * h)
        dv_hh = sddmm(lay.hh, _rows(dg, rows, (rd == 0).long()), _rows(y, units, (units >= h).long()),
                      dg.stride(0), y.stride(0), t - 1, np_, dt)
        dgi_rows = torch.where(gate < 2, rows, d * GATES * h + rd * h + j)
        dv_ih = sddmm(lay.ih, _rows(dg, dgi_rows), _rows(x, torch.arange(x.shape[1])), dg.stride(0), x.stride(0), t,
                      np_, dt)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = bsr_mm(lay.ih, lay.ih.t_values(v_ih), dg, transposed=True,
                        t_indices=lay.ih_dx_indices)
        grads = [*lay.ih.dense_grads(dv_ih, w_ih), *lay.hh.dense_grads(dv_hh, w_hh)]
        if bias:
            dbi3 = dbi.view(d, GATES, h)
            grads += list(dbi3.reshape(d, GATES * h).unbind(0))
            grads += list(torch.cat([dbi3[:, :2], dbhn.view(d, 1, h)], 1).reshape(d, GATES * h).unbind(0))
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[4:])]
        return (dx, None, None, None, *grads)


def _layer_params(rnn: nn.GRU, k: int) -> list[torch.Tensor]:
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else [])
    return [getattr(rnn, f"{w}_l{k}{s}") for w in names for s in _dirs(rnn)]


def _check_layout(rnn: nn.GRU, layout: GRULayout) -> None:
    if len(layout.layers) != rnn.num_layers:
        raise ValueError(f"the block-sparse layout has {len(layout.layers)} layers but the GRU has {rnn.num_layers}; "
                         "call enable_block_sparse again after changing the model")
    for k, lay in enumerate(layout.layers):
        for mat, kind in ((lay.ih, "ih"), (lay.hh, "hh")):
            p = getattr(rnn, f"weight_{kind}_l{k}")
            if tuple(p.shape) != mat.part_shapes[0]:
                raise ValueError(f"weight_{kind}_l{k} has shape {tuple(p.shape)} but its block-sparse layout was "
                                 f"packed for {mat.part_shapes[0]}; call enable_block_sparse again")


def bsr_recurrent(rnn: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``padded_recurrent`` for a GRU with a block-sparse layout: ``x (T, N, In)`` → ``(T, N, D*H)``,
    zero on padding frames."""
    layout = getattr(rnn, BSR_ATTR, None)
    if layout is None:
        raise ValueError("this GRU has no block-sparse layout; call enable_block_sparse(model, masks) first")
    if x.is_cuda or rnn.weight_hh_l0.is_cuda:
        raise ValueError("the block-sparse training kernels run on CPU tensors; call disable_block_sparse(model) "
                         "to train on a GPU")
    dtype = rnn.weight_hh_l0.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the block-sparse training kernels run float32 or float64 GRUs, not {dtype}")
    _check_layout(rnn, layout)
    if x.dim() != 3 or x.shape[2] != rnn.input_size:
        raise ValueError(f"expected input (T, N, {rnn.input_size}), got {tuple(x.shape)}")
    t, n, n_in = x.shape
    if t == 0 or n == 0:
        raise ValueError(f"cannot run a GRU over an empty batch of shape {tuple(x.shape)}")
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (n,) or bool((lengths < 0).any()) or bool((lengths > t).any()):
        raise ValueError(f"lengths must be {n} values in [0, {t}], got {lengths.tolist()}")
    x = x.to(dtype)  # under autocast the front end may hand over bf16: the recurrence runs at the weights' precision
    if _bsr_train_lib.library() is None:
        return _torch_recurrent(rnn, layout, x, lengths)
    np_ = -(-n // LANE) * LANE
    lens = torch.zeros(np_, dtype=torch.int32)
    lens[:n] = lengths.to("cpu", torch.int32)
    y = F.pad(x.transpose(1, 2), (0, np_ - n))  # (T, In, NP), padding lanes zero
    for k, lay in enumerate(layout.layers):
        y = BsrGRULayer.apply(y, lens, lay, rnn.bias, *_layer_params(rnn, k))
    return y[:, :, :n].transpose(1, 2).contiguous()  # (T, N, D*H)


def _torch_recurrent(rnn: nn.GRU, layout: GRULayout, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The torch implementation: ``GRUScan`` over the masked weights (``w * mask``: zero gradient at pruned entries)."""
    masked = {}
    for k, lay in enumerate(layout.layers):
        for mat, kind in ((lay.ih, "ih"), (lay.hh, "hh")):
            for s, bm in zip(_dirs(rnn), mat.block_masks):
                name = f"weight_{kind}_l{k}{s}"
                p = getattr(rnn, name)
                masked[name] = p * expand(bm, mat.block, p.shape).to(p.dtype)
    lengths = lengths.to(x.device)
    for k in range(rnn.num_layers):
        x = _gru_layer_scan(rnn, k, x, lengths, param=lambda name: masked.get(name, getattr(rnn, name)))
    return torch.where(length_mask(lengths, x.shape[0]).t()[:, :, None], x, 0.0)
