"""The ESGP layer as ``torch._higher_order_ops.scan`` with gather-based CSR products: the form the
layer takes inside ``torch.onnx.export``.

ONNX has neither a CSR product nor our custom ops; it has Scan (a loop over a dynamic length, into
which torch.onnx translates ``scan``), Gather and CumSum. ``W @ h`` for a CSR ``W`` and a state ``h``
(H, B) is then a gather, a running sum and a difference (:func:`gather_matmul`). Slower than
:func:`esgp_sparse.ops.esgp_layer` on torch (eager ``scan`` runs through ``torch.compile``), so
:func:`esgp_layer` takes this form only while torch.onnx exports.

The forms measured for one product in onnxruntime 1.31 (H=4096, 41 per row, B=32, this 2-core CPU;
``python benchmarks/onnx_products.py``, ``benchmarks/results/onnx_products.jsonl``, mean of 10
runs): this one 9.0 ms; a dense (H, H) product 3.2 ms, at H^2 memory; ``index_add`` (ScatterND with
reduction "add") 2.8 ms, but its threads race on repeated rows: exported in a layer of 100 steps,
some runs gave wrong states (seen by hand, not recorded; the recorded 200 single products happened
to be right); ``scatter_add``
(ScatterElements) 53 ms; a running sum on a (B, H) state 36 ms.

Reference twin: :func:`esgp_sparse.ops.naive.naive_layer`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .sequence import LayerSpec, split_lowrank
from .sparse import CSR


def gather_matmul(h: Tensor, values: Tensor, crow: Tensor, col: Tensor) -> Tensor:
    """``W @ h`` for a CSR ``W`` (n_rows x n_cols, int64 ``crow`` and ``col``) and a state ``h``
    (n_cols, B): the terms ``W[r, c] h[c]`` gathered in CSR order, their running sum S, and row r's
    sum as ``S[crow[r + 1]] - S[crow[r]]``. S is kept in float64, so that the difference loses nothing
    that float32 partial sums over nnz terms would."""
    terms = (h[col] * values[:, None]).double()  # (nnz, B)
    running = torch.nn.functional.pad(terms.cumsum(0), (0, 0, 1, 0))  # (nnz + 1, B), row 0 zero
    return (running[crow[1:]] - running[crow[:-1]]).to(h.dtype)


def _matmul(weight: Tensor, csr: CSR | None) -> Callable[[Tensor], Tensor]:
    """``h -> W @ h`` for a state ``h`` (H, B)."""
    if csr is None:
        return lambda h: weight @ h
    crow, col = csr.crow.long(), csr.col.long()
    return lambda h: gather_matmul(h, weight, crow, col)


def scan_layer(
    x: Tensor,
    h0: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    spec: LayerSpec,
    batch_first: bool = False,
) -> Tensor:
    """:func:`esgp_sparse.ops.esgp_layer`'s arguments and result, computed with ``scan``, without
    gradients (an ONNX file is for inference).

    Shape:
        x: (B, T, I) if batch_first else (T, B, I); h0: (B, H); returns the states like ``x``.
    """
    from torch._higher_order_ops.scan import scan  # private in torch 2.13; imported where needed

    # Inference only: with a tensor that requires grad, torch.onnx 2.13 fails on the symbolic batch
    # size scan saves for its backward ("'SymInt' object has no attribute 'unsqueeze'").
    x, h0, input_weight, recurrent, gate_weight, gate_bias = (
        t.detach() for t in (x, h0, input_weight, recurrent, gate_weight, gate_bias)
    )
    seq = x.transpose(0, 1) if batch_first else x
    # The state runs as (H, B), so that a CSR product gathers whole rows of it.
    inputs = input_weight @ seq.transpose(1, 2)  # (T, H, B): every step's W_in x_t at once
    drive = _matmul(recurrent, spec.recurrent_csr)
    if spec.gate == "diagonal":
        gate: Callable[[Tensor], Tensor] = lambda c: c * gate_weight[:, None]  # noqa: E731
    elif spec.gate == "lowrank":
        u, v, d = (t.contiguous() for t in split_lowrank(gate_weight))
        gate = lambda c: u @ (v.t() @ c) + c * d[:, None]  # noqa: E731
    else:
        gate = _matmul(gate_weight, spec.gate_csr)

    def step(h: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        candidate = torch.tanh(u + drive(h))
        # Broadcast views made here: one made outside and closed over reaches scan's own tracing
        # with its size-1 dimension symbolic, and fails to broadcast (torch 2.13).
        g = torch.sigmoid(gate(candidate) + gate_bias[:, None])
        h = h + g * (candidate - h)
        return h, h.clone()  # scan's outputs may not alias its carry

    # A fresh state: scan (torch 2.13) fails on a view whose storage offset is symbolic, such as
    # h_0[layer] with a dynamic batch size ("vr must not be None for symbol ...").
    _, states = scan(step, h0.t().contiguous(), inputs)  # (T, H, B)
    return states.permute(2, 0, 1) if batch_first else states.transpose(1, 2)
