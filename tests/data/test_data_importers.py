"""Importers: LibriSpeech layout, JSONL and pocketsphinx-testdata, with counted skips."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bsrnn.data.batching import SpeechDataset
from bsrnn.data.importers import (POCKETSPHINX_TESTDATA, import_jsonl, import_librispeech,
                                  import_pocketsphinx_testdata)
from bsrnn.data.manifest import read_manifest


def _flac(path, seconds=0.6, sr=16000, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr, format="FLAC")


@pytest.fixture
def libri(tmp_path):
    """Two speakers in LibriSpeech layout, with one of each kind of bad utterance."""
    root = tmp_path / "LibriSpeech" / "dev-clean"
    a, b = root / "84" / "121123", root / "1272" / "128104"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    _flac(a / "84-121123-0000.flac")
    _flac(a / "84-121123-0001.flac", sr=8000, channels=2)  # other rate, stereo: kept, resampled later
    (a / "84-121123-0002.flac").write_bytes(b"")  # empty
    (a / "84-121123-0003.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)  # corrupt
    _flac(a / "84-121123-0004.flac")  # transcript with a digit
    (a / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO, DO YOU HEAR?\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED\n"
        "84-121123-0002 AN EMPTY ONE\n84-121123-0003 A CORRUPT ONE\n84-121123-0004 CHAPTER 12\n"
        "84-121123-0005 NO AUDIO FOR THIS ONE\n")
    _flac(b / "1272-128104-0000.flac", seconds=0.05)  # too short
    _flac(b / "1272-128104-0001.flac")
    (b / "1272-128104.trans.txt").write_text("1272-128104-0000 TOO SHORT\n1272-128104-0001 MISTER QUILTER'S MANNER\n")
    return tmp_path / "LibriSpeech"


def test_import_librispeech_keeps_good_and_counts_bad(libri, tmp_path):
    out = tmp_path / "manifests" / "dev.jsonl"
    with pytest.warns(RuntimeWarning, match=r"skipped 5 utterances \(4 bad audio, 1 bad transcript\)"):
        result = import_librispeech(libri, out)
    assert result.written == 3 and result.skipped == {"bad audio": 4, "bad transcript": 1}
    assert "outside the alphabet ('1', '2')" in result.first_problem["bad transcript"]
    expected = ["1272-128104-0000.flac: audio is 0.050 s long; at least 0.10 s is needed.",
                "84-121123-0002.flac: audio file is empty (0 bytes).",
                "84-121123-0003.flac: not a readable audio file, corrupt or unsupported format",
                "84-121123-0005.flac: audio file does not exist."]
    for message in expected:
        assert sum(message in p for p in result.problems) == 1, message
    rows = {r["id"]: r for r in read_manifest(out)}
    assert set(rows) == {"84-121123-0000", "84-121123-0001", "1272-128104-0001"}
    assert rows["84-121123-0000"]["text"] == "go do you hear"
    assert rows["1272-128104-0001"]["text"] == "mister quilter's manner"
    stereo = rows["84-121123-0001"]
    assert (stereo["sample_rate"], stereo["channels"], stereo["speaker"]) == (8000, 2, "84")
    assert Path(stereo["path"]) == libri / "dev-clean" / "84" / "121123" / "84-121123-0001.flac"  # stays put
    ds = SpeechDataset(out, None)  # the imported manifest trains as is: 8 kHz stereo -> 16 kHz mono
    assert ds.lengths[ds.ids.index("84-121123-0001")] == 1 + 9600 // 160


def test_import_librispeech_header_only_misses_nothing_readable(libri, tmp_path):
    with pytest.warns(RuntimeWarning):
        result = import_librispeech(libri, tmp_path / "m.jsonl", verify=False)
    assert result.written == 3 and result.skipped["bad audio"] == 4


def test_import_librispeech_wrong_folder(tmp_path):
    with pytest.raises(ValueError, match=r"no \*\.trans\.txt transcripts found"):
        import_librispeech(tmp_path, tmp_path / "m.jsonl")
    with pytest.raises(FileNotFoundError, match="LibriSpeech root folder does not exist"):
        import_librispeech(tmp_path / "nope", tmp_path / "m.jsonl")


def test_import_jsonl(tmp_path):
    (tmp_path / "audio").mkdir()
    _flac(tmp_path / "audio" / "a.flac")
    _flac(tmp_path / "audio" / "b.flac", sr=44100)
    src = tmp_path / "list.jsonl"
    src.write_text("\n".join([
        '{"path": "audio/a.flac", "text": "Hello-there world!", "speaker": "s1"}',
        '{"id": "bee", "path": "audio/b.flac", "text": "b", "duration": 99}',
        '{"path": "audio/missing.flac", "text": "gone"}',
        '{"path": "audio/a.flac", "text": "again"}',
        '{"path": "audio/a.flac"}',
        'not json',
    ]) + "\n")
    with pytest.warns(RuntimeWarning, match=r"skipped 4 utterances \(1 bad audio, 2 bad line, 1 duplicate id\)"):
        result = import_jsonl(src, tmp_path / "out" / "m.jsonl")
    rows = read_manifest(result.manifest)
    assert [r["id"] for r in rows] == ["a", "bee"]
    assert rows[0]["text"] == "hello there world" and rows[0]["speaker"] == "s1"
    assert rows[1]["duration"] == pytest.approx(0.6)  # measured, not trusted
    assert rows[1]["sample_rate"] == 44100
    assert result.first_problem["bad line"] == f"{src}:5: needs a JSON object with string fields 'path' and 'text'."


@pytest.mark.skipif(not (POCKETSPHINX_TESTDATA / "librivox" / "transcription").is_file(),
                    reason="Debian package pocketsphinx-testdata is not installed")
def test_import_pocketsphinx_testdata(tmp_path):
    result = import_pocketsphinx_testdata(tmp_path)
    rows = read_manifest(tmp_path / "pocketsphinx.jsonl")
    assert result.written == len(rows) == 10 and not result.skipped
    assert 30 < sum(r["duration"] for r in rows) < 40
    cards = {r["id"]: r["text"] for r in rows if r["id"].startswith("cards-")}
    assert cards["cards-001"] == "ten of clubs" and cards["cards-004"] == "five five"
    assert all(r["sample_rate"] == 16000 and r["split"] == "test_real" for r in rows)


def test_import_pocketsphinx_missing_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y pocketsphinx-testdata"):
        import_pocketsphinx_testdata(tmp_path, root=tmp_path / "none")


def test_pocketsphinx_layout_with_bad_lines(tmp_path):
    root = tmp_path / "data"
    (root / "cards").mkdir(parents=True)
    _flac(root / "cards" / "001.flac")
    sf.write(root / "cards" / "001.wav", sf.read(root / "cards" / "001.flac")[0], 16000)
    (root / "cards" / "cards.transcription").write_text("<s> ace of spades </s> (001)\ngarbage line\n"
                                                        "<s> two </s> (002)\n")
    with pytest.warns(RuntimeWarning, match=r"\(1 bad audio, 1 bad line, 1 missing transcription\)"):
        result = import_pocketsphinx_testdata(tmp_path / "out", root=root)
    assert result.written == 1 and read_manifest(result.manifest)[0]["text"] == "ace of spades"
