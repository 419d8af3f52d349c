"""Deferred initialisation: nothing is drawn on the meta device; to_empty + reset_reservoir draws
exactly what building on the device gives."""

from __future__ import annotations

import pytest
import torch

import esgp_sparse.cell
from esgp_sparse import ESGP, ESGPCell

GATES_PATHS = [(g, p) for g in ("dense", "diagonal", "sparse", "lowrank") for p in ("auto", "dense", "sparse")]


def test_nothing_is_drawn_or_measured_on_the_meta_device(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("drew a reservoir on the meta device")

    monkeypatch.setattr(esgp_sparse.cell, "random_reservoir", refuse)
    monkeypatch.setattr(esgp_sparse.cell, "drawn_rows", refuse)
    model = ESGP(16, 200_000, num_layers=2, sparsity=5e-5, gate="sparse", seed=0, device="meta")
    cell = model.cells[0]
    assert cell.values.device.type == "meta" and cell.path == "sparse" and not cell.drawn
    assert "deferred" in repr(cell)
    with pytest.raises(ValueError, match=r"not drawn yet .*to_empty\(device=...\) and reset_reservoir\(\)"):
        model(torch.zeros(1, 2, 16, device="meta"))
    with pytest.raises(ValueError, match=r"on the meta device; call to_empty"):
        model.reset_reservoir()


@pytest.mark.parametrize("gate, path", GATES_PATHS, ids=[f"gate-{g}-path-{p}" for g, p in GATES_PATHS])
def test_to_empty_then_reset_reservoir_equals_building_there(gate, path):
    built = ESGP(3, 300, num_layers=2, sparsity=0.05, gate=gate, path=path, seed=11)
    deferred = ESGP(3, 300, num_layers=2, sparsity=0.05, gate=gate, path=path, seed=11, device="meta")
    deferred.to_empty(device="cpu")
    deferred.reset_reservoir()
    deferred.reset_parameters()
    for a, b in zip(built.cells, deferred.cells, strict=True):
        assert a.path == b.path and a.radius == b.radius and a.radius_measured_with == b.radius_measured_with
        for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers(), strict=True):
            assert torch.equal(x, y), name
        assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    deferred.load_state_dict(built.state_dict())  # the learned parameters too
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(deferred(x)[0], built(x)[0], rtol=0, atol=0)


def test_meta_then_load_state_dict_also_works():
    built = ESGPCell(3, 64, sparsity=0.1, gate="sparse", seed=2)
    deferred = ESGPCell(3, 64, sparsity=0.1, gate="sparse", seed=2, device="meta").to_empty(device="cpu")
    deferred.load_state_dict(built.state_dict())
    x = torch.randn(4, 3)
    torch.testing.assert_close(deferred(x), built(x), rtol=0, atol=0)


def test_the_initialisation_knobs_survive_deferred_initialisation():
    knobs = dict(sparsity=0.1, gate="sparse", input_scaling=0.2, gate_bias_init=2.5)
    torch.manual_seed(0)
    built = ESGPCell(3, 64, seed=2, **knobs)
    deferred = ESGPCell(3, 64, seed=2, device="meta", **knobs).to_empty(device="cpu")
    deferred.reset_reservoir()  # the sparse gate's values are made anew here (their nnz was unknown)
    assert torch.equal(deferred.gate.bias, torch.full((64,), 2.5))
    torch.manual_seed(0)
    deferred.reset_parameters()
    assert torch.equal(deferred.gate.bias, built.gate.bias) and torch.equal(deferred.Win.weight, built.Win.weight)
    assert float(deferred.Win.weight.detach().abs().max()) <= 0.2 / 3**0.5
