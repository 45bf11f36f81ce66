"""Sparsity methods for any PyTorch model: WP, BP, GL and GLP (Narang et al. 2017).

```python
from bsrnn.sparsity import BlockPruning, NarangSchedule

method = BlockPruning(model, block=(4, 4), schedule=NarangSchedule.from_heuristic(q, total_itr=..., itr_per_epoch=...))
for step, batch in enumerate(loader):
    loss = ctc(model(*batch)) + method.penalty()
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    method.step(step)                     # update masks on schedule, apply in place
print(method.report().table())
```
"""

from .blocks import REDUCTIONS, block_grid, block_reduce, expand, parse_block, tiles
from .config import METHODS, SparsityConfig, build_method
from .dynamic import DynamicSparsity, StaticSparsity, layer_densities
from .history import LayerSparsity, MaskSwap, MaskUpdate
from .masks import MaskSet
from .methods import (BlockPruning, GroupLasso, GroupLassoPruning, NoSparsity, SparsityMethod,
                      WeightPruning)
from .report import SparsityReport, build_report, count_parameters
from .schedules import NarangSchedule, eq1_theta, weight_quantile
from .targets import KINDS, Target, select_targets

__all__ = [
    "REDUCTIONS", "block_grid", "block_reduce", "expand", "parse_block", "tiles",
    "METHODS", "SparsityConfig", "build_method", "MaskSet", "DynamicSparsity", "StaticSparsity", "layer_densities",
    "LayerSparsity", "MaskSwap", "MaskUpdate",
    "BlockPruning", "GroupLasso", "GroupLassoPruning", "NoSparsity", "SparsityMethod", "WeightPruning",
    "SparsityReport", "build_report", "count_parameters", "NarangSchedule", "eq1_theta", "weight_quantile",
    "KINDS", "Target", "select_targets",
]
