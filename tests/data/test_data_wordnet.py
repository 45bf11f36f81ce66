"""The one WordNet reader, and the speech prompts and LM documents read through it.

The digests pin what the code read before the two readers were merged into
``bsrnn.data.wordnet``: the embedded speech corpus is a pure function of the prompt list (and
its seed), and its prompts are committed evidence, so the list must not change."""

import hashlib
from pathlib import Path

import pytest

from bsrnn.data import text, textcorpus, wordnet

HAVE_WORDNET = Path("/usr/share/wordnet/data.noun").is_file()
# sha256 of "\n".join(...) over Debian wordnet-base 3.0, computed with the two old readers.
PROMPTS = (39_947, "4eb93e6609f3859a69133887790e8b02e3d16a7ee994b0d2fb5cd14fc2193197")
GLOSSES = (117_659, "b1b95475159f4c735f9676c474f980cb1cb3c66f1a660f437105509d6484aaaf")


def _digest(lines: list[str]) -> tuple[int, str]:
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.skipif(not HAVE_WORDNET, reason="needs Debian wordnet-base")
def test_prompts_and_glosses_are_what_the_old_readers_gave():
    glosses = wordnet.glosses()
    assert _digest(glosses) == GLOSSES
    assert textcorpus.wordnet_glosses() == glosses
    assert _digest(text.wordnet_prompts()) == PROMPTS


HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n"


def _fake_wordnet(root: Path) -> Path:
    """Four data files in WordNet's layout: a licence header, then one line per synset."""
    root.mkdir()
    lines = {
        "data.noun": ['00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived; "the entity '
                      'was there"; "a \'quoted\' word here"  ',
                      "00002137 03 n 01 abstraction 0 000 | a general concept  "],
        "data.verb": ['00001740 29 v 01 breathe 0 000 02 + 1 | draw air into the lungs; "she breathed deeply '
                      'and slowly"; "too short"  '],
        "data.adj": ["00001740 00 a 01 able 0 000 | (usually followed by `to') having the means  "],
        "data.adv": ["00001740 02 r 01 barely 0 000 |   "],  # an empty gloss is no document
    }
    for name, rows in lines.items():
        (root / name).write_text(HEADER + "".join(r + "\n" for r in rows))
    return root


def test_one_reader_serves_prompts_and_documents(tmp_path):
    root = _fake_wordnet(tmp_path / "wn")
    glosses = wordnet.glosses(root)
    assert glosses == ['that which is perceived; "the entity was there"; "a \'quoted\' word here"',
                       "a general concept", 'draw air into the lungs; "she breathed deeply and slowly"; "too short"',
                       "(usually followed by `to') having the means"]
    assert textcorpus.wordnet_glosses(root) == glosses
    assert textcorpus.load_documents("wordnet", root) == glosses
    # examples of 3..12 words, no quotation-mark apostrophes; sorted
    assert text.wordnet_prompts(root) == ["she breathed deeply and slowly", "the entity was there"]
    assert text.wordnet_prompts(root, min_words=2) == ["she breathed deeply and slowly", "the entity was there",
                                                       "too short"]


def test_missing_files_are_named_with_the_package_to_install(tmp_path):
    root = _fake_wordnet(tmp_path / "wn")
    (root / "data.adv").unlink()
    (root / "data.verb").unlink()
    for read in (wordnet.glosses, text.wordnet_prompts, textcorpus.wordnet_glosses):
        with pytest.raises(FileNotFoundError, match=r"data\.verb, data\.adv not found in .*apt-get install -y "
                                                    r"wordnet-base"):
            read(root)


def test_old_names_still_point_at_the_reader():
    assert text.WORDNET_DIR == textcorpus.WORDNET_DIR == wordnet.WORDNET_DIR == Path("/usr/share/wordnet")
    assert text.WORDNET_FILES == wordnet.DATA_FILES
