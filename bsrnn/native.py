"""Building the package's C++ sources into shared libraries, once per machine: one mechanism for
the inference kernel (``inference/kernels/bsr_cpu.cpp``) and the training kernels
(``models/csrc/bsr_train.cpp``).

A library is compiled with the system C++ compiler (``$CXX``, else g++ or c++) into
``$BSRNN_CACHE`` (default ``~/.cache/bsrnn``), named by a hash of everything the build reads (the
source text, compiler, flags and this CPU, since ``-march=native`` code must not move to another
one). It is compiled and linked as two steps, so compile-only flags such as ``-ffast-math`` never
reach the link (GCC would link ``crtfastmath.o`` and turn on flush-to-zero for the whole
process), in a temporary directory beside the cache and renamed into place, so concurrent first
uses are safe and a killed build leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

LINK_FLAGS = ["-shared", "-fopenmp"]


def cpu_id() -> str:
    """What identifies this CPU for ``-march=native`` code (model name and feature flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor()


def cache_dir() -> Path:
    return Path(os.environ.get("BSRNN_CACHE", Path.home() / ".cache" / "bsrnn"))


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def library_path(name: str, src: str, cache: Path, cxx: str, flags: list[str],
                 link_flags: list[str] = LINK_FLAGS) -> Path:
    """Where the library ``name`` built from ``src`` lives: named by a hash of everything the build reads."""
    key = hashlib.sha256("\n".join([src, cxx, " ".join(flags), " ".join(link_flags), cpu_id()]).encode())
    return Path(cache) / f"{name}_{key.hexdigest()[:16]}.so"


def build_library(name: str, src: str, flags: list[str], *, link_flags: list[str] = LINK_FLAGS,
                  cache: Path | None = None, cxx: str | None = None, timeout: float = 900) -> Path:
    """The shared library of C++ text ``src``, compiled unless the cache already holds it.
    Raises ``FileNotFoundError`` without a compiler, ``OSError``/``subprocess.SubprocessError``
    when the build fails (``CalledProcessError.stderr`` holds the compiler's words)."""
    cache = cache_dir() if cache is None else Path(cache)
    cxx = cxx or compiler()
    if not cxx:
        raise FileNotFoundError("no C++ compiler: set $CXX or install g++")
    so = library_path(name, src, cache, cxx, flags, link_flags)
    if so.exists():
        return so
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cpp = Path(tmp) / f"{name}.cpp"  # compile the text that was hashed, not a file that may change
        cpp.write_text(src)
        obj, lib = Path(tmp) / "k.o", Path(tmp) / "k.so"
        for cmd in ([cxx, *flags, "-c", str(cpp), "-o", str(obj)], [cxx, *link_flags, str(obj), "-o", str(lib)]):
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
        os.replace(lib, so)
    return so
