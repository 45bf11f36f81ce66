"""``bsrnn export`` (checkpoint -> BSR file), ``bsrnn export-report`` (size report of a file) and
``bsrnn transcribe`` (audio -> text from an exported file; docs/deployment.md).

Only ``export`` reaches into training (to rebuild the model a checkpoint describes); the
inference package itself reads exported files alone (docs/architecture.md §3).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _print_report(exp, path) -> None:
    rows = exp.size_report()
    print(f"{path}: {len(exp.sparse)} block-sparse matrices, {len(exp.dense)} dense tensors")
    for r in rows[:-1]:
        print(f"  {r['name']:<40s} {'x'.join(map(str, r['shape'])):>12s} block {r['block'][0]}x{r['block'][1]} {r['dtype']}"
              f"  density {r['density']:6.1%}  {r['dense_bytes'] / 1e6:8.2f} MB -> {r['sparse_bytes'] / 1e6:8.3f} MB"
              f"  (x{r['ratio']:.1f} smaller)")
    t = rows[-1]
    print(f"  {t['name']:<40s} {t['dense_bytes'] / 1e6:.2f} MB -> {t['sparse_bytes'] / 1e6:.3f} MB (x{t['ratio']:.1f}); "
          f"other dense tensors {t['other_dense_bytes'] / 1e6:.3f} MB")


def _export(args) -> int:
    from bsrnn.sparsity.blocks import parse_block
    from bsrnn.train.checkpoint import load_weights
    from bsrnn.train.config import config_from_dict
    from bsrnn.train.evaluate import model_from_config

    from .export import export_model, save

    state, cfg_json = load_weights(args.checkpoint)
    cfg = config_from_dict(json.loads(cfg_json) if isinstance(cfg_json, str) else cfg_json)
    model = model_from_config(cfg.model)
    model.load_state_dict(state)
    sp = cfg.sparsity
    block = parse_block(args.block) if args.block else tuple(sp.block)
    exclude = args.exclude if args.exclude is not None else list(sp.exclude)
    if args.exclude is None and "output.*" not in exclude:
        exclude.append("output.*")  # the CTC output layer is never pruned (29 rows: no block height tiles it)
    exp = export_model(model, block, include=args.include or sp.include, exclude=exclude,
                       config=json.loads(cfg_json) if isinstance(cfg_json, str) else dict(cfg_json), dtype=args.dtype)
    if not args.weights_only:
        exp.speech = speech_section(model, args.stats or Path(args.checkpoint).parent / "stats.json")
    out = save(exp, args.out)
    _print_report(exp, out)
    if exp.speech is not None:
        print(f"  speech model: features, statistics and alphabet included; `bsrnn transcribe {out} AUDIO...`")
    return 0


def speech_section(model, stats_path) -> dict:
    """The export's ``speech`` section for a DeepSpeech2 ``model`` and its run's ``stats.json``."""
    import dataclasses

    from bsrnn.data.features import FeatureStats, LogMel
    from bsrnn.data.text import ALPHABET, BLANK
    from bsrnn.models.deepspeech2 import CLIP

    from .speech import speech_header

    stats_path = Path(stats_path)
    if not stats_path.is_file():
        raise FileNotFoundError(f"feature statistics {stats_path} are missing (bsrnn train writes them beside the "
                                "checkpoints); pass --stats PATH, or --weights-only to export the weights alone")
    stats = FeatureStats.load(stats_path)
    return speech_header(dataclasses.asdict(model.spec), model.conv.LAYERS, clip=CLIP,
                         bn_eps=[n.eps for n in model.conv.norms], features=stats.settings or LogMel().settings(),
                         mean=stats.mean.tolist(), std=stats.std.tolist(), count=stats.count, alphabet=ALPHABET,
                         blank=BLANK)


def _report(args) -> int:
    from .export import load

    _print_report(load(args.file), args.file)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a checkpoint's pruned weights as a block-sparse (BSR) file",
                              description="Pruned weights (dense with zeros) -> safetensors BSR arrays + JSON header.")
    p.add_argument("checkpoint", type=Path, help="a bsrnn training checkpoint (.pt)")
    p.add_argument("out", type=Path, help="output file (.safetensors)")
    p.add_argument("--block", help="block shape, e.g. 4x4 (default: the run's sparsity.block)")
    p.add_argument("--include", nargs="*", default=None, help="parameter globs stored block-sparse (default: the run's)")
    p.add_argument("--exclude", nargs="*", default=None, help="parameter globs kept dense (default: the run's, and output.* for a speech model)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="block values: fp32 (exact), bf16, or int8 with one scale per block row (docs/kernels.md §2)")
    p.add_argument("--stats", type=Path, default=None,
                   help="feature statistics of the run (default: stats.json beside the checkpoint)")
    p.add_argument("--weights-only", action="store_true",
                   help="store the weights alone, without the features, statistics and alphabet transcribe needs")
    p.set_defaults(func=_export)
    r = subparsers.add_parser("export-report", help="size report of an exported BSR file")
    r.add_argument("file", type=Path)
    r.set_defaults(func=_report)
    from .transcribe_cli import add_transcribe

    add_transcribe(subparsers)
