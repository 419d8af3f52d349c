"""Construction of an ESGP (reservoir pattern, radius, scaling, buffers) against hidden size and density.

python -m pytest benchmarks/test_construction.py --benchmark-json=.results/construction.json
"""

from __future__ import annotations

import pytest
from _bench import peak_rss_mib

from esgp_sparse import ESGP

# (hidden size, connections per unit, gate); the density is connections per unit over units.
SIZES = [(10_000, 10), (30_000, 10), (100_000, 10), (300_000, 10), (1_000_000, 10), (10_000, 100), (100_000, 100)]
QUICK = {(10_000, 10, "diagonal"), (100_000, 10, "diagonal"), (1_000_000, 10, "diagonal")}
CASES = [
    pytest.param(*case, marks=pytest.mark.quick) if case in QUICK else case
    for case in [(h, c, g) for g in ("diagonal", "sparse") for h, c in SIZES]
]


@pytest.mark.parametrize("hidden, per_unit, gate", CASES, ids=lambda v: str(v))
def test_construction(benchmark, hidden, per_unit, gate):
    def build():
        return ESGP(16, hidden, sparsity=per_unit / hidden, gate=gate, seed=0)

    model = build()
    cell = model.cells[0]
    benchmark.group = "construction"
    benchmark.extra_info.update(
        hidden=hidden,
        density=per_unit / hidden,
        per_unit=per_unit,
        nnz=cell.nnz,
        gate=gate,
        path=cell.path,
        radius_method=cell.radius_method,
        model=f"esgp_sparse gate={gate}",
        device="cpu",
        peak_mib=peak_rss_mib(hidden=hidden, per_unit=per_unit, gate=gate, repeats=0),  # a fresh process that builds
    )
    del model, cell
    benchmark.pedantic(build, rounds=3 if hidden <= 100_000 else 1, iterations=1)
