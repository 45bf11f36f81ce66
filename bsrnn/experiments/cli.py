"""Command line of the experiments: ``bsrnn main`` and ``bsrnn reproduce``."""

from __future__ import annotations

import argparse

from .mainjob import run_main_job
from .reproduce import register as _register_reproduce

__all__ = ["register"]


def _main_job(args: argparse.Namespace) -> int:
    run_main_job(corpus=args.corpus, runs=args.runs, out=args.out, overrides=args.set or [],
                 fresh=args.fresh, parallel=not args.sequential, small=not args.no_small)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("main", help="the main job: corpus, dense and block-pruned model, paper table",
                              description="Generate the default corpus (skipped when present), train a "
                                          "small dense GRU and the same model with 4x4 block pruning, "
                                          "and print the paper's table. About 20 minutes on 2 cores. "
                                          "Finished runs are reused and interrupted ones resumed.")
    p.add_argument("--corpus", default="data/corpus", help="corpus directory (default %(default)s)")
    p.add_argument("--runs", default="runs/main", help="run directories go here (default %(default)s)")
    p.add_argument("--out", default="benchmarks/main", help="results.{json,md} go here (default %(default)s)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="overrides applied to every run, e.g. train.epochs=1")
    p.add_argument("--fresh", action="store_true", help="delete earlier runs instead of resuming them")
    p.add_argument("--sequential", action="store_true",
                   help="train the two models one after the other with train.threads each "
                        "(default: both at once, 1 thread each, same throughput on 2 cores)")
    p.add_argument("--no-small", action="store_true",
                   help="skip the third model: a dense one with as many parameters as the sparse one has nonzeros")
    p.set_defaults(func=_main_job)
    _register_reproduce(subparsers)
