"""Dense or sparse: which recurrent product serves a reservoir best, from its size, nnz and device."""

from __future__ import annotations

from typing import Literal, NamedTuple

Path = Literal["dense", "sparse"]
PathRequest = Literal["auto", "dense", "sparse"]
PATHS: tuple[PathRequest, ...] = ("auto", "dense", "sparse")


class Crossover(NamedTuple):
    """Where the CSR product starts to beat the dense GEMM on one device type.

    Attributes:
        min_hidden: below this many units the dense GEMM won at every density measured.
        max_density: at or below this density (from ``min_hidden`` units up) the CSR product won.
    """

    min_hidden: int
    max_density: float


#: Measured with benchmarks/test_recurrent_product.py (one step's product, float32, median of the
#: rounds of one run; benchmarks/results/recurrent_product.json, read with benchmarks/report.py) on a
#: 2-core AMD EPYC, torch 2.13. The CSR op has about 20 us of fixed cost. At H <= 64 the dense GEMM
#: won at both batches and every density. At H=128 the batch decides: dense won at B=32 (16.3 us
#: against 20.1 at d=0.01), CSR at B=128 up to d=0.1 (23.6 against 34.3 us at d=0.01); the path is
#: fixed at construction, before any batch is seen, so H=128 stays dense. From H=256 the CSR
#: product won at both batches up to d=0.1 (H=1024, B=32, d=0.01: 46.5 against 383.5 us; H=4096:
#: 0.30 against 8.2 ms). At d=0.2 it won at B=32 for H=512 and 1024 (86.8 against 105.4 us, 282
#: against 382 us) and at B=128 for H=512, tied at H=256 and lost at H=1024, B=128 (1420 against
#: 1333 us); from d=0.3 dense won at every size measured (H <= 1024). CUDA has not been measured
#: yet (benchmarks/gpu.sh runs the same study there): until it is, CUDA uses the CPU's crossover.
CROSSOVER: dict[str, Crossover] = {
    "cpu": Crossover(min_hidden=256, max_density=0.1),
}


def choose_path(hidden_size: int, density: float, device_type: str) -> Path:
    """``"sparse"`` where the measured crossover of ``device_type`` says the CSR product wins.

    ``density`` is the fraction of connections present **as asked for** (``sparsity``), not as drawn:
    two draws with the same arguments differ in nnz, and must not differ in path (a path also
    decides which dtypes and kernels a model runs with). Device types without a measured crossover
    (CUDA, for now) use the CPU's.
    """
    crossover = CROSSOVER.get(device_type, CROSSOVER["cpu"])
    if hidden_size >= crossover.min_hidden and density <= crossover.max_density:
        return "sparse"
    return "dense"
