"""Shared helpers of the test suite: small reservoirs, tolerances, the CUDA skip."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from esgp_sparse.init import make_rng, random_pattern, random_reservoir
from esgp_sparse.ops import csr_to_dense, make_csr

# Fast path against reference, per dtype; independent of the environment.
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is present")


def reservoir_tensors(hidden: int, density: float, seed: int = 0, dtype=torch.float64, device="cpu"):
    """(crow, col, values, dense) of a scaled random reservoir."""
    r = random_reservoir(hidden, density, 0.9, seed)
    crow = torch.from_numpy(r.crow_indices).to(device)
    col = torch.from_numpy(r.col_indices).to(device)
    values = torch.from_numpy(r.values).to(device=device, dtype=dtype)
    return crow, col, values, csr_to_dense(crow, col, values, hidden)


def pattern(hidden: int, density: float, seed: int = 0, device="cpu"):
    crow, col, _, _ = reservoir_tensors(hidden, density, seed, device=device)
    return make_csr(crow, col, hidden)


def random_matrix(hidden, per_row, seed):
    crow, col = random_pattern(hidden, per_row / hidden, make_rng(seed))
    values = make_rng(seed, 9).standard_normal(col.size)
    return sp.csr_array((values, col, crow), shape=(hidden, hidden))


def study_matrix(n, per_row, seed):
    """The matrices of the validation study in benchmarks/test_radius.py."""
    crow, col = random_pattern(n, per_row / n, make_rng(seed))
    return sp.csr_array((make_rng(seed, 5).standard_normal(col.size), col, crow), shape=(n, n))


def complex_pair_matrix(n, theta, c, seed=0):
    """A bulk of radius about 0.53 and, coupled one way to it, a 2 x 2 rotation by theta conjugated by
    diag(c, 1): a dominant, non-normal complex pair of modulus 1, on which the growth rate of plain
    power iteration swings by about 1 %."""
    bulk = random_matrix(n - 2, 10, seed) * (0.53 / np.sqrt(10))
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pair = np.diag([c, 1.0]) @ rotation @ np.diag([1 / c, 1.0])
    coupling = sp.random(n - 2, 2, density=0.5, random_state=np.random.default_rng(seed)) * 0.3
    return sp.csr_array(sp.bmat([[bulk, coupling], [None, sp.csr_array(pair)]]))


def outlier_matrix(n, per_row, mean, seed=0):
    """Entries of non-zero mean: an eigenvalue near per_row * mean, just outside the bulk."""
    matrix = random_matrix(n, per_row, seed)
    matrix.data += mean
    return matrix


def kept_bytes(module: torch.nn.Module, *args: torch.Tensor) -> int:
    """Bytes of the distinct storages a forward leaves behind: those autograd keeps for the
    backward, and the output's."""
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        keep(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        for tensor in module(*args):
            keep(tensor)
    return sum(storages.values())
