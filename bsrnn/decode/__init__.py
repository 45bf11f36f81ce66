"""Decoding CTC output into text: best path, and prefix beam search fused with the project's
character LM (docs/decoding.md).

``prefix_beam_search(log_probs, alphabet=..., beam=16, lm=None, lm_weight=0.5, bonus=1.0)``
decodes one utterance's ``(T, C)`` log-softmax; ``CharLMScorer`` wraps a ``bsrnn lm-train``
checkpoint (or ``bsrnn lm-export`` file); ``greedy_decode`` is best-path decoding.
"""

from collections.abc import Callable

from .ctc import DEFAULT_PRUNE, Hypothesis, beam_hypotheses, greedy_decode, prefix_beam_search
from .lm import CharLMScorer, export_lm

DECODERS = ("greedy", "beam")


def make_decoder(kind: str = "greedy", *, alphabet=None, beam: int = 16, lm: "CharLMScorer | str | None" = None,
                 lm_weight: float = 0.5, bonus: float = 1.0, blank: int = 0,
                 prune: float | None = DEFAULT_PRUNE) -> Callable:
    """A function ``(log_probs (T, C)) -> str`` for one utterance: ``"greedy"`` (best path) or
    ``"beam"`` (``prefix_beam_search`` with these options). ``lm`` may be a checkpoint or an
    exported ``.safetensors`` path; ``alphabet`` defaults to the speech models' one."""
    if kind not in DECODERS:
        raise ValueError(f"decoder {kind!r} is not one of {', '.join(DECODERS)}")
    if alphabet is None:
        from bsrnn.data.text import ALPHABET as alphabet
    if kind == "greedy":
        if lm is not None:
            raise ValueError("an LM is used only by the beam decoder; pass --decoder beam with --lm")
        return lambda lp: greedy_decode(lp, alphabet=alphabet, blank=blank)
    if isinstance(lm, (str, bytes)) or hasattr(lm, "__fspath__"):
        lm = (CharLMScorer.from_export(lm) if str(lm).endswith(".safetensors") else CharLMScorer.from_checkpoint(lm))
    if beam < 1:
        raise ValueError(f"beam must be a positive integer, got {beam!r}")
    return lambda lp: prefix_beam_search(lp, alphabet=alphabet, beam=beam, lm=lm, lm_weight=lm_weight, bonus=bonus,
                                         blank=blank, prune=prune)


__all__ = ["make_decoder", "DECODERS", "prefix_beam_search", "beam_hypotheses", "Hypothesis", "CharLMScorer", "greedy_decode", "export_lm",
           "DEFAULT_PRUNE"]
