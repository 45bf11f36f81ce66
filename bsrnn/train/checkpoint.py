"""Checkpoints that survive crashes and resume training exactly (docs/architecture.md §5).

A checkpoint holds the model, optimizer and sparsity-method state (the paper's masks, BSRNN §3),
the step/epoch/batch position (the learning rate and the sampler's place are functions of it),
every RNG state (torch, numpy, python) and the resolved config. It holds only tensors and plain containers (the config
as a JSON string), so it loads with ``torch.load(weights_only=True)``: a file cannot run code.

Writes are atomic (``bsrnn.atomic``): the bytes go to a temporary file in the same directory, are
fsync'ed, and ``os.replace`` swaps them in, so a crash mid-write leaves the previous checkpoint
intact; ``remove_stale_temporaries`` deletes what a SIGKILL'ed writer left behind. A
SHA-256 digest of the contents is stored inside: ``torch.load`` reads a flipped byte in tensor
data without complaint, so the digest is what turns a damaged file into a clear error.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from bsrnn.atomic import atomic_path, remove_stale_temporaries  # noqa: F401 (remove_...: part of this API)

FORMAT = "bsrnn-checkpoint-1"
REQUIRED = ("format", "model", "optimizer", "sparsity", "position", "rng", "config")
# Entries that checkpoints once carried and nothing read: the learning rate is a pure function of
# the step, and the sampler's position is the step/epoch/batch in ``position``. Older checkpoints
# that have them load as if they had not.
DROPPED = ("scheduler", "sampler")


def rng_state() -> dict:
    """torch, numpy and python RNG states as tensors and plain lists."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, no permission); the previous one is intact."""


def save_atomic(obj: dict, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a fsync'ed temporary file and ``os.replace`` (``bsrnn.atomic``)."""
    path = Path(path)
    try:
        # Serialise in memory first: torch.save's zip writer turns a failed disk write into a
        # RuntimeError that has lost the OSError ("unexpected pos 64 vs 0"), while a plain
        # write reports ENOSPC as such.
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as e:  # ENOSPC, EDQUOT, EACCES, EROFS...: say so in one sentence
        previous = "the previous checkpoint there is intact" if path.exists() else "no earlier checkpoint was there"
        error = CheckpointWriteError(f"could not write checkpoint {path} ({e.strerror or e}); {previous}; "
                                     "free space or fix permissions and resume")
        error.errno = e.errno
        raise error from None
    return path


def digest(obj) -> str:
    """SHA-256 of a nest of dicts, lists, tensors and plain values (key order independent)."""
    h = hashlib.sha256()

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().reshape(-1).contiguous()
            h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())
    walk(obj)
    return h.hexdigest()


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write a training checkpoint atomically, with its format tag and content digest."""
    state = {**state, "format": FORMAT}
    return save_atomic({**state, "sha256": digest(state)}, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint; a truncated, tampered or foreign file is a ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if not zipfile.is_zipfile(path):  # torch.load would answer with weights_only advice
            raise ValueError("not a PyTorch zip archive")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) and "weights only" in first.lower():
            # torch's first line advises weights_only=False, which is exactly what must not happen
            first = "it holds objects other than tensors and plain values, refused unread as they could run code"
        raise ValueError(f"checkpoint {path} is truncated, corrupt or not a bsrnn checkpoint ({first[:200]}); "
                         "delete it to restart, or resume from another checkpoint (best.pt).") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not a {FORMAT} file (format field "
                         f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}).")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}; it was not written by bsrnn train.")
    stored = ckpt.pop("sha256", None)
    if stored != digest(ckpt):
        raise ValueError(f"checkpoint {path} is damaged: its contents do not match the digest written with them; "
                         "delete it to restart, or resume from another checkpoint (best.pt).")
    for key in DROPPED:  # checked by the digest above, then forgotten
        ckpt.pop(key, None)
    return ckpt


def load_weights(path: str | Path) -> tuple[dict, str]:
    """(model state_dict, config JSON) of a checkpoint, for evaluation."""
    ckpt = load_checkpoint(path)
    return ckpt["model"], ckpt["config"]
