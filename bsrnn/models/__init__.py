"""Models of the paper (PAPER.md §6): Deep Speech 2 style RNN, GRU and LSTM acoustic models."""

from .deepspeech2 import (PRESETS, ClippedReLURNN, DeepSpeech2, ModelSpec, build_model,
                          count_parameters)

__all__ = ["PRESETS", "ClippedReLURNN", "DeepSpeech2", "ModelSpec", "build_model", "count_parameters"]
