"""Methods on real layers: pruned weights stay exactly zero, masks only shrink, resume is exact."""

import copy

import pytest
import torch
from torch import nn

from bsrnn.sparsity import (KINDS, BlockPruning, GroupLasso, GroupLassoPruning, NarangSchedule, WeightPruning,
                            build_method, select_targets)
from bsrnn.sparsity import schedules
from bsrnn.sparsity.methods import group_norms
from bsrnn.sparsity.schedules import weight_quantile

SCHED = NarangSchedule(start_itr=10, ramp_itr=40, end_itr=80, start_slope=0.004, ramp_slope=0.006, freq=10)


class Net(nn.Module):
    """A 2-layer bidirectional recurrent layer of the given type, then a Linear head."""

    def __init__(self, rnn: str):
        super().__init__()
        self.rnn = None if rnn == "linear" else getattr(nn, rnn)(8, 16, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(8 if rnn == "linear" else 32, 16)

    def forward(self, x):  # x: (T, N, 8)
        h = x if self.rnn is None else self.rnn(x)[0]
        return self.fc(h)


def train(model, method, optimizer, steps, start=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    for step in range(start, steps):
        x = torch.randn(6, 3, 8, generator=g)
        loss = model(x).square().mean() + model(x).sum() * 1e-3 + method.penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.step(step)


def make_opt(model, kind):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=3e-3)


@pytest.mark.parametrize("rnn", ["linear", "RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_and_others_train(rnn, opt):
    torch.manual_seed(0)
    model = Net(rnn)
    optimizer = make_opt(model, opt)
    method = BlockPruning(model, (4, 4), SCHED, target=0.6, optimizer=optimizer)
    train(model, method, optimizer, 90)
    assert method.sparsity() == pytest.approx(0.6, abs=0.05)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, method, optimizer, 120, start=90, seed=1)  # after end_itr: masks frozen
    for t in method.targets:
        p = dict(model.named_parameters())[t.name]
        keep = method.masks.keep(t.name)
        assert (p[~keep] == 0).all(), t.name
        for buf in optimizer.state[p].values():  # no momentum left at pruned positions
            if torch.is_tensor(buf) and buf.shape == p.shape:
                assert (buf[~keep] == 0).all()
        if keep.any():
            assert not torch.equal(p[keep], snapshot[t.name][keep]), f"{t.name} stopped training"


def test_masks_only_shrink_and_freeze_after_end():
    torch.manual_seed(1)
    model = Net("GRU")
    optimizer = make_opt(model, "sgd")
    method = BlockPruning(model, (4, 4), SCHED, target=0.7, optimizer=optimizer)
    prev = method.masks.state_dict()
    g = torch.Generator().manual_seed(0)
    for step in range(120):
        model(torch.randn(5, 2, 8, generator=g)).square().mean().backward()
        optimizer.step(); optimizer.zero_grad()
        updated = method.step(step)
        now = method.masks.state_dict()
        for n in now:
            assert not (now[n] & ~prev[n]).any(), "a pruned block came back"
        if step >= SCHED.end_itr:
            assert not updated and all(torch.equal(now[n], prev[n]) for n in now)
        prev = now


def test_weight_pruning_equals_block_pruning_with_1x1_blocks():
    torch.manual_seed(2)
    a = Net("LSTM")
    b = copy.deepcopy(a)
    oa, ob = make_opt(a, "sgd"), make_opt(b, "sgd")
    wp = WeightPruning(a, SCHED, q=0.05, optimizer=oa)
    bp = BlockPruning(b, (1, 1), SCHED, q=0.05, optimizer=ob)
    train(a, wp, oa, 60)
    train(b, bp, ob, 60)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    assert wp.sparsity() == bp.sparsity() > 0


@pytest.mark.parametrize("cls", ["bp", "glp", "gl"])
def test_state_dict_round_trip_continues_identically(cls):
    torch.manual_seed(3)
    model = Net("GRU")
    optimizer = make_opt(model, "adam")
    cfg = {"method": cls, "target": 0.5, "freq": 10, "start": 20, "ramp": 40, "end": 80, "lambda_g": 1e-3}
    if cls == "gl":
        cfg = {"method": "gl", "lambda_g": 1e-2, "proximal": True}
    method = build_method(model, cfg, steps_per_epoch=20, total_steps=100, optimizer=optimizer)
    train(model, method, optimizer, 50)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), copy.deepcopy(method.state_dict()))
    train(model, method, optimizer, 100, start=50, seed=5)
    model2 = Net("GRU")
    model2.load_state_dict(saved[0])
    opt2 = make_opt(model2, "adam")
    opt2.load_state_dict(saved[1])
    method2 = build_method(model2, cfg, steps_per_epoch=20, total_steps=100, optimizer=opt2)
    method2.load_state_dict(saved[2])
    train(model2, method2, opt2, 100, start=50, seed=5)
    for (n, p), (_, q) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.equal(p, q), n
    for n, m in method.masks.state_dict().items():
        assert torch.equal(m, method2.masks.state_dict()[n])


