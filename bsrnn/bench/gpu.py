"""``bsrnn bench gpu``: the CUDA path in one call, for a session that is lent a GPU (docs/kernels.md §11).

Checks, then times, on the paper's two shapes (1760×1760 at 90 %, 7680×2560 at 95 %), blocks
4…32 and CSR, batch 1…64: torch BSR × dense on CUDA (the ``bsr_cuda`` kernel: x and y stay on
the device), torch CSR on CUDA, the Triton block-sparse kernel torch ships
(``torch.sparse._triton_ops.bsr_dense_mm``) when Triton imports, and dense ``torch.mm`` on CUDA
in fp32 and bf16. Every sparse result is compared with scipy's float64 product on the host
before it is timed (relative error ≤ 1e-3: TF32 is switched off, so fp32 is fp32). Times are
CUDA-event medians of ``--rounds`` rounds of calls calibrated to ~2 ms. Writes ``gpu.json`` (and
``gpu_quick.json`` for ``--quick``: one shape, B ∈ {1, 16}, blocks {1, 16}) under ``--out``;
without CUDA it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

SHAPES = [(1760, 1760, 0.90), (7680, 2560, 0.95)]
BATCHES = [1, 2, 4, 8, 16, 32, 64]
BLOCKS = [1, 4, 8, 16, 32]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="benchmarks/kernels", help="directory for gpu.json (default benchmarks/kernels)")
    p.add_argument("--quick", action="store_true", help="one shape, B in {1, 16}, blocks {1, 16}")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (median over them)")


def _time_cuda(f, rounds: int) -> float:
    """Median seconds per call: calls per round calibrated to ~2 ms, CUDA events around each round."""
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    f()
    e.record()
    e.synchronize()
    n = int(min(2000, max(1, 2.0 / max(s.elapsed_time(e), 1e-3))))
    ts = []
    for _ in range(rounds):
        s.record()
        for _ in range(n):
            f()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / 1e3 / n)
    return float(np.median(ts))


def _methods(mat, Wd, B: int):
    """name -> (block, dtype, callable returning a CUDA tensor) for one matrix and batch width."""
    from ..inference.kernels import KERNELS

    dev = torch.device("cuda")
    m, k = mat.matrix_shape
    b = mat.block[0]
    out = {}
    if b > 1:
        k_cuda = KERNELS["bsr_cuda"]
        out["bsr_cuda"] = (b, "float32", lambda x: k_cuda(mat, x))
        w = k_cuda.prepare(mat)
        try:
            from torch.sparse._triton_ops import bsr_dense_mm  # needs Triton and a CUDA device

            import triton  # noqa: F401

            out["bsr_triton"] = (b, "float32", lambda x: bsr_dense_mm(w, x))
        except Exception:  # noqa: BLE001 - an optional peer: absent is fine
            pass
    else:
        csr = torch.from_numpy(Wd).to_sparse_csr().to(dev)
        out["csr_cuda"] = (1, "float32", lambda x: csr @ x)
    return out


def run(args) -> int:
    if not torch.cuda.is_available():
        print("bsrnn bench gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured")
        return 2
    import scipy.sparse as sp

    from ..atomic import write_json
    from .kernels import random_bsr

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    shapes, batches, blocks = (SHAPES[:1], [1, 16], [1, 16]) if args.quick else (SHAPES, BATCHES, BLOCKS)
    rng, dev, rows, t0 = np.random.default_rng(1234), torch.device("cuda"), [], time.time()
    for M, K, s in shapes:
        mats = {b: random_bsr(M, K, b, s, rng) for b in blocks}
        Wdense = torch.from_numpy(rng.standard_normal((M, K), dtype=np.float32) * np.float32(0.05)).to(dev)
        Wbf = Wdense.to(torch.bfloat16)
        for B in batches:
            X = rng.standard_normal((K, B), dtype=np.float32)
            xg = torch.from_numpy(X).to(dev)
            xb = xg.to(torch.bfloat16)
            cell = {("dense_torch_mm", 0, "float32"): lambda: Wdense @ xg,
                    ("dense_torch_bf16", 0, "bf16"): lambda: Wbf @ xb}
            for b, mat in mats.items():
                Wd = mat.to_dense().numpy()
                ref = sp.bsr_matrix((mat.values.astype(np.float64), mat.indices, mat.indptr), shape=(M, K)) @ X
                for name, (bb, dt, f) in _methods(mat, Wd, B).items():
                    try:
                        y = f(xg).float().cpu().numpy()
                    except Exception as e:  # noqa: BLE001 - Triton's kernel has limits of its own (block sizes)
                        if name != "bsr_triton":
                            raise
                        print(f"skipping bsr_triton for {b}x{b} blocks at B={B}: {type(e).__name__}: {e}"[:200])
                        continue
                    err = float(np.abs(y - ref).max() / (np.abs(ref).max() + 1e-12))
                    if err > 1e-3:
                        raise RuntimeError(f"{name} {M}x{K} block {b} B={B}: relative error {err:.1e} against scipy")
                    cell[(name, bb, dt)] = (lambda f=f: f(xg))
            T = {key: _time_cuda(f, args.rounds) for key, f in cell.items()}
            best_dense = min(v for (n, b, _), v in T.items() if b == 0)
            for (name, b, dt), t in T.items():
                rows.append({"kernel": name, "M": M, "K": K, "block": b, "sparsity": 0.0 if b == 0 else s,
                             "batch": B, "dtype": dt, "median_us": t * 1e6, "speedup_vs_best_dense": best_dense / t})
                print(f"{M}x{K} B={B:<3d} {name:>17s} b={b:<2d} {dt:>7s} {t * 1e6:9.1f} us  x{best_dense / t:6.2f} vs best dense")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("gpu_quick.json" if args.quick else "gpu.json")
    write_json({"command": "bsrnn bench gpu" + (" --quick" if args.quick else ""), "device": torch.cuda.get_device_name(),
                "torch": torch.__version__, "cuda": torch.version.cuda, "duration_s": time.time() - t0, "rows": rows},
               path, indent=1)
    print(f"results in {path}")
    return 0
