"""DeepSpeech2 models: output lengths, padding isolation, prunable weights, presets."""

import pytest
import torch

from bsrnn.models import PRESETS, ClippedReLURNN, build_model, count_parameters
from bsrnn.models.deepspeech2 import reverse_within_lengths
from bsrnn.models.recurrent import GRUScan, length_mask, padded_recurrent
from bsrnn.sparsity import select_targets

SMALL = dict(hidden=16, layers=2, conv_channels=4)


@pytest.mark.parametrize("rnn_type", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("t", [1, 2, 3, 7, 50, 51])
def test_output_lengths_follow_the_conv_arithmetic(rnn_type, t):
    model = build_model(None, rnn_type=rnn_type, **SMALL).eval()
    log_probs, out_lengths = model(torch.randn(1, t, 80), torch.tensor([t]))
    expected = (t - 1) // 2 + 1  # time stride 2, "same" padding: ceil(t / 2)
    assert out_lengths.tolist() == [expected]
    assert log_probs.shape == (expected, 1, 29)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(expected, 1), atol=1e-5)


@pytest.mark.parametrize("rnn_type,lookahead", [("rnn", 0), ("gru", 0), ("gru", 3), ("lstm", 0)])
def test_padding_does_not_change_an_utterance(rnn_type, lookahead):
    torch.manual_seed(0)
    model = build_model(None, rnn_type=rnn_type, lookahead=lookahead, **SMALL).eval()
    lengths = torch.tensor([41, 17, 30])
    feats = torch.randn(3, 41, 80)
    feats[1, 17:] = 1e3  # garbage in the padding must not matter
    batch_lp, batch_len = model(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone_lp, alone_len = model(feats[i:i + 1, :n], lengths[i:i + 1])
        assert int(alone_len) == int(batch_len[i])
        torch.testing.assert_close(batch_lp[: int(alone_len), i], alone_lp[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls,kw,scan", [(torch.nn.GRU, {}, True), (torch.nn.GRU, {}, False), (torch.nn.LSTM, {}, False),
                                         (torch.nn.RNN, {}, False), (torch.nn.RNN, {"nonlinearity": "relu"}, False),
                                         (torch.nn.GRU, {"bias": False}, True), (torch.nn.GRU, {"bias": False}, False)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_padded_recurrent_equals_the_packed_module_in_outputs_and_gradients(cls, kw, scan, bidirectional):
    torch.manual_seed(2)
    rnn = cls(6, 5, 2, bidirectional=bidirectional, **kw)
    lengths = torch.tensor([9, 4, 7, 1])
    x = torch.randn(9, 4, 6)
    valid = length_mask(lengths, 9).t()[:, :, None]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    ref = torch.nn.utils.rnn.pad_packed_sequence(rnn(packed)[0], total_length=9)[0]
    (ref * torch.linspace(0.5, 1.5, ref.shape[-1])).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in rnn.named_parameters()}
    rnn.zero_grad()
    out = padded_recurrent(rnn, x, lengths, scan=scan)
    (out * torch.linspace(0.5, 1.5, out.shape[-1])).sum().backward()
    torch.testing.assert_close(out, ref * valid, atol=1e-6, rtol=1e-5)  # padding frames are zero
    assert not out[~valid.expand_as(out)].any()
    for n, p in rnn.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_gru_scan_backward_passes_gradcheck():
    torch.manual_seed(3)
    d, n, hid, t = 2, 3, 4, 5
    args = (torch.randn(t, d, n, 3 * hid, dtype=torch.float64, requires_grad=True),
            0.5 * torch.randn(d, hid, 3 * hid, dtype=torch.float64, requires_grad=True),
            torch.randn(d, 1, hid, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(GRUScan.apply, args)


def test_gru_scan_says_which_shapes_it_wants():
    gi = torch.randn(3, 2, 1, 12)
    with pytest.raises(ValueError, match="b_n"):
        GRUScan.apply(gi, torch.randn(2, 4, 12), torch.randn(2, 1, 12))  # a whole b_hh, not its n part


def test_padded_recurrent_refuses_what_it_cannot_run_exactly():
    with pytest.raises(ValueError, match="batch_first|projection|dropout"):
        padded_recurrent(torch.nn.LSTM(4, 4, batch_first=True), torch.randn(2, 3, 4), torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="projection"):
        padded_recurrent(torch.nn.LSTM(4, 4, proj_size=2), torch.randn(3, 2, 4), torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="scan=True needs a GRU"):
        padded_recurrent(torch.nn.LSTM(4, 4), torch.randn(3, 2, 4), torch.tensor([3, 3]), scan=True)


def test_padding_changes_nothing_even_for_the_unidirectional_gru_with_row_conv():
    torch.manual_seed(1)
    model = build_model(None, rnn_type="gru", bidirectional=False, lookahead=5, **SMALL).eval()
    feats, lengths = torch.randn(2, 33, 80), torch.tensor([33, 20])
    lp, _ = model(feats, lengths)
    alone, _ = model(feats[1:, :20], lengths[1:])
    torch.testing.assert_close(lp[:10, 1], alone[:, 0], atol=1e-5, rtol=1e-5)


def test_clipped_relu_rnn_matches_a_hand_written_recurrence():
    torch.manual_seed(2)
    rnn = ClippedReLURNN(5, 4, 1, bidirectional=True)
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(8)  # large weights so the clip at 20 and at 0 are both exercised
    x, lengths = torch.randn(6, 2, 5), torch.tensor([6, 4])
    y = rnn(x, lengths)  # (T, N, 2H)
    for n, length in enumerate(lengths.tolist()):
        for sfx, steps, half in (("", range(length), slice(0, 4)), ("_reverse", reversed(range(length)), slice(4, 8))):
            w, u, b = (getattr(rnn, f"{k}_l0{sfx}") for k in ("weight_ih", "weight_hh", "bias"))
            h = torch.zeros(4)
            for t in steps:
                h = torch.clamp(w @ x[t, n] + u @ h + b, 0, 20)
                torch.testing.assert_close(y[t, n, half], h, atol=1e-4, rtol=1e-5)
        assert torch.all(y[length:, n] == 0)
    assert y.max() == 20 and y.min() == 0


def test_reverse_within_lengths_is_an_involution_on_valid_frames():
    x = torch.arange(12.0).view(4, 3)  # (T, N)
    r = reverse_within_lengths(x, torch.tensor([4, 2, 1]))
    assert r[:, 0].tolist() == [9, 6, 3, 0]
    assert r[:2, 1].tolist() == [4, 1] and r[:1, 2].tolist() == [2]
    assert torch.equal(reverse_within_lengths(r, torch.tensor([4, 2, 1])), x)


@pytest.mark.parametrize("rnn_type", ["rnn", "gru", "lstm"])
def test_recurrent_matrices_are_prunable_and_the_output_layer_can_be_excluded(rnn_type):
    model = build_model(None, rnn_type=rnn_type, **SMALL, fc_dim=8)
    names = [t.name for t in select_targets(model, (4, 4), exclude=["output.*"])]
    for k in range(2):
        for sfx in ("", "_reverse"):
            assert f"rnn.weight_ih_l{k}{sfx}" in names and f"rnn.weight_hh_l{k}{sfx}" in names
    assert "fc.weight" in names  # the paper prunes fully connected layers
    assert not any(n.startswith(("output.", "conv.")) or "bias" in n for n in names)
    gates = {t.name: t.gates for t in select_targets(model, (4, 4), exclude=["output.*"])}
    assert gates["rnn.weight_hh_l0"] == {"rnn": 1, "gru": 3, "lstm": 4}[rnn_type]


def test_presets_build_and_the_paper_gru_has_its_stated_matrix_shape():
    for name in ("gru128", "rnn64", "lstm128"):
        assert count_parameters(build_model(name))[0] > 0
    gru = PRESETS["gru2560"]
    assert (gru.hidden, gru.layers, gru.bidirectional) == (2560, 3, False)
    assert PRESETS["rnn1760"].layers == 7
    with torch.device("meta"):  # 115 M-parameter shapes without allocating them
        model = build_model("gru2560")
    assert tuple(model.rnn.weight_hh_l0.shape) == (7680, 2560)  # docs/method.md §15


def test_unknown_preset_and_field_are_clear_errors():
    with pytest.raises(ValueError, match="preset 'gru999' is unknown; presets are .*gru128"):
        build_model("gru999")
    with pytest.raises(ValueError, match="model field 'width' is unknown"):
        build_model("gru128", width=3)
    with pytest.raises(ValueError, match="rnn_type 'tcn' is not one of rnn, gru, lstm"):
        build_model(None, rnn_type="tcn")