def test_group_lasso_penalty_value_and_proximal_zeros():
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [4, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]))
    gl = GroupLasso(model, (2, 2), lambda_g=0.5)
    # blocks: ||(3,0,4,0)|| = 5, zeros ~ 1e-6 each, ||(1,1,1,1)|| = 2
    assert gl.penalty().item() == pytest.approx(0.5 * (5 + 2 + 2 * 1e-6), rel=1e-6)
    gl.penalty().backward()
    assert model.weight.grad[0, 0].item() == pytest.approx(0.5 * 3 / 5)
    prox = GroupLasso(model, (2, 2), lambda_g=1.0, proximal=True, lr=1.0)
    assert prox.penalty().item() == 0.0
    prox.step(0)  # shrink by lr*lambda = 1: the norm-2 block -> half, the norm-5 block -> 4/5
    w = model.weight.detach()
    assert torch.allclose(w[:2, :2], torch.tensor([[2.4, 0], [3.2, 0]]))
    assert torch.allclose(w[2:, 2:], torch.full((2, 2), 0.5))
    prox.lambda_g = 10.0
    prox.step(1)
    assert (model.weight == 0).all() and prox.finalize(0.0) == 1.0


def glp_penalty_at(glp, step):
    """The penalty GLP adds to the loss of ``step``, reached by running the method up to it."""
    for s in range(glp.last_step + 1, step):
        glp.step(s)
    return glp.penalty().item()


def lasso_of(glp, kinds):
    params = dict(glp.model.named_parameters())
    return glp.lambda_g * sum(group_norms(params[t.name], t, False).sum().item()
                              for t in glp.targets if t.kind in kinds)


def test_glp_penalty_follows_each_kinds_own_schedule():
    torch.manual_seed(0)
    rec = NarangSchedule(start_itr=10, ramp_itr=20, end_itr=40, start_slope=0.004, ramp_slope=0.006, freq=10)
    fc = NarangSchedule(start_itr=30, ramp_itr=50, end_itr=80, start_slope=0.004, ramp_slope=0.006, freq=10)
    glp = GroupLassoPruning(Net("GRU"), (4, 4), {"recurrent": rec, "non_recurrent": fc}, lambda_g=1e-3, q=0.01)
    assert glp.penalty_window == "schedule"
    expected = {0: (), 9: (), 10: ("recurrent",), 29: ("recurrent",), 30: ("recurrent", "non_recurrent"),
                39: ("recurrent", "non_recurrent"), 40: ("non_recurrent",), 79: ("non_recurrent",), 80: (), 120: ()}
    for step, kinds in expected.items():
        got = glp_penalty_at(glp, step)
        assert glp.penalty_kinds() == list(kinds), step
        assert got == pytest.approx(lasso_of(glp, kinds), rel=1e-5), step
        assert (got > 0) == bool(kinds), step


