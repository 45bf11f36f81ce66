"""The main job: a dense and a block-pruned speech model, side by side in the paper's table.

BSRNN Table 2 (docs/method.md §17) compares dense models with block-pruned (BP, 4×4) ones by the
number of nonzero parameters, the sparsity against the dense model, the CER and the relative
performance ``(CER_dense − CER) / CER_dense``. This job makes the CPU-sized version of one such
pair: it generates the default synthetic corpus (skipped when present), trains a small dense
bidirectional GRU (``configs/main_dense.toml``) and the same model pruned to ~90 % in 4×4
blocks (``configs/main_bp.toml``), evaluates both on the held-out-prompt test split and the
unseen-voice test split, and writes ``results.json``/``results.md`` with the command that made
them. Sized to take about 20 minutes on 2 cores (docs/training-on-cpu.md §7).

The two runs are ordinary ``bsrnn train`` jobs of ``runner.py``, as the reproduction grid's are:
a finished run is reused, an interrupted one resumes, one made with other ``--set`` overrides is
moved aside and trained again. (This module was ``bsrnn.train.mainjob``, which still imports.)
"""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from bsrnn.atomic import write_json, write_text
from bsrnn.data.batching import SpeechDataset
from bsrnn.data.importers import import_pocketsphinx_testdata
from bsrnn.data.synth import synthesize

from .grid import matched_width
from .report import plateau
from .runner import Job, run_jobs

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
RUNS = (("main_dense", "Dense"), ("main_bp", "Sparse"))
SMALL = ("main_small", "Dense")  # claim 2's row: dense, as many parameters as main_bp has nonzeros
TEST_SPLIT = "test"  # held-out prompts, seen voices: the paper's test set stand-in
REAL = "pocketsphinx"  # Debian's pocketsphinx-testdata recordings: real speech, when installed


def _split_name(split: str) -> str:
    return REAL if split.endswith(f"{REAL}.jsonl") else split


def bp_model():
    """(model spec, target sparsity) of main_bp.toml's block-pruned model."""
    import tomllib

    from bsrnn.models.deepspeech2 import build_model

    cfg = tomllib.loads((CONFIG_DIR / "main_bp.toml").read_text())
    m = cfg["model"]
    return build_model(m["preset"], **{k: v for k, v in m.items() if k != "preset"}).spec, cfg["sparsity"]["target"]


def small_width() -> int:
    """The width of a dense model of main_bp's depth whose parameter count is closest to main_bp's
    nonzero count (every recurrent matrix at its target sparsity)."""
    spec, target = bp_model()
    return matched_width("gru", spec.hidden, spec.layers, sparsity=target, conv_channels=spec.conv_channels,
                         subsample=spec.subsample)


def result_row(report: dict, label: str) -> dict:
    spec = report["spec"]
    width = f"{spec['rnn_type'].upper()} {label} {spec['hidden']}×{spec['layers']}"
    return {"model": width, "algorithm": "N/A" if report["algorithm"] == "none" else report["algorithm"].upper(),
            "params": report["params"], "nonzero_params": report["nonzero_params"],
            "sparsity": report["sparsity"],
            "layer_sparsity": report["sparsity_layers"]["layer_sparsity"],
            "cer": {_split_name(s): r["cer"] for s, r in report["splits"].items()},
            "wer": {_split_name(s): r["wer"] for s, r in report["splits"].items()},
            "dev_cer_per_epoch": report["history"]["dev_cer"], "sparsity_per_epoch": report["history"]["sparsity"],
            # where the run stands: relative dev-CER improvement over its last fifth of training
            "dev_improvement_last_fifth": plateau(report["history"]["dev_cer"], 0.2),
            "run_dir": report["run_dir"], "session_seconds": report["session_seconds"],
            "precision": report.get("precision", "fp32"), "peak_rss_mb": report.get("peak_rss_mb"),
            "allocator": report.get("allocator")}


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


ECHOED = ("epoch", "resumed", "run ", "parameters", "  ")  # the runs' lines worth printing as they come


def _echo(line: str) -> bool:
    return line.startswith(ECHOED) and "└" not in line  # epoch results, resumes, the final report


