"""Property-based tests (hypothesis) for what tests/sparsity and tests/inference do not yet cover.

Already there: block reduce/expand round trip on random gate-aware layouts
(tests/sparsity/test_blocks.py::test_expand_inverts_reduce_of_block_constant_matrix) and the BSR
export round trip (tests/inference/test_export.py::test_round_trip_property). Added here: the
schedule's threshold is a pure, non-decreasing step function of the step that is frozen after
``end_itr``; block reductions respect their order (max >= rms >= mean of |w|) and are pure; masks
only shrink, keep exactly the expanded blocks, zero exactly the pruned weights (and optimizer
state), and round-trip through their state dict; a checkpoint's digest changes with any one value.
"""

import torch
from hypothesis import given, settings, strategies as st

from bsrnn.sparsity import NarangSchedule
from bsrnn.sparsity.blocks import block_reduce, expand
from bsrnn.sparsity.masks import MaskSet
from bsrnn.sparsity.targets import select_targets
from bsrnn.train.checkpoint import digest

FAST = settings(max_examples=40, deadline=None)


@st.composite
def schedules(draw):
    start = draw(st.integers(0, 50))
    ramp = draw(st.integers(start + 1, start + 60))
    end = draw(st.integers(ramp, ramp + 60))
    return NarangSchedule(start_itr=start, ramp_itr=ramp, end_itr=end,
                          start_slope=draw(st.floats(0, 1, allow_subnormal=False)), ramp_slope=draw(st.floats(0, 1, allow_subnormal=False)),
                          freq=draw(st.integers(1, 12)))


@FAST
@given(schedules())
def test_threshold_is_a_non_decreasing_step_function_frozen_at_end(s):
    values = [s.threshold(step) for step in range(s.end_itr + 30)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values == [s.threshold(step) for step in range(s.end_itr + 30)]  # pure: same answer twice
    # It changes only at update steps, and never once frozen.
    for step in range(1, len(values)):
        if values[step] != values[step - 1]:
            assert s.is_update(step) and not s.frozen(step)
    assert all(not s.is_update(step) for step in range(s.end_itr, s.end_itr + 30))
    assert all(v == values[s.end_itr] for v in values[s.end_itr:])


@FAST
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 3),
       st.integers(0, 2**31 - 1))
def test_block_scores_are_ordered_and_pure(bh, bw, nr, nc, gates, seed):
    w = torch.randn(gates * nr * bh, nc * bw, generator=torch.Generator().manual_seed(seed))
    before = w.clone()
    mx, rms, mean = (block_reduce(w, (bh, bw), how, gates) for how in ("max", "rms", "mean"))
    assert torch.equal(w, before)  # never mutates its input
    assert mx.shape == (gates * nr, nc)
    assert (mx >= rms - 1e-6).all() and (rms >= mean - 1e-6).all() and (mean >= 0).all()


class Layer(torch.nn.Module):
    def __init__(self, rows: int, cols: int):
        super().__init__()
        self.gru = torch.nn.GRU(cols, rows)  # weight_hh is (3 rows) × rows: gate-aware targets
        self.fc = torch.nn.Linear(cols, rows)


@FAST
@given(st.integers(0, 2**31 - 1), st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=1, max_size=5))
def test_masks_only_shrink_and_zero_exactly_the_pruned_weights(seed, keep_fractions):
    torch.manual_seed(seed)
    model = Layer(8, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = sum(p.square().sum() for p in model.parameters())
    loss.backward()
    optimizer.step()  # momentum buffers exist, so apply_ must clear them too
    targets = select_targets(model, (2, 2))
    masks = MaskSet(model, targets)
    g = torch.Generator().manual_seed(seed)
    for fraction in keep_fractions:
        previous = masks.state_dict()
        for t in targets:
            masks.prune_(t.name, torch.rand(t.grid, generator=g) < fraction)
        masks.apply_(optimizer)
        for t in targets:
            now = masks.block_masks[t.name]
            assert not (now & ~previous[t.name]).any(), t.name  # only shrinks
            keep = expand(now, t.block, t.shape, t.gates)
            assert torch.equal(keep, masks.keep(t.name))
            p = masks.params[t.name]
            assert (p[~keep] == 0).all() and (optimizer.state[p]["momentum_buffer"][~keep] == 0).all()
    clone = MaskSet(model, targets)
    clone.load_state_dict(masks.state_dict())
    assert all(torch.equal(clone.block_masks[n], masks.block_masks[n]) for n in masks.block_masks)


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(0, 11))
def test_checkpoint_digest_sees_any_single_changed_value(seed, at):
    g = torch.Generator().manual_seed(seed)
    state = {"model": {"w": torch.randn(3, 4, generator=g)}, "position": {"step": 3}}
    changed = {"model": {"w": state["model"]["w"].clone()}, "position": {"step": 3}}
    changed["model"]["w"].view(-1)[at] += 1.0
    assert digest(state) != digest(changed)
    assert digest(state) == digest({"position": {"step": 3}, "model": {"w": state["model"]["w"].clone()}})
