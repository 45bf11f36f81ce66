"""``bsrnn reproduce``: train the grid of ``grid.py`` and write the paper's tables and figures.

Runs go to ``<runs>/<scale>/<run name>`` as ordinary ``bsrnn train`` runs, several at once (one
torch thread each: docs/training-on-cpu.md §4 measured two 1-thread runs at least as fast as one
2-thread run). A run whose ``report.json`` exists is skipped; an interrupted one resumes from its
``last.pt``. So the command can be stopped and started again at any time, also across machines'
sessions, and it picks up where it was. Then ``report.py`` writes ``REPORT.md``, ``results.json``
and figures. (``runner.py`` runs the jobs; a run directory made by another recipe is moved aside.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.synth import synthesize
from .grid import SCALES, Run, Scale, all_runs
from .recipe import config_holds as _config_holds  # noqa: F401 (its name when it lived here)
from .recipe import recipe_matches as _recipe_matches
from .report import load_run, write_report
from .runner import Job, Result, run_jobs
from .runner import train_command as _train_command

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "reproduce.toml"


def run_dir(runs: Path, scale: Scale, run: Run) -> Path:
    return runs / scale.name / run.name


def job(run: Run, scale: Scale, corpus: Path, runs: Path, out: Path | None = None) -> Job:
    """The ``bsrnn train`` job of one grid run (in ``out``, by default its place under ``runs``);
    its recipe is the grid's overrides."""
    return Job(run.name, CONFIG, out or run_dir(runs, scale, run), run.overrides(scale),
               where=[f"data.corpus={json.dumps(str(corpus))}", "log.tensorboard=false"])


def train_command(run: Run, scale: Scale, corpus: Path, out: Path, threads: int) -> list[str]:
    """The ``bsrnn train`` command line of one grid run trained in ``out``."""
    return _train_command(job(run, scale, corpus, out.parent, out), threads)


def recipe_matches(out: Path, run: Run, scale: Scale) -> bool:
    """Whether the run directory was made by this recipe: its stamp holds the overrides it was
    trained with; a directory from before stamps existed is checked against its resolved
    ``config.json`` and stamped when that agrees (``recipe.recipe_matches``)."""
    return _recipe_matches(out, run.overrides(scale))


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

        # A run whose evidence an earlier report committed (benchmarks/reproduce/runs/<scale>/, made by
        # this recipe) is done, also on a fresh checkout without the run directories: the grid is
        # spread over several sittings, and each one's finished runs are committed with the report.
        saved = Path(out) / "runs" / scale.name
        committed = [r for r in grid if not (run_dir(runs_dir, scale, r) / "report.json").is_file()
                     and load_run(runs_dir, scale, r, saved) is not None]
        for r in committed:
            print(f"  {r.name:<40} {'committed':<14} (evidence in {saved})", flush=True)
        grid = [r for r in grid if r not in committed]

        def done(r: Result) -> None:
            print(f"  {r.name:<40} {r.status:<14} {r.seconds / 60:6.1f} min", flush=True)
        run_jobs([job(r, scale, corpus_dir, runs_dir) for r in grid], workers=workers, threads=threads, on_done=done)
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
