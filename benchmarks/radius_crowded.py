"""How many power steps a crowded spectral edge needs: the power iteration on a random reservoir
(10 connections per unit, ``drawn_rows(n, 10 / n, seed, (0,))``), with a Rayleigh-Ritz step
(:func:`esgp_sparse.init.radius._ritz`, ``size`` vectors) at each of the given step counts; prints
the growth rate over the second half, the Ritz value and its residual at each.

    python benchmarks/radius_crowded.py 1000000 1 400,800,1600,3200,6400,12800 100

Products on 2 threads (the library's row blocks); one line per check, as recorded in
``benchmarks/results/radius_crowded.txt``. With ``default`` for the steps, the library's own
measurement instead (:func:`esgp_sparse.init.measure_radius`, every option at its default): one
line with its method, radius, error estimate, products, seconds and warnings.

    python benchmarks/radius_crowded.py 300000 1 default
"""

import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

from esgp_sparse.init import radius as R
from esgp_sparse.init.reservoir import drawn_rows


def main() -> None:
    n, seed = int(sys.argv[1]), int(sys.argv[2])
    crow, col, val = drawn_rows(n, 10 / n, seed, (0,), values=True)
    matrix = sp.csr_array((val, col, crow), shape=(n, n))
    if sys.argv[3] == "default":
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            estimate = R.measure_radius(matrix)
        print(
            f"default t={time.perf_counter() - start:.1f} method={estimate.method} radius={estimate.radius:.9f} "
            f"error={estimate.error:.2e} products={estimate.products} warnings={len(warned)}",
            flush=True,
        )
        return
    size = int(sys.argv[4])
    checks = [int(c) for c in sys.argv[3].split(",")]
    rows = R.whole_rows(matrix)
    x = R._start_block(n, 1)[0]
    x /= np.linalg.norm(x)
    log_growth = []
    start = time.perf_counter()
    with R.threaded_rows(rows, 2) as threaded:
        for step in range(1, max(checks) + 1):
            y = threaded.times(x)
            norm = np.linalg.norm(y)
            log_growth.append(np.log(norm))
            x = y / norm
            if step not in checks:
                continue
            growth = np.exp(np.mean(log_growth[step // 2 :]))
            ritz_start = time.perf_counter()
            value, _, residual, _ = R._ritz(rows, x, size)
            print(
                f"step {step} t={time.perf_counter() - start:.1f} growth={growth:.6f} ritz={abs(value):.6f} "
                f"res={residual:.2e} ratio={abs(value) / growth - 1:+.2e} "
                f"ritz_s={time.perf_counter() - ritz_start:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
