"""The spectral radius methods against ARPACK at a tight tolerance (tol=1e-8), on random reservoirs.

    python -m pytest benchmarks/test_radius.py --benchmark-json=.results/radius.json
    python benchmarks/report.py .results/radius.json

Each case is the matrix of (units, connections per unit, seed), built as the tests build it.
``rel_error`` in ``extra_info`` is the method's radius over the tight ARPACK radius, minus 1. The
full study runs about 20 minutes on a 2-core CPU, nearly all of it in ARPACK at 1e5 units.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.sparse as sp

from esgp_sparse.init import make_rng, random_pattern, spectral_radius

CASES = (
    [(10_000, c, s) for c in (3, 5, 10, 20) for s in range(4)]
    + [(30_000, c, s) for c in (5, 10, 20) for s in range(3)]
    + [(100_000, c, s) for c in (5, 10, 20) for s in range(2)]
)
QUICK = {(10_000, 10, 0), (10_000, 10, 1), (10_000, 3, 3)}


@functools.lru_cache(maxsize=1)
def matrix(n: int, per_unit: int, seed: int) -> sp.csr_array:
    crow, col = random_pattern(n, per_unit / n, make_rng(seed))
    return sp.csr_array((make_rng(seed, 5).standard_normal(col.size), col, crow), shape=(n, n))


@functools.cache
def reference(n: int, per_unit: int, seed: int) -> float:
    return spectral_radius(matrix(n, per_unit, seed), "arpack", tol=1e-8)


@pytest.mark.parametrize("method", ["arpack", "power"])
@pytest.mark.parametrize(
    "n, per_unit, seed",
    [pytest.param(*case, marks=pytest.mark.quick) if case in QUICK else case for case in CASES],
    ids=lambda v: str(v),
)
def test_radius(benchmark, n, per_unit, seed, method):
    a = matrix(n, per_unit, seed)
    exact = reference(n, per_unit, seed)
    circle = float(np.sqrt((a.data**2).sum() / n))  # the circular law's bulk edge, for comparison
    benchmark.group = "radius"
    rho = benchmark.pedantic(lambda: spectral_radius(a, method), rounds=1, iterations=1)
    benchmark.extra_info.update(
        n=n,
        hidden=n,
        per_unit=per_unit,
        seed=seed,
        nnz=a.nnz,
        method=method,
        model=method,
        radius=rho,
        reference=exact,
        rel_error=rho / exact - 1,
        circle_rel_error=circle / exact - 1,
    )
    assert abs(rho / exact - 1) <= 1e-2
