"""``bsrnn reproduce`` end to end at tiny scale: runs, skip-if-done, report, claims and figures."""

import json

import pytest

from bsrnn.cli import main
from bsrnn.experiments.grid import SCALES, Run, all_runs, matched_width, tables


def test_grid_shares_runs_between_tables_and_matches_parameters():
    scale = SCALES["small"]
    t = tables(scale)
    names = [r.name for rows in t.values() for _, runs in rows for r in runs]
    assert len(all_runs(scale)) == len(set(names)) < len(names)  # shared rows are trained once
    for key in ("table3", "table3_target"):  # twice: the heuristic schedule, and target mode at 90 %
        assert {runs[0].block for _, runs in t[key] if runs[0].family == "rnn"} == {
            (1, 1), (4, 4), (12, 2), (8, 8), (16, 16), (32, 32)}
    assert {runs[0].target for _, runs in t["table3"]} == {None} and {runs[0].target for _, runs in t["table3_target"]} == {0.9}
    # every Table 1-2 row has scale.seeds seeds, differing only by train.seed; the rest one
    assert scale.seeds >= 2
    for key, rows in t.items():
        for _, runs in rows:
            assert len(runs) == (scale.seeds if key in ("table1", "table2") else 1)
            assert [r.seed for r in runs] == list(range(len(runs)))
    assert "train.seed=1" in Run("gru", 128, "bp", seed=1).overrides(scale)
    assert not any(s.startswith("train.seed") for s in Run("gru", 128, "bp").overrides(scale))
    # the decisive rows first: all of Table 1's seed 0, then its seed 1
    order = [r.name for r in all_runs(scale)]
    t1 = [runs for _, runs in t["table1"]]
    assert order[:len(t1)] == [runs[0].name for runs in t1]
    assert order[len(t1):2 * len(t1)] == [runs[1].name for runs in t1]
    # pruning ends by 40 % of training, as in the paper
    assert all(end <= 0.4 for _, _, end in scale.prune_window.values())
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
    # a fresh checkout (no run directories) does not retrain runs whose evidence was committed
    main(args)
    out = capsys.readouterr().out
    assert out.count("committed") == 2 and "trained" not in out


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


def test_plateau_measure_and_seed_comparisons():
    from bsrnn.experiments.report import compare, plateau
    # improvement over the last fifth of a 10-epoch curve: from epoch 8 to epoch 10
    assert plateau([90, 50, 40, 35, 32, 30, 29, 28.0, 27.5, 27.0]) == pytest.approx((28 - 27) / 28)
    # interpolated between epochs when the fifth does not fall on one: 5 epochs -> from epoch 4
    assert plateau([80, 40, 30, 25, 24]) == pytest.approx(1 / 25)
    assert plateau([50.0]) is None
    st = lambda *c: {"n": len(c), "cer": sum(c) / len(c), "cer_min": min(c), "cer_max": max(c)}  # noqa: E731
    assert compare(st(20, 21), st(22, 23)) == "yes"
    assert compare(st(24, 25), st(22, 23)) == "no"
    assert compare(st(20, 23), st(22, 24)) == "within noise"  # ranges overlap: no verdict
    assert compare(st(20), st(22)) == "yes (1 seed)"
    assert compare(None, st(22)) == "missing"
