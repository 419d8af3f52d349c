"""Peak resident memory of this process: the one probe the demo and the benchmarks share."""

from __future__ import annotations

import sys


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size in bytes, or None where it cannot be told.

    Linux: ``VmHWM`` of ``/proc/self/status`` (reset at exec, so a fresh process reports only its
    own peak); other POSIX systems: ``ru_maxrss`` (KiB, bytes on macOS; a fork inherits it);
    Windows: psutil's ``peak_wset`` where psutil is installed.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil
        except ImportError:
            return None
        peak = getattr(psutil.Process().memory_info(), "peak_wset", None)
        return None if peak is None else int(peak)
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def reset_peak_rss() -> bool:
    """Start the peak over from the present resident set size (Linux >= 4.0: ``5`` written to
    ``/proc/self/clear_refs``), so that a later :func:`peak_rss_bytes` covers only what came after.
    Returns False where it cannot (the peak then keeps counting from the process's start)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float | None:
    """:func:`peak_rss_bytes` in MiB (None where it cannot be told)."""
    peak = peak_rss_bytes()
    return None if peak is None else peak / 2**20