def build_jobs(corpus, runs, overrides=(), *, real: Path | None = None, small: bool = True,
               fresh: bool = False) -> tuple[list[Job], list[tuple[str, str]]]:
    """The main job's training jobs and their (run name, table label): dense, block-pruned and
    (``small``) the small dense model, each also evaluated on ``real`` speech when given."""
    where = [f"data.corpus={json.dumps(str(corpus))}"]  # JSON strings are TOML strings: any path survives --set
    if real is not None:
        where.append(f"data.test={json.dumps(['test', 'test_unseen_voices', str(real)])}")
    runs_made = list(RUNS) + ([SMALL] if small else [])
    jobs = []
    for name, _ in runs_made:
        run_dir = Path(runs) / name
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)
        config, extra = CONFIG_DIR / f"{name}.toml", []
        if name == SMALL[0]:
            config, extra = CONFIG_DIR / "main_dense.toml", [f"model.hidden={small_width()}"]
        jobs.append(Job(name, config, run_dir, [*overrides, *extra], where=list(where)))
    return jobs, runs_made


def run_main_job(corpus: str = "data/corpus", runs: str = "runs/main", out: str = "benchmarks/main",
                 overrides: list[str] = (), fresh: bool = False, parallel: bool = True, small: bool = True) -> dict:
    started = time.perf_counter()
    manifests = synthesize(corpus, workers=2)  # verifies and returns at once when already there
    synth_seconds = time.perf_counter() - started
    real = None
    try:  # real speech beside the synthetic test sets: the corpus's voices are all TTS
        real = import_pocketsphinx_testdata(Path(corpus) / "real").manifest
    except FileNotFoundError as e:
        print(f"no real-speech test set: {e}", flush=True)
    jobs, runs_made = build_jobs(corpus, runs, overrides, real=real, small=small, fresh=fresh)
    if parallel:
        for split in [*manifests.values(), *([real] if real else [])]:  # one process fills the feature cache; the runs only read it
            SpeechDataset(split, None, cache_dir=Path(corpus) / "features")
    print(f"training {' and '.join(j.name for j in jobs)}; logs in {Path(runs)}/<name>/train.log", flush=True)
    # Both at once with 1 thread each: the throughput of one 2-thread run on 2 cores, and far
    # better on a shared machine, where 2-thread OpenMP regions stall on busy cores.
    # the small dense model starts when the first of the two finishes (the block-pruned one, whose
    # recurrent layers switch to block-sparse kernels once its masks are final)
    for r in run_jobs(jobs, workers=2 if parallel else 1, threads=1 if parallel else None,
                      echo=_echo, fail_fast=True):
        print(f"{r.name}: {r.status} ({r.seconds / 60:.1f} min); log {r.log}", flush=True)
    rows = [result_row(json.loads((Path(runs) / name / "report.json").read_text()), label) for name, label in runs_made]
    table = paper_table(rows)
    command = ("bsrnn main " + " ".join(shlex.quote(a) for a in sys.argv[2:])).strip() if sys.argv[1:2] == ["main"] \
        else "bsrnn main"
    total = time.perf_counter() - started
    result = {"command": command, "rows": rows, "test_split": TEST_SPLIT, "corpus": str(corpus),
              "parallel": parallel, "dev_cer_per_epoch": {r["model"]: r["dev_cer_per_epoch"] for r in rows},
              "splits": {k: str(v) for k, v in manifests.items()}, "synth_seconds": synth_seconds,
              "total_seconds": total, "torch": torch.__version__,
              "python": platform.python_version(), "machine": platform.machine()}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(result, out_dir / "results.json")
    unseen = "\n".join(f"- {r['model']}: CER {r['cer'].get('test_unseen_voices', float('nan')):.2f} % on "
                       f"unseen voices, {r['cer'].get('dev', float('nan')):.2f} % on dev"
                       + (f", {r['cer'][REAL]:.2f} % on real speech (pocketsphinx-testdata, 10 recordings)"
                          if REAL in r["cer"] else "")
                       + (f"; dev CER per epoch {' '.join(f'{c:.1f}' for c in r['dev_cer_per_epoch'])} "
                          f"({100 * r['dev_improvement_last_fifth']:.1f} % better over the last fifth of training)"
                          if r.get("dev_improvement_last_fifth") is not None else "") for r in rows)
    md = (f"# Main job: dense vs 4×4 block-pruned GRU (BSRNN Table 2 format)\n\n"
          f"Command: `{command}` — {total / 60:.1f} min in total on this machine "
          f"(corpus {synth_seconds:.0f} s), torch {torch.__version__}, "
          f"{'both runs in parallel, 1 thread each' if parallel else 'runs in sequence'}.\n\n"
          f"CER (%) on the `{TEST_SPLIT}` split (prompts never seen in training). "
          f"# Params counts nonzero parameters; Sparsity is against the whole dense model.\n\n"
          f"{table}\n\n{unseen}\n")
    write_text(md, out_dir / "results.md")
    print("\n" + table)
    print(f"\nwritten {out_dir / 'results.json'} and {out_dir / 'results.md'} ({total / 60:.1f} min)")
    return result
