"""Tied weights: one tensor reachable under two names is one target, pruned and counted once."""

import pytest
import torch
from torch import nn

from bsrnn.models.lm import RecurrentLM
from bsrnn.sparsity import GroupLasso, MaskSet, Target, build_method, select_targets
from bsrnn.sparsity.methods import group_norms

METHODS = {"bp": {"method": "bp", "target": 0.5, "freq": 2, "start": 1, "ramp": 4, "end": 9, "lambda_g": 1e-3},
           "glp": {"method": "glp", "target": 0.5, "freq": 2, "start": 1, "ramp": 4, "end": 9, "lambda_g": 1e-3},
           "gl": {"method": "gl", "lambda_g": 1e-3, "final_threshold": 0.05},
           "static": {"method": "static", "target": 0.5},
           "rigl": {"method": "rigl", "target": 0.5, "freq": 2, "end": 9},
           "set": {"method": "set", "target": 0.5, "freq": 2, "end": 9}}


class TwoLinear(nn.Module):
    """Two Linear layers sharing one weight matrix (the second reads it under another name)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight

    def forward(self, x):  # x: (T, N, 8)
        return self.b(torch.tanh(self.a(x)))


def tied_lm():
    return RecurrentLM(32, rnn_type="gru", emb=16, hidden=16, tie=True)


MODELS = {"lm": (tied_lm, "embedding.weight", "decoder.weight", lambda g: torch.randint(32, (6, 3), generator=g)),
          "two_linear": (TwoLinear, "a.weight", "b.weight", lambda g: torch.randn(6, 3, 8, generator=g))}


def output(model, x):
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("which", list(MODELS))
def test_a_tied_weight_is_pruned_once_under_its_parameter_name(which, method):
    torch.manual_seed(0)
    make, name, alias, batch = MODELS[which]
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    m = build_method(model, METHODS[method], steps_per_epoch=2, total_steps=12, optimizer=optimizer)
    names = [t.name for t in m.targets]
    assert names.count(name) == 1 and alias not in names
    g = torch.Generator().manual_seed(0)
    for step in range(12):
        (output(model, batch(g)).square().mean() + m.penalty()).backward()
        optimizer.step()
        optimizer.zero_grad()
        m.step(step)
    m.finish()
    w = dict(model.named_parameters())[name]
    w_alias = dict(model.named_parameters(remove_duplicate=False))[alias]
    assert w_alias is w
    keep = m.masks.keep(name)
    if method != "gl":  # GL's blocks are zeroed only where they shrank below the final threshold
        assert not keep.all(), "the tied weight was not pruned"
    assert (w[~keep] == 0).all()
    for buf in optimizer.state[w].values():
        if torch.is_tensor(buf) and buf.shape == w.shape:
            assert (buf[~keep] == 0).all()
    rep = m.report()
    assert [r.name for r in rep.rows if not r.gate].count(name) == 1
    assert rep.model_params == sum(p.numel() for p in model.parameters())  # the tied matrix once
    assert rep.pruned_params == sum(t.shape[0] * t.shape[1] for t in m.targets)


def test_the_group_lasso_penalty_counts_a_tied_weight_once():
    model = TwoLinear()
    gl = GroupLasso(model, (4, 4), lambda_g=0.5)
    t = select_targets(model, (4, 4))[0]
    assert [x.name for x in gl.targets] == ["a.weight"]
    assert gl.penalty().item() == pytest.approx(0.5 * group_norms(model.a.weight, t, False).sum().item(), rel=1e-6)


def test_excluding_or_including_any_name_of_a_tied_weight():
    lm = tied_lm()
    assert [t.name for t in select_targets(lm, (4, 4), exclude=["decoder.*"])] == ["rnn.weight_ih_l0",
                                                                                  "rnn.weight_hh_l0"]
    assert [t.name for t in select_targets(lm, (4, 4), include=["decoder.weight"])] == ["embedding.weight"]
    with pytest.raises(ValueError, match="no parameter of the model matches"):
        select_targets(TwoLinear(), (4, 4), exclude=["b.weight"])  # the shared matrix is excluded by its alias
    t = select_targets(lm, (4, 4), include=["decoder.weight"])[0]
    with pytest.raises(ValueError, match=r"decoder.weight is the same tensor as embedding.weight \(tied"):
        MaskSet(lm, [Target("decoder.weight", t.shape, t.gates, t.kind, t.block, t.grid)])


def test_a_tied_weight_that_does_not_tile_names_both_names():
    lm = RecurrentLM(30, emb=16, hidden=16, tie=True)  # 30 rows do not hold 4-row blocks
    with pytest.raises(ValueError, match=r"embedding.weight = decoder.weight: block 4×4 does not tile"):
        select_targets(lm, (4, 4))


def test_a_tensor_tied_across_differently_tiled_layers_is_refused():
    model = nn.ModuleDict({"gru": nn.GRU(8, 8), "fc": nn.Linear(8, 24, bias=False)})
    model["fc"].weight = model["gru"].weight_ih_l0  # (24, 8): three gates for the GRU, one matrix for fc
    with pytest.raises(ValueError, match="tied parameter gru.weight_ih_l0 = fc.weight is used by layers that tile"):
        select_targets(model, (4, 4))
