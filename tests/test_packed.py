"""PackedSequence input, as nn.GRU takes it: every sequence's outputs, h_n and gradients equal
running it alone; padding gets no gradient."""

from __future__ import annotations

import pytest
import torch
from _testing import TOL
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from esgp_sparse import ESGP

LENGTHS = [5, 9, 2, 9, 6]  # unsorted, with a tie


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-way", "bidirectional"])
@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "time-major"])
def test_every_sequence_equals_running_it_alone(batch_first, path, bidirectional):
    torch.manual_seed(0)
    model = ESGP(
        3,
        12,
        num_layers=2,
        sparsity=0.3,
        batch_first=batch_first,
        path=path,
        bidirectional=bidirectional,
        seed=5,
        dtype=torch.float64,
    )
    states = 4 if bidirectional else 2
    batch, steps = len(LENGTHS), max(LENGTHS)
    padded = torch.randn(batch, steps, 3, dtype=torch.float64)
    for i, length in enumerate(LENGTHS):
        padded[i, length:] = float("nan")  # padding must never be read
    h_0 = torch.randn(states, batch, 12, dtype=torch.float64, requires_grad=True)
    x = padded.clone().requires_grad_(True)
    source = x if batch_first else x.transpose(0, 1)
    packed = pack_padded_sequence(source, torch.tensor(LENGTHS), batch_first=batch_first, enforce_sorted=False)
    out, h_n = model(packed, h_0)
    unpacked, lengths = pad_packed_sequence(out, batch_first=True)
    assert lengths.tolist() == LENGTHS and h_n.shape == (states, batch, 12)
    assert unpacked.shape == (batch, steps, 12 * (2 if bidirectional else 1))
    weight = torch.randn_like(unpacked)
    loss = sum((unpacked[i, :length] * weight[i, :length]).sum() for i, length in enumerate(LENGTHS))
    loss = loss + h_n.square().sum()
    grads = torch.autograd.grad(loss, [x, h_0, *model.parameters()])
    assert bool(torch.isfinite(grads[0]).all())
    for i, length in enumerate(LENGTHS):
        assert torch.equal(grads[0][i, length:], torch.zeros_like(grads[0][i, length:]))  # padding: no gradient
    alone_grads = [torch.zeros_like(g) for g in grads]
    for i, length in enumerate(LENGTHS):
        xi = padded[i : i + 1, :length].clone().requires_grad_(True)
        hi = h_0[:, i : i + 1].detach().clone().requires_grad_(True)
        out_i, h_i = model(xi if batch_first else xi.transpose(0, 1), hi)
        out_i = out_i if batch_first else out_i.transpose(0, 1)
        torch.testing.assert_close(unpacked[i, :length], out_i[0], **TOL[torch.float64])
        torch.testing.assert_close(h_n[:, i], h_i[:, 0], **TOL[torch.float64])
        loss_i = (out_i[0] * weight[i, :length]).sum() + h_i.square().sum()
        g_x, g_h, *g_params = torch.autograd.grad(loss_i, [xi, hi, *model.parameters()])
        torch.testing.assert_close(grads[0][i, :length], g_x[0], **TOL[torch.float64])
        torch.testing.assert_close(grads[1][:, i], g_h[:, 0], **TOL[torch.float64])
        for total, g in zip(alone_grads[2:], g_params, strict=True):
            total += g
    for got, want in zip(grads[2:], alone_grads[2:], strict=True):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


def test_packed_input_is_checked():
    model = ESGP(3, 12, sparsity=0.3, seed=0)
    packed = pack_padded_sequence(torch.randn(2, 4, 5), torch.tensor([4, 2]), batch_first=True)
    with pytest.raises(ValueError, match=r"expected input.data.size\(-1\) == input_size=3, got 5"):
        model(packed)
    packed = pack_padded_sequence(torch.randn(2, 4, 3), torch.tensor([4, 2]), batch_first=True)
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(1, 2, 12\), got \(1, 3, 12\)"):
        model(packed, torch.zeros(1, 3, 12))
