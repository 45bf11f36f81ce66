"""Datasets, length-bucketed batches and CTC collation for training on a manifest.

Deep Speech 2 trains with SortaGrad (the first epoch in order of increasing length, which
stabilises early CTC training) and then with batches of similar length in random order, so
little compute is spent on padding; the paper trains its speech models the same way (§4.1).

Features are computed once per split and cached as one ``.pt`` file of plain tensors (float16;
loaded with ``weights_only=True``), keyed by the manifest's path and bytes and the feature
settings, so a changed corpus or front end can never be served stale features. Normalisation
(``FeatureStats``) and SpecAugment are applied per item, so one cache serves any statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from .audio import AudioError, load_audio
from .features import FeatureStats, LogMel, SpecAugment
from .manifest import read_manifest
from .text import encode

CACHE_VERSION = 1
STATS_CHUNK = 1 << 16  # frames per float64 chunk when computing feature statistics


def _cache_file(manifest: Path, logmel: LogMel, cache_dir: Path) -> Path:
    h = hashlib.sha256()
    h.update(str(manifest.absolute()).encode())
    h.update(manifest.read_bytes())
    h.update(json.dumps([CACHE_VERSION, logmel.settings()], sort_keys=True).encode())
    return cache_dir / f"{manifest.stem}.{h.hexdigest()[:16]}.pt"


def _compute(manifest: Path, logmel: LogMel) -> dict:
    """Features and targets of every usable row; unusable rows are reported, not raised."""
    feats, lengths, targets, ids, texts, skipped = [], [], [], [], [], []
    rows = read_manifest(manifest)
    threads = torch.get_num_threads()
    # One utterance is too small to split across threads; on a busy machine intra-op threads
    # spin against each other and made this 30x slower (12.6 s vs 0.4 s for 170 utterances).
    torch.set_num_threads(1)
    try:
        for row in rows:
            try:
                target = encode(row["text"], where=f"{manifest} utterance {row['id']}")
                f = logmel(load_audio(row["path"], logmel.sample_rate))
            except (AudioError, ValueError) as e:
                skipped.append(str(e))
                continue
            feats.append(f.half())
            lengths.append(f.shape[0])
            targets.append(torch.tensor(target, dtype=torch.long))
            ids.append(row["id"])
            texts.append(row["text"])
    finally:
        torch.set_num_threads(threads)
    n_mels = logmel.n_mels
    data = {"features": torch.cat(feats) if feats else torch.zeros(0, n_mels, dtype=torch.half),
            "lengths": torch.tensor(lengths, dtype=torch.long),
            "targets": torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long),
            "target_lengths": torch.tensor([len(t) for t in targets], dtype=torch.long),
            "ids": ids, "texts": texts, "skipped": skipped}
    return data


def _load_cache(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # unreadable for any reason: the features can always be recomputed
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        if "weights only" in reason.lower():  # torch's first line advises weights_only=False: never here
            reason = "it holds objects other than tensors and plain values, refused unread as they could run code"
        warnings.warn(f"{path}: feature cache unreadable ({type(e).__name__}: {reason}); recomputing it.",
                      RuntimeWarning, stacklevel=3)
        return None


def _save_cache(data: dict, path: Path) -> None:
    """Atomic, and safe when two runs (say, two trainings in parallel) fill the same cache:
    each writes its own temp file, and the last complete one wins."""
    with atomic_path(path, sync=False) as tmp:  # a lost cache file is recomputed
        torch.save(data, tmp)


class SpeechDataset(torch.utils.data.Dataset):
    """Items ``(features (T, n_mels) float32 normalised, target LongTensor, utt_id)``.

    Utterances whose audio cannot be read or whose text has characters outside the alphabet
    are skipped with one warning counting them (``.skipped`` holds the reasons).
    """

    def __init__(self, manifest_path: str | os.PathLike, stats: FeatureStats | None, *,
                 cache_dir: str | os.PathLike | None = None, spec_augment: SpecAugment | None = None,
                 logmel: LogMel | None = None):
        self.manifest = Path(manifest_path)
        self.logmel = logmel or LogMel()
        self.stats, self.spec_augment = stats, spec_augment
        if stats is not None and stats.settings and stats.settings != self.logmel.settings():
            raise ValueError(f"feature statistics were computed with {stats.settings} but this dataset uses "
                             f"{self.logmel.settings()}; recompute them with compute_stats.")
        cache = _cache_file(self.manifest, self.logmel, Path(cache_dir)) if cache_dir else None
        data = _load_cache(cache) if cache is not None and cache.exists() else None
        if data is None:
            data = _compute(self.manifest, self.logmel)
            if cache is not None:
                _save_cache(data, cache)
        self.raw_features = data["features"]  # (sum T, n_mels) float16, unnormalised
        self.lengths: list[int] = data["lengths"].tolist()
        self.ids: list[str] = list(data["ids"])
        self.texts: list[str] = list(data["texts"])
        self.skipped: list[str] = list(data["skipped"])
        self._targets = data["targets"]
        self._offsets = np.concatenate([[0], np.cumsum(self.lengths)]).tolist()
        self._target_offsets = np.concatenate([[0], np.cumsum(data["target_lengths"].tolist())]).tolist()
        if self.skipped:
            warnings.warn(f"{self.manifest}: skipped {len(self.skipped)} of {len(self.ids) + len(self.skipped)} "
                          f"utterances; first: {self.skipped[0]}", RuntimeWarning, stacklevel=2)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        i = range(len(self.ids))[i]  # negative indices; IndexError past the end
        f = self.raw_features[self._offsets[i]:self._offsets[i + 1]].float()
        if self.stats is not None:
            f = self.stats.normalize(f)
        if self.spec_augment is not None:
            f = self.spec_augment(f)
        return f, self._targets[self._target_offsets[i]:self._target_offsets[i + 1]].clone(), self.ids[i]


def compute_stats(dataset_or_manifest: SpeechDataset | str | os.PathLike, *,
                  cache_dir: str | os.PathLike | None = None, logmel: LogMel | None = None) -> FeatureStats:
    """Per-bin mean and std over every frame of a (training) dataset or manifest."""
    ds = dataset_or_manifest
    if not isinstance(ds, SpeechDataset):
        ds = SpeechDataset(ds, None, cache_dir=cache_dir, logmel=logmel)
    if len(ds) == 0:  # otherwise FeatureStats says "need at least 2 frames" without naming the split
        why = f"; {len(ds.skipped)} skipped, first: {ds.skipped[0]}" if ds.skipped else ""
        raise ValueError(f"{ds.manifest} has no usable utterances to compute feature statistics from{why}")
    x = ds.raw_features  # (frames, bins), fp16: summed in float64 a chunk at a time, since the whole
    total = torch.zeros(x.shape[1], dtype=torch.float64)  # split in float64 (and its square) would
    total_sq = torch.zeros_like(total)                     # take ~2 GB for the default corpus
    for start in range(0, x.shape[0], STATS_CHUNK):
        chunk = x[start: start + STATS_CHUNK].double()
        total += chunk.sum(0)
        total_sq += chunk.square().sum(0)
    return FeatureStats.from_sums(total.numpy(), total_sq.numpy(), x.shape[0], ds.logmel.settings())


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of indices: SortaGrad in epoch 0, then similar-length batches in random order.

    Deterministic for ``(seed, epoch)``. Later epochs sort by length plus ±10 % random jitter
    (so batch membership varies between epochs) before cutting batches and shuffling their
    order. ``set_epoch(e)`` selects the epoch; ``skip(n)`` makes the next iteration start at
    batch ``n`` of it, which is how a resumed run continues exactly where it stopped.
    ``len()`` is the number of batches the next iteration yields.
    """

    def __init__(self, lengths, batch_size: int, *, sortagrad: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.batch_size, self.sortagrad, self.seed, self.drop_last = batch_size, sortagrad, seed, drop_last
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, n_batches: int) -> None:
        self._skip = int(n_batches)

    @property
    def state(self) -> dict:
        return {"epoch": self.epoch, "skip": self._skip, "seed": self.seed}

    def load_state(self, state: dict) -> None:
        self.set_epoch(state["epoch"])
        self.skip(state.get("skip", 0))

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` in order (a pure function of seed, epoch and lengths)."""
        n = len(self.lengths)
        if self.sortagrad and epoch == 0:
            order = np.argsort(self.lengths, kind="stable")
            rng = None
        else:
            rng = np.random.default_rng([self.seed, epoch])
            jitter = 1.0 + rng.uniform(-0.1, 0.1, n)
            order = np.argsort(self.lengths * jitter, kind="stable")
        cuts = list(range(0, n, self.batch_size))
        batches = [order[c:c + self.batch_size].tolist() for c in cuts]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        skip, self._skip = self._skip, 0  # a skip applies to one (the resumed) epoch only
        yield from self.batches(self.epoch)[skip:]

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return max(0, full + (rest > 0 and not self.drop_last) - self._skip)


def collate(items):
    """CTC batch: (features (N, T_max, F) zero-padded, feature_lengths (N,), targets (sum U,),
    target_lengths (N,), ids) - the concatenated-targets form ``F.ctc_loss`` accepts."""
    feats, targets, ids = zip(*items)
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    padded = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1], dtype=torch.float32)
    for i, f in enumerate(feats):
        padded[i, :f.shape[0]] = f
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    return padded, lengths, torch.cat(targets).long(), target_lengths, list(ids)
