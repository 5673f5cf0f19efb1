"""Carrier wire audio ⇄ the internal format (8 kHz int16): μ-law, A-law and L16 at 8/16/24 kHz."""

from __future__ import annotations

import numpy as np

from . import FRAME_MS, RATE
from .g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from .resample import Resampler

_ALIASES = {
    "pcmu": "pcmu", "ulaw": "pcmu", "mulaw": "pcmu", "audio/x-mulaw": "pcmu", "g711u": "pcmu",
    "pcma": "pcma", "alaw": "pcma", "audio/x-alaw": "pcma", "g711a": "pcma",
    "l16": "l16", "slin": "l16", "linear16": "l16", "audio/l16": "l16", "audio/x-l16": "l16", "pcm16": "l16",
}


class UnsupportedCodec(ValueError):
    pass


def canonical_encoding(name: str) -> str:
    key = name.strip().lower()
    if key not in _ALIASES:
        raise UnsupportedCodec(f"unsupported audio encoding {name!r} (supported: PCMU, PCMA, L16)")
    return _ALIASES[key]


class WireCodec:
    """One call's codec, both directions, with resampler state kept across frames."""

    def __init__(self, encoding: str, rate: int = 8000, *, byteorder: str = "little") -> None:
        self.encoding = canonical_encoding(encoding)
        if self.encoding in ("pcmu", "pcma") and rate != 8000:
            raise UnsupportedCodec(f"{self.encoding.upper()} runs at 8000 Hz, not {rate}")
        if self.encoding == "l16" and rate not in (8000, 16000, 24000):
            raise UnsupportedCodec(f"L16 at {rate} Hz is not supported (8000, 16000, 24000)")
        self.rate = rate
        self._dtype = np.dtype("<i2" if byteorder == "little" else ">i2")
        self._down = Resampler(rate, RATE) if rate != RATE else None
        self._up = Resampler(RATE, rate) if rate != RATE else None
        bytes_per_sample = 1 if self.encoding != "l16" else 2
        self.frame_bytes = rate * FRAME_MS // 1000 * bytes_per_sample

    def decode(self, data: bytes) -> np.ndarray:
        if self.encoding == "pcmu":
            return ulaw_decode(data)
        if self.encoding == "pcma":
            return alaw_decode(data)
        if len(data) % 2:
            raise ValueError(f"L16 payload of {len(data)} bytes is not a whole number of samples")
        pcm = np.frombuffer(data, dtype=self._dtype)
        if self._dtype.byteorder == ">" or (self._dtype.byteorder == "=" and not np.little_endian):
            pcm = pcm.astype(np.int16)
        return self._down.process(pcm) if self._down is not None else pcm.astype(np.int16, copy=False)

    def encode(self, pcm8k: np.ndarray) -> bytes:
        if self.encoding == "pcmu":
            return ulaw_encode(pcm8k)
        if self.encoding == "pcma":
            return alaw_encode(pcm8k)
        pcm = self._up.process(pcm8k) if self._up is not None else pcm8k
        return pcm.astype(self._dtype, copy=False).tobytes()
