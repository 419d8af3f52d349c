from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _testing import TOL, cuda

from esgp_sparse import ESGP, ESGPCell
from esgp_sparse.gates import DiagonalGate, LowRankGate, SparseGate
from esgp_sparse.ops import csr_to_dense, naive_cell

GATES = ["dense", "diagonal", "sparse", "lowrank"]
PATHS = ["dense", "sparse"]


def gate_matrix(cell: ESGPCell) -> torch.Tensor:
    gate = cell.gate
    if isinstance(gate, SparseGate):
        return csr_to_dense(gate.crow_indices, gate.col_indices, gate.weight_values, cell.hidden_size)
    if isinstance(gate, DiagonalGate):
        return torch.diag(gate.weight)
    if isinstance(gate, LowRankGate):
        return gate.matrix()
    return gate.weight


def test_dense_gate_parameters_are_exactly_the_originals():
    cell = ESGPCell(7, 33, sparsity=0.2, seed=0)
    shapes = {name: tuple(p.shape) for name, p in cell.named_parameters()}
    assert shapes == {"Win.weight": (33, 7), "gate.weight": (33, 33), "gate.bias": (33,)}
    assert not any(b.requires_grad for b in cell.buffers())


@pytest.mark.parametrize(
    "gate, shapes",
    [
        ("diagonal", lambda c: {"Win.weight": (33, 7), "gate.weight": (33,), "gate.bias": (33,)}),
        ("sparse", lambda c: {"Win.weight": (33, 7), "gate.weight_values": (c.gate.nnz,), "gate.bias": (33,)}),
        ("lowrank", lambda c: {"Win.weight": (33, 7), "gate.weight": (33, 33), "gate.bias": (33,)}),  # rank 16
    ],
)
def test_scalable_gate_parameters(gate, shapes):
    cell = ESGPCell(7, 33, sparsity=0.2, gate=gate, seed=0)
    assert {name: tuple(p.shape) for name, p in cell.named_parameters()} == shapes(cell)
    kind = {"diagonal": DiagonalGate, "sparse": SparseGate, "lowrank": LowRankGate}[gate]
    assert type(cell.gate) is kind
    if gate == "lowrank":
        assert cell.gate.rank == cell.gate_rank == 16
        assert ESGPCell(7, 12, sparsity=0.2, gate=gate, seed=0).gate.rank == 12  # at most H
    if gate == "sparse":
        assert 0.1 < cell.gate.nnz / 33**2 < 0.3


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("gate", GATES)
def test_cell_equals_the_definition(gate, path):
    cell = ESGPCell(5, 37, sparsity=0.15, gate=gate, path=path, seed=3, dtype=torch.float64)
    x, h = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 37, dtype=torch.float64)
    ref = naive_cell(x, h, cell.Win.weight, cell.recurrent_weight().to_dense(), gate_matrix(cell), cell.gate.bias)
    torch.testing.assert_close(cell(x, h), ref, **TOL[torch.float64])


@pytest.mark.parametrize("gate", GATES)
def test_dense_sparse_and_auto_agree_for_the_same_seed(gate):
    torch.manual_seed(0)
    cells = {p: ESGPCell(6, 300, sparsity=0.02, gate=gate, path=p, seed=11) for p in ("dense", "sparse", "auto")}
    for other in ("sparse", "auto"):
        cells[other].load_state_dict(cells["dense"].state_dict())
    assert cells["auto"].path == "sparse"  # H=300, d=0.02 is past the CPU crossover
    x, h = torch.randn(3, 6), torch.randn(3, 300)
    outputs = {p: c(x, h) for p, c in cells.items()}
    torch.testing.assert_close(outputs["sparse"], outputs["dense"], **TOL[torch.float32])
    torch.testing.assert_close(outputs["auto"], outputs["sparse"], **TOL[torch.float32])


def test_shapes_unbatched_and_default_state():
    cell = ESGPCell(4, 20, sparsity=0.2, seed=0)
    x = torch.randn(3, 4)
    assert cell(x).shape == (3, 20)
    torch.testing.assert_close(cell(x), cell(x, torch.zeros(3, 20)))
    torch.testing.assert_close(cell(x[1]), cell(x)[1])
    torch.testing.assert_close(cell(x[1], torch.ones(20)), cell(x, torch.ones(3, 20))[1])


