"""Which recipe made a run directory: the check that keeps stale runs out of reports and reuse.

An experiment's run is ``bsrnn train`` of a base config with a list of ``--set`` overrides, its
*recipe*. The runner stamps the recipe into the run directory (``grid.json``, a JSON list; the
name comes from the reproduction grid, where it started) before training. A directory is the
run of a recipe when its stamp is that recipe; a directory from before stamps existed is judged
by its resolved ``config.json`` (``config_holds``). ``runner.py`` uses this to skip finished runs
and to move runs of another recipe aside; ``report.py`` to leave them out of the report.
"""

from __future__ import annotations

import json
from pathlib import Path

from bsrnn.atomic import write_json
from bsrnn.train.config import parse_override

STAMP = "grid.json"


def config_holds(config: dict, overrides: list[str]) -> bool:
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


def made_by(run_dir: Path, recipe: list[str]) -> bool:
    """Whether ``run_dir`` holds (or will hold) the run of ``recipe``; reads only.

    True for a directory without a stamp or a config (nothing contradicts the recipe).
    """
    stamp, config = Path(run_dir) / STAMP, Path(run_dir) / "config.json"
    if stamp.is_file():
        return json.loads(stamp.read_text()) == list(recipe)
    return not config.is_file() or config_holds(json.loads(config.read_text()), recipe)


def stamp(run_dir: Path, recipe: list[str]) -> None:
    write_json(list(recipe), Path(run_dir) / STAMP, indent=1)


def recipe_matches(run_dir: Path, recipe: list[str]) -> bool:
    """``made_by``, and a matching directory without a stamp gets one (it is taken as current)."""
    run_dir = Path(run_dir)
    if not made_by(run_dir, recipe):
        return False
    if run_dir.is_dir() and not (run_dir / STAMP).is_file():
        stamp(run_dir, recipe)
    return True
