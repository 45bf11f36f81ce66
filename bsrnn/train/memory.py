"""Keeping a training process's memory near what it really holds.

Speech batches change shape every step (length buckets), and glibc's malloc serves the
activations of one shape from heap pages that the next shape can only partly reuse: the resident
set of a main-job training process grew to ~7 GB over a run while it held well under 1 GB.
Two remedies, used together:

* ``jemalloc`` (Debian's ``libjemalloc2``), an allocator that fragments far less, preloaded into
  the training processes that ``bsrnn main`` and ``bsrnn reproduce`` start (``allocator_env``).
  ``BSRNN_ALLOCATOR=system`` keeps glibc's. For a ``bsrnn train`` started by hand:
  ``LD_PRELOAD=$(python -m bsrnn.train.memory) bsrnn train ...``. Its default of handing freed
  pages back to the system ten seconds after they are freed made a training step 1.33× slower
  (GRU 3×320 at one thread, 590 against 446 ms with glibc, a third of it in the kernel re-faulting
  pages a step later frees and takes again), so ``allocator_env`` turns that decay off
  (``JEMALLOC_CONF``, unless ``MALLOC_CONF`` is set): 434 ms, and the memory goes back once per
  epoch instead.
* ``release_free_memory()`` at every epoch end: glibc's ``malloc_trim(0)`` hands free heap
  pages back, or under jemalloc a purge of every arena (``mallctl("arena.4096.purge")``).

A third cause is not the allocator's: oneDNN, behind torch's CPU convolutions and bf16 matmuls,
caches a compiled primitive (with its buffers) for every input shape it meets, up to 1,024 of them.
Every batch of a speech run has a new length, so that cache only grows: a main-job process went from
~0.8 GB to ~1.3 GB over its first epochs. ``bound_primitive_cache()`` caps it at
``ONEDNN_CACHE_CAPACITY`` primitives (a few batch shapes' worth; an unset
``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` only, so a user's own setting wins); training entry points call
it before the first convolution, and ``allocator_env`` sets it for training subprocesses.

``peak_rss_mb()`` is the process's peak resident set (``ru_maxrss``), written into every
training report so results show what a run needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import sys
from pathlib import Path

JEMALLOC_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                       "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")
ALLOCATORS = ("jemalloc", "system")
# jemalloc's options for training processes: keep freed pages (dirty and muzzy) until
# release_free_memory purges them at an epoch's end, instead of 10 s after each free
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
MALLCTL_ARENAS_ALL = 4096  # jemalloc's arena index meaning "all arenas"
ONEDNN_CACHE_CAPACITY = 64  # primitives: ~10 per batch shape (two convs forward and backward, bf16 GEMMs)
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def bound_primitive_cache(env: dict | None = None) -> dict:
    """Cap oneDNN's primitive cache in ``env`` (default: this process's environment, read by oneDNN
    when it first builds a primitive, so call this before any convolution runs)."""
    env = os.environ if env is None else env
    env.setdefault(ONEDNN_CACHE_ENV, str(ONEDNN_CACHE_CAPACITY))
    return env


@functools.lru_cache(maxsize=1)
def jemalloc_path() -> str | None:
    """The jemalloc shared library on this machine, or None."""
    for path in JEMALLOC_CANDIDATES:
        if Path(path).is_file():
            return path
    found = ctypes.util.find_library("jemalloc")
    return found if found and Path(found).is_absolute() and Path(found).is_file() else None


def allocator_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) for a training subprocess, with jemalloc preloaded when it
    is installed and ``BSRNN_ALLOCATOR`` is not ``system``."""
    env = bound_primitive_cache(dict(os.environ if env is None else env))
    choice = env.get("BSRNN_ALLOCATOR", "jemalloc")
    if choice not in ALLOCATORS:
        raise ValueError(f"BSRNN_ALLOCATOR must be one of {', '.join(ALLOCATORS)}, not {choice!r}")
    lib = jemalloc_path()
    if choice == "system" or lib is None:
        return env
    preload = env.get("LD_PRELOAD", "")
    if lib not in preload.split():
        env["LD_PRELOAD"] = f"{lib} {preload}".strip()
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)  # a user's own setting wins
    return env


def release_free_memory() -> None:
    """Return free heap pages to the system: every jemalloc arena purged when jemalloc is this
    process's allocator, else glibc's ``malloc_trim``; nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    mallctl = getattr(ctypes.CDLL(None), "mallctl", None)  # jemalloc's, when it is preloaded
    if mallctl is not None:
        mallctl(f"arena.{MALLCTL_ARENAS_ALL}.purge".encode(), None, None, None, ctypes.c_size_t(0))
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl, or no glibc
        return
    trim(0)


def allocator_name() -> str:
    """``jemalloc`` when it is preloaded into this process, else ``system``."""
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux's ``VmHWM`` where there is one: ``ru_maxrss`` survives ``execve``, so a process started
    by a large parent would report the parent's peak. Elsewhere ``ru_maxrss`` (macOS in bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 1024)


if __name__ == "__main__":  # `LD_PRELOAD=$(python -m bsrnn.train.memory) bsrnn train ...`
    print(jemalloc_path() or "")
