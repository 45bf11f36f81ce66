"""Export to BSR and back: exact round trips, size, and clear errors for inconsistent files."""

import zlib
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from bsrnn.inference import export_model, load, save, to_bsr


def block_sparse(rows, cols, block, keep, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, c = block
    mask = (torch.rand(rows // r, cols // c, generator=g) < keep).repeat_interleave(r, 0).repeat_interleave(c, 1)
    return torch.randn(rows, cols, generator=g) * mask


def test_to_bsr_hand_example():
    # the paper's figure 1 layout: a 4×4 matrix in 2×2 blocks, two blocks nonzero
    w = torch.tensor([[1., 2., 0., 0.], [3., 0., 0., 0.], [0., 0., 0., 0.], [0., 0., 0., 5.]])
    m = to_bsr(w, 2)
    assert m.indptr.tolist() == [0, 1, 2] and m.indices.tolist() == [0, 1]
    assert m.values.tolist() == [[[1, 2], [3, 0]], [[0, 0], [0, 5]]]
    assert torch.equal(m.to_dense(), w)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([(1, 1), (2, 2), (4, 4), (2, 4), (8, 8)]), st.integers(1, 4), st.integers(1, 4),
       st.floats(0.0, 1.0), st.integers(0, 10**6))
def test_round_trip_property(block, nbr, nbc, keep, seed):
    w = block_sparse(nbr * block[0] * 2, nbc * block[1], block, keep, seed)
    m = to_bsr(w, block, gates=2)
    m.validate()
    assert torch.equal(m.to_dense(), w)
    assert m.nnzb == int((w.reshape(w.shape[0] // block[0], block[0], -1, block[1]) != 0).any(3).any(1).sum())


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3)
        self.rnn = nn.GRU(8, 8, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(16, 8)
        self.output = nn.Linear(8, 5)


def pruned_tiny():
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith(("rnn.weight", "fc.weight")):
                p.copy_(block_sparse(*p.shape, (4, 4), 0.4, seed=zlib.crc32(n.encode()) % 1000))  # str hash() differs per process
    return m


def test_model_file_round_trip(tmp_path):
    model = pruned_tiny()
    exp = export_model(model, (4, 4), exclude=["output.*"], config={"run": "tiny"})
    assert set(exp.sparse) == {f"rnn.weight_{k}_l{i}{s}" for k in ("ih", "hh") for i in (0, 1) for s in ("", "_reverse")} | {"fc.weight"}
    assert exp.sparse["rnn.weight_hh_l0"].gates == 3
    path = save(exp, tmp_path / "m.safetensors")
    back = load(path)
    ref = model.state_dict()
    sd = back.state_dict()
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert back.config == {"run": "tiny"} and back.modules["rnn"]["type"] == "GRU"
    fresh = Tiny()
    fresh.load_state_dict(sd)  # the whole model rebuilds from the file
    assert not list(tmp_path.glob("*.tmp"))


def test_size_report_ratio_at_90_percent():
    nbr = nbc = 44
    rng = np.random.default_rng(0)
    mask = np.zeros(nbr * nbc, bool)
    mask[rng.choice(nbr * nbc, nbr * nbc // 10, replace=False)] = True
    w = torch.randn(176, 176) * torch.from_numpy(np.kron(mask.reshape(nbr, nbc), np.ones((4, 4)))).float()
    lin = nn.Linear(176, 176)
    with torch.no_grad():
        lin.weight.copy_(w)
    rep = export_model(lin, (4, 4)).size_report()
    assert rep[0]["ratio"] >= 9.0 and rep[-1]["ratio"] >= 9.0


def _rewrite(path, mutate_arrays=None, mutate_header=None):
    arrays = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        head = json.loads(f.metadata()["bsrnn"])
    if mutate_arrays:
        mutate_arrays(arrays)
    if mutate_header:
        mutate_header(head)
    save_file(arrays, str(path), metadata={"bsrnn": json.dumps(head)})


@pytest.mark.parametrize("arrays, header, words", [
    (None, lambda h: h["sparse"]["fc.weight"].update(nnzb=999), "nnzb"),
    (None, lambda h: h["sparse"]["fc.weight"].update(shape=[16, 16]), "indptr"),
    (None, lambda h: h["dense"]["fc.bias"].update(shape=[3]), "fc.bias"),
    (lambda a: a.pop("fc.weight.indices"), None, "fc.weight.indices"),
    (lambda a: a.update(stray=torch.zeros(2)), None, "stray"),
    (lambda a: a["fc.weight.indices"].fill_(99), None, "block-column indices"),
    (None, lambda h: h.update(version=99), "v99"),
])
def test_header_array_disagreement_is_a_clear_error(tmp_path, arrays, header, words):
    path = save(export_model(pruned_tiny(), (4, 4), exclude=["output.*"]), tmp_path / "m.safetensors")
    _rewrite(path, arrays, header)
    with pytest.raises(ValueError, match=words):
        load(path)


def test_load_never_unpickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle ran')",))

    path = tmp_path / "evil.safetensors"
    torch.save({"x": Boom()}, path)
    with pytest.raises(ValueError, match="safetensors"):
        load(path)


def test_block_that_straddles_gates_is_rejected():
    with pytest.raises(ValueError, match="gate"):
        to_bsr(torch.zeros(3 * 6, 8), 4, gates=3)  # gate height 6 is not a multiple of 4


def test_cli_export_report(tmp_path, capsys):
    from bsrnn.cli import main

    path = save(export_model(pruned_tiny(), (4, 4), exclude=["output.*"]), tmp_path / "m.safetensors")
    assert main(["export-report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fc.weight" in out and "rnn.weight_hh_l1_reverse" in out and "smaller" in out
    assert main(["export-report", str(tmp_path / "missing.safetensors")]) == 2
