#!/usr/bin/env python
"""Export a trained speech model as the repository's example model, with its model card.

    .venv/bin/python scripts/make_example.py runs/main/main_bp/best.pt --dtype int8   # -> examples/gru256-bp.*
    .venv/bin/python scripts/make_example.py CKPT --name NAME --corpus data/corpus --provisional

Steps: ``bsrnn export CHECKPOINT examples/NAME.safetensors`` (the self-contained speech file);
score that file — not the checkpoint — with ``bsrnn.inference.Transcriber`` (sparse runtime,
greedy, offline) on the corpus's test splits and, where Debian's pocketsphinx-testdata is
installed, on its 10 real read sentences; write ``examples/NAME.md``: data, recipe, CER, size and
how it was made (docs/deployment.md §4). ``--provisional`` marks the card as a stand-in.
``--dtype bf16|int8`` stores the block values quantised (``bsrnn export --dtype``); the fp32
export of the same checkpoint is then scored too, so the card states what quantisation costs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsrnn.atomic import write_text  # noqa: E402
from bsrnn.cli import main as bsrnn  # noqa: E402


def score(tr, manifest: Path, limit: int = 0) -> dict:
    import jiwer

    from bsrnn.data.manifest import read_manifest

    rows = read_manifest(manifest)
    rows = rows[:limit] if limit > 0 else rows
    refs, hyps, audio, busy, examples = [], [], 0.0, 0.0, []
    for r in rows:
        out = tr.transcribe(r["path"])
        refs.append(r["text"])
        hyps.append(out.text)
        audio, busy = audio + out.audio_seconds, busy + out.seconds
        if len(examples) < 3:
            examples.append({"ref": r["text"], "hyp": out.text})
    return {"utterances": len(rows), "cer": 100 * jiwer.cer(refs, hyps), "wer": 100 * jiwer.wer(refs, hyps),
            "rtf": busy / max(audio, 1e-9), "examples": examples}


def shown(path: Path) -> str:
    """A path as the card shows it: relative to the repository when inside it, else its last two
    parts only (a card never names folders outside the repository)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return short(path)


