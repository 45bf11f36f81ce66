"""``bsrnn transcribe`` end to end: a model trained here on real TTS utterances, exported by
``bsrnn export``, transcribes them offline and streaming; bad files get one line each."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bsrnn.cli import main
from bsrnn.data.synth import synthesize
from bsrnn.inference import load

PROMPTS = ["the cat sat on the mat", "open the door please", "green apples are sour", "my dog likes to run",
           "rain falls on the hill", "read the book aloud", "call me in the morning", "the sky is blue today",
           "time flies like an arrow", "we need more light here"]
HAVE_TTS = shutil.which("espeak-ng") is not None or shutil.which("flite") is not None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Ten TTS utterances of the prompts above (train holds 4)."""
    if not HAVE_TTS:
        pytest.skip("needs espeak-ng or flite to synthesize the test utterances")
    corpus = tmp_path_factory.mktemp("transcribe") / "corpus"
    synthesize(corpus, n_utts=10, dev_size=2, test_size=2, unseen_voice_test_size=2, prompts=PROMPTS,
               workers=1, progress=False, seed=3)
    return corpus


@pytest.fixture(scope="module")
def trained(corpus):
    """A unidirectional GRU + row conv overfitted to 4 TTS utterances, exported by ``bsrnn export``.
    fp32 and 250 steps: at 150 steps in bf16 the fit reached CER 0 on one CPU and 23 % on another."""
    from bsrnn.train import load_config, train

    root = corpus.parent
    run = root / "run"
    train(load_config(None, [
        f"data.corpus={corpus}", f"train.run_dir={run}", "data.dev=train", "data.test=['train']",
        "model.preset=gru64u", "model.hidden=128", "model.layers=1", "model.lookahead=4", "model.conv_channels=8",
        "train.threads=1", "train.precision=fp32", "train.batch_size=4", "train.epochs=250", "optim.lr=1e-2", "schedule.warmup_steps=2",
        "schedule.decay_start=1000", "train.checkpoint_every=100000", "log.progress=false",
        "log.tensorboard=false", "log.every=50"]))
    out = root / "model.safetensors"
    assert main(["export", str(run / "best.pt"), str(out)]) == 0
    return corpus, out, run


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_transcribe_recovers_the_text_offline_and_streaming(trained, capsys):
    corpus, model, _ = trained
    assert load(model).speech["architecture"]["bidirectional"] is False  # the whole model is in the file
    manifest = corpus / "train.jsonl"
    results = {}
    for args in (["--runtime", "sparse"], ["--runtime", "dense"], ["--stream", "--chunk-ms", "160"],
                 ["--stream", "--runtime", "dense", "--chunk-ms", "330"]):
        assert main(["transcribe", str(model), "--manifest", str(manifest), "--json", *args]) == 0
        lines = _json_lines(capsys.readouterr().out)
        summary = lines[-1]["summary"]
        assert summary["utterances"] == 4 and summary["cer"] < 15.0, lines  # CER of the hypotheses vs the prompts
        results[" ".join(args)] = [(r["file"], r["text"]) for r in lines[:-1]]
        assert all(r["rtf"] > 0 and r["audio_s"] > 0.5 for r in lines[:-1])
        if "--stream" in args:
            assert all(r["mode"] == "stream" and r["chunks"] > 3 for r in lines[:-1])
    first = next(iter(results.values()))
    assert all(v == first for v in results.values()), results  # streamed text == offline text, both runtimes
    # the plain form: one "name: text" line per file, in order
    wavs = sorted((corpus / "wav" / "train").glob("*.wav"))[:2]
    assert main(["transcribe", str(model), *map(str, wavs), "--stream"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in out] == [str(w) for w in wavs]


def test_bad_files_get_one_line_each_and_the_next_file_goes_on(speech, tmp_path, capsys):
    model = speech.saved(speech.random_model("gru64u"), tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal(16000)).astype(np.float32)
    sf.write(tmp_path / "good.wav", x, 16000)
    sf.write(tmp_path / "stereo.wav", np.stack([x, x], 1), 16000)  # downmixed, as training does
    t = np.arange(44100) / 44100
    sf.write(tmp_path / "cd.wav", np.interp(t, np.arange(16000) / 16000, x).astype(np.float32), 44100)  # resampled
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    sf.write(tmp_path / "short.wav", x[:400], 16000)
    names = ["good", "missing", "empty", "stereo", "corrupt", "short", "cd"]
    files = [str(tmp_path / f"{n}.wav") for n in names]
    assert main(["transcribe", str(model), *files]) == 1
    cap = capsys.readouterr()
    out, err = cap.out.splitlines(), cap.err.splitlines()
    assert [line.split(": ", 1)[0] for line in out] == [files[0], files[3], files[6]]
    assert out[0].split(": ", 1)[1] == out[1].split(": ", 1)[1]  # stereo of the same samples: the same text
    reasons = {"missing": "does not exist", "empty": "empty", "corrupt": "not a readable audio file",
               "short": "at least 0.10 s"}
    for name, words in reasons.items():
        lines = [e for e in err if f"{name}.wav" in e]
        assert len(lines) == 1 and words in lines[0] and lines[0].startswith("bsrnn: error: "), err
    assert err[-1] == "bsrnn: 4 of 7 files could not be transcribed"
    assert main(["transcribe", str(model), files[1], "--json"]) == 1
    assert "does not exist" in json.loads(capsys.readouterr().out)["error"]


def test_bad_models_and_options_are_one_sentence(speech, tmp_path, capsys):
    bi = speech.saved(speech.random_model("gru32"), tmp_path / "bi.safetensors")
    sf.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    cases = [(["transcribe", str(bi), str(tmp_path / "a.wav"), "--stream"], "cannot stream"),
             (["transcribe", str(tmp_path / "none.safetensors"), str(tmp_path / "a.wav")], "no exported model"),
             (["transcribe", str(tmp_path / "a.wav"), str(tmp_path / "a.wav")], "not a readable safetensors"),
             (["transcribe", str(bi)], "no audio to transcribe"),
             (["transcribe", str(bi), str(tmp_path / "a.wav"), "--threads", "0"], "threads must be at least 1")]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)


