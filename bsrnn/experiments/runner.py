"""Run many ``bsrnn train`` jobs as subprocesses, ``workers`` at a time: the experiments' runner.

Both ``bsrnn reproduce`` (the paper's grid) and ``bsrnn main`` (dense vs block-pruned) are lists
of ordinary training runs. Each ``Job`` is one ``bsrnn train --config <config> --set ...`` in its
own run directory, with its output appended to ``<run_dir>/train.log``. For each job the runner

* moves a run directory made by another recipe aside (``<name>.stale-<time>``) and starts again
  (``recipe.py``: the recipe is the job's ``overrides``, stamped in the directory);
* skips a run whose ``report.json`` exists ("done before");
* otherwise trains it; an interrupted run resumes from its ``last.pt`` (``bsrnn train`` does that),
  so a runner stopped at any moment picks up where it was when started again.

Each job runs with jemalloc preloaded where it is installed (``bsrnn.train.memory``: glibc's
malloc fragments under the changing batch shapes of speech training). Several 1-thread runs side by side have the throughput of one multi-thread run on a small machine
and degrade more gracefully when it is shared, hence ``threads`` per job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..train.memory import allocator_env
from .recipe import recipe_matches, stamp


@dataclass(frozen=True)
class Job:
    name: str
    config: Path  # the base TOML config
    run_dir: Path
    overrides: list[str] = field(default_factory=list)  # the recipe: what makes this run this run
    where: list[str] = field(default_factory=list)  # overrides that do not change the run (data.corpus, logging)


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # "trained", "done before", "FAILED (<exit code>)" or "not started"
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.status in ("trained", "done before")


def train_command(job: Job, threads: int | None = 1) -> list[str]:
    """The ``bsrnn train`` command line of ``job`` (``threads`` None: the config's ``train.threads``)."""
    sets = [*job.overrides, *job.where, f"train.run_dir={json.dumps(str(job.run_dir))}", "log.progress=false"]
    if threads is not None:
        sets.append(f"train.threads={threads}")
    return [sys.executable, "-m", "bsrnn", "train", "--config", str(job.config), "--set", *sets]


def _prepare(job: Job) -> bool:
    """Make ``job.run_dir`` ready; False when its run is finished already."""
    out = Path(job.run_dir)
    if out.is_dir() and not recipe_matches(out, job.overrides):  # an older recipe: keep it aside, start again
        stale = out.with_name(f"{out.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(stale)
        print(f"  {job.name}: made by another recipe; moved to {stale.name} and trained again", flush=True)
    if (out / "report.json").is_file():
        return False
    out.mkdir(parents=True, exist_ok=True)
    stamp(out, job.overrides)
    return True


def run_jobs(jobs: list[Job], *, workers: int = 2, threads: int | None = 1,
             echo: Callable[[str], bool] | None = None, on_done: Callable[[Result], None] | None = None,
             fail_fast: bool = False) -> list[Result]:
    """Train ``jobs``, ``workers`` at a time with ``threads`` torch threads each; results in job order.

    ``echo(line)`` chooses lines of the runs' output to print as ``[name] line`` while they run;
    ``on_done(result)`` is called as each job ends. With ``fail_fast`` the first failure stops the
    other runs and raises ``RuntimeError`` with the end of its log (their checkpoints are whole:
    a rerun resumes them); otherwise a failed job is a result with a FAILED status.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    stop = threading.Event()
    lock = threading.Lock()
    running: dict[str, subprocess.Popen] = {}
    failures: list[tuple[Job, int]] = []

    def one(job: Job) -> Result:
        log_path = Path(job.run_dir) / "train.log"
        if stop.is_set():
            return Result(job.name, "not started", 0.0, log_path)
        if not _prepare(job):
            result = Result(job.name, "done before", 0.0, log_path)
        else:
            started = time.perf_counter()
            with open(log_path, "a") as log:
                proc = subprocess.Popen(train_command(job, threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, errors="replace", env={**allocator_env(), "PYTHONUNBUFFERED": "1"})
                with lock:
                    running[job.name] = proc
                    if stop.is_set():  # another job failed while this one started
                        proc.terminate()
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if echo is not None and echo(line.rstrip("\n")):
                        print(f"[{job.name}] {line.rstrip()}", flush=True)
                code = proc.wait()
            with lock:
                running.pop(job.name, None)
            ok = code == 0 and (Path(job.run_dir) / "report.json").is_file()
            result = Result(job.name, "trained" if ok else f"FAILED ({code})", time.perf_counter() - started, log_path)
            if not ok and not stop.is_set():
                failures.append((job, code))
                if fail_fast:
                    with lock:
                        stop.set()
                        for p in running.values():
                            p.terminate()
        if on_done is not None:
            on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, jobs))
    if fail_fast and failures:
        job, code = failures[0]
        lines = (Path(job.run_dir) / "train.log").read_text(errors="replace").splitlines()
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"training {job.name} failed (exit {code}); end of {Path(job.run_dir) / 'train.log'}:\n{tail}")
    return results
