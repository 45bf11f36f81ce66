"""Audio → text from an exported speech model: the ``Transcriber`` behind ``bsrnn transcribe``
(docs/deployment.md §2).

    tr = Transcriber.from_file("model.safetensors")          # safetensors + JSON header, no pickle
    r = tr.transcribe("hello.wav")                            # any rate, any channels: 16 kHz mono
    print(r.text, r.rtf, r.timings)
    r = tr.transcribe_stream("hello.wav", chunk_ms=200)       # unidirectional models only

Audio is read the way training read it (``bsrnn.data.audio.load_audio``: other rates resampled,
channels averaged; a missing, empty, corrupt, non-finite or too-short file is one ``AudioError``
sentence), features are the training front end's (``bsrnn.data.features.LogMel`` with the
settings and statistics stored in the file), and decoding is greedy CTC or, when the
``bsrnn.decode`` package is present, a CTC prefix beam search with an optional character LM.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bsrnn.data.audio import SAMPLE_RATE, AudioError, load_audio, resample
from bsrnn.data.features import FeatureStats, LogMel
from bsrnn.data.text import ctc_greedy_decode

from .export import ExportedModel, load
from .speech import SpeechModel, require_speech
from .stream import Stream

DECODERS = ("greedy", "beam")
FEATURE_KIND = "logmel-htk-v1"

__all__ = ["AudioError", "Transcriber", "Transcript", "DECODERS"]


@dataclass
class Transcript:
    """One utterance's text and what it cost: ``timings`` in seconds per stage, ``rtf`` the
    real-time factor (processing seconds per second of audio, audio loading excluded)."""

    text: str
    audio_seconds: float
    timings: dict = field(default_factory=dict)
    mode: str = "offline"
    chunk_ms: float | None = None
    chunk_latency_ms: list[float] = field(default_factory=list)  # streaming: compute time of each chunk
    log_probs: torch.Tensor | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        return sum(v for k, v in self.timings.items() if k != "load")

    @property
    def rtf(self) -> float:
        return self.seconds / max(self.audio_seconds, 1e-9)

    def to_dict(self) -> dict:
        out = {"text": self.text, "audio_s": round(self.audio_seconds, 4), "mode": self.mode,
               "timings_s": {k: round(v, 6) for k, v in self.timings.items()}, "rtf": round(self.rtf, 6)}
        if self.mode == "stream":
            lat = np.asarray(self.chunk_latency_ms) if self.chunk_latency_ms else np.zeros(1)
            out.update(chunk_ms=self.chunk_ms, chunks=len(self.chunk_latency_ms),
                       chunk_latency_ms={"median": round(float(np.median(lat)), 3),
                                         "p95": round(float(np.percentile(lat, 95)), 3),
                                         "max": round(float(lat.max()), 3)})
        return out


def _import_decode():
    try:
        import bsrnn.decode as decode
    except ImportError:
        raise ValueError("--decoder beam needs the bsrnn.decode package (CTC prefix beam search), which this "
                         "installation does not have; use --decoder greedy") from None
    return decode


def set_threads(threads: int) -> None:
    """One thread count for torch and the block-sparse ``cpu`` kernel (batch 1 gains little from more)."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    from .kernels import cpu

    torch.set_num_threads(threads)
    cpu.set_num_threads(threads)


