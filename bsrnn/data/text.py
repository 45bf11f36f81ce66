"""Character vocabulary for CTC speech recognition, and the WordNet prompt source.

The paper's speech models (Narang et al. 2017, §4.1, after Deep Speech 2) emit one character
distribution per output frame and are trained with CTC. The vocabulary here is the smallest
one that covers English read speech: the CTC blank, space, apostrophe and a–z (29 symbols).

``normalize`` maps free text (LibriSpeech transcripts, JSONL imports, WordNet examples) into
that alphabet's form; ``encode`` is strict and refuses anything it cannot represent, so bad
transcripts surface as one clear error at import time instead of a silent hole in training.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from . import wordnet

ALPHABET: str = "_ 'abcdefghijklmnopqrstuvwxyz"
BLANK: int = 0
_INDEX = {ch: i for i, ch in enumerate(ALPHABET) if i != BLANK}

# Typographic apostrophes become ASCII ones (they are part of words: "don’t"); quotation
# marks and clause punctuation carry no sound and are dropped.
_TRANSLATE = str.maketrans({"’": "'", "‘": "'", "-": " ", "‐": " ", "–": " ", "—": " "})
_STRIP = re.compile(r"[,;:!?.\"“”`]")
_SPACES = re.compile(r"\s+")

WORDNET_DIR = wordnet.WORDNET_DIR  # kept for callers of text.WORDNET_DIR / WORDNET_FILES
WORDNET_FILES = wordnet.DATA_FILES
_EXAMPLE = re.compile(r'"([^"]*)"')
# Words of letters with in-word apostrophes (don't) or a plural possessive (boys'); any other
# apostrophe is a quotation mark ('horse', `tup'), which TTS does not voice: the target would lie.
_WORD = r"[a-z]+(?:'[a-z]+)*(?:(?<=s)')?"
_PROMPT_OK = re.compile(rf"{_WORD}(?: {_WORD})*")


def normalize(text: str) -> str:
    """Lower-case; hyphens become spaces; drop , ; : ! ? . and quotes; collapse spaces.

    Accents are removed (café -> cafe: NFKD, then combining marks dropped), since a reader
    says the same letters. Digits and other symbols stay, so ``encode`` reports them.
    """
    text = unicodedata.normalize("NFKD", text.lower().translate(_TRANSLATE))
    text = _STRIP.sub("", "".join(ch for ch in text if not unicodedata.combining(ch)))
    return _SPACES.sub(" ", text).strip()


def encode(text: str, where: str = "") -> list[int]:
    """Map ``text`` (already normalised) to symbol ids 1..28; never emits the blank.

    ``where`` names the source (utterance id, file and line) in the error message.
    """
    prefix = f"{where}: " if where else ""
    if not text or not text.strip():
        raise ValueError(f"{prefix}transcript is empty; every utterance needs at least one character.")
    unknown = sorted({ch for ch in text if ch not in _INDEX})
    if unknown:
        shown = ", ".join(repr(ch) for ch in unknown)
        raise ValueError(
            f"{prefix}transcript {text!r} contains characters outside the alphabet ({shown}); "
            "only a-z, apostrophe and space are allowed (text.normalize lower-cases and strips punctuation)."
        )
    return [_INDEX[ch] for ch in text]


def decode(ids: Iterable[int]) -> str:
    """Map symbol ids back to text, dropping blanks (no repeat collapsing: see ctc_greedy_decode)."""
    return "".join(ALPHABET[int(i)] for i in _as_ints(ids) if int(i) != BLANK)


def ctc_greedy_decode(ids_per_frame: Iterable[int]) -> str:
    """Best-path CTC decoding: collapse runs of the same id, then drop blanks.

    ``ids_per_frame`` is the arg-max symbol of each output frame of one utterance (already cut
    to its length). A blank between two equal symbols keeps both, which is how CTC spells "ll".
    """
    out, prev = [], None
    for i in _as_ints(ids_per_frame):
        if i != prev and i != BLANK:
            out.append(ALPHABET[i])
        prev = i
    return "".join(out)


def _as_ints(ids: Iterable[int]) -> list[int]:
    if hasattr(ids, "tolist"):  # numpy arrays and torch tensors, without importing torch here
        ids = ids.tolist()
    ids = list(ids)
    if ids and isinstance(ids[0], (list, tuple)):
        raise ValueError("expected a 1-D sequence of symbol ids (arg-max per frame of one utterance), got 2-D")
    bad = [i for i in ids if not 0 <= int(i) < len(ALPHABET)]
    if bad:
        raise ValueError(f"symbol ids must lie in 0..{len(ALPHABET) - 1}; got {bad[:5]}")
    return [int(i) for i in ids]


def wordnet_prompts(wordnet_dir: str | Path = WORDNET_DIR, *, min_words: int = 3,
                    max_words: int = 12) -> list[str]:
    """WordNet 3.0 example phrases usable as TTS prompts, sorted and de-duplicated.

    The examples are the double-quoted strings in each gloss (``bsrnn.data.wordnet.glosses`` of
    ``wordnet_dir``). A phrase is kept when, after ``normalize``, it is entirely ``[a-z' ]`` with
    no apostrophe used as a quotation mark, and has ``min_words``..``max_words`` words (39,947
    phrases from Debian's ``wordnet-base``, 6.0 words on average). Sorting makes the list, and
    so every corpus drawn from it, independent of file order.
    """
    prompts: set[str] = set()
    for gloss in wordnet.glosses(wordnet_dir):
        for example in _EXAMPLE.findall(gloss):
            phrase = normalize(example)
            if _PROMPT_OK.fullmatch(phrase) and min_words <= len(phrase.split()) <= max_words:
                prompts.add(phrase)
    return sorted(prompts)
