"""Low precision and autocast, in the style of flash-linear-attention: bf16/fp16 outputs and
gradients against a float64 reference, with a relative-error threshold per dtype.

The thresholds are relative Frobenius-norm errors, ``|low - ref| / |ref|``. A single rounding costs
2^-9 = 2.0e-3 in bfloat16 (8 significant bits) and 2^-12 = 2.4e-4 in float16 (11 bits). The state is
rounded at every one of T steps, and each step contracts old errors (spectral radius 0.9, gate < 1),
so the error settles at a few roundings; the gradients go through the same recurrence backwards
and through products accumulated over B x T terms. The bounds below are about 3x the largest error
measured over every gate and path (stated beside them), so they catch a path that silently falls
back to a lower precision or loses its float32 accumulation, not rounding noise.
"""

from __future__ import annotations

import copy

import pytest
import torch

from esgp_sparse import ESGP, ESGPCell

GATES_PATHS = [(g, p) for g in ("dense", "diagonal", "sparse", "lowrank") for p in ("dense", "sparse")]
IDS = [f"gate-{g}-path-{p}" for g, p in GATES_PATHS]
# Largest errors measured over the 6 pairs of the dense, diagonal and sparse gates and both paths
# (torch 2.13 CPU, this file's shapes): outputs 6.5e-3 (bf16) and 8.5e-4 (fp16); gradients 1.35e-2 and
# 1.56e-3. The low-rank gate's 2 pairs, measured by hand: 6.5e-3 and 8.1e-4; 1.14e-2 and 1.40e-3.
OUTPUT_TOL = {torch.bfloat16: 2e-2, torch.float16: 2.5e-3}
GRAD_TOL = {torch.bfloat16: 4e-2, torch.float16: 5e-3}


def relative_error(low: torch.Tensor, ref: torch.Tensor) -> float:
    return float((low.detach().double() - ref.detach()).norm() / ref.detach().norm())


def model_pair(gate: str, path: str, dtype: torch.dtype) -> tuple[ESGP, ESGP]:
    torch.manual_seed(0)
    ref = ESGP(4, 64, num_layers=2, sparsity=0.1, gate=gate, path=path, seed=0, dtype=torch.float64)
    return ref, copy.deepcopy(ref).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=IDS)
def test_low_precision_against_float64(gate, path, dtype):
    ref, low = model_pair(gate, path, dtype)
    assert low.cells[0].path == path and low.cells[0].values.dtype == dtype
    x = torch.randn(3, 20, 4, dtype=torch.float64, requires_grad=True)
    x_low = x.detach().to(dtype).requires_grad_(True)
    out_ref, h_ref = ref(x)
    out_low, h_low = low(x_low)
    assert out_low.dtype == h_low.dtype == dtype
    assert relative_error(out_low, out_ref) <= OUTPUT_TOL[dtype]
    assert relative_error(h_low, h_ref) <= OUTPUT_TOL[dtype]
    weight = torch.randn_like(out_ref)
    grads_ref = torch.autograd.grad((out_ref * weight).sum(), [x, *ref.parameters()])
    grads_low = torch.autograd.grad((out_low * weight.to(dtype)).sum(), [x_low, *low.parameters()])
    names = ["input"] + [name for name, _ in ref.named_parameters()]
    for name, g_low, g_ref in zip(names, grads_low, grads_ref, strict=True):
        assert g_low.dtype == dtype
        assert relative_error(g_low, g_ref) <= GRAD_TOL[dtype], name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("gate, path", [("sparse", "sparse"), ("dense", "dense")], ids=["sparse", "dense"])
def test_low_precision_cell_against_float64(gate, path, dtype):
    torch.manual_seed(0)
    ref = ESGPCell(4, 64, sparsity=0.1, gate=gate, path=path, seed=0, dtype=torch.float64)
    low = copy.deepcopy(ref).to(dtype)
    x, h = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 64, dtype=torch.float64)
    out_ref, out_low = ref(x, h), low(x.to(dtype), h.to(dtype))
    assert out_low.dtype == dtype and relative_error(out_low, out_ref) <= OUTPUT_TOL[dtype]
    grads_ref = torch.autograd.grad(out_ref.square().sum(), list(ref.parameters()))
    grads_low = torch.autograd.grad(out_low.float().square().sum(), list(low.parameters()))
    for g_low, g_ref in zip(grads_low, grads_ref, strict=True):
        assert relative_error(g_low, g_ref) <= GRAD_TOL[dtype]


@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=IDS)
def test_autocast_runs_the_layer_in_the_autocast_dtype(gate, path):
    """As nn.GRU on CPU: the result is float32, and the computation is bf16's (bitwise what a bf16
    copy of the model gives), not float32's with the autocast ignored."""
    torch.manual_seed(0)
    model = ESGP(4, 64, num_layers=2, sparsity=0.1, gate=gate, path=path, seed=0)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    x = torch.randn(3, 20, 4)
    plain, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = model(x)
    assert out.dtype == h_n.dtype == torch.float32
    assert not torch.equal(out, plain)  # the autocast took effect
    torch.testing.assert_close(out, bf16(x.bfloat16())[0].float(), rtol=0, atol=0)
    out.square().sum().backward()  # gradients reach the float32 parameters
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and bool(p.grad.isfinite().all()), name


@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=IDS)
def test_autocast_cell(gate, path):
    torch.manual_seed(0)
    cell = ESGPCell(4, 64, sparsity=0.1, gate=gate, path=path, seed=0)
    bf16 = copy.deepcopy(cell).to(torch.bfloat16)
    x, h = torch.randn(3, 4), torch.rand(3, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cell(x, h)
    assert out.dtype == torch.float32  # as nn.GRUCell on CPU
    torch.testing.assert_close(out, bf16(x.bfloat16(), h.bfloat16()).float(), rtol=0, atol=0)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in cell.parameters())


def test_autocast_leaves_float64_alone():
    model = ESGP(4, 64, sparsity=0.1, seed=0, dtype=torch.float64)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(x)
    assert out.dtype == torch.float64 and torch.equal(out, model(x)[0])
