"""The main job's table: the paper's Table 2 columns from two run reports."""

from bsrnn.train.mainjob import paper_table, result_row


def _report(method, nonzero, cer):
    return {"spec": {"rnn_type": "gru", "hidden": 128, "layers": 3}, "algorithm": method, "params": 1_000_000,
            "nonzero_params": nonzero, "sparsity": 1 - nonzero / 1_000_000,
            "sparsity_layers": {"layer_sparsity": 0.9 if method == "bp" else 0.0},
            "splits": {"test": {"cer": cer, "wer": 80.0}}, "run_dir": "runs/x", "session_seconds": 1.0,
            "history": {"dev_cer": [90.0, cer], "sparsity": [0.0, 0.9], "seconds": [1.0, 2.0]}}


def test_table_has_the_papers_columns_and_relative_performance():
    rows = [result_row(_report("none", 1_000_000, 30.0), "Dense"), result_row(_report("bp", 150_000, 36.0), "Sparse")]
    lines = paper_table(rows).splitlines()
    assert lines[0] == "| Model | Algorithm | # Params (millions) | Sparsity | CER | Relative Perf |"
    assert lines[2] == "| GRU Dense 128×3 | N/A | 1.000 | 0.0% | 30.00 | 0.0% |"
    # Relative Perf = (CER_dense - CER) / CER_dense: 6 points worse on 30 is -20 %.
    assert lines[3] == "| GRU Sparse 128×3 | BP | 0.150 | 85.0% | 36.00 | -20.0% |"


def test_main_jobs_add_real_speech_and_the_small_dense_model(tmp_path):
    from bsrnn.experiments.grid import dense_params
    from bsrnn.experiments.mainjob import _split_name, bp_model, build_jobs, small_width

    real = tmp_path / "real" / "pocketsphinx.jsonl"
    jobs, made = build_jobs(tmp_path / "corpus", tmp_path / "runs", ["train.epochs=1"], real=real)
    assert [j.name for j in jobs] == ["main_dense", "main_bp", "main_small"] and len(made) == 3
    for j in jobs:  # real speech is evaluated, but is not part of any run's recipe
        assert any(w.startswith("data.test=") and str(real) in w for w in j.where)
        assert "train.epochs=1" in j.overrides
    w = small_width()
    assert jobs[2].overrides[-1] == f"model.hidden={w}" and jobs[2].config.name == "main_dense.toml"
    # as many parameters as the block-pruned model keeps: total - 90 % of the pruned matrices
    spec, target = bp_model()
    total, pruned = dense_params("gru", spec.hidden, spec.layers, spec.conv_channels, spec.subsample)
    goal = total - target * pruned
    assert abs(dense_params("gru", w, spec.layers, spec.conv_channels, spec.subsample)[0] - goal) < 0.1 * goal
    jobs, made = build_jobs(tmp_path / "corpus", tmp_path / "runs", small=False)
    assert [j.name for j in jobs] == ["main_dense", "main_bp"] and not any("data.test" in w for w in jobs[0].where)
    assert _split_name(str(real)) == "pocketsphinx" and _split_name("test") == "test"
