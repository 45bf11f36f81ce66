"""``bsrnn reproduce``: train the grid of ``grid.py`` and write the paper's tables and figures.

Runs go to ``<runs>/<scale>/<run name>`` as ordinary ``bsrnn train`` runs, several at once (one
torch thread each: CALIBRATION.md §3 found two 1-thread runs as fast as one 2-thread run). A run
whose ``report.json`` exists is skipped; an interrupted one resumes from its ``last.pt``. So the
command can be stopped and started again at any time, also across machines' sessions, and it
picks up where it was. Then ``report.py`` writes ``REPORT.md``, ``results.json`` and figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..data.synth import synthesize
from ..train.config import parse_override
from .grid import SCALES, Run, Scale, all_runs

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "reproduce.toml"


def run_dir(runs: Path, scale: Scale, run: Run) -> Path:
    return runs / scale.name / run.name


def train_command(run: Run, scale: Scale, corpus: Path, out: Path, threads: int) -> list[str]:
    sets = run.overrides(scale) + [f"data.corpus=\"{corpus}\"", f"train.run_dir=\"{out}\"",
                                   f"train.threads={threads}", "log.progress=false", "log.tensorboard=false"]
    return [sys.executable, "-m", "bsrnn", "train", "--config", str(CONFIG), "--set", *sets]


def _config_holds(config: dict, overrides: list[str]) -> bool:
    """Whether a run's resolved ``config.json`` has every ``section.key=value`` override."""
    for item in overrides:
        (section, name), want = parse_override(item)
        have = config.get(section, {}).get(name)
        if isinstance(want, list):
            want, have = list(want), list(have) if isinstance(have, (list, tuple)) else have
        if isinstance(want, float) or isinstance(have, float):
            if have is None or abs(float(have) - float(want)) > 1e-12 * max(1.0, abs(float(want))):
                return False
        elif have != want:
            return False
    return True


def recipe_matches(out: Path, run: Run, scale: Scale) -> bool:
    """Whether the run directory was made by this recipe. Its ``grid.json`` holds the overrides it
    was trained with; a directory from before ``grid.json`` existed is checked against its
    resolved ``config.json`` and stamped when that agrees."""
    stamp, want = out / "grid.json", run.overrides(scale)
    if stamp.is_file():
        return json.loads(stamp.read_text()) == want
    config = out / "config.json"
    if config.is_file() and not _config_holds(json.loads(config.read_text()), want):
        return False
    if out.is_dir():
        stamp.write_text(json.dumps(want, indent=1))
    return True


def train_one(run: Run, scale: Scale, corpus: Path, runs: Path, threads: int) -> tuple[str, str, float]:
    out = run_dir(runs, scale, run)
    if out.is_dir() and not recipe_matches(out, run, scale):  # an older recipe: keep it aside, start again
        stale = out.with_name(f"{out.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(stale)
        print(f"  {run.name}: made by another recipe; moved to {stale.name} and trained again", flush=True)
    if (out / "report.json").is_file():
        return run.name, "done before", 0.0
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(run.overrides(scale), indent=1))
    started = time.perf_counter()
    with open(out / "train.log", "a") as log:
        proc = subprocess.run(train_command(run, scale, corpus, out, threads), stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    took = time.perf_counter() - started
    status = "trained" if proc.returncode == 0 and (out / "report.json").is_file() else f"FAILED ({proc.returncode})"
    return run.name, status, took


def reproduce(scale_name: str = "small", *, corpus: str | None = None, runs: str = "runs/reproduce",
              out: str = "benchmarks/reproduce", workers: int = 2, threads: int = 1, only: list[str] | None = None,
              report_only: bool = False) -> dict:
    if scale_name not in SCALES:
        raise ValueError(f"scale {scale_name!r} is not one of {', '.join(SCALES)}")
    scale = SCALES[scale_name]
    corpus_dir = Path(corpus or f"data/reproduce-{scale.name}")
    runs_dir = Path(runs)
    started = time.perf_counter()
    grid = [r for r in all_runs(scale) if not only or r.name in only]
    if only:  # in the order given, so the runs that matter most can go first
        grid.sort(key=lambda r: only.index(r.name))
    if only and len(grid) != len(only):
        known = {r.name for r in all_runs(scale)}
        raise ValueError(f"unknown run names {sorted(set(only) - known)}; runs are e.g. {sorted(known)[:4]}")
    if not report_only:
        dev, test, unseen = scale.held_out
        synthesize(corpus_dir, n_utts=scale.n_utts, workers=workers, progress=False, dev_size=dev, test_size=test,
                   unseen_voice_test_size=unseen)
        print(f"{len(grid)} runs at scale {scale.name}, {workers} at a time, {threads} thread(s) each")
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for name, status, took in pool.map(lambda r: train_one(r, scale, corpus_dir, runs_dir, threads), grid):
                print(f"  {name:<40} {status:<14} {took / 60:6.1f} min", flush=True)
    from .report import write_report
    wall = time.perf_counter() - started
    return write_report(scale, runs_dir, Path(out), wall_seconds=wall, workers=workers, threads=threads,
                        command=f"bsrnn reproduce --scale {scale.name} --workers {workers} --threads {threads}")


def register(subparsers) -> None:
    p = subparsers.add_parser("reproduce", help="train the paper's experiment grid at small scale and write REPORT.md")
    p.add_argument("--scale", choices=list(SCALES), default="small")
    p.add_argument("--corpus", help="corpus directory (default data/reproduce-<scale>, generated if absent)")
    p.add_argument("--runs", default="runs/reproduce", help="run directories (default %(default)s)")
    p.add_argument("--out", default="benchmarks/reproduce", help="REPORT.md, results and figures (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="runs trained at once (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default %(default)s)")
    p.add_argument("--only", nargs="+", metavar="RUN", help="train only these runs, in this order (names as in the log)")
    p.add_argument("--report-only", action="store_true", help="write the report from finished runs, train nothing")
    p.set_defaults(func=_cli)


def _cli(a) -> int:
    result = reproduce(a.scale, corpus=a.corpus, runs=a.runs, out=a.out, workers=a.workers, threads=a.threads,
                       only=a.only, report_only=a.report_only)
    return 1 if result["missing"] else 0
