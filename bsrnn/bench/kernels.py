"""``bsrnn bench kernels``: the paper's speed-up figures 5–6 (docs/method.md §18) on this CPU.

Y = W·X for 1760×1760 at 90 % and 7680×2560 at 95 % sparsity, batch 1…64, CSR and 4…32 blocks:
our ``cpu`` kernel in fp32, bf16 and int8 block values, the reference numba kernel of
docs/kernels.md §5 (its best batch tile chosen by pre-timing), the peers as kernels of their own
names (MKL inspector-executor BSR/CSR when libmkl_rt is found, torch BSR/CSR, scipy BSR/CSR) and
the dense calls (torch mm / linear, numpy, torch bf16 on AMX) — each row's share of the roofline
(docs/kernels.md §9) from limits measured in the same run, with the bound that applies. Timing follows docs/kernels.md
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
PAUSE = {"torch": 0.02, "mkl": 0.02, "numpy": 0.15}  # spinning pools go idle before another library runs


def random_bsr(M: int, K: int, b: int, sparsity: float, rng) -> BsrMatrix:
    """Exactly round((1-s)·#blocks) blocks placed uniformly at random, values N(0, 0.05²)."""
    nbr, nbc = M // b, K // b
    flat = np.sort(rng.choice(nbr * nbc, size=int(round(nbr * nbc * (1 - sparsity))), replace=False))
    indptr = np.zeros(nbr + 1, np.int32)
    np.cumsum(np.bincount(flat // nbc, minlength=nbr), out=indptr[1:])
    vals = rng.standard_normal((len(flat), b, b), dtype=np.float32) * np.float32(0.05)
    return BsrMatrix((M, K), (b, b), indptr, (flat % nbc).astype(np.int32), vals, name=f"W{M}x{K}_b{b}")


PEER_SPARSE = ("torch", "mkl", "scipy")  # the sparse peers, as registered kernels "<bsr|csr>_<lib>"
DENSE = ("dense_torch_mm", "dense_torch_linear", "dense_numpy", "dense_torch_bf16")
LOW = ("bf16", "int8")  # the cpu kernel's low-precision rows
OURS = ("cpu", "numba_ref")


def _methods(mats, Wd, X, B, log=print):
    """(kernel, block, dtype) -> (library, callable), every method checked against the float64
    product of the matrix it multiplies (the quantised one for bf16/int8 rows)."""
    from ..inference.export import quantize

    xt, Wt = torch.from_numpy(X), torch.from_numpy(Wd)
    xT = torch.from_numpy(np.ascontiguousarray(X.T))
    meths = {("dense_torch_mm", 0, "float32"): ("torch", lambda: torch.mm(Wt, xt)),
             ("dense_torch_linear", 0, "float32"): ("torch", lambda: torch.nn.functional.linear(xT, Wt))}
    Wb = Wt.to(torch.bfloat16)
    meths[("dense_torch_bf16", 0, "bf16")] = ("torch", lambda: torch.mm(Wb, xt.to(torch.bfloat16)).float())

    import scipy.sparse as sp

    X64, refs = X.astype(np.float64), {}

    def check(name, f, mat, tol):
        if id(mat) not in refs:  # scipy in float64: no dense copy of a 7680×2560 matrix per method
            m, k = mat.matrix_shape
            refs[id(mat)] = sp.bsr_matrix((mat.values_fp32().astype(np.float64), mat.indices, mat.indptr),
                                          shape=(m, k)) @ X64
        ref = refs[id(mat)]
        err = float(np.abs(np.asarray(f(), np.float64) - ref).max()) / (float(np.abs(ref).max()) + 1e-12)
        if err > tol:
            raise RuntimeError(f"{name} at B={B}: relative error {err:.2e} against the float64 product")

    for b, mat in mats.items():
        for lib in PEER_SPARSE:
            name = f"{'csr' if b == 1 else 'bsr'}_{lib}"
            k = KERNELS[name]
            why = k.unsupported(mat) if k.available() else f"{name}: not available here"
            if why:
                if B == BATCHES_SEEN.setdefault((name, b), B):
                    log(f"   skipping {name} for {b}×{b} blocks: {why}")
                continue
            st = k.prepare(mat)
            f = (lambda k=k, st=st: k._run(st, X, None))
            check(name, f, mat, 1e-4)
            meths[(name, b, "float32")] = (lib, f)
    for b, mat in mats.items():
        best = None
        for bb in sorted({min(B, 8), min(B, 16)}):  # pre-timing picks the tile (docs/kernels.md §5)
            k = Numba(bb, name=f"numba_bb{bb}")
            y = np.empty((mat.matrix_shape[0], B), np.float32)
            f = (lambda k=k, y=y, mat=mat: k(mat, X, y))
            f()
            t = float(np.median([rf.per_call(f, rf.calibrate(f, 1e-3), 1) for _ in range(3)]))
            best = min(best or (t, f), (t, f), key=lambda p: p[0])
        check("numba_ref", best[1], mat, 1e-4)
        meths[("numba_ref", b, "float32")] = ("numba", best[1])
        cpu = KERNELS["cpu"]
        for dt in ("float32",) + LOW:
            q = mat if dt == "float32" else QUANT.setdefault((id(mat), dt), quantize(mat, dt))
            y = np.empty((mat.matrix_shape[0], B), np.float32)
            f = (lambda q=q, y=y: cpu(q, X, y))
            check(f"cpu ({dt})", f, q, 1e-4)
            meths[("cpu", b, dt)] = ("numba", f)
    meths[("dense_numpy", 0, "float32")] = ("numpy", lambda: Wd @ X)
    return meths


BATCHES_SEEN: dict = {}  # (peer, block) -> first batch: a skipped peer is said once per shape
QUANT: dict = {}  # quantised matrices, made once per matrix


def run_cell(M, K, s, B, mats, Wd, rounds, target, rng, log):
    X = rng.standard_normal((K, B), dtype=np.float32)
    meths = _methods(mats, Wd, X, B, log)
    ncall, prev = {}, None
    for key, (lib, f) in meths.items():
        time.sleep(PAUSE.get(prev, 0) if lib != prev else 0)
        ncall[key], prev = rf.calibrate(f, target), lib
    T = {n: [] for n in meths}
    foreign, loadavg, mon = [], [], rf.Foreign()
    for _ in range(rounds):
        mon.start()
        prev = None
        for key, (lib, f) in meths.items():
            if lib != prev:
                time.sleep(PAUSE.get(prev, 0.0))
            T[key].append(rf.per_call(f, ncall[key], warm=2))
            prev = lib
        time.sleep(PAUSE["numpy"])
        foreign.append(mon.stop())
        loadavg.append(os.getloadavg()[0])
    T = {n: np.array(v) for n, v in T.items()}
    dense_keys = [k for k in T if k[1] == 0]
    best_dense = np.minimum.reduce([T[k] for k in dense_keys])
    best_dense32 = np.minimum.reduce([T[k] for k in dense_keys if k[2] == "float32"])
    log(f"{M}x{K} B={B}: best dense {np.median(best_dense) * 1e6:.0f} us, foreign load {np.median(foreign):.2f} cores, "
        f"loadavg {np.median(loadavg):.2f}")
    rows = []
    for key in meths:
        name, b, dt = key
        t = T[key]
        ref = T.get(("numba_ref", b, "float32"))
        peers = [k for k in T if k[0] not in OURS and k[1] in (0, b)]  # dense calls and sparse peers of this matrix
        best_peer = np.minimum.reduce([T[k] for k in peers])
        who = min(peers, key=lambda k: float(np.median(T[k])))
        rows.append({"kernel": name, "M": M, "K": K, "block": b, "sparsity": 0.0 if b == 0 else s,
                     "nnzb": mats[b].nnzb if b else M * K, "batch": B, "dtype": dt,
                     "median_us": float(np.median(t)) * 1e6, "min_us": float(t.min()) * 1e6,
                     "iqr_us": float(np.subtract(*np.percentile(t, [75, 25]))) * 1e6, "rounds": len(t),
                     "speedup_vs_best_dense": float(np.median(best_dense / t)),
                     "speedup_vs_best_dense_fp32": float(np.median(best_dense32 / t)),
                     "speedup_vs_best_peer": float(np.median(best_peer / t)),
                     "best_peer": f"{who[0]} ({who[2]})",
                     "speedup_vs_numba_ref": float(np.median(ref / t)) if ref is not None else None,
                     "foreign_load_cores": float(np.median(foreign)), "loadavg": float(np.median(loadavg))})
        r = rows[-1]
        log(f"   {name:>18s} b={b:<2d} {dt:>7s} {r['median_us']:9.1f} us  x{r['speedup_vs_best_dense']:6.2f} vs best dense"
            f"  x{r['speedup_vs_best_peer']:5.2f} vs best peer")
    return rows


def run(out_dir="benchmarks/kernels", quick=False, threads=None, rounds=11, target=3e-3, seed=1234, log=print):
    t_start = time.time()
    threads = threads or len(os.sched_getaffinity(0))
    rf.set_threads(threads)
    shapes, batches, blocks = (SHAPES[:1], [1, 16], [1, 4, 16]) if quick else (SHAPES, BATCHES, BLOCKS)
    rounds = 5 if quick else rounds
    rng = np.random.default_rng(seed)
    info = rf.machine_info(threads)
    info["loadavg_start"] = os.getloadavg()
    from ..inference.kernels import mkl

    info["mkl_rt"] = getattr(mkl.library(), "_name", None)  # None: the MKL peers are skipped
    if info["mkl_rt"] is None:
        log("MKL peers skipped: libmkl_rt not found (pip install mkl, or set BSRNN_MKL_RT)")
    roof = rf.measure(threads, quick, dram=not quick)
    log(f"roofline ({roof['probe']} probe, {threads} threads): peaks "
        + ", ".join(f"{k} {v:.0f}" for k, v in roof["peak_nt_GFLOPs"].items()) + " GFLOP/s; read BW "
        + ", ".join(f"{k} {v:.0f}" for k, v in roof["level_bw_GBps"].items()) + " GB/s")
    rows = []
    BATCHES_SEEN.clear()
    QUANT.clear()
    for M, K, s in shapes:
        mats = {b: random_bsr(M, K, b, s, rng) for b in blocks}
        Wd = rng.standard_normal((M, K), dtype=np.float32) * np.float32(0.05)
        for B in batches:
            rows += run_cell(M, K, s, B, mats, Wd, rounds, target, rng, log)
        BATCHES_SEEN.clear()
        QUANT.clear()
    for r in rows:  # the roofline columns (docs/kernels.md §9), from this run's limits
        bd = rf.bound(roof, r["M"], r["K"], r["batch"], r["block"], r["nnzb"], r["dtype"])
        r.update(bd)
        r["attained"] = r["ideal_us"] / r["median_us"]
        r["vs_dense_roofline"] = rf.ideal_s(roof, r["M"], r["K"], r["batch"], 0, 0) * 1e6 / r["median_us"]
        r.update({k: info[k] for k in ("torch", "numpy", "numba", "cpu")}, threads=threads)
    info["loadavg_end"] = os.getloadavg()
    info["duration_s"] = time.time() - t_start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": "bsrnn bench kernels" + (" --quick" if quick else ""), "info": info, "roofline": roof, "rows": rows}
    stem = "kernels_quick" if quick else "kernels"
    write_json(res, out / f"{stem}.json", indent=1)
    write_csv(rows, out / f"{stem}.csv")
    with open_atomic(out / f"SUMMARY{'_quick' if quick else ''}.md", "w") as f:
        f.write(summary_markdown(out / f"{stem}.json") + "\n")
    return out / f"{stem}.json"


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open_atomic(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def _label(b: int) -> str:
    return "CSR" if b == 1 else f"{b}×{b}"


def plot(json_path, out_dir=None) -> list[Path]:
    """Speed-up over the best dense call vs batch (figures 5–6) for our kernel in each precision and
    for the best sparse peer per block, and our kernel's share of the roofline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(Path(json_path).read_text())
    out_dir, paths = Path(out_dir or Path(json_path).parent), []
    for M, K in sorted({(r["M"], r["K"]) for r in res["rows"]}):
        rows = [r for r in res["rows"] if (r["M"], r["K"]) == (M, K)]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        blocks = sorted({r["block"] for r in rows if r["block"]})
        for i, b in enumerate(blocks):
            color = f"C{i}"
            for dt, style in (("float32", "-o"), ("bf16", "-.^"), ("int8", "--v")):
                pts = sorted((r["batch"], r) for r in rows if r["block"] == b and r["kernel"] == "cpu"
                             and r.get("dtype", "float32") == dt)
                if not pts:
                    continue
                lab = f"cpu {_label(b)}" + ("" if dt == "float32" else f" {dt}")
                axes[0].plot([p[0] for p in pts], [p[1]["speedup_vs_best_dense"] for p in pts], style, color=color,
                             label=lab, ms=3)
                axes[1].plot([p[0] for p in pts], [100 * p[1]["attained"] for p in pts], style, color=color,
                             label=lab, ms=3)
            peers = {}
            for r in rows:
                if r["block"] == b and r["kernel"] not in OURS:
                    if r["batch"] not in peers or r["median_us"] < peers[r["batch"]]["median_us"]:
                        peers[r["batch"]] = r
            if peers:
                bd = {B: min(r["median_us"] / r["speedup_vs_best_dense"] for r in rows if r["batch"] == B) for B in peers}
                axes[0].plot(sorted(peers), [bd[B] / peers[B]["median_us"] for B in sorted(peers)], ":x", color=color,
                             label=f"best sparse peer {_label(b)}", ms=3)
        sp = max(r["sparsity"] for r in rows)
        axes[0].set(xscale="log", yscale="log", xlabel="batch", ylabel="speed-up over best dense call",
                    title=f"{M}×{K} at {sp:.0%} sparsity")
        top = max([110] + [100 * r["attained"] * 1.05 for r in rows if r["kernel"] == "cpu"])
        axes[1].set(xscale="log", xlabel="batch", ylabel="% of roofline", ylim=(0, top),
                    title="cpu kernel: share of the roofline (limits measured in the same run)")
        axes[1].axhline(70, color="grey", lw=0.8)
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=5, ncol=3)
        fig.text(0.01, 0.01, f"{res['info']['cpu']}, {res['info']['threads']} threads, loadavg "
                 f"{np.median([r['loadavg'] for r in rows]):.2f}; {res['command']}", fontsize=6)
        fig.tight_layout()
        p = out_dir / f"{Path(json_path).stem}_{M}x{K}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def summary_markdown(json_path) -> str:
    """Per-cell tables of a result file: every method's time, our kernel against the best peer and
    the best dense call, its share of the roofline and the bound that applies. Written beside the
    figures, so the README never drifts from the data."""
    res = json.loads(Path(json_path).read_text())
    rows, roof = res["rows"], res["roofline"]
    batches = sorted({r["batch"] for r in rows})
    load = [r["loadavg"] for r in rows]
    lines = [f"Result file `{Path(json_path).name}`: `{res['command']}`; {res['info']['cpu']}, "
             f"{res['info']['threads']} threads, load average {min(load):.2f}–{max(load):.2f} during the rows"
             + (f", {res['info']['duration_s'] / 60:.1f} min" if "duration_s" in res["info"] else "") + ".", ""]
    if "level_bw_GBps" in roof:
        lines += ["Limits measured in the same run (" + roof["probe"] + " probe): read bandwidth "
                  + ", ".join(f"{k} {v:.0f} GB/s" for k, v in roof["level_bw_GBps"].items())
                  + "; peaks " + ", ".join(f"{k} {v:.0f}" for k, v in roof["peak_nt_GFLOPs"].items())
                  + " GFLOP/s (int8: GOP/s); AMX " + ("allowed" if roof.get("amx_allowed") else "not available") + ".", ""]
    for M, K in sorted({(r["M"], r["K"]) for r in rows}):
        cell = {(r["kernel"], r["block"], r.get("dtype", "float32"), r["batch"]): r for r in rows if (r["M"], r["K"]) == (M, K)}
        sp = max(r["sparsity"] for r in cell.values())
        lines += [f"### {M}×{K} at {sp:.0%}", "", "Times in µs (median of rounds).", "",
                  "| method | " + " | ".join(f"B={b}" for b in batches) + " |", "|---|" + "---:|" * len(batches)]
        methods = list(dict.fromkeys((k, bl, dt) for (k, bl, dt, _) in cell))
        order = ("float32",) + LOW
        for k, bl, dt in sorted(methods, key=lambda m: (m[1], m[0] not in OURS, m[0], order.index(m[2]) if m[2] in order else 9)):
            vals = [cell.get((k, bl, dt, b)) for b in batches]
            lab = f"{k} {'dense' if bl == 0 else _label(bl)}" + ("" if dt == "float32" else f" {dt}")
            lines.append(f"| {lab} | " + " | ".join(f"{r['median_us']:.1f}" if r else "–" for r in vals) + " |")
        lines += ["", "Our `cpu` kernel: speed-up over the best peer of the same matrix (any sparse peer of "
                  "its block, any dense call), over the best dense call, and its share of the roofline "
                  "with the bound that applies (L1/L2/L3/DRAM bandwidth or compute).", "",
                  "| cpu | " + " | ".join(f"B={b}" for b in batches) + " |", "|---|" + "---:|" * len(batches)]
        for k, bl, dt in methods:
            if k != "cpu":
                continue
            vals = [cell.get((k, bl, dt, b)) for b in batches]
            lab = _label(bl) + ("" if dt == "float32" else f" {dt}")
            lines.append(f"| {lab} vs best peer | " + " | ".join(
                f"**{r['speedup_vs_best_peer']:.2f}** ({r['best_peer'].split(' ')[0]})" if r else "–" for r in vals) + " |")
            lines.append(f"| {lab} vs best dense | " + " | ".join(
                f"{r['speedup_vs_best_dense']:.1f}" if r else "–" for r in vals) + " |")
            lines.append(f"| {lab} roofline | " + " | ".join(
                f"{100 * r['attained']:.0f}% {r.get('bound', '').replace(' bandwidth', ' BW').split(' (')[0]}" if r else "–"
                for r in vals) + " |")
        lines.append("")
    return "\n".join(lines)
