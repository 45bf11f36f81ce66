"""Block-sparse GRU training kernels (bsrnn.models.sparse_gru) against the dense-with-zeros path."""

import copy
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

from bsrnn.models import _bsr_train_lib, build_model
from bsrnn.models import sparse_gru as sg
from bsrnn.models.recurrent import padded_recurrent
from bsrnn.sparsity import MaskSet, expand, select_targets

# Without a C++ compiler the same API runs the torch fallback, and the equivalence tests test that;
# only the tests of the kernels themselves need them.
needs_kernels = pytest.mark.skipif(not sg.kernels_available(), reason="no C++ compiler: the kernels are not built")


def masked_gru(hidden, inp, layers, bidirectional, block, *, pad=False, density=0.5, bias=True, seed=0,
               dtype=torch.float32):
    """A GRU with random block masks (gate-aware, as bsrnn.sparsity lays them out) applied to it."""
    torch.manual_seed(seed)
    rnn = torch.nn.GRU(inp, hidden, layers, bidirectional=bidirectional, bias=bias).to(dtype)
    masks = MaskSet(rnn, select_targets(rnn, block, pad=pad))
    gen = torch.Generator().manual_seed(seed + 1)
    for name, m in masks.block_masks.items():
        masks.set_(name, torch.rand(m.shape, generator=gen) < density)
    masks.apply_()
    return rnn, masks


def run(rnn, x, lengths, seed=5):
    """Outputs, and gradients of a fixed random projection of them for x and every parameter."""
    rnn.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = padded_recurrent(rnn, x, lengths)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    (y * w).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in rnn.named_parameters()}


def assert_matches_dense(rnn, masks, x, lengths, atol=2e-5):
    """The BSR path equals GRUScan on the dense weights with zeros: outputs, dx, and every
    parameter gradient at kept weights; at pruned weights the gradient is exactly zero."""
    y0, dx0, g0 = run(rnn, x, lengths)
    assert sg.enable_block_sparse(rnn, masks.block_masks, next(iter(masks.targets.values())).block) == [""]
    try:
        y1, dx1, g1 = run(rnn, x, lengths)
    finally:
        sg.disable_block_sparse(rnn)
    torch.testing.assert_close(y1, y0, atol=atol, rtol=1e-4)
    torch.testing.assert_close(dx1, dx0, atol=atol, rtol=1e-4)
    for name, g in g1.items():
        if name in masks.block_masks:
            keep = masks.keep(name)
            assert not g[~keep].any(), f"{name}: nonzero gradient at a pruned weight"
            torch.testing.assert_close(g, g0[name] * keep, atol=atol, rtol=1e-4, msg=name)
        else:
            torch.testing.assert_close(g, g0[name], atol=atol, rtol=1e-4, msg=name)


CASES = [  # hidden, input, layers, bidirectional, block, pad, batch
    (12, 8, 1, True, (1, 1), False, 3),
    (12, 8, 2, False, (2, 2), False, 1),
    (40, 20, 3, True, (4, 4), False, 24),
    (40, 16, 2, True, (8, 8), False, 3),
    (40, 16, 1, False, (4, 8), False, 24),
    (128, 32, 2, True, (4, 4), False, 3),
    (12, 10, 2, True, (8, 8), True, 3),  # partial edge blocks: runs as 4x2 blocks, the generic kernel
    (12, 6, 1, True, (3, 2), False, 5),  # no compiled specialisation: the generic kernel
    (32, 16, 1, True, (16, 16), False, 2),  # runs as 4x4 blocks
]


@pytest.mark.parametrize("hidden,inp,layers,bidirectional,block,pad,batch", CASES)
def test_bsr_path_equals_the_dense_path_with_zeros(hidden, inp, layers, bidirectional, block, pad, batch):
    rnn, masks = masked_gru(hidden, inp, layers, bidirectional, block, pad=pad)
    t = 7
    lengths = torch.tensor([t, 1, 5, 3, t - 1, 2][:batch] + [4] * max(0, batch - 6))
    x = torch.randn(t, batch, inp)
    assert_matches_dense(rnn, masks, x, lengths)


