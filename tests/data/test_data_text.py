"""Alphabet, normalisation, strict encoding and CTC decoding."""

from pathlib import Path

import pytest
import torch

from bsrnn.data.text import ALPHABET, BLANK, ctc_greedy_decode, decode, encode, normalize, wordnet_prompts


def test_alphabet_layout():
    assert len(ALPHABET) == 29 and ALPHABET[BLANK] == "_" and ALPHABET[1] == " " and ALPHABET[2] == "'"
    assert ALPHABET[3:] == "abcdefghijklmnopqrstuvwxyz"


def test_normalize():
    assert normalize('  Hello, World!  It’s a well-known "thing";  OK?  ') == "hello world it's a well known thing ok"
    assert normalize("a:b.c") == "abc"
    assert normalize("Café NAÏVE façade 2") == "cafe naive facade 2"  # the digit is left for encode


def test_encode_decode_roundtrip():
    text = "don't stop the music"
    ids = encode(text)
    assert BLANK not in ids and ids[0] == ALPHABET.index("d") and ids[3] == 2
    assert decode(ids) == text
    assert decode(torch.tensor([0, *ids, 0])) == text  # blanks dropped, tensors accepted


def test_encode_unknown_characters_names_where_and_chars():
    with pytest.raises(ValueError) as err:
        encode("café 2", where="utt-7")
    assert str(err.value).startswith("utt-7: transcript 'café 2' contains characters outside the alphabet ('2', 'é')")


@pytest.mark.parametrize("text", ["", "   "])
def test_encode_empty_text(text):
    with pytest.raises(ValueError, match="x.jsonl:3: transcript is empty"):
        encode(text, where="x.jsonl:3")


def test_ctc_greedy_decode_collapses_repeats_and_drops_blanks():
    a, b, l = (ALPHABET.index(c) for c in "abl")
    assert ctc_greedy_decode([0, a, a, 0, b, b, b, 0]) == "ab"
    assert ctc_greedy_decode([l, l, 0, l]) == "ll"  # a blank separates a real double letter
    assert ctc_greedy_decode(torch.tensor([0, 0, 0])) == ""
    with pytest.raises(ValueError, match="0..28"):
        ctc_greedy_decode([0, 29])
    with pytest.raises(ValueError, match="1-D"):
        ctc_greedy_decode([[0, 1]])


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="needs Debian wordnet-base")
def test_wordnet_prompts():
    prompts = wordnet_prompts()
    assert 39_000 < len(prompts) < 41_000
    assert prompts == sorted(set(prompts))
    for p in prompts:
        encode(p, where=p)
        assert 3 <= len(p.split()) <= 12 and not p.startswith("'") and " '" not in p


def test_wordnet_missing_folder_says_what_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        wordnet_prompts(tmp_path)
