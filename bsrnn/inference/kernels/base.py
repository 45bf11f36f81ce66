"""The kernel contract and the registry every kernel module registers into.

Kept apart from the package's ``__init__`` so that the kernel modules (``reference``,
``baselines``, ``cpu``, ``gpu``) import it, and the package only imports them: no module imports
back from a half-initialised package.
"""

from __future__ import annotations

import numpy as np
import torch

from ..export import BsrMatrix


class Kernel:
    """Base class: subclasses set ``name`` and implement ``_prepare`` and ``_run``."""

    name = "?"
    dense = False  # baselines that ignore the sparsity (they multiply the dense matrix)

    def available(self) -> bool:
        return True

    def prepare(self, mat: BsrMatrix):
        state = mat.cache.get(self.name)
        if state is None:
            state = mat.cache[self.name] = self._prepare(mat)
        return state

    def __call__(self, mat: BsrMatrix, x, out: np.ndarray | None = None):
        state = mat.cache.get(self.name)
        if state is None:
            state = self.prepare(mat)
        as_torch = isinstance(x, torch.Tensor)
        xa = x.detach().numpy() if as_torch else np.asarray(x)
        m, k = mat.matrix_shape
        if xa.ndim not in (1, 2) or xa.shape[0] != k:
            raise ValueError(f"{self.name}: x of shape {tuple(xa.shape)} does not match {mat.name} of shape {m}×{k}; "
                             f"expected ({k},) or ({k}, B)")
        if xa.dtype != np.float32 or not xa.flags.c_contiguous:
            xa = np.ascontiguousarray(xa, dtype=np.float32)
        y = self._run(state, xa if xa.ndim == 2 else xa.reshape(k, 1), out)
        if xa.ndim == 1:
            y = y.reshape(m)
        return torch.from_numpy(y) if as_torch else y

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
