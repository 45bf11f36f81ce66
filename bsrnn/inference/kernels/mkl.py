"""Optional peers: MKL's inspector-executor sparse BLAS (``bsr_mkl``, ``csr_mkl``), docs/kernels.md §6.

What a user of MKL would run: the matrix handed to ``mkl_sparse_s_create_bsr`` (square blocks,
row-major inside a block, zero-based int32 indices: the export's own arrays, no copy) or
``mkl_sparse_s_create_csr`` (a BSR matrix's nonzeros as CSR), an ``mkl_sparse_set_mv_hint`` / ``mm_hint`` for the batch width
it will see, then ``mkl_sparse_optimize`` (the inspector), and every call ``mkl_sparse_s_mv``
(B = 1) or ``mkl_sparse_s_mm`` (row-major x and y). Each batch width the handle has not seen
gets its hint and a new optimisation once, at its first call.

The library is ``libmkl_rt`` of the ``mkl`` wheel on PyPI (``pip install mkl``): found through
``$BSRNN_MKL_RT`` (a file path), else in ``sys.prefix/lib``, else by the loader's search path.
Absent, the two kernels are not available and the benchmark skips them with one line. MKL is
switched to its GNU OpenMP threading layer before its first call, so it shares the process's
libgomp with torch and the ``cpu`` kernel instead of starting a second OpenMP runtime, and set
to the kernels' thread count on every call.

The calls go through numba (a ctypes call from Python costs about a microsecond, a visible share
of a GEMV of a few): ``struct matrix_descr`` (three C ints, passed by value) is passed as the two
integer registers the x86-64 System V ABI assigns to a 12-byte integer struct, so these kernels
are offered on x86-64 Linux only.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from pathlib import Path

import numpy as np

from .cpu import num_threads
from .base import Kernel, register

# mkl_spblas.h constants
ZERO_BASED, ROW_MAJOR, NON_TRANSPOSE = 0, 101, 10
MATRIX_GENERAL, FILL_LOWER, DIAG_NON_UNIT = 20, 40, 50
DESCR_LO, DESCR_HI = MATRIX_GENERAL | (FILL_LOWER << 32), DIAG_NON_UNIT  # the struct's two registers
MKL_THREADING_GNU, EXPECTED_CALLS = 1, 1_000_000


def _candidates() -> list[str]:
    env = os.environ.get("BSRNN_MKL_RT")
    if env:
        return [env]
    lib = Path(sys.prefix) / "lib"
    return [str(p) for n in ("libmkl_rt.so.2", "libmkl_rt.so.3") if (p := lib / n).exists()] + \
        ["libmkl_rt.so.2", "libmkl_rt.so.3"]


@functools.cache
def library() -> ctypes.CDLL | None:
    """libmkl_rt with the entry points set up, or None (absent, or not x86-64 Linux)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    for c in _candidates():
        try:
            lib = ctypes.CDLL(c)
            lib.mkl_sparse_s_create_bsr  # noqa: B018 - present in this build?
            break
        except (OSError, AttributeError):
            continue
    else:
        return None
    I, P, F, L = ctypes.c_int, ctypes.c_void_p, ctypes.c_float, ctypes.c_int64
    lib.MKL_Set_Threading_Layer.argtypes, lib.MKL_Set_Threading_Layer.restype = [I], I
    lib.MKL_Set_Threading_Layer(MKL_THREADING_GNU)  # before any other MKL call
    lib.MKL_Set_Num_Threads.argtypes, lib.MKL_Set_Num_Threads.restype = [I], None
    lib.MKL_Set_Num_Threads_Local.argtypes, lib.MKL_Set_Num_Threads_Local.restype = [I], I
    lib.mkl_sparse_s_create_bsr.argtypes = [P, I, I, I, I, I, P, P, P, P]
    lib.mkl_sparse_s_create_csr.argtypes = [P, I, I, I, P, P, P, P]
    lib.mkl_sparse_set_mv_hint.argtypes = [P, I, L, L, I]
    lib.mkl_sparse_set_mm_hint.argtypes = [P, I, L, L, I, I, I]
    lib.mkl_sparse_optimize.argtypes = [P]
    lib.mkl_sparse_destroy.argtypes = [P]
    lib.mkl_sparse_s_mv.argtypes = [I, F, P, L, L, P, F, P]
    lib.mkl_sparse_s_mm.argtypes = [I, F, P, L, L, I, P, I, I, F, P, I]
    for fn in ("mkl_sparse_s_create_bsr", "mkl_sparse_s_create_csr", "mkl_sparse_set_mv_hint",
               "mkl_sparse_set_mm_hint", "mkl_sparse_optimize", "mkl_sparse_destroy", "mkl_sparse_s_mv",
               "mkl_sparse_s_mm"):
        getattr(lib, fn).restype = I
    return lib


