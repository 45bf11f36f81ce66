"""JSONL manifests: round trip, path handling, and one clear error per kind of bad line."""

import json
import os

import pytest

from bsrnn.data.manifest import read_manifest, write_manifest


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_roundtrip_relative_and_absolute_paths(tmp_path):
    rows = [{"id": "a", "path": str(tmp_path / "wav" / "a.wav"), "text": "hi there", "duration": 1.5, "voice": "x"},
            {"id": "b", "path": "/elsewhere/b.flac", "text": "yo", "duration": 2}]
    m = write_manifest(tmp_path / "m.jsonl", rows)
    stored = [json.loads(line) for line in m.read_text().splitlines()]
    assert stored[0]["path"] == os.path.join("wav", "a.wav")  # under the manifest's folder: relative
    assert stored[1]["path"] == "/elsewhere/b.flac"  # elsewhere: absolute
    back = read_manifest(m)
    assert back == rows  # paths resolved back to absolute, extra keys kept
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_relative_paths_resolve_against_manifest_folder(tmp_path):
    sub = tmp_path / "corpus"
    sub.mkdir()
    m = _write_lines(sub / "m.jsonl", ['{"id": "a", "path": "../x/a.wav", "text": "a", "duration": 1}', ""])
    assert read_manifest(m)[0]["path"] == str(tmp_path / "x" / "a.wav")


def test_bad_json_names_file_and_line(tmp_path):
    m = _write_lines(tmp_path / "m.jsonl", ['{"id": "a", "path": "a.wav", "text": "a", "duration": 1}',
                                            '{"id": "b", "path": "b.wav",'])
    with pytest.raises(ValueError, match=r"m\.jsonl:2: not valid JSON"):
        read_manifest(m)


def test_missing_fields_are_listed(tmp_path):
    m = _write_lines(tmp_path / "m.jsonl", ['{"id": "a", "path": "a.wav"}'])
    with pytest.raises(ValueError, match=r"m\.jsonl:1: missing field\(s\) 'text', 'duration'; every line needs"):
        read_manifest(m)


def test_duplicate_ids_point_at_first_use(tmp_path):
    line = '{"id": "a", "path": "a.wav", "text": "a", "duration": 1}'
    m = _write_lines(tmp_path / "m.jsonl", [line, line.replace("a.wav", "b.wav"), line])
    with pytest.raises(ValueError, match=r"m\.jsonl:2: duplicate id 'a' \(first used on line 1\)"):
        read_manifest(m)


@pytest.mark.parametrize("line, message", [
    ('[1, 2]', "expected a JSON object per line, got list"),
    ('{"id": "", "path": "a", "text": "a", "duration": 1}', "'id' must be a non-empty string"),
    ('{"id": "a", "path": "a", "text": "a", "duration": -1}', "'duration' must be a number of seconds >= 0"),
    ('{"id": "a", "path": "a", "text": "a", "duration": "3"}', "'duration' must be a number"),
    ('{"id": "a", "path": "a", "text": 5, "duration": 1}', "'text' must be a string"),
])
def test_ill_typed_fields(tmp_path, line, message):
    with pytest.raises(ValueError, match=message):
        read_manifest(_write_lines(tmp_path / "m.jsonl", [line]))


def test_write_refuses_invalid_rows_and_keeps_old_file(tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [{"id": "a", "path": "a.wav", "text": "a", "duration": 1}])
    before = m.read_bytes()
    with pytest.raises(ValueError, match="row 1: duplicate id 'a'"):
        write_manifest(m, [{"id": "a", "path": "a.wav", "text": "a", "duration": 1}] * 2)
    with pytest.raises(ValueError, match="row 0: missing field"):
        write_manifest(m, [{"id": "a", "path": "a.wav"}])
    assert m.read_bytes() == before
