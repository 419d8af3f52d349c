"""torch.compile: no graph breaks anywhere, compiled equals eager, and no unrolling over time.

Inductor compiles cost seconds each on a small CPU, so most checks use the ``aot_eager`` backend
(which still traces the custom ops' fake and autograd registrations) and two use inductor.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from _testing import TOL, cuda
from torch._dynamo.utils import counters

import esgp_sparse.ops.chunked as chunked
from esgp_sparse import ESGP, ESGPCell

GATES_PATHS = [(g, p) for g in ("dense", "diagonal", "sparse", "lowrank") for p in ("dense", "sparse")]
IDS = [f"gate-{g}-path-{p}" for g, p in GATES_PATHS]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def make_cell(gate, path, dtype=torch.float32):
    torch.manual_seed(0)
    return ESGPCell(5, 40, sparsity=0.15, gate=gate, path=path, seed=1, dtype=dtype)


@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=IDS)
def test_explain_reports_no_graph_break(gate, path):
    cell = make_cell(gate, path)
    explanation = torch._dynamo.explain(cell)(torch.randn(3, 5), torch.randn(3, 40))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def compare_compiled(cell, compiled, dtype):
    x = torch.randn(3, 5, dtype=dtype, requires_grad=True)
    h = torch.randn(3, 40, dtype=dtype, requires_grad=True)
    eager = cell(x, h)
    got = compiled(x, h)
    torch.testing.assert_close(got, eager, **TOL[dtype])
    params = [x, h, *cell.parameters()]
    grad = torch.randn_like(eager)
    for g, e in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(eager, params, grad), strict=True):
        torch.testing.assert_close(g, e, **TOL[dtype])


@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=IDS)
def test_compiled_cell_equals_eager_aot(gate, path):
    cell = make_cell(gate, path, torch.float64)
    compare_compiled(cell, torch.compile(cell, fullgraph=True, backend="aot_eager"), torch.float64)


def test_compiled_cell_equals_eager_inductor():
    cell = make_cell("sparse", "sparse")  # both custom ops, forward and backward
    compare_compiled(cell, torch.compile(cell, fullgraph=True), torch.float32)


@pytest.mark.parametrize("gate", ["diagonal", "lowrank"])
def test_esgp_compile_rows_layout_with_inductor(gate):
    """compile=True through Inductor on the rows layout (every product dense) with a gate that is
    not a GEMM of its own, checkpointed: the chunks and the eager recompute agree with an eager
    model."""
    torch.manual_seed(0)
    kwargs = dict(sparsity=0.15, gate=gate, path="dense", seed=3, checkpoint=True)
    model, eager = ESGP(3, 40, compile=True, **kwargs), ESGP(3, 40, **kwargs)
    eager.load_state_dict(model.state_dict())
    x = torch.randn(4, 37, 3, requires_grad=True)
    out, ref = model(x)[0], eager(x)[0]
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *model.parameters()], grad)
    want = torch.autograd.grad(ref, [x, *eager.parameters()], grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float32])


def test_esgp_compile_compiles_the_step_once_whatever_the_length():
    torch.manual_seed(0)
    model = ESGP(3, 40, sparsity=0.15, gate="dense", path="sparse", seed=2, compile=True)
    eager = ESGP(3, 40, sparsity=0.15, gate="dense", path="sparse", seed=2)
    eager.load_state_dict(model.state_dict())
    graphs = []
    for steps in (20, 50):  # one and three compiled chunks of 16 steps, and 4 and 2 eager steps
        x = torch.randn(2, steps, 3, requires_grad=True)
        out, h_n = model(x)
        ref, ref_h = eager(x)
        torch.testing.assert_close(out, ref, **TOL[torch.float32])
        grad = torch.randn_like(out)
        params = [x, *model.parameters()]
        got = torch.autograd.grad(out, params, grad)
        want = torch.autograd.grad(ref, [x, *eager.parameters()], grad)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, **TOL[torch.float32])
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] == 2  # the forward chunk and the backward chunk
    assert graphs[1] == graphs[0]  # a longer sequence compiled nothing new


@cuda
@pytest.mark.parametrize("gate, path", [("sparse", "sparse"), ("dense", "dense")], ids=["sparse-sparse", "dense-dense"])
def test_compiled_cell_on_cuda(gate, path):
    cell = make_cell(gate, path).cuda()
    x, h = torch.randn(3, 5, device="cuda"), torch.randn(3, 40, device="cuda")
    explanation = torch._dynamo.explain(cell)(x, h)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    x.requires_grad_(True)
    eager = cell(x, h)
    compiled = torch.compile(cell, fullgraph=True)(x, h)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    grads = [torch.autograd.grad(y.square().sum(), [x, *cell.parameters()]) for y in (compiled, eager)]
    for g, e in zip(*grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@cuda
def test_esgp_compile_on_cuda():
    model = ESGP(3, 300, sparsity=0.02, gate="sparse", seed=2, compile=True, device="cuda")
    eager = ESGP(3, 300, sparsity=0.02, gate="sparse", seed=2, device="cuda")
    eager.load_state_dict(model.state_dict())
    x = torch.randn(2, 37, 3, device="cuda")  # two compiled chunks of 16 steps, five eager steps
    out, ref = model(x)[0], eager(x)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.square().sum().backward()
    ref.square().sum().backward()
    for p, q in zip(model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4)


def test_compile_true_never_gives_up(monkeypatch):
    """Three layers, nine more models, batch sizes, lengths and a second dtype in one process: no
    recompile-limit failure (the step's compile cache was one per process, static, and failed at the
    ninth shape), and a new batch size, length, nnz or model of the same size compiles nothing new.
    Traced with aot_eager (the same Dynamo graphs and limits, without Inductor's minutes here)."""
    monkeypatch.setattr(chunked, "BACKEND", "aot_eager")
    torch.manual_seed(0)
    models = [ESGP(3, 40, num_layers=3, sparsity=0.15, path="sparse", seed=0, compile=True)]
    models += [ESGP(3, 40, sparsity=0.15, path="sparse", seed=i, compile=True) for i in range(1, 10)]
    assert len({model.cells[0].nnz for model in models}) > 5  # nnz differ from seed to seed
    graphs = []
    # Even batch sizes: with H=40 their blocks fill whole 64-byte lines; others pad the kept blocks,
    # which the backward chunk's graph specialises on once.
    for batch, steps in ((2, 16), (4, 20), (8, 17), (6, 35)):
        for model in models:
            x = torch.randn(batch, steps, 3)
            out, h_n = model(x)
            (out.square().sum() + h_n.sum()).backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[0] <= 2  # nothing new after the first shape (see the test above)
    # Ten hidden sizes in float64 (another key of the compile cache) still run, and right, however
    # many of them Dynamo compiles anew (past its recompile limit it runs the chunk eagerly).
    for hidden in range(30, 80, 5):
        model = ESGP(3, hidden, sparsity=0.15, path="sparse", seed=hidden, compile=True, dtype=torch.float64)
        eager = ESGP(3, hidden, sparsity=0.15, path="sparse", seed=hidden, dtype=torch.float64)
        eager.load_state_dict(model.state_dict())
        x = torch.randn(4, 17, 3, dtype=torch.float64)
        torch.testing.assert_close(model(x)[0], eager(x)[0], **TOL[torch.float64])


# ------------------------------------------------------------------ whole-model torch.compile
class Classifier(torch.nn.Module):
    def __init__(self, gate="dense", path="sparse", **kwargs):
        super().__init__()
        self.rnn = ESGP(3, 24, sparsity=0.2, gate=gate, path=path, seed=4, dtype=torch.float64, **kwargs)
        width = 48 if kwargs.get("bidirectional") else 24
        self.head = torch.nn.Linear(width, 5, dtype=torch.float64)

    def forward(self, x):
        out, h_n = self.rnn(x)
        return self.head(out[:, -1]) + h_n.sum(0).sum(-1, keepdim=True)


class GraphRecorder:
    """A backend that counts the ESGP layer nodes of every graph it is given (Dynamo may hand the
    same frame's graph over again after a restarted analysis), then runs it with aot_eager."""

    def __init__(self):
        self.layer_nodes = []

    def __call__(self, gm, example_inputs):
        self.layer_nodes.append(len(layer_nodes(gm)))
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)


