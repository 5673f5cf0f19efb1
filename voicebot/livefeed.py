"""The calls' events as they happen, for whoever watches (the console's live pages): every record a call writes to
its transcript file (turns, cuts, barge-ins, tools, engine switches, keypad, start and end) is offered here too,
as a listener of the file (``TranscriptFile.listeners``).

Watching never slows a call. The call hands over the record it built for its file, nothing is serialised in its
step: with nobody watching that costs one dictionary check; with listeners, one ``put_nowait`` each into a
bounded queue (the listener's own task turns it into JSON). A listener that falls behind (a slow browser) is not
waited for: once its queue is full it is dropped -- its queue emptied, the end marker put in it -- and it can
come back for a fresh snapshot. Records are never changed after they are written."""

from __future__ import annotations

import asyncio

QUEUE_LINES = 256        # a listener this many lines behind is dropped


class Listener:
    """One watcher's queue: ``(call_id, record)`` items, then None once it has ended (dropped, closed, or the
    server stopping)."""

    def __init__(self, feed: "LiveFeed", call_id: str | None, size: int) -> None:
        self.call_id = call_id          # None: every call
        self.dropped = False
        self._feed = feed
        self._queue: asyncio.Queue = asyncio.Queue(size)
        self._ended = False

    def offer(self, item: tuple[str, dict]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped = True
            self._feed.dropped += 1
            self.end()

    def end(self) -> None:
        """No more lines: what is queued is dropped, the listener reads None next."""
        if self._ended:
            return
        self._ended = True
        self._feed._remove(self)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self) -> tuple[str, dict] | None:
        return await self._queue.get()

    def close(self) -> None:
        self._feed._remove(self)


class LiveFeed:
    def __init__(self, queue_lines: int = QUEUE_LINES) -> None:
        self.queue_lines = queue_lines
        self.dropped = 0                # listeners dropped for falling behind, since the start
        self._listeners: dict[str | None, set[Listener]] = {}

    def publish(self, call_id: str, record: dict) -> None:
        """A call wrote ``record`` to its transcript; called in the call's own step."""
        if not self._listeners:
            return
        item = (call_id, record)
        for key in (call_id, None):
            listeners = self._listeners.get(key)
            if listeners:
                for listener in tuple(listeners):
                    listener.offer(item)

    def listen(self, call_id: str | None = None) -> Listener:
        """A new listener for one call's lines, or every call's (None). Take the snapshot of what happened so far
        in the same step (no await in between): nothing is then missed nor seen twice."""
        listener = Listener(self, call_id, self.queue_lines)
        self._listeners.setdefault(call_id, set()).add(listener)
        return listener

    @property
    def listeners(self) -> int:
        return sum(len(group) for group in self._listeners.values())

    def close(self) -> None:
        """The server is stopping: every listener ends (their streams close, not held open until a timeout)."""
        for group in list(self._listeners.values()):
            for listener in list(group):
                listener.end()

    def _remove(self, listener: Listener) -> None:
        group = self._listeners.get(listener.call_id)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._listeners[listener.call_id]
