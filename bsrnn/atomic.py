"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Every writer of the package goes through here. The bytes go to a temporary file in the same
directory (``os.replace`` is atomic only within one file system), named ``.<name>.<random>.tmp``
so that globs such as ``*.json`` or ``*.wav`` never see it; the file is fsync'ed, swapped in
with ``os.replace`` and the directory entry fsync'ed. If the writer raises, the temporary is
removed and the previous file is untouched. A process killed outright (SIGKILL) cannot clean up:
its temporary stays behind, and ``remove_stale_temporaries`` deletes it before the next write.

```python
from bsrnn.atomic import atomic_path, open_atomic, write_json

write_json({"cer": 12.5}, "runs/x/report.json")
with open_atomic("data/train.jsonl") as f:      # a file object ("w" text or "wb" bytes)
    f.writelines(rows)
with atomic_path("runs/x/weights.pt") as tmp:   # a path, for writers that open files themselves
    torch.save(state, tmp)                      # (torch.save, soundfile, safetensors, ...)
```
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "open_atomic", "write_bytes", "write_text", "write_json", "remove_stale_temporaries"]

# mkstemp creates files with mode 0600; a file written here gets what open() would give it.
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems cannot open directories; the rename is atomic all the same
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends normally it becomes ``path``.

    The writer inside the block may open, write and close the temporary as it likes. Afterwards
    it is fsync'ed (unless ``sync=False``: for files that are cheap to regenerate, where only a
    crashed process, not a power cut, must be survived) and renamed over ``path``. On any
    exception the temporary is deleted and ``path`` keeps its previous contents (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _MODE)
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        _fsync_dir(path.parent)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", *, encoding: str = "utf-8", newline: str | None = None,
                sync: bool = True) -> Iterator[IO]:
    """``open(path, mode)`` for writing (``"w"`` or ``"wb"``), through ``atomic_path``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, sync=sync) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": encoding, "newline": newline})) as f:
            yield f


def write_bytes(data: bytes, path: str | os.PathLike, *, sync: bool = True) -> Path:
    with open_atomic(path, "wb", sync=sync) as f:
        f.write(data)
    return Path(path)


def write_text(text: str, path: str | os.PathLike, *, encoding: str = "utf-8", sync: bool = True) -> Path:
    with open_atomic(path, "w", encoding=encoding, sync=sync) as f:
        f.write(text)
    return Path(path)


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(obj, path: str | os.PathLike, *, indent: int | None = 2, sync: bool = True) -> Path:
    """``obj`` as JSON with a final newline; NaN and ±inf become ``null``, so any JSON reader
    accepts the file (Python's ``json`` would write the non-standard ``NaN``)."""
    return write_text(json.dumps(_finite(obj), indent=indent, allow_nan=False) + "\n", path, sync=sync)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed writers of ``path`` left beside it; returns them.

    Only the one process that writes ``path`` may call this (at its start): the temporary of a
    writer still running would go too. Also removes ``.<name>.tmp<pid>``, the name checkpoints
    used before this module existed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:[^.]+\.tmp|tmp\d*)")
    stale = sorted(p for p in path.parent.glob(f".{glob.escape(path.name)}.*") if pattern.fullmatch(p.name))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
