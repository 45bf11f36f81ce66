"""Recurrent language models (character or word level) for block-sparse training.

BSRNN §1 names language modelling as a domain for sparse RNNs. The model is the usual one
(Zaremba et al. 2014; nanoGPT's char model, with an RNN): embedding → dropout → ``nn.LSTM`` or
``nn.GRU`` (``layers`` deep, dropout between layers) → dropout → linear decoder, optionally with
the decoder tied to the embedding (Press & Wolf 2017), which needs ``emb == hidden``.

The recurrent weights are plain ``nn.LSTM``/``nn.GRU`` parameters, so the sparsity methods prune
their gate-stacked matrices in place (docs/method.md §6, §8). The paper prunes neither the
embedding nor the output layer; a config excludes ``decoder.*`` (the embedding is never a default
target). For truncated BPTT the caller carries ``state`` from one window to the next and calls
``detach_state`` so that gradients stop at the window boundary.
"""

from __future__ import annotations

import torch
from torch import nn

from bsrnn.sparsity.report import count_parameters

from .precision import PRECISIONS, autocast, fp32_region

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU}

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def detach_state(state: State | None) -> State | None:
    """The same hidden state cut from the graph (TBPTT window boundary)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


class RecurrentLM(nn.Module):
    """``forward(tokens (T, N), state) -> (logits (T, N, V), state)``."""

    def __init__(self, vocab_size: int, *, rnn_type: str = "lstm", emb: int = 64, hidden: int = 256,
                 layers: int = 1, dropout: float = 0.0, tie: bool = False):
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"model.rnn_type {rnn_type!r} is not one of {', '.join(RNN_TYPES)}")
        for name, v in (("vocab_size", vocab_size), ("emb", emb), ("hidden", hidden), ("layers", layers)):
            if v < 1:
                raise ValueError(f"model.{name} must be >= 1, got {v}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if tie and emb != hidden:
            raise ValueError(f"model.tie needs model.emb == model.hidden (the decoder reuses the embedding), "
                             f"got emb {emb} and hidden {hidden}")
        self.rnn_type, self.hidden, self.layers = rnn_type, hidden, layers
        self.embedding = nn.Embedding(vocab_size, emb)
        self.drop = nn.Dropout(dropout)
        self.rnn = RNN_TYPES[rnn_type](emb, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocab_size)
        if tie:
            self.decoder.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # Small uniform embeddings (as in the PyTorch word LM example) keep the first logits near
        # uniform, so the initial loss is about ln V rather than far above it.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if self.decoder.weight is not self.embedding.weight:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    precision = "fp32"

    def set_precision(self, precision: str = "fp32", recurrent: str = "fp32") -> "RecurrentLM":
        """``"bf16"`` runs the decoder (hidden × vocabulary, the LM's largest product) in bf16; the
        fused ``nn.LSTM``/``nn.GRU`` keeps its state and products in fp32 (under autocast it would
        carry a bf16 state), and the logits come out in fp32. Weights stay fp32."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if recurrent not in ("fp32", "auto"):
            raise ValueError(f"an RNN language model keeps its recurrence in fp32, not {recurrent!r}")
        self.precision = precision
        return self

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (T, N), got shape {tuple(tokens.shape)}")
        x = self.drop(self.embedding(tokens))  # (T, N, E)
        with fp32_region(x.device):
            out, state = self.rnn(x.float(), state)  # (T, N, H)
        with autocast(self.precision, x.device):
            logits = self.decoder(self.drop(out))
        return logits.float(), state  # (T, N, V)


# (total, nonzero) parameters, tied weights once: the package's one counter under the LM's older name.
count_params = count_parameters
