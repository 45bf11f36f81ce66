"""Import costs: the library's core pulls in neither numba (~0.8 s, compiles kernels) nor
matplotlib (figures); each is imported on the code path that needs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numba", "llvmlite", "matplotlib")


def _loaded_after(statements: list[str]) -> list[dict]:
    """For each statement, run cumulatively in one fresh interpreter: the HEAVY modules then loaded."""
    script = "import json, sys\nseen = []\n"
    for s in statements:
        script += f"{s}\nseen.append(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))\n"
    script += "print(json.dumps(seen))\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(zip(statements, json.loads(proc.stdout.strip().splitlines()[-1])))


def test_core_imports_load_neither_numba_nor_matplotlib():
    steps = ["import bsrnn.sparsity", "import bsrnn.models", "import bsrnn.data.textcorpus",
             "import bsrnn.inference", "from bsrnn.cli import build_parser; build_parser()",
             "import numba"]
    loaded = _loaded_after(steps)
    for step in steps[:-1]:
        assert loaded[step] == [], f"after `{step}` these are imported: {loaded[step]}"
    assert "numba" in loaded["import numba"]  # the probe sees a heavy module when one is imported


def test_sparse_runtime_compiles_its_cells_once_and_keeps_the_old_names():
    import numpy as np
    import pytest

    from bsrnn.inference import rnn

    assert rnn._cells() is rnn._cells()  # compiled once per process
    from bsrnn.inference.rnn import _gru_cell, _tanh  # the module-level names still import
    assert _tanh is rnn._cells().tanh and _gru_cell is rnn._cells().gru_cell
    assert abs(float(_tanh(np.float32(0.5))) - np.tanh(0.5)) < 1e-6
    with pytest.raises(AttributeError, match="no attribute '_no_such_cell'"):
        rnn._no_such_cell
