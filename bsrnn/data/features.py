"""Log-mel filterbank features, their normalisation statistics, and SpecAugment.

The paper's models read spectrograms of 16 kHz audio with a 10 ms hop (§4.1, after Deep
Speech 2). We use 80 log-mel bins from ``torch.stft`` (torchaudio does not load beside torch
2.13, see docs/data.md §3), so the mel filterbank is written here: HTK mel scale, triangles
evaluated at the FFT bin frequencies, no area normalisation (as torchaudio's
``melscale_fbanks(norm=None, mel_scale="htk")``).

Frame ``t`` is centred on sample ``t * hop`` (``center=True`` with zero padding), so an
utterance of ``n`` samples has ``1 + n // hop`` frames; power is ``|STFT|**2`` of float audio
in [-1, 1]; the output is ``log(mel + 1e-6)``. ``FeatureStats`` holds a per-bin mean and std
computed on the training split and saved as JSON beside the model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json


def hz_to_mel(hz):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular filters, float64, on an HTK mel scale.

    Filter m rises linearly from mel point m to m+1 and falls to m+2, where the n_mels + 2
    points are evenly spaced in mel between ``fmin`` and ``fmax``.
    """
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"mel range must satisfy 0 <= fmin < fmax <= sample_rate/2; got fmin={fmin}, "
                         f"fmax={fmax}, sample_rate={sample_rate}.")
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    points = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = points[:-2], points[1:-1], points[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


class LogMel:
    """Wave (n,) at ``sample_rate`` -> log-mel features (1 + n // hop, n_mels), float32."""

    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, win_ms: float = 25, hop_ms: float = 10,
                 n_fft: int = 512, fmin: float = 20, fmax: float = 7600):
        self.n_mels, self.sample_rate, self.n_fft = n_mels, sample_rate, n_fft
        self.win_ms, self.hop_ms, self.fmin, self.fmax = win_ms, hop_ms, fmin, fmax
        self.win_length = int(round(sample_rate * win_ms / 1000))
        self.hop_length = int(round(sample_rate * hop_ms / 1000))
        if self.win_length > n_fft:
            raise ValueError(f"window of {self.win_length} samples does not fit n_fft={n_fft}.")
        self.window = torch.hann_window(self.win_length)  # periodic Hann, as torch and librosa use
        self.fbank = torch.from_numpy(mel_filterbank(n_mels, n_fft, sample_rate, fmin, fmax)).float()

    def settings(self) -> dict:
        """Everything that changes the numbers: keys a feature cache and is saved with stats."""
        return {"kind": "logmel-htk-v1", "n_mels": self.n_mels, "sample_rate": self.sample_rate,
                "win_ms": self.win_ms, "hop_ms": self.hop_ms, "n_fft": self.n_fft,
                "fmin": self.fmin, "fmax": self.fmax}

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def __call__(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32) if not torch.is_tensor(wave) else wave)
        if x.dim() != 1 or x.numel() == 0:
            raise ValueError(f"LogMel expects a non-empty 1-D wave, got shape {tuple(x.shape)}.")
        spec = torch.stft(x.float(), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=True, pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (F, T)
        return torch.log(power.T @ self.fbank + 1e-6)  # (T, n_mels)


class FeatureStats:
    """Per-bin mean and standard deviation of the training features (global CMVN)."""

    def __init__(self, mean, std, settings: dict | None = None, count: int = 0):
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-5)  # a dead bin must not divide by 0
        self.settings, self.count = settings or {}, int(count)
        if self.mean.shape != self.std.shape or self.mean.dim() != 1:
            raise ValueError(f"mean and std must be 1-D of equal length; got {tuple(self.mean.shape)} "
                             f"and {tuple(self.std.shape)}.")

    @classmethod
    def from_sums(cls, total: np.ndarray, total_sq: np.ndarray, count: int, settings: dict | None = None):
        """From float64 running sums over ``count`` frames (the numerically safe way to stream)."""
        if count < 2:
            raise ValueError(f"feature statistics need at least 2 frames, got {count}.")
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        return cls(mean, np.sqrt(var), settings, count)

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.mean.numel():
            raise ValueError(f"features have {features.shape[-1]} bins but the statistics have "
                             f"{self.mean.numel()}; were they computed with other feature settings?")
        return (features.float() - self.mean) / self.std

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        data = {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count,
                "settings": self.settings}
        write_json(data, path, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(data["mean"], data["std"], data.get("settings"), data.get("count", 0))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a feature statistics file ({type(e).__name__}: {e}); "
                             "expected JSON with 'mean' and 'std' lists.") from None


class SpecAugment:
    """Frequency and time masking (Park et al. 2019), applied to training features only.

    Each mask has a width drawn uniformly in [0, width] (time widths capped at a fifth of the
    utterance so short ones keep most frames) and is filled with 0, the mean of normalised
    features. Pass a ``torch.Generator`` for reproducible masks.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 10, time_masks: int = 2, time_width: int = 20):
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def __call__(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = features.clone()  # (T, F); callers keep their cached copy intact
        t, f = out.shape

        def mask(size: int, width: int, count: int, dim: int) -> None:
            for _ in range(count):
                w = int(torch.randint(0, max(0, min(width, size)) + 1, (1,), generator=generator))
                start = int(torch.randint(0, size - w + 1, (1,), generator=generator))
                out.narrow(dim, start, w).zero_()

        mask(f, self.freq_width, self.freq_masks, 1)
        mask(t, min(self.time_width, math.ceil(t / 5)), self.time_masks, 0)
        return out
