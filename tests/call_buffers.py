"""What each buffer between a carrier and StepFun holds for one call, read off the live objects (white-box):
the memory a call can be made to hold, measured where it would pile up rather than guessed from RSS."""

from __future__ import annotations

from voicebot.call import Call


def _write_buffer(transport) -> int:
    return transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0


def call_buffers(call: Call) -> dict[str, int]:
    """Bytes (``*_bytes``) or items held now, by place, carrier side first."""
    stream = call._close_carrier.__self__           # the MediaStream running the call (voicebot/answer.py)
    sizes = {"outbox_messages": stream.outbox._backlog, "outbox_bytes": stream.outbox._backlog_bytes,
             "caller_frames_held": len(call._held_frames),
             "playout_frames": len(call.playout._frames)}
    ws = getattr(stream.transport, "ws", None)
    if ws is not None:                                # a WebSocket carrier (voicebot/wsserver.py)
        sizes["carrier_unread_bytes"] = len(ws._buffer) + sum(len(m) for m in ws._pending)
        sizes["carrier_unsent_bytes"] = _write_buffer(ws.transport)
    else:                                             # a TCP carrier
        sizes["carrier_unsent_bytes"] = _write_buffer(stream.transport.writer.transport)
    conn = getattr(call.engine, "_conn", None)        # the realtime engine's StepFun socket
    if conn is not None:
        sizes["stepfun_unsent_bytes"] = _write_buffer(getattr(conn, "_transport", None))
    return sizes


class BufferWatch:
    """The largest size each buffer of a call reached, sampled while it runs."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.samples = 0

    def sample(self, call: Call) -> None:
        self.samples += 1
        for name, size in call_buffers(call).items():
            self.peaks[name] = max(size, self.peaks.get(name, 0))
