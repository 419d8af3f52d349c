"""The ESGP layer over a whole sequence: one autograd node with a hand-written backward through time.

Per-step autograd costs more than the arithmetic at small hidden sizes (the original package spends
most of its time there). Here the forward loop runs without autograd and keeps what the backward
needs (candidates and gates; the states are the output); the backward walks time in reverse with a
fixed, small number of kernels per step and takes the weight gradients as one product per chunk of
steps, not per step.

One step's state is a (B, H) block ("rows") when every product is a dense GEMM, and an (H, B)
block ("cols") when a CSR product is involved: ``W @ h`` then reads a contiguous dense operand (2x
faster than a strided one at H=4096, torch 2.13 CPU). The sequence stays in the caller's layout,
``(B, T, F)`` or ``(T, B, F)``. The candidates and gates kept for the backward are one tensor per
chunk of steps (about ``CHUNK_BYTES``), small enough for the allocator to reuse from one call to the
next (a fresh (T, H, B) tensor costs page faults worth a tanh over it at H=128, B=128, T=784).

Three forms share the loops below: eager, an autograd.Function (:class:`_ESGPLayer`); under
torch.compile and torch.export, one custom op per layer and one for its backward
(``esgp_sparse::esgp_layer``); with ``LayerSpec.compiled`` (``compile=True``), either runs its
steps in compiled chunks (:mod:`esgp_sparse.ops.chunked`). torch.onnx takes :mod:`.scan`'s form.

Reference twin: :func:`esgp_sparse.ops.naive.naive_layer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import torch
from torch import Tensor

from . import chunked
from .sparse import CSR, csr_matmul, csr_matmul_add_, csr_sampled_matmul

GateKind = Literal["dense", "diagonal", "sparse", "lowrank"]
GATES: tuple[GateKind, ...] = ("dense", "diagonal", "sparse", "lowrank")

#: Bytes of one (K, B, H) work tensor: the input projection of K steps, the backward's factors.
CHUNK_BYTES = 4 * 2**20


class Exchange(Protocol):
    """How a layer whose units are split over processes reaches the others' units
    (:class:`esgp_sparse.sharded.ShardedESGP`'s process group).

    ``gather`` takes this process's units, (H_here, ...), to every process's, in the layout the CSR
    patterns' columns index (each process's block padded to ``padded`` rows: (processes * padded,
    ...)); ``reduce_scatter`` takes such a partial sum back to the sum over every process, for this
    process's units. ``padded``, the most units any process holds, also sets the work chunks, so that
    every process runs the same chunks and so the same collectives.
    """

    padded: int

    def gather(self, local: Tensor) -> Tensor: ...

    def reduce_scatter(self, full: Tensor) -> Tensor: ...


class LayerSpec(NamedTuple):
    """The non-tensor description of a layer, fixed for the whole sequence.

    Attributes:
        recurrent_csr: the reservoir's pattern; None when ``recurrent`` is a dense (H, H) matrix.
        gate: ``"dense"`` (gate_weight (H, H)), ``"diagonal"`` (gate_weight (H,)), ``"sparse"``
            (gate_weight holds the values on ``gate_csr``) or ``"lowrank"`` (gate_weight (H, 2r + 1)
            packs U, V and d of ``W_g = U V^T + diag(d)``: :func:`split_lowrank`).
        gate_csr: the sparse gate's pattern, else None.
        compiled: run the steps through Inductor, :data:`esgp_sparse.ops.chunked.STEPS` at a time
            (see :mod:`esgp_sparse.ops.chunked`).
        exchange: for a layer whose units are split over processes: the CSR patterns hold this
            process's rows, their columns index every unit, and each CSR product reads the gathered
            state (its transpose's result is reduce-scattered). Eager only (not with ``compiled``,
            torch.compile or export); None: one process holds every unit.
    """

    recurrent_csr: CSR | None
    gate: GateKind
    gate_csr: CSR | None
    compiled: bool = False
    exchange: Exchange | None = None

    @property
    def rows(self) -> bool:
        """Whether a step's state is a (B, H) block (all products dense) rather than (H, B)."""
        return self.recurrent_csr is None and self.gate != "sparse"


