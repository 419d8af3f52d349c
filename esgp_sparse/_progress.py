"""A progress bar on stderr: no dependency, no thread."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``[#####-----] 12.0s/60s  <status>``: redrawn in place on a terminal (10 times a second),
    one line per tenth of the time otherwise (logs, pipes, CI)."""

    def __init__(self, total_seconds: float, width: int = 30, stream: TextIO | None = None) -> None:
        self.total = total_seconds
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._next = 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def done(self) -> bool:
        return self.elapsed >= self.total

    def update(self, status: str, force: bool = False) -> None:
        now = self.elapsed
        if not force and now < self._next:
            return
        self._next = now + (0.1 if self.live else self.total / 10)
        filled = min(self.width, int(self.width * now / self.total)) if self.total > 0 else self.width
        line = f"[{'#' * filled}{'-' * (self.width - filled)}] {now:5.1f}s/{self.total:g}s  {status}"
        self.stream.write(f"\r{line}" if self.live else f"{line}\n")
        self.stream.flush()

    def close(self, status: str) -> None:
        self.update(status, force=True)
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
