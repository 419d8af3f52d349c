from __future__ import annotations

import pytest
import torch
from _testing import TOL, cuda, pattern, reservoir_tensors
from torch.utils._python_dispatch import TorchDispatchMode

import esgp_sparse.ops.chunked as chunked
import esgp_sparse.ops.sequence as sequence
from esgp_sparse.ops import (
    CSR,
    LayerSpec,
    csr_to_dense,
    csr_transpose,
    esgp_cell,
    esgp_layer,
    lowrank_matrix,
    naive_cell,
    naive_layer,
)

T, B, I, H = 11, 3, 4, 29
RANK = 3  # the low-rank gate's


def problem(gate: str, path: str, dtype=torch.float64, device="cpu"):
    """Inputs and parameters of one layer plus the dense matrices the references take."""
    torch.manual_seed(0)
    crow, col, values, dense = reservoir_tensors(H, 0.2, seed=1, dtype=dtype, device=device)
    gate_csr = pattern(H, 0.2, seed=2, device=device)
    make = lambda *shape: torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)  # noqa: E731
    shapes = {"dense": (H, H), "diagonal": (H,), "sparse": (gate_csr.col.numel(),), "lowrank": (H, 2 * RANK + 1)}
    gate_weight = make(*shapes[gate])
    p = dict(x=make(T, B, I), h0=make(B, H), input_weight=make(H, I), gate_weight=gate_weight, gate_bias=make(H))
    if path == "sparse":
        recurrent, recurrent_csr = values, pattern(H, 0.2, seed=1, device=device)
    else:
        recurrent, recurrent_csr = dense, None
    spec = LayerSpec(recurrent_csr, gate, gate_csr if gate == "sparse" else None)
    gate_dense = {
        "dense": lambda w: w,
        "diagonal": torch.diag,
        "sparse": lambda w: csr_to_dense(gate_csr.crow, gate_csr.col, w, H),
        "lowrank": lowrank_matrix,
    }[gate](gate_weight)
    return p, recurrent, spec, dense, gate_dense


GATES_PATHS = [(g, p) for g in ("dense", "diagonal", "sparse", "lowrank") for p in ("dense", "sparse")]


