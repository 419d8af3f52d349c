"""One ESGP step with ordinary autograd: the building block of :class:`esgp_sparse.ESGPCell`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .sequence import LayerSpec, split_lowrank
from .sparse import sparse_linear


def esgp_cell(
    x: Tensor,
    h: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    spec: LayerSpec,
) -> Tensor:
    """``h' = g * h~ + (1 - g) * h`` for one step. Equals :func:`esgp_sparse.ops.naive.naive_cell`.

    Every op is an ATen op or a custom op with fake and autograd registrations, so
    ``torch.compile(..., fullgraph=True)`` captures it whole. ``spec.compiled`` is ignored here.

    Shape:
        x: (B, I); h: (B, H); input_weight: (H, I)
        recurrent: (H, H) dense, or (nnz,) values on ``spec.recurrent_csr``
        gate_weight: (H, H), (H,), (nnz_gate,) or (H, 2r + 1) as ``spec.gate`` says; gate_bias: (H,)
        returns: (B, H)
    """
    if spec.exchange is not None:
        raise ValueError("esgp_cell: expected a layer of one process (spec.exchange=None); see esgp_layer")
    csr = spec.recurrent_csr
    driven = F.linear(h, recurrent) if csr is None else sparse_linear(h, recurrent, *csr)
    candidate = torch.tanh(F.linear(x, input_weight) + driven)
    if spec.gate == "dense":
        z = F.linear(candidate, gate_weight, gate_bias)
    elif spec.gate == "diagonal":
        z = torch.addcmul(gate_bias, gate_weight, candidate)
    elif spec.gate == "lowrank":
        u, v, d = split_lowrank(gate_weight)
        z = torch.addcmul(F.linear(candidate @ v, u, gate_bias), d, candidate)
    elif spec.gate_csr is not None:
        z = sparse_linear(candidate, gate_weight, *spec.gate_csr) + gate_bias
    else:
        raise ValueError("esgp_cell: expected spec.gate_csr for a sparse gate, got None")
    return torch.lerp(h, candidate, torch.sigmoid(z))
