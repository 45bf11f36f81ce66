"""``bsrnn bench kernels``: the paper's speed-up figures 5–6 (docs/method.md §18) on this CPU.

Y = W·X for 1760×1760 at 90 % and 7680×2560 at 95 % sparsity, batch 1…64, CSR and 4…32 blocks:
our ``cpu`` kernel, the reference numba kernel of docs/kernels.md §5 (its best batch tile chosen by
pre-timing), torch CSR/BSR and the three dense calls — each cell's share of the
roofline (docs/kernels.md §9) from limits measured in the same run. Timing follows docs/kernels.md
§8: rounds interleave every method, ratios are taken within a round, medians over rounds; the
foreign CPU load and ``os.getloadavg()`` are recorded per round. Writes ``kernels.json``,
``kernels.csv`` and figures that ``plot`` draws from the JSON alone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import open_atomic, write_json

from ..inference.export import BsrMatrix
from ..inference.kernels import KERNELS
from ..inference.kernels.cpu import Numba
from . import roofline as rf

SHAPES = [(1760, 1760, 0.90), (7680, 2560, 0.95)]
BATCHES = [1, 2, 4, 8, 16, 32, 64]
BLOCKS = [1, 4, 8, 16, 32]
PAUSE = {"torch": 0.02, "numpy": 0.15}  # spinning pools go idle before another library runs


def random_bsr(M: int, K: int, b: int, sparsity: float, rng) -> BsrMatrix:
    """Exactly round((1-s)·#blocks) blocks placed uniformly at random, values N(0, 0.05²)."""
    nbr, nbc = M // b, K // b
    flat = np.sort(rng.choice(nbr * nbc, size=int(round(nbr * nbc * (1 - sparsity))), replace=False))
    indptr = np.zeros(nbr + 1, np.int32)
    np.cumsum(np.bincount(flat // nbc, minlength=nbr), out=indptr[1:])
    vals = rng.standard_normal((len(flat), b, b), dtype=np.float32) * np.float32(0.05)
    return BsrMatrix((M, K), (b, b), indptr, (flat % nbc).astype(np.int32), vals, name=f"W{M}x{K}_b{b}")


def _methods(mats, Wd, X, B):
    """name -> (library, block, callable), with every sparse method checked against dense."""
    xt, Wt = torch.from_numpy(X), torch.from_numpy(Wd)
    xT = torch.from_numpy(np.ascontiguousarray(X.T))
    meths = {"dense_torch_mm": ("torch", 0, lambda: torch.mm(Wt, xt)),
             "dense_torch_linear": ("torch", 0, lambda: torch.nn.functional.linear(xT, Wt))}
    for b, mat in mats.items():
        tk = KERNELS["csr_torch" if b == 1 else "bsr_torch"]
        if tk.unsupported(mat):  # torch's BSR (MKL) has no non-square blocks: no row for it there
            continue
        st = tk.prepare(mat)
        meths[f"{'csr' if b == 1 else f'bsr{b}'}_torch"] = ("torch", b, lambda tk=tk, st=st: tk._run(st, X, None))
    for b, mat in mats.items():
        ref = mat.to_dense().numpy() @ X
        scale = float(np.abs(ref).max()) + 1e-12
        best = None
        for bb in sorted({min(B, 8), min(B, 16)}):  # pre-timing picks the tile (docs/kernels.md §5)
            k = Numba(bb, name=f"numba_bb{bb}")
            y = np.empty((mat.matrix_shape[0], B), np.float32)
            f = (lambda k=k, y=y, mat=mat: k(mat, X, y))
            f()
            t = float(np.median([rf.per_call(f, rf.calibrate(f, 1e-3), 1) for _ in range(3)]))
            best = min(best or (t, f), (t, f), key=lambda p: p[0])
        cpu, y = KERNELS["cpu"], np.empty((mat.matrix_shape[0], B), np.float32)
        for name, f in ((f"numba_ref_b{b}", best[1]), (f"cpu_b{b}", lambda mat=mat, y=y: cpu(mat, X, y))):
            out = f()
            err = float(np.abs(np.asarray(out) - ref).max()) / scale
            if err > 1e-4:
                raise RuntimeError(f"{name} at B={B}: relative error {err:.2e} against the dense product")
            meths[name] = ("numba", b, f)
    meths["dense_numpy"] = ("numpy", 0, lambda: Wd @ X)
    return meths


def run_cell(M, K, s, B, mats, Wd, rounds, target, rng, log):
    X = rng.standard_normal((K, B), dtype=np.float32)
    meths = _methods(mats, Wd, X, B)
    ncall, prev = {}, None
    for name, (lib, _, f) in meths.items():
        time.sleep(PAUSE.get(prev, 0) if lib != prev else 0)
        ncall[name], prev = rf.calibrate(f, target), lib
    T = {n: [] for n in meths}
    foreign, loadavg, mon = [], [], rf.Foreign()
    for _ in range(rounds):
        mon.start()
        prev = None
        for name, (lib, _, f) in meths.items():
            if lib != prev:
                time.sleep(PAUSE.get(prev, 0.0))
            T[name].append(rf.per_call(f, ncall[name], warm=2))
            prev = lib
        time.sleep(PAUSE["numpy"])
        foreign.append(mon.stop())
        loadavg.append(os.getloadavg()[0])
    T = {n: np.array(v) for n, v in T.items()}
    best_dense = np.minimum.reduce([T["dense_torch_mm"], T["dense_torch_linear"], T["dense_numpy"]])
    log(f"{M}x{K} B={B}: best dense {np.median(best_dense) * 1e6:.0f} us, foreign load {np.median(foreign):.2f} cores, "
        f"loadavg {np.median(loadavg):.2f}")
    rows = []
    for name, (lib, b, _) in meths.items():
        t = T[name]
        ref = T.get(f"numba_ref_b{b}")
        rows.append({"kernel": name.rsplit("_b", 1)[0] if name.startswith(("cpu_b", "numba_ref_b")) else name,
                     "M": M, "K": K, "block": b, "sparsity": 0.0 if b == 0 else s,
                     "nnzb": mats[b].nnzb if b else M * K, "batch": B, "dtype": "float32",
                     "median_us": float(np.median(t)) * 1e6, "min_us": float(t.min()) * 1e6,
                     "iqr_us": float(np.subtract(*np.percentile(t, [75, 25]))) * 1e6, "rounds": len(t),
                     "speedup_vs_best_dense": float(np.median(best_dense / t)),
                     "speedup_vs_numba_ref": float(np.median(ref / t)) if ref is not None else None,
                     "foreign_load_cores": float(np.median(foreign)), "loadavg": float(np.median(loadavg))})
        log(f"   {rows[-1]['kernel']:>20s} b={b:<2d} {rows[-1]['median_us']:9.1f} us  x{rows[-1]['speedup_vs_best_dense']:6.2f} "
            f"vs best dense" + (f"  x{rows[-1]['speedup_vs_numba_ref']:5.2f} vs numba ref" if ref is not None else ""))
    return rows


def run(out_dir="benchmarks/kernels", quick=False, threads=None, rounds=11, target=3e-3, seed=1234, log=print):
    threads = threads or len(os.sched_getaffinity(0))
    rf.set_threads(threads)
    shapes, batches, blocks = (SHAPES[:1], [1, 16], [1, 4, 16]) if quick else (SHAPES, BATCHES, BLOCKS)
    rounds = 5 if quick else rounds
    rng = np.random.default_rng(seed)
    info = rf.machine_info(threads)
    info["loadavg_start"] = os.getloadavg()
    ws = [rf.struct_bytes(M, K, 0, 0) for M, K, _ in shapes]
    ws += [rf.struct_bytes(M, K, b, int(round((M // b) * (K // b) * (1 - s)))) for M, K, s in shapes for b in blocks]
    roof = rf.measure(ws, threads, quick)
    log(f"roofline: sgemm peak {roof['sgemm_peak_GFLOPs']:.0f} GFLOP/s; read BW "
        + ", ".join(f"{int(k) / 1e6:.2g} MB: {v:.0f} GB/s" for k, v in roof["read_bw_GBps"].items()))
    rows = []
    for M, K, s in shapes:
        mats = {b: random_bsr(M, K, b, s, rng) for b in blocks}
        Wd = rng.standard_normal((M, K), dtype=np.float32) * np.float32(0.05)
        for B in batches:
            rows += run_cell(M, K, s, B, mats, Wd, rounds, target, rng, log)
    for r in rows:  # the roofline columns (docs/kernels.md §9), from this run's limits
        r["ideal_us"] = rf.ideal_s(roof, r["M"], r["K"], r["batch"], r["block"], r["nnzb"]) * 1e6
        r["attained"] = r["ideal_us"] / r["median_us"]
        r["vs_dense_roofline"] = rf.ideal_s(roof, r["M"], r["K"], r["batch"], 0, 0) * 1e6 / r["median_us"]
        r.update({k: info[k] for k in ("torch", "numpy", "numba", "cpu")}, threads=threads)
    info["loadavg_end"] = os.getloadavg()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": "bsrnn bench kernels" + (" --quick" if quick else ""), "info": info, "roofline": roof, "rows": rows}
    stem = "kernels_quick" if quick else "kernels"
    write_json(res, out / f"{stem}.json", indent=1)
    write_csv(rows, out / f"{stem}.csv")
    return out / f"{stem}.json"


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open_atomic(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def plot(json_path, out_dir=None) -> list[Path]:
    """Speed-up over the best dense call vs batch (figures 5–6) and attained roofline share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(Path(json_path).read_text())
    out_dir, paths = Path(out_dir or Path(json_path).parent), []
    for M, K in sorted({(r["M"], r["K"]) for r in res["rows"]}):
        rows = [r for r in res["rows"] if (r["M"], r["K"]) == (M, K)]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for kernel, style in (("cpu", "-o"), ("numba_ref", ":x"), ("bsr", "--s"), ("csr_torch", "--s")):
            for b in sorted({r["block"] for r in rows if r["block"]}):
                pts = sorted((r["batch"], r) for r in rows if r["block"] == b and r["kernel"].startswith(kernel))
                if not pts:
                    continue
                lab = f"{'torch' if kernel in ('bsr', 'csr_torch') else kernel} {'CSR' if b == 1 else f'{b}×{b}'}"
                axes[0].plot([p[0] for p in pts], [p[1]["speedup_vs_best_dense"] for p in pts], style, label=lab)
                if kernel in ("cpu", "numba_ref"):
                    axes[1].plot([p[0] for p in pts], [100 * p[1]["attained"] for p in pts], style, label=lab)
        sp = rows[-1]["sparsity"] or max(r["sparsity"] for r in rows)
        axes[0].set(xscale="log", yscale="log", xlabel="batch", ylabel="speed-up over best dense call",
                    title=f"{M}×{K} at {sp:.0%} sparsity")
        top = max([110] + [100 * r["attained"] * 1.05 for r in rows if r["kernel"] in ("cpu", "numba_ref")])
        axes[1].set(xscale="log", xlabel="batch", ylabel="% of roofline", ylim=(0, top),
                    title="share of the roofline (limits measured in the same run)")
        axes[1].axhline(70, color="grey", lw=0.8)
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=6, ncol=2)
        fig.text(0.01, 0.01, f"{res['info']['cpu']}, {res['info']['threads']} threads, loadavg "
                 f"{np.median([r['loadavg'] for r in rows]):.2f}; {res['command']}", fontsize=6)
        fig.tight_layout()
        p = out_dir / f"{Path(json_path).stem}_{M}x{K}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def summary_markdown(json_path) -> str:
    """Per-cell tables of a result file: our kernel against the reference numba kernel, the best
    dense call and the roofline. Written beside the figures, so the README never drifts from data."""
    res = json.loads(Path(json_path).read_text())
    rows = res["rows"]
    batches = sorted({r["batch"] for r in rows})
    load = [r["loadavg"] for r in rows]
    lines = [f"Result file `{Path(json_path).name}`: `{res['command']}`; {res['info']['cpu']}, "
             f"{res['info']['threads']} threads, load average {min(load):.2f}–{max(load):.2f} during the rows; "
             f"sgemm peak {res['roofline']['sgemm_peak_GFLOPs']:.0f} GFLOP/s measured in the same run.", ""]
    for M, K in sorted({(r["M"], r["K"]) for r in rows}):
        cell = {(r["kernel"], r["block"], r["batch"]): r for r in rows if (r["M"], r["K"]) == (M, K)}
        sp = max(r["sparsity"] for r in cell.values())
        lines += [f"### {M}×{K} at {sp:.0%}", "", "| | " + " | ".join(f"B={b}" for b in batches) + " |",
                  "|---|" + "---:|" * len(batches)]
        best = [min(r["median_us"] for (k, bl, bb), r in cell.items() if bl == 0 and bb == b) for b in batches]
        lines.append("| best dense µs | " + " | ".join(f"{v:.1f}" for v in best) + " |")
        for b in sorted({bl for (_, bl, _) in cell if bl}):
            name = "CSR" if b == 1 else f"{b}×{b}"
            ours = [cell.get(("cpu", b, bb)) for bb in batches]
            if not all(ours):
                continue
            lines.append(f"| {name} cpu µs | " + " | ".join(f"{r['median_us']:.1f}" for r in ours) + " |")
            if all(r["speedup_vs_numba_ref"] for r in ours):
                lines.append(f"| {name} cpu / numba ref | " + " | ".join(f"**{r['speedup_vs_numba_ref']:.2f}**" for r in ours) + " |")
            lines.append(f"| {name} cpu vs best dense | " + " | ".join(f"{r['speedup_vs_best_dense']:.1f}" for r in ours) + " |")
            lines.append(f"| {name} attained | " + " | ".join(f"{100 * r['attained']:.0f}%" for r in ours) + " |")
        lines.append("")
    return "\n".join(lines)
