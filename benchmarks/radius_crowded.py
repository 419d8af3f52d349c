"""How many power steps a crowded spectral edge needs: the power iteration on a random reservoir
(10 connections per unit, ``drawn_rows(n, 10 / n, seed, (0,))``), with a Rayleigh-Ritz step
(:func:`esgp_sparse.init.radius._ritz`, ``size`` vectors) at each of the given step counts; prints
the growth rate over the second half, the Ritz value and its residual at each.

    python benchmarks/radius_crowded.py 1000000 1 400,800,1600,3200,6400,12800 100

Products on 2 threads (row halves); one JSON-free line per check, as recorded in
``benchmarks/results/radius_crowded.txt``.
"""

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

from esgp_sparse.init import radius as R
from esgp_sparse.init.reservoir import drawn_rows

n = int(sys.argv[1])
per = 10
seed = int(sys.argv[2])
checks = [int(c) for c in sys.argv[3].split(",")]
size = int(sys.argv[4])
crow, col, val = drawn_rows(n, per / n, seed, (0,), values=True)
A = sp.csr_array((val, col, crow), shape=(n, n))
h = n // 2
A1 = A[:h]
A2 = A[h:]
pool = ThreadPoolExecutor(2)


def mv(x):
    out = np.empty(n)
    f1 = pool.submit(A1.__matmul__, x)
    f2 = pool.submit(A2.__matmul__, x)
    out[:h] = f1.result()
    out[h:] = f2.result()
    return out


x = R._start_block(n, 1)[0]
x /= np.linalg.norm(x)
lg = []
t0 = time.perf_counter()
rows = R.whole_rows(A)
for step in range(1, max(checks) + 1):
    y = mv(x)
    nr = np.linalg.norm(y)
    lg.append(np.log(nr))
    x = y / nr
    if step in checks:
        est = np.exp(np.mean(lg[step // 2 :]))
        t = time.perf_counter()
        v, vec, res, sp_ = R._ritz(rows, x, size)
        print(
            f"step {step} t={time.perf_counter() - t0:.1f} growth={est:.6f} ritz={abs(v):.6f} res={res:.2e} "
            f"ratio={abs(v) / est - 1:+.2e} ritz_s={time.perf_counter() - t:.1f}",
            flush=True,
        )
