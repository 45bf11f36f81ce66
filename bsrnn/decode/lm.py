"""The project's character LM (``bsrnn.models.lm.RecurrentLM``) as a scorer for CTC beam search.

``CharLMScorer`` wraps a trained char LSTM/GRU LM (dense, or pruned: a pruned model is a dense
one holding zeros) and its vocabulary. Bound to a speech alphabet it maps every speech symbol
to the LM character of the same text; the LM's distribution is renormalised over those
characters plus its end-of-sentence symbol ``"\\n"`` (the separator bsrnn's text corpora put
after each document), so probability the LM gives to characters the speech model cannot emit
(capitals, digits, punctuation of an LM trained on raw text) is not counted against every
hypothesis alike. A speech symbol the LM's vocabulary lacks is an error by default
(``missing="error"``); ``missing="floor"`` scores it ``floor`` (log probability, default
log 1e-4) instead.

A hypothesis starts after ``"\\n"`` (a sentence start) and, when ``eos`` is on, ends with the
LM's probability of ``"\\n"`` after it. LM states are cached per prefix: each prefix that enters
the beam is stepped once, from its parent's state, and all of a frame's new prefixes go through
the LM as one batch.

Files: ``from_checkpoint`` reads a ``bsrnn lm-train`` checkpoint (``torch.load`` with
``weights_only=True`` through ``bsrnn.train.checkpoint``, digest checked); ``from_export`` reads
the safetensors file ``export_lm`` (``bsrnn lm-export``) writes: the LM's matrices in BSR form,
its config and vocabulary in the JSON header.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from bsrnn.data.textcorpus import Vocab
from bsrnn.models.lm import RecurrentLM

EOS = "\n"
MISSING = ("error", "floor")


class CharLMScorer:
    """A character LM for shallow fusion: ``CharLMScorer(model, vocab)`` or one of the loaders."""

    def __init__(self, model: RecurrentLM, vocab: Vocab, *, missing: str = "error",
                 floor: float = math.log(1e-4), eos: bool = True):
        if not isinstance(model, RecurrentLM):
            raise ValueError(f"CharLMScorer needs a bsrnn RecurrentLM, got {type(model).__name__}")
        if vocab.level != "char":
            raise ValueError(f"CharLMScorer needs a character-level LM; this one is {vocab.level}-level")
        if missing not in MISSING:
            raise ValueError(f"missing must be one of {', '.join(MISSING)}, not {missing!r}")
        if EOS not in vocab.stoi:
            raise ValueError("the LM's vocabulary has no end-of-document symbol '\\n'; it was not built by bsrnn")
        self.model = model.eval()
        self.vocab, self.missing, self.floor, self.eos = vocab, missing, float(floor), eos

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kw) -> "CharLMScorer":
        """The LM of a ``bsrnn lm-train`` checkpoint (best.pt or last.pt)."""
        from bsrnn.train.lm import load_lm

        model, vocab, _ = load_lm(path)
        return cls(model, vocab, **kw)

    @classmethod
    def from_export(cls, path: str | Path, **kw) -> "CharLMScorer":
        """The LM of a file written by ``export_lm`` (``bsrnn lm-export``)."""
        from bsrnn.inference.export import load
        from bsrnn.train.config import build_config
        from bsrnn.train.lm import LMConfig, model_from_config

        exp = load(path)
        head = exp.config
        if head.get("task") != "lm" or "vocab" not in head or "lm_config" not in head:
            raise ValueError(f"{path}: not an exported language model (no task 'lm', vocab and lm_config in its "
                             "header); write one with bsrnn lm-export")
        cfg = build_config(LMConfig, head["lm_config"])
        vocab = Vocab(head["vocab"], head.get("level", "char"))
        model = model_from_config(cfg.model, len(vocab))
        model.load_state_dict(exp.state_dict())
        return cls(model, vocab, **kw)

    def bind(self, symbols: list[str], blank: int = 0) -> "LMContext":
        """A per-utterance context for the speech alphabet ``symbols`` (one string per class)."""
        ids = np.full(len(symbols), -1, dtype=np.int64)
        lacking = []
        for i, s in enumerate(symbols):
            if i == blank:
                continue
            if s in self.vocab.stoi and self.vocab.stoi[s] != self.vocab.unk:
                ids[i] = self.vocab.stoi[s]
            else:
                lacking.append(s)
        if lacking and self.missing == "error":
            raise ValueError(f"the LM's vocabulary lacks {', '.join(repr(s) for s in lacking)} of the speech alphabet; "
                             "train it on speech-normalised text (data.normalize = \"speech\") or pass missing=\"floor\"")
        return LMContext(self, ids, blank)

    def _run(self, tokens: list[int], states: list | None):
        """One LM step for a batch: tokens (N,) and per-item states (None = zero state) ->
        logits (N, V) and the N new states."""
        return self._step(tokens, states)

    @property
    def _step(self) -> "NumpyStep":
        if getattr(self, "_numpy", None) is None:
            self._numpy = NumpyStep(self.model)
        return self._numpy


class NumpyStep:
    """One time step of a ``RecurrentLM`` in numpy (fp32, same equations as ``nn.LSTM``/``nn.GRU``):
    a batch of a few beam prefixes per call, where torch's per-call cost would dominate."""

    def __init__(self, model: RecurrentLM):
        sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
        self.lstm, self.layers, self.hidden = model.rnn_type == "lstm", model.layers, model.hidden
        self.emb = sd["embedding.weight"]
        self.w_ih = [np.ascontiguousarray(sd[f"rnn.weight_ih_l{k}"].T) for k in range(self.layers)]
        self.w_hh = [np.ascontiguousarray(sd[f"rnn.weight_hh_l{k}"].T) for k in range(self.layers)]
        self.b_ih = [sd[f"rnn.bias_ih_l{k}"] for k in range(self.layers)]
        self.b_hh = [sd[f"rnn.bias_hh_l{k}"] for k in range(self.layers)]
        self.w_out, self.b_out = np.ascontiguousarray(sd["decoder.weight"].T), sd["decoder.bias"]

    def zero(self) -> np.ndarray:
        return np.zeros((self.layers, 2 if self.lstm else 1, self.hidden), np.float32)

    def __call__(self, tokens: list[int], states: list | None):
        n, H = len(tokens), self.hidden
        st = np.stack(states) if states is not None else np.zeros((n, *self.zero().shape), np.float32)
        new = np.empty_like(st)
        x = self.emb[np.asarray(tokens)]
        for k in range(self.layers):
            h = st[:, k, 0]
            gi = x @ self.w_ih[k] + self.b_ih[k]
            gh = h @ self.w_hh[k] + self.b_hh[k]
            if self.lstm:  # gates i, f, g, o
                g = gi + gh
                i, f = _sigmoid(g[:, :H]), _sigmoid(g[:, H:2 * H])
                c = f * st[:, k, 1] + i * np.tanh(g[:, 2 * H:3 * H])
                h = _sigmoid(g[:, 3 * H:]) * np.tanh(c)
                new[:, k, 1] = c
            else:  # gates r, z, n
                r = _sigmoid(gi[:, :H] + gh[:, :H])
                z = _sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
                cand = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
                h = (1 - z) * cand + z * h
            new[:, k, 0] = h
            x = h
        logits = (x @ self.w_out + self.b_out).astype(np.float64)
        return logits, list(new)


