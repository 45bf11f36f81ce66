"""A whole speech model from the exported file alone: the same log-probabilities as the torch model."""

import numpy as np
import pytest
import torch

from bsrnn.inference import load, save, sparsify_
from bsrnn.inference.rnn import SparseRecurrent
from bsrnn.inference.speech import SpeechModel
from bsrnn.inference.transcribe import Transcriber
from bsrnn.models import ClippedReLURNN

CASES = {
    "bidirectional-gru": ("gru32", {}),
    "unidirectional-gru-rowconv": ("gru64u", {}),
    "clipped-relu-rnn": ("rnn64", {}),
    "lstm-fc-subsample": ("lstm128", {"hidden": 16, "layers": 2, "fc_dim": 24, "subsample": 2}),
}


@pytest.mark.parametrize("case", CASES)
def test_exported_file_gives_the_torch_models_log_probs(case, tmp_path, speech):
    random_model, exported = speech.random_model, speech.exported
    preset, kw = CASES[case]
    model = random_model(preset, **kw)
    path = save(exported(model), tmp_path / "m.safetensors")
    exp = load(path)
    assert exp.version == 2 and exp.speech["architecture"]["rnn_type"] == model.spec.rnn_type
    x = torch.randn(83, 80)
    with torch.no_grad():
        ref, n = model(x[None], torch.tensor([83]))
    ref = ref[: int(n), 0]
    assert float(ref.std(0).max()) > 0.1  # outputs change from frame to frame: not a comparison of constants
    for runtime in ("sparse", "dense"):
        sm = SpeechModel(exp, runtime=runtime)
        if runtime == "sparse":
            assert isinstance(sm.rnn, SparseRecurrent)
        torch.testing.assert_close(sm.log_probs(x), ref, atol=2e-5, rtol=1e-5)


def test_sparsify_swaps_the_clipped_relu_rnn_and_keeps_the_output(speech):
    random_model, exported = speech.random_model, speech.exported
    model = random_model("rnn64")
    assert isinstance(model.rnn, ClippedReLURNN)
    feats, lengths = torch.randn(2, 70, 80), torch.tensor([70, 41])  # ragged: padding must not leak
    with torch.no_grad():
        ref, _ = model(feats, lengths)
        assert sparsify_(model, exported(model)) == ["rnn"]
        assert isinstance(model.rnn, SparseRecurrent) and model.rnn.clip == 20.0
        out, _ = model(feats, lengths)
    mask = (torch.arange(ref.shape[0])[:, None] < torch.tensor([36, 21])[None]).unsqueeze(-1)
    torch.testing.assert_close(out * mask, ref * mask, atol=2e-5, rtol=1e-5)


def test_a_clipped_relu_rnn_saturates_at_the_clip_in_the_sparse_runtime():
    rnn = ClippedReLURNN(4, 8, 1, bidirectional=False)
    with torch.no_grad():
        for p in rnn.parameters():
            p.fill_(1.0)
    sparse = SparseRecurrent.from_module(rnn, (4, 4))
    y, _ = sparse(torch.ones(5, 1, 4))
    assert float(y.max()) == 20.0
    torch.testing.assert_close(y, rnn(torch.ones(5, 1, 4), torch.tensor([5])))


def test_version_1_and_weights_only_files_are_refused_for_transcription(tmp_path, speech):
    random_model, exported = speech.random_model, speech.exported
    exp = exported(random_model("gru32"))
    exp.speech = None
    path = save(exp, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="--weights-only"):
        Transcriber.from_file(path)
    exp.version = 1
    with pytest.raises(ValueError, match="version-1 export.*re-export"):
        Transcriber(exp, name="old.safetensors")


def test_transcriber_reads_arrays_and_refuses_bad_options(speech):
    random_model, exported = speech.random_model, speech.exported
    tr = Transcriber(exported(random_model("gru64u")))
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    a = tr.transcribe(wave, keep_log_probs=True)
    stereo = tr.transcribe(np.stack([wave, wave], 1), keep_log_probs=True)  # (samples, channels)
    torch.testing.assert_close(stereo.log_probs, a.log_probs)
    assert a.audio_seconds == 0.5 and a.rtf > 0 and set(a.timings) == {"load", "features", "model", "decode"}
    with pytest.raises(ValueError, match="decoder 'viterbi'"):
        Transcriber(exported(random_model("gru32")), decoder="viterbi")
    with pytest.raises(ValueError, match="runtime 'gpu'"):
        Transcriber(exported(random_model("gru32")), runtime="gpu")
    with pytest.raises(ValueError, match="--decoder beam"):
        Transcriber(exported(random_model("gru32")), lm="lm.pt")
