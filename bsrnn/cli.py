"""The ``bsrnn`` command line: parses arguments, then calls library functions.

Each area of the library registers its own sub-commands (``register(subparsers)`` in its
``cli`` module), so this file stays a thin index. Every module listed must import and register
at least one command with a help line: a command module that cannot be imported is an error,
never a command that silently goes missing, and ``bsrnn --help`` lists exactly the commands
that exist.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order their commands appear in --help (``bsrnn --help`` lists
# the commands themselves; tests/test_cli.py checks that each one's --help works).
COMMAND_MODULES = (
    "bsrnn.data.cli",
    "bsrnn.train.cli",
    "bsrnn.train.lm_cli",
    "bsrnn.inference.cli",
    "bsrnn.bench.cli",
    "bsrnn.experiments.cli",
)


class CommandModuleError(ImportError):
    """A module of ``COMMAND_MODULES`` cannot be imported or registers no usable command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsrnn", description="Block-sparse recurrent neural networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise CommandModuleError(f"bsrnn command module {name} cannot be imported ({type(e).__name__}: {e}); "
                                     "fix it or remove it from bsrnn.cli.COMMAND_MODULES") from e
        register = getattr(module, "register", None)
        if not callable(register):
            raise CommandModuleError(f"bsrnn command module {name} has no register(subparsers) function")
        before = set(sub.choices)
        register(sub)
        if not set(sub.choices) - before:
            raise CommandModuleError(f"bsrnn command module {name} registered no command")
    listed = {a.dest for a in sub._choices_actions}  # the commands --help shows: those given a help line
    unlisted = sorted(set(sub.choices) - listed)
    if unlisted:
        raise CommandModuleError(f"bsrnn commands {', '.join(unlisted)} have no help line, so --help would hide "
                                 "them; pass help=... to add_parser")
    return parser


def commands(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """The top-level commands of ``parser`` (default: ``build_parser()``), by name, in --help order."""
    parser = build_parser() if parser is None else parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # A command whose trailing file list may come after its options (``bsrnn transcribe M --stream
    # a.wav b.wav``) names that list in ``files_dest``: argparse fills a positional list only once.
    dest = getattr(args, "files_dest", None)
    if extra and dest and not any(e.startswith("-") for e in extra):
        getattr(args, dest).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
