from __future__ import annotations

import builtins
import sys

import pytest

from esgp_sparse import _memory


def test_peak_rss_sees_a_buffer_larger_than_the_peak_so_far():
    before = _memory.peak_rss_bytes()
    assert before is not None
    block = bytearray(before + 64 * 2**20)  # touched by the zero fill: more than the process ever held
    after = _memory.peak_rss_bytes()
    assert after is not None and after >= len(block) > before
    del block


def test_the_peak_starts_over_from_the_present_after_a_reset():
    block = bytearray(256 * 2**20)  # touched by the zero fill
    del block
    before = _memory.peak_rss_bytes()
    assert before is not None
    if not _memory.reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here (not Linux >= 4.0)")
    after = _memory.peak_rss_bytes()
    assert after is not None and after <= before - 128 * 2**20


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
    assert _memory.reset_peak_rss() is False
    assert _memory.peak_rss_mib() is None