class Operands(NamedTuple):
    """The matrices of one direction (forward or backward) shaped for the step's layout.

    ``recurrent`` and ``gate`` are the right operand of ``x @ M`` in the rows layout, the left one
    of ``M @ x`` in the cols layout, or the values of a CSR matrix; ``gate`` is a broadcastable
    vector for the diagonal gate and the low-rank gate's diagonal; ``bias`` is (H,) for rows and
    (H, 1) for cols. ``factors``, for the low-rank gate only: ``(first, second)`` with the gate's
    product ``(x @ first) @ second`` (rows) or ``second @ (first @ x)`` (cols).
    """

    recurrent: Tensor
    gate: Tensor
    bias: Tensor
    factors: tuple[Tensor, ...] = ()


def split_lowrank(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(U, V, d)`` of a low-rank gate's packed weight (H, 2r + 1): ``weight[:, :r]``,
    ``weight[:, r:2r]`` and ``weight[:, 2r]``, views; the gate matrix is ``U V^T + diag(d)``."""
    r = (weight.shape[1] - 1) // 2
    return weight[:, :r], weight[:, r : 2 * r], weight[:, 2 * r]


def _lowrank_factors(weight: Tensor, rows: bool, backward: bool) -> tuple[Tensor, Tensor]:
    """:class:`Operands`' ``factors`` of ``W_g = U V^T`` (``W_g^T = V U^T`` backward), contiguous."""
    u, v, _ = split_lowrank(weight)
    if backward:
        u, v = v, u
    first, second = (v, u.t()) if rows else (v.t(), u)
    return first.contiguous(), second.contiguous()


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

    factors: tuple[Tensor, ...] = ()
    if spec.gate == "diagonal":
        gate = gate_weight if rows else gate_weight[:, None]
    elif spec.gate == "lowrank":
        diagonal = split_lowrank(gate_weight)[2].contiguous()
        gate = diagonal if rows else diagonal[:, None]
        factors = _lowrank_factors(gate_weight, rows, backward)
    else:
        gate = orient(gate_weight, spec.gate_csr)
    bias = gate_bias if rows else gate_bias[:, None]
    return Operands(orient(recurrent, spec.recurrent_csr), gate, bias, factors)


def _lowrank_add_(acc: Tensor, x: Tensor, factors: tuple[Tensor, ...], rows: bool) -> Tensor:
    """``acc += (x @ first) @ second`` (rows) or ``acc += second @ (first @ x)`` (cols) in place: the
    low-rank gate's product with :class:`Operands`' ``factors``."""
    first, second = factors
    return acc.addmm_(x @ first, second) if rows else acc.addmm_(second, first @ x)


def _csr_product(x: Tensor, weight: Tensor, csr: CSR, exchange: Exchange | None, backward: bool) -> Tensor:
    """``M @ x`` (``M.T @ x`` with ``backward``, ``weight`` then in the transpose's order); with an
    ``exchange``, ``x`` holds this process's units and so does the result."""
    if backward:
        product = csr_matmul(csr.crow_t, csr.col_t, weight, x)
        return product if exchange is None else exchange.reduce_scatter(product)
    return csr_matmul(csr.crow, csr.col, weight, x if exchange is None else exchange.gather(x))


def _matmul_add_(acc: Tensor, x: Tensor, weight: Tensor, csr: CSR | None, spec: LayerSpec, backward: bool) -> Tensor:
    """``acc += x @ M`` (rows) or ``acc += M @ x`` (cols) in place, M dense or CSR; with one
    process's units (no ``spec.exchange``) into ``acc``'s memory, with no (B, H) temporary in float32
    and float64."""
    if csr is not None and spec.exchange is None:
        crow, col = (csr.crow_t, csr.col_t) if backward else (csr.crow, csr.col)
        csr_matmul_add_(acc, crow, col, weight, x)
        return acc
    if csr is not None:
        return acc.add_(_csr_product(x, weight, csr, spec.exchange, backward))
    return acc.addmm_(x, weight) if spec.rows else acc.addmm_(weight, x)


def forward_step(
    u: Tensor, h: Tensor, ops: Operands, spec: LayerSpec, h_out: Tensor, candidate_out: Tensor, gate_out: Tensor
) -> None:
    """One step, written into the ``*_out`` tensors; ``u = W_in x_t`` is overwritten.

    ``u``, ``h`` and the outputs are (B, H) blocks if ``spec.rows`` else (H, B); ``ops`` are the
    forward :class:`Operands`. Writes ``h' -> h_out``, ``h~ -> candidate_out``, ``g -> gate_out``.
    """
    rows = spec.rows
    torch.tanh(_matmul_add_(u, h, ops.recurrent, spec.recurrent_csr, spec, False), out=candidate_out)
    if spec.gate == "diagonal" or spec.gate == "lowrank":
        torch.addcmul(ops.bias, ops.gate, candidate_out, out=gate_out)
        if ops.factors:
            _lowrank_add_(gate_out, candidate_out, ops.factors, rows)
    elif spec.gate_csr is not None:
        _matmul_add_(gate_out.copy_(ops.bias.expand_as(gate_out)), candidate_out, ops.gate, spec.gate_csr, spec, False)
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
    work: tuple[Tensor, Tensor],
) -> Tensor:
    """Reverse of :func:`forward_step`; returns dL/dh (the next carry).

    ``grad_h + carry`` is dL/dh' at this step (``carry`` is overwritten); ``candidate``, ``gate`` and
    ``h_prev`` are the step's h~, g and h. Everything is computed from the step's own blocks while
    they are in cache. ``ops`` are the backward :class:`Operands`. Writes dL/dz (gate
    pre-activation) to ``grad_z_out`` and dL/da (candidate pre-activation) to ``grad_a_out``.
    ``work`` is two blocks of scratch, reused from step to step: in float32 and float64, in one
    process, no step allocates a (B, H) tensor.
    """
    grad = carry.add_(grad_h)  # carry is this loop's own temporary (and keeps its layout)
    # dL/dz = dL/dh' (h~ - h) g (1 - g)
    torch.sub(candidate, h_prev, out=grad_z_out).mul_(grad).mul_(torch.addcmul(gate, gate, gate, value=-1, out=work[0]))
    grad_candidate = torch.mul(grad, gate, out=work[0])
    grad_kept = grad.sub_(grad_candidate)  # dL/dh' (1 - g): the part that skips the cell
    if spec.gate == "diagonal" or spec.gate == "lowrank":
        grad_candidate.addcmul_(ops.gate, grad_z_out)
        if ops.factors:
            _lowrank_add_(grad_candidate, grad_z_out, ops.factors, spec.rows)
    else:
        _matmul_add_(grad_candidate, grad_z_out, ops.gate, spec.gate_csr, spec, True)
    # dL/da = dL/dh~ (1 - h~^2)
    torch.addcmul(
        grad_candidate, torch.mul(grad_candidate, candidate, out=work[1]), candidate, value=-1, out=grad_a_out
    )
    return _matmul_add_(grad_kept, grad_a_out, ops.recurrent, spec.recurrent_csr, spec, True)


