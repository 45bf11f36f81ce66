"""``import bsrnn.sparsity`` stays light: no plotting and no JIT compiler come with it."""

import subprocess
import sys


def test_importing_the_sparsity_package_loads_neither_matplotlib_nor_numba():
    code = ("import sys, bsrnn.sparsity; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'numba', 'bsrnn'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["bsrnn"], out.stdout  # bsrnn itself was imported: the check looked
