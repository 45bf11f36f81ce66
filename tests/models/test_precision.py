"""Mixed precision (bf16 with fp32 state and master weights) and time subsampling of DeepSpeech2."""

import pytest
import torch
import torch.nn.functional as F

from bsrnn.models import build_model
from bsrnn.models import precision as prec
from bsrnn.models.recurrent import GRUScan

SMALL = dict(hidden=16, layers=2, conv_channels=4)


def _batch(seed=0, n=3, t=41):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t, 80, generator=g), torch.tensor([t, 17, 30][:n])


@pytest.mark.parametrize("rnn_type,lookahead", [("rnn", 0), ("gru", 0), ("gru", 3), ("lstm", 0)])
@pytest.mark.parametrize("recurrent", ["fp32", "bf16"])
def test_bf16_model_is_close_to_fp32_and_returns_fp32_log_probs(rnn_type, lookahead, recurrent):
    torch.manual_seed(0)
    model = build_model(None, rnn_type=rnn_type, lookahead=lookahead, **SMALL).eval()
    feats, lengths = _batch()
    ref, ref_len = model(feats, lengths)
    model.set_precision("bf16", recurrent)
    assert model.recurrent_precision == ("fp32" if rnn_type == "lstm" else recurrent)  # the fused LSTM stays fp32
    out, out_len = model(feats, lengths)
    assert out.dtype == torch.float32 and torch.equal(out_len, ref_len)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    valid = torch.arange(out.shape[0])[:, None] < out_len[None, :]
    err = (out.exp() - ref.exp()).abs()[valid].max()  # probabilities, bf16 has ~3 significant digits
    assert 0 < err < 0.03, err
    torch.testing.assert_close(out.exp().sum(-1)[valid], torch.ones(int(valid.sum())), atol=1e-5, rtol=0)


def test_bf16_training_step_gives_fp32_gradients_close_to_fp32():
    torch.manual_seed(0)
    model = build_model(None, rnn_type="gru", **SMALL)
    feats, lengths = _batch()
    targets, tl = torch.randint(1, 29, (3, 5)), torch.full((3,), 5)

    def grads():
        model.zero_grad()
        lp, ol = model(feats, lengths)
        F.ctc_loss(lp, targets, ol, tl).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ref = grads()
    model.set_precision("bf16", "bf16")
    low = grads()
    for n, g in low.items():
        assert g.dtype == torch.float32
        rel = (g - ref[n]).norm() / ref[n].norm().clamp_min(1e-12)
        assert rel < 0.1, (n, float(rel))


def test_gru_scan_with_bf16_products_keeps_fp32_state_and_matches_fp32():
    torch.manual_seed(0)
    t, d, n, h = 9, 2, 3, 12
    gi = torch.randn(t, d, n, 3 * h, requires_grad=True)
    u = (0.3 * torch.randn(d, h, 3 * h)).requires_grad_()
    b = torch.randn(d, 1, h, requires_grad=True)  # b_hh's n part (r, z are folded into gi)
    ref = GRUScan.apply(gi, u, b)
    low = GRUScan.apply(gi, u, b, torch.bfloat16)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, atol=3e-2, rtol=0)
    g = torch.randn_like(ref)
    ref_g = torch.autograd.grad(ref, (gi, u, b), g)
    low_g = torch.autograd.grad(low, (gi, u, b), g)
    for a, r in zip(low_g, ref_g):
        assert a.dtype == torch.float32
        assert (a - r).norm() / r.norm() < 0.03


def test_bf16_model_still_keeps_padding_out_of_an_utterance():
    torch.manual_seed(0)
    model = build_model(None, rnn_type="gru", **SMALL).eval().set_precision("bf16", "bf16")
    feats, lengths = _batch()
    feats[1, 17:] = 1e3
    batch_lp, batch_len = model(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone, alone_len = model(feats[i:i + 1, :n], lengths[i:i + 1])
        # bf16 GEMMs may block differently for another batch size: equal up to bf16 rounding
        torch.testing.assert_close(batch_lp[: int(alone_len), i].exp(), alone[:, 0].exp(), atol=2e-2, rtol=0)


def test_precision_settings_are_checked_and_auto_picks_by_width():
    model = build_model(None, rnn_type="gru", **SMALL)
    with pytest.raises(ValueError, match="precision must be one of"):
        model.set_precision("fp16")
    with pytest.raises(ValueError, match="recurrent precision must be one of"):
        model.set_precision("bf16", "int8")
    assert model.set_precision("bf16", "auto").recurrent_precision == "fp32"  # 16 units: below the threshold
    assert prec.resolve_recurrent("auto", "bf16", prec.RECURRENT_BF16_MIN_WIDTH) == "bf16"
    assert prec.resolve_recurrent("bf16", "fp32", 4096) == "fp32"  # fp32 training is fp32 throughout
    assert prec.resolve("auto") == prec.default_precision()
    assert prec.default_precision() == ("bf16" if prec.native_bf16() else "fp32")
    with pytest.raises(ValueError, match="precision must be one of auto"):
        prec.resolve("half")


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("t", [1, 5, 41, 50])
def test_subsampling_stacks_frames_and_divides_output_lengths(k, t):
    model = build_model(None, rnn_type="gru", subsample=k, **SMALL).eval()
    lp, ol = model(torch.randn(1, t, 80), torch.tensor([t]))
    conv = (t - 1) // 2 + 1
    assert ol.tolist() == [-(-conv // k)]
    assert lp.shape == (ol.item(), 1, 29)
    assert model.rnn.input_size == k * model.conv.out_dim


@pytest.mark.parametrize("k", [2, 3])
def test_subsampling_keeps_padding_out_of_an_utterance(k):
    torch.manual_seed(0)
    model = build_model(None, rnn_type="gru", subsample=k, **SMALL).eval()
    feats, lengths = _batch()
    feats[1, 17:] = 1e3
    batch_lp, batch_len = model(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone, alone_len = model(feats[i:i + 1, :n], lengths[i:i + 1])
        assert int(alone_len) == int(batch_len[i])
        torch.testing.assert_close(batch_lp[: int(alone_len), i], alone[:, 0], atol=1e-5, rtol=1e-5)


def test_stack_frames_puts_consecutive_frames_side_by_side():
    model = build_model(None, rnn_type="gru", subsample=3, **SMALL)
    x = torch.arange(7.0).view(7, 1, 1).expand(7, 2, 2)  # (T, N, C), frame t holds t
    y = model.stack_frames(x)
    assert y.shape == (3, 2, 6)
    assert y[0, 0].tolist() == [0, 0, 1, 1, 2, 2] and y[2, 1].tolist() == [6, 6, 0, 0, 0, 0]


def test_subsample_must_be_positive():
    with pytest.raises(ValueError, match="subsample must be >= 1"):
        build_model(None, rnn_type="gru", subsample=0, **SMALL)
