"""Evaluation: greedy CTC decoding, CER/WER on any split or manifest, and the final run report.

The paper reports each model's CER with its number of nonzero parameters and its sparsity
against the dense model of the same width (docs/method.md §15, §17); ``final_report`` gathers
exactly those, plus the per-layer sparsity table of the sparsity core (the loop writes them as
JSON).

What is evaluated is built in ``build.py`` (datasets, model); ``manifest_for``, ``open_dataset``
and ``model_from_config`` stay importable from here, where they once lived, and ``write_json``
is ``bsrnn.atomic.write_json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bsrnn.atomic import write_json  # noqa: F401 (this module's name for it, used by callers)
from bsrnn.data.batching import collate
from bsrnn.data.features import FeatureStats
from bsrnn.data.text import decode
from bsrnn.models import DeepSpeech2, count_parameters

from .build import manifest_for, model_from_config, open_dataset  # noqa: F401 (manifest_for: old import name)
from .checkpoint import load_checkpoint
from .config import Config, config_from_dict
from .metrics import error_rates, greedy_decode


@torch.no_grad()
def evaluate(model: DeepSpeech2, dataset, batch_size: int = 32, examples: int = 3, decoder=None) -> dict:
    """CTC loss, CER and WER (percent) of ``model`` on ``dataset``, decoding greedily, or with
    ``decoder`` (a function of one utterance's ``(T, C)`` log-probabilities, e.g.
    ``bsrnn.decode.make_decoder("beam", ...)``; ``decode_seconds`` then says what it cost).

    Batches are taken in length order so padding (and time) stay small; the result does not
    depend on the order because padding never reaches an utterance's output.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(dataset)), key=lambda i: int(dataset.lengths[i]))
    refs, hyps, total_loss, n_chars, decode_seconds = [], [], 0.0, 0, 0.0
    for start in range(0, len(order), batch_size):
        feats, flens, targets, tlens, _ = collate([dataset[i] for i in order[start:start + batch_size]])
        log_probs, out_lens = model(feats, flens)
        loss = F.ctc_loss(log_probs, targets, out_lens, tlens, zero_infinity=True, reduction="sum")
        total_loss += float(loss)
        n_chars += int(tlens.sum())
        started = time.perf_counter()
        if decoder is None:
            hyps += greedy_decode(log_probs, out_lens)
        else:
            hyps += [decoder(log_probs[: int(n), i]) for i, n in enumerate(out_lens.tolist())]
        decode_seconds += time.perf_counter() - started
        refs += [decode(t) for t in torch.split(targets, tlens.tolist())]
    model.train(was_training)
    rates = error_rates(refs, hyps)
    return {"loss": total_loss / max(len(refs), 1), "loss_per_char": total_loss / max(n_chars, 1),
            **rates, "utterances": len(refs), "decode_seconds": decode_seconds,
            "examples": [{"ref": r, "hyp": h} for r, h in zip(refs[:examples], hyps[:examples])]}


def final_report(cfg: Config, model: DeepSpeech2, method, stats: FeatureStats, splits: list[str],
                 extra: dict | None = None) -> dict:
    """Parameters, nonzero parameters, per-layer sparsity and CER/WER on each split."""
    params, nonzero = count_parameters(model)
    sparsity_report = method.report()
    report = {"run_dir": cfg.train.run_dir, "model": cfg.model.preset, "spec": dataclasses.asdict(model.spec) if hasattr(model, "spec") else {},
              "algorithm": cfg.sparsity.method, "block": list(cfg.sparsity.block),
              "params": params, "nonzero_params": nonzero, "sparsity": 1.0 - nonzero / params,
              "sparsity_layers": sparsity_report.to_dict(), "splits": {}, **(extra or {})}
    for split in splits:
        result = evaluate(model, open_dataset(cfg.data, split, stats))
        report["splits"][split] = result
    return report


def format_report(report: dict) -> str:
    lines = [f"run {report['run_dir']}: model {report['model']}, algorithm {report['algorithm']}",
             f"parameters {report['params']:,}, nonzero {report['nonzero_params']:,}, "
             f"sparsity {100 * report['sparsity']:.1f}%"]
    for split, r in report["splits"].items():
        lines.append(f"  {split:<20} CER {r['cer']:6.2f}%   WER {r['wer']:6.2f}%   ({r['utterances']} utts)")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str | Path, splits: list[str], *, corpus: str | None = None,
                        decoder=None) -> dict:
    """``bsrnn eval``: rebuild the model of a checkpoint and score it on splits or manifests
    (``decoder``: as in ``evaluate``; None = greedy)."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind") == "lm":
        raise ValueError(f"checkpoint {checkpoint} is a language-model checkpoint; its report.json has its "
                         "valid/test quality, and bsrnn lm-sample samples from it")
    cfg = config_from_dict(json.loads(ckpt["config"]))
    if corpus:
        cfg.data.corpus = corpus
    stats_path = Path(checkpoint).parent / "stats.json"
    if not stats_path.is_file():
        raise FileNotFoundError(f"feature statistics {stats_path} are missing; they are written beside "
                                "the checkpoints by bsrnn train")
    stats = FeatureStats.load(stats_path)
    model = model_from_config(cfg.model)
    model.load_state_dict(ckpt["model"])
    params, nonzero = count_parameters(model)
    out = {"checkpoint": str(checkpoint), "params": params, "nonzero_params": nonzero, "splits": {}}
    for split in splits:
        out["splits"][split] = evaluate(model, open_dataset(cfg.data, split, stats), decoder=decoder)
    return out
