"""The slow, obviously-correct oracle: a plain torch loop over block rows (docs/kernels.md §3).

Every block row's output is the sum of its blocks times the x rows their column index selects;
fp64 accumulation so that the comparison tolerance in the tests is set by the fast kernels.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Kernel, register


class Reference(Kernel):
    name = "reference"

    def _prepare(self, mat):
        return mat

    def _run(self, mat, x, out):
        m, k = mat.matrix_shape
        r, c = mat.block
        xb = torch.from_numpy(x).double().reshape(k // c, c, -1)  # (K/C, C, B)
        vals = torch.from_numpy(mat.values).double()
        y = torch.zeros(m // r, r, x.shape[1], dtype=torch.float64)
        for ib in range(m // r):
            for p in range(int(mat.indptr[ib]), int(mat.indptr[ib + 1])):
                y[ib] += vals[p] @ xb[int(mat.indices[p])]
        y = y.reshape(m, -1).float().numpy()
        if out is not None:
            np.copyto(out.reshape(y.shape), y)
            return out
        return y


register(Reference())
