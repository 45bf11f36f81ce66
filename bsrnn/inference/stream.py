"""Streaming recognition for unidirectional models: audio in chunks, text out as it is decoded
(docs/deployment.md §3).

Deep Speech 2's deployable design (the paper's GRU model: forward-only GRUs and a row
convolution looking τ frames ahead) needs only a bounded future, so it can run while audio
arrives. Every stage here produces exactly the frames the offline pass (``SpeechModel.log_probs``)
produces, once the input they depend on has arrived, and the rest at ``finish``:

- **features**: frame ``t`` of the centred STFT covers padded samples ``[t·hop, t·hop + n_fft)``
  (``n_fft // 2`` zeros before the first sample, as many after the last), so it is computed as
  soon as those samples are in; normalisation is per frame (fixed training statistics);
- **conv front end**: each layer's output frame ``j`` needs its input frames ``j·s − p … j·s − p + k − 1``
  (zeros outside the utterance), so each layer keeps the last few input frames in a buffer;
- **frame stacking** (``subsample`` k) waits for k frames;
- **recurrent layers** carry their state ``h`` (and an LSTM's ``c``) from chunk to chunk;
- **row convolution**: output ``t`` waits for recurrent output ``t + τ``;
- **greedy CTC** collapses repeats across chunk boundaries, so text is emitted incrementally.

The results equal the offline ones up to float rounding (the same operations on other tensor
sizes; tests/inference/test_stream.py). A bidirectional model's reverse direction needs the
whole utterance: it is refused in one sentence.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bsrnn.data.features import FeatureStats, LogMel

from .speech import SpeechModel


class Framer:
    """Sliding windows of ``kernel`` frames every ``stride`` frames over a stream of frames
    (tensors whose dimension ``dim`` is time), with ``left`` zero frames before the first and
    ``right`` after the last (at ``finish``): the framing of a padded convolution, chunk by chunk.

    ``push(x)`` returns the segment of (padded) input that covers every window now complete, or
    None; a convolution without time padding over that segment yields exactly those windows."""

    def __init__(self, kernel: int, stride: int, left: int, right: int, dim: int):
        self.kernel, self.stride, self.left, self.right, self.dim = kernel, stride, left, right, dim
        self.buf: torch.Tensor | None = None
        self.b0 = 0  # padded index of buf's first frame
        self.next = 0  # index of the next window to emit
        self.windows = 0  # windows emitted so far

    def _zeros(self, like: torch.Tensor, n: int) -> torch.Tensor:
        shape = list(like.shape)
        shape[self.dim] = n
        return like.new_zeros(shape)

    def push(self, x: torch.Tensor | None, final: bool = False) -> torch.Tensor | None:
        """Append ``x`` (None: nothing new) and, when ``final``, the ``right`` zero frames."""
        if x is not None:
            self.buf = torch.cat([self._zeros(x, self.left), x] if self.buf is None else [self.buf, x], self.dim)
        if self.buf is None:  # nothing ever arrived
            return None
        if final:
            self.buf = torch.cat([self.buf, self._zeros(self.buf, self.right)], self.dim)
        return self._take()

    def _take(self) -> torch.Tensor | None:
        avail = self.b0 + self.buf.shape[self.dim]
        if avail < self.kernel:
            return None
        last = (avail - self.kernel) // self.stride  # the last complete window
        if last < self.next:
            return None
        lo, hi = self.next * self.stride - self.b0, last * self.stride + self.kernel - self.b0
        seg = self.buf.narrow(self.dim, lo, hi - lo)
        self.windows += last + 1 - self.next
        self.next = last + 1
        cut = self.next * self.stride - self.b0  # the next window starts here
        self.buf = self.buf.narrow(self.dim, cut, self.buf.shape[self.dim] - cut)
        self.b0 += cut
        return seg


class StreamingFeatures:
    """Samples in, normalised log-mel frames out; the frames of ``LogMel`` over the whole wave."""

    def __init__(self, logmel: LogMel, stats: FeatureStats):
        self.logmel, self.stats = logmel, stats
        half = logmel.n_fft // 2
        self.framer = Framer(logmel.n_fft, logmel.hop_length, half, half, 0)

    def _frames(self, seg: torch.Tensor | None) -> torch.Tensor:
        lm = self.logmel
        if seg is None:
            return torch.zeros(0, lm.n_mels)
        spec = torch.stft(seg, lm.n_fft, hop_length=lm.hop_length, win_length=lm.win_length, window=lm.window,
                          center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (F, T)
        return self.stats.normalize(torch.log(power.T @ lm.fbank + 1e-6))  # (T, n_mels)

    def push(self, samples: np.ndarray | None, final: bool = False) -> torch.Tensor:
        x = None if samples is None else torch.as_tensor(np.asarray(samples, np.float32)).reshape(-1)
        return self._frames(self.framer.push(x, final))


class Stream:
    """One utterance streamed through a unidirectional ``SpeechModel``.

    ``accept(samples)`` takes 16 kHz mono float samples (any number) and returns the text
    decoded greedily since the previous call; ``finish()`` flushes the look-ahead and returns the
    rest. ``text`` is everything so far, ``log_probs()`` the output frames so far (T', C)."""

    def __init__(self, model: SpeechModel, logmel: LogMel, stats: FeatureStats, alphabet: str, blank: int = 0):
        if model.bidirectional:
            raise ValueError("this model is bidirectional: its reverse direction needs the whole utterance, so it "
                             "cannot stream; transcribe offline (without --stream) or export a unidirectional model")
        self.model, self.alphabet, self.blank = model, alphabet, blank
        self.features = StreamingFeatures(logmel, stats)
        self.convs = [Framer(c["kernel"][0], c["stride"][0], c["padding"][0], c["padding"][0], 2) for c in model.convs]
        k = model.subsample
        self.stacker = Framer(k, k, 0, 0, 0) if k > 1 else None
        self.row = Framer(model.lookahead + 1, 1, 0, model.lookahead, 0) if model.lookahead > 0 else None
        self.state = None
        self.prev = blank
        self.text = ""
        self._out: list[torch.Tensor] = []
        self.finished = False

    def log_probs(self) -> torch.Tensor:
        return torch.cat(self._out) if self._out else torch.zeros(0, len(self.alphabet))

    @torch.no_grad()
    def _run(self, feats: torch.Tensor, final: bool) -> str:
        m = self.model
        x: torch.Tensor | None = feats[None, None] if feats.shape[0] else None  # (1, 1, T, F)
        for i, fr in enumerate(self.convs):
            seg = fr.push(x, final)
            x = m.conv_layer(i, seg, False) if seg is not None else None
        frames = m.to_frames(x) if x is not None else None  # (n, C·F)
        if self.stacker is not None:
            seg = self.stacker.push(frames)
            left = self.stacker.buf.shape[0] if final and self.stacker.buf is not None else 0
            if left:  # the last group is padded with zero frames, as offline
                tail = F.pad(self.stacker.buf, (0, 0, 0, m.subsample - left))
                seg = tail if seg is None else torch.cat([seg, tail])
            frames = m.stack(seg) if seg is not None else None
        y = None
        if frames is not None and frames.shape[0]:
            out, self.state = m.rnn(frames[:, None], self.state)  # state carried to the next chunk
            y = out[:, 0]
        if self.row is not None:
            seg = self.row.push(y, final)
            y = m.row_conv(seg) if seg is not None else None
        if y is None or not y.shape[0]:
            return ""
        lp = m.head(y)
        self._out.append(lp)
        return self._greedy(lp)

    def _greedy(self, lp: torch.Tensor) -> str:
        new = []
        for i in lp.argmax(-1).tolist():
            if i != self.prev and i != self.blank:
                new.append(self.alphabet[i])
            self.prev = i
        piece = "".join(new)
        self.text += piece
        return piece

    def accept(self, samples: np.ndarray) -> str:
        if self.finished:
            raise ValueError("this stream is finished; start a new one for the next utterance")
        return self._run(self.features.push(samples), False)

    def finish(self) -> str:
        if self.finished:
            return ""
        self.finished = True
        return self._run(self.features.push(None, True), True)

