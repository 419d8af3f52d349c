"""The ESGP layer over a whole sequence: one autograd node with a hand-written backward through time.

Per-step autograd costs more than the arithmetic at small hidden sizes (the original package spends
most of its time there). Here the forward loop runs without autograd and keeps what the backward
needs (candidates and gates; the states are the output); the backward walks time in reverse with a
fixed, small number of kernels per step and takes the weight gradients as one product per chunk of
steps, not per step.

One step's state is a (B, H) block ("rows") when every product is a dense GEMM, and an (H, B)
block ("cols") when a CSR product is involved: ``W @ h`` then reads a contiguous dense operand (2x
faster than a strided one at H=4096, torch 2.13 CPU). The sequence stays in the caller's layout,
``(B, T, F)`` or ``(T, B, F)``: nothing of size T x B x H is allocated beyond the output, and the
per-step blocks are small enough for the allocator to reuse from one call to the next (a fresh
(T, H, B) block costs page faults worth a tanh over it at H=128, B=128, T=784).

Reference twin: :func:`esgp_sparse.ops.naive.naive_layer`.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from .sparse import CSR, csr_matmul, csr_sampled_matmul

GateKind = Literal["dense", "diagonal", "sparse"]
GATES: tuple[GateKind, ...] = ("dense", "diagonal", "sparse")

#: Bytes of one (K, B, H) work tensor: the input projection of K steps, the backward's factors.
CHUNK_BYTES = 4 * 2**20


class LayerSpec(NamedTuple):
    """The non-tensor description of a layer, fixed for the whole sequence.

    Attributes:
        recurrent_csr: the reservoir's pattern; None when ``recurrent`` is a dense (H, H) matrix.
        gate: ``"dense"`` (gate_weight (H, H)), ``"diagonal"`` (gate_weight (H,)) or ``"sparse"``
            (gate_weight holds the values on ``gate_csr``).
        gate_csr: the sparse gate's pattern, else None.
        compiled: run the per-step kernels through ``torch.compile`` (never unrolled over time; see
            ``_COMPILED`` for what compiles again).
    """

    recurrent_csr: CSR | None
    gate: GateKind
    gate_csr: CSR | None
    compiled: bool = False

    @property
    def rows(self) -> bool:
        """Whether a step's state is a (B, H) block (all products dense) rather than (H, B)."""
        return self.recurrent_csr is None and self.gate != "sparse"


class Operands(NamedTuple):
    """The matrices of one direction (forward or backward) shaped for the step's layout.

    ``recurrent`` and ``gate`` are the right operand of ``x @ M`` in the rows layout, the left one
    of ``M @ x`` in the cols layout, or the values of a CSR matrix; ``gate`` is a broadcastable
    vector for the diagonal gate; ``bias`` is (H,) for rows and (H, 1) for cols.
    """

    recurrent: Tensor
    gate: Tensor
    bias: Tensor


def _operands(recurrent: Tensor, gate_weight: Tensor, gate_bias: Tensor, spec: LayerSpec, backward: bool) -> Operands:
    rows = spec.rows

    def orient(weight: Tensor, csr: CSR | None) -> Tensor:
        if csr is not None:
            return weight[csr.perm_t] if backward else weight
        # Forward: rows compute x @ W.T, cols W @ x. Backward: rows d @ W, cols W.T @ d, where a
        # contiguous copy of W.T pays for itself: MKL's transposed skinny GEMM (W.T @ d with d of
        # 8 columns, H=4096) ran 4.5x slower than the plain one (torch 2.13 CPU).
        if rows == backward:
            return weight
        return weight.t().contiguous() if backward else weight.t()

    if spec.gate == "diagonal":
        gate = gate_weight if rows else gate_weight[:, None]
    else:
        gate = orient(gate_weight, spec.gate_csr)
    return Operands(orient(recurrent, spec.recurrent_csr), gate, gate_bias if rows else gate_bias[:, None])


