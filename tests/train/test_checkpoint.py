"""Checkpoints: atomic writes, damaged files as clear errors, exact RNG round trips."""

import os
import random

import numpy as np
import pytest
import torch

from bsrnn.train.checkpoint import (FORMAT, load_checkpoint, rng_state, save_atomic, save_checkpoint,
                                    set_rng_state)


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(64, 64, generator=g), "b": torch.zeros(3)},
            "optimizer": {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99)}]},
            "sparsity": {"masks": {"w": torch.ones(64, 64, dtype=torch.bool)}},
            "position": {"step": 7, "epoch": 1, "batch": 2}, "rng": rng_state(), "config": "{}"}


def test_round_trip(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT and torch.equal(ckpt["model"]["w"], _state()["model"]["w"])
    assert ckpt["position"] == {"step": 7, "epoch": 1, "batch": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_crash_mid_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = save_checkpoint(_state(0), tmp_path / "last.pt")
    before = path.read_bytes()
    # A lambda cannot be pickled: torch.save fails after it has started writing the file.
    with pytest.raises(Exception):
        save_atomic({**_state(1), "unpicklable": lambda: 0}, path)
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["model"]["w"], _state(0)["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="checkpoint .*last.pt is truncated, corrupt or not a bsrnn checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="truncated, corrupt"):
        load_checkpoint(path)


def test_a_flipped_byte_in_tensor_data_is_detected(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    data = bytearray(path.read_bytes())
    w = _state()["model"]["w"].numpy().tobytes()
    at = bytes(data).find(w[:64]) + 100  # inside the weight tensor's storage
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is damaged: its contents do not match the digest"):
        load_checkpoint(path)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_code_in_a_checkpoint_is_refused_and_foreign_files_are_named(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({**_state(), "format": FORMAT, "x": Payload()}, evil)
    with pytest.raises(ValueError, match="evil.pt is truncated, corrupt or not a bsrnn checkpoint"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="other.pt is not a bsrnn-checkpoint-1 file"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_states_round_trip_exactly():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state = rng_state()
    expected = (random.random(), np.random.standard_normal(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(state)
    again = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_entries_older_checkpoints_carried_load_and_are_dropped(tmp_path):
    # "scheduler" (the LR is a function of the step) and "sampler" (its place is in "position")
    # were written and never read; a checkpoint that has them loads as one without them.
    old = {**_state(), "scheduler": {"lr": 1e-3}, "sampler": {"seed": 0, "epoch": 1, "skip": 2}}
    ckpt = load_checkpoint(save_checkpoint(old, tmp_path / "old.pt"))
    assert "scheduler" not in ckpt and "sampler" not in ckpt and ckpt["position"] == old["position"]
    new = load_checkpoint(save_checkpoint(_state(), tmp_path / "new.pt"))
    assert new.keys() == ckpt.keys()
    # the digest still covers them: a damaged old entry is an error, not silently dropped
    torch.save({**old, "format": FORMAT, "sha256": "0" * 64}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="is damaged"):
        load_checkpoint(tmp_path / "bad.pt")
