"""``bsrnn bench decode`` end to end: a speech model trained here on real TTS utterances and a tiny
character LM, decoded greedy / beam / beam + LM on dev and test; the result files carry every row."""

import json
import random
import shutil

import pytest

from bsrnn.cli import main

PROMPTS = ["the cat sat on the mat", "open the door please", "green apples are sour", "my dog likes to run",
           "rain falls on the hill", "read the book aloud", "call me in the morning", "the sky is blue today"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None and shutil.which("flite") is None,
                    reason="needs espeak-ng or flite to synthesize the test utterances")
def test_bench_decode_writes_a_row_per_model_split_and_decoder(tmp_path, capsys):
    from bsrnn.data.synth import synthesize
    from bsrnn.train import load_config, train
    from bsrnn.train.lm import load_lm_config, train_lm

    corpus = tmp_path / "corpus"
    synthesize(corpus, n_utts=8, dev_size=2, test_size=2, unseen_voice_test_size=0, prompts=PROMPTS,
               workers=1, progress=False, seed=1)
    run = tmp_path / "asr"
    train(load_config(None, [
        f"data.corpus={corpus}", f"train.run_dir={run}", "data.test=['test']", "model.preset=gru64u",
        "model.hidden=32", "model.layers=1", "model.conv_channels=4", "train.threads=1", "train.precision=fp32",
        "train.batch_size=4", "train.epochs=2", "schedule.warmup_steps=1", "log.progress=false",
        "log.tensorboard=false"]))
    rng = random.Random(0)
    text = tmp_path / "lm.txt"
    words = " ".join(PROMPTS).split()  # and every letter of the speech alphabet, which the LM must cover
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(6)) + " abcdefghijklmnopqrstuvwxyz'"
                              for _ in range(80)))
    train_lm(load_lm_config(None, [
        "data.source=text", f"data.path={json.dumps(str(text))}", "data.cache_dir=''", "model.emb=8",
        "model.hidden=16", "train.batch_size=4", "train.bptt=8", "train.steps=6", "train.warmup_steps=2",
        "train.eval_every=6", "train.eval_tokens=100", f"train.run_dir={json.dumps(str(tmp_path / 'lm'))}",
        "log.tensorboard=false", "log.progress=false"]))

    out = tmp_path / "bench"
    assert main(["bench", "decode", "--models", str(run / "best.pt"), "--lm", str(tmp_path / "lm" / "best.pt"),
                 "--beam", "4", "--weights", "0.3", "0.5", "--bonuses", "0", "1", "--splits", "test",
                 "--no-pocketsphinx", "--out", str(out)]) == 0
    result = json.loads((out / "decode.json").read_text())
    rows = result["rows"]
    assert {(r["split"], r["decoder"]) for r in rows} == {(s, d) for s in ("dev", "test")
                                                         for d in ("greedy", "beam", "beam+lm")}
    for r in rows:
        assert r["model"] == "asr" and r["utterances"] == 2 and 0 <= r["cer"] and r["ms_per_utterance"] >= 0
        assert (r["lm_weight"] is None) == (r["decoder"] != "beam+lm")
    assert len(result["tuning"]) == 4  # the 2 x 2 dev grid
    best = min(result["tuning"], key=lambda t: t["cer"])
    lm_row = next(r for r in rows if r["split"] == "dev" and r["decoder"] == "beam+lm")
    assert lm_row["cer"] == best["cer"]  # the dev-tuned pair is the one applied
    md = (out / "decode.md").read_text()
    assert md.count("| asr | test |") == 3 and "ms / utt" in md