@pytest.mark.parametrize("chunk", [4, 1], ids=["4-step-chunks", "1-step-chunks"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=[f"gate-{g}-path-{p}" for g, p in GATES_PATHS])
def test_layer_equals_naive_outputs_and_all_gradients(gate, path, batch_first, chunk, monkeypatch):
    # 4 steps a chunk: 3 chunks, a ragged one; 1 step a chunk, as wherever B x H passes CHUNK_BYTES
    monkeypatch.setattr(sequence, "CHUNK_BYTES", chunk * H * B * 8)
    p, recurrent, spec, dense, gate_dense = problem(gate, path)
    ref = naive_layer(p["x"], p["h0"], p["input_weight"], dense, gate_dense, p["gate_bias"])
    x = p["x"].transpose(0, 1) if batch_first else p["x"]
    out = esgp_layer(x, p["h0"], p["input_weight"], recurrent, p["gate_weight"], p["gate_bias"], spec, batch_first)
    out = out.transpose(0, 1) if batch_first else out
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    grad = torch.randn_like(ref)
    inputs = list(p.values())
    got = torch.autograd.grad(out, inputs, grad, retain_graph=True)
    want = torch.autograd.grad(ref, inputs, grad)
    for name, g, w in zip(p, got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float64], msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.mark.parametrize("chunk", [4, 1], ids=["4-step-chunks", "1-step-chunks"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=[f"gate-{g}-path-{p}" for g, p in GATES_PATHS])
def test_checkpoint_recomputes_the_same_gradients(gate, path, batch_first, chunk, monkeypatch):
    monkeypatch.setattr(sequence, "CHUNK_BYTES", chunk * H * B * 8)
    p, recurrent, spec, *_ = problem(gate, path)
    x = p["x"].transpose(0, 1) if batch_first else p["x"]
    args = (x, p["h0"], p["input_weight"], recurrent, p["gate_weight"], p["gate_bias"], spec, batch_first)
    out, out_checkpointed = esgp_layer(*args), esgp_layer(*args, checkpoint=True)
    assert torch.equal(out, out_checkpointed)
    assert len(out_checkpointed.grad_fn.saved_tensors) == 7  # inputs and the states, nothing per step
    assert len(out.grad_fn.saved_tensors) == 7 + 2 * len(range(0, T, chunk))  # candidates, gates per chunk
    grad = torch.randn_like(out)
    inputs = list(p.values())
    for g, w in zip(
        torch.autograd.grad(out_checkpointed, inputs, grad), torch.autograd.grad(out, inputs, grad), strict=True
    ):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=[f"gate-{g}-path-{p}" for g, p in GATES_PATHS])
def test_cell_equals_naive_outputs_and_gradients(gate, path):
    p, recurrent, spec, dense, gate_dense = problem(gate, path)
    x = p["x"][0]
    out = esgp_cell(x, p["h0"], p["input_weight"], recurrent, p["gate_weight"], p["gate_bias"], spec)
    ref = naive_cell(x, p["h0"], p["input_weight"], dense, gate_dense, p["gate_bias"])
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    inputs = [p["x"], p["h0"], p["input_weight"], p["gate_weight"], p["gate_bias"]]
    got = torch.autograd.grad(out.square().sum(), inputs, retain_graph=True)
    want = torch.autograd.grad(ref.square().sum(), inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


def test_layer_float32_matches_float64_reference():
    p, recurrent, spec, dense, gate_dense = problem("dense", "sparse")
    ref = naive_layer(p["x"], p["h0"], p["input_weight"], dense, gate_dense, p["gate_bias"])
    f32 = {k: v.detach().float() for k, v in p.items()}
    out = esgp_layer(
        f32["x"], f32["h0"], f32["input_weight"], recurrent.float(), f32["gate_weight"], f32["gate_bias"], spec
    )
    torch.testing.assert_close(out.double(), ref.detach(), **TOL[torch.float32])


@pytest.mark.parametrize("gate, path", [("sparse", "sparse"), ("lowrank", "sparse"), ("lowrank", "dense")])
def test_layer_gradcheck(gate, path):
    p, recurrent, spec, *_ = problem(gate, path)
    small = {k: v.detach()[:4].clone().requires_grad_() if k == "x" else v for k, v in p.items()}
    assert torch.autograd.gradcheck(
        lambda x, h0, w, gw, gb: esgp_layer(x, h0, w, recurrent, gw, gb, spec), tuple(small.values())
    )


def test_fixed_reservoir_is_enforced():
    p, recurrent, spec, *_ = problem("dense", "dense")
    with pytest.raises(ValueError, match="expected a fixed reservoir, got recurrent.requires_grad=True"):
        esgp_layer(
            p["x"], p["h0"], p["input_weight"], recurrent.requires_grad_(), p["gate_weight"], p["gate_bias"], spec
        )


class PaddedExchange:
    """One process's units in a gathered buffer padded with 3 zero rows (as a rank's block is padded
    to the largest one's), counting the collectives a layer asks for. ``padded`` says another
    process holds twice the units: the work chunks follow it (2 steps, not 4)."""

    pad = 3
    padded = 2 * H

    def __init__(self) -> None:
        self.calls = {"gather": 0, "reduce_scatter": 0}

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        self.calls["gather"] += 1
        return torch.cat([local, local.new_zeros((self.pad, *local.shape[1:]))])

    def reduce_scatter(self, full: torch.Tensor) -> torch.Tensor:
        self.calls["reduce_scatter"] += 1
        assert full.shape[0] == H + self.pad
        return full[:H]


@pytest.mark.parametrize("checkpoint", [False, True], ids=["kept", "checkpoint"])
@pytest.mark.parametrize("gate", ["diagonal", "sparse"])
def test_layer_with_an_exchange_reads_the_gathered_states(gate, checkpoint, monkeypatch):
    """The hooks ShardedESGP passes (LayerSpec.exchange): every CSR product reads the gathered
    state and reduce-scatters its transpose's result; the same numbers as without them."""
    monkeypatch.setattr(sequence, "CHUNK_BYTES", 4 * H * B * 8)
    p, recurrent, spec, *_ = problem(gate, "sparse")

    def padded(csr: CSR) -> CSR:  # the transpose over the gathered buffer's rows
        return CSR(csr.crow, csr.col, *csr_transpose(csr.crow, csr.col, H + PaddedExchange.pad))

    exchange = PaddedExchange()
    gate_csr = padded(spec.gate_csr) if spec.gate_csr is not None else None
    exchanged = LayerSpec(padded(spec.recurrent_csr), gate, gate_csr, exchange=exchange)
    args = (p["x"], p["h0"], p["input_weight"], recurrent, p["gate_weight"], p["gate_bias"])
    out, want = esgp_layer(*args, exchanged, checkpoint=checkpoint), esgp_layer(*args, spec)
    torch.testing.assert_close(out, want, **TOL[torch.float64])
    grad = torch.randn_like(out)
    inputs = list(p.values())
    for g, w in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(want, inputs, grad), strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float64])
    products = 2 if gate == "sparse" else 1  # recurrent, and the sparse gate's
    chunks = len(range(0, T, 2))
    gathers = products * T * (2 if checkpoint else 1) + (chunks if gate == "sparse" else 0)
    assert exchange.calls == {"gather": gathers, "reduce_scatter": products * T}
    exchanged = exchanged._replace(compiled=True)
    with pytest.raises(RuntimeError, match=r"split over processes \(spec.exchange\) runs eagerly"):
        esgp_layer(*args, exchanged)
    with pytest.raises(ValueError, match=r"esgp_cell: expected a layer of one process \(spec.exchange=None\)"):
        esgp_cell(p["x"][0], p["h0"], p["input_weight"], recurrent, p["gate_weight"], p["gate_bias"], exchanged)