def test_recurrent_weight_is_the_scaled_sparse_matrix():
    cell = ESGPCell(3, 120, sparsity=0.05, spectral_radius=0.7, seed=5, dtype=torch.float64)
    w = cell.recurrent_weight()
    assert w.layout == torch.sparse_csr and w.shape == (120, 120) and w._nnz() == cell.nnz
    actual = np.abs(np.linalg.eigvals(w.to_dense().numpy())).max()
    assert actual == pytest.approx(0.7, rel=1e-3)
    assert cell.radius == pytest.approx(actual, rel=1e-9) and cell.radius_measured_with == "dense"
    assert cell.crow_indices.dtype == torch.int32


@pytest.mark.parametrize("method", ["arpack", "power"])
def test_a_module_built_with_a_fast_radius_method_stores_the_radius_it_reports(method):
    """``radius_method`` through the module, at a size dense eigenvalues can still check."""
    cell = ESGPCell(2, 1000, sparsity=0.01, spectral_radius=0.8, seed=3, radius_method=method, dtype=torch.float64)
    actual = np.abs(np.linalg.eigvals(cell.recurrent_weight().to_dense().numpy())).max()
    assert abs(actual / 0.8 - 1) <= 1e-3
    assert cell.radius == pytest.approx(actual, rel=max(cell.radius_error, 1e-9))
    assert cell.radius_measured_with.startswith(method) and cell.radius_error < 1e-4
    assert f"({cell.radius_measured_with}, error" in repr(cell)


def test_extra_repr_shows_path_nnz_and_rho():
    cell = ESGPCell(3, 120, sparsity=0.05, gate="diagonal", seed=5)
    text = repr(cell)
    assert f"nnz={cell.nnz}" in text and f"path_used='{cell.path}'" in text
    assert f"rho={cell.radius:.6g} (dense, error {cell.radius_error:.2g})" in text
    assert "gate='diagonal'" in text and "sparsity=0.05" in text and "spectral_radius" not in text


def test_seed_and_global_generator_fix_the_reservoir():
    a, b = ESGPCell(3, 64, sparsity=0.1, seed=9), ESGPCell(3, 64, sparsity=0.1, seed=9)
    assert torch.equal(a.values, b.values) and torch.equal(a.col_indices, b.col_indices)
    assert not torch.equal(a.values, ESGPCell(3, 64, sparsity=0.1, seed=10).values)
    torch.manual_seed(1)
    c = ESGPCell(3, 64, sparsity=0.1)
    torch.manual_seed(1)
    d = ESGPCell(3, 64, sparsity=0.1, gate="sparse")
    assert c.seed == d.seed and torch.equal(c.values, d.values)
    torch.manual_seed(2)
    assert ESGPCell(3, 64, sparsity=0.1).seed != c.seed


def test_path_choice_and_explicit_path_kept():
    assert ESGPCell(3, 64, sparsity=0.2, seed=0).path == "dense"
    assert ESGPCell(3, 1000, sparsity=0.01, seed=0).path == "sparse"
    assert ESGPCell(3, 64, sparsity=0.2, path="sparse", seed=0).double().path == "sparse"
    assert ESGPCell(3, 1000, sparsity=0.01, path="dense", seed=0).path == "dense"


def test_dtype_moves_rebuild_derived_state():
    cell = ESGPCell(3, 50, sparsity=0.2, seed=0)
    x = torch.randn(2, 3)
    y32 = cell(x)
    cell.double()
    assert cell.values.dtype == cell.dense_weight.dtype == cell.Win.weight.dtype == torch.float64
    assert cell.crow_indices.dtype == torch.int32
    torch.testing.assert_close(cell(x.double()).float(), y32, **TOL[torch.float32])
    assert cell.to(torch.float32).values.dtype == torch.float32


@pytest.mark.parametrize("gate", GATES)
def test_state_dict_round_trip_into_a_different_draw(gate):
    source = ESGPCell(4, 90, sparsity=0.1, gate=gate, path="sparse", seed=1)
    target = ESGPCell(4, 90, sparsity=0.1, gate=gate, path="sparse", seed=2)
    assert source.nnz != target.nnz  # different draws, different sizes: load must resize
    target.load_state_dict(source.state_dict())
    assert target.nnz == source.nnz and target.seed == 1 and target.radius == source.radius
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    x = torch.randn(2, 4)
    assert torch.equal(source(x), target(x))


