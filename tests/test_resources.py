"""voicebot.resources: the heap memory the C allocator keeps free is handed back (the server does it every
VOICEBOT_MALLOC_TRIM_S seconds), and the setting's value is checked."""

from __future__ import annotations

import pytest

from voicebot import resources


def test_trim_interval_setting():
    assert resources.trim_interval_s({}) == (60.0, None)
    assert resources.trim_interval_s({"VOICEBOT_MALLOC_TRIM_S": "0"}) == (0.0, None)
    assert resources.trim_interval_s({"VOICEBOT_MALLOC_TRIM_S": " 15.5 "}) == (15.5, None)
    for wrong in ("soon", "-1", "nan", "inf"):
        interval, problem = resources.trim_interval_s({"VOICEBOT_MALLOC_TRIM_S": wrong})
        assert interval == 60.0 and "VOICEBOT_MALLOC_TRIM_S" in problem and repr(wrong) in problem


@pytest.mark.skipif(resources._malloc_trim() is None, reason="glibc's malloc_trim only")
def test_trim_hands_back_heap_memory_kept_free():
    """Freed 64 KiB buffers between live small ones: holes the heap cannot shrink past, kept by the allocator
    until trimmed (what a server with many calls' buffers coming and going has)."""
    kept, freed = [], []
    for i in range(1500):
        freed.append(bytearray(64 * 1024))     # under glibc's mmap threshold: from the heap
        kept.append(bytearray(600))
    for buffer in freed:
        buffer[::4096] = b"x" * len(buffer[::4096])    # touched: resident
    before_free = resources.rss_bytes()
    freed.clear()
    after_free = resources.rss_bytes()
    assert resources.trim_heap()
    trimmed = resources.rss_bytes()
    assert before_free - trimmed > 50 * 2**20, (before_free, after_free, trimmed)
    assert after_free - trimmed > 50 * 2**20, "the memory was returned without a trim: the test shows nothing"
    assert kept
