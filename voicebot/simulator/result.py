"""What a simulated call gives back (:class:`CallResult`): the timeline, both directions of audio, what was played
in which segments, the caller's utterances and the figures of the call."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from voicebot.audio import RATE


@dataclass(frozen=True)
class TimelineEvent:
    t: float  # seconds since stream start
    kind: str
    detail: str = ""


@dataclass
class PlaybackSegment:
    start_s: float
    end_s: float
    played_ms: float
    ended_by: Literal["drained", "clear", "hangup"]


@dataclass(frozen=True)
class Underrun:
    """Bot audio stopped and resumed within ``SimulatedCall.underrun_gap_s``: the carrier's buffer ran dry
    mid-utterance (a glitch, heard inside one segment, not a pause between two)."""
    start_s: float
    gap_ms: float
    loop_lag_ms: float  # the caller loop's worst lateness in the ``underrun_gap_s`` before the gap ended:
                        # a stall of the shared event loop (a busy machine) rather than of the server's pacing


@dataclass
class CallerUtterance:
    start_s: float
    end_s: float
    label: str
    barge: bool  # a barge-in step, or the bot was playing when the caller started


@dataclass
class MarkRecord:
    name: str
    received_s: float
    echoed_s: float | None = None
    cleared: bool = False


@dataclass
class CallResult:
    carrier: str
    call_id: str
    stream_id: str
    timeline: list[TimelineEvent]
    heard: np.ndarray  # int16 8 kHz: what the carrier played to the caller (silence where nothing played)
    sent: np.ndarray  # int16 8 kHz: what the caller sent (before encoding), same alignment
    segments: list[PlaybackSegment]
    clears: list[float]
    protocol_errors: list[str]
    marks: list[MarkRecord]
    media_received: list[tuple[float, int]]
    utterances: list[CallerUtterance]
    first_bot_audio_s: float | None
    end_reason: Literal["hangup", "server_closed", "max_duration", "carrier_ended", "dropped"]
    close_code: int | None
    close_reason: str | None
    duration_s: float
    setup_s: float  # from the first setup request to the WebSocket being open
    max_tick_lag_ms: float  # worst lateness of the 20 ms loop (load indicator)
    late_ticks: int  # ticks more than 10 ms late
    underruns: list[Underrun] = field(default_factory=list)
    t0: float = 0.0  # the event loop's time at stream start: caller time 0 (to compare with other clocks)

    @property
    def marks_echoed(self) -> int:
        return sum(1 for m in self.marks if m.echoed_s is not None)

    @property
    def barge_in_reaction_s(self) -> list[float | None]:
        """For each barge-in utterance: seconds from its start to the next clear (None: no clear came)."""
        out: list[float | None] = []
        for u in self.utterances:
            if u.barge:
                after = [c for c in self.clears if c >= u.start_s]
                out.append(after[0] - u.start_s if after else None)
        return out

    @property
    def bot_played_ms(self) -> float:
        return sum(s.played_ms for s in self.segments)

    def events(self, kind: str) -> list[TimelineEvent]:
        return [e for e in self.timeline if e.kind == kind]

    def write_wav(self, path) -> None:
        """Stereo WAV at 8 kHz: caller on the left, what the caller heard on the right."""
        from voicebot.audio.wav import write_wav

        n = max(len(self.sent), len(self.heard))
        stereo = np.zeros((n, 2), dtype=np.int16)
        stereo[: len(self.sent), 0] = self.sent
        stereo[: len(self.heard), 1] = self.heard
        write_wav(path, stereo, RATE)

    def format_timeline(self, skip: Iterable[str] = ()) -> str:
        """One line per event, times in ms since stream start; ``skip``: event kinds to leave out
        (e.g. ``("mark_received", "mark_sent_back")`` for servers that mark every chunk)."""
        skip = set(skip)
        lines = [f"{self.carrier} call {self.call_id} stream {self.stream_id}: {self.end_reason} after "
                 f"{self.duration_s:.2f} s"]
        for e in sorted(self.timeline, key=lambda e: e.t):
            if e.kind in skip:
                continue
            lines.append(f"{e.t * 1000:9.0f} ms  {e.kind:<22} {e.detail}".rstrip())
        return "\n".join(lines)