def test_state_dict_loads_across_paths():
    sparse = ESGPCell(4, 90, sparsity=0.1, path="sparse", seed=1)
    dense = ESGPCell(4, 90, sparsity=0.1, path="dense", seed=2)
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(dense(x), sparse(x), **TOL[torch.float32])


def test_gradcheck_float64():
    for gate in GATES:
        cell = ESGPCell(3, 12, sparsity=0.3, gate=gate, seed=0, dtype=torch.float64)
        x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        h = torch.randn(2, 12, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(cell, (x, h))


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("path", PATHS)
def test_gradgradcheck_float64(gate, path):
    """Double backward (gradient penalties, Hessian-vector products) on every gate and path, with
    respect to the input, the state and every learned parameter."""
    torch.manual_seed(0)
    cell = ESGPCell(3, 12, sparsity=0.3, gate=gate, path=path, seed=0, dtype=torch.float64)
    names = [name for name, _ in cell.named_parameters()]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 12, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in cell.parameters())

    def step(x, h, *values):
        return torch.func.functional_call(cell, dict(zip(names, values, strict=True)), (x, h))

    assert torch.autograd.gradgradcheck(step, (x, h, *params))


def test_reset_parameters_keeps_the_reservoir():
    cell = ESGPCell(3, 40, sparsity=0.2, gate="sparse", seed=0)
    before = {k: v.clone() for k, v in cell.state_dict().items() if isinstance(v, torch.Tensor)}
    cell.reset_parameters()
    after = cell.state_dict()
    assert torch.equal(before["values"], after["values"]) and torch.equal(
        before["gate.col_indices"], after["gate.col_indices"]
    )
    assert not torch.equal(before["Win.weight"], after["Win.weight"])
    assert not torch.equal(before["gate.weight_values"], after["gate.weight_values"])


def test_caller_tensors_are_not_mutated():
    cell = ESGPCell(3, 40, sparsity=0.2, seed=0)
    x, h = torch.randn(2, 3), torch.randn(2, 40)
    x0, h0 = x.clone(), h.clone()
    cell(x, h).sum().backward()
    assert torch.equal(x, x0) and torch.equal(h, h0)


