"""The ``bsrnn`` command index: --help lists exactly the registered commands, each command's
--help works, and a broken command module is an error, never a command that silently vanishes."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bsrnn import cli

ROOT = Path(__file__).resolve().parents[1]  # the repository: the bsrnn under test


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name, p in a.choices.items()}


def _all_command_paths(parser, prefix=()):
    """Every (sub-)command path, e.g. ("data",), ("data", "synth"), ("bench", "kernels")."""
    for name, p in _subcommands(parser).items():
        yield (*prefix, name)
        yield from _all_command_paths(p, (*prefix, name))


def test_help_of_the_real_entry_point_lists_exactly_the_registered_commands():
    registered = list(cli.commands())
    assert registered == list(_subcommands(cli.build_parser()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "bsrnn", "--help"], capture_output=True, text=True, timeout=300,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("positional arguments:")[1].split("options:")[0]
    listed = re.findall(r"^    (\S+)", section, flags=re.M)  # command names sit at 4 spaces, wrapped help deeper
    assert listed == registered
    assert "infer" not in listed and {"train", "eval", "export", "bench", "reproduce"} <= set(listed)


def test_every_module_contributes_commands_in_order():
    parser = cli.build_parser()
    names = list(_subcommands(parser))
    assert len(names) >= len(cli.COMMAND_MODULES)
    assert names.index("data") < names.index("train") < names.index("export") < names.index("reproduce")


def test_each_command_help_works(capsys):
    paths = list(_all_command_paths(cli.build_parser()))
    assert ("data", "synth") in paths and ("bench", "kernels") in paths  # the walk reaches nested commands
    for path in paths:
        with pytest.raises(SystemExit) as exit_:
            cli.main([*path, "--help"])
        assert exit_.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith(f"usage: bsrnn {' '.join(path)} "), (path, out[:200])


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_missing_command_module_is_an_error(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "bsrnn.no_such_cli"))
    with pytest.raises(cli.CommandModuleError, match=r"bsrnn\.no_such_cli cannot be imported"):
        cli.build_parser()
    with pytest.raises(ImportError, match="COMMAND_MODULES"):  # main too, and the error is an ImportError
        cli.main(["--help"])


def _module(tmp_path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_command_module_with_a_missing_dependency_is_an_error(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, "bsrnn_test_broken_cli",
                   "import bsrnn_test_absent_dependency\n\ndef register(sub):\n    sub.add_parser('x', help='x')\n")
    monkeypatch.setattr(cli, "COMMAND_MODULES", (name,))
    with pytest.raises(cli.CommandModuleError, match="bsrnn_test_absent_dependency") as err:
        cli.build_parser()
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


@pytest.mark.parametrize("source, message", [
    ("X = 1\n", "has no register"),
    ("def register(sub):\n    pass\n", "registered no command"),
    ("def register(sub):\n    sub.add_parser('hidden')\n", "hidden have no help line"),
], ids=["no-register", "registers-nothing", "no-help-line"])
def test_command_module_that_registers_nothing_visible_is_an_error(tmp_path, monkeypatch, source, message):
    name = _module(tmp_path, monkeypatch, "bsrnn_test_bad_cli", source)
    monkeypatch.setattr(cli, "COMMAND_MODULES", (name,))
    with pytest.raises(cli.CommandModuleError, match=message):
        cli.build_parser()


def test_a_good_module_in_isolation_builds(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, "bsrnn_test_good_cli",
                   "def register(sub):\n    p = sub.add_parser('hello', help='say hello')\n"
                   "    p.set_defaults(func=lambda a: print('hello') or 0)\n")
    monkeypatch.setattr(cli, "COMMAND_MODULES", (name,))
    assert list(cli.commands()) == ["hello"]
    assert cli.main(["hello"]) == 0
