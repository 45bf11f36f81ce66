"""Block math: the paper's toy example, reductions, padding, gate awareness, errors."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bsrnn.sparsity.blocks import (GEOMEAN_EPS, REDUCTIONS, block_grid, block_reduce, expand, gate_rows,
                                   parse_block, tiles)


def test_paper_toy_example():
    # BSRNN Figure 1: a 4×4 matrix in 2×2 blocks; max |w| per block against a threshold.
    w = torch.tensor([[0.1, -0.9, 0.2, 0.05],
                      [0.3, 0.2, -0.1, 0.15],
                      [-0.05, 0.1, 0.7, 0.4],
                      [0.02, -0.3, 0.1, -0.6]])
    scores = block_reduce(w, (2, 2), "max")
    assert torch.equal(scores, torch.tensor([[0.9, 0.2], [0.3, 0.7]]))
    keep = scores > 0.25
    assert torch.equal(keep, torch.tensor([[True, False], [True, True]]))
    mask = expand(keep, (2, 2), w.shape)
    assert torch.equal(mask, torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool))


def test_reductions_hand_computed():
    w = torch.tensor([[1.0, -2.0], [0.0, 4.0]])
    expected = {"max": 4.0, "mean": 7 / 4, "rms": math.sqrt(21 / 4), "l2": math.sqrt(21.0),
                "median": 1.0, "geomean": math.exp(sum(math.log(v + GEOMEAN_EPS) for v in (1, 2, 0, 4)) / 4) - GEOMEAN_EPS}
    for how, value in expected.items():
        assert block_reduce(w, (2, 2), how).item() == pytest.approx(value, rel=1e-6), how


def test_geomean_is_finite_with_zeros_and_zero_for_empty_block():
    w = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.0]])
    g = block_reduce(w, (2, 2), "geomean")
    assert torch.isfinite(g).all()
    assert g[0, 0].item() == 0.0 and 0 < g[0, 1].item() < 0.5
    nz = torch.tensor([[2.0, 8.0]])
    assert block_reduce(nz, (1, 2), "geomean").item() == pytest.approx(4.0, rel=1e-6)


def test_block_that_does_not_tile_names_the_tensor():
    with pytest.raises(ValueError, match=r"rnn.weight_hh_l0: block 12×2 does not tile"):
        block_reduce(torch.zeros(1760, 1760), (12, 2), name="rnn.weight_hh_l0")


def test_padding_scores_partial_blocks_over_real_elements():
    w = torch.arange(1.0, 16.0).reshape(3, 5)  # 3×5 with 2×2 blocks -> 2×3 grid
    for how in REDUCTIONS:
        s = block_reduce(w, (2, 2), how, pad=True)
        assert s.shape == (2, 3)
    assert block_reduce(w, (2, 2), "mean", pad=True)[1, 2].item() == 15.0  # the lone corner element
    assert block_reduce(w, (2, 2), "max", pad=True)[1, 2].item() == 15.0
    assert expand(torch.ones(2, 3, dtype=torch.bool), (2, 2), (3, 5)).shape == (3, 5)


def test_gate_aware_tiling_never_straddles_gates():
    # 3 gates of 6 rows with 4-row blocks: the stacked 18 rows would tile as 4+4+4+4+2, straddling
    # gate borders; gate by gate each gate gets 2 blocks (one partial).
    w = torch.zeros(18, 8)
    w[6:12] = 1.0  # only the middle gate is nonzero
    s = block_reduce(w, (4, 4), "max", gates=3, pad=True)
    assert s.shape == (6, 2)
    assert torch.equal(s[:, 0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="each of its 3 gates of 6×8"):
        block_grid((18, 8), (4, 4), gates=3)
    assert gate_rows(18, 3)[1] == slice(6, 12)


def test_parse_block_forms_and_errors():
    assert parse_block(4) == (4, 4) and parse_block("12x2") == (12, 2) and parse_block([8, 8]) == (8, 8)
    for bad in ("4by4", (0, 4), (1, 2, 3)):
        with pytest.raises(ValueError):
            parse_block(bad)


def test_reduce_is_pure_and_tiles_are_differentiable():
    w = torch.randn(8, 8, requires_grad=True)
    before = w.detach().clone()
    block_reduce(w, (4, 4), "rms")
    assert torch.equal(w.detach(), before)
    tiles(w, (4, 4)).square().sum().backward()
    assert torch.allclose(w.grad, 2 * w.detach())


@settings(max_examples=60, deadline=None)
@given(bh=st.integers(1, 5), bw=st.integers(1, 5), nr=st.integers(1, 4), nc=st.integers(1, 4),
       gates=st.sampled_from([1, 3, 4]), seed=st.integers(0, 2**16))
def test_expand_inverts_reduce_of_block_constant_matrix(bh, bw, nr, nc, gates, seed):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(gates * nr, nc, generator=g)
    shape = (gates * nr * bh, nc * bw)
    w = expand(blocks, (bh, bw), shape, gates)
    for how in ("max", "mean", "median", "rms"):
        assert torch.allclose(block_reduce(w, (bh, bw), how, gates), blocks, atol=1e-6)
    scores = block_reduce(torch.randn(shape, generator=g), (bh, bw), "max", gates)
    assert (scores >= block_reduce(torch.randn(shape, generator=g).mul(0), (bh, bw), "mean", gates)).all()
