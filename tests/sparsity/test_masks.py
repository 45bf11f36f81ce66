"""MaskSet on its own: application to weights and optimizer state, shrinking, state, errors, expansion."""

import pytest
import torch
from torch import nn

from bsrnn.sparsity import MaskSet, Target, select_targets


def gru_and_linear():
    torch.manual_seed(0)
    return nn.ModuleDict({"rnn": nn.GRU(8, 8), "fc": nn.Linear(8, 12)})


def masks_of(model, block=(4, 4)):
    return MaskSet(model, select_targets(model, block))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_apply_zeros_weights_and_every_optimizer_state_tensor(opt):
    model = gru_and_linear()
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        buffers = ("momentum_buffer",)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        buffers = ("exp_avg", "exp_avg_sq")
    masks = masks_of(model)
    sum(p.sum() for p in model.parameters()).mul(3).backward()  # nonzero state everywhere
    optimizer.step()
    w = model["rnn"].weight_hh_l0  # (24, 8): gates r, z, n of 8 rows, 2×2 blocks of 4×4 each
    assert masks.prune_("rnn.weight_hh_l0", torch.tensor([[True, False], [True, True], [True, True],
                                                          [True, True], [False, False], [True, True]])) == 3
    dense_fc = model["fc"].weight.detach().clone()
    masks.apply_(optimizer)
    pruned = ~masks.keep("rnn.weight_hh_l0")
    assert pruned.sum() == 3 * 16 and pruned[0:4, 4:8].all() and pruned[16:20].all()
    assert (w[pruned] == 0).all() and (w[~pruned] != 0).all()
    for name in buffers:
        buf = optimizer.state[w][name]
        assert (buf[pruned] == 0).all() and (buf[~pruned] != 0).all(), name
    assert torch.equal(model["fc"].weight, dense_fc)  # an all-ones mask touches nothing
    if opt == "adam":
        assert optimizer.state[w]["step"].item() == 1  # the scalar step count is not a weight-shaped buffer
    masks.apply_()  # without an optimizer only the weights are masked
    assert (w[pruned] == 0).all()


def test_masks_only_shrink_and_set_replaces():
    model = gru_and_linear()
    masks = masks_of(model)
    name = "fc.weight"  # (12, 8) in 4×4 blocks: a 3×2 grid
    first = torch.tensor([[True, False], [True, True], [False, True]])
    assert masks.prune_(name, first) == 2
    assert masks.prune_(name, ~first) == 4  # ANDed in: what was pruned stays pruned, the rest goes
    assert not masks.block_masks[name].any() and masks.block_sparsity(name) == 1.0
    assert masks.prune_(name, torch.ones(3, 2, dtype=torch.bool)) == 0  # nothing comes back
    masks.set_(name, first)  # sparse training regrows blocks
    assert torch.equal(masks.block_masks[name], first)
    masks.set_(name, torch.ones(3, 2, dtype=torch.bool))
    masks.apply_()
    assert masks.pruned_blocks([name]) == (0, 6)
    with torch.no_grad():
        model["fc"].weight.fill_(1.0)
    masks.apply_()  # a mask set back to all ones no longer zeros anything
    assert (model["fc"].weight == 1).all()
    assert masks.pruned_blocks() == (0, 6 + 2 * 12)