def short(path: Path) -> str:
    """The run folder and file name only: a card never names folders outside the repository."""
    return "/".join(Path(path).parts[-2:])


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def card(name, ckpt, model_path, exp, scores, cfg, report, corpus_info, provisional, command, position="?",
         dtype="fp32", reference=None) -> str:
    m, a = cfg.get("model", {}), exp.speech["architecture"]
    sp, tr = cfg.get("sparsity", {}), cfg.get("train", {})
    params = sum(t.numel() for n, t in exp.state_dict().items() if "running" not in n and "num_batches" not in n)
    nonzero = sum(int((t != 0).sum()) for n, t in exp.state_dict().items() if "running" not in n and "num_batches" not in n)
    rec = [r for r in exp.size_report()[:-1]]
    kind = "bidirectional" if a["bidirectional"] else "unidirectional (streams)"
    lines = [f"# Model card: `{name}`", ""]
    if provisional:
        lines += ["> **Provisional example.** Exported from a run of the main job's recipe made while the final model "
                  "was still being trained; it will be replaced by the final one. The numbers below are this file's own.",
                  ""]
    lines += [f"`{model_path.name}` is a complete speech recogniser in one file (safetensors arrays + a JSON header; "
              "no pickle, no training checkpoint): the log-mel settings and normalisation statistics, the alphabet, "
              "the conv front end, the recurrent layers in block-sparse form, the output layer.", "",
              "```bash", f"bsrnn transcribe {shown(model_path)} my_recording.wav", "```", "",
              "## Model", "",
              f"- DeepSpeech2-style CTC model, preset `{m.get('preset')}`: 2 conv layers (32 channels, time stride 2), "
              f"{a['layers']} {a['rnn_type'].upper()} layers of {a['hidden']} units, {kind}"
              + (f", row convolution looking {a['lookahead']} frames ahead" if a["lookahead"] else "") + ", "
              f"{a['n_classes']}-symbol output (CTC blank, space, apostrophe, a–z).",
              f"- Parameters: {params:,}; nonzero {nonzero:,} ({100 * (1 - nonzero / params):.1f} % zero).",
              f"- Sparsity method `{sp.get('method')}`, blocks {sp.get('block')}, target {sp.get('target')}; per matrix "
              f"density: " + ", ".join(f"{r['name'].removeprefix('rnn.')} {r['density']:.0%}" for r in rec) + ".",
              f"- File size: {model_path.stat().st_size / 1e6:.2f} MB"
              + (f" (block values in {dtype}" + (", one scale per block row" if dtype == "int8" else "")
                 + f"; the fp32 export is {reference['size_mb']:.2f} MB)" if reference else "") + ".", "",
              "## Data", "",
              "Trained on bsrnn's embedded TTS corpus (`bsrnn data synth`): WordNet example phrases voiced by espeak-ng "
              "and flite voices at 16 kHz with white noise at 10–30 dB SNR"
              + (f"; splits {corpus_info.get('sizes')}" if corpus_info else "") + ". Dev and test prompts are disjoint "
              "from the training prompts; `test_unseen_voices` uses voices never heard in training. It has never heard "
              "a human voice: expect poor results on real recordings (see the pocketsphinx row).", "",
              "## Recipe", "",
              f"- Checkpoint `{short(ckpt)}` of the run, saved at {position}; recipe {tr.get('epochs')} epochs, batch {tr.get('batch_size')}, optimiser "
              f"{cfg.get('optim', {}).get('name')} lr {cfg.get('optim', {}).get('lr')}, precision {tr.get('precision')}.",
              "- Resolved training configuration: in the file's header (`bsrnn.inference.load(path).config`).", "",
              "## Accuracy (this exported file, sparse runtime, greedy CTC, offline)", "",
              "| Split | Utterances | CER % | WER % | RTF (1 thread) |", "|---|---:|---:|---:|---:|"]
    for split, s in scores.items():
        lines.append(f"| {split} | {s['utterances']} | {s['cer']:.2f} | {s['wer']:.2f} | {s['rtf']:.4f} |")
    if reference:
        lines += ["", f"Quantisation: the same checkpoint exported with fp32 block values scores "
                  + ", ".join(f"{k} {v['cer']:.2f} % ({scores[k]['cer'] - v['cer']:+.2f} points in {dtype})"
                              for k, v in reference["scores"].items() if k in scores) + "."]
    if report and report.get("splits"):
        lines += ["", "Training run's own report (checkpoint, PyTorch): " + ", ".join(
            f"{k} CER {v['cer']:.2f} %" for k, v in report["splits"].items()) + "."]
    lines += ["", "RTFs were measured while making the card, on whatever load the machine had; "
              "`bsrnn bench transcribe` measures speed properly.", "",
              "## How it was made", "", "```bash", command, "```", "",
              f"bsrnn commit `{git_commit()}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, nargs="?", default=Path("runs/main/main_bp/best.pt"))
    p.add_argument("--name", default=None, help="file stem (default: <preset>-<method>)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "examples")
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    p.add_argument("--splits", nargs="*", default=["test", "test_unseen_voices"])
    p.add_argument("--limit", type=int, default=0, help="first N utterances per split (default all)")
    p.add_argument("--provisional", action="store_true", help="mark the card as a provisional stand-in")
    p.add_argument("--dtype", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="block values of the export; bf16/int8 also score the fp32 export for comparison")
    args = p.parse_args(argv)

    from bsrnn.data.importers import POCKETSPHINX_TESTDATA
    from bsrnn.inference import load
    from bsrnn.inference.transcribe import Transcriber

    cfg = json.loads((args.checkpoint.parent / "config.json").read_text())
    name = args.name or f"{cfg['model']['preset']}-{cfg['sparsity']['method']}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.out_dir / f"{name}.safetensors"
    if bsrnn(["export", str(args.checkpoint), str(model_path), "--dtype", args.dtype]) != 0:
        return 1
    exp = load(model_path)
    run_dir = exp.config.get("train", {}).get("run_dir")
    if run_dir:  # the file is shared: keep the run's name, not the folder it was trained in
        from bsrnn.inference import save

        exp.config["train"]["run_dir"] = f"runs/{Path(run_dir).name}"
        save(exp, model_path)
    import tempfile

    def score_all(path: Path) -> dict:
        tr = Transcriber(load(path), name=str(path))
        tr.warmup()
        scores = {}
        for split in args.splits:
            manifest = args.corpus / f"{split}.jsonl"
            if manifest.is_file():
                scores[split] = score(tr, manifest, args.limit)
        if POCKETSPHINX_TESTDATA.is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                if bsrnn(["data", "import-pocketsphinx", "--out", tmp]) == 0:
                    scores["pocketsphinx-testdata (real speech)"] = score(tr, next(Path(tmp).glob("*.jsonl")))
        return scores

    scores, reference = score_all(model_path), None
    if args.dtype != "fp32":  # what quantisation costs, on the same utterances
        with tempfile.TemporaryDirectory() as tmp:
            fp32_path = Path(tmp) / "fp32.safetensors"
            if bsrnn(["export", str(args.checkpoint), str(fp32_path)]) != 0:
                return 1
            reference = {"size_mb": fp32_path.stat().st_size / 1e6, "scores": score_all(fp32_path)}
    report_path = args.checkpoint.parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    info_path = args.corpus / "corpus.json"
    corpus_info = json.loads(info_path.read_text()) if info_path.is_file() else None
    given = argv if argv is not None else sys.argv[1:]
    command = "python scripts/make_example.py " + " ".join(shown(Path(a)) if a.startswith("/") else a for a in given)
    from bsrnn.train.checkpoint import load_checkpoint

    pos = load_checkpoint(args.checkpoint).get("position", {})
    position = f"step {pos.get('step')}, epoch {pos.get('epoch')}"
    text = card(name, args.checkpoint, model_path, exp, scores, cfg, report, corpus_info, args.provisional, command,
                position, args.dtype, reference)
    write_text(text, args.out_dir / f"{name}.md")
    print(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.2f} MB) and {args.out_dir / (name + '.md')}")
    for split, s in scores.items():
        ref = f"  fp32 export {reference['scores'][split]['cer']:.2f} %" if reference and split in reference["scores"] else ""
        print(f"  {split}: CER {s['cer']:.2f} %  WER {s['wer']:.2f} %  ({s['utterances']} utterances){ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
