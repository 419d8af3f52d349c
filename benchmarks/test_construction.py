"""Construction of an ESGP (reservoir pattern, radius, scaling, buffers) against hidden size and density.

    python -m pytest benchmarks/test_construction.py --benchmark-json=.results/construction.json
"""

from __future__ import annotations

import pytest

from _bench import measure_peak
from esgp_sparse import ESGP

# (hidden size, connections per unit); the density is their ratio.
CASES = [
    pytest.param(10_000, 10, marks=pytest.mark.quick),
    pytest.param(30_000, 10),
    pytest.param(100_000, 10, marks=pytest.mark.quick),
    pytest.param(300_000, 10),
    pytest.param(1_000_000, 10, marks=pytest.mark.quick),
    pytest.param(10_000, 100),
    pytest.param(100_000, 100),
]


@pytest.mark.parametrize("gate", ["diagonal", "sparse"])
@pytest.mark.parametrize("hidden, per_unit", CASES, ids=lambda v: str(v))
def test_construction(benchmark, hidden, per_unit, gate):
    def build():
        return ESGP(16, hidden, sparsity=per_unit / hidden, gate=gate, seed=0)

    model = build()
    cell = model.cells[0]
    benchmark.group = "construction"
    benchmark.extra_info.update(
        hidden=hidden, density=per_unit / hidden, per_unit=per_unit, nnz=cell.nnz, gate=gate, path=cell.path,
        radius_method=cell.radius_method, model=f"esgp_sparse gate={gate}", device="cpu",
        peak_mib=measure_peak(build),
    )
    del model
    benchmark.pedantic(build, rounds=3 if hidden <= 100_000 else 1, iterations=1)
