"""What ``compile=True`` costs: the first call (compilation), a new batch size, a new length, a new
model of the same size, and a new hidden size, against a call that compiles nothing, in a fresh
process with an empty Inductor cache.

    python benchmarks/compile_cost.py        # prints one JSON line (seconds, forward + backward)
"""

from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp())  # nothing compiled before

import torch  # noqa: E402

from esgp_sparse import ESGP  # noqa: E402


def step(model: ESGP, batch: int, steps: int) -> float:
    x = torch.randn(batch, steps, 8)
    start = time.perf_counter()
    out, _ = model(x)
    out.square().sum().backward()
    return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    model = ESGP(8, 256, sparsity=0.05, seed=0, compile=True)
    timings = dict(
        first_call=step(model, 16, 50),
        same_shape=step(model, 16, 50),
        new_batch_size=step(model, 24, 50),
        new_length=step(model, 24, 80),
        new_model_same_size=step(ESGP(8, 256, sparsity=0.05, seed=1, compile=True), 16, 50),
        new_hidden_size=step(ESGP(8, 320, sparsity=0.05, seed=2, compile=True), 16, 50),
    )
    timings["same_shape_again"] = step(model, 16, 50)
    print(json.dumps({k: round(v, 3) for k, v in timings.items()} | dict(torch=torch.__version__)))


if __name__ == "__main__":
    main()
