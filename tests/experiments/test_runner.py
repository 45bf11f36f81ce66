"""The experiments' runner: real ``bsrnn train`` subprocesses (small LM runs), k at a time."""

import ast
import json
import random
from pathlib import Path

import pytest

from bsrnn.experiments import recipe
from bsrnn.experiments.runner import Job, run_jobs, train_command

WORDS = "the a cat dog sat ran on in under big small red house tree".split()


@pytest.fixture()
def lm_config(tmp_path):
    rng = random.Random(0)
    text = tmp_path / "tiny.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(200)))
    config = tmp_path / "lm.toml"
    config.write_text(f'task = "lm"\n[data]\nsource = "text"\npath = {json.dumps(str(text))}\n'
                      f'cache_dir = {json.dumps(str(tmp_path / "cache"))}\n[model]\nemb = 8\nhidden = 16\n'
                      '[train]\nsteps = 4\nbatch_size = 4\nbptt = 8\neval_every = 2\n[log]\ntensorboard = false\n')
    return config


def test_jobs_run_side_by_side_finished_ones_are_skipped_and_failures_reported(tmp_path, lm_config, capsys):
    good = Job("good", lm_config, tmp_path / "runs" / "good", ["model.hidden=12"])
    bad = Job("bad", lm_config, tmp_path / "runs" / "bad", ["train.stepz=1"])
    assert train_command(good, threads=1)[-3:] == [f"train.run_dir={json.dumps(str(good.run_dir))}",
                                                    "log.progress=false", "train.threads=1"]
    seen = []
    results = run_jobs([good, bad], workers=2, echo=lambda line: line.startswith("bsrnn: error"),
                       on_done=seen.append)
    assert [(r.name, r.status) for r in results] == [("good", "trained"), ("bad", "FAILED (2)")]
    assert sorted(r.name for r in seen) == ["bad", "good"] and not results[1].ok
    out = capsys.readouterr().out
    assert "[bad] bsrnn: error: config key train.stepz is unknown" in out and "[good]" not in out
    report = json.loads((good.run_dir / "report.json").read_text())
    assert report["steps"] == 4 and report["config"]["model"]["hidden"] == 12
    assert "config key train.stepz is unknown" in (bad.run_dir / "train.log").read_text()
    assert json.loads((good.run_dir / recipe.STAMP).read_text()) == ["model.hidden=12"]

    again = run_jobs([good], workers=1)
    assert again[0].status == "done before" and again[0].seconds == 0.0

    changed = Job("good", lm_config, good.run_dir, ["model.hidden=8"])  # another recipe, same directory
    assert run_jobs([changed], workers=1)[0].status == "trained"
    assert json.loads((good.run_dir / "report.json").read_text())["config"]["model"]["hidden"] == 8
    stale = [p for p in good.run_dir.parent.iterdir() if p.name.startswith("good.stale-")]
    assert len(stale) == 1 and json.loads((stale[0] / "report.json").read_text())["config"]["model"]["hidden"] == 12
    assert "made by another recipe; moved to good.stale-" in capsys.readouterr().out


def test_fail_fast_raises_with_the_end_of_the_log(tmp_path, lm_config):
    bad = Job("bad", lm_config, tmp_path / "bad", ["model.hidden=big"])
    never = Job("never", lm_config, tmp_path / "never", [])
    with pytest.raises(RuntimeError, match=r"(?s)training bad failed \(exit 2\); end of .*train.log:\n"
                                           r".*config key model.hidden must be int, got 'big'"):
        run_jobs([bad, never], workers=1, fail_fast=True)
    assert not (tmp_path / "never").exists()  # not started after the first failure
    with pytest.raises(ValueError, match="job names must be unique"):
        run_jobs([bad, bad])
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        run_jobs([bad], workers=0)


def test_recipe_stamps_and_configs_older_than_stamps(tmp_path):
    out = tmp_path / "run"
    assert recipe.made_by(out, ["a.b=1"])  # nothing there yet contradicts it
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"a": {"b": 1.0, "c": [4, 4]}}))
    assert recipe.made_by(out, ["a.b=1", "a.c=[4, 4]"]) and not recipe.made_by(out, ["a.b=2"])
    assert not recipe.recipe_matches(out, ["a.b=2"]) and not (out / recipe.STAMP).exists()
    assert recipe.recipe_matches(out, ["a.b=1"]) and json.loads((out / recipe.STAMP).read_text()) == ["a.b=1"]
    assert not recipe.made_by(out, ["a.b=1", "a.c=[4, 4]"])  # the stamp, once there, is what counts


def test_the_experiments_import_each_other_at_module_level_only():
    # reproduce and report once imported each other inside functions, patching a cycle; now the
    # recipe checks live in recipe.py and no module of the package imports a sibling lazily.
    root = Path(__file__).resolve().parents[2] / "bsrnn" / "experiments"
    siblings = {p.stem for p in root.glob("*.py")}
    for path in root.glob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and (node.module or "") in siblings:
                        raise AssertionError(f"{path.name} imports .{node.module} inside {fn.name}")
