"""``bsrnn transcribe MODEL AUDIO...``: one line of text per file, from an exported model alone.

A file that cannot be read (missing, empty, corrupt, too short) gets one line naming it and
why, the next file goes on, and the exit status is 1 if any failed (2 for a bad model or bad
options). Other rates are resampled and several channels averaged, as in training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bsrnn.data.audio import AudioError


def add_transcribe(subparsers) -> None:
    p = subparsers.add_parser(
        "transcribe", help="audio files -> text with an exported speech model (offline or streaming)",
        description="Transcribe audio with a model written by `bsrnn export` (safetensors + JSON header; no "
                    "training checkpoint needed). One line per file; --json for timings and the real-time factor.")
    p.add_argument("model", type=Path, help="an exported speech model (.safetensors)")
    p.add_argument("audio", type=Path, nargs="*", help="audio files (WAV, FLAC, ...; any rate, any channels)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="also transcribe every utterance of a JSONL manifest and report CER/WER against its text")
    p.add_argument("--limit", type=int, default=0, help="with --manifest: the first N utterances only")
    p.add_argument("--json", action="store_true", help="one JSON object per file: text, timings, real-time factor")
    p.add_argument("--runtime", choices=("sparse", "dense"), default="sparse",
                   help="recurrent layers on the block-sparse runtime (default) or dense PyTorch")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--stream", action="store_true", help="feed the audio in chunks and print text as it is decoded "
                                                           "(unidirectional models)")
    p.add_argument("--chunk-ms", type=float, default=200, help="chunk length with --stream (default 200 ms)")
    p.add_argument("--decoder", choices=("greedy", "beam"), default="greedy",
                   help="greedy CTC (default) or CTC prefix beam search (needs bsrnn.decode)")
    p.add_argument("--beam", type=int, default=16, help="beam width (--decoder beam)")
    p.add_argument("--lm", type=Path, default=None, help="character LM for shallow fusion (--decoder beam): a "
                                                        "bsrnn LM checkpoint or its export")
    p.add_argument("--lm-weight", type=float, default=0.5, help="LM weight (--decoder beam --lm)")
    p.add_argument("--bonus", type=float, default=1.0, help="insertion bonus per character (--decoder beam)")
    p.set_defaults(func=run, files_dest="audio")


def _items(args) -> list[tuple[str, Path, str | None]]:
    items = [(str(a), a, None) for a in args.audio]
    if args.manifest is not None:
        from bsrnn.data.manifest import read_manifest

        rows = read_manifest(args.manifest)
        rows = rows[: args.limit] if args.limit > 0 else rows
        items += [(r["id"], Path(r["path"]), r["text"]) for r in rows]
    if not items:
        raise ValueError("no audio to transcribe: give audio files or --manifest")
    return items


def run(args: argparse.Namespace) -> int:
    from .transcribe import Transcriber

    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0, not {args.limit}")
    items = _items(args)
    tr = Transcriber.from_file(args.model, runtime=args.runtime, threads=args.threads, decoder=args.decoder,
                               beam=args.beam, lm=args.lm, lm_weight=args.lm_weight, bonus=args.bonus)
    if args.stream and not tr.streamable:
        raise ValueError(f"{args.model} is a bidirectional model: its reverse direction needs the whole utterance, "
                         "so it cannot stream; transcribe it without --stream")
    tr.warmup()  # one-time compilation is not the first file's time
    failed, refs, hyps, audio_s, busy_s = 0, [], [], 0.0, 0.0
    for name, path, ref in items:
        live = args.stream and not args.json and args.decoder == "greedy"
        try:
            if args.stream:
                if live:
                    print(f"{name}: ", end="", flush=True)
                r = tr.transcribe_stream(path, chunk_ms=args.chunk_ms,
                                         on_text=(lambda piece: print(piece, end="", flush=True)) if live else None)
            else:
                r = tr.transcribe(path)
        except AudioError as e:
            failed += 1
            if live:
                print()
            if args.json:
                print(json.dumps({"file": name, "error": str(e)}), flush=True)
            else:
                print(f"bsrnn: error: {e}", file=sys.stderr, flush=True)
            continue
        audio_s, busy_s = audio_s + r.audio_seconds, busy_s + r.seconds
        if ref is not None:
            refs.append(ref)
            hyps.append(r.text)
        if args.json:
            print(json.dumps({"file": name, **r.to_dict(), **({"ref": ref} if ref is not None else {})}), flush=True)
        elif live:
            print(flush=True)
        else:
            print(f"{name}: {r.text}", flush=True)
    if refs:
        import jiwer

        cer, wer = 100 * jiwer.cer(refs, hyps), 100 * jiwer.wer(refs, hyps)
        summary = {"utterances": len(refs), "cer": round(cer, 3), "wer": round(wer, 3),
                   "rtf": round(busy_s / max(audio_s, 1e-9), 5), "failed": failed}
        print(json.dumps({"summary": summary}) if args.json else
              f"{args.manifest}: CER {cer:.2f}%  WER {wer:.2f}%  over {len(refs)} utterances, RTF "
              f"{summary['rtf']:.4f} ({args.runtime}, {'stream' if args.stream else 'offline'}, {args.decoder})")
    if failed:
        print(f"bsrnn: {failed} of {len(items)} files could not be transcribed", file=sys.stderr)
    return 1 if failed else 0
