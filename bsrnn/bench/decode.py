"""``bsrnn bench decode``: CER/WER of greedy, beam and beam + char-LM decoding (docs/decoding.md §4).

For each speech checkpoint the model's log-probabilities of every split are computed once, then
decoded by: best path (``greedy``), prefix beam search without an LM (``beam``), and with the
LM over a grid of ``lm_weight`` × ``bonus`` on ``dev``; the pair with the lowest dev CER is then
applied to the test splits (``beam+lm``). Rows: model, split, decoder, beam, lm_weight, bonus,
cer, wer, utterances, decode_seconds and ms_per_utterance (one thread; times depend on machine load, CER does not).
The real-speech set is Debian's pocketsphinx-testdata when it is installed
(``bsrnn data import-pocketsphinx``), scored as split ``pocketsphinx``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bsrnn.atomic import write_json

SPLITS = ("test", "test_unseen_voices")


def add_arguments(p) -> None:
    p.add_argument("--models", nargs="+", required=True, help="speech checkpoints (best.pt of bsrnn train runs)")
    p.add_argument("--lm", required=True, help="character LM: a bsrnn lm-train checkpoint or lm-export file")
    p.add_argument("--beam", type=int, default=16, help="beam width (default 16)")
    p.add_argument("--weights", type=float, nargs="+", default=[0.3, 0.5, 0.8], help="lm_weight grid")
    p.add_argument("--bonuses", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="insertion bonus grid")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), help="test splits of the corpus")
    p.add_argument("--dev-limit", type=int, default=0, help="tune on the first N dev utterances (0 = all)")
    p.add_argument("--no-pocketsphinx", action="store_true", help="skip the pocketsphinx real-speech set")
    p.add_argument("--corpus", help="speech corpus folder (default: each model's own)")
    p.add_argument("--out", default="benchmarks/decode", help="result folder (default benchmarks/decode)")
    p.add_argument("--quick", action="store_true", help="20 utterances per split, a 1x2 grid (writes *_quick)")
    p.add_argument("--note", default="", help="a line saying which models these are (goes into the files)")


@torch.no_grad()
def _log_probs(model, dataset, limit: int = 0) -> tuple[list[torch.Tensor], list[str]]:
    from bsrnn.data.batching import collate
    from bsrnn.data.text import decode

    n = min(len(dataset), limit) if limit else len(dataset)
    utts, refs = [], []
    for start in range(0, n, 32):
        feats, flens, targets, tlens, _ = collate([dataset[i] for i in range(start, min(n, start + 32))])
        lp, lens = model(feats, flens)
        utts += [lp[: int(k), i].clone() for i, k in enumerate(lens.tolist())]
        refs += [decode(t) for t in torch.split(targets, tlens.tolist())]
    return utts, refs


def _score(decoder, utts, refs) -> dict:
    from bsrnn.train.metrics import error_rates

    started = time.perf_counter()
    hyps = [decoder(u) for u in utts]
    seconds = time.perf_counter() - started
    return {**error_rates(refs, hyps), "utterances": len(refs), "decode_seconds": round(seconds, 3),
            "ms_per_utterance": round(1e3 * seconds / max(len(refs), 1), 2)}


def run(args) -> int:
    from bsrnn.data.features import FeatureStats
    from bsrnn.decode import CharLMScorer, make_decoder
    from bsrnn.train.build import model_from_config, open_dataset
    from bsrnn.train.checkpoint import load_checkpoint
    from bsrnn.train.config import config_from_dict

    torch.set_num_threads(1)
    limit = 20 if args.quick else 0
    weights, bonuses = (args.weights[:1], args.bonuses[:2]) if args.quick else (args.weights, args.bonuses)
    lm = CharLMScorer.from_export(args.lm) if args.lm.endswith(".safetensors") else CharLMScorer.from_checkpoint(args.lm)
    extra, tmp = {}, None
    if not args.no_pocketsphinx:
        from bsrnn.data.importers import import_pocketsphinx_testdata
        tmp = Path(tempfile.mkdtemp(prefix="bsrnn-ps-"))
        try:
            import_pocketsphinx_testdata(tmp)
            extra["pocketsphinx"] = (str(tmp / "pocketsphinx.jsonl"), str(tmp / "features"))
        except FileNotFoundError as e:
            print(f"pocketsphinx set skipped: {e}")
    rows, tuning = [], []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "decode_quick" if args.quick else "decode"

    def save() -> None:
        result = {"note": args.note, "lm": args.lm, "beam": args.beam, "grid": {"lm_weight": weights, "bonus": bonuses},
                  "dev_limit": args.dev_limit or None, "rows": rows, "tuning": tuning}
        write_json(result, out / f"{name}.json")
        (out / f"{name}.md").write_text(markdown(result))

    try:
        for ckpt_path in args.models:
            ckpt = load_checkpoint(ckpt_path)
            cfg = config_from_dict(json.loads(ckpt["config"]))
            if args.corpus:
                cfg.data.corpus = args.corpus
            stats = FeatureStats.load(Path(ckpt_path).parent / "stats.json")
            model = model_from_config(cfg.model)
            model.load_state_dict(ckpt["model"])
            model.eval()
            label = str(Path(ckpt_path).parent.name)

            def data(split: str, n: int = 0):
                if split in extra:
                    manifest, cache = extra[split]
                    cfg_ps = dataclasses.replace(cfg.data, cache_dir=cache)
                    return _log_probs(model, open_dataset(cfg_ps, manifest, stats), n)
                return _log_probs(model, open_dataset(cfg.data, split, stats), n)

            dev = data("dev", limit or args.dev_limit)
            best = None
            for w in weights:
                for b in bonuses:
                    r = _score(make_decoder("beam", beam=args.beam, lm=lm, lm_weight=w, bonus=b), *dev)
                    tuning.append({"model": label, "split": "dev", "lm_weight": w, "bonus": b, **r})
                    print(f"{label} dev beam+lm w={w} b={b}: CER {r['cer']:.2f} WER {r['wer']:.2f} ({r['decode_seconds']:.1f} s)",
                          flush=True)
                    if best is None or r["cer"] < best[0]:
                        best = (r["cer"], w, b)
                    save()
            _, w, b = best
            decoders = [("greedy", make_decoder("greedy"), None, None),
                        ("beam", make_decoder("beam", beam=args.beam), None, None),
                        ("beam+lm", make_decoder("beam", beam=args.beam, lm=lm, lm_weight=w, bonus=b), w, b)]
            for split in ["dev", *args.splits, *extra]:
                utts, refs = dev if split == "dev" else data(split, limit)
                for dname, dec, dw, db in decoders:
                    r = _score(dec, utts, refs)
                    rows.append({"model": label, "checkpoint": str(ckpt_path), "split": split, "decoder": dname,
                                 "beam": args.beam if dname != "greedy" else 1, "lm_weight": dw, "bonus": db, **r})
                    print(f"{label} {split} {dname}: CER {r['cer']:.2f} WER {r['wer']:.2f} ({r['decode_seconds']:.1f} s)",
                          flush=True)
                    save()
    finally:  # the imported real-speech set and its features
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    save()
    print(f"results in {out / name}.json")
    return 0


def markdown(result: dict) -> str:
    lines = ["# CTC decoding: greedy vs prefix beam search vs beam + character LM", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    lines += [f"LM: `{result['lm']}`; beam {result['beam']}; LM weight and bonus tuned on dev over "
              f"{result['grid']['lm_weight']} x {result['grid']['bonus']}"
              + (f" (first {result['dev_limit']} dev utterances)" if result.get("dev_limit") else "")
              + ". Decode seconds: one thread, on the machine as it was (CER does not depend on load).", "",
              "| model | split | decoder | lm_weight | bonus | CER % | WER % | utts | decode s | ms / utt |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['split']} | {r['decoder']} | {'' if r['lm_weight'] is None else r['lm_weight']} | "
                     f"{'' if r['bonus'] is None else r['bonus']} | {r['cer']:.2f} | {r['wer']:.2f} | {r['utterances']} | "
                     f"{r['decode_seconds']:.1f} | {r.get('ms_per_utterance', float('nan')):.1f} |")
    if result.get("tuning"):
        lines += ["", "Dev grid (beam + LM):", "", "| model | lm_weight | bonus | CER % | WER % |", "|---|---|---|---|---|"]
        lines += [f"| {t['model']} | {t['lm_weight']} | {t['bonus']} | {t['cer']:.2f} | {t['wer']:.2f} |"
                  for t in result["tuning"]]
    return "\n".join(lines) + "\n"