class Transcriber:
    """An exported speech model ready to transcribe. ``runtime``: ``sparse`` (the recurrent layers
    on the block-sparse runtime) or ``dense`` (dense PyTorch); ``decoder``: ``greedy`` or ``beam``."""

    def __init__(self, exported: ExportedModel, *, runtime: str = "sparse", kernel: str = "cpu",
                 threads: int | None = 1, decoder: str = "greedy", beam: int = 16, lm=None, lm_weight: float = 0.5,
                 bonus: float = 1.0, name: str = "exported model"):
        sp = require_speech(exported, name)
        if decoder not in DECODERS:
            raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
        if threads is not None:
            set_threads(threads)
        feats = dict(sp["features"])
        if feats.get("kind") != FEATURE_KIND:
            raise ValueError(f"{name}: features of kind {feats.get('kind')!r}; this version computes {FEATURE_KIND!r}")
        self.logmel = LogMel(**{k: v for k, v in feats.items() if k != "kind"})
        self.stats = FeatureStats(sp["stats"]["mean"], sp["stats"]["std"], feats, sp["stats"].get("count", 0))
        self.alphabet, self.blank = sp["alphabet"], int(sp["blank"])
        self.sample_rate = self.logmel.sample_rate
        self.model = SpeechModel(exported, runtime=runtime, kernel=kernel)
        self.exported, self.name, self.runtime = exported, name, runtime
        self.decoder, self.beam, self.lm_weight, self.bonus = decoder, int(beam), float(lm_weight), float(bonus)
        self._decode = None
        self.lm = None
        if decoder == "beam":
            self._decode = _import_decode()
            self.lm = self._load_lm(lm) if lm is not None else None
        elif lm is not None:
            raise ValueError("a language model is used by --decoder beam only; add --decoder beam or drop --lm")

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kw) -> Transcriber:
        """Load an exported file (``bsrnn export``); keyword arguments as for the constructor."""
        return cls(load(path), name=str(path), **kw)

    def _load_lm(self, lm):
        if not isinstance(lm, (str, os.PathLike)):
            return lm  # already a scorer
        path = Path(lm)
        scorer = self._decode.CharLMScorer
        return scorer.from_export(path) if path.suffix == ".safetensors" else scorer.from_checkpoint(path)

    def warmup(self) -> None:
        """Run 0.3 s of silence through once, so that one-time costs (compiling the runtime's gate
        updates, preparing kernels) are not counted in the first file's timings."""
        silence = np.zeros(int(0.3 * self.sample_rate), np.float32)
        self.model.log_probs(self.features(silence))
        if self.streamable:
            s = self.stream()
            s.accept(silence)
            s.finish()

    @property
    def streamable(self) -> bool:
        return not self.model.bidirectional

    # ------------------------------------------------------------------ pieces
    def read(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """A path (read as training read audio) or an array of samples → float32 mono at the model's rate."""
        if isinstance(audio, (str, os.PathLike)):
            return load_audio(audio, self.sample_rate)
        wave = np.asarray(audio, np.float32)
        if wave.ndim == 2:  # (samples, channels), as soundfile gives
            wave = wave.mean(axis=1)
        if wave.ndim != 1 or wave.size == 0:
            raise AudioError(f"audio array of shape {wave.shape} is not a non-empty mono or (samples, channels) wave")
        if not np.all(np.isfinite(wave)):
            raise AudioError("audio array contains NaN or infinite samples")
        return np.ascontiguousarray(resample(wave, sample_rate or self.sample_rate, self.sample_rate), np.float32)

    def features(self, wave: np.ndarray) -> torch.Tensor:
        return self.stats.normalize(self.logmel(wave))

    def decode(self, log_probs: torch.Tensor) -> str:
        """(T, C) log-probabilities of one utterance → text, with this transcriber's decoder."""
        if self.decoder == "greedy":
            return ctc_greedy_decode(log_probs.argmax(-1))
        return self._decode.prefix_beam_search(log_probs.float().contiguous(), alphabet=self.alphabet, beam=self.beam,
                                               lm=self.lm, lm_weight=self.lm_weight, bonus=self.bonus, blank=self.blank)

    # ------------------------------------------------------------------ whole utterances
    def transcribe(self, audio, *, sample_rate: int | None = None, keep_log_probs: bool = False) -> Transcript:
        """One utterance offline: a path, or samples (mono, or (samples, channels)) at ``sample_rate``."""
        t0 = time.perf_counter()
        wave = self.read(audio, sample_rate)
        t1 = time.perf_counter()
        feats = self.features(wave)
        t2 = time.perf_counter()
        lp = self.model.log_probs(feats)
        t3 = time.perf_counter()
        text = self.decode(lp)
        t4 = time.perf_counter()
        return Transcript(text, len(wave) / self.sample_rate,
                          {"load": t1 - t0, "features": t2 - t1, "model": t3 - t2, "decode": t4 - t3},
                          log_probs=lp if keep_log_probs else None)

    def stream(self) -> Stream:
        """A new ``Stream`` (``accept(samples)`` / ``finish()``) for one utterance; unidirectional models only."""
        return Stream(self.model, self.logmel, self.stats, self.alphabet, self.blank)

    def transcribe_stream(self, audio, *, chunk_ms: float = 200, sample_rate: int | None = None,
                          keep_log_probs: bool = False, on_text=None) -> Transcript:
        """One utterance fed in chunks of ``chunk_ms`` as if it arrived live; ``on_text(piece)`` sees
        the text of each chunk as it is decoded (greedy). A beam decoder runs on the whole output
        at the end."""
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, not {chunk_ms}")
        t0 = time.perf_counter()
        wave = self.read(audio, sample_rate)
        t1 = time.perf_counter()
        s = self.stream()
        step = max(1, int(round(chunk_ms * self.sample_rate / 1000)))
        lat = []
        for i in range(0, len(wave), step):
            c0 = time.perf_counter()
            piece = s.accept(wave[i:i + step])
            lat.append((time.perf_counter() - c0) * 1e3)
            if on_text and piece:
                on_text(piece)
        c0 = time.perf_counter()
        piece = s.finish()
        lat.append((time.perf_counter() - c0) * 1e3)
        if on_text and piece:
            on_text(piece)
        t2 = time.perf_counter()
        text = s.text
        if self.decoder != "greedy":
            text = self.decode(s.log_probs())
        t3 = time.perf_counter()
        return Transcript(text, len(wave) / self.sample_rate, {"load": t1 - t0, "stream": t2 - t1, "decode": t3 - t2},
                          mode="stream", chunk_ms=float(chunk_ms), chunk_latency_ms=lat,
                          log_probs=s.log_probs() if keep_log_probs else None)

    def lookahead_ms(self) -> float:
        """The future audio an output frame waits for: STFT half window, conv context, row conv τ."""
        m, lm = self.model, self.logmel
        frames, stride = 0, 1  # in feature frames, and the time stride so far
        for c in m.convs:
            frames += (c["kernel"][0] - 1 - c["padding"][0]) * stride
            stride *= c["stride"][0]
        frames += (m.subsample - 1) * stride
        stride *= m.subsample
        frames += m.lookahead * stride
        return (frames * lm.hop_length + lm.n_fft // 2) * 1000 / lm.sample_rate
