"""Test-wide settings: one intra-op thread (small tensors, shared CI cores), deterministic seeds."""

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
