"""``bsrnn bench inference``: whole recurrent layers, sparse runtime vs PyTorch (docs/method.md §15, §18).

The paper's two layers: a GRU of 2560 units at 95 % sparsity and an RNN of 1760 units at 90 %,
4×4 blocks, batch 1, 100 time steps — ``SparseRecurrent`` against ``torch.nn.GRU``/``nn.RNN``
holding the same (dense-with-zeros) weights. Rounds interleave the two; the speed-up is the
median of per-round ratios; outputs are compared so a fast wrong answer cannot be reported.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import write_json
from ..inference.rnn import SparseRecurrent
from . import roofline as rf
from .kernels import write_csv

LAYERS = [("GRU", 2560, 0.95), ("RNN", 1760, 0.90)]


def block_pruned(module: nn.Module, block: int, sparsity: float, gen: torch.Generator) -> nn.Module:
    """Zero whole blocks of every weight matrix at random (gate by gate, as BP would)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("weight"):
                r, c = p.shape
                keep = torch.rand(r // block, c // block, generator=gen) >= sparsity
                p.mul_(keep.repeat_interleave(block, 0).repeat_interleave(block, 1))
    return module


def run_layer(kind, hidden, sparsity, block, batch, steps, rounds, log, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dense = nn.GRU(hidden, hidden) if kind == "GRU" else nn.RNN(hidden, hidden, nonlinearity="relu")
    block_pruned(dense.eval(), block, sparsity, gen)
    sparse = SparseRecurrent.from_module(dense, (block, block))
    x = torch.randn(steps, batch, hidden, generator=gen)
    with torch.no_grad():
        err = float((dense(x)[0] - sparse(x)[0]).abs().max())
    fns = {"torch": lambda: dense(x), "sparse": lambda: sparse(x)}
    T = {k: [] for k in fns}
    loadavg, foreign, mon = [], [], rf.Foreign()
    with torch.no_grad():
        for f in fns.values():
            f()
        for _ in range(rounds):
            mon.start()
            for k, f in fns.items():
                T[k].append(rf.per_call(f, 1, warm=0))
                time.sleep(0.02)
            foreign.append(mon.stop())
            loadavg.append(os.getloadavg()[0])
    t_d, t_s = np.array(T["torch"]), np.array(T["sparse"])
    density = float(np.mean([m.density for d in sparse.weights[0] for m in (d["w_ih"], d["w_hh"])]))
    rows = []
    for k, t in (("torch", t_d), ("sparse", t_s)):
        rows.append({"layer": kind, "hidden": hidden, "sparsity": sparsity, "density": density, "block": block,
                     "batch": batch, "steps": steps, "runtime": k, "dtype": "float32",
                     "median_ms": float(np.median(t)) * 1e3, "min_ms": float(t.min()) * 1e3,
                     "iqr_ms": float(np.subtract(*np.percentile(t, [75, 25]))) * 1e3, "rounds": len(t),
                     "speedup_vs_torch": float(np.median(t_d / t)), "max_abs_diff": err,
                     "loadavg": float(np.median(loadavg)), "foreign_load_cores": float(np.median(foreign))})
    log(f"{kind} {hidden} at {sparsity:.0%}, {block}×{block}, B={batch}, T={steps}: torch {rows[0]['median_ms']:.1f} ms, "
        f"sparse {rows[1]['median_ms']:.2f} ms, x{rows[1]['speedup_vs_torch']:.1f} (max |diff| {err:.1e}, loadavg "
        f"{rows[1]['loadavg']:.2f})")
    return rows


def run(out_dir="benchmarks/inference", quick=False, threads=None, rounds=9, steps=100, block=4, batches=(1,), log=print):
    threads = threads or len(os.sched_getaffinity(0))
    rf.set_threads(threads)
    info = rf.machine_info(threads)
    info["loadavg_start"] = os.getloadavg()
    rows = []
    for kind, hidden, s in LAYERS:
        for B in batches:
            rows += run_layer(kind, hidden, s, block, B, 20 if quick else steps, 3 if quick else rounds, log)
    for r in rows:
        r.update({k: info[k] for k in ("torch", "numpy", "numba", "cpu")}, threads=threads)
    info["loadavg_end"] = os.getloadavg()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "inference_quick" if quick else "inference"
    res = {"command": "bsrnn bench inference" + (" --quick" if quick else ""), "info": info, "rows": rows}
    write_json(res, out / f"{stem}.json", indent=1)
    write_csv(rows, out / f"{stem}.csv")
    return out / f"{stem}.json"


def plot(json_path, out_dir=None) -> list[Path]:
    """Time per sequence, torch vs sparse runtime, one bar pair per layer (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(Path(json_path).read_text())
    cases = sorted({(r["layer"], r["hidden"], r["sparsity"], r["batch"]) for r in res["rows"]})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, c in enumerate(cases):
        rows = {r["runtime"]: r for r in res["rows"] if (r["layer"], r["hidden"], r["sparsity"], r["batch"]) == c}
        for j, (k, col) in enumerate((("torch", "tab:gray"), ("sparse", "tab:blue"))):
            ax.bar(i + 0.38 * j, rows[k]["median_ms"], 0.36, yerr=rows[k]["iqr_ms"] / 2, color=col, label=k if i == 0 else None)
        ax.text(i + 0.38, rows["sparse"]["median_ms"], f"×{rows['sparse']['speedup_vs_torch']:.1f}", ha="center", va="bottom")
    ax.set_xticks([i + 0.19 for i in range(len(cases))],
                  [f"{l} {h}\n{s:.0%}, B={b}" for l, h, s, b in cases])
    ax.set(yscale="log", ylabel=f"ms per {res['rows'][0]['steps']}-step sequence")
    ax.legend()
    fig.text(0.01, 0.01, f"{res['info']['cpu']}, {res['info']['threads']} threads, loadavg "
             f"{np.median([r['loadavg'] for r in res['rows']]):.2f}; {res['command']}", fontsize=6)
    fig.tight_layout()
    p = Path(out_dir or Path(json_path).parent) / f"{Path(json_path).stem}.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return [p]
