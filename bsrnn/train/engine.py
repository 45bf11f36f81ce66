"""What the two training loops share: run directory, checkpoints and resume, the optimizer update.

The speech loop (``loop.py``, CTC) and the language-model loop (``lm.py``, truncated BPTT) differ
in what a batch is, how the loss is computed, and what is evaluated and logged; each keeps that
in its own visible loop. Everything else is here, once:

* ``prepare_run_dir``, ``seed_everything``, ``make_optimizer``;
* ``Checkpointer``: ``<run_dir>/last.pt`` and ``best.pt``. ``resume`` restores the model,
  optimizer, sparsity method and RNG states from ``last.pt`` after ``check_resumable`` has found
  the saved config compatible; ``save_if_best`` keeps the state with the lowest metric *among the
  sparsest states* (so a pruned run's ``best.pt`` is at its final sparsity, not a dense early one);
* ``TrainStep``: one optimizer update. ``set_lr`` applies the learning-rate schedule (a pure
  function of the step, so nothing of it is checkpointed); the loop runs its forward pass and
  loss inside ``forward()``; ``update`` does backward, gradient clipping, ``optimizer.step()`` and
  ``method.step(step)``, or, when the loss or the gradient is not finite, skips the batch without
  touching weights or buffers, counts it in ``pos["bad_batches"]`` and raises
  ``TrainingDiverged`` past ``max_bad_batches``.

The run log is ``metrics.RunLog``. Mixed precision is ``TrainStep``'s too, for both loops at
once: ``precision="bf16"`` configures a model that knows its own fp32 regions (``set_precision``:
the speech models and the LMs keep recurrent state, log-softmax and losses in fp32) and otherwise
runs ``forward()`` under bf16 autocast. Master weights, optimizer state, gradients and every
sparsity decision stay fp32 either way.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..models import precision as precision_mod
from .checkpoint import load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state
from .config import OptimConfig


class TrainingDiverged(RuntimeError):
    """Too many batches had a non-finite loss or gradient."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(optim: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if optim.name == "sgd":  # the paper's optimizer
        return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum, nesterov=True,
                               weight_decay=optim.weight_decay)
    params = list(model.parameters())
    # torch's fused Adam: one pass over each tensor instead of a dozen (×7 faster on a CPU for a
    # 48 M-parameter model, which the dense-with-zeros parameters of a wide sparse model are);
    # the for-each implementation where the fused kernel does not run (other devices, dtypes)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
    return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused or None)


