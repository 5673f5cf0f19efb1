"""What happened during a call, in order, for its page: the call record's events (tools, engine switches, keypad
digits) and, from the call's transcript file, those the record only counts or leaves out (barge-ins with what
was heard and how fast the bot stopped, transfers, keypad tones sent, reprompts, answering-machine verdicts,
speech-recognition or synthesis failures)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..store import CallRecord

# Transcript-file lines the record has no place for; turns, tools, switches and digits come from the record.
FILE_ONLY = ("barge_in", "transfer", "dtmf_out", "silence_reprompt", "amd_verdict", "asr_failed", "tts_failed",
             "reply_not_spoken", "engine_switch_audio")
SAFE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
MAX_FILE_BYTES = 8 << 20      # a transcript larger than this is not read for a page


@dataclass(frozen=True)
class Event:
    t_ms: int | None
    kind: str          # barge_in, tool, failover, dtmf, transfer, ... (a CSS class and a filter in tests)
    label: str
    detail: str


def transcript_path(folder: Path, record: CallRecord) -> Path | None:
    """Where the call's transcript file is: ``<transcripts_dir>/<UTC day it started>/<id>.jsonl``."""
    if not SAFE_ID.fullmatch(record.id):
        return None
    return Path(folder) / record.started_at.strftime("%Y-%m-%d") / f"{record.id}.jsonl"


def read_lines(path: Path | None) -> list[dict]:
    """The file's JSON lines (for a thread: it reads the disk); [] when it is gone, too large or unreadable,
    and a line that is not JSON is skipped (a crash may leave the last one half written)."""
    if path is None:
        return []
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return []
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


def _json(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _ms(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def events(record: CallRecord, lines: list[dict]) -> list[Event]:
    found: list[Event] = []
    for tool in record.tools:
        ok = tool.get("ok")
        found.append(Event(_ms(tool.get("t_ms")), "tool", f"tool {tool.get('name')}" + ("" if ok else " (failed)"),
                           f"{_json(tool.get('arguments'))} → {_json(tool.get('result'))}"
                           f" · {tool.get('duration_ms')} ms"))
    for switch in record.engine_switches:
        found.append(Event(_ms(switch.get("t_ms")), "failover", f"engine {switch.get('from')} → {switch.get('to')}",
                           f"{switch.get('reason')}" + (f" · switched in {switch['switch_ms']} ms"
                                                        if "switch_ms" in switch else "")))
    for digit in record.dtmf:
        found.append(Event(_ms(digit.get("t_ms")), "dtmf", f"caller pressed {digit.get('digit')}", ""))
    start_ts = next((line.get("ts") for line in lines if line.get("type") == "call_start"), None)
    for line in lines:
        kind = line.get("type")
        if kind not in FILE_ONLY:
            continue
        t_ms = _ms(line.get("t_ms"))
        if t_ms is None and isinstance(start_ts, (int, float)) and isinstance(line.get("ts"), (int, float)):
            t_ms = round((line["ts"] - start_ts) * 1000)      # a line without the call's clock: its wall time
        if kind == "barge_in":
            heard = ", ".join(f"{h.get('heard_ms')} of {h.get('generated_ms')} ms heard"
                              for h in line.get("heard") or [] if isinstance(h, dict))
            found.append(Event(t_ms, "barge_in", f"barge-in ({line.get('trigger')})",
                               f"{heard or 'nothing playing'} · bot stopped in {line.get('reaction_us')} µs"))
        elif kind == "transfer":
            found.append(Event(t_ms, "transfer", f"transferred to {line.get('target_name')}",
                               str(line.get("target"))))
        elif kind == "engine_switch_audio":
            found.append(Event(t_ms, "failover", f"{line.get('engine')} speaking",
                               f"silence around the switch {line.get('silence_ms')} ms"))
        else:
            detail = {k: v for k, v in line.items() if k not in ("type", "ts", "t_ms", "engine")}
            found.append(Event(t_ms, kind, kind.replace("_", " "), _json(detail) if detail else ""))
    return sorted(found, key=lambda event: (event.t_ms is None, event.t_ms or 0))


def barge_in_reactions_us(lines: list[dict]) -> list[int]:
    return [line["reaction_us"] for line in lines
            if line.get("type") == "barge_in" and _ms(line.get("reaction_us")) is not None]


def clock(t_ms: int | None) -> str:
    """A moment of the call as m:ss.s from its start."""
    if t_ms is None:
        return ""
    seconds = t_ms / 1000
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")
