"""``compile=True``: the layer's steps in chunks of ``STEPS`` through Inductor.

A compiled single step still returns to Python every step, and ran slower than eager on this CPU.
Here one compiled function runs ``STEPS`` steps unrolled (so Inductor fuses each step's elementwise
work into a few loops around the products, and the compile does not grow with T), and another runs
their backward; the layer calls them once per chunk and runs the last ``T % STEPS`` steps with the
eager kernels. Each function takes and returns whole (STEPS, *block) tensors, so that its graph does
not depend on T or on the output's strides.

Measured at the sequential-MNIST shape (I=1, H=128, T=784, B=128, dense gate; train step, this
2-core CPU; prototypes of the layer, ``benchmarks/results/fused_step_options.jsonl``): chunks of 8,
16 and 28 steps ran at 124, 120 and 164 ms with ``cpp_wrapper``, 166, 129 and 163 ms without,
against about 176 ms eager and an 87 ms floor for the GEMMs alone; 16 compiled in 14-20 s with an
empty cache, about 2 s with a warm one.

Reference twin: :func:`esgp_sparse.ops.sequence.forward_step` and ``backward_step`` (the eager
kernels), and through them :func:`esgp_sparse.ops.naive.naive_layer`.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .sparse import csr_matmul

#: Steps per compiled chunk.
STEPS = 16

#: The torch.compile backend (the tests swap in "aot_eager", which traces the same graphs in seconds).
BACKEND = "inductor"


def _product(x: Tensor, weight: Tensor, pattern: list[Tensor], rows: bool) -> Tensor:
    """``x @ M`` (rows: x (B, H), M given as its (H, H) right operand) or ``M @ x`` (cols), M dense
    or CSR (``pattern`` = [crow, col] of the values ``weight``)."""
    if pattern:
        return csr_matmul(pattern[0], pattern[1], weight, x)
    return x @ weight if rows else weight @ x


def _gate_product(
    x: Tensor, weight: Tensor, pattern: list[Tensor], factors: list[Tensor], gate: str, rows: bool
) -> Tensor:
    """The gate's matrix times ``x`` as :func:`_product`: ``weight`` is the diagonal for the
    diagonal and low-rank gates, ``factors`` the low-rank gate's (see
    :class:`esgp_sparse.ops.sequence.Operands`)."""
    if gate == "diagonal":
        return x * weight
    if gate == "lowrank":
        low = (x @ factors[0]) @ factors[1] if rows else factors[1] @ (factors[0] @ x)
        return low + x * weight
    return _product(x, weight, pattern, rows)


def forward_chunk(
    h: Tensor,
    inputs: Tensor,
    recurrent: Tensor,
    recurrent_pattern: list[Tensor],
    gate_weight: Tensor,
    gate_pattern: list[Tensor],
    gate_factors: list[Tensor],
    gate_bias: Tensor,
    gate: str,
    rows: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``STEPS`` steps from the state ``h`` (one step block) with inputs ``W_in x_t`` (STEPS, *block):
    the states, candidates and gates, each (STEPS, *block). The operands are the forward
    :class:`esgp_sparse.ops.sequence.Operands` (bias broadcastable to a block)."""
    states, candidates, gates = [], [], []
    for u in inputs.unbind(0):
        candidate = torch.tanh(u + _product(h, recurrent, recurrent_pattern, rows))
        z = _gate_product(candidate, gate_weight, gate_pattern, gate_factors, gate, rows)
        opening = torch.sigmoid(z + gate_bias)
        h = torch.lerp(h, candidate, opening)
        states.append(h)
        candidates.append(candidate)
        gates.append(opening)
    return torch.stack(states), torch.stack(candidates), torch.stack(gates)


def backward_chunk(
    carry: Tensor,
    grads: Tensor,
    candidates: Tensor,
    gates: Tensor,
    previous: Tensor,
    recurrent: Tensor,
    recurrent_pattern: list[Tensor],
    gate_weight: Tensor,
    gate_pattern: list[Tensor],
    gate_factors: list[Tensor],
    gate: str,
    rows: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse of :func:`forward_chunk`: from dL/dh after the chunk (``carry``), the loss's own
    dL/dh of each step (``grads``) and each step's previous state (``previous``), all in the step
    layout, returns dL/dh before the chunk and every step's dL/dz and dL/da (STEPS, *block). The
    candidates and gates come as the (STEPS, stride) storage the layer keeps them in, each step's
    block in the first B * H elements of its row. The operands are the backward
    :class:`esgp_sparse.ops.sequence.Operands`."""
    steps = grads.shape[0]
    numel = carry.shape[0] * carry.shape[1]
    candidates = candidates[:, :numel].view(steps, *carry.shape)
    gates = gates[:, :numel].view(steps, *carry.shape)
    grad_z: list[Tensor] = []
    grad_a: list[Tensor] = []
    for t in range(steps - 1, -1, -1):
        candidate, opening = candidates[t], gates[t]
        grad = carry + grads[t]
        dz = grad * (candidate - previous[t]) * (opening - opening * opening)
        dc = grad * opening + _gate_product(dz, gate_weight, gate_pattern, gate_factors, gate, rows)
        da = dc * (1 - candidate * candidate)
        carry = grad * (1 - opening) + _product(da, recurrent, recurrent_pattern, rows)
        grad_z.append(dz)
        grad_a.append(da)
    return carry, torch.stack(grad_z[::-1]), torch.stack(grad_a[::-1])


#: One compiled function per (chunk function, dtype, device type, layout, gate, CSR or not). Dynamo
#: keeps its compiled graphs and counts recompiles against ``torch._dynamo.config.recompile_limit``
#: per code object; each key gets its own copy of the function's code object, compiled with dynamic
#: shapes, so batch sizes, lengths, hidden sizes and nnz share one graph where Dynamo can, and the
#: keys never share a budget.
_COMPILED: dict[tuple[object, ...], Callable[..., Any]] = {}


def compiled(fn: Callable[..., Any], key: tuple[object, ...]) -> Callable[..., Any]:
    """``fn`` through Inductor (with its C++ wrapper on CPU), once per ``key``."""
    full_key = (fn.__name__, BACKEND) + key
    found = _COMPILED.get(full_key)
    if found is None:
        copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__)
        if BACKEND == "inductor":
            options: dict[str, str | int | bool | Callable[..., Any]] = {"cpp_wrapper": key[1] == "cpu"}
            found = torch.compile(copy, dynamic=True, options=options)
        else:
            found = torch.compile(copy, dynamic=True, backend=BACKEND)
        _COMPILED[full_key] = found
    return found
