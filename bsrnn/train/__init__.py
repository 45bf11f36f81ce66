"""CTC training of the paper's speech models with a sparsity method (BSRNN §4, docs/method.md §15–16).

```python
from bsrnn.train import load_config, train

cfg = load_config("configs/main_bp.toml", ["train.epochs=2"])
report = train(cfg)   # resumes from <run_dir>/last.pt; writes report.json, logs, checkpoints
```
"""

from .config import Config, load_config, save_config
from .evaluate import evaluate, evaluate_checkpoint
from .loop import TrainingDiverged, train

__all__ = ["Config", "load_config", "save_config", "evaluate", "evaluate_checkpoint", "TrainingDiverged", "train"]
