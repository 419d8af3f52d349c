from __future__ import annotations

import builtins
import sys

from esgp_sparse import _memory


def test_peak_rss_is_at_least_a_buffer_just_touched():
    before = _memory.peak_rss_bytes()
    block = bytearray(64 * 2**20)  # touched by the zero fill
    after = _memory.peak_rss_bytes()
    assert before is not None and after is not None
    assert after >= len(block)


def test_peak_rss_without_proc_resource_or_psutil_is_unknown(monkeypatch):
    """Windows has neither /proc nor the resource module: the probe says "unknown", it does not fail."""
    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setitem(sys.modules, "resource", None)  # import resource -> ImportError
    monkeypatch.setitem(sys.modules, "psutil", None)
    assert _memory.peak_rss_bytes() is None
    assert _memory.peak_rss_mib() is None
