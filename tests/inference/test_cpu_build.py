"""The compiled cpu kernel as a process sees it: the build cache keyed by the packaged .cpp, and a
library that leaves the floating-point mode alone."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from bsrnn.inference.kernels import cpu


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
