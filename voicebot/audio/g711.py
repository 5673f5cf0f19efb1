"""G.711 μ-law and A-law by lookup table, bit-exact with the ITU reference (and audioop)."""

from __future__ import annotations

import numpy as np

_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


def _ulaw_from_14bit(pcm: int) -> int:
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + (0x84 >> 2)
    seg = _segment(pcm, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask


def _alaw_from_13bit(pcm: int) -> int:
    if pcm >= 0:
        mask = 0xD5
    else:
        mask, pcm = 0x55, -pcm - 1
    seg = _segment(pcm, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    shift = 1 if seg < 2 else seg
    return ((seg << 4) | ((pcm >> shift) & 0xF)) ^ mask


def _ulaw_to_linear(code: int) -> int:
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return (0x84 - t) if code & 0x80 else (t - 0x84)


def _alaw_to_linear(code: int) -> int:
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


def _encode_table(encode_one, shift: int) -> np.ndarray:
    # Indexed by the int16 sample reinterpreted as uint16, so encoding is a single take().
    samples = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32) >> shift
    small = {v: encode_one(v) for v in np.unique(samples).tolist()}
    return np.array([small[v] for v in samples.tolist()], dtype=np.uint8)


_ULAW_ENCODE = _encode_table(_ulaw_from_14bit, 2)
_ALAW_ENCODE = _encode_table(_alaw_from_13bit, 3)
_ULAW_DECODE = np.array([_ulaw_to_linear(c) for c in range(256)], dtype=np.int16)
_ALAW_DECODE = np.array([_alaw_to_linear(c) for c in range(256)], dtype=np.int16)


def ulaw_decode(data: bytes) -> np.ndarray:
    """μ-law bytes → int16 samples."""
    return _ULAW_DECODE.take(np.frombuffer(data, dtype=np.uint8))


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples → μ-law bytes."""
    return _ULAW_ENCODE.take(pcm.view(np.uint16)).tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes → int16 samples."""
    return _ALAW_DECODE.take(np.frombuffer(data, dtype=np.uint8))


def alaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples → A-law bytes."""
    return _ALAW_ENCODE.take(pcm.view(np.uint16)).tobytes()
