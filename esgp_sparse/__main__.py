"""``python -m esgp_sparse``: train an ESGP on the adding problem for about a minute and report.

    python -m esgp_sparse                 # about 60 s on a laptop CPU
    python -m esgp_sparse --seconds 10 --hidden 1024 --gate sparse
    python -m esgp_sparse --steps 300       # a fixed number of steps: the same result on every run
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
from torch import nn

from . import ESGP
from ._progress import Progress
from .datasets import adding_problem


class Regressor(nn.Module):
    def __init__(self, esgp: ESGP) -> None:
        super().__init__()
        self.esgp = esgp
        self.head = nn.Linear(esgp.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.esgp(x)
        return self.head(output[:, -1])


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def _peak_rss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m esgp_sparse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="training time budget (default 60)")
    parser.add_argument("--steps", type=int, help="train for exactly this many steps instead (reproducible)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden units H (default 256)")
    parser.add_argument("--sparsity", type=float, default=0.05, help="fraction of connections present (default 0.05)")
    parser.add_argument("--gate", choices=("dense", "sparse", "diagonal"), default="dense")
    parser.add_argument("--length", type=int, default=100, help="sequence length T (default 100)")
    parser.add_argument("--batch", type=int, default=64, help="batch size B (default 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    esgp = ESGP(2, args.hidden, sparsity=args.sparsity, gate=args.gate, seed=args.seed)
    built = time.perf_counter() - started
    model = Regressor(esgp)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    stream = torch.Generator().manual_seed(args.seed + 1)
    x_test, y_test = adding_problem(1000, args.length, seed=args.seed + 2)
    baseline = float(((y_test - y_test.mean()) ** 2).mean())

    budget = f"{args.steps} steps" if args.steps else f"{args.seconds:g} s"
    print(f"esgp_sparse: the adding problem (T={args.length}, B={args.batch}) for {budget}; "
          f"predicting the mean scores an MSE of {baseline:.4f}")
    progress = Progress(args.steps, unit=" steps") if args.steps else Progress(args.seconds, unit="s")
    done = (lambda: steps >= args.steps) if args.steps else (lambda: progress.elapsed >= args.seconds)
    steps, recent = 0, float("nan")
    while not done():
        x, y = adding_problem(args.batch, args.length, generator=stream)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        recent = loss.item() if steps == 1 else 0.95 * recent + 0.05 * loss.item()
        progress.update(steps if args.steps else progress.elapsed, f"step {steps}  loss {recent:.4f}")
    trained = progress.elapsed
    progress.close(steps if args.steps else trained, f"step {steps}  loss {recent:.4f}")

    model.eval()
    with torch.no_grad():
        test_mse = float(nn.functional.mse_loss(model(x_test), y_test))
    cell = esgp.cells[0]
    learned = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in esgp.buffers())
    print(f"result      test MSE {test_mse:.4f} after {steps} steps in {trained:.1f} s "
          f"({trained / max(steps, 1) * 1e3:.1f} ms a step; mean-prediction MSE {baseline:.4f})")
    print(f"model       {esgp.extra_repr()}; {learned:,} learned parameters; built in {built:.2f} s")
    print(f"reservoir   nnz {cell.nnz:,} ({cell.nnz / args.hidden**2:.2%} of {args.hidden}^2), path {cell.path}, "
          f"measured spectral radius {cell.radius:.4f}")
    print(f"memory      parameters {_mib(param_bytes)}, reservoir buffers {_mib(buffer_bytes)}, "
          f"process peak RSS {_mib(_peak_rss())}")
    return test_mse


if __name__ == "__main__":
    main()
