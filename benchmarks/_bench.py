"""Shared helpers of the scaling studies."""

from __future__ import annotations

import os
import threading
import time

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


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory a block adds: on CUDA ``max_memory_allocated``; on CPU the resident set, sampled
    every millisecond by a thread (Linux), above its level at entry. ``.mib`` after the block."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.mib = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = self._peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.mib = (max(self._peak, _rss()) - self._base) / 2**20


def measure_peak(fn, device: str = "cpu") -> float:
    """Run ``fn`` once (untimed) and return the peak memory it added, in MiB."""
    with PeakMemory(device) as peak:
        fn()
    return peak.mib
