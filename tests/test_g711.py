"""G.711 tables must be bit-exact with audioop.

audioop is in the standard library up to Python 3.12 and comes from the
``audioop-lts`` package (same module name) on 3.13+, where it is a dependency of
voicebot.  If it cannot be imported the tests FAIL rather than skip: losing the
reference would silently remove the only check of the tables.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from voicebot.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)  # every int16 value
ALL_CODES = bytes(range(256))  # every G.711 code


def _audioop():
    """Import the reference; a missing module is a test failure (not an error or a skip)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.11/3.12 stdlib module
            import audioop as module
    except ImportError as exc:
        hint = "install audioop-lts (a dependency on Python >= 3.13)" if sys.version_info >= (3, 13) else ""
        pytest.fail(f"audioop reference unavailable: {exc}. {hint}")
    return module


@pytest.mark.parametrize(
    ("name", "encode", "reference"),
    [("ulaw", ulaw_encode, "lin2ulaw"), ("alaw", alaw_encode, "lin2alaw")],
)
def test_encode_all_int16_values(name, encode, reference):
    audioop = _audioop()
    ours = encode(ALL_PCM)
    ref = getattr(audioop, reference)(ALL_PCM.tobytes(), 2)
    assert isinstance(ours, bytes)
    assert len(ours) == len(ALL_PCM) == len(ref)
    if ours != ref:
        got, want = np.frombuffer(ours, np.uint8), np.frombuffer(ref, np.uint8)
        bad = np.flatnonzero(got != want)
        pytest.fail(f"{name}: {bad.size} mismatches, first at pcm={ALL_PCM[bad[0]]}: "
                    f"{got[bad[0]]:#04x} != {want[bad[0]]:#04x}")


@pytest.mark.parametrize(
    ("name", "decode", "reference"),
    [("ulaw", ulaw_decode, "ulaw2lin"), ("alaw", alaw_decode, "alaw2lin")],
)
def test_decode_all_codes(name, decode, reference):
    audioop = _audioop()
    ours = decode(ALL_CODES)
    ref = np.frombuffer(getattr(audioop, reference)(ALL_CODES, 2), dtype=np.int16)
    assert ours.dtype == np.int16
    np.testing.assert_array_equal(ours, ref, err_msg=name)


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]
)
def test_decoded_values_survive_reencoding(encode, decode):
    # Every decoded level is a reconstruction point, so encode→decode must return it unchanged.
    levels = decode(ALL_CODES)
    np.testing.assert_array_equal(decode(encode(levels)), levels)
