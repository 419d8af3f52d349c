"""Synthetic sequence tasks with explicit sizes and seeds."""

from __future__ import annotations

import torch
from torch import Tensor


def adding_problem(n: int, length: int, *, seed: int | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The adding problem (Hochreiter & Schmidhuber, 1997).

    Each sequence has ``length`` steps of two features: a value drawn from U(0, 1) and a marker that
    is 1 at exactly two steps, one in the first half and one in the second, and 0 elsewhere. The
    target is the sum of the two marked values; predicting the mean (1.0) scores an MSE of 1/6.

    Args:
        n: number of sequences.
        length: T, at least 2.
        seed: seeds a fresh generator (ignored when ``generator`` is given).
        generator: draw from this generator instead, e.g. to stream fresh batches.

    Returns:
        ``(x, y)``: x (n, T, 2) float32, y (n, 1) float32.
    """
    if length < 2:
        raise ValueError(f"adding_problem: expected length >= 2, got length={length}")
    if n < 1:
        raise ValueError(f"adding_problem: expected n >= 1, got n={n}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return torch.stack((values, markers), dim=2), target
