"""Builds and loads the C++ block-sparse training kernels (``csrc/bsr_train.cpp``).

Compiled once per machine with the system C++ compiler (``$CXX`` or g++/c++, ``-O3 -march=native
-fopenmp``; without ``-march=native`` if that fails) into ``$BSRNN_CACHE`` (default
``~/.cache/bsrnn``), named by a hash of the source, compiler, flags and CPU; built in a temporary
directory and renamed into place, so concurrent first uses are safe. ``library()`` returns None
when there is no compiler, the build fails, or ``BSRNN_TRAIN_KERNEL=torch``: callers then use
their torch implementation (same results, dense cost).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCE_PATH = Path(__file__).with_name("csrc") / "bsr_train.cpp"
BASE_FLAGS = ["-O3", "-fopenmp", "-fPIC", "-shared", "-std=gnu++17", "-ffp-contract=fast"]
FLAG_SETS = (["-march=native", *BASE_FLAGS], BASE_FLAGS)  # the second one where -march=native is refused
ABI = 5  # bump with any change of the entry points' signatures (bsr_train_abi() in the source)

_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
SIGNATURES = {
    "bsr_mm": [_I, _I, _L, _P, _P, _P, _P, _L, _P, _L, _L, _L, _P, _I],
    "sddmm": [_I, _I, _L, _P, _P, _P, _P, _L, _L, _L, _L, _P, _I],
    "gru_fwd": [_I, _I, _I, _L, _L, _L] + [_P] * 13 + [_I],
    "gru_bwd": [_I, _I, _I, _L, _L, _L] + [_P] * 15 + [_I],
    "gather_blocks": [_I, _I, _L, _P, _P, _P, _P, _L, _P, _I, _I],
    "scatter_blocks": [_I, _I, _L, _P, _P, _P, _L, _L, _I],
}


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor()


def _compile(cxx: str, source: str, flags: list[str], so: Path) -> None:
    so.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=so.parent) as tmp:
        src = Path(tmp) / "bsr_train.cpp"
        src.write_text(source)
        subprocess.run([cxx, *flags, str(src), "-o", str(Path(tmp) / "k.so")], check=True, capture_output=True,
                       timeout=900)
        os.replace(Path(tmp) / "k.so", so)


def _load(so: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(so))
    if lib.bsr_train_abi() != ABI:
        raise OSError(f"{so} has ABI {lib.bsr_train_abi()}, expected {ABI}")
    for name, argtypes in SIGNATURES.items():
        for sfx in ("f32", "f64"):
            fn = getattr(lib, f"{name}_{sfx}")
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return lib


def _build() -> ctypes.CDLL | None:
    if os.environ.get("BSRNN_TRAIN_KERNEL", "").lower() == "torch":
        return None
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        return None
    source = SOURCE_PATH.read_text()
    cache = Path(os.environ.get("BSRNN_CACHE", Path.home() / ".cache" / "bsrnn"))
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256("\n".join([source, cxx, " ".join(flags), _cpu_id()]).encode()).hexdigest()[:16]
        so = cache / f"bsr_train_{key}.so"
        try:
            if not so.exists():
                _compile(cxx, source, flags, so)
            return _load(so)
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            errors.append(f"{' '.join(flags)}: {e} {detail.decode(errors='replace')[-400:]}")
    warnings.warn("bsrnn: building the C++ block-sparse training kernels failed; training runs the torch "
                  "implementation (same results, dense cost): " + " | ".join(errors))
    return None


_LIB: list = []


def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use), or None: use the torch implementation."""
    if not _LIB:
        _LIB.append(_build())
    return _LIB[0]
