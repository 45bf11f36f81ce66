"""A whole exported speech model: features → conv front end → recurrent layers → row conv → FC →
CTC log-probabilities, rebuilt from the exported file alone (docs/deployment.md §1).

Version 2 of the export format (``export.py``) carries a ``speech`` section in its JSON header:
the log-mel settings and the training split's normalisation statistics, the alphabet and its
blank, the architecture (``ModelSpec`` fields), the conv front end's kernels, strides and
paddings, BatchNorm epsilons and the activation clip. With it, ``SpeechModel`` runs the same
computation as ``bsrnn.models.DeepSpeech2`` in eval mode (tests/inference/test_speech.py
compares them) without importing any training code:

- the recurrent layers run on the block-sparse runtime (``SparseRecurrent``, the ``cpu``
  kernel; ``runtime="sparse"``) or on dense PyTorch (``nn.GRU/LSTM/RNN``, a plain loop for the
  clipped-ReLU RNN; ``runtime="dense"``), so the two can be compared on the same file;
- everything else is plain torch (``conv2d``, ``batch_norm``, ``conv1d``, ``linear``).

A model is run at batch 1, on one utterance, offline (``log_probs``) or in chunks
(``stream.py``). The speech section is written by ``speech_header``; ``bsrnn export`` fills it
from a training checkpoint and the ``stats.json`` beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .export import ExportedModel
from .rnn import SparseRecurrent

SPEECH_KIND = "deepspeech2-ctc"
RUNTIMES = ("sparse", "dense")


def speech_header(spec: dict, conv_layers, *, clip: float, bn_eps, features: dict, mean, std, count: int = 0,
                  alphabet: str, blank: int = 0) -> dict:
    """The ``speech`` section of an export: everything inference needs besides the tensors."""
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != spec["n_mels"] or len(std) != spec["n_mels"]:
        raise ValueError(f"normalisation statistics have {len(mean)} bins but the model reads {spec['n_mels']}")
    if features.get("n_mels", spec["n_mels"]) != spec["n_mels"]:
        raise ValueError(f"feature settings give {features.get('n_mels')} mel bins but the model reads {spec['n_mels']}")
    if len(alphabet) != spec["n_classes"]:
        raise ValueError(f"alphabet of {len(alphabet)} symbols does not match the model's {spec['n_classes']} outputs")
    return {"kind": SPEECH_KIND, "architecture": dict(spec),
            "conv": {"layers": [[list(k), list(s), list(p)] for k, s, p in conv_layers], "bn_eps": [float(e) for e in bn_eps]},
            "clip": float(clip), "features": dict(features),
            "stats": {"mean": mean, "std": std, "count": int(count)}, "alphabet": alphabet, "blank": int(blank)}


def require_speech(exp: ExportedModel, where: str = "exported model") -> dict:
    """The speech section, or one sentence saying why this file cannot transcribe."""
    if exp.speech is None:
        if exp.version < 2:
            raise ValueError(f"{where} is a version-{exp.version} export, which holds the recurrent weights only "
                             "(no features, statistics or alphabet); re-export its checkpoint with `bsrnn export "
                             "CHECKPOINT OUT` to transcribe with it")
        raise ValueError(f"{where} holds no speech model (it was exported with --weights-only); re-export its "
                         "checkpoint with `bsrnn export CHECKPOINT OUT` to transcribe with it")
    if exp.speech.get("kind") != SPEECH_KIND:
        raise ValueError(f"{where}: speech section of kind {exp.speech.get('kind')!r}, expected {SPEECH_KIND!r}")
    return exp.speech


class ClippedRNN(nn.Module):
    """Dense PyTorch run of a clipped-ReLU RNN, ``h_t = min(max(W x_t + b + U h_{t-1}, 0), clip)``,
    at batch 1 (the dense baseline of the sparse runtime; ``nn.RNN`` has no clip). Same call
    convention as ``nn.RNN``: ``(x (T, 1, I), h0 (L·D, 1, H) | None) -> (y (T, 1, D·H), h_n)``."""

    def __init__(self, cfg: dict, get, prefix: str):
        super().__init__()
        self.layers, self.dirs, self.hidden = cfg["num_layers"], 2 if cfg["bidirectional"] else 1, cfg["hidden_size"]
        self.clip = float(cfg["clip"])
        self.w = []
        for k in range(self.layers):
            for sfx in ("", "_reverse")[: self.dirs]:
                b = get(f"{prefix}bias_l{k}{sfx}") if cfg.get("bias_layout") == "single" else (
                    get(f"{prefix}bias_ih_l{k}{sfx}") + get(f"{prefix}bias_hh_l{k}{sfx}"))
                self.w.append((get(f"{prefix}weight_ih_l{k}{sfx}").float(), get(f"{prefix}weight_hh_l{k}{sfx}").float(),
                               b.float()))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None):
        x = x[:, 0]  # (T, I)
        hn = torch.zeros(self.layers * self.dirs, 1, self.hidden) if hx is None else hx.clone()
        for k in range(self.layers):
            outs = []
            for d in range(self.dirs):
                w_ih, w_hh, b = self.w[k * self.dirs + d]
                xw = F.linear(x.flip(0) if d else x, w_ih, b)  # (T, H): every step's input projection
                h = hn[k * self.dirs + d, 0]
                ys = []
                for t in range(xw.shape[0]):
                    h = torch.clamp(torch.addmv(xw[t], w_hh, h), 0.0, self.clip)
                    ys.append(h)
                hn[k * self.dirs + d, 0] = h
                y = torch.stack(ys) if ys else xw.new_zeros(0, self.hidden)
                outs.append(y.flip(0) if d else y)
            x = torch.cat(outs, 1)  # (T, D·H)
        return x[:, None], hn


def dense_recurrent(cfg: dict, get, prefix: str) -> nn.Module:
    """The recurrent module of ``cfg`` on dense PyTorch, its weights from ``get(name)``."""
    if cfg.get("clip"):
        return ClippedRNN(cfg, get, prefix)
    kind = cfg["type"]
    kw = {"num_layers": cfg["num_layers"], "bidirectional": cfg["bidirectional"], "bias": cfg.get("bias", True)}
    if kind == "RNN":
        kw["nonlinearity"] = cfg.get("nonlinearity", "tanh")
    module = {"GRU": nn.GRU, "LSTM": nn.LSTM, "RNN": nn.RNN}[kind](cfg["input_size"], cfg["hidden_size"], **kw)
    state = {n: get(prefix + n).float() for n, _ in module.named_parameters()}
    module.load_state_dict(state)
    return module.eval()


class SpeechModel(nn.Module):
    """An exported DeepSpeech2 model at batch 1: ``log_probs(features (T, n_mels)) -> (T', C)``.

    ``features`` are normalised log-mel frames (``Transcriber`` computes them from audio). The
    stages are separate methods (``conv_layer``, ``stack``, ``rnn``, ``row_conv``, ``head``) so
    that ``stream.py`` can run them chunk by chunk on exactly the same weights."""

    def __init__(self, exp: ExportedModel, *, runtime: str = "sparse", kernel: str = "cpu"):
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
        sp = require_speech(exp)
        self.runtime, self.speech = runtime, sp
        a = sp["architecture"]
        self.arch, self.clip = a, float(sp["clip"])
        self.bidirectional, self.subsample, self.lookahead = bool(a["bidirectional"]), int(a["subsample"]), int(a["lookahead"])
        get = exp.tensor
        self.convs = []
        for i, ((k, s, p), eps) in enumerate(zip(sp["conv"]["layers"], sp["conv"]["bn_eps"])):
            pre = f"conv.norms.{i}."
            self.convs.append({"weight": get(f"conv.convs.{i}.weight").float(), "kernel": tuple(k), "stride": tuple(s),
                               "padding": tuple(p), "eps": float(eps),
                               "bn": [get(pre + n).float() for n in ("running_mean", "running_var", "weight", "bias")]})
        if "rnn" not in exp.modules:
            raise ValueError(f"exported model has no recurrent module 'rnn'; it has {sorted(exp.modules) or 'none'}")
        self.rnn_config = exp.modules["rnn"]
        if runtime == "sparse":
            self.rnn = SparseRecurrent.from_exported(exp, "rnn", kernel=kernel)
        else:
            self.rnn = dense_recurrent(self.rnn_config, get, "rnn.")
        self.row_weight = get("row_conv.weight").float() if self.lookahead > 0 else None  # (D, 1, τ+1)
        self.fc = (get("fc.weight").float(), get("fc.bias").float()) if a.get("fc_dim") else None
        self.out = (get("output.weight").float(), get("output.bias").float())

    # ------------------------------------------------------------------ stages
    def conv_layer(self, i: int, x: torch.Tensor, time_padding: bool) -> torch.Tensor:
        """Conv layer ``i`` + BatchNorm (running statistics) + clipped ReLU on ``x (1, C, T, F)``;
        ``time_padding=False`` when the caller supplies the time context itself (streaming)."""
        c = self.convs[i]
        pad = c["padding"] if time_padding else (0, c["padding"][1])
        x = F.conv2d(x, c["weight"], None, c["stride"], pad)
        rm, rv, w, b = c["bn"]
        return F.hardtanh(F.batch_norm(x, rm, rv, w, b, False, 0.0, c["eps"]), 0.0, self.clip)

    @staticmethod
    def to_frames(x: torch.Tensor) -> torch.Tensor:
        """(1, C, T, F) conv output → (T, C·F) frames, channel-major like DeepSpeech2's."""
        _, c, t, f = x.shape
        return x[0].permute(1, 0, 2).reshape(t, c * f)

    def stack(self, x: torch.Tensor) -> torch.Tensor:
        """(T, C) → (ceil(T / k), k·C): k consecutive frames side by side, zeros padding the end."""
        k = self.subsample
        if k == 1:
            return x
        x = F.pad(x, (0, 0, 0, (-x.shape[0]) % k))
        return x.reshape(-1, k * x.shape[1])

    def row_conv(self, x: torch.Tensor) -> torch.Tensor:
        """(T + τ, D) → (T, D): y[t] = Σ_j W[:, j] x[t + j], then the clipped ReLU."""
        y = F.conv1d(x.t()[None], self.row_weight, groups=x.shape[1])[0].t()
        return F.hardtanh(y, 0.0, self.clip)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(T, D) recurrent (or row-conv) output → (T, C) log-probabilities."""
        if self.fc is not None:
            x = F.hardtanh(F.linear(x, *self.fc), 0.0, self.clip)
        return F.log_softmax(F.linear(x, *self.out), dim=-1)

    # ------------------------------------------------------------------ offline
    @torch.no_grad()
    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised features (T, n_mels) of one utterance → CTC log-probabilities (T', C)."""
        x = features.float()[None, None]  # (1, 1, T, F)
        for i in range(len(self.convs)):
            x = self.conv_layer(i, x, True)
        x = self.stack(self.to_frames(x))  # (T', k·C·F)
        y, _ = self.rnn(x[:, None])  # (T', 1, D·H)
        y = y[:, 0]
        if self.row_weight is not None:
            y = self.row_conv(F.pad(y, (0, 0, 0, self.lookahead)))
        return self.head(y)

    forward = log_probs
