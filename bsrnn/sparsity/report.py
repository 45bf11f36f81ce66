"""The sparsity report: per layer and gate, element and block sparsity, kept parameters, thresholds.

Counts come from the weights themselves (a block is pruned when all its weights are zero), so the
report is the same for every method, for a model loaded from disk, and for GL runs where zeros
come from a proximal step rather than from masks. ``out_connections`` is the data of BSRNN
Figure 7: for every input neuron of every pruned matrix, the number of nonzero weights in its
column, i.e. how many units it still feeds through that matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .blocks import block_reduce, gate_rows
from .targets import Target

GATE_NAMES = {3: ("r", "z", "n"), 4: ("i", "f", "g", "o")}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters) of ``model``; a tied weight counts once.

    The paper's "# Params" column counts the nonzero ones. One function for every model of the
    package (``bsrnn.models.count_parameters``; ``bsrnn.models.lm.count_params`` is an alias).
    """
    params = list(model.parameters())  # de-duplicated: a tensor shared by two modules is listed once
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


@dataclass
class LayerRow:
    name: str
    gate: str  # "" for the whole matrix, else the gate letter (GRU r/z/n, LSTM i/f/g/o)
    kind: str
    shape: tuple[int, int]
    params: int
    kept: int  # nonzero weights
    sparsity: float  # element sparsity
    block_sparsity: float
    threshold: float


@dataclass
class SparsityReport:
    method: str
    block: tuple[int, int]
    how: str
    rows: list[LayerRow]
    model_params: int  # every parameter of the model
    model_nonzero: int
    pruned_params: int  # parameters of the pruned matrices
    pruned_nonzero: int
    out_connections: list[int] = field(repr=False, default_factory=list)

    @property
    def model_sparsity(self) -> float:
        """Sparsity against the whole dense model (the paper's 'Sparsity' column)."""
        return 1.0 - self.model_nonzero / max(self.model_params, 1)

    @property
    def layer_sparsity(self) -> float:
        """Sparsity of the pruned matrices alone."""
        return 1.0 - self.pruned_nonzero / max(self.pruned_params, 1)

    def histogram(self, bins: int = 20) -> tuple[list[int], list[float]]:
        """Histogram of output connections per neuron: (counts, bin edges)."""
        if not self.out_connections:
            return [], []
        counts, edges = torch.histogram(torch.tensor(self.out_connections, dtype=torch.float64), bins=bins)
        return counts.long().tolist(), edges.tolist()

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(model_sparsity=self.model_sparsity, layer_sparsity=self.layer_sparsity)
        counts, edges = self.histogram()
        d["out_connections_histogram"] = {"counts": counts, "edges": edges}
        del d["out_connections"]
        return d

    def table(self, gates: bool = True) -> str:
        """A fixed-width table for terminals."""
        head = f"{'parameter':<32} {'gate':<4} {'kind':<13} {'shape':>11} {'params':>10} {'kept':>10} " \
               f"{'sparsity':>8} {'blocks':>7} {'threshold':>10}"
        lines = [f"sparsity report — method {self.method}, block {self.block[0]}×{self.block[1]}, score {self.how}",
                 head, "-" * len(head)]
        for r in self.rows:
            if r.gate and not gates:
                continue
            name = ("  └ " + r.name.rsplit(".", 1)[-1]) if r.gate else r.name
            lines.append(f"{name[-32:]:<32} {r.gate:<4} {r.kind:<13} {f'{r.shape[0]}×{r.shape[1]}':>11} "
                         f"{r.params:>10,} {r.kept:>10,} {r.sparsity:>8.1%} {r.block_sparsity:>7.1%} "
                         f"{r.threshold:>10.3g}")
        lines.append("-" * len(head))
        lines.append(f"pruned matrices: {self.pruned_nonzero:,} of {self.pruned_params:,} kept "
                     f"({self.layer_sparsity:.1%} sparse); whole model: {self.model_nonzero:,} of "
                     f"{self.model_params:,} nonzero ({self.model_sparsity:.1%} sparse)")
        return "\n".join(lines)


@torch.no_grad()
def build_report(model: nn.Module, targets: list[Target], thresholds: dict[str, float], *,
                 method: str = "", how: str = "max", pad: bool = False) -> SparsityReport:
    params = dict(model.named_parameters())
    rows: list[LayerRow] = []
    out_conn: list[int] = []
    pruned_params = pruned_nonzero = 0
    for t in targets:
        w = params[t.name].detach().reshape(t.shape[0], -1)
        zero_blocks = block_reduce(w, t.block, "max", t.gates, name=t.name, pad=pad) == 0
        nb_per_gate = zero_blocks.shape[0] // t.gates
        kept = int(torch.count_nonzero(w))
        thr = float(thresholds.get(t.kind, 0.0))
        rows.append(LayerRow(t.name, "", t.kind, tuple(w.shape), w.numel(), kept, 1 - kept / w.numel(),
                             zero_blocks.float().mean().item(), thr))
        if t.gates > 1:
            for g, rs in enumerate(gate_rows(w.shape[0], t.gates)):
                wg = w[rs]
                zb = zero_blocks[g * nb_per_gate:(g + 1) * nb_per_gate]
                kg = int(torch.count_nonzero(wg))
                rows.append(LayerRow(t.name, GATE_NAMES.get(t.gates, tuple("0123456789"))[g], t.kind,
                                     tuple(wg.shape), wg.numel(), kg, 1 - kg / wg.numel(),
                                     zb.float().mean().item(), thr))
        out_conn.extend((w != 0).sum(0).tolist())
        pruned_params += w.numel()
        pruned_nonzero += kept
    model_params, model_nonzero = count_parameters(model)
    block = targets[0].block if targets else (1, 1)
    return SparsityReport(method, block, how, rows, model_params, model_nonzero, pruned_params,
                          pruned_nonzero, out_conn)