@pytest.mark.parametrize("t,batch,lengths,block", [(1, 3, [1, 1, 0], (4, 4)), (3, 2, [0, 0], (4, 4)),
                                                    (4, 33, None, (4, 4)), (3, 70, None, (8, 8)), (3, 17, None, (2, 2))])
def test_bsr_path_at_edge_shapes(t, batch, lengths, block):
    """One frame, empty utterances, batches that pad to odd lane counts (40, 72, 24 lanes)."""
    rnn, masks = masked_gru(16, 8, 2, True, block)
    lengths = torch.tensor(lengths) if lengths else torch.randint(0, t + 1, (batch,))
    assert_matches_dense(rnn, masks, torch.randn(t, batch, 8), lengths)


def test_bsr_path_without_biases_and_with_a_fully_pruned_matrix():
    rnn, masks = masked_gru(16, 8, 2, True, (4, 4), bias=False)
    masks.set_("weight_hh_l1_reverse", torch.zeros_like(masks.block_masks["weight_hh_l1_reverse"]))
    masks.apply_()
    assert_matches_dense(rnn, masks, torch.randn(6, 3, 8), torch.tensor([6, 2, 4]))


def test_the_masks_define_the_weights_even_where_the_dense_parameter_is_nonzero():
    rnn, masks = masked_gru(16, 8, 1, True, (4, 4))
    x, lengths = torch.randn(5, 2, 8), torch.tensor([5, 3])
    ref = padded_recurrent(rnn, x, lengths).detach()
    with torch.no_grad():
        for name in masks.block_masks:
            p = getattr(rnn, name)
            p.add_(torch.randn_like(p) * ~masks.keep(name))  # garbage at pruned positions
    sg.enable_block_sparse(rnn, masks.block_masks, (4, 4))
    torch.testing.assert_close(padded_recurrent(rnn, x, lengths), ref, atol=2e-6, rtol=1e-5)
    assert not torch.allclose(padded_recurrent(rnn, x, lengths, scan=False), ref, atol=1e-3)  # scan=False: dense


@needs_kernels
def test_bsr_layer_passes_gradcheck_in_float64():
    """The f64 build of the C++ kernels (their generic code path) against finite differences."""
    rnn, masks = masked_gru(4, 6, 1, True, (2, 2), dtype=torch.float64, seed=3)
    layout = sg.pack_gru(rnn, masks.block_masks, (2, 2))
    x = torch.randn(4, 6, 8, dtype=torch.float64)
    x[:, :, 3:] = 0  # padding lanes
    lens = torch.tensor([4, 2, 3, 0, 0, 0, 0, 0], dtype=torch.int32)
    params = [p.detach().clone().requires_grad_(True) for p in sg._layer_params(rnn, 0)]
    fn = lambda x, *ps: sg.BsrGRULayer.apply(x, lens, layout.layers[0], True, *ps)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), *params))


def test_padded_recurrent_on_the_bsr_path_passes_gradcheck_in_float64():
    rnn, masks = masked_gru(4, 6, 2, True, (2, 2), dtype=torch.float64, seed=4)
    sg.enable_block_sparse(rnn, masks.block_masks, (2, 2))
    lengths = torch.tensor([5, 2, 4])
    fn = lambda x, *ps: padded_recurrent(rnn, x, lengths)  # noqa: E731  (ps are rnn's own parameters)
    x = torch.randn(5, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, *rnn.parameters()))


