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


#: Measured with benchmarks/test_recurrent_product.py (one step, B in {32, 128}, float32), read with
#: benchmarks/report.py. CPU (2-core AMD EPYC, torch 2.13): the CSR op costs about 20 us of fixed
#: overhead, so dense won at H <= 128 at B=32 at every density (at B=128 the two were within 15 %);
#: from H=256 the CSR product won at d <= 0.1 (H=1024, B=32, d=0.01: 47 us against 384 us dense;
#: H=4096: 0.30 ms against 8.2 ms) and lost or tied from d=0.2-0.3 on. CUDA has not been measured
#: yet (benchmarks/gpu.sh runs the same study there): until it is, CUDA uses the CPU's crossover.
CROSSOVER: dict[str, Crossover] = {
    "cpu": Crossover(min_hidden=256, max_density=0.1),
}


def choose_path(hidden_size: int, nnz: int, device_type: str) -> Path:
    """``"sparse"`` where the measured crossover of ``device_type`` says the CSR product wins.

    Device types without a measured crossover (CUDA, for now) use the CPU's.
    """
    crossover = CROSSOVER.get(device_type, CROSSOVER["cpu"])
    density = nnz / float(hidden_size) ** 2
    if hidden_size >= crossover.min_hidden and density <= crossover.max_density:
        return "sparse"
    return "dense"
