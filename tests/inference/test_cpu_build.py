"""The compiled cpu kernel as a process sees it: every row written whatever number of threads
OpenMP actually starts, the build cache keyed by the packaged .cpp, and a library that leaves
the floating-point mode alone."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bsrnn.inference.kernels import cpu


OMP_CHECK = textwrap.dedent("""
    import numpy as np, scipy.sparse as sp, torch
    from bsrnn.inference import to_bsr, kernels as K
    from bsrnn.inference.kernels import cpu
    torch.set_num_threads(2)
    assert cpu.compiled() is not None
    rng = np.random.default_rng(0)
    bad = []
    for b in (1, 4, 16, 32):
        w = rng.standard_normal((64, 96)).astype(np.float32)
        mat = to_bsr(w, b)
        ref = sp.bsr_matrix((mat.values.astype(np.float64), mat.indices, mat.indptr), shape=(64, 96))
        for nt in (2, 3, 8):
            cpu.set_num_threads(nt)
            for B in (1, 3, 17):
                x = rng.standard_normal((96, B)).astype(np.float32)
                y = K.get("cpu")(mat, x)
                wrong = int((np.abs(y - ref @ x.astype(np.float64)).max(1) > 1e-3).sum())
                if wrong:
                    bad.append(f"block {b} threads {nt} B {B}: {wrong} of 64 rows wrong")
    print("\\n".join(bad) or "ok")
""")


@pytest.mark.skipif(cpu.compiled() is None, reason="needs the compiled cpu kernel")
@pytest.mark.parametrize("env", [{"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true"}],
                         ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_cpu_kernel_writes_every_row_whatever_team_openmp_starts(env):
    res = subprocess.run([sys.executable, "-c", OMP_CHECK], env=os.environ | env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "ok", res.stdout


@pytest.mark.skipif(cpu.compiler() is None, reason="needs a C++ compiler")
def test_library_is_keyed_by_the_packaged_source_and_rebuilt_when_it_changes(tmp_path):
    src = cpu.source()
    assert "extern \"C\" int bsr_mm(" in src  # the packaged .cpp, read as a file
    so = cpu.library_path(src, cpu.cache_dir(), cpu.compiler())
    if cpu.compiled() is not None:
        assert cpu.compiled()._name == str(so)
    # a cache holding the current build: no rebuild
    cpu.build(src, cpu.cache_dir())
    shutil.copy(so, tmp_path / so.name)
    before = (tmp_path / so.name).stat().st_mtime_ns
    assert cpu.build(src, tmp_path) == tmp_path / so.name
    assert (tmp_path / so.name).stat().st_mtime_ns == before
    # an edited .cpp builds a library of its own
    changed = src + "\n// edited\n"
    so2 = cpu.build(changed, tmp_path)
    assert so2 != tmp_path / so.name and so2.parent == tmp_path and so2.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([so.name, so2.name])  # no temp files left
    assert cpu.library_path(changed, tmp_path, cpu.compiler()) == so2


@pytest.mark.skipif(cpu.compiler() is None, reason="needs a C++ compiler")
def test_failed_build_leaves_nothing_behind(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as e:
        cpu.build("this is not C++", tmp_path)
    assert "error" in e.value.stderr
    assert list(tmp_path.iterdir()) == []



@pytest.mark.skipif(cpu.compiled() is None, reason="needs the compiled cpu kernel")
def test_loading_the_library_leaves_subnormals_alone():
    # linked with -ffast-math, GCC's crtfastmath.o would turn on flush-to-zero process-wide at load
    assert cpu.compiled() is not None  # loaded (at the latest) now, in this process
    assert sys.float_info.min / 2 > 0 and np.float32(1e-39) * np.float32(0.5) > 0
