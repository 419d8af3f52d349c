"""Forward and train step against hidden size, density, path and gate (I=16, T=32, B=8).

    python -m pytest benchmarks/test_scaling.py --benchmark-json=.results/scaling.json
    python benchmarks/plot.py .results/scaling.json -o scaling.png

The train step is forward, a mean-square loss over all outputs and backward (no optimizer).
``peak_mib`` in ``extra_info``: on CPU the peak RSS of a fresh process that builds the model and runs
one such step with a linear readout (benchmarks/peak_memory.py); on CUDA the memory the step adds.
"""

from __future__ import annotations

import functools

import pytest
import torch
from _bench import cuda_peak_mib, devices, peak_rss_mib, synchronize

from esgp_sparse import ESGP

I, T, B = 16, 32, 8

# (hidden size, connections per unit, gate, path)
CASES = [
    pytest.param(1_000, 10, "diagonal", "sparse", marks=pytest.mark.quick),
    pytest.param(10_000, 10, "diagonal", "sparse", marks=pytest.mark.quick),
    pytest.param(100_000, 10, "diagonal", "sparse", marks=pytest.mark.quick),
    pytest.param(1_000_000, 10, "diagonal", "sparse", marks=pytest.mark.quick),
    pytest.param(1_000, 10, "sparse", "sparse"),
    pytest.param(10_000, 10, "sparse", "sparse"),
    pytest.param(100_000, 10, "sparse", "sparse"),
    pytest.param(1_000_000, 10, "sparse", "sparse"),
    pytest.param(10_000, 100, "diagonal", "sparse"),
    pytest.param(10_000, 100, "sparse", "sparse"),
    pytest.param(1_000, 10, "dense", "sparse"),
    pytest.param(1_000, 10, "dense", "dense"),
    pytest.param(4_096, 41, "dense", "sparse"),
    pytest.param(4_096, 41, "dense", "dense"),
]
IDS = lambda v: str(v)  # noqa: E731


@functools.cache  # forward and train step of a case share one build (1e6 units take ~15 s to build)
def model(hidden: int, per_unit: int, gate: str, path: str, device: str) -> ESGP:
    return ESGP(I, hidden, sparsity=per_unit / hidden, gate=gate, path=path, seed=0, device=device)


def info(net: ESGP, hidden: int, per_unit: int, device: str) -> dict:
    cell = net.cells[0]
    return dict(
        hidden=hidden,
        per_unit=per_unit,
        density=per_unit / hidden,
        nnz=cell.nnz,
        gate=net.gate_type,
        path=cell.path,
        device=device,
        dtype="float32",
        batch=B,
        steps=T,
        input_size=I,
        model=f"gate={net.gate_type} path={cell.path}",
    )


def peak(fn, device: str, hidden: int, per_unit: int, gate: str, path: str, forward: bool) -> float:
    if device == "cuda":
        return cuda_peak_mib(fn)
    return peak_rss_mib(
        hidden=hidden,
        per_unit=per_unit,
        gate=gate,
        path=path,
        batch=B,
        steps=T,
        input_size=I,
        repeats=1,
        forward=forward,
        no_optimizer=True,
    )


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("hidden, per_unit, gate, path", CASES, ids=IDS)
@pytest.mark.parametrize("kind", ["forward", "train"])
def test_scaling(benchmark, kind, hidden, per_unit, gate, path, device):
    net = model(hidden, per_unit, gate, path, device)
    x = torch.randn(B, T, I, device=device)

    def forward():
        with torch.no_grad():
            out = net(x)[0]
        synchronize(device)
        return out

    def step():
        net.zero_grad(set_to_none=True)
        loss = net(x)[0].square().mean()
        loss.backward()
        synchronize(device)
        return loss

    run = forward if kind == "forward" else step
    assert torch.isfinite(run()).all()  # warm-up, checked once before timing
    benchmark.group = f"scaling-{kind}-{device}"
    peak_mib = peak(run, device, hidden, per_unit, gate, path, forward=kind == "forward")
    benchmark.extra_info.update(info(net, hidden, per_unit, device), peak_mib=peak_mib)
    benchmark.pedantic(run, rounds=3 if hidden < 1_000_000 else 1, iterations=1, warmup_rounds=0)
