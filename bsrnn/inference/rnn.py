"""Sparse recurrent runtime: block-sparse RNN (tanh, ReLU, clipped ReLU), GRU and LSTM layers for
inference over a whole sequence (docs/method.md §15 models, §18 figures 5–6; docs/kernels.md §7
"fused gates").

Per layer and direction the input projection of *all* time steps is one batched sparse GEMM
(W_ih · X with X of T·B columns — the compute-bound, well-vectorised case), then each step does
one recurrent sparse GEMV/GEMM W_hh · h (the bandwidth-bound case the paper speeds up, its
weights staying in cache step after step) and one fused, compiled gate update in place. The
math is PyTorch's (gate order GRU r,z,n; LSTM i,f,g,o; ``b_hn`` inside the reset product), so
outputs match ``nn.RNN/GRU/LSTM`` on the same weights to float tolerance.

``SparseRecurrent.from_module`` converts a dense(-with-zeros) torch module, ``from_exported`` a
module of an exported file, and ``sparsify_`` swaps every recurrent module of a loaded model
for its sparse counterpart — the hook for running a whole exported speech model this way.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from . import kernels
from .export import BsrMatrix, ExportedModel, quantize, recurrent_config, to_bsr

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


F32 = np.float32
TANH_CLAMP = F32(7.99881172180175781)


@functools.cache
def _cells() -> SimpleNamespace:
    """The fused, compiled gate updates, built on the first forward pass: importing the runtime
    (or ``bsrnn.inference``) does not import numba, which costs ~0.8 s. The helpers reach each
    other as closure variables, which numba compiles like module-level ``@njit`` functions."""
    from numba import njit

    @njit(fastmath=True, inline="always")
    def tanh(x):
        """Eigen's rational tanh for float32 (|error| < 3e-7): unlike libm's it vectorises, and the
        gate update must cost little next to the sparse GEMV it follows."""
        x = min(max(x, -TANH_CLAMP), TANH_CLAMP)
        x2 = x * x
        p = x2 * F32(-2.76076847742355e-16) + F32(2.00018790482477e-13)
        p = p * x2 + F32(-8.60467152213735e-11)
        p = p * x2 + F32(5.12229709037114e-08)
        p = p * x2 + F32(1.48572235717979e-05)
        p = p * x2 + F32(6.37261928875436e-04)
        p = (p * x2 + F32(4.89352455891786e-03)) * x
        q = x2 * F32(1.19825839466702e-06) + F32(1.18534705686654e-04)
        q = q * x2 + F32(2.26843463243900e-03)
        q = q * x2 + F32(4.89352518554385e-03)
        return p / q

    @njit(fastmath=True, inline="always")
    def sigmoid(x):
        return F32(0.5) + F32(0.5) * tanh(F32(0.5) * x)

    @njit(fastmath=True)
    def gru_cell(gi, gh, bhn, h):
        """gi (B, 3H) holds x-projection + b_ih + (b_hr, b_hz, 0); gh (3H, B) = W_hh·h; h (H, B)."""
        H, B = h.shape
        for b in range(B):
            for i in range(H):
                r = sigmoid(gi[b, i] + gh[i, b])
                z = sigmoid(gi[b, H + i] + gh[H + i, b])
                n = tanh(gi[b, 2 * H + i] + r * (gh[2 * H + i, b] + bhn[i]))
                h[i, b] = n + z * (h[i, b] - n)

    @njit(fastmath=True)
    def lstm_cell(gi, gh, h, c):
        """gi (B, 4H) holds x-projection + b_ih + b_hh; gates i, f, g, o."""
        H, B = h.shape
        for b in range(B):
            for k in range(H):
                ig = sigmoid(gi[b, k] + gh[k, b])
                fg = sigmoid(gi[b, H + k] + gh[H + k, b])
                gg = tanh(gi[b, 2 * H + k] + gh[2 * H + k, b])
                og = sigmoid(gi[b, 3 * H + k] + gh[3 * H + k, b])
                c[k, b] = fg * c[k, b] + ig * gg
                h[k, b] = og * tanh(c[k, b])

    @njit(fastmath=True)
    def rnn_cell(gi, gh, h, relu, clip):
        """tanh, or ReLU clipped at ``clip`` (DeepSpeech2's min(max(x, 0), 20); clip <= 0: none)."""
        H, B = h.shape
        for b in range(B):
            for i in range(H):
                v = gi[b, i] + gh[i, b]
                if relu:
                    v = max(v, F32(0.0))
                    if clip > 0.0:
                        v = min(v, clip)
                else:
                    v = tanh(v)
                h[i, b] = v

    return SimpleNamespace(tanh=tanh, sigmoid=sigmoid, gru_cell=gru_cell, lstm_cell=lstm_cell, rnn_cell=rnn_cell)


def __getattr__(name: str):
    """``_tanh``, ``_sigmoid``, ``_gru_cell``, ``_lstm_cell``, ``_rnn_cell``: the compiled functions."""
    if name in _CELL_NAMES:
        return getattr(_cells(), name[1:])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CELL_NAMES = ("_tanh", "_sigmoid", "_gru_cell", "_lstm_cell", "_rnn_cell")


class SparseRecurrent(nn.Module):
    """Inference-only stand-in for ``nn.RNN/GRU/LSTM`` with block-sparse weights.

    ``weights[layer][direction]`` is a dict with ``w_ih``/``w_hh`` (``BsrMatrix``) and ``b_ih``/
    ``b_hh`` (float32 arrays or None). ``forward(x, hx=None)`` follows PyTorch's conventions:
    x (T, B, I) or (B, T, I) when ``batch_first``; returns (output, h_n) or (output, (h_n, c_n)).
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, weights: list[list[dict]], *,
                 batch_first: bool = False, nonlinearity: str = "tanh", clip: float | None = None,
                 kernel: str = "cpu"):
        super().__init__()
        if mode not in GATES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(GATES)}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity {nonlinearity!r} must be 'tanh' or 'relu'")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.num_directions = len(weights), len(weights[0])
        self.bidirectional = self.num_directions == 2
        self.batch_first, self.nonlinearity, self.clip = batch_first, nonlinearity, clip
        self.weights, self.kernel = weights, kernels.get(kernel)
        G, H = GATES[mode], hidden_size
        for layer, dirs in enumerate(weights):
            insize = input_size if layer == 0 else H * self.num_directions
            for d in dirs:
                for key, shape in (("w_ih", (G * H, insize)), ("w_hh", (G * H, H))):
                    if d[key].matrix_shape != shape:
                        raise ValueError(f"{d[key].name}: shape {d[key].matrix_shape} should be {shape} for a "
                                         f"{mode} of hidden size {H} (layer {layer})")
                self.kernel.prepare(d["w_ih"])  # layouts are built once, here, never per call
                self.kernel.prepare(d["w_hh"])
                d["bias_x"], d["bhn"] = self._fold_biases(d, G, H)

    def _fold_biases(self, d: dict, G: int, H: int):
        """One bias added to the input projection; GRU keeps b_hn (it sits inside r * (...))."""
        zero = np.zeros(G * H, np.float32)
        b_ih = zero if d.get("b_ih") is None else np.asarray(d["b_ih"], np.float32)
        b_hh = zero if d.get("b_hh") is None else np.asarray(d["b_hh"], np.float32)
        if self.mode == "GRU":
            return b_ih + np.concatenate([b_hh[:2 * H], zero[:H]]), np.ascontiguousarray(b_hh[2 * H:])
        return b_ih + b_hh, None

    def extra_repr(self) -> str:
        return (f"{self.mode}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, kernel={self.kernel.name})")

    def _direction(self, d: dict, xs: np.ndarray, h: np.ndarray, c: np.ndarray | None, reverse: bool,
                   lengths: np.ndarray | None) -> np.ndarray:
        T, B, _ = xs.shape
        G, H = GATES[self.mode], self.hidden_size
        ragged = lengths is not None and bool((lengths < T).any())
        if reverse and ragged:  # each sequence runs backwards from its own last step
            xs = _reverse_within(xs, lengths)
        # all time steps' input projections as one (G·H, T·B) sparse GEMM, then (T, B, G·H)
        gi = self.kernel(d["w_ih"], np.ascontiguousarray(xs.reshape(T * B, -1).T))
        gi = np.ascontiguousarray(gi.T).reshape(T, B, G * H)
        gi += d["bias_x"]
        gh = np.empty((G * H, B), np.float32)
        out = np.empty((T, H, B), np.float32)
        relu, clip = self.nonlinearity == "relu", float(self.clip or 0.0)
        cells = _cells()
        for t in (range(T - 1, -1, -1) if reverse and not ragged else range(T)):
            if ragged:
                done = t >= lengths  # finished sequences keep their last state and output zeros
                h_old, c_old = h[:, done], (c[:, done] if c is not None else None)
            self.kernel(d["w_hh"], h, gh)
            if self.mode == "GRU":
                cells.gru_cell(gi[t], gh, d["bhn"], h)
            elif self.mode == "LSTM":
                cells.lstm_cell(gi[t], gh, h, c)
            else:
                cells.rnn_cell(gi[t], gh, h, relu, clip)
            out[t] = h
            if ragged and done.any():
                h[:, done] = h_old
                out[t][:, done] = 0.0
                if c is not None:
                    c[:, done] = c_old
        out = out.transpose(0, 2, 1)  # (T, B, H)
        return _reverse_within(out, lengths) if reverse and ragged else out

    @torch.no_grad()
    def forward(self, x, hx=None):
        """x: (T, B, I), (B, T, I) when ``batch_first``, (T, I), or a PackedSequence (whose
        sequences each stop at their own length, as in PyTorch)."""
        packed = isinstance(x, nn.utils.rnn.PackedSequence)
        lengths = None
        if packed:
            x, lens = nn.utils.rnn.pad_packed_sequence(x)  # (T, B, I), original batch order
            lengths = lens.numpy().astype(np.int64)
        squeeze = x.dim() == 2
        xs = x.detach().float().cpu()
        xs = xs.unsqueeze(1) if squeeze else (xs.transpose(0, 1) if self.batch_first and not packed else xs)
        T, B = xs.shape[:2]
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
        h0 = np.zeros((L * D, B, H), np.float32) if h0 is None else h0.detach().float().cpu().reshape(L * D, B, H).numpy()
        c0 = np.zeros((L * D, B, H), np.float32) if c0 is None else c0.detach().float().cpu().reshape(L * D, B, H).numpy()
        hn, cn = np.empty_like(h0), np.empty_like(c0)
        inp = xs.numpy()
        for layer in range(L):
            outs = []
            for k, d in enumerate(self.weights[layer]):
                i = layer * D + k
                h = np.ascontiguousarray(h0[i].T)  # (H, B): the kernels' column layout
                c = np.ascontiguousarray(c0[i].T) if self.mode == "LSTM" else None
                outs.append(self._direction(d, inp, h, c, k == 1, lengths))
                hn[i] = h.T
                if c is not None:
                    cn[i] = c.T
            inp = np.concatenate(outs, axis=2) if D == 2 else outs[0]  # (T, B, D·H)
        out = torch.from_numpy(np.ascontiguousarray(inp))
        if packed:
            out = nn.utils.rnn.pack_padded_sequence(out, torch.from_numpy(lengths), enforce_sorted=False)
        else:
            out = out.squeeze(1) if squeeze else (out.transpose(0, 1) if self.batch_first else out)
        hn_t = torch.from_numpy(hn).squeeze(1) if squeeze else torch.from_numpy(hn)
        if self.mode == "LSTM":
            cn_t = torch.from_numpy(cn).squeeze(1) if squeeze else torch.from_numpy(cn)
            return out, (hn_t, cn_t)
        return out, hn_t

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_tensors(cls, cfg: dict, get, block, *, clip=None, kernel: str = "cpu", prefix: str = "",
                     dtype: str | None = None):
        """``get(param_name)`` returns a tensor or a ``BsrMatrix`` (dense ones are converted).
        ``dtype`` (fp32, bf16, int8) re-quantises every weight's block values; None keeps them
        (a dense tensor becomes fp32)."""
        if cfg.get("proj_size"):
            raise ValueError(f"{prefix or 'module'}: LSTM with proj_size is not supported by the sparse runtime")
        G = GATES[cfg["type"]]
        # "single": one bias per direction, bias_l{k} (the clipped-ReLU RNN); else nn.RNN's two
        single = cfg.get("bias_layout") == "single"
        weights = []
        for layer in range(cfg["num_layers"]):
            dirs = []
            for sfx in ("", "_reverse")[: 2 if cfg["bidirectional"] else 1]:
                d = {}
                for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    stored = "bias" if single and key == "bias_ih" else key
                    name = f"{prefix}{stored}_l{layer}{sfx}"
                    wanted = key.startswith("weight") or (cfg.get("bias", True) and not (single and key == "bias_hh"))
                    v = get(name) if wanted else None
                    if key.startswith("weight"):
                        m = v if isinstance(v, BsrMatrix) else to_bsr(v, _tiling(v, block, G), G, name=name)
                        d["w" + key[6:]] = m if dtype is None or m.dtype == dtype else quantize(m, dtype)
                    else:
                        d["b" + key[4:]] = None if v is None else v.detach().float().numpy()
                dirs.append(d)
            weights.append(dirs)
        return cls(cfg["type"], cfg["input_size"], cfg["hidden_size"], weights, batch_first=cfg["batch_first"],
                   nonlinearity=cfg.get("nonlinearity", "tanh"), clip=cfg.get("clip") if clip is None else clip,
                   kernel=kernel)

    @classmethod
    def from_module(cls, module: nn.Module, block=(4, 4), *, clip=None, kernel: str = "cpu", dtype: str = "fp32"):
        """Sparse copy of a dense(-with-zeros) ``nn.RNN/GRU/LSTM``, or of a layer describing itself
        through ``bsrnn_recurrent_config()`` (DeepSpeech2's clipped-ReLU RNN): exactly its nonzero
        blocks, block values in ``dtype`` (fp32: exact; bf16 / int8: ``export.quantize``)."""
        cfg = recurrent_config(module)
        if cfg is None:
            raise ValueError(f"{type(module).__name__} is not an nn.RNN, nn.GRU or nn.LSTM and has no "
                             "bsrnn_recurrent_config()")
        params = dict(module.named_parameters())
        return cls.from_tensors(cfg, params.__getitem__, block, clip=clip, kernel=kernel,
                                dtype=None if dtype in ("fp32", "float32") else dtype)

    @classmethod
    def from_exported(cls, exp: ExportedModel, name: str, *, clip=None, kernel: str = "cpu"):
        """The recurrent module ``name`` of an exported model (its config is in the header)."""
        if name not in exp.modules:
            raise ValueError(f"exported model has no recurrent module {name!r}; it has {sorted(exp.modules) or 'none'}")

        def get(p):
            return exp.sparse[p] if p in exp.sparse else exp.dense[p]

        blocks = [m.block for m in exp.sparse.values()]
        return cls.from_tensors(exp.modules[name], get, blocks[0] if blocks else (1, 1), clip=clip,
                                kernel=kernel, prefix=f"{name}." if name else "")


def _reverse_within(a: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse (T, B, F) along time within each sequence's length; padding stays in place."""
    T = a.shape[0]
    t = np.arange(T)[:, None]
    idx = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # (T, B)
    return a[idx, np.arange(a.shape[1])[None, :]]


def _tiling(w: torch.Tensor, block, gates: int):
    """The requested block when it tiles ``w`` gate by gate, else 1×1 (CSR) — always exact."""
    r, c = block
    return (r, c) if (w.shape[0] // gates) % r == 0 and w.shape[1] % c == 0 else (1, 1)


def sparsify_(model: nn.Module, exported: ExportedModel | None = None, *, block=(4, 4), clip=None,
              kernel: str = "cpu", dtype: str = "fp32") -> list[str]:
    """Replace every ``nn.RNN/GRU/LSTM`` of ``model``, and every layer that describes itself
    through ``bsrnn_recurrent_config()`` (DeepSpeech2's clipped-ReLU RNN), by a ``SparseRecurrent``
    (in place).

    Weights come from ``exported`` when given (the module names must match), else from the
    module itself, with block values in ``dtype`` (an exported file keeps its own). Returns the
    replaced module names. Padded tensors and PackedSequences are
    both accepted, so a model's own forward runs unchanged (DeepSpeech2 hands a swapped-in module a
    PackedSequence).
    """
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, SparseRecurrent) or recurrent_config(module) is None:
            continue
        if any(name.startswith(r + ".") for r in replaced):
            continue
        new = (SparseRecurrent.from_exported(exported, name, clip=clip, kernel=kernel) if exported is not None
               else SparseRecurrent.from_module(module, block, clip=clip, kernel=kernel, dtype=dtype))
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], new)
        replaced.append(name)
    return replaced