@pytest.mark.parametrize("gate", ["dense", "lowrank"])
def test_layer_with_an_exchange_refuses_the_gates_that_read_every_unit(gate):
    p, recurrent, spec, *_ = problem(gate, "sparse")
    exchanged = spec._replace(exchange=PaddedExchange())
    args = (p["x"], p["h0"], p["input_weight"], recurrent, p["gate_weight"], p["gate_bias"], exchanged)
    with pytest.raises(ValueError, match=rf"takes gate 'diagonal' or 'sparse', got '{gate}'"):
        esgp_layer(*args)


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else ()
    return [t for item in items for t in _tensors(item)]


class _FreshBlocks(TorchDispatchMode):
    """Counts the ops that return a fresh tensor (in no input's memory) of ``numel`` elements. It sees
    the ops the layer's kernels call, not what an op allocates inside (a custom op is one call)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            self.count += t.numel() == self.numel and t.untyped_storage().data_ptr() not in inputs
        return out


@pytest.mark.parametrize("checkpoint", [False, True], ids=["kept", "checkpoint"])
@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=[f"gate-{g}-path-{p}" for g, p in GATES_PATHS])
def test_steps_allocate_no_state_sized_tensor(gate, path, checkpoint, monkeypatch):
    # With glibc a fresh (B, H) tensor every step is a fresh mmap, faulted in page by page, once it
    # reaches 32 MiB (step_allocation_65536.txt: 5-13 a step here before they were reused). One step
    # a chunk, as wherever B x H passes CHUNK_BYTES.
    batch = 2  # a (B, H) tensor's size is no other's here (the low-rank gate's (H, r) is H x B)
    monkeypatch.setattr(sequence, "CHUNK_BYTES", batch * H * 8)
    counts: dict[str, list[int]] = {"_forward": [], "_backward": []}
    for name, kernel in [("_forward", sequence._forward), ("_backward", sequence._backward)]:

        def counted(*args, kernel=kernel, name=name, **kwargs):
            with _FreshBlocks(batch * H) as mode:
                result = kernel(*args, **kwargs)
            counts[name].append(mode.count)
            return result

        monkeypatch.setattr(sequence, name, counted)
    p, recurrent, spec, *_ = problem(gate, path)
    for steps in (5, 10):
        args = (
            p["x"][:steps, :batch],
            p["h0"][:batch],
            p["input_weight"],
            recurrent,
            p["gate_weight"],
            p["gate_bias"],
            spec,
        )
        esgp_layer(*args, checkpoint=checkpoint).sum().backward()
    backward, forward = counts["_backward"], counts["_forward"]
    assert backward[0] > 0  # it sees what it counts: the backward's reused blocks at least
    assert backward[0] == backward[1], f"the backward: {backward[1] - backward[0]} more (B, H) tensors for 5 more steps"
    # Kept, each step's candidate and gate are new memory (kept for the backward), in rows padded to
    # 64 bytes: 64 elements here, so not counted.
    assert forward[0] == forward[1], f"the forward: {forward[1] - forward[0]} more (B, H) tensors for 5 more steps"


def test_chunk_size_bounds():
    assert sequence.chunk_size(1000, 128, 128, 4) == sequence.CHUNK_BYTES // (128 * 128 * 4)
    assert sequence.chunk_size(5, 16, 2, 4) == 5
    assert sequence.chunk_size(100, 10**6, 64, 4) == 1


@cuda
@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=[f"gate-{g}-path-{p}" for g, p in GATES_PATHS])
def test_layer_on_cuda_matches_cpu(gate, path):
    results = []
    for device in ("cpu", "cuda"):
        p, recurrent, spec, *_ = problem(gate, path, device=device)
        out = esgp_layer(p["x"], p["h0"], p["input_weight"], recurrent, p["gate_weight"], p["gate_bias"], spec)
        results.append([out, *torch.autograd.grad(out.square().sum(), list(p.values()))])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-7, atol=1e-9)


def run_layer_op(p, recurrent, spec, save, batch_first=False):
    """The layer as torch.compile and torch.export see it: the ``esgp_sparse::esgp_layer`` op."""
    x = p["x"].transpose(0, 1) if batch_first else p["x"]
    args = (x, p["h0"], p["input_weight"], recurrent, p["gate_weight"], p["gate_bias"])
    patterns = [list(csr) if csr is not None else [] for csr in (spec.recurrent_csr, spec.gate_csr)]
    return args, (patterns[0], spec.gate, patterns[1], spec.compiled, batch_first, save)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager-steps", "compiled-chunks"])
@pytest.mark.parametrize("save", [True, False], ids=["residuals-kept", "recomputed"])
@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=[f"gate-{g}-path-{p}" for g, p in GATES_PATHS])
def test_layer_op_equals_naive_outputs_and_all_gradients(gate, path, save, compiled, monkeypatch):
    """The custom op that torch.compile and torch.export capture, with and without its residuals
    (without them the backward recomputes them, as with checkpoint), its steps eager or in compiled
    chunks (traced with aot_eager), against the naive twin."""
    monkeypatch.setattr(sequence, "CHUNK_BYTES", 4 * H * B * 8)
    monkeypatch.setattr(chunked, "BACKEND", "aot_eager")
    monkeypatch.setattr(chunked, "STEPS", 4)
    p, recurrent, spec, dense, gate_dense = problem(gate, path)
    spec = spec._replace(compiled=compiled)
    ref = naive_layer(p["x"], p["h0"], p["input_weight"], dense, gate_dense, p["gate_bias"])
    args, rest = run_layer_op(p, recurrent, spec, save, batch_first=True)
    out, candidates, gates = torch.ops.esgp_sparse.esgp_layer(*args, *rest)
    assert candidates.shape[0] == (T if save else 0)
    torch.testing.assert_close(out.transpose(0, 1), ref, **TOL[torch.float64])
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out.transpose(0, 1), list(p.values()), grad)
    want = torch.autograd.grad(ref, list(p.values()), grad)
    for name, g, w in zip(p, got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float64], msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.mark.parametrize(
    "gate, path", [("dense", "dense"), ("sparse", "sparse"), ("lowrank", "dense")], ids=["rows", "cols", "rows-lowrank"]
)
def test_layer_op_registrations(gate, path):
    """torch.library.opcheck of both ops, forward with and without residuals, on both step layouts:
    schema, fake (meta) shapes and strides, autograd registration, AOT dispatch."""
    p, recurrent, spec, *_ = problem(gate, path)
    for save in (True, False):
        args, rest = run_layer_op(p, recurrent, spec, save=save)
        torch.library.opcheck(torch.ops.esgp_sparse.esgp_layer.default, (*args, *rest))
        with torch.no_grad():
            out, candidates, gates = torch.ops.esgp_sparse.esgp_layer(*args, *rest)
        patterns, gate_kind, gate_patterns, compiled, batch_first, _ = rest
        backward_args = (torch.randn_like(out), *args, out, candidates, gates)
        backward_rest = (patterns, gate_kind, gate_patterns, compiled, batch_first, True)
        torch.library.opcheck(
            torch.ops.esgp_sparse.esgp_layer_backward.default,
            tuple(a.detach() for a in backward_args) + backward_rest,
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )


def count_chunk_calls(monkeypatch) -> dict:
    """Counts the calls of the compiled chunk functions that ``chunked.compiled`` hands out."""
    calls: dict = {}
    compile_chunk = chunked.compiled

    def counting(fn, key):
        compiled = compile_chunk(fn, key)

        def run(*args):
            calls[fn.__name__] = calls.get(fn.__name__, 0) + 1
            return compiled(*args)

        return run

    monkeypatch.setattr(chunked, "compiled", counting)
    return calls


@pytest.mark.parametrize("checkpoint", [False, True], ids=["kept", "checkpoint"])
@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=[f"gate-{g}-path-{p}" for g, p in GATES_PATHS])
def test_compiled_chunks_equal_naive(gate, path, checkpoint, monkeypatch):
    """``compile=True``: whole chunks of ``chunked.STEPS`` steps through the compiled chunk functions
    (traced with aot_eager here; tests/test_compile.py runs Inductor), the rest eagerly."""
    monkeypatch.setattr(chunked, "BACKEND", "aot_eager")
    monkeypatch.setattr(chunked, "STEPS", 4)  # T=11: two compiled chunks and three eager steps
    monkeypatch.setattr(chunked, "_COMPILED", {})
    calls = count_chunk_calls(monkeypatch)
    p, recurrent, spec, dense, gate_dense = problem(gate, path)
    spec = spec._replace(compiled=True)
    ref = naive_layer(p["x"], p["h0"], p["input_weight"], dense, gate_dense, p["gate_bias"])
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, list(p.values()), grad)
    for batch_first in (False, True):
        x = p["x"].transpose(0, 1) if batch_first else p["x"]
        args = (x, p["h0"], p["input_weight"], recurrent, p["gate_weight"], p["gate_bias"], spec, batch_first)
        out = esgp_layer(*args, checkpoint=checkpoint)
        out = out.transpose(0, 1) if batch_first else out
        torch.testing.assert_close(out, ref, **TOL[torch.float64])
        got = torch.autograd.grad(out, list(p.values()), grad)
        for name, g, w in zip(p, got, want, strict=True):
            torch.testing.assert_close(g, w, **TOL[torch.float64], msg=lambda m, name=name: f"d/d{name}: {m}")
    assert calls == {"forward_chunk": 4, "backward_chunk": 4}  # 2 chunks, 2 layouts of x