def test_state_dict_round_trip_and_mismatches():
    model = gru_and_linear()
    masks = masks_of(model)
    masks.prune_("rnn.weight_ih_l0", torch.rand(6, 2, generator=torch.Generator().manual_seed(1)) > 0.5)
    state = masks.state_dict()
    state_copy = {n: m.clone() for n, m in state.items()}
    masks.prune_("rnn.weight_ih_l0", torch.zeros(6, 2, dtype=torch.bool))
    assert torch.equal(state["rnn.weight_ih_l0"], state_copy["rnn.weight_ih_l0"])  # a copy, not a view
    other = masks_of(model)
    other.load_state_dict(state)
    with torch.no_grad():
        model["rnn"].weight_ih_l0.fill_(1.0)
    other.apply_()
    assert torch.equal(model["rnn"].weight_ih_l0 != 0, other.keep("rnn.weight_ih_l0"))
    for n in state:
        assert torch.equal(other.block_masks[n], state[n])
    with pytest.raises(ValueError, match=r"missing \['fc.weight'\], unexpected \['fc.bias'\]"):
        other.load_state_dict({**{n: m for n, m in state.items() if n != "fc.weight"}, "fc.bias": state["fc.weight"]})
    with pytest.raises(ValueError, match=r"mask for fc.weight has block grid \(2, 3\), expected \(3, 2\)"):
        other.load_state_dict({**state, "fc.weight": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask for fc.weight has block grid \(3, 3\), expected \(3, 2\)"):
        other.set_("fc.weight", torch.ones(3, 3, dtype=torch.bool))


def test_targets_that_do_not_fit_the_model_are_clear_errors():
    model = gru_and_linear()
    t = select_targets(model, (4, 4))[-1]
    assert t.name == "fc.weight"
    with pytest.raises(ValueError, match="target decoder.weight is not a parameter of the model"):
        MaskSet(model, [Target("decoder.weight", t.shape, t.gates, t.kind, t.block, t.grid)])
    with pytest.raises(ValueError, match=r"target fc.weight has shape \(8, 12\) but the parameter has shape \(12, 8\)"):
        MaskSet(model, [Target("fc.weight", (8, 12), 1, t.kind, t.block, (2, 3))])
    with pytest.raises(ValueError, match="parameter fc.weight is listed twice"):
        MaskSet(model, [t, t])


def test_expansion_of_non_square_blocks_and_gate_tiling():
    lstm = nn.LSTM(6, 4)  # weight_ih_l0: (16, 6), 4 gates of 4 rows
    masks = MaskSet(lstm, select_targets(lstm, (2, 3), include=["weight_ih_l0"]))
    t = masks.targets["weight_ih_l0"]
    assert t.gates == 4 and t.grid == (8, 2)  # per gate: 2 block rows of 2, 2 block columns of 3
    keep = torch.ones(8, 2, dtype=torch.bool)
    keep[3, 1] = False  # the second block row of gate f (rows 6-7), right block (cols 3-5)
    keep[4, 0] = False  # the first block row of gate g (rows 8-9), left block (cols 0-2)
    masks.prune_("weight_ih_l0", keep)
    expected = torch.ones(16, 6, dtype=torch.bool)
    expected[6:8, 3:6] = False
    expected[8:10, 0:3] = False
    assert torch.equal(masks.keep("weight_ih_l0"), expected)
    # Gates of 6 rows in blocks of 4 rows (pad=True): each gate gets a partial block, none straddles gates.
    gru = nn.GRU(5, 6)  # weight_hh_l0: (18, 6)
    padded = MaskSet(gru, select_targets(gru, (4, 4), include=["weight_hh_l0"], pad=True))
    assert padded.targets["weight_hh_l0"].grid == (6, 2)
    keep = torch.ones(6, 2, dtype=torch.bool)
    keep[3, 0] = False  # gate z, its partial second block row: rows 10-11 only, cols 0-3
    padded.prune_("weight_hh_l0", keep)
    expected = torch.ones(18, 6, dtype=torch.bool)
    expected[10:12, 0:4] = False
    assert torch.equal(padded.keep("weight_hh_l0"), expected)
    padded.apply_()
    assert (gru.weight_hh_l0[10:12, :4] == 0).all() and (gru.weight_hh_l0[12:16] != 0).all()


def test_apply_skips_only_what_cannot_have_moved():
    """A parameter whose gradients are exactly zero at pruned entries (MaskSet.exact_grads, the
    block-sparse training path) is zeroed once after each mask change, not after every step."""
    model = gru_and_linear()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    masks = masks_of(model)
    name = "rnn.weight_hh_l0"
    w = model["rnn"].weight_hh_l0
    keep = torch.ones(6, 2, dtype=torch.bool)
    keep[0, 1] = False
    masks.prune_(name, keep)
    masks.exact_grads = frozenset({name})
    masks.apply_(optimizer)  # first application after the change: always done
    assert (w[0:4, 4:8] == 0).all()
    with torch.no_grad():
        w[0, 4] = 1.0  # what a dense gradient step would do; the exact path never does
    masks.apply_(optimizer)
    assert w[0, 4] == 1.0  # skipped: clean since the last change, gradients exact
    masks.exact_grads = frozenset()  # a step on the dense path
    masks.apply_(optimizer)
    assert w[0, 4] == 0.0
    masks.exact_grads = frozenset({name})
    with torch.no_grad():
        w[0, 4] = 1.0
    keep[1, 0] = False
    masks.prune_(name, keep)  # a mask change: applied again, new and old blocks
    masks.apply_(optimizer)
    assert w[0, 4] == 0.0 and (w[4:8, 0:4] == 0).all()
    with torch.no_grad():
        w[0, 4] = 1.0
    masks.load_state_dict(masks.state_dict())  # a resume: nothing is taken as clean
    masks.apply_(optimizer)
    assert w[0, 4] == 0.0
    with torch.no_grad():
        w[0, 4] = 1.0
    masks.apply_(torch.optim.Adam(model.parameters(), lr=0.1))  # another optimizer's state: applied
    assert w[0, 4] == 0.0
