"""Shared helpers of the scaling studies."""

from __future__ import annotations

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
