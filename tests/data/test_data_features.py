"""Log-mel front end against independent references; statistics; SpecAugment."""

import numpy as np
import pytest
import torch
from python_speech_features import base as psf
from python_speech_features import sigproc

from bsrnn.data.features import FeatureStats, LogMel, SpecAugment, hz_to_mel, mel_filterbank, mel_to_hz


def _speechlike(seconds=1.3, sr=16000, seed=0):
    """Harmonics with a moving pitch plus noise: energy in every mel band, not just one."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 40)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * x / np.abs(x).max() + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _hann(n):
    return torch.hann_window(n, dtype=torch.float64).numpy()


def test_shape_dtype_and_frame_count():
    lm = LogMel()
    for n in (1, 159, 160, 16000, 20811):
        f = lm(np.zeros(n, np.float32) + 0.1)
        assert f.shape == (1 + n // 160, 80) == (lm.num_frames(n), 80) and f.dtype == torch.float32
    assert torch.equal(lm(torch.from_numpy(_speechlike())), lm(_speechlike()))
    with pytest.raises(ValueError, match="non-empty 1-D wave"):
        lm(np.zeros((2, 100), np.float32))


def test_htk_mel_scale():
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.05)  # HTK: 1000 Hz is ~1000 mel
    assert mel_to_hz(hz_to_mel(np.array([20.0, 440.0, 7600.0]))) == pytest.approx([20.0, 440.0, 7600.0])


def test_filterbank_triangles():
    fb = mel_filterbank(40, 2048, 16000, 20, 7600)  # fine FFT grid: triangles well resolved
    bins = np.linspace(0, 8000, 1025)
    centres = mel_to_hz(np.linspace(hz_to_mel(20), hz_to_mel(7600), 42))[1:-1]
    assert fb.shape == (1025, 40) and fb.min() >= 0 and fb.max() <= 1
    for m in range(40):
        peak = bins[np.argmax(fb[:, m])]
        assert abs(peak - centres[m]) <= 8000 / 1024  # each filter peaks at its centre bin
    inner = (bins > centres[0]) & (bins < centres[-1])
    np.testing.assert_allclose(fb[inner].sum(1), 1.0, atol=1e-9)  # neighbours overlap to sum 1
    assert not fb[(bins < 20) | (bins > 7600)].any()
    with pytest.raises(ValueError, match="fmin < fmax"):
        mel_filterbank(80, 512, 16000, 20, 9000)


def test_matches_a_numpy_reference_exactly():
    """Independent framing, window, FFT and power in float64 (python_speech_features' sigproc)
    with the same filterbank: agreement to float32 rounding (measured max |diff| 5.6e-6 nats
    here, at most 2.9e-4 over 50 corpus utterances, where quiet frames amplify rounding)."""
    x = _speechlike()
    mine = LogMel()(x).numpy()
    padded = np.concatenate([np.zeros(256), x.astype(np.float64), np.zeros(256)])  # center=True
    frames = sigproc.framesig(padded[56:], 400, 160, _hann)  # the 400-sample window sits at 56 of 512
    power = sigproc.powspec(frames, 512) * 512  # psf scales |X|^2 by 1/NFFT
    ref = np.log(power @ mel_filterbank(80, 512, 16000, 20, 7600) + 1e-6)[: len(mine)]
    assert np.abs(mine - ref).max() < 1e-4


def test_agrees_with_python_speech_features_logfbank():
    """An independent filterbank. psf rounds its filter edges to whole FFT bins, so at n_fft=512
    its narrow low filters (80 mels are ~22 Hz apart below 200 Hz, bins 31 Hz) degenerate
    (correlation 0.25 here, 0.37 over 50 corpus utterances); on a 2048-point grid both approach the
    same triangles. Measured here: correlation 0.9997 and median |diff| 0.012 nats with 40
    mels, 0.998 and 0.027 with 80 (50 corpus utterances: 0.9996 / 0.016 and 0.9986 / 0.029)."""
    x = _speechlike().astype(np.float64)
    for n_mels, corr_min, median_max in ((40, 0.998, 0.05), (80, 0.995, 0.06)):
        mine = LogMel(n_mels=n_mels, n_fft=2048)(x.astype(np.float32)).numpy()
        # psf frames start at sample 0 without padding: its frame j is our frame j + 2 on x[120:]
        feat, _ = psf.fbank(x[120:], 16000, winlen=0.025, winstep=0.01, nfilt=n_mels, nfft=2048, lowfreq=20,
                            highfreq=7600, preemph=0, winfunc=_hann)
        ref = np.log(feat) + np.log(2048)
        t = min(len(ref) - 1, len(mine) - 2)
        a, b = mine[2:2 + t], ref[:t]
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > corr_min
        assert np.median(np.abs(a - b)) < median_max


def test_stats_normalise_and_roundtrip(tmp_path):
    feats = torch.randn(500, 80, dtype=torch.float64) * torch.linspace(0.5, 3, 80) + torch.linspace(-5, 5, 80)
    stats = FeatureStats.from_sums(feats.sum(0).numpy(), feats.square().sum(0).numpy(), 500, {"kind": "x"})
    z = stats.normalize(feats.float())
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-3
    stats.save(tmp_path / "stats.json")
    back = FeatureStats.load(tmp_path / "stats.json")
    assert torch.equal(back.mean, stats.mean) and torch.equal(back.std, stats.std)
    assert back.settings == {"kind": "x"} and back.count == 500
    with pytest.raises(ValueError, match="features have 40 bins but the statistics have 80"):
        stats.normalize(torch.zeros(3, 40))
    (tmp_path / "bad.json").write_text('{"mean": [0]}')
    with pytest.raises(ValueError, match=r"bad\.json: not a feature statistics file"):
        FeatureStats.load(tmp_path / "bad.json")
    const = FeatureStats.from_sums(np.full(2, 6.0), np.full(2, 12.0), 3)  # a constant bin: std 0
    assert torch.isfinite(const.normalize(torch.full((1, 2), 2.0))).all()


def test_spec_augment_masks_within_limits():
    feats = torch.randn(200, 80) + 5
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=20)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = aug(feats, generator=g)
        zero_cols = (out == 0).all(0).sum().item()
        zero_rows = (out == 0).all(1).sum().item()
        assert zero_cols <= 20 and zero_rows <= 40
        assert torch.equal(out[out != 0], feats[out != 0])  # only masked cells change
    assert not torch.equal(aug(feats, torch.Generator().manual_seed(1)), aug(feats, torch.Generator().manual_seed(2)))
    assert torch.equal(aug(feats, torch.Generator().manual_seed(3)), aug(feats, torch.Generator().manual_seed(3)))
    assert aug(torch.randn(3, 80)).shape == (3, 80)  # shorter than a mask: still fine
