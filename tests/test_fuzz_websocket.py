"""The server's WebSocket frame reader (voicebot/wsserver.py ``ServerWebSocket.feed_data``), which every WebSocket
carrier's bytes pass through before any carrier parser sees them, under hostile frames.

Frames are built field by field -- FIN, reserved bits, opcode, mask bit, the 7/16/64-bit length forms (also
lengths that lie), payloads -- then cut into TCP reads at arbitrary points. Properties: the reader never
raises; where the bytes break a rule it answers with a close frame carrying the RFC's code (1002, 1007,
1009), stops reading and closes the connection; and how the bytes were cut into reads changes nothing."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from voicebot import wsserver
from voicebot.wsserver import ServerWebSocket

from fake_transport import FakeTransport

MAX_MESSAGE = 4096
CLOSE_CODES = {1002, 1007, 1009}


@st.composite
def frames(draw) -> bytes:
    """One client frame, mostly right, sometimes wrong in exactly the ways the reader must catch."""
    opcode = draw(st.one_of(st.sampled_from([0x1, 0x2] * 3 + [0x0, 0x8, 0x9, 0xA]), st.sampled_from([0x1, 0x2]),
                            st.integers(0, 15)))
    fin = draw(st.sampled_from([True, True, True, False]))
    rsv = draw(st.sampled_from([0] * 12 + [0x10, 0x40]))
    masked = draw(st.sampled_from([True] * 15 + [False]))
    if opcode == 0x1:
        payload = draw(st.one_of(st.text(max_size=40).map(str.encode), st.binary(max_size=40)))
    elif opcode == 0x8:
        payload = draw(st.one_of(st.just(b""), st.binary(max_size=1),
                                 st.tuples(st.sampled_from([1000, 1001, 1005, 1006, 1011, 999, 3000, 5000, 65535]),
                                           st.binary(max_size=8))
                                 .map(lambda cr: struct.pack("!H", cr[0]) + cr[1])))
    else:
        payload = draw(st.one_of(st.binary(max_size=200), st.integers(120, MAX_MESSAGE + 10).map(bytes)))
    length = len(payload)
    form = draw(st.sampled_from(["short", "short", "16", "64"]))
    if form == "short" and length > 125:
        form = "16" if length < 65536 else "64"
    stated = length
    if draw(st.integers(0, 19)) == 0:           # a length that lies: more than what follows, or enormous
        stated = draw(st.sampled_from([length + 1, 2 ** 16 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 64 - 1]))
        form = "64" if stated >= 65536 else "16"
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if form == "short":
        head = bytes((first, mask_bit | stated))
    elif form == "16":
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", min(stated, 65535))
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", stated)
    if not masked:
        return head + payload
    key = draw(st.binary(min_size=4, max_size=4))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def cuts(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """``data`` as TCP reads: cut at any points."""
    return st.lists(st.integers(0, len(data)), max_size=8).map(
        lambda points: [data[a:b] for a, b in zip([0, *sorted(points)], [*sorted(points), len(data)])])


def read(reads: list[bytes]) -> tuple[list, FakeTransport, ServerWebSocket]:
    async def go():
        transport = FakeTransport()
        ws = ServerWebSocket(transport, protocol=None, max_message_bytes=MAX_MESSAGE, heartbeat_s=None)
        messages: list = []
        ws.listen(messages.append)
        for chunk in reads:
            ws.feed_data(chunk)
        delivered = list(messages)
        await asyncio.sleep(0)       # CLOSE_TIMEOUT_S (0 here) runs out: a refused connection is closed by now
        assert messages == delivered
        return messages, transport, ws
    return asyncio.run(go())


def close_code(written: bytes) -> int | None:
    """The code of the close frame the server wrote last (server frames are unmasked)."""
    at = written.rfind(b"\x88")
    while at >= 0:
        length = written[at + 1] if at + 1 < len(written) else -1
        if 2 <= length <= 125 and at + 2 + length == len(written):
            return struct.unpack("!H", written[at + 2:at + 4])[0]
        at = written.rfind(b"\x88", 0, at)
    return None


@given(st.lists(frames(), max_size=6).map(b"".join).flatmap(lambda data: st.tuples(st.just(data), cuts(data))))
def test_the_frame_reader_keeps_to_the_rules_however_the_bytes_arrive(data_and_reads) -> None:
    data, reads = data_and_reads
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wsserver, "CLOSE_TIMEOUT_S", 0.0)
        whole = read([data])
        cut = read(reads)
    messages, transport, ws = cut
    assert messages == whole[0]                              # reads cut anywhere: the same messages …
    assert ws.problem == whole[2].problem                    # … and the same verdict
    for message in messages:
        assert isinstance(message, (str, bytes)) and len(message) <= MAX_MESSAGE
    event("refused by the reader" if ws.problem and ws.close_code is None else
          "closed by the peer" if ws.close_code else f"{min(len(messages), 2)}+ messages, still open")
    if ws.problem is not None and ws.close_code is None:     # we failed the connection (not the peer's close)
        assert transport.closed and close_code(bytes(transport.written)) in CLOSE_CODES, ws.problem
