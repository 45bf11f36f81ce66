"""Machine limits for the roofline of docs/kernels.md §9, measured in the same run as the kernels.

    t_ideal = max((S + 4·(K·B + M·B)) / BW(S), 2·nnz·B / P)

S: bytes of the weight structure; BW(S): streaming-read bandwidth of all kernel threads at a
working set of S bytes (log-interpolated between measured sizes — the weight is assumed to stay
in cache between calls, true for a recurrent weight reused every step); P: the best sgemm rate
of torch and numpy. Also here: the foreign-load monitor (CPU used by *other* processes, from
/proc) and timing helpers shared by the benchmarks.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from numba import njit, prange

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


@njit(fastmath=True)
def _chunk_sum(a, lo, hi):
    s = np.float32(0.0)
    for i in range(np.uint64(lo), np.uint64(hi)):
        s += a[i]
    return s


@njit(parallel=True, fastmath=True)
def _read_sum(a, nt):
    chunk = (a.shape[0] + nt - 1) // nt
    parts = np.zeros(nt * 16, np.float32)  # 64 B apart: no false sharing
    for t in prange(nt):
        parts[t * 16] = _chunk_sum(a, t * chunk, min(a.shape[0], (t + 1) * chunk))
    return parts.sum()


def read_bw(nbytes: int, threads: int, target: float = 0.03, rounds: int = 7) -> float:
    a = np.ones(max(16, int(nbytes // 4)), np.float32)
    f = lambda: _read_sum(a, threads)  # noqa: E731
    n = calibrate(f, target)
    # the fastest round: on a shared machine other processes only ever slow a round down, and
    # an inflated limit would flatter every kernel's share of it
    return a.nbytes / float(np.min([per_call(f, n, warm=1) for _ in range(rounds)]))


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


def measure(working_sets, threads: int, quick: bool = False) -> dict:
    """Read bandwidth at every working-set size and the sgemm peak (GFLOP/s)."""
    sizes = sorted({int(x) for x in working_sets} | {256_000, 1_000_000, 4_000_000, 16_000_000, 64_000_000})
    bw = {}
    for nb in sizes:
        bw[str(nb)] = read_bw(nb, threads, target=0.01 if quick else 0.03) / 1e9
    peak = sgemm_peak((1024,) if quick else (1024, 2048))
    return {"read_bw_GBps": bw, "sgemm_GFLOPs": peak, "sgemm_peak_GFLOPs": max(peak.values()), "threads": threads}


def bw_at(roof: dict, nbytes: float) -> float:
    """Streaming read bandwidth (B/s) at a working-set size, log-interpolated."""
    pts = sorted((int(k), v * 1e9) for k, v in roof["read_bw_GBps"].items())
    return float(np.interp(np.log(max(nbytes, 1)), np.log([p[0] for p in pts]), [p[1] for p in pts]))


def struct_bytes(M: int, K: int, block: int, nnzb: int) -> int:
    """Weight bytes: dense fp32 (block 0), CSR (block 1: value + index), or BSR with int32 indices."""
    if block == 0:
        return 4 * M * K
    if block == 1:
        return 8 * nnzb + 4 * (M + 1)
    return 4 * nnzb * block * block + 4 * nnzb + 4 * (M // block + 1)


def ideal_s(roof: dict, M: int, K: int, B: int, block: int, nnzb: int) -> float:
    S = struct_bytes(M, K, block, nnzb)
    nnz = M * K if block == 0 else nnzb * max(block, 1) ** 2
    return max((S + 4 * (K * B + M * B)) / bw_at(roof, S), 2.0 * nnz * B / (roof["sgemm_peak_GFLOPs"] * 1e9))


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
