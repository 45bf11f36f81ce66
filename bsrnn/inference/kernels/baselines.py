"""The calls the sparse kernels are compared with (method names as in docs/kernels.md §6).

Dense: ``dense_torch_mm`` (``torch.mm(W, X)``, MKL), ``dense_torch_linear`` (``F.linear`` on
the (B, K) transpose, what ``nn.Linear`` does) and ``dense_numpy`` (OpenBLAS). Sparse through
PyTorch: ``csr_torch`` (int32 indices, 1.05–1.4× faster than int64, §10) and ``bsr_torch``
(the ``to_sparse_bsr`` layout, MKL sparse BSR: square blocks only, any other block is refused
at prepare with a ValueError). torch and numpy allocate their outputs.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .base import Kernel, register


def _ret(y, out):
    if out is not None:
        np.copyto(out.reshape(y.shape), y)
        return out
    return y


class DenseTorchMM(Kernel):
    name, dense = "dense_torch_mm", True

    def _prepare(self, mat):
        m, k = mat.matrix_shape
        return mat.to_dense().reshape(m, k).contiguous()

    def _run(self, w, x, out):
        return _ret(torch.mm(w, torch.from_numpy(x)).numpy(), out)


class DenseTorchLinear(DenseTorchMM):
    name = "dense_torch_linear"

    def _run(self, w, x, out):
        xt = torch.from_numpy(np.ascontiguousarray(x.T))  # nn.Linear's (B, K) input
        return _ret(torch.nn.functional.linear(xt, w).T.contiguous().numpy(), out)


class DenseNumpy(DenseTorchMM):
    name = "dense_numpy"

    def _prepare(self, mat):
        return super()._prepare(mat).numpy()

    def _run(self, w, x, out):
        if out is not None:
            return np.matmul(w, x, out=out.reshape(w.shape[0], x.shape[1]))
        return w @ x


class CsrTorch(Kernel):
    name = "csr_torch"

    def _prepare(self, mat):
        m, k = mat.matrix_shape
        with warnings.catch_warnings():  # "beta" and invariant-check notices, once per layout
            warnings.simplefilter("ignore")
            csr = mat.to_dense().reshape(m, k).to_sparse_csr()
            return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), (m, k))

    def _run(self, w, x, out):
        return _ret((w @ torch.from_numpy(x)).numpy(), out)


class BsrTorch(Kernel):
    name = "bsr_torch"

    def unsupported(self, mat):
        r, c = mat.block
        if r != c:  # torch's CPU BSR × dense goes to MKL, whose BSR format has square blocks only
            return (f"bsr_torch: torch's CPU BSR product (MKL sparse BLAS) supports only square blocks, "
                    f"not {r}×{c}; use the cpu or csr_torch kernel")
        return None

    def _prepare(self, mat):
        m, k = mat.matrix_shape
        return torch.sparse_bsr_tensor(torch.from_numpy(mat.indptr.astype(np.int64)),
                                       torch.from_numpy(mat.indices.astype(np.int64)),
                                       torch.from_numpy(mat.values.copy()), (m, k))

    def _run(self, w, x, out):
        if w.values().shape[0] == 0:  # MKL rejects an empty BSR operand
            return _ret(np.zeros((w.shape[0], x.shape[1]), np.float32), out)
        return _ret((w @ torch.from_numpy(x)).numpy(), out)


class DenseTorchBf16(DenseTorchMM):
    name, exact = "dense_torch_bf16", False

    def _prepare(self, mat):
        return super()._prepare(mat).to(torch.bfloat16)

    def _run(self, w, x, out):
        return _ret(torch.mm(w, torch.from_numpy(x).to(torch.bfloat16)).float().numpy(), out)


class BsrScipy(Kernel):
    name = "bsr_scipy"

    def _prepare(self, mat):
        import scipy.sparse as sp

        m, k = mat.matrix_shape
        return sp.bsr_matrix((mat.values, mat.indices, mat.indptr), shape=(m, k))

    def _run(self, w, x, out):
        return _ret(np.asarray(w @ x, np.float32), out)


class CsrScipy(BsrScipy):
    name = "csr_scipy"

    def _prepare(self, mat):
        return super()._prepare(mat).tocsr()


for _k in (DenseTorchMM(), DenseTorchLinear(), DenseNumpy(), DenseTorchBf16(), CsrTorch(), BsrTorch(),
           BsrScipy(), CsrScipy()):
    register(_k)
