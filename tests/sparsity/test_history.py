"""The mask-update history: typed records, plain dicts in checkpoints, old positional rows still load."""

import copy
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bsrnn.models import count_parameters as models_count_parameters
from bsrnn.models.deepspeech2 import count_parameters as ds2_count_parameters
from bsrnn.models.lm import RecurrentLM, count_params
from bsrnn.sparsity import (KINDS, GroupLasso, LayerSparsity, MaskSwap, MaskUpdate, build_method,
                            count_parameters)

RUNS = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce" / "runs"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(8, 16)
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


def train(model, method, optimizer, start, stop, seed=0):
    g = torch.Generator().manual_seed(seed)
    for step in range(start, stop):
        (model(torch.randn(5, 3, 8, generator=g)).square().mean() + method.penalty()).backward()
        optimizer.step()
        optimizer.zero_grad()
        method.step(step)


def as_old_checkpoint(state: dict) -> dict:
    """What the code before the typed records wrote: positional float rows."""
    old = copy.deepcopy(state)
    if state["method"] == "dynamic":
        old["history"] = [[float(r["step"]), 0.0, r["drop_fraction"], r["sparsity"]] for r in state["history"]]
    else:
        old["history"] = [[float(r["step"]), float(KINDS.index(r["kind"])), r["threshold"], r["sparsity"]]
                          for r in state["history"]]
    old["layer_history"] = {n: [[float(r["step"]), r["sparsity"]] for r in rows]
                            for n, rows in state["layer_history"].items()}
    return old


@pytest.mark.parametrize("cfg", [{"method": "bp", "target": 0.5, "freq": 5, "start": 5, "ramp": 15, "end": 30},
                                 {"method": "rigl", "target": 0.5, "freq": 5, "end": 30}])
def test_old_checkpoints_with_positional_rows_load_and_continue_identically(cfg):
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    method = build_method(model, cfg, steps_per_epoch=5, total_steps=40, optimizer=optimizer)
    train(model, method, optimizer, 0, 20)
    state = method.state_dict()
    record = MaskSwap if cfg["method"] == "rigl" else MaskUpdate
    assert method.history and all(type(r) is record for r in method.history)
    assert all(isinstance(r, dict) for r in state["history"])
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # plain data: loads without running code
    assert loaded["history"] == state["history"] and loaded["layer_history"] == state["layer_history"]
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    resumed = []
    for form in (state, as_old_checkpoint(state)):
        model2 = Net()
        opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
        model2.load_state_dict(saved[0])
        opt2.load_state_dict(copy.deepcopy(saved[1]))  # Adam adopts the state tensors it is given
        m2 = build_method(model2, cfg, steps_per_epoch=5, total_steps=40, optimizer=opt2)
        m2.load_state_dict(form)
        assert m2.history == method.history and m2.layer_history == method.layer_history
        train(model2, m2, opt2, 20, 40, seed=1)
        resumed.append((model2, m2))
    (a, ma), (b, mb) = resumed
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    assert ma.history == mb.history and ma.layer_history == mb.layer_history
    for n, m in ma.masks.state_dict().items():
        assert torch.equal(m, mb.masks.state_dict()[n]), n


def test_records_name_their_fields_and_read_the_old_rows():
    u = MaskUpdate(300, "non_recurrent", 0.02, 0.4)
    assert MaskUpdate.from_state(u.to_dict()) == u and u.to_dict()["kind"] == "non_recurrent"
    assert MaskUpdate.from_state([300.0, 1.0, 0.02, 0.4]) == u
    assert MaskSwap.from_state([100.0, 0.0, 0.15, 0.9]) == MaskSwap(100, 0.15, 0.9)
    assert LayerSparsity.from_state([140.0, 0.25]) == LayerSparsity(140, 0.25)
    assert LayerSparsity.from_state({"step": 140, "sparsity": 0.25}).step == 140
    with pytest.raises(ValueError, match=r"old-style MaskUpdate row holds 4 values \[step, kind index"):
        MaskUpdate.from_state([1.0, 0.0, 0.1])
    with pytest.raises(ValueError, match="kind index must be 0..1, got 2.0"):
        MaskUpdate.from_state([1.0, 2.0, 0.1, 0.5])
    with pytest.raises(ValueError, match="MaskSwap record has the fields drop_fraction, sparsity, step, got"):
        MaskSwap.from_state({"step": 1, "sparsity": 0.5})
    with pytest.raises(ValueError, match="mask update kind 'conv' is not one of"):
        MaskUpdate(1, "conv", 0.1, 0.5)
    with pytest.raises(ValueError, match="must be a dict or a list, got str"):
        LayerSparsity.from_state("140,0.25")
    with pytest.raises(AttributeError):
        u.step = 3  # frozen


def test_the_committed_run_evidence_still_reads():
    files = sorted(RUNS.glob("*/*.json"))
    assert files, f"no saved runs under {RUNS}"
    for f in files:
        for name, rows in json.loads(f.read_text()).get("layer_history", {}).items():
            points = [LayerSparsity.from_state(r) for r in rows]
            assert all(0.0 <= p.sparsity <= 1.0 for p in points), (f.name, name)
            assert [p.step for p in points] == sorted(p.step for p in points), (f.name, name)


def test_prune_below_is_the_action_and_finalize_its_old_name():
    def make():
        model = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0.01, 0], [0, 0, 0, 0.02]]))
        return model, GroupLasso(model, (2, 2), lambda_g=1e-3)
    (a, gl_a), (b, gl_b) = make(), make()
    assert gl_a.prune_below(0.05) == gl_b.finalize(0.05) == 0.75
    assert torch.equal(a.weight, b.weight) and gl_a.thresholds == gl_b.thresholds
    a2, gl = make()
    gl.finish()  # no final_threshold: the end-of-training hook changes nothing
    assert gl.sparsity() == 0.0 and a2.weight[3, 3] == 0.02


def test_one_parameter_counter_for_every_model():
    assert models_count_parameters is ds2_count_parameters is count_params is count_parameters
    lm = RecurrentLM(30, emb=16, hidden=16, tie=True)
    with torch.no_grad():
        lm.decoder.bias.zero_()
    total = sum(p.numel() for n, p in lm.named_parameters())
    assert count_parameters(lm) == (total, total - 30)  # the tied matrix once, the zeroed bias not nonzero
