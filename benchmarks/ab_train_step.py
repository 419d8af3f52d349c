"""Before/after: the train step of two checkouts of esgp_sparse, eager and ``compile=True``, both
gates, H in {128, 256, 1024, 4096}, each measurement in a fresh process, the two checkouts
alternating so that drift hits both alike.

    git worktree add /tmp/before <commit>
    python benchmarks/ab_train_step.py /tmp/before .     # one JSON line per measurement

Shapes as benchmarks/test_train_step.py (H256: I=1, T=784, B=64, sparsity 0.1). ``ms`` is the
median of 7, 7, 5 and 3 steps (after two warm-up steps, the first of which compiles);
``first_s`` is the first step.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = {
    "H128": (1, 128, 784, 128, 0.1),
    "H256": (1, 256, 784, 64, 0.1),
    "H1024": (64, 1024, 100, 32, 0.01),
    "H4096": (64, 4096, 100, 32, 0.01),
}
REPEATS = {"H128": 7, "H256": 7, "H1024": 5, "H4096": 3}


def measure(shape: str, gate: str, compiled: bool) -> dict:
    import torch
    from torch import nn

    from esgp_sparse import ESGP

    i, h, steps, batch, sparsity = SHAPES[shape]
    torch.manual_seed(0)
    net = ESGP(i, h, sparsity=sparsity, seed=0, gate=gate, compile=compiled)
    x, target = torch.randn(batch, steps, i), torch.randn(batch, h)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        nn.functional.mse_loss(net(x)[0][:, -1], target).backward()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step()
    times = []
    for _ in range(REPEATS[shape]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return dict(shape=shape, gate=gate, ms=round(statistics.median(times) * 1e3, 1), first_s=round(first, 2))


def main() -> None:
    if sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4] == "compile")))
        return
    checkouts = sys.argv[1:]
    for shape in SHAPES:
        for gate in ("dense", "sparse"):
            for mode in ("eager", "compile"):
                for code in checkouts:
                    env = dict(os.environ, PYTHONPATH=os.path.abspath(code))
                    result = subprocess.run(
                        [sys.executable, __file__, "--one", shape, gate, mode],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                        cwd="/",
                    )
                    print(json.dumps(dict(code=code, mode=mode, result=json.loads(result.stdout))), flush=True)


if __name__ == "__main__":
    main()
