"""CTC decoding of one utterance: best path (greedy) and prefix beam search with shallow fusion.

A CTC model emits, per output frame t, a distribution over the alphabet plus the blank. A
transcript (prefix) y has probability P(y) = sum over the alignments that collapse to y (merge
runs of a symbol, then drop blanks). Prefix beam search (Graves 2012 §7.3; Hannun et al. 2014,
the decoder of Deep Speech 1 and 2) keeps, per prefix, two log probabilities after frame t:

* ``pb``:  the alignments of y[:t] that end in a blank,
* ``pnb``: those that end in y's last symbol.

Frame t+1 with symbol probabilities p(.) moves each prefix y (last symbol l) to

* y        by a blank:           pb'(y)  += (pb + pnb) * p(blank)
* y        by repeating l:       pnb'(y) += pnb * p(l)            (the run of l goes on)
* y + c    for c != l:           pnb'(yc) += (pb + pnb) * p(c)
* y + l    (a doubled letter):   pnb'(yl) += pb * p(l)            (only after a blank: "ll")

with sums done in log space (``logaddexp``). After each frame the ``beam`` best prefixes are
kept, ranked by

    score(y) = log P_ctc(y) + lm_weight * log P_lm(y) + bonus * |y|

where ``|y|`` counts the emitted symbols of y, spaces included (the character insertion bonus
offsets the LM's per-character cost), and log P_lm(y) is the character LM's log probability of
y's characters after a sentence start. At the end the LM's end-of-sentence probability is added
to each surviving prefix when the LM has one (``CharLMScorer.eos``).

With no LM, ``beam = 1`` and no pruning this is best-path decoding; with a large beam and no
pruning it is the exact most probable transcript for short inputs (tests compare both against
enumeration of every alignment). ``prune`` keeps, per frame, only the most probable symbols up
to that cumulative probability (and never more than ``beam``) as new extensions; blank and
repeat moves are always taken. Most CTC frames are nearly all blank, so this leaves one or two
candidates per frame and makes the search fast in plain Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NEG_INF = -math.inf
DEFAULT_PRUNE = 0.999


def _symbols(alphabet, n_classes: int, blank: int) -> list[str]:
    """The output string of each class index (the blank's is never used)."""
    if isinstance(alphabet, str):
        symbols = list(alphabet)
    elif isinstance(alphabet, Sequence) and all(isinstance(s, str) for s in alphabet):
        symbols = list(alphabet)
    else:
        raise ValueError(f"alphabet must be a string or a sequence of strings (one per output class), "
                         f"got {type(alphabet).__name__}")
    if len(symbols) != n_classes:
        raise ValueError(f"the alphabet has {len(symbols)} symbols but log_probs has {n_classes} classes per frame; "
                         "pass the alphabet the speech model was trained with (bsrnn.data.text.ALPHABET)")
    if not 0 <= blank < n_classes:
        raise ValueError(f"blank index {blank} is outside 0..{n_classes - 1}")
    return symbols


def _as_log_probs(log_probs) -> np.ndarray:
    if hasattr(log_probs, "detach"):
        log_probs = log_probs.detach().cpu().float().numpy()
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (T, C) for one utterance, got shape {tuple(lp.shape)}")
    if lp.shape[0] and (np.isnan(lp).any() or np.isposinf(lp).any()):
        raise ValueError("log_probs holds NaN or +inf; decode the log-softmax of finite logits")
    if lp.shape[0]:
        total = np.logaddexp.reduce(lp, axis=1)
        if np.abs(total).max() > 1e-3:
            raise ValueError("log_probs rows are not log-softmax (their probabilities do not sum to 1); "
                             "pass log_softmax(logits, -1)")
    return lp


def greedy_decode(log_probs, *, alphabet, blank: int = 0) -> str:
    """Best-path decoding of ``log_probs (T, C)``: the arg-max symbol per frame, runs merged,
    blanks dropped."""
    lp = _as_log_probs(log_probs)
    symbols = _symbols(alphabet, lp.shape[1], blank)
    out, prev = [], None
    for i in lp.argmax(1).tolist() if lp.shape[0] else []:
        if i != prev and i != blank:
            out.append(symbols[i])
        prev = i
    return "".join(out)


def _candidates(lp: np.ndarray, prune: float | None, top: int, blank: int) -> list[list[int]]:
    """Per frame, the non-blank symbols that may start a new extension."""
    n_classes = lp.shape[1]
    order = np.argsort(-lp, axis=1, kind="stable")
    if prune is None:
        keep = np.full(lp.shape[0], n_classes)
    else:
        cum = np.cumsum(np.exp(np.take_along_axis(lp, order, 1)), axis=1)
        keep = (cum < prune).sum(1) + 1  # the fewest symbols whose mass reaches ``prune``
    keep = np.minimum(keep, top)
    return [[c for c in row[:k] if c != blank] for row, k in zip(order.tolist(), keep.tolist())]


def _lae(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


def prefix_beam_search(log_probs, *, alphabet, beam: int = 16, lm=None, lm_weight: float = 0.5,
                       bonus: float = 1.0, blank: int = 0, prune: float | None = DEFAULT_PRUNE) -> str:
    """The best transcript of ``log_probs``: the first of ``beam_hypotheses`` (same arguments)."""
    return beam_hypotheses(log_probs, alphabet=alphabet, beam=beam, lm=lm, lm_weight=lm_weight, bonus=bonus,
                           blank=blank, prune=prune)[0].text


@dataclass(frozen=True)
class Hypothesis:
    """One surviving prefix: its text, log P_ctc, log P_lm (with end of sentence; 0 without an
    LM) and the fused score it was ranked by."""

    text: str
    ctc: float
    lm: float
    score: float


def beam_hypotheses(log_probs, *, alphabet, beam: int = 16, lm=None, lm_weight: float = 0.5,
                    bonus: float = 1.0, blank: int = 0, prune: float | None = DEFAULT_PRUNE) -> list[Hypothesis]:
    """The (up to) ``beam`` best transcripts of ``log_probs (T, C)`` (log-softmax, one utterance) under CTC prefix
    beam search, optionally fused with a character LM (module docstring for the algorithm).

    ``alphabet``: the output string of each class (``bsrnn.data.text.ALPHABET`` for bsrnn's
    speech models; the blank's entry is ignored). ``beam``: prefixes kept per frame.
    ``lm``: a ``CharLMScorer`` (or None), weighted by ``lm_weight``; ``bonus``: added per emitted
    symbol (spaces count) — used only with an LM, so that without one the result is the most
    probable CTC transcript found. ``prune``: per frame, new extensions use only the most probable
    symbols up to this cumulative probability (at most ``beam`` of them); None = all symbols.
    Best first.
    """
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be a positive integer, got {beam!r}")
    if prune is not None and not 0.0 < prune <= 1.0:
        raise ValueError(f"prune must be a cumulative probability in (0, 1] or None, got {prune!r}")
    for name, v in (("lm_weight", lm_weight), ("bonus", bonus)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    lp = _as_log_probs(log_probs)
    symbols = _symbols(alphabet, lp.shape[1], blank)
    if lp.shape[0] == 0:
        return [Hypothesis("", 0.0, 0.0, 0.0)]
    cands = _candidates(lp, prune, beam if prune is not None else lp.shape[1], blank)
    if lm is None:
        return _search(lp, symbols, cands, beam, None, 0.0, 0.0, blank)
    from .lm import one_blas_thread

    with one_blas_thread():  # the LM's small matmuls: BLAS threads only cost (docs/decoding.md §5)
        return _search(lp, symbols, cands, beam, lm, lm_weight, bonus, blank)


def _search(lp: np.ndarray, symbols: list[str], cands: list[list[int]], beam: int, lm, lm_weight: float,
            bonus: float, blank: int) -> list[Hypothesis]:
    rows = lp.tolist()
    weight = lm_weight if lm is not None else 0.0
    ins = bonus if lm is not None else 0.0

    # A prefix is a tuple of class indices; per prefix: [pb, pnb].
    beams: dict[tuple, list[float]] = {(): [0.0, NEG_INF]}
    lm_score: dict[tuple, float] = {(): 0.0}  # log P_lm of the prefix's characters
    ctx = None
    if lm is not None:
        ctx = lm.bind(symbols, blank)  # per prefix: the LM's next-character log probabilities
    for t, row in enumerate(rows):
        nxt: dict[tuple, list[float]] = {}
        if ctx is not None and cands[t]:
            ctx.extend(list(beams))  # one batched LM step for the prefixes about to be extended
        p_blank = row[blank]
        for prefix, (pb, pnb) in beams.items():
            total = _lae(pb, pnb)
            cur = nxt.get(prefix)
            if cur is None:
                cur = nxt[prefix] = [NEG_INF, NEG_INF]
            cur[0] = _lae(cur[0], total + p_blank)
            last = prefix[-1] if prefix else -1
            if last >= 0:
                cur[1] = _lae(cur[1], pnb + row[last])
            for c in cands[t]:
                gain = (pb if c == last else total) + row[c]
                if gain == NEG_INF:  # a doubled letter needs a blank between: "aa" from "a" + "a"
                    continue
                new = prefix + (c,)
                ext = nxt.get(new)
                if ext is None:
                    ext = nxt[new] = [NEG_INF, NEG_INF]
                    if ctx is not None and new not in lm_score:
                        lm_score[new] = lm_score[prefix] + ctx.next_logp(prefix, c)
                ext[1] = _lae(ext[1], gain)
        if ctx is None:
            ranked = sorted(nxt.items(), key=lambda kv: _lae(*kv[1]), reverse=True)
        else:
            ranked = sorted(nxt.items(), key=lambda kv: _lae(*kv[1]) + weight * lm_score[kv[0]] + ins * len(kv[0]),
                            reverse=True)
        beams = dict(ranked[:beam])
    if ctx is not None:
        ctx.extend(list(beams))  # the end-of-sentence probabilities of the survivors
    out = []
    for p, (pb, pnb) in beams.items():
        ctc = _lae(pb, pnb)
        lm_p = lm_score[p] + ctx.end_logp(p) if ctx is not None else 0.0
        out.append(Hypothesis("".join(symbols[i] for i in p), ctc, lm_p, ctc + weight * lm_p + ins * len(p)))
    return sorted(out, key=lambda h: h.score, reverse=True)
