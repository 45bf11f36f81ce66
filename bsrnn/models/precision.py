"""Numeric precision of training on CPUs: ``fp32`` or ``bf16`` (mixed, with fp32 master weights).

``bf16`` runs the big products of a speech model — the conv front end, the input projections of
every recurrent layer over all time steps, the output layer — in bfloat16 under
``torch.autocast``, and keeps in float32 everything whose rounding would accumulate: the
recurrent state and its gate arithmetic, the CTC loss and log-softmax, the optimizer's master
weights and moments, the masks and every pruning decision (block scores are computed from the
fp32 weights). The per-step recurrent product ``W_hh·h`` is small (batch × width), so whether
bf16 pays there depends on the width and the CPU: ``recurrent_precision`` chooses it apart
(``"auto"`` = bf16 from :data:`RECURRENT_BF16_MIN_WIDTH` units per direction on, measured by
``bsrnn bench training``).

On CPUs with native bf16 arithmetic (AMX-BF16 or AVX-512 BF16) bf16 is the default; elsewhere
torch still computes bf16 correctly by emulation, only slower, so the default there is fp32.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")
RECURRENT_PRECISIONS = ("auto", "fp32", "bf16")
# From this width (units per direction) on, a bf16 W_hh·h per time step beats fp32 at the main
# job's batch of 24 (bsrnn bench training, benchmarks/training/README.md).
RECURRENT_BF16_MIN_WIDTH = 256
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def native_bf16() -> str | None:
    """The CPU feature that gives native bf16 arithmetic here (``amx_bf16``/``avx512_bf16``), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell; bf16 stays available on request
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def default_precision() -> str:
    return "bf16" if native_bf16() else "fp32"


def resolve(precision: str | None) -> str:
    """``None``/``"auto"`` → this machine's default; anything else must be one of :data:`PRECISIONS`."""
    if precision in (None, "auto"):
        return default_precision()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def resolve_recurrent(recurrent: str, precision: str, width: int) -> str:
    """The precision of the per-step recurrent product for a layer of ``width`` units."""
    if recurrent not in RECURRENT_PRECISIONS:
        raise ValueError(f"recurrent precision must be one of {', '.join(RECURRENT_PRECISIONS)}, not {recurrent!r}")
    if precision == "fp32":
        return "fp32"
    if recurrent == "auto":
        return "bf16" if width >= RECURRENT_BF16_MIN_WIDTH else "fp32"
    return recurrent


def dtype_of(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(precision: str, device: torch.device | str = "cpu"):
    """``torch.autocast`` in bf16 for ``"bf16"``; a no-op context for ``"fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16)


def fp32_region(device: torch.device | str = "cpu"):
    """A region where autocast is off (recurrent state arithmetic, losses)."""
    return torch.autocast(torch.device(device).type, enabled=False)
