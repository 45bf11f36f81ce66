"""``bsrnn data`` sub-commands, driven through a parser built the way bsrnn/cli.py builds it."""

import argparse

import numpy as np
import pytest
import soundfile as sf

from bsrnn.data.cli import register
from bsrnn.data.manifest import read_manifest


def _run(argv):
    parser = argparse.ArgumentParser(prog="bsrnn")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_synth_and_stats(tmp_path, capsys, tts):
    out = tmp_path / "c"
    assert _run(["data", "synth", "--out", str(out), "--n-utts", "5", "--seed", "1", "--workers", "1",
                 "--dev-size", "1", "--test-size", "1", "--unseen-voice-test-size", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "test_unseen_voices" in text and len(read_manifest(out / "train.jsonl")) == 2
    assert _run(["data", "stats", str(out / "train.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "2 utterances" in text and "voices: " in text and ("espeak-ng:" in text or "flite:" in text)


def test_synth_folder_as_argument_or_option(tmp_path, capsys, tts, monkeypatch):
    small = ["--n-utts", "4", "--dev-size", "1", "--test-size", "1", "--unseen-voice-test-size", "1", "--quiet",
             "--workers", "1"]
    _run(["data", "synth", str(tmp_path / "pos"), *small])
    assert (tmp_path / "pos" / "train.jsonl").is_file()
    monkeypatch.chdir(tmp_path)  # no folder given: data/corpus, where the trainer looks
    _run(["data", "synth", *small])
    assert (tmp_path / "data" / "corpus" / "train.jsonl").is_file()
    with pytest.raises(SystemExit):
        _run(["data", "synth", "a", "--out", "b"])


def test_synth_sizes_are_exclusive(tmp_path):
    with pytest.raises(SystemExit):
        _run(["data", "synth", "--out", str(tmp_path), "--n-utts", "5", "--hours", "1"])


def test_import_jsonl_and_librispeech(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", 0.1 * np.ones(4000), 16000)
    (tmp_path / "src.jsonl").write_text('{"path": "a.wav", "text": "One."}\n{"path": "zz.wav", "text": "b"}\n')
    with pytest.warns(RuntimeWarning):
        assert _run(["data", "import-jsonl", str(tmp_path / "src.jsonl"), "--out", str(tmp_path / "m.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "wrote 1 utterances" in text and "skipped 1 (bad audio)" in text and "zz.wav" in text
    spk = tmp_path / "libri" / "1" / "2"
    spk.mkdir(parents=True)
    sf.write(spk / "1-2-0000.flac", 0.1 * np.ones(4000), 16000)
    (spk / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    assert _run(["data", "import-librispeech", str(tmp_path / "libri"), "--out", str(tmp_path / "l.jsonl"),
                 "--no-verify"]) == 0
    assert read_manifest(tmp_path / "l.jsonl")[0]["text"] == "hello"


def test_stats_without_voice_fields(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"id": "a", "path": "a.wav", "text": "a", "duration": 1.5}\n')
    _run(["data", "stats", str(tmp_path / "m.jsonl")])
    assert "1 utterances, 0.000 h" in capsys.readouterr().out
