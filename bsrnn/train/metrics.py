"""Error rates and training logs.

The paper measures speech models by character error rate (CER, docs/method.md §17); WER is logged
too, though at CPU scale it stays near 80–100 % and says little (docs/training-on-cpu.md §9). Rates
are corpus-level (total edits / total reference length) via jiwer, in percent.

``RunLog`` writes one CSV row per logged step (``<run_dir>/log.csv``, appended across resumes)
and mirrors it to TensorBoard (``<run_dir>/tb``) when enabled.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import jiwer
import torch

from bsrnn.data.text import ctc_greedy_decode


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """Best-path CTC transcripts of ``log_probs (T, N, C)``, each cut to its output length."""
    best = log_probs.argmax(-1).t().cpu()  # (N, T)
    return [ctc_greedy_decode(best[i, : int(n)]) for i, n in enumerate(lengths.tolist())]


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus CER and WER in percent. An empty hypothesis counts as all deletions."""
    if not refs:
        raise ValueError("cannot compute error rates on zero utterances")
    return {"cer": 100.0 * jiwer.cer(refs, hyps), "wer": 100.0 * jiwer.wer(refs, hyps)}


class RunLog:
    """CSV (always) and TensorBoard (optional) scalars, one row per ``write`` call."""

    FIELDS = ("step", "epoch", "split", "loss", "penalty", "lr", "grad_norm", "sparsity",
              "cer", "wer", "bad_batches", "seconds")

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "log.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._file, self.FIELDS, extrasaction="raise")
        if new:
            self._csv.writeheader()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow to import
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def write(self, step: int, split: str, **values: float) -> None:
        row = {"step": step, "split": split, **{k: _fmt(v) for k, v in values.items()}}
        self._csv.writerow(row)
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if key not in ("epoch",) and value is not None and math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(v) -> str | int | float:
    return f"{v:.6g}" if isinstance(v, float) else v
