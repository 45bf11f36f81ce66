"""``bsrnn bench <name>``: each benchmark is one entry of ``BENCHES``.

An entry maps a sub-command name to ``(help, target)``. ``target`` is either a function
``configure(parser)`` that adds the sub-command's options and sets ``func``, or the dotted name
of a module with ``add_arguments(parser)`` and ``run(args) -> int``, imported when the parser
is built. Another benchmark joins with one entry, e.g.
``"overhead": ("training-step cost of the sparsity methods", "bsrnn.bench.overhead")``.
"""

from __future__ import annotations

import argparse
import importlib


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", default=out, help=f"directory for result files and figures (default {out})")
    p.add_argument("--quick", action="store_true", help="a short smoke run (writes *_quick files)")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: all CPUs)")
    p.add_argument("--plot-only", action="store_true", help="redraw the figures from the existing result file")


def _run_and_plot(module, args, **kw) -> int:
    from pathlib import Path

    path = (Path(args.out) / ("%s_quick.json" % module.__name__.rsplit(".", 1)[1] if args.quick
                              else "%s.json" % module.__name__.rsplit(".", 1)[1]))
    if not args.plot_only:
        path = module.run(args.out, quick=args.quick, threads=args.threads, **kw)
    elif not path.exists():
        raise FileNotFoundError(f"no result file {path} to plot; run without --plot-only first")
    for p in module.plot(path):
        print(f"wrote {p}")
    print(f"results in {path}")
    return 0


def _kernels(p: argparse.ArgumentParser) -> None:
    _common(p, "benchmarks/kernels")
    p.add_argument("--rounds", type=int, default=11, help="interleaved rounds (median over them)")

    def go(args):
        from . import kernels

        return _run_and_plot(kernels, args, rounds=args.rounds)

    p.set_defaults(func=go)


def _inference(p: argparse.ArgumentParser) -> None:
    _common(p, "benchmarks/inference")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=100, help="time steps per sequence")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")

    def go(args):
        from . import inference

        return _run_and_plot(inference, args, rounds=args.rounds, steps=args.steps, batches=tuple(args.batch))

    p.set_defaults(func=go)


def _training(p: argparse.ArgumentParser) -> None:
    _common(p, "benchmarks/training")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over them)")
    p.add_argument("--batch", type=int, default=24, help="utterances per batch (the main job's: 24)")
    p.add_argument("--frames", type=int, default=230, help="feature frames per utterance")

    def go(args):
        from . import training

        return _run_and_plot(training, args, rounds=args.rounds, batch=args.batch, frames=args.frames)

    p.set_defaults(func=go)


BENCHES = {
    "kernels": ("block-sparse × dense kernels vs dense and vs the roofline (paper figures 5-6)", _kernels),
    "inference": ("sparse GRU/RNN runtime vs torch.nn.GRU/RNN on the same weights", _inference),
    "training": ("median training step by width, sparsity, precision and path (dense, masked, block-sparse), "
                 "with peak memory", _training),
    "gpu": ("the CUDA path (torch BSR/CSR, Triton BSR, dense) checked against scipy and timed, in one call",
            "bsrnn.bench.gpu"),
    "overhead": ("training-step cost of the sparsity methods (mask updates, mask application, group lasso)",
                 "bsrnn.bench.overhead"),
    "decode": ("CER/WER of greedy, beam and beam + character-LM CTC decoding on the test splits",
               "bsrnn.bench.decode"),
    "transcribe": ("whole speech models at batch 1: real-time factor, dense vs sparse runtime, offline and "
                   "streaming, CER per decoder", "bsrnn.bench.transcribe"),
}


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks that write result files and figures under benchmarks/")
    sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    for name, (help_, target) in BENCHES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if isinstance(target, str):
            module = importlib.import_module(target)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
        else:
            target(p)
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
