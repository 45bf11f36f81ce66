"""Bring real corpora into the manifest form: LibriSpeech layout, JSONL, pocketsphinx-testdata.

Audio stays where it is; the written manifest points at it. Transcripts go through
``text.normalize``. An utterance that cannot be used (missing, empty, corrupt or too-short
audio; a transcript that is empty or has characters outside the alphabet) is skipped and
counted, and one warning names the count and the first reason: a bad file among thousands
must not stop an import, and must not go unnoticed either.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .audio import MIN_SECONDS, AudioError, audio_info, load_audio
from .manifest import write_manifest
from .text import encode, normalize

POCKETSPHINX_TESTDATA = Path("/usr/share/pocketsphinx/test/data")
_SPHINX_LINE = re.compile(r"^\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^()]+)\)\s*$")


@dataclass
class ImportResult:
    """What an import wrote: the manifest, how many rows, and skips counted by reason."""

    manifest: Path
    written: int
    skipped: Counter = field(default_factory=Counter)
    first_problem: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # every skip's message, in input order

    def skip(self, kind: str, message: str) -> None:
        self.skipped[kind] += 1
        self.first_problem.setdefault(kind, message)
        self.problems.append(message)

    def warn(self) -> None:
        if self.skipped:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()))
            first = self.problems[0]
            warnings.warn(f"{self.manifest}: skipped {sum(self.skipped.values())} utterances ({kinds}); "
                          f"first: {first}", RuntimeWarning, stacklevel=3)


def _make_row(result: ImportResult, utt_id: str, audio: Path, raw_text: str, verify: bool,
              extra: dict | None = None) -> dict | None:
    """A manifest row for one utterance, or None after counting why it is unusable."""
    text = normalize(raw_text)
    try:
        encode(text, where=f"utterance {utt_id} ({audio})")
    except ValueError as e:
        result.skip("bad transcript", str(e))
        return None
    try:
        seconds, sr, channels = audio_info(audio)
        if verify:  # decode everything: a corrupt body would otherwise surface mid-training
            load_audio(audio)
        elif seconds < MIN_SECONDS:
            raise AudioError(f"{audio}: audio is {seconds:.3f} s long; at least {MIN_SECONDS:.2f} s is needed.")
    except AudioError as e:
        result.skip("bad audio", str(e))
        return None
    row = {"id": utt_id, "path": str(audio), "text": text, "duration": round(seconds, 4),
           "sample_rate": sr, "channels": channels}
    row.update(extra or {})
    return row


def import_librispeech(root: str | os.PathLike, out_manifest: str | os.PathLike, *,
                       verify: bool = True) -> ImportResult:
    """Manifest for a LibriSpeech-layout tree: ``SPEAKER/CHAPTER/*.flac`` beside
    ``SPEAKER-CHAPTER.trans.txt`` files whose lines read ``UTT-ID TRANSCRIPT``.

    ``verify`` decodes every file (slow on hundreds of hours); without it only headers are read.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: LibriSpeech root folder does not exist.")
    result = ImportResult(Path(out_manifest), 0)
    rows, seen = [], set()
    for trans in sorted(root.rglob("*.trans.txt")):
        for lineno, line in enumerate(trans.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, raw = line.strip().partition(" ")
            if utt_id in seen:
                result.skip("duplicate id", f"{trans}:{lineno}: utterance {utt_id} listed twice.")
                continue
            row = _make_row(result, utt_id, trans.parent / f"{utt_id}.flac", raw, verify,
                            {"speaker": utt_id.split("-")[0]})
            if row is not None:
                seen.add(utt_id)
                rows.append(row)
    if not rows and not result.skipped:
        raise ValueError(f"{root}: no *.trans.txt transcripts found; is this a LibriSpeech-layout folder?")
    write_manifest(out_manifest, rows)
    result.written = len(rows)
    result.warn()
    return result


def import_jsonl(src: str | os.PathLike, out_manifest: str | os.PathLike, *, verify: bool = True) -> ImportResult:
    """Normalise any JSONL list of utterances into a manifest.

    Each line needs ``path`` (relative to ``src``'s folder, or absolute) and ``text``; ``id``
    defaults to the audio file's stem, ``duration`` is measured, other keys are kept. Lines
    that are not JSON objects with those keys are skipped and counted like bad audio.
    """
    src = Path(src)
    base = src.absolute().parent
    result = ImportResult(Path(out_manifest), 0)
    rows, seen = [], set()
    with open(src, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{src}:{lineno}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                result.skip("bad line", f"{where}: not valid JSON ({e.msg}).")
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
                    or not isinstance(entry.get("text"), str):
                result.skip("bad line", f"{where}: needs a JSON object with string fields 'path' and 'text'.")
                continue
            audio = Path(os.path.normpath(base / entry["path"]))
            utt_id = str(entry.get("id") or audio.stem)
            if utt_id in seen:
                result.skip("duplicate id", f"{where}: duplicate id {utt_id!r}.")
                continue
            extra = {k: v for k, v in entry.items() if k not in ("id", "path", "text", "duration")}
            row = _make_row(result, utt_id, audio, entry["text"], verify, extra)
            if row is not None:
                seen.add(utt_id)
                rows.append(row)
    write_manifest(out_manifest, rows)
    result.written = len(rows)
    result.warn()
    return result


def import_pocketsphinx_testdata(out_dir: str | os.PathLike, *,
                                 root: str | os.PathLike = POCKETSPHINX_TESTDATA) -> ImportResult:
    """Manifest ``out_dir/pocketsphinx.jsonl`` of Debian pocketsphinx-testdata's 10 transcribed
    16 kHz recordings (5 LibriVox sentences, 5 card-game phrases, ~34 s): real speech to
    evaluate on. The audio stays under ``root``."""
    root = Path(root)
    sets = [("librivox", root / "librivox" / "transcription"), ("cards", root / "cards" / "cards.transcription")]
    if not any(t.is_file() for _, t in sets):
        raise FileNotFoundError(f"{root}: pocketsphinx test data not found; install the Debian package "
                                "pocketsphinx-testdata (apt-get install -y pocketsphinx-testdata).")
    out = Path(out_dir) / "pocketsphinx.jsonl"
    result = ImportResult(out, 0)
    rows = []
    for name, trans in sets:
        if not trans.is_file():
            result.skip("missing transcription", f"{trans}: transcription file missing.")
            continue
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            m = _SPHINX_LINE.match(line)
            if not line.strip():
                continue
            if m is None:
                result.skip("bad line", f"{trans}:{lineno}: expected '<s> words </s> (file-id)'.")
                continue
            raw, file_id = m.group(1), m.group(2).strip()
            row = _make_row(result, f"{name}-{file_id}", trans.parent / f"{file_id}.wav", raw, True,
                            {"split": "test_real", "source": f"pocketsphinx-testdata/{name}"})
            if row is not None:
                rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, rows)
    result.written = len(rows)
    result.warn()
    return result
