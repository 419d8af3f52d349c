from __future__ import annotations

import pytest
import torch

from esgp_sparse import ESGP, ESGPCell
from esgp_sparse.init import reservoir_from_matrix
from esgp_sparse.ops import choose_path
from esgp_sparse.ops.path import CROSSOVER


@pytest.mark.parametrize("device", ["cpu"])
def test_follows_the_measured_crossover(device):
    crossover = CROSSOVER[device]
    big = max(4096, crossover.min_hidden)
    assert choose_path(big, crossover.max_density, device) == "sparse"
    assert choose_path(big, crossover.max_density * 1.5, device) == "dense"
    assert choose_path(big, 10 / big, device) == "sparse"
    small = crossover.min_hidden - 1
    assert choose_path(small, 1 / small, device) == "dense"


def test_unmeasured_devices_use_the_cpu_crossover():
    assert choose_path(4096, 10 / 4096, "cuda") == choose_path(4096, 10 / 4096, "cpu")
    assert choose_path(200, 0.1, "cuda") == "dense"
    assert choose_path(64, 1 / 64, "xpu") == choose_path(64, 1 / 64, "cpu")


def test_the_path_does_not_depend_on_the_seed():
    # H=256, sparsity=0.1 sits on the crossover: drawn nnz fall on both sides of 0.1 * H^2.
    cells = [ESGPCell(2, 256, sparsity=0.1, seed=seed) for seed in range(8)]
    nnz = [cell.nnz for cell in cells]
    assert min(nnz) <= 0.1 * 256**2 < max(nnz)  # the draws straddle the crossover ...
    assert {cell.path for cell in cells} == {choose_path(256, 0.1, "cpu")}  # ... the path does not
    assert {ESGP(2, 256, seed=seed).cells[0].path for seed in range(4)} == {"sparse"}


def test_a_given_reservoir_is_judged_by_its_actual_density():
    dense_enough = torch.ones(300, 300).numpy() * 0.001
    cell = ESGPCell(2, 300, sparsity=0.01, reservoir=reservoir_from_matrix(dense_enough))
    assert cell.path == "dense"  # density 1.0, whatever sparsity says
    restored = ESGPCell(2, 300, sparsity=0.01, seed=0)
    restored.load_state_dict(cell.state_dict())
    assert restored.path == "dense" and restored.nnz == 300 * 300
