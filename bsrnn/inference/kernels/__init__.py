"""One registry of block-sparse × dense kernels, all with the same signature (docs/kernels.md §3).

``y = kernel(mat, x)`` computes Y = W·X (the convention of docs/kernels.md §1) for a ``BsrMatrix`` W
of matrix shape (M, K) and x of shape (K,) or (K, B) fp32 (numpy or CPU torch), returning (M,) or
(M, B) of the same array type. Every kernel has ``prepare(mat)``: whatever layout it needs (packed
panels, thread partitions, a torch sparse tensor …) is built once and cached in ``mat.cache[name]``;
calls never rebuild it. ``reference`` is the slow oracle the tests compare every other kernel with;
``cpu`` is the fast path (docs/kernels.md §4), the rest are the baselines the benchmarks compare
against (method names as in docs/kernels.md §6).

The contract and the registry live in ``base``; this module only imports the kernel modules
(each registers its kernels) and re-exports the registry.
"""

from __future__ import annotations

import torch

from . import baselines, cpu, mkl, reference  # noqa: F401  (each registers its kernels, in this order)
from .base import KERNELS, Kernel, available, get, matmul, register

if torch.cuda.is_available():  # the GPU path is imported only when CUDA is present
    from . import gpu  # noqa: F401

__all__ = ["KERNELS", "Kernel", "available", "get", "matmul", "register"]