def _work_steps(spec: LayerSpec, steps: int, hidden: int, batch: int, element_size: int) -> int:
    """Steps per work chunk: :data:`esgp_sparse.ops.chunked.STEPS` when compiled, else
    :func:`chunk_size`'s (for the most units any process holds where they are split: a chunk's
    collectives must be every process's)."""
    if spec.compiled:
        return chunked.STEPS
    return chunk_size(steps, hidden if spec.exchange is None else spec.exchange.padded, batch, element_size)


def _chunk_fns(spec: LayerSpec, like: Tensor) -> tuple[Callable[..., Any], Callable[..., Any]]:
    key = (like.dtype, like.device.type, spec.rows, spec.gate, spec.recurrent_csr is not None)
    return chunked.compiled(chunked.forward_chunk, key), chunked.compiled(chunked.backward_chunk, key)


def _chunk_operands(ops: Operands, spec: LayerSpec, backward: bool) -> tuple[Any, ...]:
    """``ops`` as :func:`esgp_sparse.ops.chunked.forward_chunk` and ``backward_chunk`` take them."""

    def pattern(csr: CSR | None) -> list[Tensor]:
        return [] if csr is None else ([csr.crow_t, csr.col_t] if backward else [csr.crow, csr.col])

    if ops.factors:  # the rank is the model's: else Dynamo may give it the batch size's symbol (both 16)
        first, second = ops.factors
        torch._dynamo.mark_static(first, 1 if spec.rows else 0)
        torch._dynamo.mark_static(second, 0 if spec.rows else 1)
    return ops.recurrent, pattern(spec.recurrent_csr), ops.gate, pattern(spec.gate_csr), list(ops.factors)


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


