"""Streaming equals offline: the same frames, log-probabilities and text, whatever the chunking."""

import numpy as np
import pytest
import torch

from bsrnn.data.features import LogMel
from bsrnn.inference.stream import Framer, StreamingFeatures
from bsrnn.inference.transcribe import Transcriber


def wave(seconds=2.3, seed=0):
    """A chirp with noise bursts: features that change from frame to frame."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.05 * rng.standard_normal(t.size)
    x[int(0.8 * 16000):int(1.1 * 16000)] *= 4 * rng.random()
    return x.astype(np.float32)


def test_framer_matches_a_padded_convolution_for_any_chunking():
    x = torch.randn(1, 1, 37, 3)
    w = torch.randn(2, 1, 5, 3)
    ref = torch.nn.functional.conv2d(x, w, stride=(2, 1), padding=(2, 0))
    for sizes in ([37], [1] * 37, [3, 10, 1, 23], [6, 6, 6, 6, 6, 7]):
        fr, outs, i = Framer(5, 2, 2, 2, 2), [], 0
        for n in sizes:
            seg = fr.push(x[:, :, i:i + n])
            i += n
            if seg is not None:
                outs.append(torch.nn.functional.conv2d(seg, w, stride=(2, 1)))
        seg = fr.push(None, final=True)
        if seg is not None:
            outs.append(torch.nn.functional.conv2d(seg, w, stride=(2, 1)))
        torch.testing.assert_close(torch.cat(outs, 2), ref)


def test_streamed_features_are_the_offline_frames():
    lm, x = LogMel(), wave()
    from bsrnn.data.features import FeatureStats

    stats = FeatureStats(torch.zeros(80), torch.ones(80))
    ref = lm(x)
    for chunk in (160, 333, 3200, len(x)):
        sf = StreamingFeatures(lm, stats)
        out = [sf.push(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [sf.push(None, final=True)]
        torch.testing.assert_close(torch.cat(out), ref, atol=1e-4, rtol=1e-5)


CASES = {"gru-rowconv": ("gru64u", {}), "rnn-clipped": ("rnn64", {"bidirectional": False, "lookahead": 3}),
         "lstm-subsample-fc": ("lstm128", {"hidden": 16, "layers": 2, "bidirectional": False, "lookahead": 2,
                                           "subsample": 3, "fc_dim": 24, "seed": 4})}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("runtime", ["sparse", "dense"])
def test_streamed_log_probs_and_text_equal_offline(case, runtime, speech):
    preset, kw = CASES[case]
    tr = Transcriber(speech.exported(speech.random_model(preset, **kw)), runtime=runtime)
    x = wave()
    off = tr.transcribe(x, keep_log_probs=True)
    assert float(off.log_probs.std(0).max()) > 0.05 and len(set(off.log_probs.argmax(-1).tolist())) > 1
    for chunk_ms in (10, 130, 200, 500, 5000):
        pieces = []
        st = tr.transcribe_stream(x, chunk_ms=chunk_ms, keep_log_probs=True, on_text=pieces.append)
        assert st.log_probs.shape == off.log_probs.shape
        torch.testing.assert_close(st.log_probs, off.log_probs, atol=5e-5, rtol=1e-5)
        assert st.text == off.text == "".join(pieces)
        assert len(st.chunk_latency_ms) == -(-len(x) // int(chunk_ms * 16)) + 1


def test_text_is_emitted_before_the_end_of_the_audio(speech):
    tr = Transcriber(speech.exported(speech.random_model("gru64u")))
    s, x = tr.stream(), wave(3.0)
    early = "".join(s.accept(x[i:i + 3200]) for i in range(0, len(x) // 2, 3200))
    assert early and tr.transcribe(x).text.startswith(early)
    assert tr.lookahead_ms() < 200  # STFT half window + conv context + row conv (4 frames of 20 ms)


def test_bidirectional_models_refuse_to_stream(speech):
    tr = Transcriber(speech.exported(speech.random_model("gru32")))
    assert not tr.streamable
    with pytest.raises(ValueError, match="bidirectional.*cannot stream"):
        tr.transcribe_stream(wave())
    with pytest.raises(ValueError, match="chunk_ms must be positive"):
        Transcriber(speech.exported(speech.random_model("gru64u"))).transcribe_stream(wave(), chunk_ms=0)
