"""Models of the paper (docs/method.md §15): Deep Speech 2 style RNN, GRU and LSTM acoustic models."""

from .deepspeech2 import (PRESETS, ClippedReLURNN, DeepSpeech2, ModelSpec, build_model,
                          count_parameters)
from .sparse_gru import block_sparse_layout, disable_block_sparse, enable_block_sparse

__all__ = ["PRESETS", "ClippedReLURNN", "DeepSpeech2", "ModelSpec", "build_model", "count_parameters",
           "block_sparse_layout", "disable_block_sparse", "enable_block_sparse"]
