"""Where a train step's time goes at the sequential-MNIST shape (I=1, H=128, T=784, B=128, sparsity
0.1, dense gate; forward, MSE on the last state, backward), eager and with ``compile=True``.

    python benchmarks/profile_step.py       # one JSON line per mode (ms)

``step_ms``: median of 5 steps without the profiler. Then one step under ``torch.profiler``, its
operators' self time summed by kind: ``gemm_ms`` (mm, addmm, bmm and their in-place forms),
``copy_ms`` (copy_, fill_, zero_), ``elementwise_ms`` (every other ATen operator), ``compiled_ms``
(Inductor's compiled chunks, which hold both their GEMMs and their fused elementwise loops); the
rest of the profiled step, ``python_ms``, is the time between operators: Python, autograd and
dispatch (the profiler's own cost inflates it and the step, ``profiled_ms``).
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from torch import nn

from esgp_sparse import ESGP

GEMM = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::matmul"}
COPY = {"aten::copy_", "aten::fill_", "aten::zero_"}


def train_step(net: ESGP, x: torch.Tensor, target: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    out = net(x)[0]
    nn.functional.mse_loss(out[:, -1], target).backward()


def main() -> None:
    for compiled in (False, True):
        torch.manual_seed(0)
        net = ESGP(1, 128, sparsity=0.1, seed=0, compile=compiled)
        x, target = torch.randn(128, 784, 1), torch.randn(128, 128)

        def step(net: ESGP = net, x: torch.Tensor = x, target: torch.Tensor = target) -> None:
            train_step(net, x, target)

        for _ in range(2):
            step()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        with torch.profiler.profile() as prof:
            start = time.perf_counter()
            step()
            profiled = time.perf_counter() - start
        kinds = dict(gemm=0.0, copy=0.0, elementwise=0.0, compiled=0.0)
        for event in prof.key_averages():
            self_ms = event.self_cpu_time_total / 1e3
            if "CompiledFxGraph" in event.key or "Compiled Region" in event.key:
                kinds["compiled"] += self_ms
            elif event.key in GEMM:
                kinds["gemm"] += self_ms
            elif event.key in COPY:
                kinds["copy"] += self_ms
            elif event.key.startswith("aten::"):
                kinds["elementwise"] += self_ms
        record = dict(mode="compile=True" if compiled else "eager", step_ms=round(statistics.median(times) * 1e3, 1))
        record |= {f"{k}_ms": round(v, 1) for k, v in kinds.items()}
        record |= dict(profiled_ms=round(profiled * 1e3, 1), python_ms=round(profiled * 1e3 - sum(kinds.values()), 1))
        print(json.dumps(record | dict(torch=torch.__version__)), flush=True)


if __name__ == "__main__":
    main()
