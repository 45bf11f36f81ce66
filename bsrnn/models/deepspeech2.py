"""Deep Speech 2 style acoustic models: the RNN and GRU models of BSRNN (docs/method.md §15).

Narang, Undersander & Diamos (2017) prune two Deep Speech 2 models (Amodei et al. 2016):
the **RNN model** (2 conv layers, 7 bidirectional simple recurrent layers with clipped ReLU,
1 fully connected layer, CTC output) and the **GRU model** (2 conv layers, 3 GRU layers, a row
convolution, CTC output). This file builds both, an LSTM variant, and small CPU presets.

The conv front end is the light one of docs/training-on-cpu.md §3 (5×11 kernels, 32 channels, total
time stride 2): Deep Speech 2's 11×41 kernels cost twice as much on CPUs for nothing at this scale,
and a time stride of 4 leaves too few frames per character for CTC.

Every model maps ``(features (N, T, 80), lengths (N,))`` to ``(log_probs (T', N, 29),
out_lengths (N,))`` and computes ``out_lengths`` from its own conv arithmetic. Padding frames
never leak into an utterance: the conv activations are zeroed past each length (so a padded
utterance sees exactly the zeros an unpadded one sees), and every recurrent layer runs its
reverse direction forward over each utterance reversed within its own length, so padding only
ever follows the valid frames (``recurrent.padded_recurrent``). ``nn.GRU``/``nn.LSTM`` are not run on
PackedSequences: on CPUs that trains about 1.7× slower (``bsrnn bench overhead`` records both).
(In training mode the conv BatchNorm statistics do include padded frames, as in Deep Speech 2.)

The output layer is called ``output`` so a pruning config can exclude it (``exclude =
["output.*"]``): the paper prunes recurrent and fully connected layers but not the softmax/CTC layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bsrnn.sparsity.report import count_parameters  # noqa: F401  (one counter for every model, re-exported)

from .precision import PRECISIONS, autocast, dtype_of, fp32_region, resolve_recurrent
from .recurrent import length_mask, padded_recurrent, reverse_within_lengths

CLIP = 20.0  # clipped ReLU ceiling, min(max(x, 0), 20) (Deep Speech 2)
RNN_TYPES = ("rnn", "gru", "lstm")


def conv_out_length(lengths: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """Frames out of a 1-D convolution: ``floor((L + 2p - k) / s) + 1``."""
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


class ConvFrontEnd(nn.Module):
    """Two Conv2d + BatchNorm + clipped ReLU layers over (time, frequency); time stride 2."""

    # (kernel, stride, padding) per layer, each (time, freq): docs/training-on-cpu.md §3
    LAYERS = (((5, 11), (2, 2), (2, 5)), ((5, 11), (1, 2), (2, 5)))

    def __init__(self, n_mels: int = 80, channels: int = 32):
        super().__init__()
        convs, norms = [], []
        c_in, freq = 1, n_mels
        for kernel, stride, pad in self.LAYERS:
            convs.append(nn.Conv2d(c_in, channels, kernel, stride, pad, bias=False))  # BN has the bias
            norms.append(nn.BatchNorm2d(channels))
            c_in, freq = channels, (freq + 2 * pad[1] - kernel[1]) // stride[1] + 1
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.out_dim = channels * freq  # 32 × 20 = 640 for 80 mel bins

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for kernel, stride, pad in self.LAYERS:
            lengths = conv_out_length(lengths, kernel[0], stride[0], pad[0])
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x * length_mask(lengths, x.shape[1])[:, :, None]  # zero the padding frames
        x = x.unsqueeze(1)  # (N, 1, T, F)
        for conv, norm, (kernel, stride, pad) in zip(self.convs, self.norms, self.LAYERS):
            x = F.hardtanh(norm(conv(x)), 0.0, CLIP)  # (N, C, T_i, F_i)
            lengths = conv_out_length(lengths, kernel[0], stride[0], pad[0])
            # BN's shift makes padded frames nonzero; zero them so the next conv sees what an
            # unpadded utterance would see (its own zero padding).
            x = x * length_mask(lengths, x.shape[2])[:, None, :, None]
        n, c, t, f = x.shape
        x = x.permute(2, 0, 1, 3).reshape(t, n, c * f)  # (T', N, C*F)
        return x, lengths


class ClippedReLURNN(nn.Module):
    """Stacked bidirectional simple RNN, ``h_t = min(max(W x_t + U h_{t-1} + b, 0), 20)``.

    Written by hand because ``nn.RNN`` has no clipped ReLU. Parameters follow ``nn.RNN``'s
    names (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``_reverse``) and are declared to the sparsity
    target rule through ``bsrnn_prunable``/``bsrnn_recurrent``. The input projection of all
    time steps and both directions is one GEMM; the time loop runs both directions in one
    ``baddbmm`` per step. Calibration: as fast as the fused ``nn.RNN`` on 2 CPU threads.
    """

    bsrnn_recurrent = True

    def __init__(self, input_size: int, hidden: int, layers: int, bidirectional: bool = True):
        super().__init__()
        self.hidden, self.layers, self.dirs = hidden, layers, 2 if bidirectional else 1
        self.input_size = input_size
        prunable = []
        for k in range(layers):
            d_in = input_size if k == 0 else hidden * self.dirs
            for sfx in ("", "_reverse")[: self.dirs]:
                self.register_parameter(f"weight_ih_l{k}{sfx}", nn.Parameter(torch.empty(hidden, d_in)))
                self.register_parameter(f"weight_hh_l{k}{sfx}", nn.Parameter(torch.empty(hidden, hidden)))
                self.register_parameter(f"bias_l{k}{sfx}", nn.Parameter(torch.empty(hidden)))
                prunable += [f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}"]
        self.bsrnn_prunable = tuple(prunable)
        bound = 1.0 / math.sqrt(hidden)  # nn.RNN's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def bsrnn_recurrent_config(self) -> dict:
        """How an export describes this layer (``nn.RNN``'s keys; one bias per direction, the clip)."""
        return {"type": "RNN", "input_size": self.input_size, "hidden_size": self.hidden,
                "num_layers": self.layers, "bidirectional": self.dirs == 2, "batch_first": False,
                "bias": True, "nonlinearity": "relu", "clip": CLIP, "bias_layout": "single"}

    mm_dtype: torch.dtype | None = None  # per-step product dtype (None: the weights'); the state stays fp32

    def _layer(self, x: torch.Tensor, lengths: torch.Tensor, k: int) -> torch.Tensor:
        sfx = ("", "_reverse")[: self.dirs]
        w_ih = torch.cat([getattr(self, f"weight_ih_l{k}{s}") for s in sfx])  # (D*H, In)
        b = torch.cat([getattr(self, f"bias_l{k}{s}") for s in sfx])  # (D*H,)
        u_t = torch.stack([getattr(self, f"weight_hh_l{k}{s}").t() for s in sfx])  # (D, H, H)
        t_max, n, _ = x.shape
        xw = F.linear(x, w_ih, b).view(t_max, n, self.dirs, self.hidden)  # (T, N, D, H)
        if self.dirs == 2:  # the reverse direction runs forward over each reversed utterance
            xw = torch.stack([xw[:, :, 0], reverse_within_lengths(xw[:, :, 1], lengths)], 2)
        xw = xw.permute(0, 2, 1, 3).to(u_t.dtype)  # (T, D, N, H); bf16 under autocast → the state's dtype
        h = xw.new_zeros(self.dirs, n, self.hidden)  # (D, N, H)
        outs = []
        mm = self.mm_dtype if self.mm_dtype not in (None, u_t.dtype) else None
        u_mm = u_t.to(mm) if mm is not None else u_t
        with torch.autocast(x.device.type, enabled=False):
            for t in range(t_max):
                if mm is None:
                    h = torch.clamp(torch.baddbmm(xw[t], h, u_t), 0.0, CLIP)  # (D, N, H)
                else:  # product in bf16, sum and state in fp32
                    h = torch.clamp(xw[t] + torch.bmm(h.to(mm), u_mm), 0.0, CLIP)
                outs.append(h)
        y = torch.stack(outs).permute(0, 2, 1, 3)  # (T, N, D, H)
        if self.dirs == 2:
            y = torch.stack([y[:, :, 0], reverse_within_lengths(y[:, :, 1], lengths)], 2)
        # Padding frames only ever follow the valid ones, so they never reach a valid output;
        # zero them so the next layer and the row conv see clean zeros.
        y = y * length_mask(lengths, t_max).t()[:, :, None, None]
        return y.reshape(t_max, n, self.dirs * self.hidden)  # (T, N, D*H)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for k in range(self.layers):
            x = self._layer(x, lengths, k)
        return x


class RowConv(nn.Module):
    """Deep Speech 2's lookahead ("row") convolution: ``y[t,d] = Σ_{j=0..τ} W[d,j] x[t+j,d]``.

    A depthwise Conv1d over time padded only on the right; frames past an utterance's end are
    zero (the RNN output is zero there), exactly as for the unpadded utterance.
    """

    def __init__(self, dim: int, lookahead: int):
        super().__init__()
        self.lookahead = lookahead
        self.weight = nn.Parameter(torch.empty(dim, 1, lookahead + 1))
        nn.init.uniform_(self.weight, -1.0 / math.sqrt(lookahead + 1), 1.0 / math.sqrt(lookahead + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(1, 2, 0)  # (N, C, T)
        y = F.conv1d(F.pad(y, (0, self.lookahead)), self.weight, groups=y.shape[1])  # (N, C, T)
        return y.permute(2, 0, 1)  # (T, N, C)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a DeepSpeech2 model; presets below name the paper's and small CPU ones."""

    rnn_type: str = "gru"  # rnn (clipped ReLU) | gru | lstm
    hidden: int = 128  # units per direction
    layers: int = 3  # recurrent layers
    bidirectional: bool = True
    lookahead: int = 0  # row convolution future context τ in frames; 0 = no row conv
    fc_dim: int = 0  # hidden fully connected layer width before the output; 0 = none
    conv_channels: int = 32
    subsample: int = 1  # stack this many conv output frames into one (time stride ×k after the front end)
    n_mels: int = 80
    n_classes: int = 29  # CTC blank + 28 characters


PRESETS: dict[str, ModelSpec] = {
    # The paper's models (docs/method.md §15). The GRU model is forward-only with a row convolution.
    "rnn1760": ModelSpec("rnn", 1760, 7, True, 0, 1760),
    "rnn704": ModelSpec("rnn", 704, 7, True, 0, 704),
    "gru2560": ModelSpec("gru", 2560, 3, False, 20),
    "gru704": ModelSpec("gru", 704, 3, False, 20),
    # CPU presets (docs/training-on-cpu.md §3): a bidirectional GRU already sees the future, so no
    # row conv.
    "gru256": ModelSpec("gru", 256, 3),
    "gru160": ModelSpec("gru", 160, 3),
    "gru128": ModelSpec("gru", 128, 3),
    "gru96": ModelSpec("gru", 96, 3),
    "gru64": ModelSpec("gru", 64, 3),
    "gru32": ModelSpec("gru", 32, 2),  # tests
    # Unidirectional CPU presets: the paper's deployable design (forward GRUs + a row conv looking
    # 10 output frames, 200 ms, ahead), which can stream (docs/deployment.md §3).
    "gru256u": ModelSpec("gru", 256, 3, False, 10),
    "gru128u": ModelSpec("gru", 128, 3, False, 10),
    "gru64u": ModelSpec("gru", 64, 2, False, 4),  # tests
    "rnn384": ModelSpec("rnn", 384, 5),
    "rnn256": ModelSpec("rnn", 256, 3),
    "rnn64": ModelSpec("rnn", 64, 2),  # tests
    "lstm256": ModelSpec("lstm", 256, 3),
    "lstm128": ModelSpec("lstm", 128, 3),
}


class DeepSpeech2(nn.Module):
    """conv front end → recurrent layers → [row conv] → [FC] → output → log-softmax (for CTC)."""

    def __init__(self, spec: ModelSpec = ModelSpec()):
        super().__init__()
        if spec.rnn_type not in RNN_TYPES:
            raise ValueError(f"model rnn_type {spec.rnn_type!r} is not one of {', '.join(RNN_TYPES)}")
        self.spec = spec
        if spec.subsample < 1:
            raise ValueError(f"model subsample must be >= 1 (frames stacked after the conv front end), "
                             f"not {spec.subsample}")
        self.conv = ConvFrontEnd(spec.n_mels, spec.conv_channels)
        dirs = 2 if spec.bidirectional else 1
        rnn_in = self.conv.out_dim * spec.subsample
        if spec.rnn_type == "rnn":
            self.rnn = ClippedReLURNN(rnn_in, spec.hidden, spec.layers, spec.bidirectional)
        else:
            cls = nn.GRU if spec.rnn_type == "gru" else nn.LSTM
            self.rnn = cls(rnn_in, spec.hidden, spec.layers, bidirectional=spec.bidirectional)
        dim = spec.hidden * dirs  # the two directions are concatenated
        self.row_conv = RowConv(dim, spec.lookahead) if spec.lookahead > 0 else None
        self.fc = nn.Linear(dim, spec.fc_dim) if spec.fc_dim > 0 else None
        self.output = nn.Linear(spec.fc_dim or dim, spec.n_classes)
        # How nn.GRU/LSTM see the batch: "padded" (padded_recurrent, the fast default) or
        # "packed" (a PackedSequence, PyTorch's usual way; same results, kept for comparison).
        self.rnn_input = "padded"
        self.set_precision("fp32")

    def set_precision(self, precision: str = "fp32", recurrent: str = "auto") -> "DeepSpeech2":
        """Compute in ``"fp32"`` or ``"bf16"`` (mixed: see ``bsrnn.models.precision``); the
        per-step recurrent product separately (``"auto"`` picks by width). Weights stay fp32."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.recurrent_precision = resolve_recurrent(recurrent, precision, self.spec.hidden)
        if self.spec.rnn_type == "lstm":  # the fused _VF LSTM keeps state and products in fp32
            self.recurrent_precision = "fp32"
        mm = dtype_of(self.recurrent_precision) if self.recurrent_precision == "bf16" else None
        self.mm_dtype = mm
        if isinstance(self.rnn, ClippedReLURNN):
            self.rnn.mm_dtype = mm
        return self

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        k = self.spec.subsample
        return -torch.div(-self.conv.out_lengths(lengths), k, rounding_mode="floor")  # ceil(L / k)

    def stack_frames(self, x: torch.Tensor) -> torch.Tensor:
        """``(T, N, C)`` → ``(ceil(T / k), N, k·C)``: k consecutive frames side by side (zeros pad the end)."""
        k = self.spec.subsample
        if k == 1:
            return x
        t, n, c = x.shape
        x = F.pad(x, (0, 0, 0, 0, 0, (-t) % k))
        return x.view(-1, k, n, c).permute(0, 2, 1, 3).reshape(-1, n, k * c)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rnn_input not in ("padded", "packed"):
            raise ValueError(f"rnn_input must be 'padded' or 'packed', not {self.rnn_input!r}")
        with autocast(self.precision, features.device):
            return self._forward(features, lengths)

    def _forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.conv(features, lengths)  # (T', N, 640); bf16 under autocast
        x, out_lengths = self.stack_frames(x), self.out_lengths(lengths)  # (T'/k, N, k·640)
        if isinstance(self.rnn, ClippedReLURNN):
            x = self.rnn(x, out_lengths)  # (T', N, D*H)
        elif isinstance(self.rnn, nn.RNNBase) and self.rnn_input == "padded":
            x = padded_recurrent(self.rnn, x, out_lengths, mm_dtype=self.mm_dtype)  # (T', N, D*H)
        else:  # packed, as PyTorch does; also any drop-in module such as the sparse runtime (sparsify_)
            with fp32_region(x.device):
                packed = pack_padded_sequence(x.float(), out_lengths.cpu(), enforce_sorted=False)
                x, _ = pad_packed_sequence(self.rnn(packed)[0], total_length=x.shape[0])  # (T', N, D*H)
        if self.row_conv is not None:
            x = F.hardtanh(self.row_conv(x), 0.0, CLIP)  # (T', N, D*H)
        if self.fc is not None:
            x = F.hardtanh(self.fc(x), 0.0, CLIP)  # (T', N, fc_dim)
        logits = self.output(x).float()  # log-softmax and CTC in fp32
        return F.log_softmax(logits, dim=-1), out_lengths  # (T', N, 29), (N,)


def build_model(preset: str | None = "gru128", **overrides) -> DeepSpeech2:
    """A model from a preset name, with any ``ModelSpec`` field overridden (None = keep)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"model preset {preset!r} is unknown; presets are {', '.join(PRESETS)}")
    spec = PRESETS[preset] if preset is not None else ModelSpec()
    fields = asdict(spec)
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"model field {key!r} is unknown; fields are {', '.join(fields)}")
    return DeepSpeech2(replace(spec, **{k: v for k, v in overrides.items() if v is not None}))
