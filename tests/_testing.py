"""Shared helpers of the test suite: small reservoirs, tolerances, the CUDA skip."""

from __future__ import annotations

import pytest
import torch

from esgp_sparse.init import random_reservoir
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