def _matmul_add_(acc: Tensor, x: Tensor, weight: Tensor, csr: CSR | None, rows: bool, backward: bool) -> Tensor:
    """``acc += x @ M`` (rows) or ``acc += M @ x`` (cols) in place, M dense or CSR."""
    if csr is not None:
        crow, col = (csr.crow_t, csr.col_t) if backward else (csr.crow, csr.col)
        return acc.add_(csr_matmul(crow, col, weight, x))
    return acc.addmm_(x, weight) if rows else acc.addmm_(weight, x)


def forward_step(
    u: Tensor, h: Tensor, ops: Operands, spec: LayerSpec, h_out: Tensor, candidate_out: Tensor, gate_out: Tensor
) -> None:
    """One step, written into the ``*_out`` tensors; ``u = W_in x_t`` is overwritten.

    ``u``, ``h`` and the outputs are (B, H) blocks if ``spec.rows`` else (H, B); ``ops`` are the
    forward :class:`Operands`. Writes ``h' -> h_out``, ``h~ -> candidate_out``, ``g -> gate_out``.
    """
    rows = spec.rows
    torch.tanh(_matmul_add_(u, h, ops.recurrent, spec.recurrent_csr, rows, False), out=candidate_out)
    if spec.gate == "diagonal":
        torch.addcmul(ops.bias, ops.gate, candidate_out, out=gate_out)
    elif spec.gate_csr is not None:
        torch.add(csr_matmul(spec.gate_csr.crow, spec.gate_csr.col, ops.gate, candidate_out), ops.bias, out=gate_out)
    elif rows:
        torch.addmm(ops.bias, candidate_out, ops.gate, out=gate_out)
    else:
        torch.addmm(ops.bias, ops.gate, candidate_out, out=gate_out)
    torch.sigmoid(gate_out, out=gate_out)
    torch.lerp(h, candidate_out, gate_out, out=h_out)


def backward_step(
    grad_h: Tensor,
    carry: Tensor,
    candidate: Tensor,
    gate: Tensor,
    h_prev: Tensor,
    ops: Operands,
    spec: LayerSpec,
    grad_z_out: Tensor,
    grad_a_out: Tensor,
) -> Tensor:
    """Reverse of :func:`forward_step`; returns dL/dh (the next carry).

    ``grad_h + carry`` is dL/dh' at this step (``carry`` is overwritten); ``candidate``, ``gate`` and
    ``h_prev`` are the step's h~, g and h. Everything is computed from the step's own blocks while
    they are in cache. ``ops`` are the backward :class:`Operands`. Writes dL/dz (gate
    pre-activation) to ``grad_z_out`` and dL/da (candidate pre-activation) to ``grad_a_out``.
    """
    rows = spec.rows
    grad = carry.add_(grad_h)  # carry is this loop's own temporary (and keeps its layout)
    # dL/dz = dL/dh' (h~ - h) g (1 - g)
    torch.sub(candidate, h_prev, out=grad_z_out).mul_(grad).mul_(torch.addcmul(gate, gate, gate, value=-1))
    grad_candidate = grad * gate
    grad_kept = grad.sub_(grad_candidate)  # dL/dh' (1 - g): the part that skips the cell
    if spec.gate == "diagonal":
        grad_candidate.addcmul_(ops.gate, grad_z_out)
    else:
        _matmul_add_(grad_candidate, grad_z_out, ops.gate, spec.gate_csr, rows, True)
    # dL/da = dL/dh~ (1 - h~^2)
    torch.addcmul(grad_candidate, grad_candidate * candidate, candidate, value=-1, out=grad_a_out)
    return _matmul_add_(grad_kept, grad_a_out, ops.recurrent, spec.recurrent_csr, rows, True)


