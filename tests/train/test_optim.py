"""Optimizers and the learning-rate schedule (a pure function of the step)."""

import pytest
import torch

from bsrnn.train.config import OptimConfig, ScheduleConfig
from bsrnn.train.loop import lr_at, make_optimizer


def test_lr_warms_up_linearly_then_halves_on_schedule():
    optim, sched = OptimConfig(lr=1.0), ScheduleConfig(warmup_steps=4, decay_start=2, decay_every=3, decay_factor=0.5)
    per_epoch = 10
    assert [lr_at(s, optim, sched, per_epoch) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # epochs 0-1 at lr, 2-4 halved, 5-7 quartered
    assert [lr_at(e * per_epoch + 5, optim, sched, per_epoch) for e in range(8)] == [1, 1, .5, .5, .5, .25, .25, .25]


def test_no_warmup_and_no_decay():
    optim, sched = OptimConfig(lr=2e-3), ScheduleConfig(warmup_steps=0, decay_start=99)
    assert lr_at(0, optim, sched, 5) == lr_at(400, optim, sched, 5) == 2e-3


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_optimizers(name, cls):
    opt = make_optimizer(OptimConfig(name=name, lr=0.1, momentum=0.95), torch.nn.Linear(2, 2))
    assert isinstance(opt, cls)
    if name == "sgd":  # the paper's optimizer: SGD with Nesterov momentum
        assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.95
