"""A million units on one machine: build time, train steps (Adam, a linear readout at every step, MSE)
and the process's peak resident memory.

    python benchmarks/million.py [--gate diagonal|sparse] [--hidden 1000000] [--checkpoint]

Runs in a fresh process so that the peak resident set (ru_maxrss) is this model's alone.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from esgp_sparse import ESGP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1_000_000)
    parser.add_argument("--per-unit", type=float, default=10.0, help="recurrent connections per unit (default 10)")
    parser.add_argument("--gate", choices=("diagonal", "sparse"), default="diagonal")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=16)
    parser.add_argument("--checkpoint", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    start = time.perf_counter()
    model = ESGP(args.input_size, args.hidden, sparsity=args.per_unit / args.hidden, gate=args.gate, seed=0,
                 checkpoint=args.checkpoint)
    built = time.perf_counter() - start
    readout = torch.nn.Linear(args.hidden, 1)
    optimizer = torch.optim.Adam([*model.parameters(), *readout.parameters()], lr=1e-3)
    x = torch.randn(args.batch, args.steps, args.input_size)
    y = torch.randn(args.batch, args.steps, 1)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        output, _ = model(x)
        torch.nn.functional.mse_loss(readout(output), y).backward()  # a linear readout at every step
        optimizer.step()
        times.append(time.perf_counter() - start)
    cell = model.cells[0]
    print(json.dumps(dict(
        hidden=args.hidden, nnz=cell.nnz, gate=args.gate, path=cell.path, radius=cell.radius,
        radius_method=cell.radius_method, checkpoint=args.checkpoint, batch=args.batch, steps=args.steps,
        build_s=round(built, 2), train_step_s=[round(t, 2) for t in times],
        peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    )))


if __name__ == "__main__":
    main()
