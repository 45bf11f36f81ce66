"""Fixtures of the inference tests: small DeepSpeech2 models exported as whole speech models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bsrnn.data.features import LogMel
from bsrnn.data.text import ALPHABET
from bsrnn.inference import export_model, save
from bsrnn.inference.speech import speech_header
from bsrnn.models import build_model
from bsrnn.models.deepspeech2 import CLIP


def random_model(preset: str, seed: int = 0, keep: float = 0.4, **overrides):
    """A randomly initialised model in eval mode whose matrices are 4×4-block-pruned, with
    non-trivial BatchNorm statistics and a sharp output layer (so arg-max decisions are not ties)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(preset, **overrides).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 2 and n.startswith("rnn.") and p.shape[0] % 4 == 0 and p.shape[1] % 4 == 0:
                r, c = p.shape
                p.mul_((torch.rand(r // 4, c // 4, generator=g) < keep).repeat_interleave(4, 0).repeat_interleave(4, 1))
        for norm in model.conv.norms:
            norm.running_mean.uniform_(-0.5, 0.5, generator=g)
            norm.running_var.uniform_(0.5, 2.0, generator=g)
            norm.weight.uniform_(0.5, 1.5, generator=g)
            norm.bias.uniform_(-0.2, 0.2, generator=g)
        model.output.weight.mul_(40.0)
    return model


def exported(model, *, mean=-6.0, std=3.0):
    """The model exported (in memory) with its speech section; statistics are given constants."""
    exp = export_model(model, (4, 4), exclude=["output.*"])
    n = model.spec.n_mels
    exp.speech = speech_header(dataclasses.asdict(model.spec), model.conv.LAYERS, clip=CLIP,
                               bn_eps=[m.eps for m in model.conv.norms], features=LogMel().settings(),
                               mean=[mean] * n, std=[std] * n, count=1000, alphabet=ALPHABET)
    return exp


def saved(model, path):
    return save(exported(model), path)


@pytest.fixture
def speech():
    """``speech.random_model(preset, **kw)``, ``speech.exported(model)``, ``speech.saved(model, path)``
    (a factory fixture: test modules cannot import a conftest safely when several exist)."""
    from types import SimpleNamespace

    return SimpleNamespace(random_model=random_model, exported=exported, saved=saved)