def test_glp_until_end_window_keeps_the_earlier_behaviour():
    model = Net("GRU")
    glp = build_method(model, {"method": "glp", "lambda_g": 1e-3, "target": 0.5, "freq": 10, "start": 10,
                               "ramp": 40, "end": 80, "penalty_window": "until_end"},
                       steps_per_epoch=10, total_steps=100)
    assert glp.penalty_window == "until_end"
    for step in (0, 5, 79):  # on for every matrix from step 0, before pruning starts
        assert glp_penalty_at(glp, step) == pytest.approx(lasso_of(glp, KINDS), rel=1e-5), step
    assert glp_penalty_at(glp, 80) == 0.0
    with pytest.raises(ValueError, match="penalty_window 'always' is not one of schedule, until_end"):
        GroupLassoPruning(model, (4, 4), SCHED, penalty_window="always")


def test_q_auto_uses_the_heuristic_slope():
    torch.manual_seed(4)
    model = nn.Linear(64, 64)
    bp = BlockPruning(model, (4, 4), SCHED, q="auto")
    q = model.weight.detach().abs().flatten().quantile(0.9).item()
    bp.step(20)
    theta = 2 * q * 10 / (2 * 30 + 3 * 40) * 16 ** 0.25
    assert bp.schedules["non_recurrent"].start_slope == pytest.approx(theta, rel=1e-5)
    assert bp.thresholds["non_recurrent"] == pytest.approx(theta * 11 / 10, rel=1e-5)


def test_q_auto_samples_every_matrix_when_the_weights_exceed_the_quantile_limit(monkeypatch):
    # Three 64×64 matrices: the first (nearest the input) tiny, the later two large. The old code
    # measured q on the first QUANTILE_LIMIT weights in parameter order, i.e. on the tiny matrix.
    monkeypatch.setattr(schedules, "QUANTILE_LIMIT", 4096)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(*(nn.Linear(64, 64, bias=False) for _ in range(3)))
    with torch.no_grad():
        model[0].weight.copy_(torch.rand(64, 64, generator=g) * 1e-3 + 1e-4)
        for lin in model[1:]:
            lin.weight.copy_(torch.rand(64, 64, generator=g) + 0.5)
    everything = torch.cat([lin.weight.detach().flatten() for lin in model])
    exact = everything.quantile(0.9).item()  # ≈ 1.35, inside the large matrices
    first = everything[:4096].quantile(0.9).item()  # ≈ 1e-3, what the old code measured
    sampled = weight_quantile([lin.weight for lin in model])
    assert sampled != exact and sampled == pytest.approx(exact, rel=0.02) and sampled > 100 * first
    assert weight_quantile([lin.weight for lin in model]) == sampled  # a seeded draw: resume is exact
    bp = BlockPruning(copy.deepcopy(model), (4, 4), SCHED, q="auto")
    bp.step(20)
    theta = 2 * sampled * 10 / (2 * 30 + 3 * 40) * 16 ** 0.25
    assert bp.schedules["non_recurrent"].start_slope == pytest.approx(theta, rel=1e-6)
    monkeypatch.setattr(schedules, "QUANTILE_LIMIT", 3 * 4096)  # all of it fits: the exact quantile
    assert weight_quantile([lin.weight for lin in model]) == pytest.approx(exact, rel=1e-6)
    with torch.no_grad():
        model[2].weight[:32] = 0.0  # zeros are not weights: they neither count nor get drawn
    now = torch.cat([lin.weight.detach().flatten() for lin in model])
    assert weight_quantile([lin.weight for lin in model]) == pytest.approx(now[now != 0].quantile(0.9).item(), rel=1e-6)
    monkeypatch.setattr(schedules, "QUANTILE_LIMIT", 4096)
    assert weight_quantile([lin.weight for lin in model]) == pytest.approx(now[now != 0].quantile(0.9).item(), rel=0.02)
    assert weight_quantile([torch.zeros(4, 4)]) == 0.0


