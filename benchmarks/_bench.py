"""Shared helpers of the scaling studies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def devices() -> list:
    """CPU always; CUDA where present (the same study runs unchanged on both)."""
    found = [pytest.param("cpu", id="cpu")]
    if torch.cuda.is_available():
        found.append(pytest.param("cuda", id="cuda"))
    return found


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_rss_mib(**options) -> float:
    """Peak RSS (MiB) of a fresh process that builds a model and runs it: benchmarks/peak_memory.py
    with these options (``hidden=4096`` becomes ``--hidden 4096``; ``True`` a bare flag).

    A fresh process, because inside this one the allocator's free lists hide what a call needs."""
    args = [sys.executable, str(Path(__file__).with_name("peak_memory.py"))]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def cuda_peak_mib(fn) -> float:
    """Peak CUDA memory (MiB) allocated while ``fn`` runs, above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