_BLAS = None


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread. The LM step multiplies a batch of at
    most ``beam`` states (a few dozen kFLOP); a multi-threaded BLAS hands each such product to its
    worker threads, and on a busy machine waiting for them cost ~50x the product itself
    (docs/decoding.md §5). The hypotheses came out bit-identical either way on real model output."""
    global _BLAS
    from threadpoolctl import ThreadpoolController

    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


class LMContext:
    """The LM states of one utterance's prefixes (``prefix_beam_search`` drives it)."""

    def __init__(self, scorer: CharLMScorer, ids: np.ndarray, blank: int):
        self.scorer, self.ids, self.blank = scorer, ids, blank
        self.mapped = np.flatnonzero(ids >= 0)
        self.eos_id = scorer.vocab.stoi[EOS]
        self._gather = np.concatenate([ids[self.mapped], [self.eos_id]])
        self.cache: dict[tuple, tuple[object, np.ndarray]] = {}

    def _scores(self, logits: np.ndarray) -> np.ndarray:
        """Per speech class (and EOS last): log P_lm renormalised over the speech characters + EOS."""
        sub = logits[self._gather]
        top = sub.max()
        sub = sub - (top + math.log(np.exp(sub - top).sum()))
        out = np.full(len(self.ids) + 1, self.scorer.floor)
        out[self.mapped] = sub[:-1]
        out[-1] = sub[-1]
        return out

    def start(self) -> None:
        logits, states = self.scorer._run([self.eos_id], None)  # a sentence starts after "\n"
        self.cache[()] = (states[0], self._scores(logits[0]))

    def next_logp(self, prefix: tuple, c: int) -> float:
        return float(self.cache[prefix][1][c])

    def end_logp(self, prefix: tuple) -> float:
        return float(self.cache[prefix][1][-1]) if self.scorer.eos else 0.0

    def extend(self, prefixes) -> None:
        if () not in self.cache:
            self.start()
        todo = [p for p in prefixes if p not in self.cache]
        if not todo:
            return
        tokens = [int(self.ids[p[-1]]) if self.ids[p[-1]] >= 0 else self.scorer.vocab.unk for p in todo]
        logits, states = self.scorer._run(tokens, [self.cache[p[:-1]][0] for p in todo])
        for p, row, s in zip(todo, logits, states):
            self.cache[p] = (s, self._scores(row))


def export_lm(checkpoint: str | Path, out: str | Path, block=(4, 4)) -> Path:
    """Write the LM of a ``bsrnn lm-train`` checkpoint as a safetensors BSR file (its recurrent
    and decoder matrices as blocks of ``block``, config and vocabulary in the JSON header)."""
    from bsrnn.inference.export import export_model, save
    from bsrnn.train.checkpoint import load_checkpoint
    from bsrnn.train.lm import load_lm

    model, vocab, _ = load_lm(checkpoint)
    config = json.loads(load_checkpoint(checkpoint)["config"])
    exp = export_model(model, block, exclude=("embedding.*", "decoder.*"),
                       config={"task": "lm", "lm_config": config, "vocab": vocab.itos, "level": vocab.level})
    return save(exp, out)