def _time_batch(x: Tensor, batch_first: bool) -> tuple[int, int]:
    """(T, B) of an input (B, T, I) if batch_first else (T, B, I)."""
    return (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])


def _block(spec: LayerSpec, batch: int, hidden: int) -> tuple[int, int]:
    return (batch, hidden) if spec.rows else (hidden, batch)


def _chunks(steps: int, k: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` of each work chunk; the forward and the backward share them, so that a
    chunk of residuals written by one is read whole by the other."""
    return [(start, min(start + k, steps)) for start in range(0, steps, k)]


#: Every kept step block starts at a multiple of this many bytes, as a block of its own would: MKL's
#: GEMM may round differently for operands aligned differently, and the candidates kept for the
#: backward, the scratch block used without one and the recomputed ones must give the same states.
ALIGN_BYTES = 64


def _rows(buffer: Tensor, n: int) -> Tensor:
    """A per-chunk buffer's first ``n`` rows: the buffer itself for a whole chunk (a compiled chunk's
    graph depends on whether its input is a view, and of what)."""
    return buffer if n == buffer.shape[0] else buffer[:n]


def _step_storage(steps: int, block: tuple[int, int], like: Tensor) -> Tensor:
    """Room for ``steps`` blocks, one per row of a (steps, stride) tensor, each aligned."""
    unit = max(1, ALIGN_BYTES // like.element_size())
    numel = block[0] * block[1]
    storage = like.new_empty((steps, -(-numel // unit) * unit))
    storage[:, numel:].zero_()  # the padding, never read, is not left uninitialised either
    return storage


def _step_blocks(storage: Tensor, block: tuple[int, int]) -> Tensor:
    """The (steps, *block) view of :func:`_step_storage`'s rows (contiguous when unpadded)."""
    return storage[:, : block[0] * block[1]].view(storage.shape[0], *block)


def _forward(
    x: Tensor,
    h0: Tensor,
    input_weight: Tensor,
    recurrent: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    spec: LayerSpec,
    batch_first: bool,
    candidates: Sequence[Tensor],
    gates: Sequence[Tensor],
) -> Tensor:
    """The states (B, T, H) or (T, B, H). With one :func:`_step_storage` per chunk in
    ``candidates`` and ``gates``, every step's candidate and gate block are kept there; with none,
    they go to a scratch block."""
    # x is (B, T, I) if batch_first else (T, B, I); `seq` views it time-major either way.
    seq = x.transpose(0, 1) if batch_first else x
    steps, batch, _ = seq.shape
    hidden = input_weight.shape[0]
    rows = spec.rows
    ops = _operands(recurrent, gate_weight, gate_bias, spec, backward=False)
    out = x.new_empty((batch, steps, hidden) if batch_first else (steps, batch, hidden))
    out_seq = out.transpose(0, 1) if batch_first else out
    k = _work_steps(spec, steps, hidden, batch, x.element_size())
    block = _block(spec, batch, hidden)
    projection = x.new_empty((k, *block))  # reused: the input projection of a chunk
    out_block = out_seq if rows else out_seq.transpose(1, 2)  # (T, *block): the step layout
    out_steps = out_block.unbind(0)
    # In the rows layout each step writes its state straight into the output and the next reads it
    # there (a GEMM takes any row stride). In the cols layout (a transposed view of the output) the
    # state ping-pongs between two contiguous buffers and is copied out.
    direct = rows
    buffers: tuple[Tensor, ...] = () if direct else (x.new_empty(block), x.new_empty(block))
    h = h0 if direct else buffers[1].copy_(h0.t())
    scratch: tuple[Tensor, ...] = () if candidates else (x.new_empty(block), x.new_empty(block))
    forward_chunk = _chunk_fns(spec, x)[0] if spec.compiled else None
    for chunk, (start, stop) in enumerate(_chunks(steps, k)):
        # The whole buffer for a whole chunk: a compiled chunk's graph depends on whether its input is
        # a view (and of what).
        inputs = _project(seq[start:stop], input_weight, rows, out=_rows(projection, stop - start))
        kept_blocks = (
            (_step_blocks(candidates[chunk], block), _step_blocks(gates[chunk], block)) if candidates else None
        )
        if forward_chunk is not None and stop - start == k:  # a whole compiled chunk
            torch._dynamo.mark_static(inputs, 0)  # else a batch size equal to k would share its symbol
            states, chunk_candidates, chunk_gates = forward_chunk(
                h.clone(memory_format=torch.contiguous_format),  # never a view: see _backward
                inputs,
                *_chunk_operands(ops, spec, False),
                ops.bias,
                spec.gate,
                rows,
            )
            out_block[start:stop].copy_(states)
            if kept_blocks is not None:
                kept_blocks[0].copy_(chunk_candidates)
                kept_blocks[1].copy_(chunk_gates)
            h = out_steps[stop - 1] if direct else buffers[(stop - 1) % 2].copy_(states[-1])
            continue
        kept = (kept_blocks[0].unbind(0), kept_blocks[1].unbind(0)) if kept_blocks is not None else None
        for i, u in enumerate(inputs.unbind(0)):
            t = start + i
            candidate, gate = (kept[0][i], kept[1][i]) if kept is not None else (scratch[0], scratch[1])
            h_next = out_steps[t] if direct else buffers[t % 2]
            forward_step(u, h, ops, spec, h_next, candidate, gate)
            if not direct:
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
    from dL/d(states). ``candidates`` and ``gates`` are :func:`_forward`'s chunks; without them
    (checkpoint) the backward recomputes them chunk by chunk from the states."""
    rows = spec.rows
    per_step = len(candidates) > 0
    if batch_first:
        seq, out_seq, grad_seq = x.transpose(0, 1), out.transpose(0, 1), grad_out.transpose(0, 1)
    else:
        seq, out_seq, grad_seq = x, out, grad_out
    steps, batch, hidden = out_seq.shape
    ops = _operands(recurrent, gate_weight, gate_bias, spec, backward=True)
    forward_ops = None if per_step else _operands(recurrent, gate_weight, gate_bias, spec, backward=False)
    step_view = (lambda a: a) if rows else (lambda a: a.transpose(-1, -2))  # (.., B, H) -> step layout
    batch_dim = 1 if rows else 2  # of a (K, ., .) chunk in the step layout
    grad_block, state_block = step_view(grad_seq), step_view(out_seq)  # (T, *block)
    grad_steps, state_steps = grad_block.unbind(0), state_block.unbind(0)

    grad_x = torch.empty_like(x) if input_grad else None
    grad_x_seq = None if grad_x is None else (grad_x.transpose(0, 1) if batch_first else grad_x)
    grad_input_weight = torch.zeros_like(input_weight)
    grad_gate_weight = torch.zeros_like(gate_weight)
    grad_gate_bias = torch.zeros_like(gate_bias)
    h0_step = step_view(h0)
    carry = torch.zeros_like(h0_step, memory_format=torch.contiguous_format)
    k = _work_steps(spec, steps, hidden, batch, out.element_size())
    # Reused per-chunk buffers: dL/dz and dL/da, for the chunk's weight-gradient products.
    block = _block(spec, batch, hidden)
    grad_z_buf, grad_a_buf = out.new_empty((k, *block)), out.new_empty((k, *block))
    work = (out.new_empty(block), out.new_empty(block))  # backward_step's scratch
    room = None if per_step else _RecomputeRoom(k, block, out)
    backward_chunk = _chunk_fns(spec, out)[1] if spec.compiled else None
    for chunk, (start, stop) in reversed(list(enumerate(_chunks(steps, k)))):
        grad_z, grad_a = grad_z_buf[: stop - start], grad_a_buf[: stop - start]
        if per_step:
            c_storage, g_storage = candidates[chunk], gates[chunk]
        elif forward_ops is not None and room is not None:  # checkpointed: recompute them
            c_storage, g_storage = _recompute(
                seq[start:stop], start, h0_step, out_seq, input_weight, forward_ops, spec, room
            )
        else:
            raise RuntimeError("esgp_layer: neither saved nor recomputable candidates")
        c, g = _step_blocks(c_storage, block), _step_blocks(g_storage, block)
        if backward_chunk is not None and stop - start == k:  # a whole compiled chunk
            # Dynamo guards on whether an input is a view (and of what): `before` is made fresh for
            # every chunk alike. `grads` is a view in the time-major rows layout and a copy otherwise,
            # and the op path's residuals are views where the eager ones are not: each such mix
            # compiles the chunk once more (within Dynamo's limit; past it, the chunk runs eagerly).
            if start > 0:
                before = state_block[start - 1 : stop - 1].clone(memory_format=torch.contiguous_format)
            else:
                before = torch.cat([h0_step[None], state_block[: k - 1]])
            grads = grad_block[start:stop].contiguous()
            for chunk_tensor in (grads, c_storage, g_storage, before):
                torch._dynamo.mark_static(chunk_tensor, 0)  # as in _forward
            carry, grad_z, grad_a = backward_chunk(
                carry if carry._base is None else carry.clone(),
                grads,
                c_storage,  # the storage, not the view c: Dynamo guards on an input's view base
                g_storage,
                before,
                *_chunk_operands(ops, spec, True),
                spec.gate,
                rows,
            )
        else:
            step_c, step_g, grad_z_steps, grad_a_steps = c.unbind(0), g.unbind(0), grad_z.unbind(0), grad_a.unbind(0)
            for t in range(stop - 1, start - 1, -1):
                i = t - start
                h_prev = state_steps[t - 1] if t > 0 else h0_step
                carry = backward_step(
                    grad_steps[t],
                    carry,
                    step_c[i],
                    step_g[i],
                    h_prev,
                    ops,
                    spec,
                    grad_z_steps[i],
                    grad_a_steps[i],
                    work,
                )
        x_chunk = seq[start:stop]  # (K, B, I)
        if grad_x_seq is not None:
            grad_x_seq[start:stop] = torch.matmul(step_view(grad_a), input_weight)
        grad_input_weight += _contract_steps(grad_a, x_chunk, batch_dim, 1)
        scratch = grad_a  # used up: its room takes the products below
        if spec.gate == "dense":
            grad_gate_weight += _contract_steps(grad_z, c, batch_dim, batch_dim)
        elif spec.gate == "diagonal":
            grad_gate_weight += torch.mul(grad_z, c, out=scratch).sum((0, batch_dim))
        elif spec.gate == "lowrank":
            _add_lowrank_grad(grad_gate_weight, gate_weight, grad_z, c, rows, scratch)
        elif spec.gate_csr is not None:
            rows_zb = grad_z.permute(1, 0, 2).reshape(hidden, -1)  # (H, K*B)
            if spec.exchange is None:
                cols_bc = c.permute(0, 2, 1).reshape(-1, hidden)  # (K*B, H)
            else:  # every unit's candidates (K*B, H_all), gathered again rather than kept
                whole = spec.exchange.gather(c.transpose(0, 1))  # (H_all, K, B)
                cols_bc = whole.permute(1, 2, 0).reshape(-1, whole.shape[0])
            grad_gate_weight += csr_sampled_matmul(spec.gate_csr.crow, spec.gate_csr.col, rows_zb, cols_bc)
        else:
            raise ValueError("esgp_layer: expected spec.gate_csr for a sparse gate, got None")
        grad_gate_bias += grad_z.sum((0, batch_dim))
    grad_h0 = carry if rows else carry.t()
    return grad_x, grad_h0, grad_input_weight, grad_gate_weight, grad_gate_bias


def _contract_steps(a: Tensor, b: Tensor, a_dim: int, b_dim: int) -> Tensor:
    """The sum over a chunk's steps (dim 0 of both) and ``a_dim`` / ``b_dim`` of ``a`` times ``b``:
    ``torch.tensordot`` on three-dimensional chunks. With one step a chunk (B x H past
    ``CHUNK_BYTES``) it contracts the step itself: tensordot would sum the size-1 dims out into a copy
    of each operand first, a fresh (B, H) tensor every step."""
    if a.shape[0] == 1 and b.shape[0] == 1:
        return torch.tensordot(a[0], b[0], dims=([a_dim - 1], [b_dim - 1]))
    return torch.tensordot(a, b, dims=([0, a_dim], [0, b_dim]))


def _add_lowrank_grad(
    grad_weight: Tensor, weight: Tensor, grad_z: Tensor, candidates: Tensor, rows: bool, scratch: Tensor
) -> None:
    """Add a chunk's share to the packed low-rank gate weight's gradient: with z = U V^T c + d c,
    dU = dz (V^T c)^T, dV = c (U^T dz)^T and dd = dz c, summed over the chunk's steps and batch
    (``grad_z``, ``candidates`` and the free ``scratch``: (K, *block))."""
    u, v, _ = split_lowrank(weight)
    grad_u, grad_v, grad_d = split_lowrank(grad_weight)
    if rows:  # (K, B, H)
        grad_u += _contract_steps(grad_z, candidates @ v, 1, 1)
        grad_v += _contract_steps(candidates, grad_z @ u, 1, 1)
    else:  # (K, H, B)
        grad_u += _contract_steps(grad_z, torch.matmul(v.t(), candidates), 2, 2)
        grad_v += _contract_steps(candidates, torch.matmul(u.t(), grad_z), 2, 2)
    grad_d += torch.mul(grad_z, candidates, out=scratch).sum((0, 1 if rows else 2))


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
    """The eager layer. Outputs: the states, then (with ``keep`` and without ``checkpoint``) the
    candidates and gates, one (K, *block) tensor per chunk of steps, which the backward needs and
    nobody differentiates: blocks of about ``CHUNK_BYTES`` are reused by the allocator from one call
    to the next, where one fresh (T, H, B) block costs page faults worth a tanh over it (H=128,
    B=128, T=784). Forward and ``setup_context`` apart, so that torch.func (``grad``,
    ``functional_call``) can run it."""

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
        steps, batch = _time_batch(x, batch_first)
        hidden = input_weight.shape[0]
        block = _block(spec, batch, hidden)
        # `keep`: a backward will follow. Without one (or with `checkpoint`, whose backward recomputes
        # them), nothing is kept.
        k = _work_steps(spec, steps, hidden, batch, x.element_size())
        chunks = _chunks(steps, k) if keep and not checkpoint else []
        candidates = [_step_storage(stop - start, block, x) for start, stop in chunks]
        gates = [_step_storage(stop - start, block, x) for start, stop in chunks]
        out = _forward(x, h0, input_weight, recurrent, gate_weight, gate_bias, spec, batch_first, candidates, gates)
        return (out, *candidates, *gates)

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
    """The states, and (with ``save``) every step's candidates and gates, one
    :func:`_step_storage` row per step."""
    spec = _spec_from(recurrent_pattern, gate, gate_pattern, compiled)
    steps, batch = _time_batch(x, batch_first)
    hidden = input_weight.shape[0]
    if not save:
        out = _forward(x, h0, input_weight, recurrent, gate_weight, gate_bias, spec, batch_first, [], [])
        return out, x.new_empty(0), x.new_empty(0)
    block = _block(spec, batch, hidden)
    candidates, gates = _step_storage(steps, block, x), _step_storage(steps, block, x)
    k = _work_steps(spec, steps, hidden, batch, x.element_size())
    args = (x, h0, input_weight, recurrent, gate_weight, gate_bias, spec, batch_first)
    out = _forward(*args, candidates.split(k), gates.split(k))
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
    steps, batch = _time_batch(x, batch_first)
    hidden = input_weight.shape[0]
    out = x.new_empty((batch, steps, hidden) if batch_first else (steps, batch, hidden))
    if not save:
        return out, x.new_empty(0), x.new_empty(0)
    residual = _step_storage(steps, _block(spec, batch, hidden), x)
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
    steps, batch = _time_batch(x, batch_first)
    k = _work_steps(spec, steps, input_weight.shape[0], batch, x.element_size())
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
        candidates.split(k) if saved else (),
        gates.split(k) if saved else (),
        spec,
        batch_first,
        input_grad,
    )
    grad_h0, *weights = grads
    # Outputs laid out as the fake says (Inductor asserts it): grad_h0 is a transposed carry on the
    # cols layout.
    return (x.new_empty(0) if grad_x is None else grad_x, grad_h0.contiguous(), *weights)  # type: ignore[return-value]


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
        h0.new_empty(h0.shape),  # contiguous, as the op returns it
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


class _RecomputeRoom:
    """The checkpointed backward's buffers for :func:`_recompute`, made once and reused by every
    chunk (the last, shorter one uses their first rows)."""

    def __init__(self, k: int, block: tuple[int, int], like: Tensor) -> None:
        self.block = block
        self.projection = like.new_empty((k, *block))
        self.candidates, self.gates = _step_storage(k, block, like), _step_storage(k, block, like)
        self.state, self.prev = like.new_empty(block), like.new_empty(block)


def _recompute(
    x_chunk: Tensor,
    start: int,
    h0: Tensor,
    out_seq: Tensor,
    input_weight: Tensor,
    ops: Operands,
    spec: LayerSpec,
    room: _RecomputeRoom,
) -> tuple[Tensor, Tensor]:
    """Candidates and gates of the K steps from ``start`` again (as two :func:`_step_storage`, in
    ``room``), from their inputs (K, B, I) and the saved states. The states are known, so the steps
    are independent; each runs the forward's eager kernel, which makes the results equal to an eager
    forward's (under ``compile=True`` the forward ran Inductor's fused chunks: equal up to rounding)."""
    k = x_chunk.shape[0]
    inputs = _project(x_chunk, input_weight, spec.rows, out=_rows(room.projection, k))
    c_storage, g_storage = _rows(room.candidates, k), _rows(room.gates, k)
    candidates, gates = _step_blocks(c_storage, room.block), _step_blocks(g_storage, room.block)
    for i, u in enumerate(inputs.unbind(0)):
        t = start + i
        h_prev = (out_seq[t - 1] if spec.rows else out_seq[t - 1].t()) if t > 0 else h0
        # As in _forward's eager steps: the rows layout reads the state where it was written.
        forward_step(
            u, h_prev if spec.rows else room.prev.copy_(h_prev), ops, spec, room.state, candidates[i], gates[i]
        )
    return c_storage, g_storage


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
        gate_weight: (H, H) dense, (H,) diagonal, (nnz_gate,) sparse or (H, 2r + 1) low-rank; gate_bias: (H,)
        returns the states, (B, T, H) if batch_first else (T, B, H), contiguous
    """
    if recurrent.requires_grad:
        raise ValueError("esgp_layer: expected a fixed reservoir, got recurrent.requires_grad=True")
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (x, h0, input_weight, gate_weight, gate_bias))
    if spec.exchange is not None and spec.gate not in ("diagonal", "sparse"):
        # The dense and low-rank gates' products would read this process's candidates alone.
        raise ValueError(
            "esgp_layer: a layer split over processes (spec.exchange) takes gate 'diagonal' or 'sparse', "
            f"got {spec.gate!r}"
        )
    if spec.exchange is not None and (spec.compiled or torch.compiler.is_compiling()):
        raise RuntimeError(
            "esgp_layer: a layer split over processes (spec.exchange) runs eagerly, not in compiled chunks, "
            "torch.compile, export or ONNX (call it from a function under torch.compiler.disable)"
        )
    if torch.onnx.is_in_onnx_export():  # ONNX has no CSR product and no custom op: see ops/scan.py
        if not torch.compiler.is_exporting():
            raise RuntimeError(
                "esgp_layer: the TorchScript-based ONNX exporter (torch.onnx.export(..., dynamo=False)) is not "
                "supported; export with torch.onnx.export(model, args, dynamo=True)"
            )
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
