"""What a speech run is built from: its datasets, their normalisation statistics and its model.

``manifest_for`` resolves a split name or manifest path, ``open_dataset`` opens a split as a
``SpeechDataset`` (feature cache, optional SpecAugment, optional first-N limit),
``feature_stats`` computes the training split's statistics once per run directory, and
``model_from_config`` builds the ``[model]`` table's Deep Speech 2 model. The training loop,
evaluation, export and the benchmarks all construct these things here, the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bsrnn.data.batching import SpeechDataset, compute_stats
from bsrnn.data.features import FeatureStats, SpecAugment
from bsrnn.models import DeepSpeech2, build_model

from .config import Config, DataConfig, ModelConfig


def manifest_for(data: DataConfig, split: str) -> Path:
    """A split name (``test``) means ``<corpus>/<split>.jsonl``; anything with a suffix or a
    slash is a manifest path already."""
    path = Path(split) if (split.endswith(".jsonl") or "/" in split) else Path(data.corpus) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} for split {split!r} does not exist; generate the corpus "
                                f"with `bsrnn data synth {data.corpus}` or set data.corpus")
    return path


def feature_cache(data: DataConfig) -> str:
    """Where the features of ``data``'s corpus are cached: ``data.cache_dir`` or ``<corpus>/features``."""
    return data.cache_dir or str(Path(data.corpus) / "features")


def open_dataset(data: DataConfig, split: str, stats: FeatureStats, *, spec_augment: bool = False,
                 limit: int = 0) -> SpeechDataset:
    ds = SpeechDataset(manifest_for(data, split), stats, cache_dir=feature_cache(data),
                       spec_augment=SpecAugment() if spec_augment else None)
    if limit and limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(limit))
        ds.lengths = ds.dataset.lengths[:limit]
    return ds


def feature_stats(cfg: Config, run_dir: Path) -> FeatureStats:
    """Normalisation statistics of the training split, computed once and kept in the run directory."""
    path = Path(run_dir) / "stats.json"
    if path.is_file():
        return FeatureStats.load(path)
    compute_stats(manifest_for(cfg.data, cfg.data.train), cache_dir=feature_cache(cfg.data)).save(path)
    return FeatureStats.load(path)  # a resumed run reads the file: use exactly what it will read


def model_from_config(m: ModelConfig) -> DeepSpeech2:
    return build_model(m.preset, rnn_type=m.rnn_type, hidden=m.hidden, layers=m.layers,
                       bidirectional=m.bidirectional, lookahead=m.lookahead, fc_dim=m.fc_dim,
                       conv_channels=m.conv_channels, subsample=m.subsample)
