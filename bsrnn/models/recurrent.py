"""Running ``nn.RNN/GRU/LSTM`` layers over padded batches, fast on CPUs, without padding leaking.

PyTorch's usual way to keep padding out of a bidirectional RNN is a PackedSequence. On CPUs its
backward pass is slow: a training step of the GRU 3×128 speech model takes about 1.5× longer
packed than with the path here (``bsrnn bench overhead`` measures both). Here every layer runs
on the padded tensor: the forward direction over it as it is (padding follows the valid frames,
so it can never reach them) and the reverse direction forward over each utterance reversed
within its own length. The results on valid frames equal the packed module's, and so do the
gradients (tests/models).

GRUs on CPUs go further through ``GRUScan``: both directions of a layer advance together, one
batched matmul per time step, with a hand-written backward pass through time that runs a few
whole-tensor operations per step instead of recording every one for autograd (about 1.4× faster
to train than the fused ``aten::gru`` op, which on CPUs is a per-step loop of autograd ops).
Everything keeps the module's own parameters, so pruning, checkpoints and export are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import _VF, nn  # _VF: the fused RNN ops behind nn.GRU/nn.LSTM.forward


def length_mask(lengths: torch.Tensor, t_max: int) -> torch.Tensor:
    """``(N, T)`` boolean: True at frames inside each utterance."""
    return torch.arange(t_max, device=lengths.device)[None, :] < lengths[:, None]


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x (T, N, ...)`` over its first ``lengths[n]`` frames only.

    Padding stays at the end, so a backward pass over the result starts at each utterance's own
    last frame. The map is its own inverse on the valid frames.
    """
    t_max = x.shape[0]
    t = torch.arange(t_max, device=x.device)[:, None]  # (T, 1)
    idx = torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # (T, N)
    idx = idx.view(t_max, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 0, idx)


