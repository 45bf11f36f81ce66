"""The LM text for shallow fusion excludes every dev/test prompt of the speech corpus (docs/decoding.md §3)."""

import json
from pathlib import Path

import pytest

from bsrnn.data.manifest import write_manifest
from bsrnn.data.textcorpus import build_corpus, exclude_prompts, held_out_prompts, prompt_words, speech_documents


def manifest(path: Path, texts):
    write_manifest(path, [{"id": f"u{i}", "path": f"wav/u{i}.wav", "text": t, "duration": 1.0}
                          for i, t in enumerate(texts)])


def test_a_document_containing_a_held_out_prompt_is_dropped_and_a_partial_match_is_not(tmp_path):
    manifest(tmp_path / "test.jsonl", ["the cat sat down", "don't go"])
    manifest(tmp_path / "train.jsonl", ["a train prompt stays"])  # train prompts may stay in the LM text
    prompts = held_out_prompts([tmp_path])
    assert prompts == {("the", "cat", "sat", "down"), ("dont", "go")}
    docs = ['a feline; "The cat sat -- down!"', "the cat sat up", "Don't go; please", "do not go",
            "a train prompt stays", "concat sat downhill"]
    kept, dropped = exclude_prompts(docs, prompts)
    assert kept == ["the cat sat up", "do not go", "a train prompt stays", "concat sat downhill"] and dropped == 2
    assert prompt_words("(Don't) go!") == ("dont", "go")
    with pytest.raises(FileNotFoundError, match="neither a speech manifest nor a corpus folder"):
        held_out_prompts([tmp_path / "nope"])


def test_speech_normalisation_cuts_at_semicolons_and_keeps_the_speech_alphabet():
    assert speech_documents(['a feline (cat); "the Cat-like 3 pets"', ";;"]) == ["a feline cat", "the cat like pets"]


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base is not installed")
def test_no_dev_or_test_prompt_of_a_planned_corpus_is_in_the_lm_text(tmp_path):
    from bsrnn.data.synth import plan_corpus
    from bsrnn.data.text import wordnet_prompts
    jobs = plan_corpus(wordnet_prompts(), {"train": 50, "dev": 60, "test": 60, "test_unseen_voices": 40}, seed=0)
    for split in ("train", "dev", "test", "test_unseen_voices"):
        manifest(tmp_path / f"{split}.jsonl", [j["text"] for j in jobs if j["split"] == split])
    held = {" ".join(prompt_words(j["text"])) for j in jobs if j["split"] != "train"}
    assert len(held) == 160
    corpus = build_corpus("wordnet", "char", exclude=[tmp_path], normalize="speech", cache_dir=None)
    text = "\n".join(corpus.vocab.decode(s.tolist()) for s in (corpus.train, corpus.valid, corpus.test))
    words = "\n".join(" " + " ".join(prompt_words(line)) + " " for line in text.split("\n"))
    assert not [p for p in held if f" {p} " in words]
    assert corpus.meta["excluded_prompts"] == 160 and 160 <= corpus.meta["excluded_documents"] < 400
    plain = "\n".join(" " + " ".join(prompt_words(d)) + " " for d in speech_documents(
        __import__("bsrnn.data.wordnet", fromlist=["glosses"]).glosses()))
    assert sum(f" {p} " in plain for p in held) >= 150  # without the exclusion they are there
    assert set(corpus.vocab.itos) <= set("\ufffd\n 'abcdefghijklmnopqrstuvwxyz")
    assert json.dumps(corpus.meta)  # the exclusion is recorded in the corpus metadata
