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
