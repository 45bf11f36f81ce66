"""Sparse training throughout: the sparsity holds at every step, masks survive resume."""

import copy

import pytest
import torch
from torch import nn

from bsrnn.sparsity import DynamicSparsity, StaticSparsity, build_method, layer_densities


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


def run(model, method, opt, start, stop, seed=0, check=None):
    g = torch.Generator().manual_seed(seed)
    for step in range(start, stop):
        model(torch.randn(5, 3, 8, generator=g)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        method.step(step)
        if check:
            check(step)


def test_erk_densities_hit_the_target_and_stay_below_one():
    shapes = [(64, 8), (256, 256), (32, 512)]
    d = layer_densities(shapes, 0.9, "erk")
    assert all(0 < x <= 1 for x in d)
    kept = sum(x * r * c for x, (r, c) in zip(d, shapes))
    assert kept == pytest.approx(0.1 * sum(r * c for r, c in shapes))
    assert d[0] > d[1]  # small matrices are denser
    with pytest.raises(ValueError, match="layer distribution 'er'"):
        layer_densities(shapes, 0.9, "er")


@pytest.mark.parametrize("method", ["static", "rigl", "set"])
def test_sparsity_is_held_at_every_step_and_masks_change_only_for_dynamic(method):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    m = build_method(model, {"method": method, "target": 0.75, "freq": 5, "end": 40}, steps_per_epoch=10,
                     total_steps=50, optimizer=opt)
    first = m.masks.state_dict()
    per_layer = {t.name: m.masks.block_sparsity(t.name) for t in m.targets}
    assert m.sparsity() == pytest.approx(0.75, abs=0.01)

    def check(step):
        for t in m.targets:
            assert m.masks.block_sparsity(t.name) == per_layer[t.name]
            p = dict(model.named_parameters())[t.name]
            assert (p[~m.masks.keep(t.name)] == 0).all()

    run(model, m, opt, 0, 50, check=check)
    changed = any(not torch.equal(first[n], v) for n, v in m.masks.state_dict().items())
    assert changed == (method != "static")


def test_rigl_regrows_where_the_gradient_is_largest():
    lin = nn.Linear(8, 8, bias=False)
    rigl = DynamicSparsity(lin, (4, 4), 0.5, regrow="gradient", freq=1, end=100, alpha=0.5, init="magnitude")
    with torch.no_grad():
        lin.weight.copy_(torch.ones(8, 8))
        lin.weight[:4, :4] = 0.0
        lin.weight[4:, 4:] = 0.0
    rigl.masks.set_("weight", torch.tensor([[False, True], [True, False]]))
    rigl.masks.apply_()
    g = torch.zeros(8, 8)
    g[:4, :4] = 5.0  # the pruned top-left block has the largest gradient
    g[4:, 4:] = 1.0
    rigl.last_step = 0  # the next step (1) is an update: the gradient hook records block scores
    lin.weight.sum().backward()
    lin.weight.grad = None
    (lin.weight * g).sum().backward()
    with torch.no_grad():
        lin.weight[4:, :4] *= 0.5  # the weaker live block is dropped
    rigl.step(1)
    assert torch.equal(rigl.masks.block_masks["weight"], torch.tensor([[True, True], [False, False]]))


def test_masks_and_rng_survive_checkpoint_and_resume():
    torch.manual_seed(1)
    cfg = {"method": "set", "target": 0.6, "freq": 5, "end": 40}
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    m = build_method(model, cfg, steps_per_epoch=10, total_steps=50, optimizer=opt)
    run(model, m, opt, 0, 20)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), m.state_dict()))
    run(model, m, opt, 20, 45, seed=3)
    model2 = Net()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    m2 = build_method(model2, cfg, steps_per_epoch=10, total_steps=50, optimizer=opt2)
    model2.load_state_dict(saved[0]); opt2.load_state_dict(saved[1]); m2.load_state_dict(saved[2])
    run(model2, m2, opt2, 20, 45, seed=3)
    for n, v in m.masks.state_dict().items():
        assert torch.equal(v, m2.masks.state_dict()[n]), n
    for (n, p), (_, q) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.equal(p, q), n


def test_sparse_training_needs_a_target():
    with pytest.raises(ValueError, match="needs sparsity.target"):
        build_method(Net(), {"method": "rigl"}, steps_per_epoch=10, total_steps=50)
    with pytest.raises(ValueError, match="regrow 'grad'"):
        DynamicSparsity(Net(), (4, 4), 0.5, regrow="grad")
    assert isinstance(build_method(Net(), {"method": "static", "target": 0.5}, steps_per_epoch=1, total_steps=2),
                      StaticSparsity)