#: One compiled function per (step, dtype, device type, layout, gate, CSR or not). Dynamo keeps its
#: compiled graphs, and counts recompiles against ``torch._dynamo.config.recompile_limit`` (8), per
#: code object: a single compiled step shared by every model in a process failed at the ninth shape
#: or dtype. Each key gets its own copy of the step's code object, compiled with dynamic shapes, so
#: batch sizes, lengths and nnz share one graph and the keys never share a budget; a new hidden size
#: compiles the forward step again (it specialises on H), and past the limit Dynamo runs the step
#: eagerly rather than failing (tests/test_compile.py runs ten hidden sizes).
_COMPILED: dict[tuple[object, ...], Callable[..., Any]] = {}


def _compiled(step: Callable[..., Any], key: tuple[object, ...]) -> Callable[..., Any]:
    full_key = (step.__name__,) + key
    compiled = _COMPILED.get(full_key)
    if compiled is None:
        copy = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__, step.__defaults__)
        compiled = _COMPILED[full_key] = torch.compile(copy, dynamic=True)
    return compiled


def _steps(spec: LayerSpec, like: Tensor) -> tuple[Callable[..., Any], Callable[..., Any]]:
    if spec.compiled:
        key = (like.dtype, like.device.type, spec.rows, spec.gate, spec.recurrent_csr is not None)
        return _compiled(forward_step, key), _compiled(backward_step, key)
    return forward_step, backward_step


def _project(x_chunk: Tensor, input_weight: Tensor, rows: bool, out: Tensor | None = None) -> Tensor:
    """``W_in x_t`` for K steps (x_chunk (K, B, I)) as one batched GEMM: (K, B, H) or (K, H, B)."""
    if rows:
        return torch.matmul(x_chunk, input_weight.t(), out=out)
    return torch.matmul(input_weight, x_chunk.transpose(1, 2), out=out)