class GRUScan(torch.autograd.Function):
    """The GRU recurrence of ``D`` independent directions over padded time, zero initial state.

    Inputs: ``gi (T, D, N, 3H)`` = ``W_ih x_t + b_ih + [b_hh_r, b_hh_z, 0]`` for every step (gates
    r, z, n as in ``nn.GRU``; the recurrent bias of r and z adds to the input's before the sigmoid,
    so the caller folds it into the input projection's bias, where it costs nothing), ``u (D, H,
    3H)`` = ``W_hh`` transposed per direction, ``b_n (D, 1, H)`` = ``b_hh``'s n part, which sits
    inside the reset gate's product. Output ``h (T, D, N, H)`` with, as in ``nn.GRU``::

        r = σ(gi_r + h W_hrᵀ), z = σ(gi_z + h W_hzᵀ), n = tanh(gi_n + r ⊙ (h W_hnᵀ + b_n)),
        h' = (1 - z) ⊙ n + z ⊙ h

    The backward pass precomputes every factor that does not depend on the incoming gradient,
    so each step back is two multiplications, an addition and one batched matmul.
    """

    @staticmethod
    def forward(ctx, gi: torch.Tensor, u: torch.Tensor, b_n: torch.Tensor,
                mm_dtype: torch.dtype | None = None) -> torch.Tensor:
        t_max, d, n, h3 = gi.shape
        hid = h3 // 3
        if u.shape != (d, hid, h3) or b_n.shape != (d, 1, hid):
            raise ValueError(f"GRUScan wants u {(d, hid, h3)} and b_n {(d, 1, hid)} for gi {tuple(gi.shape)}, "
                             f"not {tuple(u.shape)} and {tuple(b_n.shape)}")
        low = mm_dtype is not None and mm_dtype != gi.dtype  # products in bf16, state in fp32
        u_mm = u.to(mm_dtype) if low else u
        hs = gi.new_empty(t_max + 1, d, n, hid)  # hs[t] is the state before step t
        hs[0].zero_()
        rz = gi.new_empty(t_max, d, n, 2 * hid)
        ns = gi.new_empty(t_max, d, n, hid)
        ghn = gi.new_empty(t_max, d, n, hid)  # W_hn h + b_hn, for the backward pass
        for t in range(t_max):
            gh = torch.bmm(hs[t].to(mm_dtype) if low else hs[t], u_mm)  # (D, N, 3H), bf16 when low
            torch.add(gi[t, ..., : 2 * hid], gh[..., : 2 * hid], out=rz[t]).sigmoid_()
            torch.add(gh[..., 2 * hid:], b_n, out=ghn[t])
            torch.addcmul(gi[t, ..., 2 * hid:], rz[t, ..., :hid], ghn[t], out=ns[t]).tanh_()
            torch.lerp(ns[t], hs[t], rz[t, ..., hid:], out=hs[t + 1])  # n + z (h - n)
        ctx.save_for_backward(u_mm, hs, rz, ns, ghn)
        ctx.mm_dtype = mm_dtype if low else None
        ctx.u_dtype = u.dtype
        return hs[1:]

    @staticmethod
    def backward(ctx, dhs: torch.Tensor):
        u, hs, rz, ns, ghn = ctx.saved_tensors
        mm = ctx.mm_dtype  # None: every product in the state's dtype
        dhs = dhs.contiguous()  # the output was permuted by the caller: strided steps are slow below
        t_max, d, n, hid = dhs.shape
        r, z = rz[..., :hid], rz[..., hid:]
        dn_pre = (1 - z) * (1 - ns * ns)  # ∂h_t/∂(n pre-activation)
        # ∂h_t/∂(gh pre-activations r, z, n) per step: (T, D, N, 3, H). For r and z the same factor is
        # ∂h_t/∂gi; for n, ∂gi_n = dn_pre and ∂gh_n = dn_pre ⊙ r.
        coef_h = torch.stack([dn_pre * ghn * r * (1 - r), (hs[:-1] - ns) * z * (1 - z), dn_pre * r], 3)
        dgh = dhs.new_empty(t_max, d, n, 3, hid)
        dh_all = dhs.new_empty(t_max, d, n, hid)  # ∂L/∂h_t, all of it, per step
        u_t = u.transpose(1, 2)  # (D, 3H, H)
        carry = dhs.new_zeros(d, n, hid)  # ∂L/∂h_t through h_{t+1}
        for t in range(t_max - 1, -1, -1):
            dh = torch.add(carry, dhs[t], out=dh_all[t])
            torch.mul(coef_h[t], dh.unsqueeze(2), out=dgh[t])
            g = dgh[t].view(d, n, 3 * hid)
            if mm is None:
                carry = torch.baddbmm(dh * z[t], g, u_t)
            else:
                carry = torch.addcmul(torch.bmm(g.to(mm), u_t), dh, z[t])  # bf16 product, fp32 sum
        flat = dgh.view(t_max, d, n, 3 * hid)
        # du[d] = Σ_t h_tᵀ dgh_t: both as (D, T·N, ·) (a copy of contiguous (N, ·) slabs) and one bmm
        hs_d = hs[:-1].transpose(0, 1).reshape(d, t_max * n, hid)
        dgh_d = flat.transpose(0, 1).reshape(d, t_max * n, 3 * hid)
        if mm is not None:  # one large product over all time steps: bf16 in, fp32 out
            hs_d, dgh_d = hs_d.to(mm), dgh_d.to(mm)
        du = torch.bmm(hs_d.transpose(1, 2), dgh_d).to(ctx.u_dtype)
        db_n = dgh[..., 2, :].sum(0).sum(1)  # (D, H); sum((0, 2)) in one call is ~50x slower on CPUs
        # dgh is done with: it becomes dgi in place (r and z parts are the same; n loses the r factor)
        torch.mul(dh_all, dn_pre, out=dgh[..., 2, :])
        return flat, du, db_n[:, None, :], None


def _gru_layer_scan(rnn: nn.GRU, k: int, x: torch.Tensor, lengths: torch.Tensor,
                    mm_dtype: torch.dtype | None = None, param=None) -> torch.Tensor:
    """Layer ``k`` of ``rnn`` over padded ``x (T, N, In)``, all directions in one ``GRUScan``.

    The input projection runs under whatever autocast is active (bf16 training makes it one bf16
    GEMM); the recurrence keeps its state in float32, with the per-step product in ``mm_dtype``.
    ``param(name)`` gives each weight (default: the module's own parameter; the block-sparse
    path's torch fallback passes masked ones).
    """
    param = param or (lambda name: getattr(rnn, name))
    sfx = ("", "_reverse")[: 2 if rnn.bidirectional else 1]
    d, hid = len(sfx), rnn.hidden_size
    t_max, n, _ = x.shape
    w_ih = torch.cat([param(f"weight_ih_l{k}{s}") for s in sfx])  # (D*3H, In)
    u = torch.stack([param(f"weight_hh_l{k}{s}").t() for s in sfx])  # (D, H, 3H)
    if rnn.bias:
        b_ih = torch.stack([param(f"bias_ih_l{k}{s}") for s in sfx])  # (D, 3H)
        b_hh = torch.stack([param(f"bias_hh_l{k}{s}") for s in sfx])
        # b_hh's r and z parts add to b_ih's before the sigmoid: one bias for the input projection,
        # so the scan needs no bias add for them (per step or as a pass over gi)
        b_in = torch.cat([b_ih[:, : 2 * hid] + b_hh[:, : 2 * hid], b_ih[:, 2 * hid:]], 1).reshape(-1)
        b_n = b_hh[:, None, 2 * hid:]  # (D, 1, H): inside r ⊙ (W_hn h + b_hn)
    else:
        b_in, b_n = None, x.new_zeros(d, 1, hid)
    gi = F.linear(x, w_ih, b_in).view(t_max, n, d, 3 * hid)  # every step's input projection, one GEMM
    # (T, D, N, 3H) in the state's dtype, one pass: the reverse direction runs forward over each
    # utterance reversed within its length
    scan_in = gi.new_empty(t_max, d, n, 3 * hid, dtype=u.dtype)
    scan_in[:, 0] = gi[:, :, 0]
    if d == 2:
        scan_in[:, 1] = reverse_within_lengths(gi[:, :, 1], lengths)
    with torch.autocast(x.device.type, enabled=False):
        y = GRUScan.apply(scan_in, u.contiguous(), b_n.contiguous(), mm_dtype)  # (T, D, N, H)
    y = y.permute(0, 2, 1, 3)  # (T, N, D, H)
    if d == 2:
        y = torch.stack([y[:, :, 0], reverse_within_lengths(y[:, :, 1], lengths)], 2)
    return y.reshape(t_max, n, d * hid)


