"""torch.func on the modules: functional_call and grad work; vmap works on the cell's dense path and
raises a clear error where it cannot."""

from __future__ import annotations

import pytest
import torch
from _testing import TOL

from esgp_sparse import ESGP, ESGPCell


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_functional_call_and_grad_equal_autograd(path):
    torch.manual_seed(0)
    model = ESGP(3, 30, num_layers=2, sparsity=0.2, path=path, seed=0, dtype=torch.float64)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(parameters):
        return torch.func.functional_call(model, parameters, (x,))[0].square().sum()

    got = torch.func.grad(loss)(params)
    loss(dict(model.named_parameters())).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, **TOL[torch.float64], msg=name)


def test_vmap_over_the_sequence_model_is_refused_clearly():
    model = ESGP(3, 30, sparsity=0.2, seed=0)
    with pytest.raises(NotImplementedError, match=r"ESGP: torch.func.vmap is not supported .*batch dimension B"):
        torch.func.vmap(lambda xb: model(xb)[0])(torch.randn(4, 2, 6, 3))


def test_vmap_over_the_dense_path_cell_works_and_the_sparse_one_is_refused():
    torch.manual_seed(0)
    x, h = torch.randn(4, 2, 3), torch.randn(4, 2, 30)
    for gate in ("dense", "diagonal", "lowrank"):
        dense = ESGPCell(3, 30, sparsity=0.2, gate=gate, path="dense", seed=0)
        batched = torch.func.vmap(dense)(x, h)
        torch.testing.assert_close(batched, dense(x.reshape(8, 3), h.reshape(8, 30)).reshape(4, 2, 30))
    sparse = ESGPCell(3, 30, sparsity=0.2, path="sparse", seed=0)
    with pytest.raises(NotImplementedError, match=r"ESGPCell: torch.func.vmap is not supported \(the CSR products"):
        torch.func.vmap(sparse)(x, h)
