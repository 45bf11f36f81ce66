"""The one reader of WordNet 3.0's data files (Debian's ``wordnet-base``, ``/usr/share/wordnet``).

Two parts of bsrnn read WordNet: ``text.wordnet_prompts`` takes the quoted example phrases of
the glosses as speech prompts, and ``textcorpus.wordnet_glosses`` takes whole glosses as
language-model documents. Both read through here, so the dictionary's location, the files read
and the layout of a synset line are known in one place.

A data line is ``offset lex_filenum ss_type w_cnt word lex_id ... p_cnt [ptr...] | gloss``; the
licence header at the top of each file is the lines that start with two spaces (every data
line starts with its byte offset).
"""

from __future__ import annotations

from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")  # the order glosses come in


def data_files(root: str | Path = WORDNET_DIR) -> list[Path]:
    """The four data files under ``root`` (noun, verb, adj, adv), all of which must exist."""
    root = Path(root)
    files = [root / name for name in DATA_FILES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"WordNet data files {', '.join(missing)} not found in {root}; install the "
                                "Debian package wordnet-base (`apt-get install -y wordnet-base`)")
    return files


def glosses(root: str | Path = WORDNET_DIR) -> list[str]:
    """The gloss of every synset (the text after `` | ``, stripped), in file order.

    A gloss is the definition, then the double-quoted example phrases, separated by ``;``.
    """
    out = []
    for path in data_files(root):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # the licence header
                    continue
                _, bar, gloss = line.partition(" | ")
                gloss = gloss.strip()
                if bar and gloss:
                    out.append(gloss)
    return out
