"""Export: trained dense-with-zeros weights -> a block-sparse (BSR) file, and back.

The paper's point (BSRNN §1, §6; docs/method.md §18 figures 5–6) is that block-sparse weights make
inference faster and the model smaller. Training hands us ordinary dense weights holding zeros
(docs/architecture.md §1); this module turns the pruned matrices into BSR — per matrix the
nonzero blocks' ``values`` (nnzb, R, C) in fp32, bf16 or int8 (``export_model(dtype=...)``,
``quantize``; int8 with one float32 scale per block row, ``<param>.scales``), their block-column
``indices`` and the block-row pointers ``indptr`` (int32, the layout whose bytes docs/kernels.md
§2 counts) — and keeps every
other tensor (biases, norms, convolutions) dense so the whole model can be rebuilt.

File format: one safetensors file (never pickle, so loading runs no code). Arrays are named
``<param>.values|indices|indptr[|scales]`` for sparse matrices and ``<param>`` for dense tensors; the
safetensors metadata key ``bsrnn`` holds a JSON header: format version, per-matrix shape, block,
gate slices (a block never straddles two gates, docs/method.md §6), kind and nnzb; the recurrent
modules' hyper-parameters (so ``rnn.py`` can rebuild them) and the source config; since version 2
optionally a ``speech`` section (features, normalisation statistics, alphabet, architecture) that
makes the file a whole speech model on its own (``speech.py``, docs/deployment.md). ``load``
checks the header against the arrays and raises one clear ``ValueError`` when they disagree.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path
from ..sparsity.blocks import Block, as_matrix, gate_rows, parse_block

FORMAT = "bsrnn-bsr"
VERSION = 2  # 2: adds the optional ``speech`` section (docs/deployment.md §1); 1 is still read
READ_VERSIONS = (1, 2)


@dataclass(eq=False)
class BsrMatrix:
    """One block-sparse matrix: ``values`` (nnzb, R, C), ``indices`` (nnzb,) and ``indptr``
    (M/R + 1,) int32, all C-contiguous numpy arrays (``validate`` refuses anything else). ``shape`` is the original tensor shape (a conv kernel is tiled as its
    (out, in*k) matrix view). Kernels cache their prepared layouts in ``cache`` (built once).

    The values' numpy dtype says their precision (``dtype``, docs/kernels.md §2): float32; uint16
    holding bfloat16 bit patterns (the top half of each float32, numpy has no bfloat16); or int8,
    with ``scales`` (M/R,) float32, one per block row: value = int8 · scale of its block row."""

    shape: tuple[int, ...]
    block: Block
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    gates: int = 1
    name: str = "weight"
    scales: np.ndarray | None = None
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def dtype(self) -> str:
        """The block values' precision: ``float32``, ``bf16`` or ``int8``."""
        return VALUE_DTYPES.get(np.dtype(self.values.dtype), str(self.values.dtype))

    def values_fp32(self) -> np.ndarray:
        """The block values as float32 (nnzb, R, C): bf16 widened, int8 times its block row's scale."""
        v = self.values
        if v.dtype == np.uint16:
            return (v.astype(np.uint32) << 16).view(np.float32)
        if v.dtype == np.int8:
            rows = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
            return v.astype(np.float32) * self.scales[rows][:, None, None]
        return v

    def as_float32(self) -> "BsrMatrix":
        """This matrix with float32 values (itself when they are float32): what kernels without
        low-precision paths multiply."""
        if self.values.dtype == np.float32:
            return self
        return BsrMatrix(self.shape, self.block, self.indptr, self.indices,
                         np.ascontiguousarray(self.values_fp32()), self.gates, self.name)

    @cached_property  # read on every kernel call
    def matrix_shape(self) -> tuple[int, int]:
        return as_matrix(self.shape)

    @property
    def nnzb(self) -> int:
        return int(self.indices.shape[0])

    @property
    def density(self) -> float:
        m, k = self.matrix_shape
        return self.nnzb * self.block[0] * self.block[1] / max(1, m * k)

    @property
    def nbytes(self) -> int:
        """Bytes of the sparse structure (values + indices + row pointers)."""
        return self.values.nbytes + self.indices.nbytes + self.indptr.nbytes + (
            0 if self.scales is None else self.scales.nbytes)

    def to_dense(self) -> torch.Tensor:
        m, k = self.matrix_shape
        r, c = self.block
        w = np.zeros((m // r, k // c, r, c), np.float32)
        rows = np.repeat(np.arange(m // r), np.diff(self.indptr))
        w[rows, self.indices] = self.values_fp32()
        return torch.from_numpy(w.transpose(0, 2, 1, 3).reshape(self.shape).copy())

    def validate(self) -> None:
        """Raise one ``ValueError`` naming this matrix when its arrays are not a valid BSR matrix.

        Checked, in this order: each array is a C-contiguous numpy array of the documented dtype
        (float32 values, int32 indices and indptr), the block tiles the matrix, the array shapes,
        ``indptr`` rising from 0 to nnzb, block-column indices in range and no block stored twice
        in a block row. Arrays of another dtype or layout are refused, not converted: a kernel
        takes pointers into these very arrays, and a silent copy would double the memory of
        every matrix built that way (``to_bsr`` and ``load`` always build conforming arrays; a
        hand-built matrix converts with ``np.ascontiguousarray(a, np.int32)``). Every kernel
        calls this once per matrix, before it prepares its layout."""
        where = f"sparse matrix {self.name}"
        vt = self.values.dtype if isinstance(self.values, np.ndarray) and self.values.dtype in VALUE_DTYPES else np.float32
        for key, dtype in (("values", vt), ("indices", np.int32), ("indptr", np.int32)):
            a = getattr(self, key)
            if not isinstance(a, np.ndarray):
                raise ValueError(f"{where}: {key} is a {type(a).__name__}, not a numpy array")
            if key == "values" and a.dtype not in VALUE_DTYPES:
                raise ValueError(f"{where}: values has dtype {a.dtype}, must be float32, uint16 (bfloat16 bits) "
                                 "or int8 with scales (convert with np.ascontiguousarray(values, np.float32))")
            if a.dtype != dtype:
                raise ValueError(f"{where}: {key} has dtype {a.dtype}, must be {np.dtype(dtype)} "
                                 f"(convert with np.ascontiguousarray({key}, np.{np.dtype(dtype)}))")
            if not a.flags.c_contiguous:
                raise ValueError(f"{where}: {key} is not C-contiguous (convert with np.ascontiguousarray)")
        if (len(self.block) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in self.block)):
            raise ValueError(f"{where}: block {self.block} must be two positive integers")
        m, k = self.matrix_shape
        r, c = self.block
        if m % r or k % c:
            raise ValueError(f"{where}: block {r}×{c} does not tile its {m}×{k} matrix")
        nbr, nbc = m // r, k // c
        if self.indptr.shape != (nbr + 1,):
            raise ValueError(f"{where}: indptr has shape {self.indptr.shape}, expected ({nbr + 1},) (block rows + 1)")
        if self.indices.ndim != 1:
            raise ValueError(f"{where}: indices have shape {self.indices.shape}, expected (nnzb,)")
        if self.values.shape != (self.nnzb, r, c):
            raise ValueError(f"{where}: values have shape {self.values.shape}, expected {(self.nnzb, r, c)}")
        if self.values.dtype == np.int8:
            sc = self.scales
            if not (isinstance(sc, np.ndarray) and sc.dtype == np.float32 and sc.shape == (nbr,) and sc.flags.c_contiguous):
                raise ValueError(f"{where}: int8 values need scales, a C-contiguous float32 array of shape ({nbr},) "
                                 "(one per block row)")
            if not np.all(np.isfinite(sc)):
                raise ValueError(f"{where}: scales must be finite")
        elif self.scales is not None:
            raise ValueError(f"{where}: scales belong to int8 values only, not {self.dtype}")
        if self.indptr[0] != 0 or self.indptr[-1] != self.nnzb or np.any(np.diff(self.indptr) < 0):
            raise ValueError(f"{where}: indptr must rise from 0 to nnzb={self.nnzb}")
        if self.nnzb and (self.indices.min() < 0 or self.indices.max() >= nbc):
            raise ValueError(f"{where}: block-column indices must lie in [0, {nbc})")
        rows = np.repeat(np.arange(nbr, dtype=np.int64), np.diff(self.indptr))
        if np.unique(rows * nbc + self.indices).size != self.nnzb:
            raise ValueError(f"{where}: a block is stored twice in one block row (duplicate block-column index)")


VALUE_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.uint16): "bf16", np.dtype(np.int8): "int8"}
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bf16", "bfloat16": "bf16", "int8": "int8"}


def quantize(mat: BsrMatrix, dtype: str) -> BsrMatrix:
    """The matrix with its block values in ``dtype`` (``fp32``, ``bf16`` or ``int8``).

    bf16: round to nearest even of the float32 values. int8: per block row, scale = max |value|
    / 127 and value = round(v / scale) in [-127, 127] (docs/kernels.md §2 says why per block row)."""
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown value dtype {dtype!r}; choose fp32, bf16 or int8")
    dtype = DTYPE_NAMES[dtype]
    v = np.ascontiguousarray(mat.values_fp32(), np.float32)
    scales = None
    if dtype == "bf16":
        u = v.view(np.uint32)
        v = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    elif dtype == "int8":
        nbr = len(mat.indptr) - 1
        rows = np.repeat(np.arange(nbr), np.diff(mat.indptr))
        amax = np.zeros(nbr, np.float32)
        np.maximum.at(amax, rows, np.abs(v).reshape(len(v), -1).max(1, initial=0.0))
        scales = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
        v = np.clip(np.rint(v / scales[rows][:, None, None]), -127, 127).astype(np.int8)
    return BsrMatrix(mat.shape, mat.block, mat.indptr, mat.indices, np.ascontiguousarray(v), mat.gates, mat.name,
                     scales=scales)


def to_bsr(weight: torch.Tensor | np.ndarray, block: Block | int | str, gates: int = 1, *,
           name: str = "weight") -> BsrMatrix:
    """Keep exactly the blocks that hold a nonzero; the round trip ``to_dense`` is exact."""
    w = torch.as_tensor(weight).detach().to("cpu", torch.float32)
    r, c = parse_block(block)
    m, k = as_matrix(w.shape)
    if gates < 1 or m % gates or (m // gates) % r or k % c:
        raise ValueError(f"{name}: block {r}×{c} does not tile each of its {gates} gate(s) of the "
                         f"{m}×{k} matrix; choose a block dividing {m // max(gates, 1)} and {k}")
    # gates are stacked along rows and each gate height is a multiple of R, so tiling the whole
    # matrix is tiling gate by gate
    t = w.reshape(m // r, r, k // c, c).permute(0, 2, 1, 3)  # (nbr, nbc, R, C)
    keep = (t != 0).flatten(2).any(-1)  # (nbr, nbc)
    rows, cols = keep.nonzero(as_tuple=True)  # row-major: block-row order
    indptr = np.zeros(m // r + 1, np.int32)
    np.cumsum(keep.sum(1).numpy(), out=indptr[1:])
    return BsrMatrix(tuple(w.shape), (r, c), indptr, cols.numpy().astype(np.int32),
                     np.ascontiguousarray(t[rows, cols].numpy()), gates, name)


def recurrent_config(module: nn.Module) -> dict | None:
    """The hyper-parameters needed to rebuild an ``nn.RNN/GRU/LSTM`` (None for other modules).

    A recurrent layer written by hand (DeepSpeech2's clipped-ReLU RNN) describes itself through
    ``bsrnn_recurrent_config()``, in the same keys plus ``clip`` and ``bias_layout``."""
    own = getattr(module, "bsrnn_recurrent_config", None)
    if callable(own):
        return dict(own())
    if not isinstance(module, nn.RNNBase):
        return None
    mode = {"GRU": "GRU", "LSTM": "LSTM"}.get(module.mode, "RNN")
    cfg = {"type": mode, "input_size": module.input_size, "hidden_size": module.hidden_size,
           "num_layers": module.num_layers, "bidirectional": module.bidirectional,
           "batch_first": module.batch_first, "bias": module.bias}
    if mode == "RNN":
        cfg["nonlinearity"] = module.nonlinearity
    if getattr(module, "proj_size", 0):
        cfg["proj_size"] = module.proj_size
    return cfg


@dataclass(eq=False)
class ExportedModel:
    """A loaded (or freshly exported) model: sparse matrices, dense tensors and the header."""

    sparse: dict[str, BsrMatrix]
    dense: dict[str, torch.Tensor]
    modules: dict[str, dict] = field(default_factory=dict)  # recurrent module configs by name
    config: dict = field(default_factory=dict)  # the source run's resolved config
    speech: dict | None = None  # v2: what a whole speech model needs besides tensors (inference/speech.py)
    version: int = VERSION  # the format version the file was written in

    def tensor(self, name: str) -> torch.Tensor:
        """One parameter in dense form, wherever it is stored (sparse or dense)."""
        if name in self.sparse:
            return self.sparse[name].to_dense()
        if name in self.dense:
            return self.dense[name]
        raise ValueError(f"exported model has no tensor {name!r}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor back in dense form, ready for ``model.load_state_dict``."""
        out = {n: m.to_dense() for n, m in self.sparse.items()}
        out.update(self.dense)
        return out

    def size_report(self) -> list[dict]:
        """Per sparse matrix: dense fp32 bytes, BSR bytes and their ratio; a total row last."""
        rows = []
        for n, m in self.sparse.items():
            d = 4 * math.prod(m.shape)
            rows.append({"name": n, "shape": list(m.shape), "block": list(m.block), "dtype": m.dtype, "density": m.density,
                         "dense_bytes": d, "sparse_bytes": m.nbytes, "ratio": d / max(1, m.nbytes)})
        d = sum(r["dense_bytes"] for r in rows)
        s = sum(r["sparse_bytes"] for r in rows)
        o = sum(t.numel() * t.element_size() for t in self.dense.values())
        rows.append({"name": "total (sparse matrices)", "dense_bytes": d, "sparse_bytes": s,
                     "ratio": d / max(1, s), "other_dense_bytes": o})
        return rows


def export_model(model: nn.Module, block: Block | int | str = (4, 4), *, include=(), exclude=(),
                 config: dict | None = None, dtype: str = "fp32") -> ExportedModel:
    """Pure: the model's prunable matrices (``select_targets`` rules) as BSR with block values in
    ``dtype`` (fp32, bf16 or int8: ``quantize``), the rest dense."""
    from ..sparsity.targets import select_targets  # export time only; load needs just blocks.py

    targets = {t.name: t for t in select_targets(model, block, include=include, exclude=exclude)}
    sparse, dense = {}, {}
    for name, tensor in model.state_dict().items():
        if name in targets:
            sparse[name] = quantize(to_bsr(tensor, block, targets[name].gates, name=name), dtype)
        else:
            dense[name] = tensor.detach().cpu().clone()
    modules = {n: c for n, m in model.named_modules() if (c := recurrent_config(m))}
    return ExportedModel(sparse, dense, modules, dict(config or {}))


def _header(exp: ExportedModel) -> dict:
    sparse = {}
    for n, m in exp.sparse.items():
        sparse[n] = {"shape": list(m.shape), "block": list(m.block), "gates": m.gates, "nnzb": m.nnzb, "dtype": m.dtype,
                     "gate_slices": [[s.start, s.stop] for s in gate_rows(m.matrix_shape[0], m.gates)]}
    dense = {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for n, t in exp.dense.items()}
    head = {"format": FORMAT, "version": VERSION, "sparse": sparse, "dense": dense,
            "modules": exp.modules, "config": exp.config}
    if exp.speech is not None:
        head["speech"] = exp.speech
    return head


def save(exp: ExportedModel, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename) so that no half-written file is left behind."""
    from safetensors.torch import save_file

    tensors = {}
    for n, m in exp.sparse.items():
        v = torch.from_numpy(m.values.view(np.int16) if m.dtype == "bf16" else m.values)
        tensors[f"{n}.values"] = v.view(torch.bfloat16) if m.dtype == "bf16" else v
        if m.scales is not None:
            tensors[f"{n}.scales"] = torch.from_numpy(m.scales)
        tensors[f"{n}.indices"] = torch.from_numpy(m.indices)
        tensors[f"{n}.indptr"] = torch.from_numpy(m.indptr)
    tensors.update({n: t.contiguous() for n, t in exp.dense.items()})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"bsrnn": json.dumps(_header(exp))})
    return path


def load(path: str | os.PathLike) -> ExportedModel:
    """Read a file written by ``save``; header and arrays must agree (else ``ValueError``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        head = json.loads(meta["bsrnn"])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{path}: no bsrnn JSON header in the safetensors metadata; was it written by bsrnn export?") from None
    if head.get("format") != FORMAT or head.get("version") not in READ_VERSIONS:
        raise ValueError(f"{path}: header format {head.get('format')!r} v{head.get('version')} is not {FORMAT!r} "
                         f"v{' or v'.join(map(str, READ_VERSIONS))}")

    def take(key: str) -> torch.Tensor:
        if key not in arrays:
            raise ValueError(f"{path}: the header names array {key!r} but the file has no such array")
        return arrays.pop(key)

    sparse = {}
    for n, h in head["sparse"].items():
        want = h.get("dtype", "float32")  # files from before low-precision values hold float32
        if want not in ("float32", "bf16", "int8"):
            raise ValueError(f"{path}: sparse matrix {n} has value dtype {want!r}; expected float32, bf16 or int8")
        v = take(f"{n}.values")
        got = {torch.float32: "float32", torch.bfloat16: "bf16", torch.int8: "int8"}.get(v.dtype, str(v.dtype))
        if got != want:
            raise ValueError(f"{path}: sparse matrix {n}: header says {want} values but the array holds {got}")
        v = v.view(torch.int16).numpy().view(np.uint16) if got == "bf16" else v.numpy()
        sc = take(f"{n}.scales").numpy() if want == "int8" else None
        m = BsrMatrix(tuple(h["shape"]), tuple(h["block"]), take(f"{n}.indptr").numpy(), take(f"{n}.indices").numpy(),
                      v, int(h["gates"]), n, scales=sc)
        try:
            m.validate()
            if m.nnzb != h["nnzb"]:
                raise ValueError(f"sparse matrix {n}: header says nnzb={h['nnzb']} but the arrays hold {m.nnzb} blocks")
            if gate_rows(m.matrix_shape[0], m.gates)[0].stop % m.block[0]:
                raise ValueError(f"sparse matrix {n}: block height {m.block[0]} straddles its {m.gates} gates")
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        sparse[n] = m
    dense = {}
    for n, h in head["dense"].items():
        t = take(n)
        if list(t.shape) != h["shape"]:
            raise ValueError(f"{path}: dense tensor {n} has shape {list(t.shape)} but the header says {h['shape']}")
        dense[n] = t
    if arrays:
        raise ValueError(f"{path}: arrays {sorted(arrays)[:5]} are not described by the header")
    return ExportedModel(sparse, dense, head.get("modules", {}), head.get("config", {}), head.get("speech"),
                         int(head["version"]))
