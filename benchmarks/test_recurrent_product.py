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


TORCH_SPARSE_WHY = (
    "torch_sparse (PyG) is not installed: it is not a dependency (no wheel on the registry for this torch, "
    "12-45 minutes to build from source on 2 cores, and PyG itself moved to torch.sparse); build it by hand "
    "to run this comparison"
)


@pytest.mark.parametrize("batch", [1, 8, 32], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("hidden", [4096, 65536, 1_000_000], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("backend", ["torch-int32", "torch-int64", "torch_sparse"])
def test_against_torch_sparse(benchmark, backend, hidden, batch):
    """torch's CSR product (int32 or int64 indices) against PyG's torch-sparse, 10 connections per
    unit, float32, CPU: the comparison behind README's "Why not torch-sparse"."""
    if backend == "torch_sparse":
        torch_sparse = pytest.importorskip("torch_sparse", reason=TORCH_SPARSE_WHY)
    reservoir = random_reservoir(
        hidden, 10 / hidden, 0.9, seed=0, radius_method="arpack" if hidden <= 65536 else "power"
    )
    crow = torch.from_numpy(reservoir.crow_indices)
    col = torch.from_numpy(reservoir.col_indices)
    values = torch.from_numpy(reservoir.values).float()
    h = torch.randn(hidden, batch)
    expected = csr_matmul(crow, col, values, h)
    if backend == "torch_sparse":
        matrix = torch_sparse.SparseTensor(
            rowptr=crow.long(), col=col.long(), value=values, sparse_sizes=(hidden, hidden)
        )

        def run():
            return matrix.matmul(h)
    else:
        dtype = torch.int32 if backend == "torch-int32" else torch.int64
        crow_b, col_b = crow.to(dtype), col.to(dtype)

        def run():
            return csr_matmul(crow_b, col_b, values, h)

    torch.testing.assert_close(run(), expected, rtol=1e-4, atol=1e-4)
    benchmark.group = f"torch-sparse-H{hidden}-B{batch}"
    benchmark.extra_info.update(backend=backend, path=backend, hidden=hidden, batch=batch, nnz=reservoir.nnz)
    benchmark(run)
