"""A progress bar on stderr: no dependency, no thread."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``label [#####-----] 12/60 <unit>  <status>``: redrawn in place on a terminal (at most 10
    times a second), one line per tenth of the total otherwise (logs, pipes, CI).

    ``update(done, status)`` reports progress in the caller's unit (seconds, batches, ...).
    """

    def __init__(self, total: float, *, unit: str = "", label: str = "", width: int = 30, stream: TextIO | None = None) -> None:
        self.total = total
        self.unit = unit
        self.label = f"{label} " if label else ""
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._next_time = 0.0
        self._next_done = 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def update(self, done: float, status: str = "", force: bool = False) -> None:
        now = self.elapsed
        if not force and (now < self._next_time if self.live else done < self._next_done):
            return
        self._next_time, self._next_done = now + 0.1, done + self.total / 10
        filled = min(self.width, int(self.width * done / self.total)) if self.total > 0 else self.width
        amount = f"{done:5.1f}/{self.total:g}{self.unit}" if isinstance(done, float) else f"{done}/{self.total}{self.unit}"
        line = f"{self.label}[{'#' * filled}{'-' * (self.width - filled)}] {amount}  {status}"
        self.stream.write(f"\r{line}\033[K" if self.live else f"{line}\n")
        self.stream.flush()

    def close(self, done: float, status: str = "") -> None:
        self.update(done, status, force=True)
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
