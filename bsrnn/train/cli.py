"""``bsrnn train`` and ``bsrnn eval``: parse, then call the library (``bsrnn main`` is an experiment:
``bsrnn.experiments.cli``)."""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from .config import build_config, load_table, task_of
    raw = load_table(args.config, args.set or [])
    if task_of(raw) == "lm":  # the config's task key (or, in configs older than it, its LM-only keys)
        from .lm_cli import lm_train
        return lm_train(args)
    from .checkpoint import CheckpointWriteError
    from .config import Config
    from .distributed import RankDivergence
    from .loop import TrainingDiverged, train
    cfg = build_config(Config, raw)
    try:
        train(cfg)
    except (TrainingDiverged, CheckpointWriteError, RankDivergence) as e:  # the run stops; its last checkpoint is whole
        print(f"bsrnn: error: {e}", file=sys.stderr)
        return 1
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, write_json
    splits = (args.split or []) + (args.manifest or [])
    decoder = None
    if args.decoder != "greedy" or args.lm:
        from bsrnn.decode import make_decoder
        decoder = make_decoder(args.decoder, beam=args.beam, lm=args.lm, lm_weight=args.lm_weight, bonus=args.bonus,
                               prune=None if args.prune >= 1 else args.prune)
    result = evaluate_checkpoint(args.checkpoint, splits or ["test"], corpus=args.corpus, decoder=decoder)
    print(f"{args.checkpoint}: {result['params']:,} parameters, {result['nonzero_params']:,} nonzero")
    for name, r in result["splits"].items():
        print(f"  {name:<24} CER {r['cer']:6.2f}%   WER {r['wer']:6.2f}%   ({r['utterances']} utts)")
    if args.json:
        write_json(result, args.json)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a speech model (CTC), or an LM, with an optional sparsity method",
                              description="Train from a TOML config; --set overrides dotted keys, "
                                          "e.g. --set optim.lr=1e-3 sparsity.method=bp. The config's "
                                          "top-level task key picks the model: speech (the default) or "
                                          "lm (as bsrnn lm-train). Resumes from <run_dir>/last.pt when present.")
    p.add_argument("--config", help="TOML run configuration (configs/*.toml)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override config keys, e.g. train.epochs=2 model.preset=gru64")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("eval", help="CER/WER of a checkpoint on splits or manifests")
    p.add_argument("checkpoint", help="a checkpoint written by bsrnn train (last.pt or best.pt)")
    p.add_argument("--split", action="append", help="split name in the corpus (repeatable; default test)")
    p.add_argument("--manifest", action="append", help="a JSONL manifest path (repeatable)")
    p.add_argument("--corpus", help="corpus directory (default: the one the model was trained on)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--decoder", choices=("greedy", "beam"), default="greedy",
                   help="CTC decoding: greedy best path (default) or prefix beam search (docs/decoding.md)")
    p.add_argument("--beam", type=int, default=16, help="beam width of --decoder beam (default 16)")
    p.add_argument("--lm", help="character LM for shallow fusion: a bsrnn lm-train checkpoint or lm-export file")
    p.add_argument("--lm-weight", type=float, default=0.5, help="weight of log P_lm in the beam score (default 0.5)")
    p.add_argument("--bonus", type=float, default=1.0, help="score added per emitted character with --lm (default 1.0)")
    p.add_argument("--prune", type=float, default=0.999,
                   help="per frame, extend only by the likeliest symbols up to this cumulative probability "
                        "(default 0.999; 1 = all symbols)")
    p.set_defaults(func=_eval)
