"""The main job: a dense and a block-pruned speech model, side by side in the paper's table.

BSRNN Table 2 (PAPER.md §8) compares dense models with block-pruned (BP, 4×4) ones by the
number of nonzero parameters, the sparsity against the dense model, the CER and the relative
performance ``(CER_dense − CER) / CER_dense``. This job makes the CPU-sized version of one such
pair: it generates the default synthetic corpus (skipped when present), trains a small dense
bidirectional GRU (``configs/main_dense.toml``) and the same model pruned to ~90 % in 4×4
blocks (``configs/main_bp.toml``), evaluates both on the held-out-prompt test split and the
unseen-voice test split, and writes ``results.json``/``results.md`` with the command that made
them. Sized by CALIBRATION.md to take about 20 minutes on 2 cores.
"""

from __future__ import annotations

import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from bsrnn.data.synth import synthesize

from .config import load_config
from .evaluate import write_json
from .loop import train

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
RUNS = (("main_dense", "Dense"), ("main_bp", "Sparse"))
TEST_SPLIT = "test"  # held-out prompts, seen voices: the paper's test set stand-in


def result_row(report: dict, label: str) -> dict:
    spec = report["spec"]
    width = f"{spec['rnn_type'].upper()} {label} {spec['hidden']}×{spec['layers']}"
    return {"model": width, "algorithm": "N/A" if report["algorithm"] == "none" else report["algorithm"].upper(),
            "params": report["params"], "nonzero_params": report["nonzero_params"],
            "sparsity": report["sparsity"],
            "layer_sparsity": report["sparsity_layers"]["layer_sparsity"],
            "cer": {s: r["cer"] for s, r in report["splits"].items()},
            "wer": {s: r["wer"] for s, r in report["splits"].items()},
            "run_dir": report["run_dir"], "session_seconds": report["session_seconds"]}


def paper_table(rows: list[dict], split: str = TEST_SPLIT) -> str:
    """Markdown table in Table 2's format; # Params counts nonzero parameters (millions)."""
    dense = rows[0]["cer"][split]
    lines = ["| Model | Algorithm | # Params (millions) | Sparsity | CER | Relative Perf |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        rel = (dense - r["cer"][split]) / dense if dense else float("nan")
        lines.append(f"| {r['model']} | {r['algorithm']} | {r['nonzero_params'] / 1e6:.3f} | "
                     f"{100 * r['sparsity']:.1f}% | {r['cer'][split]:.2f} | {100 * rel:.1f}% |")
    return "\n".join(lines)


def run_main_job(corpus: str = "data/corpus", runs: str = "runs/main", out: str = "benchmarks/main",
                 overrides: list[str] = (), fresh: bool = False) -> dict:
    started = time.perf_counter()
    manifests = synthesize(corpus, workers=2)  # verifies and returns at once when already there
    synth_seconds = time.perf_counter() - started
    rows = []
    for name, label in RUNS:
        cfg = load_config(CONFIG_DIR / f"{name}.toml", list(overrides))
        cfg.data.corpus = str(corpus)
        cfg.train.run_dir = str(Path(runs) / name)
        if fresh and Path(cfg.train.run_dir).exists():
            shutil.rmtree(cfg.train.run_dir)
        report = train(cfg)
        rows.append(result_row(report, label))
    table = paper_table(rows)
    command = "bsrnn main " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["main"] \
        else "bsrnn main"
    total = time.perf_counter() - started
    result = {"command": command, "rows": rows, "test_split": TEST_SPLIT, "corpus": str(corpus),
              "splits": {k: str(v) for k, v in manifests.items()}, "synth_seconds": synth_seconds,
              "total_seconds": total, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "python": platform.python_version(), "machine": platform.machine()}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(result, out_dir / "results.json")
    unseen = "\n".join(f"- {r['model']}: CER {r['cer'].get('test_unseen_voices', float('nan')):.2f} % on "
                       f"unseen voices, {r['cer'].get('dev', float('nan')):.2f} % on dev" for r in rows)
    md = (f"# Main job: dense vs 4×4 block-pruned GRU (BSRNN Table 2 format)\n\n"
          f"Command: `{command}` — {total / 60:.1f} min in total on this machine "
          f"(corpus {synth_seconds:.0f} s), torch {torch.__version__}, {torch.get_num_threads()} threads.\n\n"
          f"CER (%) on the `{TEST_SPLIT}` split (prompts never seen in training). "
          f"# Params counts nonzero parameters; Sparsity is against the whole dense model.\n\n"
          f"{table}\n\n{unseen}\n")
    (out_dir / "results.md").write_text(md)
    print("\n" + table)
    print(f"\nwritten {out_dir / 'results.json'} and {out_dir / 'results.md'} ({total / 60:.1f} min)")
    return result
