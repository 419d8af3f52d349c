"""python -m esgp_sparse: train an ESGP on the adding problem for about a minute and report.

examples:
  python -m esgp_sparse                  about 60 s on a laptop CPU
  python -m esgp_sparse --seconds 10 --hidden 1024 --gate sparse
  python -m esgp_sparse --steps 300      a fixed number of steps: the same result on every run
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from . import ESGP
from ._memory import peak_rss_mib
from .datasets import adding_problem
from .ops import GATES


class Regressor(nn.Module):
    def __init__(self, esgp: ESGP) -> None:
        super().__init__()
        self.esgp = esgp
        self.head = nn.Linear(esgp.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.esgp(x)
        return self.head(output[:, -1])


def _number(kind: Callable[[str], float], minimum: float, open_low: bool = False) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float) above ``minimum`` (or at it, unless ``open_low``)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or value < minimum or (open_low and value == minimum):
            bound = f"> {minimum:g}" if open_low else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"expected a finite value {bound}, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m esgp_sparse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--seconds", type=_number(float, 0.0, True), default=60.0, help="training time budget in seconds (default 60)")
    add("--steps", type=_number(int, 1), help="train for exactly this many steps instead of --seconds (reproducible)")
    add("--hidden", type=_number(int, 1), default=256, help="hidden units H (default 256)")
    add("--sparsity", type=float, default=0.05, help="fraction of recurrent connections present (default 0.05)")
    add("--gate", choices=GATES, default="dense", help="the gate (default dense; lowrank: of rank 16)")
    add("--length", type=_number(int, 2), default=100, help="sequence length T (default 100)")
    add("--batch", type=_number(int, 1), default=64, help="batch size B (default 64)")
    add("--lr", type=_number(float, 0.0, True), default=3e-3, help="Adam learning rate (default 3e-3)")
    add("--seed", type=_number(int, 0), default=0, help="seed of the reservoir, the data and the weights (default 0)")
    return parser


def main(argv: list[str] | None = None) -> float:
    parser = _parser()
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    try:
        esgp = ESGP(2, args.hidden, sparsity=args.sparsity, gate=args.gate, seed=args.seed)
    except (TypeError, ValueError) as error:  # a bad combination of values: the model's own words
        parser.error(str(error))
    built = time.perf_counter() - started
    model = Regressor(esgp)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    stream = torch.Generator().manual_seed(args.seed + 1)
    x_test, y_test = adding_problem(1000, args.length, seed=args.seed + 2)
    baseline = float(((y_test - y_test.mean()) ** 2).mean())

    budget = f"{args.steps} steps" if args.steps else f"{args.seconds:g} s"
    print(
        f"esgp_sparse: the adding problem (T={args.length}, B={args.batch}) for {budget}; "
        f"predicting the mean scores an MSE of {baseline:.4f}"
    )
    bar = tqdm(total=args.steps, unit="step", desc="training", mininterval=0.5)
    start = time.perf_counter()
    steps, recent = 0, float("nan")
    while (steps < args.steps) if args.steps else (time.perf_counter() - start < args.seconds):
        x, y = adding_problem(args.batch, args.length, generator=stream)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        recent = loss.item() if steps == 1 else 0.95 * recent + 0.05 * loss.item()
        bar.set_postfix_str(f"loss {recent:.4f}", refresh=False)
        bar.update()
    trained = time.perf_counter() - start
    bar.close()

    model.eval()
    with torch.no_grad():
        test_mse = float(nn.functional.mse_loss(model(x_test), y_test))
    cell = esgp._cells()[0]
    learned = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in esgp.buffers())
    peak = peak_rss_mib()
    print(
        f"result      test MSE {test_mse:.4f} after {steps} steps in {trained:.1f} s "
        f"({trained / max(steps, 1) * 1e3:.1f} ms a step; mean-prediction MSE {baseline:.4f})"
    )
    print(f"model       {esgp.extra_repr()}; {learned:,} learned parameters; built in {built:.2f} s")
    print(
        f"reservoir   nnz {cell.nnz:,} ({cell.nnz / args.hidden**2:.2%} of {args.hidden}^2), path {cell.path}, "
        f"measured spectral radius {cell.radius_summary()}"
    )
    print(
        f"memory      parameters {param_bytes / 2**20:,.1f} MiB, reservoir buffers {buffer_bytes / 2**20:,.1f} MiB, "
        f"process peak RSS {'unknown' if peak is None else f'{peak:,.1f} MiB'}"
    )
    return test_mse


if __name__ == "__main__":
    main()
