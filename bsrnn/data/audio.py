"""Audio in and out: read any rate or channel count as 16 kHz mono, write WAVs atomically,
and the two signal steps of corpus synthesis (silence trimming, noise at a given SNR).

Every corpus this package handles ends up as 16 kHz mono float32 in [-1, 1], the input of
the log-mel front end (the paper's models consume 16 kHz spectrograms, §4.1). Files that
cannot become that (missing, empty, corrupt, shorter than a feature window) raise
``AudioError``, a ``ValueError`` whose message is one sentence naming the file, so importers
and datasets can count and skip them instead of crashing a long run.
"""

from __future__ import annotations

import io
import math
import os
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from ..atomic import open_atomic

SAMPLE_RATE = 16000
MIN_SECONDS = 0.1  # shorter than a few 25 ms windows: no usable frames for a conv front end


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the exact rational factor (22050 -> 16000 is 320/441)."""
    if orig_sr == target_sr:
        return wave
    # Imported here: scipy.signal takes 1-2 s to import, which was most of an "instant" re-run.
    from scipy.signal import resample_poly

    g = gcd(int(orig_sr), int(target_sr))
    out = resample_poly(wave, int(target_sr) // g, int(orig_sr) // g, axis=0)
    return out.astype(np.float32, copy=False)


def decode_audio(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, int]:
    """Decode an in-memory audio file (e.g. ``espeak-ng --stdout``) to float32 mono.

    espeak-ng streams a WAV whose size fields say 0xFFFFFFFF; libsndfile reads it to the end.
    """
    if not data:
        raise AudioError(f"{name}: no audio data (0 bytes).")
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{name}: not a readable audio stream ({e}).") from None
    return wave.mean(axis=1), int(sr)


def _existing_nonempty(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or ``AudioError`` if it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file does not exist.")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: audio file is empty (0 bytes).")
    return path


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE, *,
               min_seconds: float = MIN_SECONDS) -> np.ndarray:
    """Read ``path`` as float32 mono at ``target_sr``.

    Other sample rates are resampled and multi-channel audio is averaged to mono. Raises
    ``AudioError`` for a missing, empty, unreadable (corrupt or unknown format), non-finite or
    too-short (< ``min_seconds``) file.
    """
    path = _existing_nonempty(path)
    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: not a readable audio file, corrupt or unsupported format ({e}).") from None
    if wave.shape[0] == 0:
        raise AudioError(f"{path}: audio file contains no samples.")
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{path}: audio contains NaN or infinite samples.")
    seconds = wave.shape[0] / sr
    if seconds < min_seconds:
        raise AudioError(f"{path}: audio is {seconds:.3f} s long; at least {min_seconds:.2f} s is needed.")
    return np.ascontiguousarray(resample(wave, sr, target_sr), dtype=np.float32)


def audio_info(path: str | os.PathLike) -> tuple[float, int, int]:
    """(duration s, sample rate, channels) from the header only; raises ``AudioError``."""
    path = _existing_nonempty(path)
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: not a readable audio file, corrupt or unsupported format ({e}).") from None
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


def trim_silence(wave: np.ndarray, sr: int = SAMPLE_RATE, keep: float = 0.1,
                 floor_db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing audio quieter than ``floor_db`` below the loudest 10 ms frame,
    keeping ``keep`` seconds (zero-padded if the engine gave less) at each end."""
    hop = sr // 100
    n = len(wave) // hop
    if n == 0:
        return wave
    energy = (wave[: n * hop].reshape(n, hop) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 10 ** (floor_db / 10))
    if len(loud) == 0:
        return wave[:0]
    pad = int(round(keep * sr))
    speech = wave[loud[0] * hop:(loud[-1] + 1) * hop]
    return np.concatenate([np.zeros(pad, np.float32), speech, np.zeros(pad, np.float32)])


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``wave`` plus white Gaussian noise at ``snr_db`` (powers over the whole wave), scaled
    down if needed so that the sum stays inside [-1, 1) without clipping (scaling keeps the SNR)."""
    noise_power = np.mean(wave**2) / 10 ** (snr_db / 10)
    noisy = wave + rng.standard_normal(len(wave)) * math.sqrt(noise_power)
    noisy *= min(1.0, 0.999 / np.abs(noisy).max())
    return noisy.astype(np.float32)


def to_int16(wave: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] to 16-bit PCM, clipping (callers normalise gain first)."""
    return np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a 16-bit mono WAV atomically: a killed writer leaves no file under ``path``.

    The temp file (``bsrnn.atomic``) sits in the same folder and starts with a dot, so globbing
    ``*.wav`` never sees it. Not fsync'ed: a lost file is synthesized again.
    """
    path = Path(path)
    pcm = wave if wave.dtype == np.int16 else to_int16(np.asarray(wave, dtype=np.float32))
    with open_atomic(path, "wb", sync=False) as f:
        sf.write(f, pcm, sample_rate, subtype="PCM_16", format="WAV")
