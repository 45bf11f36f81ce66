"""The fast CPU kernels: ``cpu`` (compiled C++, ``bsr_cpu.cpp`` beside this file) and ``numba``.

``numba`` is the row-packed gather-and-dot kernel of docs/kernels.md §5 (per block row one
contiguous R×(n·C) panel; gather the needed x rows, BB-way dot products; unsigned indices,
§10), kept both as the no-compiler fallback and as the measured anchor the benchmarks must beat.
Its kernels are closures over R, C and the batch tile BB, which numba compiles as constants.

``cpu`` is ``bsr_cpu.cpp`` (shipped as package data), compiled once per machine with the system
C++ compiler (``$CXX`` or g++/c++, ``-O3 -march=native -ffast-math -fopenmp``, linked without
fast-math so that loading it leaves the process's floating-point mode alone) into ``$BSRNN_CACHE``
(default ``~/.cache/bsrnn``), named by a hash of the source text, compiler, flags and CPU (so an
edited .cpp, another compiler or another CPU sharing the home directory builds its own library),
built in a temporary directory and renamed (so concurrent first uses are safe) and loaded through
ctypes. Without a compiler, when the build fails, for block shapes it has no specialisation for,
or with ``BSRNN_CPU_KERNEL=numba``, ``cpu`` runs the numba kernel — with the same results, only
slower. Both split block rows over threads by nonzero blocks; every part is computed whatever
number of threads OpenMP or numba actually start.

Why a hand-rolled compiler call and not ``torch.utils.cpp_extension``: the library is a plain C
function that numba calls through its address (``_call``), where a torch extension is a Python
module called through pybind11, a cost of its own on every call of a GEMV of a few microseconds;
it needs neither torch's nor Python's headers, so it is not tied to the torch version or ABI;
``cpp_extension.load`` needs ninja, which bsrnn does not depend on; and its build directory is
keyed by name, sources and flags but not by CPU, while ``-march=native`` code must not be reused
on another CPU. The whole build is ``build`` below: a compile and a link command, one cache key.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from ... import native
from ..export import BsrMatrix
from .base import Kernel, register

SOURCE_FILE = "bsr_cpu.cpp"

CXX_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c++17"]  # compiling
# BSRNN_CPU_MARCH=x86-64 (or any -march value) builds for that target instead of this CPU: the
# portable vector code without AVX-512, which the tests run to check the fallback path.
# Linking is a separate step without -ffast-math: given it, GCC links crtfastmath.o into the
# library, whose constructor turns on flush-to-zero and denormals-are-zero for the whole process
# the moment the library loads — every later numpy and torch result with a subnormal would change.
LINK_FLAGS = native.LINK_FLAGS
SPECIALISED = {(1, 1), (4, 4), (8, 8), (16, 16), (32, 32)}  # the CASE list in the source
VEC_MAX_BATCH = 8  # below this batch the vec path (transposed x) beats register-blocked bfma (measured: at
# B = 8 bfma is 1.2–2.2× faster for 8×8…32×32 blocks and even for 4×4, its per-row reductions no longer pay)
CSR_VEC_MAX_BATCH = 4  # for 1×1 blocks one vgatherdps per column costs more than bfma from B = 4

_threads = None


def num_threads() -> int:
    """Threads the kernels use: ``set_num_threads`` or else the CPUs this process may run on."""
    return _threads or len(os.sched_getaffinity(0))


def set_num_threads(n: int) -> None:
    global _threads
    if n < 1:
        raise ValueError(f"thread count must be at least 1, not {n}")
    _threads = int(n)


def balance(indptr: np.ndarray, nt: int) -> np.ndarray:
    """Block-row boundaries giving each of ``nt`` threads about the same number of blocks."""
    c = indptr.astype(np.int64)
    cuts = [int(np.searchsorted(c, c[-1] * t / nt)) for t in range(1, nt)]
    return np.array([0] + cuts + [len(indptr) - 1], np.int64)


# ----------------------------------------------------------- numba (docs/kernels.md §5)
U64, F32 = np.uint64, np.float32


# The BB-way dot products of one packed weight row (Wp[rowb:rowb+L]) with BB gathered x rows
# (xg[:, :L]), written to out[row, b0:b0+BB]: one weight load feeds BB FMAs into BB scalar
# accumulators, which only named locals keep in registers (an accumulator array is 4x slower).
def _dot1(Wp, rowb, L, xg, out, row, b0):
    s0 = F32(0.0)
    for i in range(L):
        s0 += Wp[rowb + i] * xg[0, i]
    out[row, b0] = s0


def _dot2(Wp, rowb, L, xg, out, row, b0):
    s0 = s1 = F32(0.0)
    for i in range(L):
        w = Wp[rowb + i]
        s0 += w * xg[0, i]
        s1 += w * xg[1, i]
    out[row, b0] = s0
    out[row, b0 + U64(1)] = s1


def _dot4(Wp, rowb, L, xg, out, row, b0):
    s0 = s1 = s2 = s3 = F32(0.0)
    for i in range(L):
        w = Wp[rowb + i]
        s0 += w * xg[0, i]
        s1 += w * xg[1, i]
        s2 += w * xg[2, i]
        s3 += w * xg[3, i]
    for j, s in enumerate((s0, s1, s2, s3)):
        out[row, b0 + U64(j)] = s


def _dot8(Wp, rowb, L, xg, out, row, b0):
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = F32(0.0)
    for i in range(L):
        w = Wp[rowb + i]
        s0 += w * xg[0, i]
        s1 += w * xg[1, i]
        s2 += w * xg[2, i]
        s3 += w * xg[3, i]
        s4 += w * xg[4, i]
        s5 += w * xg[5, i]
        s6 += w * xg[6, i]
        s7 += w * xg[7, i]
    for j, s in enumerate((s0, s1, s2, s3, s4, s5, s6, s7)):
        out[row, b0 + U64(j)] = s


def _dot16(Wp, rowb, L, xg, out, row, b0):
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = F32(0.0)
    s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = F32(0.0)
    for i in range(L):
        w = Wp[rowb + i]
        s0 += w * xg[0, i]
        s1 += w * xg[1, i]
        s2 += w * xg[2, i]
        s3 += w * xg[3, i]
        s4 += w * xg[4, i]
        s5 += w * xg[5, i]
        s6 += w * xg[6, i]
        s7 += w * xg[7, i]
        s8 += w * xg[8, i]
        s9 += w * xg[9, i]
        s10 += w * xg[10, i]
        s11 += w * xg[11, i]
        s12 += w * xg[12, i]
        s13 += w * xg[13, i]
        s14 += w * xg[14, i]
        s15 += w * xg[15, i]
    for j, s in enumerate((s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15)):
        out[row, b0 + U64(j)] = s


DOTS = {1: _dot1, 2: _dot2, 4: _dot4, 8: _dot8, 16: _dot16}  # the batch tiles BB there are


@functools.cache
def _jitted_dot(bb: int):
    """``DOTS[bb]`` compiled by numba. numba is imported here, on first use, not with the package:
    it costs ~0.8 s, and ``import bsrnn.inference`` must stay light (tests/test_imports.py)."""
    from numba import njit

    return njit(fastmath=True, inline="always")(DOTS[bb])


@functools.cache
def _rowdot(R: int, C: int, BB: int):
    """The §5 kernel for R×C blocks and a batch tile of BB columns, compiled on first call.

    A closure: numba freezes the free variables R, C, BB and ``dot`` as compile-time constants,
    so each (R, C, BB) gets its own machine code with constant trip counts."""
    if BB not in DOTS:
        raise ValueError(f"numba kernel: batch tile {BB} is not one of {', '.join(map(str, DOTS))}")
    from numba import njit, prange  # on first use (see _jitted_dot)

    dot = _jitted_dot(BB)

    def kern(indptr, indices, Wp, off, X, out, bounds, Lmax):
        B = U64(X.shape[1])
        for t in prange(bounds.shape[0] - 1):
            xg = np.empty((BB, Lmax), np.float32)
            for ib in range(U64(bounds[t]), U64(bounds[t + 1])):
                p0, p1 = U64(indptr[ib]), U64(indptr[ib + U64(1)])
                L, base = (p1 - p0) * U64(C), U64(off[ib])
                for b0 in range(U64(0), B - U64(BB - 1), U64(BB)):
                    q = U64(0)
                    for p in range(p0, p1):
                        k0 = U64(indices[p]) * U64(C)
                        for cc in range(U64(C)):
                            for j in range(U64(BB)):
                                xg[j, q] = X[k0 + cc, b0 + j]
                            q += U64(1)
                    for rr in range(U64(R)):
                        dot(Wp, base + rr * L, L, xg, out, ib * U64(R) + rr, b0)

    return njit(parallel=True, fastmath=True, cache=False)(kern)


def pack_rows(mat) -> tuple[np.ndarray, np.ndarray]:
    """BSR blocks -> one row-major (R, n·C) panel per block row, plus panel offsets."""
    nbr, (R, C) = len(mat.indptr) - 1, mat.block
    off = np.zeros(nbr + 1, np.int64)
    off[1:] = np.cumsum(np.diff(mat.indptr).astype(np.int64) * R * C)
    Wp = np.empty(off[-1], np.float32)
    for ib in range(nbr):
        blk = mat.values[mat.indptr[ib]:mat.indptr[ib + 1]]
        Wp[off[ib]:off[ib + 1]] = blk.transpose(1, 0, 2).reshape(-1)
    return Wp, off


class Numba(Kernel):
    """The kernel of docs/kernels.md §5; ``bb`` fixes the batch tile, one of ``DOTS`` (default: tiles
    of 8, then 4, 2 and 1 for the rest of the batch)."""

    name = "numba"

    def __init__(self, bb: int | None = None, name: str | None = None):
        if bb is not None and bb not in DOTS:
            raise ValueError(f"numba kernel: batch tile bb={bb} is not one of {', '.join(map(str, DOTS))}")
        self.bb = bb
        if name:
            self.name = name

    def _prepare(self, mat):
        Wp, off = pack_rows(mat)
        lmax = int(np.diff(mat.indptr).max(initial=0)) * mat.block[1]
        return {"mat": mat, "Wp": Wp, "off": off, "Lmax": max(lmax, 1), "bounds": {}}

    def _run(self, st, x, out):
        mat = st["mat"]
        m, B = mat.matrix_shape[0], x.shape[1]
        y = out if out is not None else np.empty((m, B), np.float32)
        nt = num_threads()
        bounds = st["bounds"].get(nt)
        if bounds is None:
            bounds = st["bounds"][nt] = balance(mat.indptr, nt)
        j = 0
        for bb in ((self.bb,) if self.bb else (8, 4, 2, 1)):
            if B - j >= bb:  # the kernel covers whole tiles of bb columns
                cols = (B - j) // bb * bb
                xs, ys = x[:, j:j + cols], np.empty((m, cols), np.float32)
                _rowdot(*mat.block, bb)(mat.indptr, mat.indices, st["Wp"], st["off"], np.ascontiguousarray(xs),
                                         ys, bounds, st["Lmax"])
                y[:, j:j + cols] = ys
                j += cols
        if j < B:  # only with a fixed bb: the leftover columns one by one
            for jj in range(j, B):
                ys = np.empty((m, 1), np.float32)
                _rowdot(*mat.block, 1)(mat.indptr, mat.indices, st["Wp"], st["off"],
                                       np.ascontiguousarray(x[:, jj:jj + 1]), ys, bounds, st["Lmax"])
                y[:, jj] = ys[:, 0]
        return y


# --------------------------------------------------------------------------- compiled C++
def source() -> str:
    """The text of ``bsr_cpu.cpp``, as installed with the package."""
    return resources.files(__package__).joinpath(SOURCE_FILE).read_text()


cache_dir, compiler = native.cache_dir, native.compiler


def cxx_flags() -> list[str]:
    march = os.environ.get("BSRNN_CPU_MARCH")
    return [f"-march={march}" if f == "-march=native" and march else f for f in CXX_FLAGS]


def library_path(src: str, cache: Path, cxx: str) -> Path:
    """Where the library built from ``src`` lives: named by a hash of everything the build reads."""
    return native.library_path("bsr_cpu", src, cache, cxx, cxx_flags(), LINK_FLAGS)


def build(src: str | None = None, cache: Path | None = None, cxx: str | None = None) -> Path:
    """The shared library of ``src`` (default: the packaged ``bsr_cpu.cpp``), compiled unless the
    cache already holds it (``bsrnn.native``). Raises ``OSError``/``subprocess.SubprocessError``
    when the build fails."""
    return native.build_library("bsr_cpu", source() if src is None else src, cxx_flags(), link_flags=LINK_FLAGS,
                                cache=cache, cxx=cxx, timeout=600)


@functools.cache
def compiled() -> ctypes.CDLL | None:
    """The compiled library (built on first use), or None when only numba is available."""
    if os.environ.get("BSRNN_CPU_KERNEL") == "numba" or not compiler():
        return None
    try:
        so = build()
    except (OSError, subprocess.SubprocessError) as e:
        detail = (getattr(e, "stderr", None) or "").strip()[-800:]
        warnings.warn(f"bsrnn: building the C++ cpu kernel failed ({e}{': ' + detail if detail else ''}); "
                      "using the numba kernel")
        return None
    lib = ctypes.CDLL(str(so))
    P, I, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.bsr_mm.argtypes = [I, I, P, P, P, I, P, P, I, P, P, I, L, P, L]
    lib.bsr_mm.restype = I
    return lib


def retile(mat, h: int):
    """The same matrix as a BSR of h×h blocks (h divides the block): exact, same values.

    32×32 blocks give the small-batch path 64 vectors per block, more than it keeps in
    registers, so it makes strided passes over each block; as 16×16 tiles every pass reads
    whole tiles (measured 4–40 % faster at B = 1–4, 1 thread)."""
    (R, C), n = mat.block, mat.nnzb
    fr, fc = R // h, C // h
    row = np.repeat(np.arange(len(mat.indptr) - 1), np.diff(mat.indptr))
    pp, aa, bb = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(fr), np.arange(fc), indexing="ij"))
    new_row = row[pp] * fr + aa
    order = np.lexsort((bb, pp, new_row))  # block-row order, then the original order in the row
    pp, aa, bb, new_row = pp[order], aa[order], bb[order], new_row[order]
    vals = mat.values.reshape(n, fr, h, fc, h)[pp, aa, :, bb, :]
    indptr = np.zeros((len(mat.indptr) - 1) * fr + 1, np.int32)
    np.cumsum(np.bincount(new_row, minlength=len(indptr) - 1), out=indptr[1:])
    scales = None if mat.scales is None else np.ascontiguousarray(np.repeat(mat.scales, fr))  # per block row
    return BsrMatrix(mat.shape, (h, h), indptr, (mat.indices[pp] * fc + bb).astype(np.int32),
                     np.ascontiguousarray(vals), mat.gates, mat.name, scales=scales)


@functools.cache
def _call():
    """A numba wrapper around the C entry point: ``arr.ctypes`` there is a free pointer, where
    ctypes from Python costs microseconds per argument — a visible share of a 7 µs GEMV."""
    from numba import njit  # on first use (see _jitted_dot)

    fn = compiled().bsr_mm

    @njit(nogil=True)
    def call(R, C, indptr, indices, values, wt, scales, bounds, nt, x, xt, vec, K, y, B):
        return fn(R, C, indptr.ctypes, indices.ctypes, values.ctypes, wt, scales.ctypes, bounds.ctypes, nt,
                  x.ctypes, xt.ctypes, vec, K, y.ctypes, B)

    return call


WT = {np.dtype(np.float32): 0, np.dtype(np.uint16): 1, np.dtype(np.int8): 2}  # bsr_mm's value types
_NO_SCALES = np.ones(1, np.float32)


class Cpu(Kernel):
    name = "cpu"
    low_precision = True  # multiplies bf16 and int8 block values itself (base.Kernel.prepare)

    def _prepare(self, mat):
        if compiled() is None or tuple(mat.block) not in SPECIALISED:
            return {"mat": mat.as_float32(), "fallback": True}
        (m, k), (R, C) = mat.matrix_shape, mat.block
        wt = WT[mat.values.dtype]
        st = {"mat": mat, "values": np.ascontiguousarray(mat.values).reshape(-1), "bounds": {},
              "wt": wt, "scales": _NO_SCALES if mat.scales is None else mat.scales,
              "dims": (m, k, R, C), "vec_ok": R * C >= 16 or (R * C == 1 and wt == 0)}
        if R == C == 32:  # the small-batch path runs on 16×16 tiles (see retile)
            st["small"] = self._prepare(retile(mat, 16))
        return st

    def _run(self, st, x, out):
        mat = st["mat"]
        if "fallback" in st:
            return _FALLBACK._run(_FALLBACK.prepare(mat), x, out)
        B = x.shape[1]
        if B < VEC_MAX_BATCH and "small" in st:
            st = st["small"]
            mat = st["mat"]
        m, k, R, C = st["dims"]
        y = out if out is not None else np.empty((m, B), np.float32)
        nt = _threads or num_threads()
        bounds = st["bounds"].get(nt)
        if bounds is None:
            bounds = st["bounds"][nt] = balance(mat.indptr, nt)
        # CSR gathers x per nonzero: worth it only while the batch is too narrow for bfma's rows
        vec = B < (CSR_VEC_MAX_BATCH if R * C == 1 else VEC_MAX_BATCH) and st["vec_ok"]
        xt = x if (B == 1 or not vec) else np.ascontiguousarray(x.T)
        if _call()(R, C, mat.indptr, mat.indices, st["values"], st["wt"], st["scales"], bounds, nt, x, xt, int(vec),
                   k, y, B):
            raise RuntimeError(f"cpu kernel has no specialisation for block {R}×{C}")
        return y


_FALLBACK = register(Numba())
register(Cpu())
