"""REPORT.md for ``bsrnn reproduce``: the paper's tables beside ours, a verdict per claim, figures.

Reads only the runs' files (``report.json``, and the sparsity history in ``last.pt``), so the
report can be rewritten at any time (``--report-only``). Each run's evidence is also copied to
``<out>/runs/<run>.json`` (its report and sparsity history), which is committed: the report can
be rewritten from those alone on a machine that never had the run directories. Relative Perf is
``(CER_dense − CER) / CER_dense`` against the dense model of the same family and width W, as in
docs/method.md §17; # Params counts nonzero parameters; Sparsity is against the whole dense model.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from ..atomic import write_text
from ..sparsity import LayerSparsity
from ..train.checkpoint import load_checkpoint
from .grid import Run, Scale, tables
from .recipe import made_by

SPLIT = "test"  # held-out prompts: the stand-in for the paper's test set
BLANK_CER = 90.0  # at or above this CER a CTC model has not left the all-blank phase: it did not learn

# The paper's rows (docs/method.md §17), as (label, algorithm or block, params M, sparsity %, CER).
PAPER = {
    "table1": [("RNN Dense 1760", "N/A", 67, 0.0, 15.36), ("RNN Dense 704", "N/A", 11.6, 0.0, 18.95),
               ("RNN Sparse 1760", "BP", 7.3, 89.2, 17.93), ("RNN Sparse 2560", "GLP", 12.9, 90.8, 15.89),
               ("RNN Sparse 3072", "BP", 25.8, 87.3, 15.66), ("GRU Dense 2560", "N/A", 115, 0.0, 15.42),
               ("GRU Dense 704", "N/A", 11.0, 0.0, 21.26), ("GRU Sparse 2560", "GLP", 10.8, 90.6, 16.78),
               ("GRU Sparse 3584", "BP", 25.6, 88.4, 16.23)],
    "table2": [("RNN Sparse 1760", "GL", 10.9, 83.3, 30.14), ("RNN Sparse 1760", "GLP", 6.2, 90.8, 19.24),
               ("RNN Sparse 2560", "GL", 24.4, 82.8, 27.40), ("RNN Sparse 2560", "GLP", 12.9, 90.8, 15.89)],
    "table3": [("RNN Sparse", "1×1", 7.3, 89.2, 17.32), ("RNN Sparse", "4×4", 7.3, 89.2, 17.93),
               ("RNN Sparse", "12×2", 10.8, 84.1, 16.96), ("RNN Sparse", "8×8", 10.7, 84.1, 17.66),
               ("RNN Sparse", "16×16", 11.1, 83.6, 17.10), ("RNN Sparse", "32×32", 14.1, 79.1, 16.67),
               ("GRU Sparse", "1×1", 13.1, 88.7, 16.55), ("GRU Sparse", "4×4", 16.2, 86.0, 16.97),
               ("GRU Sparse", "16×16", 20.8, 81.9, 16.84)],
}
TITLES = {"table1": "Table 1 — block sparsity (4×4)", "table2": "Table 2 — group lasso vs GLP (4×4)",
          "table3": "Table 3 — block size (BP, the paper's heuristic schedule)",
          "reductions": "Beyond the paper — block scores (BP 4×4, target 90 %)",
          "sweep": "Accuracy vs sparsity (BP 4×4, target mode)"}


def load_run(runs: Path, scale: Scale, run: Run, saved: Path | None = None) -> dict | None:
    """A finished run's report with its sparsity history and recipe (the grid overrides): from its
    run directory, else from the copy ``saved/<run>.json`` an earlier report kept. None when
    neither exists or when what exists was made by another recipe (a stale run)."""
    path = runs / scale.name / run.name / "report.json"
    copy = saved / f"{run.name}.json" if saved is not None else None
    want = run.overrides(scale)
    if path.is_file():
        if not made_by(path.parent, want):
            return None
        rep = json.loads(path.read_text())
        last = path.parent / "last.pt"
        if last.is_file():
            rep["layer_history"] = load_checkpoint(last)["sparsity"].get("layer_history", {})
        elif copy is not None and copy.is_file():  # keep the history an earlier report saved
            rep["layer_history"] = json.loads(copy.read_text()).get("layer_history", {})
        rep["overrides"] = want
    elif copy is not None and copy.is_file():
        rep = json.loads(copy.read_text())
        if rep.get("overrides") != want:
            return None
    else:
        return None
    rep.setdefault("layer_history", {})
    rep["cer"] = rep["splits"][SPLIT]["cer"]
    return rep


def _dense_cer(results: dict, run: Run, scale: Scale) -> float | None:
    base = results.get(Run(run.family, scale.widths[run.family][0]).name)
    return base["cer"] if base else None


def table_md(key: str, rows: list[tuple[str, Run]], results: dict, scale: Scale) -> str:
    second = "Block Size" if key == "table3" else ("Score" if key == "reductions" else "Algorithm")
    lines = [f"| Model | {second} | # Params (millions) | Sparsity | CER | Relative Perf |", "|---|---|---|---|---|---|"]
    for label, run in rows:
        r = results.get(run.name)
        col = (f"{run.block[0]}×{run.block[1]}" if key == "table3" else run.how if key == "reductions"
               else "N/A" if run.method == "none" else run.method.upper())
        if r is None:
            lines.append(f"| {label} | {col} | — | — | (not run) | — |")
            continue
        dense = _dense_cer(results, run, scale)
        rel = f"{100 * (dense - r['cer']) / dense:.1f}%" if dense else "—"
        flag = " (did not learn)" if r["cer"] >= BLANK_CER else ""
        lines.append(f"| {label} | {col} | {r['nonzero_params'] / 1e6:.3f} | {100 * r['sparsity']:.1f}% | "
                     f"{r['cer']:.2f}{flag} | {rel} |")
    return "\n".join(lines)


def paper_md(key: str) -> str:
    lines = ["| Model | | # Params (M) | Sparsity | CER |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {p} | {s}% | {c} |" for a, b, p, s, c in PAPER[key]]
    return "\n".join(lines)


def _verdict(held: list[bool]) -> str:
    if not held:
        return "unclear (runs missing)"
    return "holds" if all(held) else "does not hold" if not any(held) else "partly holds"


def claims(t: dict, results: dict, scale: Scale) -> list[str]:
    """One line per claim of the issue: holds / does not hold / unclear, with the evidence."""
    get = lambda run: results.get(run.name)  # noqa: E731
    out = []
    # (1) BP at 80–90 % costs a modest CER loss against the dense model of the same width.
    pairs = [(get(Run(f, scale.widths[f][0])), get(Run(f, scale.widths[f][0], "bp"))) for f in ("rnn", "gru")]
    ev = [f"{b['spec']['rnn_type'].upper()}: dense {d['cer']:.1f} → BP {b['cer']:.1f} at {100 * b['sparsity']:.0f}% "
          f"({100 * (d['cer'] - b['cer']) / d['cer']:+.0f}%)" for d, b in pairs if d and b]
    rel = [(d["cer"] - b["cer"]) / d["cer"] for d, b in pairs if d and b]
    verdict = "unclear (runs missing)" if not rel else "holds" if all(r > -0.25 for r in rel) else \
        "does not hold" if all(r < -0.40 for r in rel) else "partly holds"
    out.append(f"1. **BP at 80–90 % costs a modest loss (paper: −16.7 % RNN, −8.8 % GRU)** — {verdict}: {'; '.join(ev)}.")
    # (2) A wider sparse model with no more parameters than the small dense one beats it.
    ev, wins = [], []
    for f in ("rnn", "gru"):
        w, wide = scale.widths[f]
        small = [r for label, r in t["table1"] if r.family == f and r.method == "none" and r.width != w]
        sd = get(small[0]) if small else None
        for m in ("bp", "glp"):
            sp = get(Run(f, wide, m))
            if sd and sp:
                wins.append(sp["cer"] < sd["cer"] and sp["nonzero_params"] <= 1.15 * sd["nonzero_params"])
                ev.append(f"{f.upper()} {m.upper()} {wide}: {sp['cer']:.1f} with {sp['nonzero_params'] / 1e3:.0f}k "
                          f"vs dense {small[0].width}: {sd['cer']:.1f} with {sd['nonzero_params'] / 1e3:.0f}k"
                          + (" (the small dense model never left the all-blank phase: weak evidence)"
                             if sd["cer"] >= BLANK_CER else ""))
    verdict = _verdict(wins)
    out.append(f"2. **A wider sparse model beats the small dense model of equal size** — {verdict}: {'; '.join(ev)}.")
    # (3) GLP beats GL at similar sparsity.
    ev, wins = [], []
    for width in scale.widths["rnn"]:
        gl, glp = get(Run("rnn", width, "gl", target=None)), get(Run("rnn", width, "glp"))
        if gl and glp:
            wins.append(glp["cer"] < gl["cer"])
            ev.append(f"RNN {width}: GL {gl['cer']:.1f} at {100 * gl['sparsity']:.0f}% vs GLP {glp['cer']:.1f} at "
                      f"{100 * glp['sparsity']:.0f}%")
    verdict = _verdict(wins)
    out.append(f"3. **GLP beats GL** — {verdict}: {'; '.join(ev)}.")
    # (4) Smaller blocks reach higher sparsity at similar accuracy (heuristic schedule).
    ev, ok = [], []
    for f in ("rnn", "gru"):
        rows = [(r.block, get(r)) for _, r in t["table3"] if r.family == f and get(r)]
        if len(rows) >= 2:
            rows.sort(key=lambda x: x[0][0] * x[0][1])
            sp = [x[1]["sparsity"] for x in rows]
            cers = [x[1]["cer"] for x in rows]
            ok.append(sp[0] > sp[-1])
            ev.append(f"{f.upper()}: " + ", ".join(f"{b[0]}×{b[1]} {100 * r['sparsity']:.0f}%/{r['cer']:.1f}" for b, r in rows)
                      + f" (CER spread {max(cers) - min(cers):.1f} points)")
    verdict = _verdict(ok)
    out.append(f"4. **Smaller blocks reach higher sparsity** (sparsity/CER per block) — {verdict}: {'; '.join(ev)}.")
    return out


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported when a figure is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figures(t: dict, results: dict, scale: Scale, out: Path) -> list[str]:
    plt = _pyplot()
    made = []
    bp = next((results.get(r.name) for _, r in t["table1"] if r.family == "rnn" and r.method == "bp"
               and r.width == scale.widths["rnn"][0]), None)
    if bp and bp["layer_history"]:
        names = [n for n in bp["layer_history"] if "weight_hh" in n] or list(bp["layer_history"])
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for n in (names[0], names[-1]):
            rows = [LayerSparsity.from_state(r) for r in bp["layer_history"][n]]  # dicts, or older [step, sparsity]
            ax.plot([r.step for r in rows], [100 * r.sparsity for r in rows], label=n)
        ax.set(xlabel="iteration", ylabel="block sparsity (%)", title="Pruning schedule (BSRNN Fig. 3)")
        ax.legend(fontsize=7)
        made.append(_save(fig, out / "fig_schedule.png"))
    sweep = [(results.get(r.name), r) for _, r in t["sweep"]]
    sweep = [(r, run) for r, run in sweep if r]
    if sweep:
        dense = _dense_cer(results, sweep[0][1], scale)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [100 * r["sparsity_layers"]["layer_sparsity"] for r, _ in sweep]
        ys = [max(-75.0, 100 * (dense - r["cer"]) / dense) if dense else 0.0 for r, _ in sweep]
        ax.plot(xs, ys, "o-")
        ax.set(xlabel="sparsity of pruned layers (%)", ylabel="relative perf (%), capped at −75",
               title="Accuracy vs sparsity (BSRNN Fig. 4)")
        made.append(_save(fig, out / "fig_accuracy_vs_sparsity.png"))
    if bp:
        rows = [r for r in bp["sparsity_layers"]["rows"] if not r["gate"] and r["kind"] == "recurrent"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(range(len(rows)), [100 * r["sparsity"] for r in rows])
        ax.set_xticks(range(len(rows)), [r["name"].replace("rnn.", "") for r in rows], rotation=70, fontsize=6)
        ax.set(ylabel="sparsity (%)", title="Sparsity by layer, input side first (BSRNN Fig. 8)")
        made.append(_save(fig, out / "fig_sparsity_by_layer.png"))
        h = bp["sparsity_layers"]["out_connections_histogram"]
        if h["counts"]:
            fig, ax = plt.subplots(figsize=(5, 3.5))
            edges = h["edges"]
            ax.bar(edges[:-1], h["counts"], width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge")
            ax.set(xlabel="output connections per neuron", ylabel="neurons", title="BP 4×4 (BSRNN Fig. 7)")
            made.append(_save(fig, out / "fig_out_connections.png"))
    return made


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path.name


def _machine() -> str:
    import os
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core {cpu}"


def write_report(scale: Scale, runs: Path, out: Path, *, wall_seconds: float, command: str, workers: int = 2,
                 threads: int = 1) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t = tables(scale)
    saved = out / "runs" / scale.name
    results = {}
    for rows in t.values():
        for _, run in rows:
            if run.name not in results:
                results[run.name] = load_run(runs, scale, run, saved)
    missing = sorted(n for n, r in results.items() if r is None)
    results = {n: r for n, r in results.items() if r is not None}
    saved.mkdir(parents=True, exist_ok=True)
    for name, rep in results.items():  # the evidence behind every row, kept with the report
        write_text(json.dumps({k: v for k, v in rep.items() if k != "cer"}, indent=1), saved / f"{name}.json")
    for orphan in saved.glob("*.json"):  # runs no longer in the grid, or stale ones
        if orphan.stem not in results:
            orphan.unlink()
    made = figures(t, results, scale, out)
    kernels = sorted(p.relative_to(out.parent).as_posix() for p in (out.parent / "kernels").glob("*.png"))
    md = [f"# Reproducing BSRNN at {scale.name} scale", "",
          f"Command: `{command}`; wall time of this invocation {wall_seconds / 60:.1f} min "
          f"(runs trained earlier are not re-timed; each run's time is in runs/{scale.name}/<run>.json). "
          f"Report written on: {_machine()}, torch {torch.__version__}. Corpus: {scale.n_utts} synthetic utterances; "
          f"CER on the `{SPLIT}` split (prompts never seen in training), one seed per row.", ""]
    any_run = next(iter(results.values()), None)
    if any_run:
        steps = any_run.get("steps", "?")
        train_s = sum(r["history"]["seconds"][-1] for r in results.values() if r.get("history", {}).get("seconds"))
        md += [f"Recipe: {any_run.get('train_utterances', '?')} training utterances, {scale.epochs} epochs of batch "
               f"{scale.batch_size} ({steps} steps) per run; {scale.layers['rnn']} bidirectional layers; widths "
               f"W/wide {scale.widths['rnn']} (RNN) and {scale.widths['gru']} (GRU); conv front end with "
               f"{scale.conv_channels} channels; Adam, lr {scale.lr}; masks updated every {scale.freq} steps; "
               f"pruning window (start, ramp, end) as fractions of training {scale.prune_window}; GL λ "
               f"{scale.gl_lambda} (proximal), GLP λ {scale.glp_lambda}. Training time summed over the "
               f"{len(results)} runs (each run's last session): {train_s / 3600:.2f} h of {threads}-thread processes, "
               f"{workers} at a time. A CER "
               f"≥ {BLANK_CER:.0f} % marks a model that never left CTC's all-blank phase.", ""]
    if missing:
        md += [f"**{len(missing)} of {len(missing) + len(results)} runs are not finished**: {', '.join(missing)}.", ""]
    md += ["## Claims", ""] + claims(t, results, scale) + [""]
    for key, rows in t.items():
        md += [f"## {TITLES[key]}", "", table_md(key, rows, results, scale), ""]
        if key in PAPER:
            md += ["The paper:", "", paper_md(key), ""]
    md += ["## Figures", ""] + [f"![{m}]({m})" for m in made]
    md += [f"![{k}](../{k})" for k in kernels] + [""]
    write_text("\n".join(md), out / "REPORT.md")
    summary = {"scale": scale.name, "command": command, "missing": missing, "figures": made,
               "runs": {n: {k: r[k] for k in ("params", "nonzero_params", "sparsity", "cer", "algorithm", "block")}
                        for n, r in results.items()}}
    write_text(json.dumps(summary, indent=2), out / "results.json")
    print(f"wrote {out / 'REPORT.md'} ({len(results)} runs, {len(missing)} missing)")
    return summary