def test_make_example_exports_the_run_and_writes_its_card(trained, tmp_path):
    """scripts/make_example.py: the example file and a model card whose CER is the exported file's."""
    import importlib.util

    corpus, _, run = trained
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_example.py"
    spec = importlib.util.spec_from_file_location("make_example", script)
    make_example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_example)
    assert make_example.main([str(run / "best.pt"), "--out-dir", str(tmp_path), "--corpus", str(corpus),
                              "--splits", "train", "--name", "tiny", "--provisional"]) == 0
    card = (tmp_path / "tiny.md").read_text()
    exp = load(tmp_path / "tiny.safetensors")
    assert exp.speech is not None and exp.config["train"]["run_dir"] == f"runs/{run.name}"  # no outside folder
    row = next(line for line in card.splitlines() if line.startswith("| train |"))
    cer = float(row.split("|")[3])
    assert 0 <= cer < 15.0 and "Provisional example" in card and "gru64u" in card
    assert f"{(tmp_path / 'tiny.safetensors').stat().st_size / 1e6:.2f} MB" in card
    assert str(run.parent) not in card  # the card names the run, not the folder it was trained in
    fp32_cer, fp32_size = cer, (tmp_path / "tiny.safetensors").stat().st_size

    # --dtype int8: a smaller file, and the card scores the fp32 export of the same checkpoint beside it
    assert make_example.main([str(run / "best.pt"), "--out-dir", str(tmp_path), "--corpus", str(corpus),
                              "--splits", "train", "--name", "tiny8", "--dtype", "int8"]) == 0
    card = (tmp_path / "tiny8.md").read_text()
    assert load(tmp_path / "tiny8.safetensors").sparse and (tmp_path / "tiny8.safetensors").stat().st_size < fp32_size
    assert "block values in int8, one scale per block row" in card and "Provisional" not in card
    quant = next(line for line in card.splitlines() if line.startswith("Quantisation:"))
    assert f"train {fp32_cer:.2f} %" in quant and "points in int8" in quant, quant


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_committed_example_transcribes_unheard_tts_utterances(corpus, capsys):
    """examples/: a whole block-sparse speech model under 1 MB with its card; on these ten prompts,
    none of them in its training data, it gets most characters right."""
    (model,) = sorted(EXAMPLES.glob("*.safetensors"))
    assert model.stat().st_size < 1_000_000 and model.with_suffix(".md").is_file()
    exp = load(model)
    assert exp.speech is not None and all(m.density < 0.3 for m in exp.sparse.values())  # block-pruned
    rows = [json.loads(line) for split in ("train", "dev", "test", "test_unseen_voices")
            for line in (corpus / f"{split}.jsonl").read_text().splitlines()]
    manifest = corpus / "all.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["transcribe", str(model), "--manifest", str(manifest), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])["summary"]
    assert summary["utterances"] == 10 and summary["cer"] < 60.0, summary
