"""Conversion from the original package, checked against the real ``esgp==0.1.0`` (test extra)."""

from __future__ import annotations

import esgp
import numpy as np
import pytest
import torch

from esgp_sparse import ESGP, ESGPCell

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_cell_matches_the_original_outputs_and_gradients(path):
    torch.manual_seed(0)
    original = esgp.ESGPCell(6, 50, sparsity=0.2, spectral_radius=0.9)
    ours = ESGPCell.from_esgp(original, path=path)
    assert ours.path == path
    x = torch.randn(4, 6, requires_grad=True)
    h = torch.randn(4, 50, requires_grad=True)
    a, b = original(x, h), ours(x, h)
    torch.testing.assert_close(b, a, **TOL)
    grad = torch.randn_like(a)
    got = torch.autograd.grad(b, [x, h, ours.Win.weight, ours.gate.weight, ours.gate.bias], grad)
    want = torch.autograd.grad(a, [x, h, original.Win.weight, original.gate.weight, original.gate.bias], grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_cell_takes_the_masked_matrix_as_is_and_reports_its_real_radius():
    torch.manual_seed(1)
    original = esgp.ESGPCell(3, 80, sparsity=0.1, spectral_radius=0.9)
    ours = ESGPCell.from_esgp(original, dtype=torch.float64)
    used = (original.W * original.mask).double()
    torch.testing.assert_close(ours.recurrent_weight().to_dense(), used)
    assert ours.radius == pytest.approx(np.abs(np.linalg.eigvals(used.numpy())).max(), rel=1e-9)
    assert ours.radius < 0.5  # the original's bug: it normalised before masking
    assert ours.spectral_radius == 0.9 and ours.sparsity == 0.1


@pytest.mark.parametrize("method", ["arpack", "power"])
def test_from_esgp_measures_with_the_radius_method_asked_for(method):
    torch.manual_seed(2)
    original = esgp.ESGP(3, 80, num_layers=2, sparsity=0.1, spectral_radius=0.9)
    ours = ESGP.from_esgp(original, radius_method=method)
    for cell, source in zip(ours.cells, original.cells, strict=True):
        used = (source.W * source.mask).double().numpy()
        assert cell.radius_measured_with.startswith(method)
        assert cell.radius == pytest.approx(np.abs(np.linalg.eigvals(used)).max(), rel=1e-4)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_stack_matches_the_original(batch_first, path):
    torch.manual_seed(2)
    original = esgp.ESGP(5, 40, num_layers=2, sparsity=0.2, batch_first=batch_first)
    ours = ESGP.from_esgp(original, path=path)
    assert ours.batch_first == batch_first and ours.num_layers == 2
    x = torch.randn((3, 7, 5) if batch_first else (7, 3, 5), requires_grad=True)
    h_0 = torch.randn(2, 3, 40)
    (a, ha), (b, hb) = original(x, h_0), ours(x, h_0)
    torch.testing.assert_close(b, a, **TOL)
    torch.testing.assert_close(hb, ha, **TOL)
    grad = torch.randn_like(a)
    got = torch.autograd.grad(b, [x, *ours.parameters()], grad)
    want = torch.autograd.grad(a, [x, *original.parameters()], grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_quick_start_snippet_runs_unchanged():
    model = ESGP(input_size=128, hidden_size=256, num_layers=2, sparsity=0.1, spectral_radius=0.9, batch_first=True)
    output, hidden = model(torch.randn(32, 10, 128))
    assert output.shape == (32, 10, 256) and hidden.shape == (2, 32, 256)
    cell = ESGPCell(input_size=64, hidden_size=128)
    assert cell(torch.randn(16, 64), torch.zeros(16, 128)).shape == (16, 128)


def test_bad_conversions():
    with pytest.raises(TypeError, match=r"ESGPCell.from_esgp: expected an esgp.ESGPCell \(it has no 'W'\), got Linear"):
        ESGPCell.from_esgp(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"ESGP.from_esgp: expected an esgp.ESGP \(it has no 'cells'\), got GRU"):
        ESGP.from_esgp(torch.nn.GRU(2, 2))
    original = esgp.ESGPCell(3, 20)
    with pytest.raises(ValueError, match=r"the original's gate is dense, got gate='sparse'"):
        ESGPCell.from_esgp(original, gate="sparse")
    with pytest.raises(TypeError, match=r"seed= does not apply"):
        ESGPCell.from_esgp(original, seed=1)
    with pytest.raises(TypeError, match=r"gate_bias_init= does not apply, the learned weights are the original's"):
        ESGPCell.from_esgp(original, gate_bias_init=3.0)