def layer_nodes(gm):
    return [n for n in gm.graph.nodes if n.target is torch.ops.esgp_sparse.esgp_layer.default]


def assert_matches_eager(model, compiled, steps):
    x = torch.randn(2, steps, 3, dtype=torch.float64, requires_grad=True)
    got, want = compiled(x), model(x)
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    params = [x, *model.parameters()]
    grad = torch.randn_like(want)
    for g, w in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(want, params, grad), strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


@pytest.mark.parametrize(
    "gate, path, kwargs",
    [
        ("dense", "dense", dict(num_layers=2)),
        ("diagonal", "sparse", dict(bidirectional=True)),
        ("sparse", "sparse", dict(checkpoint=True)),
        ("lowrank", "sparse", {}),
    ],
    ids=["dense-dense-2-layers", "diagonal-sparse-bidirectional", "sparse-sparse-checkpoint", "lowrank-sparse"],
)
def test_whole_model_compiles_to_one_node_per_layer_whatever_the_length(gate, path, kwargs):
    """``torch.compile(model, fullgraph=True)``: each layer (and direction) is one opaque node, the
    graph is the same for every T, a new T compiles nothing new, and forward and backward equal eager."""
    torch.manual_seed(0)
    model = Classifier(gate, path, **kwargs)
    recorder = GraphRecorder()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=recorder)
    for steps in (5, 11, 40):  # not 3: dynamo would give T and I (3) one symbol
        assert_matches_eager(model, compiled, steps)
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    assert counters["stats"]["unique_graphs"] == 1  # one graph for all three lengths
    assert recorder.layer_nodes[-1] == layers


