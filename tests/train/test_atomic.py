"""bsrnn.atomic: whole files or none, no temporaries left, the same for every writer of the package."""

import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from bsrnn.atomic import atomic_path, open_atomic, remove_stale_temporaries, write_bytes, write_json, write_text


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_writes_round_trip_with_the_mode_open_gives(tmp_path):
    write_bytes(b"\x00\x01", tmp_path / "a.bin")
    write_text("héllo\n", tmp_path / "sub" / "b.txt")  # parent folders are made
    write_json({"x": [1, 2.5], "nan": math.nan, "inf": -math.inf}, tmp_path / "c.json")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    text = (tmp_path / "c.json").read_text()
    assert text.endswith("}\n") and "NaN" not in text and "Infinity" not in text  # strict JSON
    assert json.loads(text) == {"x": [1, 2.5], "nan": None, "inf": None}
    with open(tmp_path / "plain", "w"):
        pass
    plain = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "c.json").st_mode) == plain  # not mkstemp's 0600
    assert _listing(tmp_path) == ["a.bin", "c.json", "plain", "sub"]


@pytest.mark.parametrize("kind", ["path", "text", "bytes"])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, kind):
    target = tmp_path / "out.dat"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="writer failed"):
        if kind == "path":
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"half of the new")  # the temporary holds a partial file ...
                raise RuntimeError("writer failed")
        else:
            with open_atomic(target, "w" if kind == "text" else "wb") as f:
                f.write("partial" if kind == "text" else b"partial")
                raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old contents"  # ... which never replaces the file
    assert _listing(tmp_path) == ["out.dat"]


def test_a_failing_writer_leaves_no_file_where_there_was_none(tmp_path):
    with pytest.raises(Exception):  # a lambda cannot be pickled: torch.save fails after it began writing
        with atomic_path(tmp_path / "state.pt") as tmp:
            torch.save({"w": torch.ones(100), "f": lambda: 0}, tmp)
    assert _listing(tmp_path) == []


def test_writers_that_open_the_path_themselves(tmp_path):
    import soundfile as sf
    from safetensors.torch import load_file, save_file
    with atomic_path(tmp_path / "t.safetensors") as tmp:
        save_file({"w": torch.arange(4.0)}, str(tmp))
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["w"], torch.arange(4.0))
    with open_atomic(tmp_path / "a.wav", "wb") as f:
        sf.write(f, np.zeros(160, dtype=np.int16), 16000, format="WAV", subtype="PCM_16")
    assert sf.info(str(tmp_path / "a.wav")).frames == 160
    assert _listing(tmp_path) == ["a.wav", "t.safetensors"]


def test_open_atomic_writes_whole_files_only(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        with open_atomic(tmp_path / "x", "a"):
            pass
    assert _listing(tmp_path) == []


def test_stale_temporaries_of_a_path_and_only_they_are_removed(tmp_path):
    for name in ("last.pt", ".last.pt.k2j4_x9a.tmp", ".last.pt.tmp4242",  # this module's, and the old name
                 ".last.pt.old.k2j4_x9a.tmp", "last.pt.old", ".best.pt.abcd1234.tmp", ".last.pt.bak"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path / "last.pt")
    assert sorted(p.name for p in removed) == [".last.pt.k2j4_x9a.tmp", ".last.pt.tmp4242"]
    assert _listing(tmp_path) == [".best.pt.abcd1234.tmp", ".last.pt.bak", ".last.pt.old.k2j4_x9a.tmp",
                                  "last.pt", "last.pt.old"]
    assert remove_stale_temporaries(tmp_path / "missing" / "last.pt") == []


def test_the_temporary_is_where_the_cleanup_looks(tmp_path):
    with atomic_path(tmp_path / "report.json") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.json.") and tmp.name.endswith(".tmp")
        assert remove_stale_temporaries(tmp_path / "report.json") == [tmp]  # as if its writer had been killed
        tmp.write_text("{}")  # (the real writer goes on; only the writer of a path may clean it up)
    assert (tmp_path / "report.json").read_text() == "{}"
