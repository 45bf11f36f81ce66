"""The benchmark plumbing (not its timings): roofline arithmetic, result rows, plots from files."""

import json

import numpy as np

from bsrnn.bench import kernels, roofline
from bsrnn.bench.cli import BENCHES


ROOF = {"threads": 2, "caches": {"L1": 48 << 10, "L2": 2 << 20, "L3": 64 << 20},
        "level_bw_GBps": {"L1": 400.0, "L2": 200.0, "L3": 50.0, "DRAM": 10.0},
        "precision_peak_GFLOPs": {"float32": 200.0, "bf16": 2000.0, "int8": 4000.0},
        "precision_peak_source": {"float32": "fp32_fma", "bf16": "bf16_amx", "int8": "int8_amx"}}


def test_cell_bytes_and_bound_follow_kernels_md():
    # docs/kernels.md §2: BSR bytes = 4·nnzb·b² + 4·nnzb + 4·(M/b + 1); CSR 8 B per nonzero; int8
    # values 1 B plus a float scale per block row
    assert roofline.struct_bytes(1760, 1760, 4, 19360) == 4 * 19360 * 16 + 4 * 19360 + 4 * 441
    assert roofline.struct_bytes(1760, 1760, 0, 0) == 4 * 1760 * 1760
    assert roofline.struct_bytes(1760, 1760, 1, 1000) == 8 * 1000 + 4 * 1761
    assert roofline.struct_bytes(1760, 1760, 4, 19360, "int8") == 19360 * 16 + 4 * 19360 + 4 * 441 + 4 * 440
    assert roofline.struct_bytes(1760, 1760, 4, 19360, "bf16") == 2 * 19360 * 16 + 4 * 19360 + 4 * 441
    # B = 1: 1.32 MB in all, 0.66 MB per thread, in L2 -> the L2 bandwidth bound, with the two
    # 48 KiB L1s serving what they hold
    b = roofline.bound(ROOF, 1760, 1760, 1, 4, 19360)
    nbytes = roofline.struct_bytes(1760, 1760, 4, 19360) + 4 * 3520
    l1 = 2 * (48 << 10)
    assert b["level"] == "L2" and b["bound"].startswith("L2 bandwidth") and b["bytes"] == nbytes
    assert b["bytes_by_level"] == {"L1": l1, "L2": nbytes - l1}
    assert np.isclose(b["ideal_us"], (l1 / 400e9 + (nbytes - l1) / 200e9) * 1e6)
    # int8 shrinks the working set but it stays in L2; a dense 1760² weight lives in L3
    assert roofline.bound(ROOF, 1760, 1760, 1, 4, 19360, "int8")["level"] == "L2"
    assert roofline.bound(ROOF, 1760, 1760, 1, 0, 0)["level"] == "L3"
    assert roofline.bound(ROOF, 16384, 16384, 1, 0, 0)["level"] == "DRAM"
    # large batch: compute-bound at the precision's peak
    b64 = roofline.bound(ROOF, 1760, 1760, 64, 4, 19360)
    assert b64["bound"] == "float32 compute (fp32_fma)"
    assert np.isclose(b64["ideal_us"], 2 * 19360 * 16 * 64 / 200e9 * 1e6)
    assert roofline.bound(ROOF, 1760, 1760, 64, 0, 0, "bf16")["peak_GFLOPs"] == 2000.0


def test_a_set_just_past_the_l2s_is_bound_mostly_by_l2_bandwidth():
    """7680×2560 at 95 %, 4×4 fp32, B = 1: 4.2 MB on two 2 MiB L2s lives in L3 by the per-thread
    rule, but 4 MiB of it can stay in the L2s; charging all of it to L3 gave kernels 150 % of
    the bound. The bound lies between the all-L2 and the all-L3 times and names both levels."""
    nnzb = 7680 * 2560 // 16 // 20
    b = roofline.bound(ROOF, 7680, 2560, 1, 4, nnzb)
    n, l2 = b["bytes"], 2 * (2 << 20)
    assert b["level"] == "L3" and b["bytes_by_level"] == {"L2": l2, "L3": n - l2}
    assert n / 200e9 * 1e6 < b["ideal_us"] < n / 50e9 * 1e6
    assert np.isclose(b["ideal_us"], (l2 / 200e9 + (n - l2) / 50e9) * 1e6)
    assert b["bound"].startswith("L3 bandwidth (4.19 of") and "MB from L2" in b["bound"]
    # the served bytes always add up to the working set, and DRAM spills from a full L3
    for nbytes in (1 << 10, 3 << 20, 40 << 20, 1 << 30):
        assert sum(roofline.served_from(nbytes, 2, ROOF["caches"]).values()) == nbytes
    assert roofline.served_from(1 << 30, 2, ROOF["caches"])["L3"] == 64 << 20


def test_levels_and_probe_sizes_cover_every_cache_level():
    caches = ROOF["caches"]
    assert [roofline.level_of(n, 2, caches) for n in (64 << 10, 3 << 20, 32 << 20, 1 << 30)] == ["L1", "L2", "L3", "DRAM"]
    sizes = roofline.probe_sizes(2, caches)
    assert {roofline.level_of(s, 2, caches) for s in sizes} == set(roofline.LEVELS)
    assert all(s % 4096 == 0 for s in sizes) and sizes == sorted(sizes)
    c = roofline.cache_sizes()
    assert c["L1"] > 0 and c["L2"] >= c["L1"] and c["L3"] > 0


def test_probes_measure_positive_rates():
    lib = roofline.probe_lib()
    if lib is None:
        import pytest
        pytest.skip("no C++ compiler for the probes")
    assert roofline.read_bw(64 << 10, 1, target=1e-3, rounds=1) > 1e9  # any SIMD read of an L1/L2 set
    peaks = roofline.peak_rates(1, target=1e-3, rounds=1)
    assert peaks["fp32_fma"] > 1.0
    assert all(v > 0 for v in peaks.values())


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


def test_bench_transcribe_writes_rows_with_the_required_fields(tmp_path, speech, capsys):
    """The plumbing of ``bsrnn bench transcribe`` on a tiny unidirectional model and two noise
    utterances (no timing is asserted): every configuration is a row, both result files exist."""
    import soundfile as sf

    from bsrnn.cli import main

    model = speech.saved(speech.random_model("gru64u"), tmp_path / "uni.safetensors")
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(["a cat", "the dog"]):
        sf.write(tmp_path / f"u{i}.wav", (0.1 * rng.standard_normal(12000)).astype(np.float32), 16000)
        lines.append(json.dumps({"id": f"u{i}", "path": f"u{i}.wav", "text": text, "duration": 0.75}))
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["bench", "transcribe", "--models", str(model), "--no-paper", "--corpus", str(tmp_path),
                 "--repeats", "2", "--chunk-ms", "100", "--out", str(out)]) == 0
    res = json.loads((out / "transcribe.json").read_text())
    rows = res["rows"]
    assert {(r["runtime"], r["mode"]) for r in rows} == {(a, b) for a in ("dense", "sparse") for b in ("offline", "stream")}
    for r in rows:
        assert {"model", "runtime", "mode", "decoder", "rtf", "cer"} <= set(r) and r["model"] == "uni"
        assert r["rtf"] > 0 and r["utterances"] == 2 and r["max_abs_diff_vs_dense_offline"] < 1e-4
    assert all(r["chunk_latency_ms_median"] > 0 for r in rows if r["mode"] == "stream")
    assert res["threads"] == 1 and "loadavg_start" in res["info"]
    assert "| uni | sparse | stream | greedy |" in (out / "transcribe.md").read_text()