def chunk_size(steps: int, hidden_size: int, batch: int, element_size: int) -> int:
    """How many time steps one work chunk holds: about ``CHUNK_BYTES`` per (K, B, H) tensor."""
    return max(1, min(steps, CHUNK_BYTES // max(1, hidden_size * batch * element_size)))


_DOUBLE_BACKWARD = (
    "esgp_layer: double backward (create_graph=True) is not supported: the sequence layer's backward "
    "through time is hand-written and not itself differentiable; loop ESGPCell over time instead (its "
    "steps are differentiable twice on every gate and path)"
)


def _block(spec: LayerSpec, batch: int, hidden: int) -> tuple[int, int]:
    return (batch, hidden) if spec.rows else (hidden, batch)


def _forward(
    x: Tensor,
    h0: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    spec: LayerSpec,
    batch_first: bool,
    candidates: Sequence[Tensor] | Tensor,
    gates: Sequence[Tensor] | Tensor,
) -> Tensor:
    """The states (B, T, H) or (T, B, H); step t's candidate and gate block are written to
    ``candidates[t]`` and ``gates[t]``, or all to ``candidates[0]`` and ``gates[0]`` (scratch) when
    the sequences hold one block each."""
    # x is (B, T, I) if batch_first else (T, B, I); `seq` views it time-major either way.
    seq = x.transpose(0, 1) if batch_first else x
    steps, batch, _ = seq.shape
    hidden = input_weight.shape[0]
    rows = spec.rows
    forward, _ = _steps(spec, x)
    ops = _operands(recurrent, gate_weight, gate_bias, spec, backward=False)
    out = x.new_empty((batch, steps, hidden) if batch_first else (steps, batch, hidden))
    out_seq = out.transpose(0, 1) if batch_first else out
    k = chunk_size(steps, hidden, batch, x.element_size())
    block = _block(spec, batch, hidden)
    # Reused buffers: the input projection of a chunk, and the state ping-ponging between two.
    projection = x.new_empty((k, *block))
    buffers = (x.new_empty(block), x.new_empty(block))
    h = buffers[1].copy_(h0 if rows else h0.t())
    out_steps = (out_seq if rows else out_seq.transpose(1, 2)).unbind(0)  # step-layout views
    for start in range(0, steps, k):
        x_chunk = seq[start : start + k]  # (K, B, I)
        inputs = _project(x_chunk, input_weight, rows, out=projection[: x_chunk.shape[0]])
        for t, u in enumerate(inputs.unbind(0), start):
            h_next = buffers[t % 2]
            i = t if len(candidates) == steps else 0
            forward(u, h, ops, spec, h_next, candidates[i], gates[i])
            out_steps[t].copy_(h_next)
            h = h_next
    return out


def _backward(
    grad_out: Tensor,
    x: Tensor,
    h0: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    out: Tensor,
    candidates: Sequence[Tensor],
    gates: Sequence[Tensor],
    spec: LayerSpec,
    batch_first: bool,
    input_grad: bool,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of x (None unless ``input_grad``), h0, input_weight, gate_weight and gate_bias
    from dL/d(states). Without ``candidates`` and ``gates`` (checkpoint) the backward recomputes
    them chunk by chunk from the states."""
    rows = spec.rows
    per_step = len(candidates) > 0
    if batch_first:
        seq, out_seq, grad_seq = x.transpose(0, 1), out.transpose(0, 1), grad_out.transpose(0, 1)
    else:
        seq, out_seq, grad_seq = x, out, grad_out
    steps, batch, hidden = out_seq.shape
    forward, backward = _steps(spec, out)
    ops = _operands(recurrent, gate_weight, gate_bias, spec, backward=True)
    forward_ops = None if per_step else _operands(recurrent, gate_weight, gate_bias, spec, backward=False)
    step_view = (lambda a: a) if rows else (lambda a: a.transpose(-1, -2))  # (.., B, H) -> step layout
    batch_dim = 1 if rows else 2  # of a (K, ., .) chunk in the step layout
    grad_steps, state_steps = step_view(grad_seq).unbind(0), step_view(out_seq).unbind(0)

    grad_x = torch.empty_like(x) if input_grad else None
    grad_x_seq = None if grad_x is None else (grad_x.transpose(0, 1) if batch_first else grad_x)
    grad_input_weight = torch.zeros_like(input_weight)
    grad_gate_weight = torch.zeros_like(gate_weight)
    grad_gate_bias = torch.zeros_like(gate_bias)
    h0_step = step_view(h0)
    carry = torch.zeros_like(h0_step, memory_format=torch.contiguous_format)
    k = chunk_size(steps, hidden, batch, out.element_size())
    # Reused per-chunk buffers: dL/dz, dL/da and (when kept per step) the candidates, for the
    # chunk's weight-gradient products.
    grad_z_buf, grad_a_buf = out.new_empty((k, *carry.shape)), out.new_empty((k, *carry.shape))
    c_buf = out.new_empty((k, *carry.shape)) if per_step else None
    for stop in range(steps, 0, -k):
        start = max(0, stop - k)
        grad_z, grad_a = grad_z_buf[: stop - start], grad_a_buf[: stop - start]
        if c_buf is not None:
            c, step_c, step_g = c_buf[: stop - start], candidates[start:stop], gates[start:stop]
        elif forward_ops is not None:  # checkpointed: recompute this chunk's candidates and gates
            c, g = _recompute(seq[start:stop], start, h0_step, out_seq, input_weight, forward_ops, spec, forward)
            step_c, step_g = c.unbind(0), g.unbind(0)
        else:
            raise RuntimeError("esgp_layer: neither saved nor recomputable candidates")
        c_steps, grad_z_steps, grad_a_steps = c.unbind(0), grad_z.unbind(0), grad_a.unbind(0)
        for t in range(stop - 1, start - 1, -1):
            i = t - start
            grad_t = grad_steps[t]
            h_prev = state_steps[t - 1] if t > 0 else h0_step
            if spec.compiled:  # their strides depend on T: copies keep one compiled graph for all T
                grad_t, h_prev = grad_t.contiguous(), h_prev.contiguous()
            carry = backward(grad_t, carry, step_c[i], step_g[i], h_prev, ops, spec, grad_z_steps[i], grad_a_steps[i])
            if per_step:
                c_steps[i].copy_(step_c[i])  # while it is in cache
        x_chunk = seq[start:stop]  # (K, B, I)
        if grad_x_seq is not None:
            grad_x_seq[start:stop] = torch.matmul(step_view(grad_a), input_weight)
        grad_input_weight += torch.tensordot(grad_a, x_chunk, dims=([0, batch_dim], [0, 1]))
        if spec.gate == "dense":
            grad_gate_weight += torch.tensordot(grad_z, c, dims=([0, batch_dim], [0, batch_dim]))
        elif spec.gate == "diagonal":
            grad_gate_weight += (grad_z * c).sum((0, batch_dim))
        elif spec.gate_csr is not None:
            rows_zb = grad_z.permute(1, 0, 2).reshape(hidden, -1)  # (H, K*B)
            cols_bc = c.permute(0, 2, 1).reshape(-1, hidden)  # (K*B, H)
            grad_gate_weight += csr_sampled_matmul(spec.gate_csr.crow, spec.gate_csr.col, rows_zb, cols_bc)
        else:
            raise ValueError("esgp_layer: expected spec.gate_csr for a sparse gate, got None")
        grad_gate_bias += grad_z.sum((0, batch_dim))
    grad_h0 = carry if rows else carry.t()
    return grad_x, grad_h0, grad_input_weight, grad_gate_weight, grad_gate_bias


def _raise_on_double_backward(grads: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    """As torch.autograd.function.once_differentiable, with a message that says what to do: under
    ``create_graph=True`` the gradients get a node that raises if anything differentiates through
    them (grad mode is on in a backward only then)."""
    transformed = torch._C._functorch.peek_interpreter_stack() is not None  # torch.func.grad & co.
    if transformed or not torch.is_grad_enabled():
        return grads
    present = [g for g in grads if g is not None]
    error = torch._C._functions.DelayedError(_DOUBLE_BACKWARD.encode(), len(present))
    raised = iter(error(*[g.detach().requires_grad_(True) for g in present]))
    return tuple(None if g is None else next(raised) for g in grads)


class _ESGPLayer(torch.autograd.Function):
    """The eager layer. Outputs: the states, then (with ``keep`` and without ``checkpoint``) every
    step's candidate and gate block as separate tensors, which the backward needs and nobody
    differentiates: separate blocks are reused by the allocator from one call to the next, where one
    fresh (T, H, B) block costs page faults worth a tanh over it (H=128, B=128, T=784). Forward and
    ``setup_context`` apart, so that torch.func (``grad``, ``functional_call``) can run it."""

    @staticmethod
    def forward(
        x: Tensor,
        h0: Tensor,
        input_weight: Tensor,
        recurrent: Tensor,
        gate_weight: Tensor,
        gate_bias: Tensor,
        spec: LayerSpec,
        batch_first: bool,
        keep: bool,
        checkpoint: bool,
    ) -> tuple[Tensor, ...]:
        steps = x.shape[1 if batch_first else 0]
        block = _block(spec, x.shape[0 if batch_first else 1], input_weight.shape[0])
        # `keep`: a backward will follow. Without one (or with `checkpoint`, whose backward recomputes
        # them), a single scratch block of candidates and gates suffices.
        save_steps = keep and not checkpoint
        count = steps if save_steps else 1
        candidates = [x.new_empty(block) for _ in range(count)]
        gates = [x.new_empty(block) for _ in range(count)]
        args = (x, h0, input_weight, recurrent, gate_weight, gate_bias, spec, batch_first)
        out = _forward(*args, candidates, gates)
        return (out, *candidates, *gates) if save_steps else (out,)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, h0, input_weight, recurrent, gate_weight, gate_bias, spec, batch_first, keep, _ = inputs
        out, *per_step = output
        ctx.mark_non_differentiable(*per_step)
        ctx.set_materialize_grads(False)  # else autograd fills a zero gradient for each of those blocks
        ctx.spec, ctx.batch_first = spec, batch_first
        if keep:
            # Saved through autograd, so they are freed right after backward (not when `out` dies).
            ctx.save_for_backward(x, h0, input_weight, recurrent, gate_weight, gate_bias, out, *per_step)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, *_per_step: None) -> tuple[Tensor | None, ...]:
        x, h0, input_weight, recurrent, gate_weight, gate_bias, out, *per_step = ctx.saved_tensors
        if grad_out is None:  # only the (non-differentiable) per-step blocks reached a loss
            return (None,) * 10
        half = len(per_step) // 2
        with torch.no_grad():
            grad_x, grad_h0, grad_input_weight, grad_gate_weight, grad_gate_bias = _backward(
                grad_out,
                x,
                h0,
                input_weight,
                recurrent,
                gate_weight,
                gate_bias,
                out,
                per_step[:half],
                per_step[half:],
                ctx.spec,
                ctx.batch_first,
                ctx.needs_input_grad[0],
            )
        grads = _raise_on_double_backward((grad_x, grad_h0, grad_input_weight, grad_gate_weight, grad_gate_bias))
        return (*grads[:3], None, *grads[3:], None, None, None, None)


# ---------------------------------------------------------------------------------- the traced layer
# Under torch.compile and torch.export the layer is one custom op (and its backward another), so the
# graph holds one opaque node per layer whatever T is, and a new T does not compile again. The
# candidates and gates travel as one (T, *block) tensor each, since a custom op has a fixed number
# of outputs; the eager layer above keeps them as separate blocks, which is faster (see _ESGPLayer).


def _spec_from(
    recurrent_pattern: Sequence[Tensor], gate: str, gate_pattern: Sequence[Tensor], compiled: bool
) -> LayerSpec:
    if gate not in GATES:
        raise ValueError(f"esgp_layer: expected gate in {GATES}, got {gate!r}")
    recurrent_csr = CSR(*recurrent_pattern) if recurrent_pattern else None
    gate_csr = CSR(*gate_pattern) if gate_pattern else None
    return LayerSpec(recurrent_csr, gate, gate_csr, compiled)


@torch.library.custom_op("esgp_sparse::esgp_layer", mutates_args=())
def _layer_op(
    x: Tensor,
    h0: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    recurrent_pattern: list[Tensor],
    gate: str,
    gate_pattern: list[Tensor],
    compiled: bool,
    batch_first: bool,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The states, and (with ``save``) every step's candidates and gates as (T, *block) tensors."""
    spec = _spec_from(recurrent_pattern, gate, gate_pattern, compiled)
    steps = x.shape[1 if batch_first else 0]
    block = _block(spec, x.shape[0 if batch_first else 1], input_weight.shape[0])
    candidates = x.new_empty((steps if save else 1, *block))
    gates = torch.empty_like(candidates)
    out = _forward(x, h0, input_weight, recurrent, gate_weight, gate_bias, spec, batch_first, candidates, gates)
    if not save:
        return out, x.new_empty(0), x.new_empty(0)
    return out, candidates, gates


@_layer_op.register_fake
def _(
    x: Tensor,
    h0: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    recurrent_pattern: list[Tensor],
    gate: str,
    gate_pattern: list[Tensor],
    compiled: bool,
    batch_first: bool,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    spec = _spec_from(recurrent_pattern, gate, gate_pattern, compiled)
    steps, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    hidden = input_weight.shape[0]
    out = x.new_empty((batch, steps, hidden) if batch_first else (steps, batch, hidden))
    if not save:
        return out, x.new_empty(0), x.new_empty(0)
    residual = x.new_empty((steps, *_block(spec, batch, hidden)))
    return out, residual, torch.empty_like(residual)


@torch.library.custom_op("esgp_sparse::esgp_layer_backward", mutates_args=())
def _layer_backward_op(
    grad_out: Tensor,
    x: Tensor,
    h0: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    out: Tensor,
    candidates: Tensor,
    gates: Tensor,
    recurrent_pattern: list[Tensor],
    gate: str,
    gate_pattern: list[Tensor],
    compiled: bool,
    batch_first: bool,
    input_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of x (empty unless ``input_grad``), h0, input_weight, gate_weight and gate_bias.
    Empty ``candidates`` and ``gates`` mean a checkpointed layer (recomputed chunk by chunk)."""
    spec = _spec_from(recurrent_pattern, gate, gate_pattern, compiled)
    saved = candidates.numel() > 0
    grad_x, *grads = _backward(
        grad_out.contiguous(),
        x,
        h0,
        input_weight,
        recurrent,
        gate_weight,
        gate_bias,
        out,
        candidates.unbind(0) if saved else (),
        gates.unbind(0) if saved else (),
        spec,
        batch_first,
        input_grad,
    )
    return (x.new_empty(0) if grad_x is None else grad_x, *grads)  # type: ignore[return-value]


@_layer_backward_op.register_fake
def _(
    grad_out: Tensor,
    x: Tensor,
    h0: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    out: Tensor,
    candidates: Tensor,
    gates: Tensor,
    recurrent_pattern: list[Tensor],
    gate: str,
    gate_pattern: list[Tensor],
    compiled: bool,
    batch_first: bool,
    input_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grad_x = torch.empty_like(x) if input_grad else x.new_empty(0)
    return (
        grad_x,
        torch.empty_like(h0),
        torch.empty_like(input_weight),
        torch.empty_like(gate_weight),
        torch.empty_like(gate_bias),
    )


def _layer_op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, h0, input_weight, recurrent, gate_weight, gate_bias, recurrent_pattern, gate, gate_pattern, compiled, bf, _ = (
        inputs
    )
    out, candidates, gates = output
    ctx.mark_non_differentiable(candidates, gates)
    ctx.set_materialize_grads(False)
    ctx.layer = (gate, compiled, bf, len(recurrent_pattern))
    ctx.save_for_backward(
        x,
        h0,
        input_weight,
        recurrent,
        gate_weight,
        gate_bias,
        out,
        candidates,
        gates,
        *recurrent_pattern,
        *gate_pattern,
    )


def _layer_op_backward(ctx: Any, grad_out: Tensor | None, *_residuals: None) -> tuple[Any, ...]:
    gate, compiled, batch_first, n_recurrent = ctx.layer
    x, h0, input_weight, recurrent, gate_weight, gate_bias, out, candidates, gates, *patterns = ctx.saved_tensors
    # A gradient per input, with one per element of the pattern lists (all None).
    recurrent_pattern, gate_pattern = patterns[:n_recurrent], patterns[n_recurrent:]
    no_patterns = ([None] * len(recurrent_pattern), None, [None] * len(gate_pattern), None, None, None)
    if grad_out is None:
        return (None,) * 6 + no_patterns
    grad_x, grad_h0, grad_input_weight, grad_gate_weight, grad_gate_bias = _layer_backward_op(
        grad_out,
        x,
        h0,
        input_weight,
        recurrent,
        gate_weight,
        gate_bias,
        out,
        candidates,
        gates,
        recurrent_pattern,
        gate,
        gate_pattern,
        compiled,
        batch_first,
        ctx.needs_input_grad[0],
    )
    present = grad_x if ctx.needs_input_grad[0] else None
    grads = _raise_on_double_backward((present, grad_h0, grad_input_weight, grad_gate_weight, grad_gate_bias))
    return (*grads[:3], None, *grads[3:], *no_patterns)


_layer_op.register_autograd(_layer_op_backward, setup_context=_layer_op_setup)


def _recompute(
    x_chunk: Tensor,
    start: int,
    h0: Tensor,
    out_seq: Tensor,
    input_weight: Tensor,
    ops: Operands,
    spec: LayerSpec,
    forward: Callable,
) -> tuple[Tensor, Tensor]:
    """Candidates and gates of the K steps from ``start`` again, from their inputs (K, B, I) and the
    saved states. The states are known, so the steps are independent; each runs the forward's own
    kernel, which makes the results equal to the forward's."""
    inputs = _project(x_chunk, input_weight, spec.rows)
    candidates, gates = torch.empty_like(inputs), torch.empty_like(inputs)
    scratch = torch.empty_like(inputs[0])
    for i, u in enumerate(inputs.unbind(0)):
        t = start + i
        h_prev = (out_seq[t - 1] if spec.rows else out_seq[t - 1].t()) if t > 0 else h0
        forward(u, h_prev.contiguous(), ops, spec, scratch, candidates[i], gates[i])
    return candidates, gates


def esgp_layer(
    x: Tensor,
    h0: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    spec: LayerSpec,
    batch_first: bool = False,
    checkpoint: bool = False,
) -> Tensor:
    """Run one ESGP layer over a sequence. Equals :func:`esgp_sparse.ops.naive.naive_layer`.

    Differentiable in ``x``, ``h0``, ``input_weight``, ``gate_weight`` and ``gate_bias``; the
    reservoir ``recurrent`` is fixed and must not require grad. Its gradients are not themselves
    differentiable: under ``create_graph=True`` they carry a node that raises ``RuntimeError``
    (naming the alternative) if anything differentiates through them, never a silent zero.

    Memory for the backward, per unit and step (float32): the output (4 bytes, returned anyway) plus
    the candidates and gates (8 bytes). With ``checkpoint=True`` only the output is kept and the
    backward recomputes candidates and gates chunk by chunk (about one more forward pass).

    Shape:
        x: (B, T, I) if batch_first else (T, B, I), any strides; h0: (B, H); input_weight: (H, I)
        recurrent: (H, H) dense, or (nnz,) values on ``spec.recurrent_csr``
        gate_weight: (H, H) dense, (H,) diagonal or (nnz_gate,) sparse; gate_bias: (H,)
        returns the states, (B, T, H) if batch_first else (T, B, H), contiguous
    """
    if recurrent.requires_grad:
        raise ValueError("esgp_layer: expected a fixed reservoir, got recurrent.requires_grad=True")
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (x, h0, input_weight, gate_weight, gate_bias))
    if torch.onnx.is_in_onnx_export():  # ONNX has no CSR product and no custom op: see ops/scan.py
        from .scan import scan_layer

        return scan_layer(x, h0, input_weight, recurrent, gate_weight, gate_bias, spec, batch_first)
    if torch.compiler.is_compiling():  # torch.compile or torch.export: one opaque node per layer
        # An exported program is mostly for inference: it keeps no per-step residuals, and a backward
        # through it still works, recomputing them as with `checkpoint`.
        save = keep and not checkpoint and not torch.compiler.is_exporting()
        recurrent_pattern = list(spec.recurrent_csr) if spec.recurrent_csr is not None else []
        gate_pattern = list(spec.gate_csr) if spec.gate_csr is not None else []
        out, _, _ = _layer_op(
            x,
            h0,
            input_weight,
            recurrent,
            gate_weight,
            gate_bias,
            recurrent_pattern,
            spec.gate,
            gate_pattern,
            spec.compiled,
            batch_first,
            save,
        )
        return out
    outputs = _ESGPLayer.apply(
        x, h0, input_weight, recurrent, gate_weight, gate_bias, spec, batch_first, keep, checkpoint
    )
    return outputs[0]
