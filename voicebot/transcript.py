"""A call's transcript file: one JSON line per event, written and flushed as it happens, so nothing is lost.

A disk that fills up (or a folder that cannot be written) never touches the call: the first failure is logged
once (``transcript_write_failed``, with the file and the error), the file is closed and later lines are
dropped. The call's record in the database still holds every turn."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import structlog

_log = structlog.get_logger("voicebot.transcript")


class TranscriptFile:
    def __init__(self, folder: Path, call_id: str, *, log=None) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        self.path = Path(folder) / day / f"{call_id}.jsonl"
        self.failed: str | None = None     # why lines are no longer written
        self._log = log if log is not None else _log
        self._file = None
        # Called with each record as it is written, whatever becomes of the file: what shows the call live
        # (the browser softphone's page) listens here. A failing listener is logged and dropped, never the call's.
        self.listeners: list[Callable[[dict], None]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            self._fail(exc)

    def write(self, kind: str, **fields) -> None:
        record = {"type": kind, "ts": round(time.time(), 3), **fields}
        for listener in list(self.listeners):
            try:
                listener(record)
            except Exception:
                self._log.exception("transcript_listener_failed", kind=kind)
                self.listeners.remove(listener)
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()      # the descriptor is released even when the last flush fails again
            except OSError:
                pass
        if self.failed is None:
            self.failed = exc.strerror or str(exc)
            self._log.error("transcript_write_failed", path=str(self.path), error=self.failed,
                            errno=exc.errno)


def read_transcript(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