BAD_ARGS = [
    (dict(input_size=0), ValueError, r"expected input_size >= 1, got input_size=0"),
    (dict(input_size=2.5), TypeError, r"expected input_size to be an int, got 2.5 \(float\)"),
    (dict(hidden_size=True), TypeError, r"expected hidden_size to be an int, got True \(bool\)"),
    (dict(sparsity=0.0), ValueError, r"expected sparsity in \(0, 1\], got sparsity=0.0"),
    (dict(sparsity=1.5), ValueError, r"expected sparsity in \(0, 1\], got sparsity=1.5"),
    (dict(sparsity=float("nan")), ValueError, r"expected sparsity in \(0, 1\], got sparsity=nan"),
    (dict(sparsity="0.1"), TypeError, r"expected sparsity to be a real number, got '0.1' \(str\)"),
    (dict(spectral_radius=-0.1), ValueError, r"expected spectral_radius in \[0, inf\), got spectral_radius=-0.1"),
    (
        dict(spectral_radius=float("inf")),
        ValueError,
        r"expected spectral_radius in \[0, inf\), got spectral_radius=inf",
    ),
    (
        dict(gate="lstm"),
        ValueError,
        r"expected gate to be one of \('dense', 'diagonal', 'sparse', 'lowrank'\), got gate='lstm'",
    ),
    (
        dict(gate="diagonal", gate_rank=4),
        ValueError,
        r"gate_rank applies to gate='lowrank' only, got gate_rank=4 with gate='diagonal'",
    ),
    (dict(gate="lowrank", gate_rank=0), ValueError, r"expected gate_rank >= 1, got gate_rank=0"),
    (dict(gate="lowrank", gate_rank=41), ValueError, r"expected gate_rank <= hidden_size=40, got gate_rank=41"),
    (dict(gate="lowrank", gate_rank=2.0), TypeError, r"expected gate_rank to be an int, got 2.0 \(float\)"),
    (dict(gate=None), TypeError, r"expected gate to be one of .*got None \(NoneType\)"),
    (dict(path="gpu"), ValueError, r"expected path to be one of \('auto', 'dense', 'sparse'\), got path='gpu'"),
    (dict(seed=-1), ValueError, r"expected seed to be a non-negative int or None, got seed=-1"),
    (dict(seed=1.0), TypeError, r"expected seed to be a non-negative int or None, got 1.0 \(float\)"),
    (dict(dtype=torch.int64), ValueError, r"expected a floating point dtype, got dtype=torch.int64"),
    (dict(dtype="float32"), TypeError, r"expected dtype to be a torch.dtype or None, got 'float32' \(str\)"),
    (dict(radius_method="lanczos"), ValueError, r"expected radius_method to be one of"),
    (
        dict(hidden_size=100, sparsity=0.005),
        ValueError,
        r"expected at least 1 recurrent connection per unit .*got sparsity=0.005 at hidden_size=100 .*nearly nilpotent",
    ),
    (dict(reservoir="W"), TypeError, r"expected reservoir to be an esgp_sparse.init.Reservoir, got str"),
    (dict(input_scaling=0.0), ValueError, r"expected input_scaling in \(0, inf\), got input_scaling=0.0"),
    (dict(input_scaling=True), TypeError, r"expected input_scaling to be a real number, got True \(bool\)"),
    (
        dict(gate_bias_init=float("nan")),
        ValueError,
        r"expected gate_bias_init in \(-inf, inf\), got gate_bias_init=nan",
    ),
    (dict(gate_bias_init="3"), TypeError, r"expected gate_bias_init to be a real number, got '3' \(str\)"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGS, ids=[str(k) for k, _, _ in BAD_ARGS])
def test_bad_arguments(kwargs, error, match):
    args = dict(input_size=3, hidden_size=40, sparsity=0.2) | kwargs
    with pytest.raises(error, match="ESGPCell: " + match):
        ESGPCell(**args)


def test_dense_gate_too_large_names_the_scalable_gates():
    with pytest.raises(
        ValueError,
        match=r"a dense 1000000 x 1000000 gate needs 3,725.3 GiB.*gate='sparse', gate='diagonal' or gate='lowrank'",
    ):
        ESGPCell(4, 1_000_000, sparsity=1e-5)
    with pytest.raises(ValueError, match=r"reservoir \(path='dense'\) needs .*use path='sparse'"):
        ESGPCell(4, 1_000_000, sparsity=1e-5, gate="diagonal", path="dense")


BAD_INPUTS = [
    (lambda: (torch.randn(2, 3, 4), None), ValueError, r"expected input to be 1-D or 2-D, got shape \(2, 3, 4\)"),
    (lambda: (torch.randn(2, 5), None), ValueError, r"expected input.size\(-1\) == input_size=4, got 5"),
    (
        lambda: (torch.randn(2, 4, dtype=torch.float64), None),
        ValueError,
        r"expected input.dtype == torch.float32 .*got torch.float64",
    ),
    (lambda: (torch.randn(2, 4, device="meta"), None), ValueError, r"expected input on cpu .*got meta"),
    (
        lambda: (torch.tensor([[1.0, float("nan"), 0, 0]]), None),
        ValueError,
        r"expected finite values in input, got NaN or inf",
    ),
    (lambda: (torch.randn(2, 4), torch.full((2, 20), float("inf"))), ValueError, r"expected finite values in h"),
    (lambda: (torch.randn(2, 4), torch.randn(3, 20)), ValueError, r"expected h of shape \(2, 20\), got \(3, 20\)"),
    (lambda: (torch.randn(2, 4), torch.randn(20)), ValueError, r"expected h to be 2-D, got shape \(20,\)"),
    (lambda: ([1.0, 2.0, 3.0, 4.0], None), TypeError, r"expected input to be a torch.Tensor, got list"),
]


@pytest.mark.parametrize("make, error, match", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_inputs(make, error, match):
    cell = ESGPCell(4, 20, sparsity=0.2, seed=0)
    x, h = make()
    with pytest.raises(error, match="ESGPCell: " + match):
        cell(x, h)


@cuda
@pytest.mark.parametrize("gate", GATES)
def test_cuda_move_rechooses_the_path_and_matches_cpu(gate):
    cell = ESGPCell(5, 700, sparsity=0.01, gate=gate, seed=0)
    x, h = torch.randn(3, 5), torch.randn(3, 700)
    y = cell(x, h)
    cell.cuda()
    assert cell.values.is_cuda and cell.path == "sparse"
    torch.testing.assert_close(cell(x.cuda(), h.cuda()).cpu(), y, rtol=1e-4, atol=1e-4)


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_0_1_0_state_dict_still_loads():
    """Made by esgp_sparse 0.1.0 (commit 8174e50), whose sparse gate called its values `values`."""
    old = torch.load(FIXTURES / "esgp-0.1.0-sparse-gate.pt")
    io = torch.load(FIXTURES / "esgp-0.1.0-sparse-gate-io.pt")
    assert "cells.0.gate.values" in old and "cells.0.gate.weight_values" not in old
    model = ESGP(3, 24, num_layers=2, sparsity=0.2, gate="sparse", seed=123)
    model.load_state_dict(old)
    torch.testing.assert_close(model(io["x"])[0], io["out"], rtol=0, atol=0)
    cell = model.cells[0]
    assert (
        cell.radius == 0.9
        and math.isnan(cell.radius_error)
        and cell.radius_measured_with == "requested (0.1.0 state_dict)"
    )
    assert "cells.0.gate.weight_values" in model.state_dict()


@pytest.mark.parametrize("gate", GATES)
def test_parametrizations_work_on_every_gate(gate):
    torch.manual_seed(0)
    cell = ESGPCell(3, 40, sparsity=0.2, gate=gate, seed=0)
    x, h = torch.randn(2, 3), torch.randn(2, 40)
    before = cell(x, h)
    name = "weight_values" if gate == "sparse" else "weight"
    torch.nn.utils.parametrizations.weight_norm(cell.gate, name)
    torch.testing.assert_close(cell(x, h), before)  # weight norm starts at the same weights
    cell(x, h).square().sum().backward()
    original = cell.gate.parametrizations[name].original0
    assert original.grad is not None and bool(original.grad.abs().sum() > 0)


@pytest.mark.parametrize("gate", GATES)
def test_input_scaling_and_gate_bias_init_change_only_what_they_name(gate):
    torch.manual_seed(0)
    default = ESGPCell(3, 50, sparsity=0.2, gate=gate, seed=0)
    torch.manual_seed(0)
    cell = ESGPCell(3, 50, sparsity=0.2, gate=gate, seed=0, input_scaling=0.1, gate_bias_init=3.0)
    torch.testing.assert_close(cell.Win.weight, 0.1 * default.Win.weight, rtol=0, atol=0)
    assert torch.equal(cell.gate.bias, torch.full((50,), 3.0))
    torch.testing.assert_close(gate_matrix(cell), gate_matrix(default), rtol=0, atol=0)
    assert torch.equal(cell.values, default.values)
    assert "input_scaling=0.1, gate_bias_init=3" in repr(cell) and "input_scaling" not in repr(default)
    with torch.no_grad():
        cell.gate.bias.zero_()
        cell.Win.weight.fill_(1.0)
    cell.reset_parameters()  # draws afresh, then applies the knobs again
    assert torch.equal(cell.gate.bias, torch.full((50,), 3.0))
    assert cell.Win.weight.abs().max() <= 0.1 / math.sqrt(3) and cell.Win.weight.abs().max() > 0.01


def test_the_stack_passes_the_knobs_to_every_layer():
    model = ESGP(3, 20, num_layers=2, sparsity=0.2, gate="diagonal", seed=0, input_scaling=0.5, gate_bias_init=-1.0)
    assert all(cell.input_scaling == 0.5 and bool((cell.gate.bias == -1.0).all()) for cell in model.cells)
    assert "input_scaling=0.5, gate_bias_init=-1" in model.extra_repr()
    with pytest.raises(ValueError, match=r"ESGP: expected input_scaling in \(0, inf\), got input_scaling=-1"):
        ESGP(3, 20, sparsity=0.2, input_scaling=-1)
