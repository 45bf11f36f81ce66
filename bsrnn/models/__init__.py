"""Models of the paper (docs/method.md §15): Deep Speech 2 style RNN, GRU and LSTM acoustic models."""

from .deepspeech2 import (PRESETS, ClippedReLURNN, DeepSpeech2, ModelSpec, build_model,
                          count_parameters)

__all__ = ["PRESETS", "ClippedReLURNN", "DeepSpeech2", "ModelSpec", "build_model", "count_parameters"]
