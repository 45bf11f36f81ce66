"""``bsrnn data ...``: make, import and inspect speech corpora (thin: parse, then call).

``register(subparsers)`` adds the ``data`` command to the top-level parser of ``bsrnn/cli.py``;
each sub-command stores its handler in ``args.func``.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from .importers import import_jsonl, import_librispeech, import_pocketsphinx_testdata
from .manifest import read_manifest
from .synth import DEFAULT_N_UTTS, synthesize

DEFAULT_CORPUS = "data/corpus"  # where the trainer's default configuration looks for it


def _synth(args: argparse.Namespace) -> int:
    args.out = args.out_option or args.out or Path(DEFAULT_CORPUS)
    start = time.perf_counter()
    manifests = synthesize(args.out, n_utts=args.n_utts, hours=args.hours, seed=args.seed, workers=args.workers,
                           dev_size=args.dev_size, test_size=args.test_size,
                           unseen_voice_test_size=args.unseen_voice_test_size, progress=not args.quiet)
    print(f"corpus in {args.out} ({time.perf_counter() - start:.1f} s)")
    for split, path in manifests.items():
        rows = read_manifest(path)
        print(f"  {split:<20} {len(rows):>7} utts {sum(r['duration'] for r in rows) / 3600:7.2f} h  {path}")
    return 0


def _report(result) -> int:
    print(f"wrote {result.written} utterances to {result.manifest}")
    for kind, n in sorted(result.skipped.items()):
        print(f"  skipped {n} ({kind}); first: {result.first_problem[kind]}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    rows = read_manifest(args.manifest)
    seconds = [r["duration"] for r in rows]
    print(f"{args.manifest}: {len(rows)} utterances, {sum(seconds) / 3600:.3f} h", end="")
    if rows:
        print(f", {min(seconds):.2f}-{max(seconds):.2f} s (mean {sum(seconds) / len(rows):.2f} s)")
    else:
        print()
    voices = Counter(f"{r.get('engine', '?')}:{r['voice']}" if "voice" in r else "(no voice field)" for r in rows)
    print(f"voices: {len(voices)}")
    for voice, n in voices.most_common(args.top):
        print(f"  {n:>7}  {voice}")
    if len(voices) > args.top:
        print(f"  ... {len(voices) - args.top} more")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` and its sub-commands to an ``argparse`` sub-parser collection."""
    data = subparsers.add_parser("data", help="make, import and inspect speech corpora")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("synth", help="generate the embedded TTS corpus (resumable, deterministic)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("out", nargs="?", type=Path, default=None, help=f"corpus folder (default {DEFAULT_CORPUS})")
    where.add_argument("--out", dest="out_option", type=Path, default=None, help="the same, as an option")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--n-utts", type=int, default=None,
                      help=f"utterances over all splits (default {DEFAULT_N_UTTS})")
    size.add_argument("--hours", type=float, default=None, help="approximate hours of audio over all splits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="synthesis processes")
    p.add_argument("--dev-size", type=int, default=300)
    p.add_argument("--test-size", type=int, default=300)
    p.add_argument("--unseen-voice-test-size", type=int, default=200)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)

    p = sub.add_parser("import-librispeech", help="manifest for a LibriSpeech-layout folder (audio stays put)")
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl)")
    p.add_argument("--no-verify", action="store_true", help="read headers only instead of decoding every file")
    p.set_defaults(func=lambda a: _report(import_librispeech(a.root, a.out, verify=not a.no_verify)))

    p = sub.add_parser("import-jsonl", help="normalise a JSONL list of {path, text} into a manifest")
    p.add_argument("src", type=Path)
    p.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl)")
    p.add_argument("--no-verify", action="store_true", help="read headers only instead of decoding every file")
    p.set_defaults(func=lambda a: _report(import_jsonl(a.src, a.out, verify=not a.no_verify)))

    p = sub.add_parser("import-pocketsphinx", help="Debian pocketsphinx-testdata as a real-speech test set")
    p.add_argument("--out", type=Path, required=True, help="folder for pocketsphinx.jsonl")
    p.set_defaults(func=lambda a: _report(import_pocketsphinx_testdata(a.out)))

    p = sub.add_parser("stats", help="count, hours and voices of a manifest")
    p.add_argument("manifest", type=Path)
    p.add_argument("--top", type=int, default=20, help="voices to list")
    p.set_defaults(func=_stats)
    return data
