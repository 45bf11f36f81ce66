"""``bsrnn bench training``: the rows the issue's comparisons read, from a real (tiny) run."""

from bsrnn.bench import training as bt
from bsrnn.models.precision import RECURRENT_BF16_MIN_WIDTH


def test_cases_cover_every_width_path_precision_and_the_recurrent_sweep():
    cases = bt.default_cases()
    for h in bt.DENSE_WIDTHS:
        recs = {c.recurrent for c in cases if c.hidden == h and c.path == "dense" and c.precision == "bf16"}
        assert len(recs) == 2  # "auto" and the other choice at that width
    assert {(c.hidden, c.path) for c in cases if c.sparsity} == {(h, p) for h in bt.SPARSE_WIDTHS for p in ("masked", "bsr")}
    assert len({c.name for c in cases}) == len(cases)


def test_measure_writes_the_fields_the_result_file_promises(tmp_path):
    cases = [bt.Case(32, 0.0, "bf16", "dense"), bt.Case(32, 0.0, "bf16", "dense", "bf16"),
             bt.Case(32, 0.9, "fp32", "bsr")]
    res = bt.measure(cases, batch=3, frames=40, rounds=2, threads=1, rss_steps=1, log=lambda *_: None)
    for row in res["rows"]:
        assert {"hidden", "sparsity", "precision", "path", "step_ms", "peak_rss_mb", "recurrent_precision"} <= set(row)
        assert row["step_ms"] > 0 and row["peak_rss_mb"] > 50
    assert [r["recurrent_precision"] for r in res["rows"][:2]] == ["fp32", "bf16"]  # 32 < the auto threshold
    assert res["ratios"]["recurrent_bf16_min_width_in_use"] == RECURRENT_BF16_MIN_WIDTH
    bt.write_markdown(res, tmp_path / "t.md")
    assert "GRU 3×32" in (tmp_path / "t.md").read_text()
