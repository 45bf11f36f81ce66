"""JSONL utterance manifests: the one interchange format between corpora and training.

One JSON object per line with at least ``id``, ``path``, ``text`` and ``duration`` (seconds);
any other keys (voice, engine, synthesis settings, snr_db, split, sample_rate) ride along
untouched. ``path`` is relative to the manifest's folder, or absolute: a corpus folder can
be moved as a whole, and an imported corpus can stay where it is.

Reading is strict (a long training run should fail at start-up, naming the file and line,
not hours later); writing is atomic (temp file + ``os.replace``), so a crash leaves either the
old manifest or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..atomic import open_atomic

REQUIRED_FIELDS = ("id", "path", "text", "duration")


def _check_row(row: object, where: str) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object per line, got {type(row).__name__}.")
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise ValueError(
            f"{where}: missing field(s) {', '.join(repr(k) for k in missing)}; "
            f"every line needs {', '.join(REQUIRED_FIELDS)}."
        )
    if not isinstance(row["id"], str) or not row["id"]:
        raise ValueError(f"{where}: 'id' must be a non-empty string, got {row['id']!r}.")
    if not isinstance(row["path"], str) or not row["path"]:
        raise ValueError(f"{where}: 'path' must be a non-empty string, got {row['path']!r}.")
    if not isinstance(row["text"], str):
        raise ValueError(f"{where}: 'text' must be a string, got {row['text']!r}.")
    dur = row["duration"]
    if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not dur >= 0:
        raise ValueError(f"{where}: 'duration' must be a number of seconds >= 0, got {dur!r}.")


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL manifest, with ``path`` made absolute; blank lines are ignored.

    Raises ``ValueError`` naming the file and line for bad JSON, missing or ill-typed fields
    and duplicate ids; ``FileNotFoundError`` if the manifest does not exist.
    """
    path = Path(path)
    base = path.absolute().parent
    rows: list[dict] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno}).") from None
            _check_row(row, where)
            if row["id"] in first_line:
                raise ValueError(
                    f"{where}: duplicate id {row['id']!r} (first used on line {first_line[row['id']]}); "
                    "ids must be unique within a manifest."
                )
            first_line[row["id"]] = lineno
            row["path"] = os.path.normpath(os.path.join(base, row["path"]))
            rows.append(row)
    return rows


def write_manifest(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Atomically write ``rows`` as JSONL; returns the manifest path.

    Audio paths under the manifest's folder are stored relative to it (the corpus stays
    movable); others are stored absolute. Rows are validated first, so an invalid row never
    produces a file that ``read_manifest`` would reject.
    """
    path = Path(path)
    base = path.absolute().parent
    base.mkdir(parents=True, exist_ok=True)
    lines, seen = [], set()
    for i, row in enumerate(rows):
        row = dict(row)
        audio = os.path.normpath(os.path.join(base, os.fspath(row.get("path", ""))))
        row["path"] = os.path.relpath(audio, base) if _is_under(audio, base) else audio
        _check_row(row, f"{path}: row {i}")
        if row["id"] in seen:
            raise ValueError(f"{path}: row {i}: duplicate id {row['id']!r}; ids must be unique.")
        seen.add(row["id"])
        lines.append(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
    with open_atomic(path) as f:
        f.writelines(lines)
    return path


def _is_under(p: str, base: Path) -> bool:
    try:
        return os.path.commonpath([p, str(base)]) == str(base)
    except ValueError:  # different drives on Windows
        return False
