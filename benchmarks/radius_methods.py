"""The measurements behind the choices in ``esgp_sparse/init/radius.py``, in one run:

- ARPACK with 6 eigenvalues in a 64-vector Krylov space (the old setting) against 20 in 200 (the
  current one), at tol=1e-10, on the two random reservoirs where the old setting missed;
- plain power iteration (0.1.0's method: the mean growth of the last 200 of 500 steps) on a dominant
  non-normal complex pair and on a crowded edge;
- the Rayleigh-Ritz step with 30 or 100 vectors after 800 and 3,200 power steps (1e5 units).

    python benchmarks/radius_methods.py > benchmarks/results/radius_methods.jsonl

Each line is one JSON record; ``rel`` is relative to the current ``measure_radius(matrix, "power")``,
whose pair (radius, residual) is given too.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as sla

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _testing import complex_pair_matrix, study_matrix  # noqa: E402

from esgp_sparse.init import measure_radius  # noqa: E402
from esgp_sparse.init.radius import _ritz, _start_block  # noqa: E402


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def old_power(matrix, iterations: int = 500, window: int = 200) -> float:
    x = _start_block(matrix.shape[0], 1)[0]
    x /= np.linalg.norm(x)
    growth = []
    for _ in range(iterations):
        y = matrix @ x
        growth.append(np.log(np.linalg.norm(y)))
        x = y / np.linalg.norm(y)
    return float(np.exp(np.mean(growth[-window:])))


def main() -> None:
    for n, per_unit in ((10_000, 100), (30_000, 10)):
        matrix = study_matrix(n, per_unit, 0)
        ours = measure_radius(matrix, "power")
        for k, ncv in ((6, 64), (20, 200)):
            start = time.perf_counter()
            values = sla.eigs(
                matrix, k=k, ncv=ncv, which="LM", tol=1e-10, v0=_start_block(n, 1)[0], return_eigenvectors=False
            )
            emit(
                study="arpack",
                n=n,
                per_unit=per_unit,
                k=k,
                ncv=ncv,
                radius=float(np.abs(values).max()),
                rel=float(np.abs(values).max() / ours.radius - 1),
                seconds=round(time.perf_counter() - start, 2),
                power_radius=ours.radius,
                power_residual=ours.error,
                power_method=ours.method,
            )
    for theta, c in ((0.01, 10), (0.01, 100), (0.05, 10), (0.05, 100)):
        matrix = complex_pair_matrix(3000, theta, c)
        exact = float(np.abs(np.linalg.eigvals(matrix.toarray())).max())
        emit(
            study="plain power on a complex pair",
            theta=theta,
            c=c,
            rel=old_power(matrix) / exact - 1,
            power_rel=measure_radius(matrix, "power").radius / exact - 1,
        )
    matrix = study_matrix(100_000, 10, 0)
    ours = measure_radius(matrix, "power")
    emit(
        study="plain power on a crowded edge",
        n=100_000,
        per_unit=10,
        rel=old_power(matrix) / ours.radius - 1,
        power_radius=ours.radius,
        power_residual=ours.error,
    )
    x = _start_block(matrix.shape[0], 1)[0]
    x /= np.linalg.norm(x)
    for step in range(1, 3201):
        x = matrix @ x
        x /= np.linalg.norm(x)
        if step in (800, 3200):
            for size in (30, 100):
                value, _, residual, _ = _ritz(matrix, x, size)
                emit(
                    study="ritz size",
                    n=100_000,
                    per_unit=10,
                    steps=step,
                    size=size,
                    rel=abs(value) / ours.radius - 1,
                    residual=residual,
                )


if __name__ == "__main__":
    main()
