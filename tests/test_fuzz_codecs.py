"""The wire codecs (voicebot/audio/codecs.py ``WireCodec``: μ-law, A-law, L16 at 8/16/24 kHz in either byte order)
under any bytes a carrier may send, cut into payloads of any size.

Properties: decoding gives int16 samples, and the same samples however the stream was cut into payloads (the
resampler keeps its state across them); a payload of an odd number of bytes in L16 is refused with a
``ValueError`` naming its length -- the error the carrier modules turn into a protocol error -- and leaves the
stream as if it had not come; G.711 decoding is a right inverse of encoding, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicebot.audio.codecs import WireCodec

CODECS = [("pcmu", 8000, "little"), ("pcma", 8000, "little"), ("l16", 8000, "little"), ("l16", 16000, "little"),
          ("l16", 24000, "little"), ("l16", 16000, "big")]
IDS = [f"{name}-{rate}-{order}" for name, rate, order in CODECS]


def cut(data: bytes, points: list[int], step: int) -> list[bytes]:
    """``data`` in payloads cut at ``points`` rounded down to whole samples of ``step`` bytes."""
    edges = sorted({p - p % step for p in points if 0 < p < len(data)})
    return [data[a:b] for a, b in zip([0, *edges], [*edges, len(data)])]


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@given(data=st.binary(max_size=2000), points=st.lists(st.integers(0, 2000), max_size=6),
       odd=st.lists(st.binary(min_size=1, max_size=9).filter(lambda b: len(b) % 2), max_size=2))
def test_decoding_gives_the_same_samples_however_the_stream_is_cut(codec, data, points, odd) -> None:
    name, rate, order = codec
    width = 2 if name == "l16" else 1
    data = data[:len(data) - len(data) % width]
    whole = WireCodec(name, rate, byteorder=order).decode(data)
    assert whole.dtype == np.int16 and whole.ndim == 1

    stream = WireCodec(name, rate, byteorder=order)
    pieces = []
    for i, payload in enumerate(cut(data, points, width)):
        if name == "l16" and i < len(odd):          # a payload that is not whole samples, between good ones
            with pytest.raises(ValueError, match=f"{len(odd[i])} bytes is not a whole number of samples"):
                stream.decode(odd[i])
        pieces.append(stream.decode(payload))
    assert all(p.dtype == np.int16 for p in pieces)
    assert np.array_equal(np.concatenate(pieces) if pieces else whole[:0], whole)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@given(samples=st.lists(st.integers(-32768, 32767), max_size=500), points=st.lists(st.integers(0, 500), max_size=5))
def test_encoding_gives_the_same_bytes_however_the_audio_is_cut(codec, samples, points) -> None:
    name, rate, order = codec
    pcm = np.array(samples, dtype=np.int16)
    whole = WireCodec(name, rate, byteorder=order).encode(pcm)
    stream = WireCodec(name, rate, byteorder=order)
    edges = sorted({p for p in points if 0 < p < len(pcm)})
    parts = b"".join(stream.encode(pcm[a:b]) for a, b in zip([0, *edges], [*edges, len(pcm)]))
    assert parts == whole
    if rate == 8000:
        assert len(whole) == len(pcm) * (2 if name == "l16" else 1)


@pytest.mark.parametrize("name", ["pcmu", "pcma"])
def test_g711_decoding_is_a_right_inverse_of_encoding(name) -> None:
    codec = WireCodec(name)
    codes = bytes(range(256))
    again = codec.encode(codec.decode(codes))
    differ = [c for c, d in zip(codes, again) if c != d]
    assert differ == ([0x7F] if name == "pcmu" else [])      # μ-law has two zeros (0x7F, 0xFF): 0 encodes as 0xFF
    levels = codec.decode(bytes(range(256)))
    ordered = np.sort(levels)
    assert np.array_equal(codec.decode(codec.encode(ordered)), ordered)
