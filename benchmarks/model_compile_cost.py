"""What ``torch.compile(model)`` of a whole model costs (Inductor, forward + backward): a 2-layer
ESGP with a linear head, at T=10 and at T=1000, each in a fresh process with an empty Inductor
cache, against nn.GRU of the same size. Each layer is one opaque node, so compile time should not
grow with T.

    python benchmarks/model_compile_cost.py     # prints one JSON line per (model, T), seconds

``compile_s`` is the first call minus the median of 5 later calls (what compiling added);
``new_length_s`` is a call at another T right after (a first new T makes Dynamo mark T dynamic and
compile once more; later ones compile nothing).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, kind: str, hidden: int = 128):
        super().__init__()
        from esgp_sparse import ESGP

        if kind == "esgp":
            self.rnn: nn.Module = ESGP(8, hidden, num_layers=2, sparsity=0.1, seed=0)
        else:
            self.rnn = nn.GRU(8, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def step(model: nn.Module, steps: int) -> float:
    x = torch.randn(16, steps, 8)
    start = time.perf_counter()
    model(x).square().sum().backward()
    return time.perf_counter() - start


def measure(kind: str, steps: int) -> dict:
    torch.manual_seed(0)
    model = torch.compile(Classifier(kind))
    first = step(model, steps)
    steady = statistics.median(step(model, steps) for _ in range(5))
    new_length = step(model, steps + 7)
    return dict(
        model=kind,
        steps=steps,
        first_call_s=round(first, 3),
        step_s=round(steady, 4),
        compile_s=round(first - steady, 3),
        new_length_s=round(new_length, 3),
        torch=torch.__version__,
    )


def main() -> None:
    if len(sys.argv) == 3:  # one measurement, in this (fresh) process
        print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
        return
    for kind in ("esgp", "gru"):
        for steps in (10, 1000):
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp())  # nothing compiled before
            result = subprocess.run(
                [sys.executable, __file__, kind, str(steps)], env=env, capture_output=True, text=True, check=True
            )
            print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
