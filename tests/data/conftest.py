"""Shared fixtures for the data tests: a tiny real TTS corpus, made once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bsrnn.data.synth import synthesize

HAVE_TTS = all(shutil.which(t) for t in ("espeak-ng", "flite")) and Path("/usr/share/wordnet/data.noun").is_file()
TINY = dict(n_utts=10, dev_size=2, test_size=2, unseen_voice_test_size=2, seed=7, progress=False)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> tuple[Path, dict[str, Path], dict]:
    """(folder, manifests, the keyword arguments it was made with) of a 10-utterance corpus."""
    if not HAVE_TTS:
        pytest.skip("needs Debian espeak-ng, flite and wordnet-base")
    out = tmp_path_factory.mktemp("corpus")
    return out, synthesize(out, workers=2, **TINY), dict(TINY)


def _write_tone(path: Path, seconds: float = 0.5, sr: int = 16000, channels: int = 1, freq: float = 440.0,
               fmt: str | None = None) -> np.ndarray:
    """A sine tone file (real audio, no TTS needed); returns the samples written."""
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(path, data, sr, format=fmt)
    return data


@pytest.fixture
def write_tone():
    """Factory fixture (test modules cannot import conftest safely when several exist)."""
    return _write_tone


@pytest.fixture
def tts():
    """Skips a test when the TTS engines or WordNet are not installed."""
    if not HAVE_TTS:
        pytest.skip("needs Debian espeak-ng, flite and wordnet-base")
