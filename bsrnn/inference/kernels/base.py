"""The kernel contract and the registry every kernel module registers into.

Kept apart from the package's ``__init__`` so that the kernel modules (``reference``,
``baselines``, ``cpu``, ``gpu``) import it, and the package only imports them: no module imports
back from a half-initialised package.

``Kernel.__call__`` is the one place where inputs are checked, so every kernel refuses the same
bad inputs with the same sentence: the matrix is validated once, when its layout is prepared
(``BsrMatrix.validate``: dtypes, contiguity, shapes, index ranges, row pointers), before any
kernel takes a pointer into its arrays; ``x`` must match the matrix (it is converted to a
C-contiguous float32 copy if it is not one); ``out``, when given, must be exactly what the kernel
would have returned — a C-contiguous float32 numpy array or CPU tensor of the result's shape,
not overlapping ``x`` — and is refused otherwise (``ValueError``), since converting it would
mean writing somewhere other than where the caller looks. The call then returns ``out`` itself.
"""

from __future__ import annotations

import numpy as np
import torch

from ..export import BsrMatrix

F32 = np.dtype(np.float32)  # a dtype, not the scalar type: comparing with it costs no conversion


def _apart(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the two arrays cannot overlap: two that own their memory overlap only if they
    are one array; otherwise numpy's bounds check decides (a few hundred nanoseconds more)."""
    if a.flags.owndata and b.flags.owndata:
        return a is not b
    return not np.may_share_memory(a, b)


class Kernel:
    """Base class: subclasses set ``name`` and implement ``_prepare`` and ``_run``.

    ``_run(state, x, out)`` receives x as a C-contiguous float32 (K, B) array and ``out`` as
    None or a C-contiguous float32 (M, B) array, and returns the (M, B) result (``out`` itself
    when given)."""

    name = "?"
    dense = False  # baselines that ignore the sparsity (they multiply the dense matrix)
    exact = True  # False: computes in a lower precision than fp32 (dense_torch_bf16), tested at its own tolerance
    low_precision = False  # True: _prepare takes bf16/int8 block values as they are; else it gets
    # the float32 values of the same matrix (BsrMatrix.as_float32), so every kernel takes every dtype

    def available(self) -> bool:
        return True

    def unsupported(self, mat: BsrMatrix) -> str | None:
        """Why this kernel cannot multiply ``mat`` (one sentence), or None when it can."""
        return None

    def prepare(self, mat: BsrMatrix):
        state = mat.cache.get(self.name) if isinstance(mat, BsrMatrix) else None
        if state is None:
            if not isinstance(mat, BsrMatrix):
                raise ValueError(f"{self.name}: expected a BsrMatrix (see bsrnn.inference.to_bsr), "
                                 f"not {type(mat).__name__}")
            mat.validate()  # before _prepare takes views or pointers of the arrays
            why = self.unsupported(mat)
            if why:
                raise ValueError(why)
            state = mat.cache[self.name] = self._prepare(mat if self.low_precision else mat.as_float32())
        return state

    def __call__(self, mat: BsrMatrix, x, out=None):
        # every line here runs on each call of a GEMV of a few microseconds: checks stay cheap
        state = mat.cache.get(self.name) if type(mat) is BsrMatrix else None
        if state is None:
            state = self.prepare(mat)
        as_torch = isinstance(x, torch.Tensor)
        xa = x.detach().numpy() if as_torch else np.asarray(x)
        m, k = mat.matrix_shape
        if xa.ndim not in (1, 2) or xa.shape[0] != k:
            raise ValueError(f"{self.name}: x of shape {tuple(xa.shape)} does not match {mat.name} of shape {m}×{k}; "
                             f"expected ({k},) or ({k}, B)")
        if xa.dtype != F32 or not xa.flags.c_contiguous:
            xa = np.ascontiguousarray(xa, dtype=np.float32)
        vector = xa.ndim == 1
        oa = out
        # the fast test of out: a float32 C array of x's rank, m rows and as many columns as x has
        # (read from the sizes: building the shape tuple to compare costs more than the rest)
        if out is not None and not (type(out) is np.ndarray and out.dtype == F32 and out.flags.carray
                                    and out.ndim == xa.ndim and len(out) == m and k and out.size * k == xa.size * m
                                    and _apart(out, xa)):
            oa = self._check_out(out, (m, *xa.shape[1:]), xa)  # a CPU tensor (converted), or raises
        if vector:
            xa, oa = xa.reshape(k, 1), (None if oa is None else oa.reshape(m, 1))
        y = self._run(state, xa, oa)
        if out is not None:
            return out
        if vector:
            y = y.reshape(m)
        return torch.from_numpy(y) if as_torch else y

    def _check_out(self, out, shape: tuple, xa: np.ndarray) -> np.ndarray:
        """``out`` as the numpy array the kernel writes into, or one ValueError saying what is wrong."""
        oa = out.detach().numpy() if isinstance(out, torch.Tensor) and out.device.type == "cpu" else out
        if not isinstance(oa, np.ndarray):
            problem = f"is a {type(out).__name__}"
        elif oa.dtype != np.float32:
            problem = f"has dtype {oa.dtype}"
        elif tuple(oa.shape) != shape:
            problem = f"has shape {tuple(oa.shape)}"
        elif not oa.flags.carray:
            problem = "is not a writeable C-contiguous array"
        elif not _apart(oa, xa):
            problem = "overlaps x"
        else:
            return oa
        raise ValueError(f"{self.name}: out {problem}; it must be a C-contiguous float32 array (numpy or CPU "
                         f"torch) of shape {shape}, apart from x")

    def _prepare(self, mat: BsrMatrix):  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, state, x: np.ndarray, out):  # pragma: no cover - abstract
        raise NotImplementedError


KERNELS: dict[str, Kernel] = {}


def register(kernel: Kernel) -> Kernel:
    KERNELS[kernel.name] = kernel
    return kernel


def get(name: str) -> Kernel:
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; available: {', '.join(available())}")
    k = KERNELS[name]
    if not k.available():
        raise ValueError(f"kernel {name!r} is not available on this machine; available: {', '.join(available())}")
    return k


def available(sparse_only: bool = False) -> list[str]:
    return [n for n, k in KERNELS.items() if k.available() and not (sparse_only and k.dense)]


def matmul(mat: BsrMatrix, x, kernel: str = "cpu", out=None):
    """Y = W·X with the named kernel (``cpu`` by default)."""
    return get(kernel)(mat, x, out)