def test_dry_run_predicts_the_final_sparsity_of_static_weights():
    torch.manual_seed(5)
    model = Net("GRU")
    bp = BlockPruning(model, (4, 4), SCHED, q=0.2)
    predicted = bp.dry_run()
    for step in range(SCHED.end_itr + 10):
        bp.step(step)
    for t in bp.targets:
        assert bp.masks.block_sparsity(t.name) == pytest.approx(predicted[t.name]), t.name


def test_bad_arguments_are_clear_errors():
    model = Net("GRU")
    with pytest.raises(ValueError, match="target sparsity for recurrent layers must be in"):
        BlockPruning(model, (4, 4), SCHED, target={"recurrent": 1.0})
    with pytest.raises(ValueError, match="unknown layer kinds"):
        BlockPruning(model, (4, 4), SCHED, target={"conv": 0.5})
    with pytest.raises(ValueError, match="does not tile"):
        BlockPruning(model, (5, 5), SCHED)
    with pytest.raises(ValueError, match="unknown block reduction 'avg'"):
        BlockPruning(model, (4, 4), SCHED, how="avg")
    with pytest.raises(ValueError, match="matches no parameter"):
        BlockPruning(model, (4, 4), SCHED, exclude=["decoder.*"])
    with pytest.raises(ValueError, match="needs the learning rate"):
        GroupLasso(model, (4, 4), 0.1, proximal=True).step(0)


def test_default_rule_skips_biases_norms_convs_embeddings():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Conv1d(8, 8, 3), nn.LayerNorm(8), nn.Linear(8, 8), nn.GRU(8, 8))
    names = [t.name for t in select_targets(model, (4, 4))]
    assert names == ["3.weight", "4.weight_ih_l0", "4.weight_hh_l0"]
    kinds = {t.name: (t.kind, t.gates) for t in select_targets(model, (4, 4))}
    assert kinds["4.weight_hh_l0"] == ("recurrent", 3) and kinds["3.weight"] == ("non_recurrent", 1)
    conv = select_targets(model, (4, 4), include=["1.weight"])
    assert [t.name for t in conv] == ["1.weight"] and conv[0].grid == (2, 6)


def test_group_lasso_final_threshold_applies_when_training_finishes():
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0.01, 0], [0, 0, 0, 0.02]]))
    gl = build_method(model, {"method": "gl", "block": [2, 2], "lambda_g": 1e-3, "final_threshold": 0.05},
                      steps_per_epoch=1, total_steps=1)
    gl.finish()
    assert model.weight[2:, 2:].abs().sum() == 0 and model.weight[0, 0] == 3.0
    assert gl.sparsity() == 0.75 and gl.report().rows[0].block_sparsity == 0.75


def test_fixed_masks_says_when_block_sparse_kernels_may_train_a_step():
    from bsrnn.sparsity import DynamicSparsity, NoSparsity, StaticSparsity

    model = nn.GRU(8, 8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = {"recurrent": NarangSchedule(start_itr=2, ramp_itr=4, end_itr=6, start_slope=1e-3, ramp_slope=2e-3,
                                         freq=1),
             "non_recurrent": NarangSchedule(start_itr=0, ramp_itr=1, end_itr=3, start_slope=1e-3, ramp_slope=2e-3,
                                             freq=1)}
    bp = BlockPruning(model, (4, 4), sched, optimizer=opt)
    assert [bp.fixed_masks(s) for s in range(8)] == [False] * 6 + [True] * 2  # the last kind's end_itr
    assert not GroupLasso(model, (4, 4), 1e-3).fixed_masks(10 ** 6)  # masks come only from finish()
    assert not NoSparsity(model).fixed_masks(0)
    assert StaticSparsity(model, (4, 4), 0.5).fixed_masks(0)
    rigl = DynamicSparsity(model, (4, 4), 0.5, regrow="gradient", freq=3, end=10)
    assert [rigl.fixed_masks(s) for s in range(11)] == [s not in (3, 6, 9) for s in range(11)]
    set_ = DynamicSparsity(model, (4, 4), 0.5, regrow="random", freq=3, end=10)
    assert all(set_.fixed_masks(s) for s in range(11))  # SET regrows at random: no dense gradient read