def test_whole_model_compiles_with_inductor():
    """Inductor lays out the ops' outputs as their fakes say: an h_0 that requires grad on the
    sparse path (whose backward's state runs transposed) gets the eager gradient."""
    torch.manual_seed(0)
    model = ESGP(3, 24, num_layers=2, sparsity=0.2, gate="sparse", path="sparse", seed=1)
    compiled = torch.compile(model)
    for steps in (4, 9):
        x = torch.randn(2, steps, 3, requires_grad=True)
        h_0 = torch.randn(2, 2, 24, requires_grad=True)
        runs = [run(x, h_0) for run in (compiled, model)]
        for got, want in zip(*runs, strict=True):
            torch.testing.assert_close(got, want, **TOL[torch.float32])
        inputs = [x, h_0, *model.parameters()]
        grads = [torch.autograd.grad(out.square().sum() + h_n.sum(), inputs) for out, h_n in runs]
        for got, want in zip(*grads, strict=True):
            torch.testing.assert_close(got, want, **TOL[torch.float32])


# ------------------------------------------------------------------ torch.export
@pytest.mark.parametrize(
    "gate, path", [("dense", "dense"), ("sparse", "sparse"), ("lowrank", "dense")], ids=["dense", "sparse", "lowrank"]
)
def test_export_with_a_dynamic_length(gate, path):
    """``torch.export.export`` of a model whose parameters require grad (nothing turned off), with T
    dynamic: one node per layer, and the program equals eager at other lengths, gradients included
    (the exported layer keeps no residuals and recomputes them in a backward)."""
    torch.manual_seed(0)
    model = ESGP(3, 24, num_layers=2, sparsity=0.2, gate=gate, path=path, seed=5, dtype=torch.float64).eval()
    assert all(p.requires_grad for p in model.parameters())
    dims = {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("steps", min=1, max=4096)}
    program = torch.export.export(model, (torch.randn(4, 6, 3, dtype=torch.float64),), dynamic_shapes=(dims,))
    assert len(layer_nodes(program.graph_module)) == 2
    exported = program.module()
    for batch, length in ((3, 1), (2, 17)):
        x = torch.randn(batch, length, 3, dtype=torch.float64)
        (out, h_n), (ref, ref_h) = exported(x), model(x)
        torch.testing.assert_close(out, ref, **TOL[torch.float64])
        torch.testing.assert_close(h_n, ref_h, **TOL[torch.float64])
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    grads = [torch.autograd.grad(run(x)[0].square().sum(), [x, *run.parameters()]) for run in (exported, model)]
    assert len(grads[0]) == len(grads[1]) == 1 + 6  # x, then W_in, the gate's weight and bias per layer
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


def test_whole_model_compile_of_a_compile_true_model(monkeypatch):
    """torch.compile(model) of a model built with compile=True: the layer op, run by the outer graph,
    runs its steps in the inner compiled chunks (both traced with aot_eager here); equal to eager."""
    monkeypatch.setattr(chunked, "BACKEND", "aot_eager")
    torch.manual_seed(0)
    kwargs = dict(num_layers=2, sparsity=0.2, gate="sparse", seed=1, dtype=torch.float64)
    model, eager = ESGP(3, 32, compile=True, **kwargs), ESGP(3, 32, **kwargs)
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 37, 3, dtype=torch.float64, requires_grad=True)  # two chunks of 16, five eager steps
    runs = [compiled(x), eager(x)]
    for got, want in zip(*runs, strict=True):
        torch.testing.assert_close(got, want, **TOL[torch.float64])
    grads = [
        torch.autograd.grad(out.square().sum() + h_n.sum(), [x, *module.parameters()])
        for (out, h_n), module in zip(runs, (model, eager), strict=True)
    ]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, **TOL[torch.float64])
