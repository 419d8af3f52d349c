"""The recurrent product ``W @ h`` (one step, feature-major): dense GEMM against the CSR custom op.

This study measured the crossover that ``path="auto"`` uses (``esgp_sparse/ops/path.py``)::

    python -m pytest benchmarks/test_recurrent_product.py --benchmark-json=.results/product.json
    python benchmarks/report.py .results/product.json
"""

from __future__ import annotations

import pytest
import torch
from _bench import devices, synchronize

from esgp_sparse.init import random_reservoir
from esgp_sparse.ops import csr_matmul, csr_to_dense

SIZES = [64, 128, 256, 512, 1024, 2048, 4096]
DENSITIES = [0.01, 0.03, 0.1, 0.2, 0.3, 0.5]
BATCHES = [32, 128]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("density", DENSITIES, ids=lambda d: f"d{d}")
@pytest.mark.parametrize("hidden", SIZES, ids=lambda h: f"H{h}")
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_product(benchmark, path, hidden, density, batch, device):
    if density * hidden < 1:
        pytest.skip(f"under one connection per unit at H={hidden}, d={density}")
    if hidden >= 2048 and density >= 0.2 and device == "cpu":
        pytest.skip("dense arithmetic of this size is not informative on the crossover; skipped for time")
    reservoir = random_reservoir(hidden, density, 0.9, seed=0)
    crow = torch.from_numpy(reservoir.crow_indices).to(device)
    col = torch.from_numpy(reservoir.col_indices).to(device)
    values = torch.from_numpy(reservoir.values).float().to(device)
    dense = csr_to_dense(crow, col, values, hidden)
    h = torch.randn(hidden, batch, device=device)
    torch.testing.assert_close(csr_matmul(crow, col, values, h), dense @ h, rtol=1e-4, atol=1e-4)

    if path == "dense":

        def run():
            y = torch.mm(dense, h)
            synchronize(device)
            return y
    else:

        def run():
            y = csr_matmul(crow, col, values, h)
            synchronize(device)
            return y

    benchmark.group = f"product-{device}-H{hidden}-B{batch}"
    benchmark.extra_info.update(
        path=path, hidden=hidden, density=density, batch=batch, nnz=reservoir.nnz, device=device, dtype="float32"
    )
    benchmark(run)
