"""A call's transcript file: one JSON line per event, written and flushed as it happens, so nothing is lost."""

from __future__ import annotations

import json
import time
from pathlib import Path


class TranscriptFile:
    def __init__(self, folder: Path, call_id: str) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        self.path = Path(folder) / day / f"{call_id}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, kind: str, **fields) -> None:
        if self._file.closed:
            return
        record = {"type": kind, "ts": round(time.time(), 3), **fields}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_transcript(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
