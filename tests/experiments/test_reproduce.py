"""``bsrnn reproduce`` end to end at tiny scale: runs, skip-if-done, report, claims and figures."""

import json

import pytest

from bsrnn.cli import main
from bsrnn.experiments.grid import SCALES, Run, all_runs, matched_width, tables


def test_grid_shares_runs_between_tables_and_matches_parameters():
    scale = SCALES["small"]
    t = tables(scale)
    names = [r.name for rows in t.values() for _, r in rows]
    assert len(all_runs(scale)) == len(set(names)) < len(names)  # shared rows are trained once
    assert {r.block for _, r in t["table3"] if r.family == "rnn"} == {(1, 1), (4, 4), (12, 2), (8, 8), (16, 16), (32, 32)}
    w = matched_width("gru", 128, 3)
    assert 8 <= w < 128
    sets = Run("gru", 128, "glp").overrides(scale)
    assert "sparsity.target=0.9" in sets and any(s.startswith("sparsity.lambda_g=") for s in sets)


def test_tiny_reproduce_trains_skips_and_reports(tmp_path, capsys):
    args = ["reproduce", "--scale", "tiny", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--corpus", str(tmp_path / "corpus"), "--only", "rnn32-dense", "rnn32-bp-4x4-t90-max"]
    assert main(args) == 1  # the rest of the grid is missing: not a success yet
    assert "trained" in capsys.readouterr().out
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "| RNN Sparse 32 | BP |" in report and "(not run)" in report and "1. **BP at 80–90 %" in report
    for fig in ("fig_schedule.png", "fig_sparsity_by_layer.png", "fig_out_connections.png"):
        assert (tmp_path / "out" / fig).stat().st_size > 1000
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["runs"]["rnn32-bp-4x4-t90-max"]["algorithm"] == "bp"
    main(args)  # finished runs are skipped, not retrained
    assert capsys.readouterr().out.count("done before") == 2
    # the report's evidence is kept beside it: it can be rewritten without the run directories
    import shutil
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "out" / "fig_schedule.png").unlink()
    main(["reproduce", "--scale", "tiny", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
          "--report-only"])
    assert "| RNN Sparse 32 | BP |" in (tmp_path / "out" / "REPORT.md").read_text()
    assert (tmp_path / "out" / "fig_schedule.png").stat().st_size > 1000  # from the saved sparsity history


def test_unknown_run_names_are_a_clear_error(tmp_path):
    assert main(["reproduce", "--scale", "tiny", "--runs", str(tmp_path), "--only", "gru-999"]) == 2


@pytest.mark.slow
def test_whole_tiny_grid(tmp_path):
    assert main(["reproduce", "--scale", "tiny", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                 "--corpus", str(tmp_path / "corpus")]) == 0
    assert "not finished" not in (tmp_path / "out" / "REPORT.md").read_text()


def test_a_run_made_by_another_recipe_is_not_reported_or_reused(tmp_path):
    from bsrnn.experiments.report import load_run
    from bsrnn.experiments.reproduce import recipe_matches
    scale, run = SCALES["tiny"], Run("rnn", 32, "bp")
    out = tmp_path / "runs" / "tiny" / run.name
    out.mkdir(parents=True)
    assert recipe_matches(out, run, scale)  # a directory without a stamp is taken as current and stamped
    assert json.loads((out / "grid.json").read_text()) == run.overrides(scale)
    (out / "grid.json").write_text(json.dumps(run.overrides(scale)[:-1] + ["sparsity.start=0.9"]))
    assert not recipe_matches(out, run, scale)
    (out / "report.json").write_text(json.dumps({"splits": {"test": {"cer": 50.0}}}))
    assert load_run(tmp_path / "runs", scale, run) is None  # stale: not in the report
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / f"{run.name}.json").write_text(json.dumps({"splits": {"test": {"cer": 50.0}}, "overrides": ["old"]}))
    assert load_run(tmp_path / "nowhere", scale, run, saved) is None
    # a directory from before the stamps existed is judged by its resolved config
    (out / "grid.json").unlink()
    (out / "config.json").write_text(json.dumps({"sparsity": {"method": "bp", "start": 0.9}}))
    assert not recipe_matches(out, run, scale) and not (out / "grid.json").exists()