@functools.cache
def _calls():
    """numba wrappers of the two products (free pointers, no per-argument ctypes cost)."""
    from numba import njit

    lib = library()
    mv, mm = lib.mkl_sparse_s_mv, lib.mkl_sparse_s_mm

    @njit(nogil=True)
    def call_mv(h, x, y):
        return mv(NON_TRANSPOSE, np.float32(1.0), h, DESCR_LO, DESCR_HI, x.ctypes, np.float32(0.0), y.ctypes)

    @njit(nogil=True)
    def call_mm(h, x, y, B):
        return mm(NON_TRANSPOSE, np.float32(1.0), h, DESCR_LO, DESCR_HI, ROW_MAJOR, x.ctypes, B, B,
                  np.float32(0.0), y.ctypes, B)

    return call_mv, call_mm


class _Handle:
    """An MKL sparse handle and the arrays it points into (kept alive with it)."""

    def __init__(self, mat, csr: bool):
        lib = library()
        self.lib, self.h = lib, ctypes.c_void_p()
        m, k = mat.matrix_shape
        if csr and mat.block != (1, 1):  # a CSR user's matrix: the same nonzeros, one by one
            import scipy.sparse as sp

            c = sp.bsr_matrix((mat.values, mat.indices, mat.indptr), shape=(m, k)).tocsr()
            c.eliminate_zeros()
            c.sort_indices()
            self.keep = (c.indptr.astype(np.int32), c.indices.astype(np.int32), c.data.astype(np.float32))
        else:
            self.keep = (mat.indptr, mat.indices, np.ascontiguousarray(mat.values).reshape(-1))
        ip, ix, v = (a.ctypes.data for a in self.keep)
        if csr:
            st = lib.mkl_sparse_s_create_csr(ctypes.byref(self.h), ZERO_BASED, m, k, ip, ip + 4, ix, v)
        else:
            b = mat.block[0]
            st = lib.mkl_sparse_s_create_bsr(ctypes.byref(self.h), ZERO_BASED, ROW_MAJOR, m // b, k // b, b,
                                             ip, ip + 4, ix, v)
        if st:
            raise RuntimeError(f"MKL could not create the sparse handle of {mat.name} (status {st})")
        self.seen: set[int] = set()

    def ready(self, B: int) -> None:
        """Hint the batch width and run the inspector, once per width."""
        if B in self.seen:
            return
        lib = self.lib
        if B == 1:
            lib.mkl_sparse_set_mv_hint(self.h, NON_TRANSPOSE, DESCR_LO, DESCR_HI, EXPECTED_CALLS)
        else:
            lib.mkl_sparse_set_mm_hint(self.h, NON_TRANSPOSE, DESCR_LO, DESCR_HI, ROW_MAJOR, B, EXPECTED_CALLS)
        st = lib.mkl_sparse_optimize(self.h)
        if st:
            raise RuntimeError(f"mkl_sparse_optimize failed (status {st})")
        self.seen.add(B)

    def __del__(self):
        if getattr(self, "h", None) and self.h.value:
            self.lib.mkl_sparse_destroy(self.h)


_threads = [0]  # the thread count MKL was last given


class BsrMkl(Kernel):
    name = "bsr_mkl"
    csr = False

    def available(self) -> bool:
        return library() is not None

    def unsupported(self, mat):
        if not self.available():
            return f"{self.name}: libmkl_rt was not found (pip install mkl, or set BSRNN_MKL_RT)"
        r, c = mat.block
        if not self.csr and r != c:
            return f"{self.name}: MKL's BSR format has square blocks only, not {r}×{c}; use the cpu kernel"
        return None

    def _prepare(self, mat):
        return {"h": _Handle(mat, self.csr), "m": mat.matrix_shape[0]}

    def _run(self, st, x, out):
        B = x.shape[1]
        y = out if out is not None else np.empty((st["m"], B), np.float32)
        if st["m"] == 0 or st["h"].keep[1].size == 0:  # MKL refuses empty operands
            y[...] = 0
            return y
        h = st["h"]
        h.ready(B)
        nt = num_threads()
        if _threads[0] != nt:
            h.lib.MKL_Set_Num_Threads(nt)
            _threads[0] = nt
        mv, mm = _calls()
        status = mv(h.h.value, x, y) if B == 1 else mm(h.h.value, x, y, B)
        if status:
            raise RuntimeError(f"{self.name}: MKL returned status {status}")
        return y


class CsrMkl(BsrMkl):
    name, csr = "csr_mkl", True


for _k in (BsrMkl(), CsrMkl()):
    register(_k)
