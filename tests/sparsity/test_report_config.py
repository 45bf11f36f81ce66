"""Report counts and the config's validation."""

import json

import pytest
import torch
from torch import nn

from bsrnn.sparsity import BlockPruning, NarangSchedule, SparsityConfig, build_method


def test_report_counts_layers_gates_and_connections():
    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(8, 8), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight_hh_l0[:8].zero_()  # the whole r gate of the recurrent matrix
        model[1].weight[:, :4].zero_()
    bp = BlockPruning(model, (4, 4), NarangSchedule(0, 5, 10, 1.0, 1.0, 1), q=0.1)
    rep = bp.report()
    rows = {(r.name, r.gate): r for r in rep.rows}
    assert rows[("0.weight_hh_l0", "r")].sparsity == 1.0 and rows[("0.weight_hh_l0", "z")].sparsity == 0.0
    assert rows[("0.weight_hh_l0", "")].block_sparsity == pytest.approx(1 / 3)
    assert rows[("1.weight", "")].kept == 16 and rows[("1.weight", "")].block_sparsity == 0.5
    assert rep.pruned_params == 24 * 8 * 2 + 32
    assert rep.model_params == sum(p.numel() for p in model.parameters())
    assert rep.model_nonzero == rep.model_params - 64 - 16
    # columns of 1.weight: 4 dead inputs, 4 feeding all 4 outputs
    assert rep.out_connections[-8:] == [0, 0, 0, 0, 4, 4, 4, 4]
    d = rep.to_dict()
    json.dumps(d)
    assert sum(d["out_connections_histogram"]["counts"]) == len(rep.out_connections)
    table = rep.table()
    assert "weight_hh_l0" in table and "100.0%" in table and "whole model" in table


def test_config_errors_are_one_clear_sentence():
    with pytest.raises(ValueError, match=r"unknown sparsity keys \['blok'\]"):
        SparsityConfig.from_dict({"blok": [4, 4]})
    with pytest.raises(ValueError, match="sparsity.method 'xp' is not one of"):
        SparsityConfig(method="xp")
    with pytest.raises(ValueError, match=r"sparsity.target must be in \[0, 1\)"):
        SparsityConfig(method="bp", target=1.2)
    with pytest.raises(ValueError, match="sparsity.penalty_window 'always' is not one of schedule, until_end"):
        SparsityConfig(method="glp", penalty_window="always")
    with pytest.raises(ValueError, match="sparsity.q must be a number or 'auto'"):
        SparsityConfig(method="bp", q="median")


def test_build_method_defaults_follow_the_paper_heuristics():
    model = nn.Sequential(nn.GRU(8, 8), nn.Linear(8, 4))
    bp = build_method(model, {"method": "bp"}, steps_per_epoch=50, total_steps=1000)
    s = bp.schedules["recurrent"]
    assert (s.start_itr, s.ramp_itr, s.end_itr) == (50, 200, 400)
    wp = build_method(model, {"method": "wp"}, steps_per_epoch=50, total_steps=1000)
    s = wp.schedules["recurrent"]
    assert (s.start_itr, s.ramp_itr, s.end_itr) == (50, 250, 500) and wp.block == (1, 1)
    none = build_method(model, None, steps_per_epoch=50, total_steps=1000)
    assert none.penalty().item() == 0.0 and none.step(3) is False and none.sparsity() == 0.0
