"""Optional GPU path: PyTorch's BSR × dense on CUDA (docs/kernels.md §6: torch's Triton/cuSPARSE BSR).

Imported by the registry only when ``torch.cuda.is_available()``. The matrix is moved to the
device once at prepare; x may be a CUDA tensor (the result stays there) or host data (copied
in and out, which the benchmark rows then include).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Kernel, register


class BsrCuda(Kernel):
    name = "bsr_cuda"

    def available(self) -> bool:
        return torch.cuda.is_available()

    def _prepare(self, mat):
        m, k = mat.matrix_shape
        dev = torch.device("cuda")
        return torch.sparse_bsr_tensor(torch.from_numpy(mat.indptr.astype(np.int64)),
                                       torch.from_numpy(mat.indices.astype(np.int64)),
                                       torch.from_numpy(mat.values.copy()), (m, k)).to(dev)

    def __call__(self, mat, x, out=None):
        if isinstance(x, torch.Tensor) and x.is_cuda:
            w = self.prepare(mat)
            y = w @ x.reshape(x.shape[0], -1).float()
            return y.reshape(-1) if x.ndim == 1 else y
        return super().__call__(mat, x, out)

    def _run(self, w, x, out):
        y = (w @ torch.from_numpy(x).to(w.device)).cpu().numpy()
        if out is not None:
            np.copyto(out.reshape(y.shape), y)
            return out
        return y


register(BsrCuda())
