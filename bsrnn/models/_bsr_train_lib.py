"""Builds and loads the C++ block-sparse training kernels (``csrc/bsr_train.cpp``).

Compiled once per machine by ``bsrnn.native`` (the package's one C++ builder: cache in
``$BSRNN_CACHE``, keyed by source, compiler, flags and CPU; atomic) with ``-O3 -march=native
-fopenmp``, or without ``-march=native`` if that fails. ``library()`` returns None
when there is no compiler, the build fails, or ``BSRNN_TRAIN_KERNEL=torch``: callers then use
their torch implementation (same results, dense cost).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import warnings
from pathlib import Path

from .. import native

SOURCE_PATH = Path(__file__).with_name("csrc") / "bsr_train.cpp"
BASE_FLAGS = ["-O3", "-fopenmp", "-fPIC", "-std=gnu++17", "-ffp-contract=fast"]  # compiling; bsrnn.native links
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
    if os.environ.get("BSRNN_TRAIN_KERNEL", "").lower() == "torch" or not native.compiler():
        return None
    source = SOURCE_PATH.read_text()
    errors = []
    for flags in FLAG_SETS:
        try:
            return _load(native.build_library("bsr_train", source, flags))
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", "") or ""
            detail = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
            errors.append(f"{' '.join(flags)}: {e} {detail[-400:]}")
    warnings.warn("bsrnn: building the C++ block-sparse training kernels failed; training runs the torch "
                  "implementation (same results, dense cost): " + " | ".join(errors))
    return None


_LIB: list = []


def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use), or None: use the torch implementation."""
    if not _LIB:
        _LIB.append(_build())
    return _LIB[0]