def train(model, masks, steps, *, bsr, remask_at=None):
    """A few Adam steps of CTC training on fixed random data; on the dense path masks are applied
    after each step (as the training loop does), on the BSR path they are not needed."""
    torch.manual_seed(11)
    feats, lengths = torch.randn(3, 30, 80), torch.tensor([30, 21, 26])
    targets, target_lengths = torch.randint(1, 29, (3, 6)), torch.tensor([6, 4, 5])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        if step == remask_at:  # a RigL/SET-style mask change: new masks, regrown weights start at zero
            gen = torch.Generator().manual_seed(99)
            for name, m in masks.block_masks.items():
                masks.set_(name, torch.rand(m.shape, generator=gen) < 0.5)
            masks.apply_(opt)
        if bsr:
            sg.enable_block_sparse(model, masks.block_masks, (4, 4))
        log_probs, out_lengths = model(feats, lengths)
        loss = F.ctc_loss(log_probs, targets, out_lengths, target_lengths, zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not bsr:
            masks.apply_(opt)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_deepspeech2_trains_to_the_same_weights_on_the_bsr_path():
    torch.manual_seed(0)
    dense = build_model(None, rnn_type="gru", hidden=16, layers=2, conv_channels=4)
    sparse = copy.deepcopy(dense)
    masks_d = MaskSet(dense, select_targets(dense, (4, 4), include=["rnn.weight_*"]))
    masks_s = MaskSet(sparse, list(masks_d.targets.values()))
    gen = torch.Generator().manual_seed(1)
    for name, m in masks_d.block_masks.items():
        keep = torch.rand(m.shape, generator=gen) < 0.3
        masks_d.set_(name, keep)
        masks_s.set_(name, keep)
    masks_d.apply_()
    masks_s.apply_()
    w_dense = train(dense, masks_d, 4, bsr=False, remask_at=2)
    w_sparse = train(sparse, masks_s, 4, bsr=True, remask_at=2)
    for name, w in w_dense.items():
        torch.testing.assert_close(w_sparse[name], w, atol=2e-5, rtol=1e-4, msg=name)
    for name in masks_s.block_masks:  # pruned weights stayed exactly zero without any masking step
        assert not w_sparse[name][~masks_s.keep(name)].any()


THREADS_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_sparse_gru import masked_gru, run
    from bsrnn.models import sparse_gru as sg
    torch.set_num_threads(2)
    rnn, masks = masked_gru(24, 8, 2, True, (4, 4), seed=7)
    sg.enable_block_sparse(rnn, masks.block_masks, (4, 4))
    torch.manual_seed(8)
    x, lengths = torch.randn(9, 5, 8), torch.tensor([9, 3, 7, 1, 8])
    torch.save(run(rnn, x, lengths), sys.argv[1])
""")


@needs_kernels
def test_a_team_smaller_than_requested_gives_the_same_result(tmp_path):
    """OMP_THREAD_LIMIT=1 with torch.set_num_threads(2): the kernels split work by the team they
    got, so results are bitwise those of a two-thread run (each output is one thread's sum)."""
    script = tmp_path / "run.py"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script.write_text(THREADS_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "OMP_THREAD_LIMIT": "1", "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, str(script), str(tmp_path / "limited.pt")], check=True, env=env, timeout=300)
    limited = torch.load(tmp_path / "limited.pt")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rnn, masks = masked_gru(24, 8, 2, True, (4, 4), seed=7)
        sg.enable_block_sparse(rnn, masks.block_masks, (4, 4))
        torch.manual_seed(8)
        x, lengths = torch.randn(9, 5, 8), torch.tensor([9, 3, 7, 1, 8])
        here = run(rnn, x, lengths)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(limited[0], here[0]) and torch.equal(limited[1], here[1])
    for name, g in here[2].items():
        assert torch.equal(limited[2][name], g), name


def test_enable_repacks_only_changed_masks_and_disable_removes_layouts():
    model = build_model(None, rnn_type="gru", hidden=8, layers=2, conv_channels=4)
    masks = MaskSet(model, select_targets(model, (4, 4), exclude=["output.*"]))
    assert sg.enable_block_sparse(model, masks.block_masks, (4, 4)) == ["rnn"]  # other masks are ignored
    assert sg.block_sparse_layout(model.rnn) is not None
    assert sg.enable_block_sparse(model, masks.block_masks, (4, 4)) == []  # unchanged: kept
    masks.set_("rnn.weight_hh_l1", torch.zeros_like(masks.block_masks["rnn.weight_hh_l1"]))
    assert sg.enable_block_sparse(model, masks.block_masks, (4, 4)) == ["rnn"]
    assert sg.block_sparse_layout(model.rnn).layers[1].hh.part_ranges[0] == (0, 0)
    assert sg.disable_block_sparse(model) == ["rnn"]
    assert sg.block_sparse_layout(model.rnn) is None
    assert sg.enable_block_sparse(torch.nn.Sequential(torch.nn.LSTM(4, 4)), {"0.weight_hh_l0": torch.ones(4, 1)}) == []


def test_bad_masks_and_inputs_are_refused_with_a_clear_message():
    rnn, masks = masked_gru(8, 8, 1, False, (4, 4))
    with pytest.raises(ValueError, match="weight_hh_l0 has shape"):
        sg.enable_block_sparse(rnn, {"weight_hh_l0": torch.ones(5, 2, dtype=torch.bool)}, (4, 4))
    with pytest.raises(ValueError, match="nn.GRU"):
        sg.pack_gru(torch.nn.LSTM(4, 4), {}, (4, 4))
    with pytest.raises(ValueError, match="dropout"):
        sg.pack_gru(torch.nn.GRU(4, 4, 2, dropout=0.5), {}, (4, 4))
    sg.enable_block_sparse(rnn, masks.block_masks, (4, 4))
    with pytest.raises(ValueError, match="lengths"):
        padded_recurrent(rnn, torch.randn(3, 2, 8), torch.tensor([4, 1]))
    with pytest.raises(ValueError, match="expected input"):
        padded_recurrent(rnn, torch.randn(3, 2, 7), torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="float32 or float64"):
        padded_recurrent(rnn.half(), torch.randn(3, 2, 8).half(), torch.tensor([3, 1]))


def test_kernel_block_runs_a_finer_exact_tiling_where_needed():
    assert sg.kernel_block((4, 4), (3 * 64, 32)) == (4, 4)
    assert sg.kernel_block((16, 16), (3 * 64, 32)) == (4, 4)  # no specialisation: 4x4 tiles of the same mask
    assert sg.kernel_block((8, 8), (3 * 12, 10)) == (4, 2)  # partial edge blocks
    assert sg.kernel_block((3, 2), (3 * 12, 6)) == (3, 2)


@needs_kernels
def test_torch_fallback_gives_the_same_results(monkeypatch):
    rnn, masks = masked_gru(16, 8, 2, True, (4, 4))
    x, lengths = torch.randn(6, 3, 8), torch.tensor([6, 2, 5])
    sg.enable_block_sparse(rnn, masks.block_masks, (4, 4))
    y1, dx1, g1 = run(rnn, x, lengths)
    monkeypatch.setattr(_bsr_train_lib, "_LIB", [None])
    assert not sg.kernels_available()
    y0, dx0, g0 = run(rnn, x, lengths)
    torch.testing.assert_close(y1, y0, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(dx1, dx0, atol=2e-5, rtol=1e-4)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, atol=2e-5, rtol=1e-4, msg=name)
        if name in masks.block_masks:
            assert not g[~masks.keep(name)].any()


def test_loader_falls_back_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("BSRNN_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _bsr_train_lib._build() is None
    assert any("torch implementation" in str(w.message) for w in caught)
    monkeypatch.setenv("BSRNN_TRAIN_KERNEL", "torch")
    assert _bsr_train_lib._build() is None


def test_expand_masks_used_by_the_tests_match_the_kernels_tiling():
    """The gate-aware layout: block row i of gate g covers rows g*H + i*bh of the stacked matrix."""
    bm = torch.zeros(3 * 2, 2, dtype=torch.bool)
    bm[2 + 1, 0] = True  # gate z (g = 1), second block row, first block column
    keep = expand(bm, (4, 4), (3 * 8, 8), 3)
    assert keep.nonzero()[:, 0].unique().tolist() == [12, 13, 14, 15]
    assert sg._kernel_mask(bm, (4, 4), (24, 8), (2, 2), "w").nonzero().tolist() == [[6, 0], [6, 1], [7, 0], [7, 1]]
