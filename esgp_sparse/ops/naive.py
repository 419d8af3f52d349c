"""Plain references for every fast path: dense matrices, a loop over time, no caching, no custom op.

The fast functions in this package are tested against these (in float64) on outputs and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor


def naive_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` with a dense ``weight`` (n_out, n_in); the twin of :func:`sparse_linear`."""
    return x @ weight.T


def lowrank_matrix(weight: Tensor) -> Tensor:
    """The dense gate matrix ``U V^T + diag(d)`` of a low-rank gate's packed weight (H, 2r + 1):
    ``U = weight[:, :r]``, ``V = weight[:, r:2r]``, ``d = weight[:, 2r]``
    (:class:`esgp_sparse.gates.LowRankGate`)."""
    r = (weight.shape[1] - 1) // 2
    return weight[:, :r] @ weight[:, r : 2 * r].T + torch.diag(weight[:, 2 * r])


def naive_cell(
    x: Tensor, h: Tensor, input_weight: Tensor, recurrent: Tensor, gate_weight: Tensor, gate_bias: Tensor
) -> Tensor:
    """One ESGP step with dense matrices, written as the model is defined::

        h~ = tanh(W_in x + W h)
        g  = sigmoid(W_g h~ + b_g)
        h' = g * h~ + (1 - g) * h

    Shape:
        x: (B, I); h: (B, H); input_weight: (H, I); recurrent, gate_weight: (H, H); gate_bias: (H,)
        returns: (B, H)
    """
    candidate = torch.tanh(x @ input_weight.T + h @ recurrent.T)
    gate = torch.sigmoid(candidate @ gate_weight.T + gate_bias)
    return gate * candidate + (1 - gate) * h


def naive_layer(
    x: Tensor, h0: Tensor, input_weight: Tensor, recurrent: Tensor, gate_weight: Tensor, gate_bias: Tensor
) -> Tensor:
    """:func:`naive_cell` over a sequence; the twin of :func:`esgp_sparse.ops.esgp_layer`.

    Shape:
        x: (T, B, I); h0: (B, H); returns the states (T, B, H).
    """
    states = []
    h = h0
    for x_t in x:
        h = naive_cell(x_t, h, input_weight, recurrent, gate_weight, gate_bias)
        states.append(h)
    return torch.stack(states)
