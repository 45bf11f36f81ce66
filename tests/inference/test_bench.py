"""The benchmark plumbing (not its timings): roofline arithmetic, result rows, plots from files."""

import json

import numpy as np

from bsrnn.bench import kernels, roofline
from bsrnn.bench.cli import BENCHES


def test_struct_bytes_and_ideal_follow_kernels_md():
    # docs/kernels.md §2: BSR bytes = 4·nnzb·b² + 4·nnzb + 4·(M/b + 1); CSR 8 B per nonzero
    assert roofline.struct_bytes(1760, 1760, 4, 19360) == 4 * 19360 * 16 + 4 * 19360 + 4 * 441
    assert roofline.struct_bytes(1760, 1760, 0, 0) == 4 * 1760 * 1760
    roof = {"read_bw_GBps": {"1000": 100.0, "100000000": 100.0}, "sgemm_peak_GFLOPs": 1000.0}
    t = roofline.ideal_s(roof, 1760, 1760, 1, 4, 19360)
    assert np.isclose(t, (roofline.struct_bytes(1760, 1760, 4, 19360) + 4 * 3520) / 100e9)
    t64 = roofline.ideal_s(roof, 1760, 1760, 64, 4, 19360)  # compute-bound at large batch
    assert np.isclose(t64, 2 * 19360 * 16 * 64 / 1e12)


def test_random_bsr_has_exact_block_count():
    m = kernels.random_bsr(64, 32, 4, 0.9, np.random.default_rng(0))
    m.validate()
    assert m.nnzb == round(16 * 8 * 0.1)


def test_plot_reads_only_the_result_file(tmp_path):
    rows = [{"kernel": k, "M": 64, "K": 64, "block": b, "sparsity": 0.9, "batch": B, "median_us": 1.0,
             "iqr_us": 0.1, "speedup_vs_best_dense": 2.0, "attained": 0.5, "loadavg": 1.0}
            for k, b in (("cpu", 4), ("numba_ref", 4), ("csr_torch", 1)) for B in (1, 2)]
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"command": "test", "info": {"cpu": "x", "threads": 1}, "rows": rows}))
    (png,) = kernels.plot(path)
    assert png.exists() and png.stat().st_size > 1000


def test_benches_table_lists_the_sub_commands():
    assert {"kernels", "inference"} <= set(BENCHES)


def test_overhead_measures_every_row_and_restores_the_padded_path():
    from bsrnn.bench import overhead
    res = overhead.measure("gru32", batch=2, frames=24, rounds=1, threads=1)
    assert set(res["median_s"]) == {"train_step", "train_step_packed", "bp_update", "bp_apply", "gl_penalty"}
    assert all(v > 0 for v in res["median_s"].values())
    assert res["packed_over_padded"] > 0 and set(res["meets_goals"]) == set(overhead.GOALS)