def prepare_run_dir(run_dir: str | Path, *, create: bool = True) -> Path:
    """``train.run_dir`` as a directory (made when ``create``: the one process that writes)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"train.run_dir {run_dir} is a file, not a directory; name a new or existing directory")
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


_MISSING = object()


def check_resumable(saved: dict, current: dict, path: Path, free: dict, defaults: dict | None = None) -> None:
    """Refuse to continue a run under a config that would make it a different run.

    ``saved`` and ``current`` are resolved configs as dicts (tables of values, plus top-level
    values such as ``task``). ``free`` maps a table to the keys a resumed run may change (``None``:
    all of them). A key the saved config lacks (written before the key existed) counts as its
    value in ``defaults``, the default config.
    """
    defaults = defaults or {}

    def differs(key: str, have, want) -> None:
        if have is _MISSING or have != want:
            shown = None if have is _MISSING else have
            raise ValueError(f"{path} was trained with {key} = {shown!r}, not {want!r}; use another "
                             "train.run_dir, or train.resume=false to start over")

    for section, values in current.items():
        free_keys = free.get(section, set())
        if free_keys is None:
            continue
        if not isinstance(values, dict):
            differs(section, saved.get(section, defaults.get(section, _MISSING)), values)
            continue
        table, fallback = saved.get(section, {}), defaults.get(section, {})
        for key, value in values.items():
            if key not in free_keys:
                differs(f"{section}.{key}", table.get(key, fallback.get(key, _MISSING)), value)


class Checkpointer:
    """``last.pt`` (to resume) and ``best.pt`` (to keep) of one run.

    A checkpoint holds the model, optimizer and sparsity-method state, the loop's position dict
    (``pos``: the step and whatever else the loop needs to continue), every RNG state, the
    resolved config and whatever ``extra()`` returns (the LM's carried hidden state and
    vocabulary). Only the process with ``writer=True`` writes (rank 0 under torchrun); it
    removes what a killed writer left behind when it starts.
    """

    def __init__(self, run_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, method,
                 config: dict, extra: Callable[[], dict] | None = None, writer: bool = True):
        self.model, self.optimizer, self.method = model, optimizer, method
        self.config, self.extra, self.writer = config, extra, writer
        self.last, self.best = Path(run_dir) / "last.pt", Path(run_dir) / "best.pt"
        if writer:  # a writer killed mid-write (SIGKILL) left its temporary; the checkpoint is whole
            for path in (self.last, self.best):
                remove_stale_temporaries(path)

    def resume(self, free: dict, defaults: dict | None = None) -> dict | None:
        """Restore the state of ``last.pt`` into the model, optimizer, method and RNGs; returns
        the checkpoint (its ``position`` and extras are the loop's to read), or None without one."""
        if not self.last.is_file():
            return None
        ckpt = load_checkpoint(self.last)
        check_resumable(json.loads(ckpt["config"]), self.config, self.last, free, defaults)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.method.load_state_dict(ckpt["sparsity"])
        set_rng_state(ckpt["rng"])
        return ckpt

    def save(self, pos: dict, path: Path | None = None) -> None:
        if not self.writer:
            return
        save_checkpoint({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "sparsity": self.method.state_dict(), "position": dict(pos), "rng": rng_state(),
                         "config": json.dumps(self.config), **(self.extra() if self.extra else {})},
                        path or self.last)

    def save_if_best(self, pos: dict, sparsity: float, metric: float) -> bool:
        """Write ``best.pt`` when this state has the lowest ``metric`` among the sparsest states.

        The key ``[-sparsity (3 decimals), metric]`` lives in ``pos["best_key"]`` (so it survives
        a resume); a state that is sparser wins even with a worse metric.
        """
        key = [-round(sparsity, 3), metric]
        if key < pos["best_key"]:
            pos["best_key"] = key
            self.save(pos, self.best)
            return True
        return False


@dataclass(frozen=True)
class Update:
    """What ``TrainStep.update`` did: applied or skipped, the gradient norm (NaN when skipped),
    and whether the sparsity method changed its masks at this step."""

    ok: bool
    grad_norm: float
    masks_changed: bool = False


class TrainStep:
    """One optimizer update with the non-finite-batch guard, the same in both loops.

    ```python
    lr = trainer.set_lr(step)
    with trainer.forward():            # the loop's own forward pass and loss
        loss = ...
    result = trainer.update(loss, step, pos)
    ```
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, method, *,
                 lr_at: Callable[[int], float], grad_clip: float, max_bad_batches: int,
                 units: tuple[str, str] = ("batch", "batches"), advice: str = "lower optim.lr or check the data",
                 last: Path | None = None, precision: str = "fp32", recurrent_precision: str = "auto",
                 block_sparse: bool = False):
        self.model, self.optimizer, self.method = model, optimizer, method
        self.lr_at, self.grad_clip, self.max_bad_batches = lr_at, grad_clip, max_bad_batches
        self.units, self.advice, self.last = units, advice, last
        self._buffers: list[torch.Tensor] | None = None
        self.precision = precision_mod.resolve(precision)
        self._autocast = not hasattr(model, "set_precision")  # a model of the user's: autocast it whole
        if not self._autocast:
            model.set_precision(self.precision, recurrent_precision)
        self.block_sparse = block_sparse  # GRUs train on block-sparse kernels while the masks are fixed
        self._on_bsr = False

    def set_lr(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def sync_kernels(self, step: int) -> None:
        """Before step ``step``'s forward pass: run the model's GRUs on block-sparse kernels when
        the method's masks are fixed for this step (``method.fixed_masks``), repacked whenever the
        masks changed, and on the dense path otherwise. A pure function of the step and the
        method's state, so a resumed run takes the same path at the same steps."""
        if not self.block_sparse:
            return
        from ..models.sparse_gru import disable_block_sparse, enable_block_sparse

        if self.method.fixed_masks(step):
            packed = enable_block_sparse(self.model, self.method.masks.block_masks, self.method.block)
            if packed and not self._on_bsr:
                tqdm.write(f"step {step}: masks fixed, {', '.join(packed)} now train on block-sparse kernels")
            self._on_bsr = bool(packed) or self._on_bsr
        elif self._on_bsr:
            disable_block_sparse(self.model)
            self._on_bsr = False

    def _exact_grads(self) -> frozenset[str]:
        """Parameters whose gradient in this step is exactly zero at their pruned entries: those of
        the GRUs on block-sparse kernels, unless a penalty term (group lasso) added its own."""
        penalty = getattr(self.method, "penalty_active", None)
        if not self._on_bsr or (penalty is not None and penalty()):
            return frozenset()
        from ..models.sparse_gru import exact_gradient_params

        return exact_gradient_params(self.model)

    @contextlib.contextmanager
    def forward(self, step: int | None = None) -> Iterator[None]:
        """Run the forward pass and the loss in here. The buffers (BatchNorm statistics) are
        saved on entry and restored if the batch turns out bad; a model without its own
        ``set_precision`` runs here under bf16 autocast when training in bf16."""
        if step is not None:
            self.sync_kernels(step)
        self._buffers = [b.clone() for b in self.model.buffers()]
        if self._autocast:
            device = next(self.model.parameters()).device
            with precision_mod.autocast(self.precision, device):
                yield
        else:
            yield

    def update(self, loss: torch.Tensor, step: int, pos: dict, *, finite: bool | None = None) -> Update:
        """Backward, clip, step the optimizer and the sparsity method; or skip a bad batch.

        ``finite`` is whether the loss is finite (the speech loop's ranks agree on it first);
        by default it is read from ``loss``.
        """
        if self._buffers is None:
            raise RuntimeError("TrainStep.update needs the forward pass run inside TrainStep.forward()")
        buffers, self._buffers = self._buffers, None
        self.optimizer.zero_grad(set_to_none=True)
        if finite is None:
            finite = bool(torch.isfinite(loss.detach()))
        grad_norm = math.nan
        if finite:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or math.inf))
        if math.isfinite(grad_norm):
            self.optimizer.step()
            masks = getattr(self.method, "masks", None)
            if masks is not None:  # which pruned entries this step's gradients left exactly zero
                masks.exact_grads = self._exact_grads()
            changed = bool(self.method.step(step))  # masks updated on schedule and applied in place
            return Update(True, grad_norm, changed)
        # A NaN/inf loss or gradient: skip this batch, never let it touch the model.
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
        pos["bad_batches"] += 1
        one, many = self.units
        tqdm.write(f"step {step}: non-finite loss/gradient, {one} skipped ({pos['bad_batches']} so far)")
        if pos["bad_batches"] > self.max_bad_batches:
            held = f"; {self.last} holds the last good state" if self.last is not None else ""
            raise TrainingDiverged(
                f"training stopped at step {step}: {pos['bad_batches']} {many} had a non-finite loss or gradient "
                f"(limit train.max_bad_batches = {self.max_bad_batches}); {self.advice}{held}")
        return Update(False, grad_norm)