BSR_ATTR = "_bsrnn_block_sparse"  # the attribute of an nn.GRU holding its sparse_gru.GRULayout

_VF_OPS = {"GRU": _VF.gru, "LSTM": _VF.lstm, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


def padded_recurrent(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor, *, scan: bool | None = None,
                     mm_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Run a (time-major, zero initial state) ``nn.RNN/GRU/LSTM`` over padded ``x (T, N, In)``.

    Same result on every valid frame as running it on the PackedSequence of ``x`` and
    ``lengths``; the padding frames of the output are zero. ``scan`` picks ``GRUScan`` for a GRU
    (default: on CPU tensors); otherwise each layer and direction is one fused unidirectional
    ``_VF`` call (cuDNN on GPUs) with the module's own parameters. A GRU given a block-sparse
    layout by ``sparse_gru.enable_block_sparse`` runs its block-sparse kernels instead (unless
    ``scan=False``; they compute in float32 whatever the autocast).

    Under bf16 autocast the scan's input projections run in bf16 and its per-step products in
    ``mm_dtype`` (None = float32), the state always in float32; the fused ``_VF`` path runs in
    float32 whatever the autocast (its state would otherwise be bf16). The output is float32.
    """
    if rnn.batch_first or getattr(rnn, "proj_size", 0) or rnn.dropout or rnn.mode not in _VF_OPS:
        raise ValueError(f"padded_recurrent supports time-major {', '.join(_VF_OPS)} without projection "
                         f"or dropout, not {rnn}")
    if lengths.device != x.device:
        lengths = lengths.to(x.device)
    if scan is not False and getattr(rnn, BSR_ATTR, None) is not None:  # enable_block_sparse(...) gave it a layout
        from .sparse_gru import bsr_recurrent
        return bsr_recurrent(rnn, x, lengths)
    scan = (rnn.mode == "GRU" and not x.is_cuda) if scan is None else scan
    if scan and rnn.mode != "GRU":
        raise ValueError(f"scan=True needs a GRU, not {rnn.mode}")
    op, n, dirs = _VF_OPS[rnn.mode], x.shape[1], 2 if rnn.bidirectional else 1
    for k in range(rnn.num_layers):
        if scan:
            x = _gru_layer_scan(rnn, k, x, lengths, mm_dtype)
            continue
        outs = []
        for d, sfx in enumerate(("", "_reverse")[:dirs]):
            names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if rnn.bias else ())
            weights = [getattr(rnn, f"{w}_l{k}{sfx}") for w in names]
            xi = reverse_within_lengths(x, lengths) if d else x
            h0 = x.new_zeros(1, n, rnn.hidden_size, dtype=weights[0].dtype)
            hx = (h0, h0) if rnn.mode == "LSTM" else h0
            with torch.autocast(x.device.type, enabled=False):
                y = op(xi.to(weights[0].dtype), hx, weights, rnn.bias, 1, 0.0, rnn.training, False, False)[0]  # (T, N, H)
            outs.append(reverse_within_lengths(y, lengths) if d else y)
        x = torch.cat(outs, 2) if dirs == 2 else outs[0]  # (T, N, D*H)
    # Padding frames only ever follow the valid ones, so they never reached a valid output;
    # zero them for what follows (a row convolution looks ahead). where, not a product: an
    # unbounded ReLU RNN may reach inf on padding, and inf * 0 is NaN.
    return torch.where(length_mask(lengths, x.shape[0]).t()[:, :, None], x, 0.0)
