"""Threads in the radius measurement: one sparse product on 1 and 2 threads across sizes (where
``THREADED_MIN_NNZ`` comes from), then the power iteration on 1 and 2 threads at 1e5-1e6 units
(10 connections per unit), and a whole ``ESGP`` build at 1e6 units.

    python benchmarks/radius_threads.py > benchmarks/results/radius_threads.jsonl

Run it alone: two CPU-heavy jobs on this 2-core machine slow each other down by more than the
threads save. Each line is one JSON record; product times are the median of 21 calls, the rest one run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _testing import study_matrix  # noqa: E402

from esgp_sparse import ESGP  # noqa: E402
from esgp_sparse.init import measure_radius, whole_rows  # noqa: E402
from esgp_sparse.init import radius as radius_module  # noqa: E402


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def product_seconds(rows: radius_module.Rows, x: np.ndarray) -> float:
    rows.times(x)
    times = []
    for _ in range(21):
        start = time.perf_counter()
        rows.times(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    threshold = radius_module.THREADED_MIN_NNZ
    radius_module.THREADED_MIN_NNZ = 1  # measured below, so not applied here
    for n in (4_000, 16_000, 32_000, 64_000, 128_000, 1_000_000):
        matrix = study_matrix(n, 10, 0)
        x = np.random.default_rng(0).standard_normal(n)
        seconds = {}
        for threads in (1, 2):
            with radius_module.threaded_rows(whole_rows(matrix), threads) as rows:
                seconds[threads] = product_seconds(rows, x)
        emit(study="product", n=n, nnz=matrix.nnz, one_thread_s=seconds[1], two_threads_s=seconds[2])
    radius_module.THREADED_MIN_NNZ = threshold
    for n in (100_000, 300_000, 1_000_000):
        matrix = study_matrix(n, 10, 0)
        for threads in (1, 2):
            start = time.perf_counter()
            estimate = measure_radius(matrix, "power", threads=threads)
            emit(
                study="power",
                n=n,
                nnz=matrix.nnz,
                threads=threads,
                seconds=time.perf_counter() - start,
                radius=estimate.radius,
                error=estimate.error,
                method=estimate.method,
                products=estimate.products,
            )
    for threads in (1, 2):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        model = ESGP(16, 1_000_000, sparsity=1e-5, gate="diagonal", seed=0)
        cell = model.cells[0]
        emit(
            study="build",
            n=1_000_000,
            torch_threads=threads,
            seconds=time.perf_counter() - start,
            radius=cell.radius,
            error=cell.radius_error,
            method=cell.radius_measured_with,
        )


if __name__ == "__main__":
    main()
