"""Machine limits for the roofline of docs/kernels.md §9, measured in the same run as the kernels.

    t_ideal = max(Σ bytes(level) / BW(level), flops / P(precision))

bytes: what a kernel must move at least once per call (weight values, block indices, row
pointers, per-row scales, x read and y written); level: the cache level where that working set
lives (per-thread share against the private L1d/L2 sizes from sysfs, the whole set against the
shared L3; DRAM beyond), with the next-faster level serving all it can hold (``served_from``: a
set just past the L2s is mostly still in them); BW(level): the fastest streaming-read bandwidth that the SIMD probe of
``probe.cpp`` measured at working-set sizes inside that level with the kernel's thread count (the
weight stays in cache between calls, true for a recurrent weight reused every step and for the
benchmark's repeated calls); P: the peak of the precision's fastest instruction measured the same
way (fp32: FMA; bf16: the faster of vdpbf16ps and AMX tdpbf16ps; int8: of vpdpbusd and AMX
tdpbssd), or the best sgemm rate where the probe library cannot be built. Both limits are upper
bounds on what any kernel can reach, so ``attained`` = t_ideal / t ≤ 1 up to timing noise.
Also here: the foreign-load monitor (CPU used by *other* processes, from /proc) and timing
helpers shared by the benchmarks.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import native

_CLK = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4]  # minus idle and iowait


def _self_ticks() -> int:
    with open("/proc/self/stat") as f:
        s = f.read()
    fl = s[s.rfind(")") + 2:].split()
    return int(fl[11]) + int(fl[12])  # utime + stime of all our threads


class Foreign:
    """Cores used by other processes during a window (10 ms tick resolution)."""

    def start(self) -> None:
        self.b0, self.s0, self.t0 = _busy_ticks(), _self_ticks(), time.perf_counter()

    def stop(self) -> float:
        db, ds = _busy_ticks() - self.b0, _self_ticks() - self.s0
        return max(0.0, (db - ds) / _CLK / max(time.perf_counter() - self.t0, 1e-9))


def per_call(f, n: int, warm: int = 2) -> float:
    for _ in range(warm):
        f()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        f()
    return (time.perf_counter_ns() - t0) * 1e-9 / n


def calibrate(f, target: float) -> int:
    """Calls per timed block so that the block lasts about ``target`` seconds."""
    for _ in range(2):
        f()
    t = min(per_call(f, 1, warm=0) for _ in range(3))
    return int(min(5000, max(1, math.ceil(target / max(t, 1e-7)))))


# ------------------------------------------------------------------ cache sizes and the probes
LEVELS = ("L1", "L2", "L3", "DRAM")
PROBE_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-std=c++17"]  # no -ffast-math: sums stay sums
# per instruction and thread: flops (int8: multiply-adds count 2 ops) of one loop iteration
_PEAKS = {"fp32_fma": ("probe_fma_f32", 16 * 32), "bf16_dot": ("probe_dp_bf16", 16 * 64),
          "int8_vnni": ("probe_dp_i8", 16 * 128), "bf16_amx": ("probe_amx_bf16", 4 * 16 * 16 * 32 * 2),
          "int8_amx": ("probe_amx_i8", 4 * 16 * 16 * 64 * 2)}
PRECISION_PEAKS = {"float32": ("fp32_fma",), "bf16": ("bf16_dot", "bf16_amx"), "int8": ("int8_vnni", "int8_amx")}


def cache_sizes() -> dict:
    """Bytes of L1d and L2 per core and of L3 in all, from sysfs (lscpu's source); defaults where absent."""
    out = {"L1": 32 << 10, "L2": 1 << 20, "L3": 32 << 20, "source": "defaults"}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            level, kind = int((d / "level").read_text()), (d / "type").read_text().strip()
            size = (d / "size").read_text().strip().upper()
            n = int(size.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(size[-1], 0)
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and 1 <= level <= 3:
            out[f"L{level}"], out["source"] = n, "sysfs"
    return out


def level_of(nbytes: float, threads: int, caches: dict) -> str:
    """The level a working set of ``nbytes`` shared out over ``threads`` lives in."""
    share = nbytes / max(threads, 1)
    if share <= caches["L1"]:
        return "L1"
    if share <= caches["L2"]:
        return "L2"
    return "L3" if nbytes <= caches["L3"] else "DRAM"


def probe_sizes(threads: int, caches: dict, dram: bool = True) -> list[int]:
    """Working-set sizes (all threads together) inside each level: 1/4 and 1/2 of L1d, 1/8…3/4
    of L2 (per thread), three sizes between 2·L2 and L3/2, and twice L3 for DRAM."""
    l1, l2, l3 = caches["L1"] * threads, caches["L2"] * threads, caches["L3"]
    sizes = [l1 // 4, l1 // 2, l2 // 8, l2 // 4, l2 // 2, 3 * l2 // 4]
    lo, hi = 2 * l2, max(2 * l2, l3 // 2)
    sizes += [int(lo * (hi / lo) ** f) for f in (0.0, 0.5, 1.0)]
    if dram:
        sizes.append(min(2 * l3 + (64 << 20), 3 << 30))
    return sorted({max(4096, s // 4096 * 4096) for s in sizes})


@functools.cache
def probe_lib() -> ctypes.CDLL | None:
    """``probe.cpp`` built and loaded, or None (no compiler, failed build)."""
    try:
        so = native.build_library("probe", (Path(__file__).parent / "probe.cpp").read_text(), PROBE_FLAGS, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"bsrnn: building the roofline probes failed ({e}); falling back to numpy probes")
        return None
    lib = ctypes.CDLL(str(so))
    P, L, I, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    lib.probe_read.argtypes, lib.probe_read.restype = [P, L, I, L, P], D
    for fn, _ in _PEAKS.values():
        getattr(lib, fn).argtypes, getattr(lib, fn).restype = [L, I, P], D
    lib.probe_simd_bytes.restype = I
    lib.probe_amx_allowed.restype = I
    return lib


_SINK = np.zeros(16 * 256, np.float32)


def read_bw(nbytes: int, threads: int, target: float = 0.01, rounds: int = 5) -> float:
    """Streaming-read bandwidth (B/s) of ``threads`` threads over ``nbytes`` in all, the fastest
    of ``rounds`` timed blocks of about ``target`` seconds (other processes only slow a block down)."""
    lib = probe_lib()
    a = np.ones(max(4096, int(nbytes)) // 4, np.float32)
    if lib is None:  # numpy's sum: one thread, slower than SIMD loads (a looser bound, said in the file)
        f = lambda: float(a.sum())  # noqa: E731
        n = calibrate(f, target)
        return a.nbytes / min(per_call(f, n, 1) for _ in range(rounds))
    n = a.size // (128 * threads) * 128 * threads  # what the probe reads: whole vector steps per thread
    t1 = lib.probe_read(a.ctypes.data, n, threads, 1, _SINK.ctypes.data)
    reps = int(min(100000, max(1, math.ceil(target / max(t1, 1e-7)))))
    return 4 * n * reps / min(lib.probe_read(a.ctypes.data, n, threads, reps, _SINK.ctypes.data) for _ in range(rounds))


def peak_rates(threads: int, target: float = 0.01, rounds: int = 3) -> dict:
    """GFLOP/s (int8: GOP/s) of each probe instruction with ``threads`` threads; absent ones are
    left out (not built for this CPU, or AMX refused by the OS)."""
    lib, out = probe_lib(), {}
    if lib is None:
        return out
    for name, (fn, flops) in _PEAKS.items():
        f = getattr(lib, fn)
        t = f(1000, threads, _SINK.ctypes.data)
        if t < 0:
            continue
        iters = int(max(1000, 1000 * target / max(t, 1e-9)))
        best = min(f(iters, threads, _SINK.ctypes.data) for _ in range(rounds))
        out[name] = flops * iters * threads / best / 1e9
    return out


def sgemm_peak(sizes=(1024, 2048)) -> dict:
    peak = {}
    for n in sizes:
        A, B = torch.randn(n, n), torch.randn(n, n)
        peak[f"torch_{n}"] = 2 * n**3 / min(per_call(lambda: torch.mm(A, B), 2, warm=1) for _ in range(3)) / 1e9
    time.sleep(0.05)  # let torch's OpenMP pool stop spinning before OpenBLAS starts (docs/kernels.md §10)
    for n in sizes:
        A = np.random.standard_normal((n, n)).astype(np.float32)
        B = np.random.standard_normal((n, n)).astype(np.float32)
        peak[f"numpy_{n}"] = 2 * n**3 / min(per_call(lambda: A @ B, 2, warm=1) for _ in range(3)) / 1e9
    time.sleep(0.15)
    return peak


def measure(threads: int, quick: bool = False, dram: bool = True) -> dict:
    """Every limit of the roofline: read bandwidth per probe size and per level (1 and
    ``threads`` threads), peak rate per instruction and per precision, and the sgemm rate."""
    caches = cache_sizes()
    lib = probe_lib()
    sizes = probe_sizes(threads, caches, dram)
    target = 0.004 if quick else 0.01
    res = {"caches": caches, "threads": threads,
           "probe": "numpy" if lib is None else ("avx512" if lib.probe_simd_bytes() == 64 else "portable-simd"),
           "amx_allowed": bool(lib and lib.probe_amx_allowed())}
    for nt, key in ((1, "1t"), (threads, "nt")):
        if key == "nt" or threads != 1:
            bw = {str(s): read_bw(s, nt, target) / 1e9 for s in (sizes if key == "nt" else sizes[::2])}
            res[f"read_bw_{key}_GBps"] = bw
            res[f"peak_{key}_GFLOPs"] = peak_rates(nt, target)
    if threads == 1:
        res["read_bw_1t_GBps"], res["peak_1t_GFLOPs"] = res["read_bw_nt_GBps"], res["peak_nt_GFLOPs"]
    lvl = {}
    for s, v in res["read_bw_nt_GBps"].items():
        L = level_of(int(s), threads, caches)
        lvl[L] = max(lvl.get(L, 0.0), v)
    for i, L in enumerate(LEVELS):  # a level without a probe inherits the next faster one's figure
        if L not in lvl:
            lvl[L] = next((lvl[M] for M in LEVELS[i - 1::-1] if M in lvl), max(lvl.values())) if i else max(lvl.values())
    res["level_bw_GBps"] = lvl
    res["sgemm_GFLOPs"] = sgemm_peak((1024,) if quick else (1024, 2048))
    res["sgemm_peak_GFLOPs"] = max(res["sgemm_GFLOPs"].values())
    pk = res["peak_nt_GFLOPs"]
    fp32 = max(pk.get("fp32_fma", 0.0), res["sgemm_peak_GFLOPs"])
    res["precision_peak_GFLOPs"] = {p: max([fp32] + [pk[n] for n in names if n in pk]) for p, names in PRECISION_PEAKS.items()}
    res["precision_peak_source"] = {p: max([("fp32_fma" if "fp32_fma" in pk else "sgemm", fp32)]
                                           + [(n, pk[n]) for n in names if n in pk], key=lambda q: q[1])[0]
                                    for p, names in PRECISION_PEAKS.items()}
    return res


VALUE_BYTES = {"float32": 4, "bf16": 2, "int8": 1}


def cell_bytes(M: int, K: int, block: int, nnzb: int, B: int, dtype: str = "float32", xy_bytes: int = 4) -> dict:
    """Bytes a kernel must move per call, each once: weight values, indices, row pointers, int8
    row scales, x read and y written. block 0: dense; 1: CSR (value + int32 index per nonzero)."""
    vb = VALUE_BYTES[dtype]
    if block == 0:
        w = {"values": vb * M * K}
    elif block == 1:
        w = {"values": vb * nnzb, "indices": 4 * nnzb, "indptr": 4 * (M + 1)}
    else:
        nbr = M // block
        w = {"values": vb * nnzb * block * block, "indices": 4 * nnzb, "indptr": 4 * (nbr + 1)}
        if dtype == "int8":
            w["scales"] = 4 * nbr
    w.update(x=xy_bytes * K * B, y=xy_bytes * M * B)
    return w


def struct_bytes(M: int, K: int, block: int, nnzb: int, dtype: str = "float32") -> int:
    """Weight bytes (docs/kernels.md §2): everything of ``cell_bytes`` but x and y."""
    b = cell_bytes(M, K, block, nnzb, 0, dtype)
    return sum(v for k, v in b.items() if k not in ("x", "y"))


def bound(roof: dict, M: int, K: int, B: int, block: int, nnzb: int, dtype: str = "float32",
          xy_bytes: int = 4) -> dict:
    """The cell's lower bound on time and which limit sets it (docs/kernels.md §9)."""
    parts = cell_bytes(M, K, block, nnzb, B, dtype, xy_bytes)
    nbytes = sum(parts.values())
    threads, caches = roof["threads"], roof["caches"]
    level = level_of(nbytes, threads, caches)
    by_level = served_from(nbytes, threads, caches)
    t_mem = sum(n / (roof["level_bw_GBps"][L] * 1e9) for L, n in by_level.items())
    nnz = M * K if block == 0 else nnzb * max(block, 1) ** 2
    flops = 2.0 * nnz * B
    peak = roof["precision_peak_GFLOPs"][dtype] * 1e9
    t_comp = flops / peak
    faster = {L: n for L, n in by_level.items() if L != level}
    spill = "".join(f" ({n / 1e6:.2f} of {nbytes / 1e6:.2f} MB from {L})" for L, n in faster.items())
    which = (f"{level} bandwidth{spill}" if t_mem >= t_comp else f"{dtype} compute ({roof['precision_peak_source'][dtype]})")
    return {"ideal_us": max(t_mem, t_comp) * 1e6, "bound": which, "level": level, "bytes": int(nbytes),
            "bytes_by_level": {L: int(n) for L, n in by_level.items()},
            "flops": flops, "bw_GBps": nbytes / t_mem / 1e9, "peak_GFLOPs": peak / 1e9,
            "t_mem_us": t_mem * 1e6, "t_compute_us": t_comp * 1e6}


def served_from(nbytes: float, threads: int, caches: dict) -> dict:
    """Bytes of a working set served from each level, optimistically: the level it lives in
    (``level_of``) serves what the next-faster level cannot hold, and that faster level holds all
    it can (threads × L1d or L2, or the L3). A set just past a level's capacity is mostly still
    in it — a set of 2.1 MB per thread on 2 MB L2s streams ~95 % from L2, not all from L3 — so
    charging every byte to the slower level would let kernels exceed the bound."""
    level = level_of(nbytes, threads, caches)
    i = LEVELS.index(level)
    if i == 0:
        return {level: float(nbytes)}
    prev = LEVELS[i - 1]
    cap = caches[prev] * (threads if prev in ("L1", "L2") else 1)
    held = min(float(nbytes), float(cap))
    return {prev: held, level: float(nbytes) - held}


def ideal_s(roof: dict, M: int, K: int, B: int, block: int, nnzb: int, dtype: str = "float32") -> float:
    return bound(roof, M, K, B, block, nnzb, dtype)["ideal_us"] * 1e-6

def machine_info(threads: int) -> dict:
    """Versions, CPU, thread settings and BLAS kernels: what a row needs to be compared later."""
    import platform
    import sys

    import numba
    import scipy

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "numba": numba.__version__, "platform": platform.platform(),
            "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
            "ncpu": os.cpu_count(), "threads": threads,
            "env_OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        import threadpoolctl

        info["threadpools"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                               for d in threadpoolctl.threadpool_info()]
    except Exception as e:  # noqa: BLE001 - informational only
        info["threadpools"] = str(e)
    return info


def set_threads(threads: int) -> None:
    """The same thread count for torch, numba, OpenBLAS and our cpu kernel."""
    import numba
    import threadpoolctl

    from ..inference.kernels import cpu

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    cpu.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads, user_api="blas")
