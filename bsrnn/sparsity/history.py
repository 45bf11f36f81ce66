"""The mask-update history a sparsity method keeps, as small typed records.

BSRNN Figure 3 plots the threshold and the sparsity over training; a method appends one record
per update (``method.history``) and one per pruned matrix (``method.layer_history[name]``):

* ``MaskUpdate``: one scheduled update of one layer kind (BP, WP, GLP): the step, the kind, the
  threshold in force and the kind's block sparsity after it.
* ``MaskSwap``: one drop-and-regrow update of ``DynamicSparsity`` (RigL, SET): the step, the
  fraction of live blocks swapped and the block sparsity (constant by construction).
* ``LayerSparsity``: one matrix's block sparsity after an update.

In a checkpoint each record is a plain dict (``to_dict``), so checkpoints stay loadable with
``torch.load(weights_only=True)``. ``from_state`` also reads the positional rows older
checkpoints and run files stored: ``[step, kind index, threshold, sparsity]`` for updates,
``[step, 0.0, drop fraction, sparsity]`` for swaps and ``[step, sparsity]`` for layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .targets import KINDS


class _Record:
    """Shared (de)serialisation: a dict of the fields, or a legacy positional row."""

    legacy: str = ""  # what the positional row of older checkpoints held, for error messages

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def _from_row(cls, row: list):
        raise NotImplementedError

    @classmethod
    def from_state(cls, row):
        """A record from its ``to_dict()`` form, or from an older checkpoint's positional row."""
        if isinstance(row, cls):
            return row
        if isinstance(row, dict):
            names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
            if set(row) != names:
                raise ValueError(f"a {cls.__name__} record has the fields {', '.join(sorted(names))}, "
                                 f"got {', '.join(sorted(row)) or 'none'}")
            return cls(**row)
        if isinstance(row, (list, tuple)):
            n = cls.legacy.count(",") + 1
            if len(row) != n:
                raise ValueError(f"an old-style {cls.__name__} row holds {n} values [{cls.legacy}], got {list(row)}")
            return cls._from_row([float(v) for v in row])
        raise ValueError(f"a {cls.__name__} record must be a dict or a list, got {type(row).__name__}")


@dataclass(frozen=True)
class MaskUpdate(_Record):
    """One scheduled mask update of one layer kind."""

    step: int
    kind: str  # "recurrent" | "non_recurrent"
    threshold: float  # the block-score threshold of this update
    sparsity: float  # block sparsity of the kind's matrices after the update

    legacy = "step, kind index, threshold, sparsity"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"mask update kind {self.kind!r} is not one of {', '.join(KINDS)}")

    @classmethod
    def _from_row(cls, row: list) -> "MaskUpdate":
        k = int(row[1])
        if not (row[1] == k and 0 <= k < len(KINDS)):
            raise ValueError(f"an old-style MaskUpdate row's kind index must be 0..{len(KINDS) - 1}, got {row[1]}")
        return cls(int(row[0]), KINDS[k], row[2], row[3])


@dataclass(frozen=True)
class MaskSwap(_Record):
    """One drop-and-regrow update of dynamic sparse training."""

    step: int
    drop_fraction: float  # fraction of live blocks dropped (and as many regrown) in each matrix
    sparsity: float  # block sparsity over all targets after the update

    legacy = "step, 0.0, drop fraction, sparsity"

    @classmethod
    def _from_row(cls, row: list) -> "MaskSwap":
        return cls(int(row[0]), row[2], row[3])


@dataclass(frozen=True)
class LayerSparsity(_Record):
    """One pruned matrix's block sparsity after an update."""

    step: int
    sparsity: float

    legacy = "step, sparsity"

    @classmethod
    def _from_row(cls, row: list) -> "LayerSparsity":
        return cls(int(row[0]), row[1])
