"""The sparse runtime against PyTorch's own RNN/GRU/LSTM on the same block-sparse weights."""

import numpy as np
import pytest
import torch
from torch import nn

from bsrnn.inference import export_model, load, save
from bsrnn.inference.rnn import SparseRecurrent, _tanh, sparsify_


def block_prune_(module, block=4, keep=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if n.startswith("weight"):
                r, c = p.shape
                p.mul_((torch.rand(r // block, c // block, generator=g) < keep)
                       .repeat_interleave(block, 0).repeat_interleave(block, 1))
    return module


def assert_same(ref, out, lstm):
    torch.testing.assert_close(out[0], ref[0], atol=2e-5, rtol=1e-4)
    if lstm:
        torch.testing.assert_close(out[1][0], ref[1][0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out[1][1], ref[1][1], atol=2e-5, rtol=1e-4)
    else:
        torch.testing.assert_close(out[1], ref[1], atol=2e-5, rtol=1e-4)


MODULES = [(nn.GRU, {}), (nn.LSTM, {}), (nn.RNN, {}), (nn.RNN, {"nonlinearity": "relu"})]


@pytest.mark.parametrize("cls, kw", MODULES, ids=["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2])
def test_matches_torch(cls, kw, bidirectional, layers):
    torch.manual_seed(layers)
    dense = block_prune_(cls(12, 16, num_layers=layers, bidirectional=bidirectional, **kw))
    sparse = SparseRecurrent.from_module(dense, (4, 4))
    x = torch.randn(6, 3, 12)
    with torch.no_grad():
        assert_same(dense(x), sparse(x), cls is nn.LSTM)


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_batch_first_initial_state_and_unbatched(cls):
    torch.manual_seed(1)
    dense = block_prune_(cls(8, 12, num_layers=2, bidirectional=True, batch_first=True), block=4)
    sparse = SparseRecurrent.from_module(dense, (4, 4))
    x = torch.randn(5, 7, 8)  # (B, T, I)
    h0 = torch.randn(4, 5, 12)
    hx = (h0, torch.randn(4, 5, 12)) if cls is nn.LSTM else h0
    with torch.no_grad():
        assert_same(dense(x, hx), sparse(x, hx), cls is nn.LSTM)
        assert_same(dense(x[0]), sparse(x[0]), cls is nn.LSTM)  # unbatched (T, I)


def test_untiled_weights_fall_back_to_csr_exactly():
    torch.manual_seed(2)
    dense = block_prune_(nn.GRU(10, 6), block=2)  # 6 and 10 are not multiples of 4
    sparse = SparseRecurrent.from_module(dense, (4, 4))
    assert sparse.weights[0][0]["w_hh"].block == (1, 1)
    x = torch.randn(4, 2, 10)
    with torch.no_grad():
        assert_same(dense(x), sparse(x), False)


def test_clipped_relu():
    torch.manual_seed(3)
    dense = nn.RNN(8, 8, nonlinearity="relu")
    with torch.no_grad():
        dense.weight_ih_l0.mul_(10)
    sparse = SparseRecurrent.from_module(dense, (4, 4), clip=1.5)
    out, _ = sparse(torch.randn(5, 2, 8))
    assert out.max() == pytest.approx(1.5) and out.min() >= 0
    ref, _ = SparseRecurrent.from_module(dense, (4, 4))(torch.randn(5, 2, 8))
    assert ref.max() > 1.5


def test_fast_tanh_is_accurate():
    x = np.linspace(-30, 30, 20001).astype(np.float32)
    err = max(abs(float(_tanh(v)) - np.tanh(float(v))) for v in x[::7])
    assert err < 5e-7


class SpeechLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(8, 12, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


def test_exported_model_runs_sparse(tmp_path):
    torch.manual_seed(4)
    model = SpeechLike()
    block_prune_(model.rnn)
    x = torch.randn(7, 2, 8)
    with torch.no_grad():
        ref = model(x)
    path = save(export_model(model, (4, 4), include=["rnn.weight*"]), tmp_path / "m.safetensors")
    exp = load(path)
    assert sparsify_(model, exp) == ["rnn"]
    assert isinstance(model.rnn, SparseRecurrent)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="no recurrent module"):
        SparseRecurrent.from_exported(exp, "encoder")


def test_shape_mismatch_is_a_clear_error():
    dense = SparseRecurrent.from_module(nn.GRU(8, 8), (4, 4))
    w = dense.weights
    with pytest.raises(ValueError, match="should be"):
        SparseRecurrent("LSTM", 8, 8, w)


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM, nn.RNN])
def test_packed_sequences_stop_at_their_own_length(cls):
    torch.manual_seed(5)
    dense = block_prune_(cls(8, 12, num_layers=2, bidirectional=True))
    sparse = SparseRecurrent.from_module(dense, (4, 4))
    x = torch.randn(7, 4, 8)
    lengths = torch.tensor([5, 7, 2, 6])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        ref_out, ref_h = dense(packed)
        out, h = sparse(packed)
    ref_pad, _ = nn.utils.rnn.pad_packed_sequence(ref_out)
    pad, lens = nn.utils.rnn.pad_packed_sequence(out)
    assert lens.tolist() == lengths.tolist()
    torch.testing.assert_close(pad, ref_pad, atol=2e-5, rtol=1e-4)
    assert_same((ref_pad, ref_h), (pad, h), cls is nn.LSTM)


def test_whole_exported_speech_model_runs_sparse(tmp_path):
    """The hook for the speech model: export, load, swap its GRU, same log-probabilities."""
    ds2 = pytest.importorskip("bsrnn.models.deepspeech2")
    torch.manual_seed(6)
    model = ds2.build_model("gru128").eval()
    block_prune_(model.rnn, keep=0.2)
    feats, lengths = torch.randn(3, 60, 80), torch.tensor([60, 41, 23])
    with torch.no_grad():
        ref, ref_len = model(feats, lengths)
    exp = load(save(export_model(model, (4, 4), exclude=["output.*"]), tmp_path / "ds2.safetensors"))
    assert sparsify_(model, exp) == ["rnn"]
    with torch.no_grad():
        out, out_len = model(feats, lengths)
    assert torch.equal(out_len, ref_len)
    for b, n in enumerate(out_len.tolist()):  # padding frames past each length are not compared
        torch.testing.assert_close(out[:n, b], ref[:n, b], atol=1e-4, rtol=1e-4)
