"""The ``bsrnn`` command line: parses arguments, then calls library functions.

Each area of the library registers its own sub-commands (``register(subparsers)`` in its
``cli`` module), so this file stays a thin index.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "bsrnn.data.cli",        # bsrnn data synth|import-*|stats
    "bsrnn.train.cli",       # bsrnn train|eval|main
    "bsrnn.train.lm_cli",    # bsrnn lm-train|lm-sample
    "bsrnn.inference.cli",   # bsrnn export|infer
    "bsrnn.bench.cli",       # bsrnn bench overhead|kernels|inference
    "bsrnn.sparsity.cli",    # bsrnn prune-demo|schedule
    "bsrnn.experiments.cli", # bsrnn reproduce
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsrnn", description="Block-sparse recurrent neural networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not (e.name and (name == e.name or name.startswith(e.name + "."))):
                raise  # a real missing dependency inside the module: surface it
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear sentence, no traceback
        print(f"bsrnn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
