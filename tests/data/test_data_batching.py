"""Cached dataset, statistics, SortaGrad bucket sampler and CTC collation."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from bsrnn.data.batching import BucketBatchSampler, SpeechDataset, collate, compute_stats
from bsrnn.data.features import FeatureStats, LogMel, SpecAugment
from bsrnn.data.manifest import write_manifest
from bsrnn.data.text import decode


@pytest.fixture
def tone_manifest(tmp_path, write_tone):
    rows = []
    for i, (sec, freq) in enumerate([(0.5, 300), (1.2, 500), (0.8, 700), (0.3, 900)]):
        write_tone(tmp_path / f"u{i}.wav", seconds=sec, freq=freq)
        rows.append({"id": f"u{i}", "path": f"u{i}.wav", "text": f"tone number {'abcd'[i]}", "duration": sec})
    return write_manifest(tmp_path / "m.jsonl", rows)


def test_items_and_caching(tone_manifest, tmp_path):
    cache = tmp_path / "cache"
    ds = SpeechDataset(tone_manifest, None, cache_dir=cache)
    assert len(ds) == 4 and ds.lengths == [51, 121, 81, 31] and ds.texts[1] == "tone number b"
    feats, target, utt = ds[1]
    assert feats.dtype == torch.float32 and feats.shape == (121, 80) and utt == "u1"
    assert target.dtype == torch.long and decode(target) == "tone number b"
    ref = LogMel()(sf.read(tmp_path / "u1.wav", dtype="float32")[0])
    assert (feats - ref).abs().max() < 0.02  # float16 cache: half-precision rounding only
    files = list(cache.glob("m.*.pt"))
    assert len(files) == 1
    for p in tmp_path.glob("u*.wav"):  # a second dataset is served from the cache alone
        p.unlink()
    again = SpeechDataset(tone_manifest, None, cache_dir=cache)
    assert torch.equal(again[1][0], feats) and again.lengths == ds.lengths
    assert again[-1][2] == "u3"
    with pytest.raises(IndexError):
        again[4]


def test_unreadable_cache_is_recomputed(tone_manifest, tmp_path):
    cache = tmp_path / "cache"
    ds = SpeechDataset(tone_manifest, None, cache_dir=cache)
    path = next(cache.glob("m.*.pt"))
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.warns(RuntimeWarning, match="feature cache unreadable .*; recomputing it"):
        again = SpeechDataset(tone_manifest, None, cache_dir=cache)
    assert torch.equal(again.raw_features, ds.raw_features)
    assert torch.load(path, weights_only=True)["lengths"].tolist() == ds.lengths  # rewritten whole
    assert [p.name for p in cache.iterdir()] == [path.name]


def test_cache_invalidated_by_manifest_or_settings(tone_manifest, tmp_path):
    cache = tmp_path / "cache"
    SpeechDataset(tone_manifest, None, cache_dir=cache)
    SpeechDataset(tone_manifest, None, cache_dir=cache, logmel=LogMel(n_mels=40))
    text = tone_manifest.read_text()
    tone_manifest.write_text(text.replace("tone number a", "tone number z"))
    ds = SpeechDataset(tone_manifest, None, cache_dir=cache)
    assert ds.texts[0] == "tone number z" and len(list(cache.glob("m.*.pt"))) == 3
    assert torch.load(next(cache.glob("m.*.pt")), weights_only=True)["features"].dtype == torch.float16


def test_stats_are_summed_in_chunks_to_the_same_values(tone_manifest, monkeypatch):
    import bsrnn.data.batching as batching

    whole = compute_stats(tone_manifest)
    raw = SpeechDataset(tone_manifest, None).raw_features.double()
    assert raw.shape[0] > 7
    monkeypatch.setattr(batching, "STATS_CHUNK", 7)  # many chunks, the last one partial
    chunked = compute_stats(tone_manifest)
    torch.testing.assert_close(chunked.mean, whole.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.std, whole.std, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.std.double(), raw.std(0, unbiased=False).clamp_min(1e-5), rtol=1e-4, atol=1e-4)
    assert chunked.count == whole.count == raw.shape[0]


def test_stats_and_normalisation(tone_manifest):
    raw = SpeechDataset(tone_manifest, None)
    stats = compute_stats(tone_manifest)
    assert stats.settings == LogMel().settings() and stats.count == sum(raw.lengths)
    allf = torch.cat([raw[i][0] for i in range(len(raw))]).double()
    assert torch.allclose(stats.mean.double(), allf.mean(0), atol=1e-4)
    ds = SpeechDataset(tone_manifest, stats)
    z = torch.cat([ds[i][0] for i in range(len(ds))])
    assert z.mean(0).abs().max() < 1e-3
    with pytest.raises(ValueError, match="recompute them with compute_stats"):
        SpeechDataset(tone_manifest, stats, logmel=LogMel(n_mels=40))
    aug = SpeechDataset(tone_manifest, stats, spec_augment=SpecAugment(freq_masks=1, freq_width=80, time_masks=0))
    masked = [(aug[1][0] == 0).all(0).sum().item() for _ in range(10)]  # a draw may pick width 0
    assert max(masked) > 0 and torch.equal(aug.raw_features, ds.raw_features)  # cache untouched


def test_bad_rows_are_skipped_with_a_counted_warning(tmp_path, write_tone):
    write_tone(tmp_path / "ok.wav")
    write_tone(tmp_path / "short.wav", seconds=0.01)
    (tmp_path / "empty.wav").write_bytes(b"")
    rows = [{"id": "ok", "path": "ok.wav", "text": "fine", "duration": 0.5},
            {"id": "short", "path": "short.wav", "text": "fine", "duration": 0.01},
            {"id": "empty", "path": "empty.wav", "text": "fine", "duration": 0},
            {"id": "upper", "path": "ok.wav", "text": "Not Normalised", "duration": 0.5},
            {"id": "blank", "path": "ok.wav", "text": "", "duration": 0.5}]
    m = write_manifest(tmp_path / "bad.jsonl", rows)
    with pytest.warns(RuntimeWarning, match=r"bad\.jsonl: skipped 4 of 5 utterances; first: .*short\.wav: audio is"):
        ds = SpeechDataset(m, None)
    assert ds.ids == ["ok"] and len(ds.skipped) == 4
    assert any("empty (0 bytes)" in s for s in ds.skipped)
    assert any("utterance upper" in s and "outside the alphabet" in s for s in ds.skipped)
    assert any("utterance blank" in s and "transcript is empty" in s for s in ds.skipped)


def test_sortagrad_epoch_then_shuffled_buckets():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 700, 103).tolist()
    s = BucketBatchSampler(lengths, 8, seed=3)
    first = list(s)
    assert [i for b in first for i in b] == sorted(range(103), key=lambda i: (lengths[i], i))  # SortaGrad
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(i for b in e1 for i in b) == list(range(103)) and len(e1) == len(s) == 13
    spans = [max(lengths[i] for i in b) / min(lengths[i] for i in b) for b in e1 if len(b) > 1]
    assert np.median(spans) < 1.3  # similar lengths within a batch ...
    means = [np.mean([lengths[i] for i in b]) for b in e1]
    assert means != sorted(means)  # ... in shuffled order
    s.set_epoch(2)
    assert list(s) != e1
    again = BucketBatchSampler(lengths, 8, seed=3)
    again.set_epoch(1)
    assert list(again) == e1  # deterministic for (seed, epoch)
    other = BucketBatchSampler(lengths, 8, seed=4)
    other.set_epoch(1)
    assert list(other) != e1
    nosort = BucketBatchSampler(lengths, 8, sortagrad=False, seed=3)
    assert list(nosort) != first


def test_resume_continues_at_the_same_batch():
    lengths = list(range(10, 60))
    s = BucketBatchSampler(lengths, 4, seed=1, drop_last=True)
    s.set_epoch(3)
    full = list(s)
    assert len(full) == 12 and all(len(b) == 4 for b in full)
    resumed = BucketBatchSampler(lengths, 4, seed=1, drop_last=True)
    resumed.load_state({"epoch": 3, "skip": 5})
    assert len(resumed) == 7 and resumed.state == {"epoch": 3, "skip": 5, "seed": 1}
    assert list(resumed) == full[5:]
    assert list(resumed) == full  # the skip applied to the resumed epoch only
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BucketBatchSampler(lengths, 0)


def test_collate_for_ctc(tone_manifest):
    ds = SpeechDataset(tone_manifest, compute_stats(tone_manifest))
    s = BucketBatchSampler(ds.lengths, 3)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=s, collate_fn=collate)
    batches = list(loader)
    x, xl, y, yl, ids = batches[0]
    assert ids == ["u3", "u0", "u2"] and xl.tolist() == [31, 51, 81]
    assert x.shape == (3, 81, 80) and x.dtype == torch.float32 and (x[0, 31:] == 0).all()
    assert torch.equal(x[1, :51], ds[0][0][:51]) and yl.tolist() == [len(ds.texts[i]) for i in (3, 0, 2)]
    assert y.shape == (int(yl.sum()),) and y.dtype == torch.long
    log_probs = torch.randn(81, 3, 29).log_softmax(-1)  # (T, N, C) as F.ctc_loss wants
    assert torch.isfinite(F.ctc_loss(log_probs, y, xl, yl))
