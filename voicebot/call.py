"""The Call: joins one carrier stream to one engine — lifecycle, barge-in, transcript, call summary."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import structlog

from .audio import FRAME_MS
from .audio.pacer import PacedJob, Pacer, shared_pacer
from .audio.playout import Playout
from .audio.vad import EnergyVad
from .config import Settings
from .dialplan import Dialplan, Persona
from .engines.base import Engine, EngineSink, EngineUnavailable, interrupted_marker
from .telephony.base import CallMeta, CarrierSession
from .transcript import TranscriptFile

if TYPE_CHECKING:
    from .store import RecordWriter

log = structlog.get_logger("voicebot.call")

ENGINE_START_TIMEOUT_S = 15.0
# Caller audio kept while an engine connects or engines switch, fed to it once it is up: as long as a start may
# take, so that a slow but successful start loses nothing (8 kHz int16: 320 B per frame, 240 KB at most).
SWITCH_BUFFER_FRAMES = int(ENGINE_START_TIMEOUT_S * 1000) // FRAME_MS

# make_engine(persona, sink, log, kind=…, conversation=…, opening=…) → Engine.
# kind: "realtime" | "chain"; opening (chain): "greeting" | "reanswer" | "reprompt" | None.
EngineFactory = Callable[..., Engine]


@dataclass
class CallServices:
    """What every call of this process shares."""

    settings: Settings
    dialplan: Dialplan
    make_engine: EngineFactory
    calls: set["Call"] = field(default_factory=set)
    http: object = None      # the process's aiohttp.ClientSession (set on app startup)
    answer: object = None    # runs a carrier connection's call (voicebot/answer.py's Answerer, set by the server)
    records: RecordWriter | None = None   # takes each call's record (set on app startup)


class Call(EngineSink):
    def __init__(self, *, meta: CallMeta, persona: Persona, carrier: CarrierSession, services: CallServices,
                 close_carrier: Callable[[], Awaitable] | None = None) -> None:
        self.call_id = uuid.uuid4().hex[:16]
        self.meta = meta
        self.persona = persona
        self.carrier = carrier
        self.services = services
        self.settings = services.settings
        self._close_carrier = close_carrier
        self.log = log.bind(call_id=self.call_id, call_sid=meta.call_id, carrier=meta.carrier, persona=persona.name)
        lead_ms = self.settings.playout.lead_ms
        if carrier.max_lead_ms is not None:
            lead_ms = min(lead_ms, carrier.max_lead_ms)
        chunk_ms = self.settings.playout.chunk_ms
        if carrier.max_chunk_ms is not None:
            chunk_ms = min(chunk_ms, carrier.max_chunk_ms)
        self.playout = Playout(carrier, lead_ms=lead_ms, mark_every_ms=self.settings.playout.mark_every_ms,
                               chunk_ms=chunk_ms)
        self.vad = EnergyVad(min_speech_ms=persona.barge_in.min_speech_ms)
        # The conversation as the caller heard it: role/content dicts, shared with the chain engine.
        self.conversation: list[dict] = []
        self._assistant_entries: dict[str, dict] = {}
        first_kind = "chain" if persona.engine == "chain" else "realtime"
        self.engine: Engine = services.make_engine(persona, self, self.log, kind=first_kind,
                                                   conversation=self.conversation, opening="greeting")
        self.engine_switches: list[dict] = []
        self._switching: asyncio.Task | None = None
        self._switched_t: float | None = None     # when the last failover began, until its first audio
        self._held_frames: list[np.ndarray] = []
        self._held_dropped = 0
        self.transcript_file = TranscriptFile(self.settings.transcripts_dir, self.call_id)
        self.started_t = time.monotonic()
        self.ended = False
        self.end_reason: str | None = None
        self.user_turns = 0
        self.bot_turns = 0
        self.barge_ins: list[dict] = []
        self._interrupted: dict[str, int] = {}   # item id -> ms heard when cut off
        self._ended_event = asyncio.Event()
        self._pacing = PacedJob(self._pace)
        self._pacer: Pacer | None = None
        self._task: asyncio.Task | None = None
        self._engine_ready = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.services.calls.add(self)
        self.transcript_file.write("call_start", call_id=self.call_id, carrier=self.meta.carrier,
                              call_sid=self.meta.call_id, stream_id=self.meta.stream_id,
                              from_number=self.meta.from_number, to_number=self.meta.to_number,
                              persona=self.persona.name, engine=self.engine.name)
        self.log.info("call_started", from_number=self.meta.from_number, to_number=self.meta.to_number,
                      engine=self.engine.name)
        self._task = asyncio.create_task(self._run(), name=f"call-{self.call_id}")

    async def _run(self) -> None:
        self._pacer = shared_pacer()
        try:
            try:
                await asyncio.wait_for(self.engine.start(), ENGINE_START_TIMEOUT_S)
                self._engine_connected(self.engine)
            except (EngineUnavailable, asyncio.TimeoutError) as exc:
                reason = str(exc) or "engine start timed out"
                if self._can_fail_over():
                    self._switching = asyncio.create_task(self._fail_over(f"connect failed: {reason}",
                                                                          at_start=True))
                else:
                    self.log.error("engine_unavailable", engine=self.engine.name, reason=reason)
                    self.hang_up(f"engine unavailable: {reason}")
            try:
                await asyncio.wait_for(self._ended_event.wait(), self.persona.max_call_seconds)
            except asyncio.TimeoutError:
                self.log.info("max_call_seconds_reached", max_call_seconds=self.persona.max_call_seconds)
                self.hang_up("max_call_seconds reached")
        finally:
            self._pacer.cancel(self._pacing)
            if self._switching is not None and not self._switching.done():
                self._switching.cancel()
            await self._finish()

    async def _finish(self) -> None:
        try:
            await asyncio.wait_for(self.engine.close(), 3.0)
        except Exception:   # closing a dead socket must not stop the transcript being written
            self.log.warning("engine_close_failed", exc_info=True)
        duration = time.monotonic() - self.started_t
        first = self.playout.first_audio_sent_t
        summary = {
            "duration_s": round(duration, 2),
            "user_turns": self.user_turns,
            "bot_turns": self.bot_turns,
            "barge_ins": len(self.barge_ins),
            "engine": self.engine.name,
            "engine_switches": len(self.engine_switches),
            "first_bot_audio_ms": None if first is None else round((first - self.started_t) * 1000),
            "end_reason": self.end_reason,
        }
        self.transcript_file.write("call_end", **summary)
        self.transcript_file.close()
        self.log.info("call_summary", transcript=str(self.transcript_file.path), **summary)
        self.services.calls.discard(self)
        if self._close_carrier is not None:
            try:
                await self._close_carrier()
            except Exception:
                pass

    def hang_up(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self.log.info("call_ending", reason=reason)
        self._ended_event.set()

    async def finished(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    # -- carrier side ---------------------------------------------------------------------------
    def on_caller_audio(self, frame: np.ndarray) -> None:
        if self.ended:
            return
        if self.vad.process(frame) and self.persona.barge_in.enabled and self.playout.speaking:
            self._barge_in("local_vad")
        if self._engine_ready:
            self.engine.feed(frame)
        elif len(self._held_frames) < SWITCH_BUFFER_FRAMES:
            self._held_frames.append(frame)   # the engine is (re)connecting: nothing the caller says is lost
        else:
            if not self._held_dropped:
                self.log.warning("caller_audio_dropped_while_connecting", held_ms=SWITCH_BUFFER_FRAMES * FRAME_MS)
            self._held_dropped += 1

    def on_mark(self, name: str) -> None:
        self.playout.on_mark(name)

    def on_dtmf(self, digit: str) -> None:
        self.log.info("dtmf", digit=digit)
        self.transcript_file.write("dtmf", digit=digit)

    def _pace(self) -> float | None:
        """Send the bot audio that is due; seconds until the playout needs pacing again, None when idle."""
        delay = self.playout.pump()
        return delay if self.playout.has_work else None

    def _send_due_audio(self) -> None:
        """Send what is due right away; the shared pacer runs the playout again when the next frame is."""
        delay = self._pace()
        if delay is not None and self._pacer is not None and not self.ended:
            self._pacer.schedule(self._pacing, delay)

    # -- engine side (EngineSink) ---------------------------------------------------------------
    def bot_audio(self, item_id: str, pcm: np.ndarray) -> None:
        if self.ended or item_id in self._interrupted:
            return
        if self._switched_t is not None:
            # The silence the caller heard around an engine switch ends here.
            silence_ms = round((time.monotonic() - self._switched_t) * 1000)
            self._switched_t = None
            self.transcript_file.write("engine_switch_audio", engine=self.engine.name, silence_ms=silence_ms)
            self.log.info("engine_switch_audio", engine=self.engine.name, silence_ms=silence_ms)
        self.playout.enqueue(item_id, pcm)
        self._send_due_audio()

    def bot_audio_done(self, item_id: str) -> None:
        if item_id not in self._interrupted:
            self.playout.end_item(item_id)
            self._send_due_audio()

    def caller_speech_started(self) -> None:
        if self.persona.barge_in.enabled and self.playout.speaking:
            self._barge_in("model_vad")

    def transcript(self, role: str, text: str, item_id: str | None) -> None:
        fields = {"role": role, "text": text, "item_id": item_id, "engine": self.engine.name,
                  "t_ms": round((time.monotonic() - self.started_t) * 1000)}
        entry = {"role": role, "content": text}
        if role == "assistant":
            self.bot_turns += 1
            if item_id in self._interrupted:
                heard_ms = self._interrupted[item_id]
                heard = self.engine.heard_text(item_id, heard_ms, text)
                fields.update(text=heard, full_text=text, interrupted=True, heard_ms=heard_ms)
                entry["content"] = heard + interrupted_marker(self.persona.language)
                entry["interrupted"] = True
            if item_id:
                self._assistant_entries[item_id] = entry
        else:
            self.user_turns += 1
        if text or role == "user":
            self.conversation.append(entry)
        self.transcript_file.write("turn", **fields)
        self.log.info("turn", **{k: v for k, v in fields.items() if k != "engine"})

    def note(self, kind: str, **fields) -> None:
        self.transcript_file.write(kind, engine=self.engine.name,
                                   t_ms=round((time.monotonic() - self.started_t) * 1000), **fields)
        self.log.info(kind, **fields)

    def engine_failed(self, reason: str) -> None:
        if self.ended or (self._switching is not None and not self._switching.done()):
            return
        if self._can_fail_over():
            self._engine_ready = False
            self._switching = asyncio.create_task(self._fail_over(reason))
        else:
            self.log.error("engine_failed", engine=self.engine.name, reason=reason)
            self.hang_up(f"engine failed: {reason}")

    # -- failover -------------------------------------------------------------------------------
    def _can_fail_over(self) -> bool:
        return self.persona.engine == "auto" and self.engine.name == "realtime" and not self.ended

    async def _fail_over(self, reason: str, *, at_start: bool = False) -> None:
        """Realtime → chain without dropping the call; the conversation so far carries over."""
        t0 = time.monotonic()
        self._switched_t = t0
        self._engine_ready = False
        old = self.engine
        mid_answer = not at_start and (getattr(old, "responding", False) or self.playout.speaking)
        if mid_answer:
            # Stop the half-finished answer; the chain answers the caller's last turn again.
            for item in self.playout.interrupt():
                self._cut_turn(item.item_id, item.heard_ms)
                entry = self._assistant_entries.get(item.item_id)
                if entry is not None and entry in self.conversation:
                    self.conversation.remove(entry)
        if at_start:
            opening = "greeting"
        elif mid_answer:
            last = self.conversation[-1] if self.conversation else None
            if last is not None and last["role"] == "user":
                opening = "reanswer"
            elif not any(entry["role"] == "user" for entry in self.conversation):
                opening = "greeting"      # it was still greeting
            else:
                opening = "reprompt"
        else:
            opening = None
        try:
            await asyncio.wait_for(old.close(), 2.0)
        except Exception:
            self.log.warning("engine_close_failed", engine=old.name, exc_info=True)
        new = self.services.make_engine(self.persona, self, self.log, kind="chain",
                                        conversation=self.conversation, opening=opening)
        self.engine = new
        try:
            await asyncio.wait_for(new.start(), ENGINE_START_TIMEOUT_S)
        except (EngineUnavailable, asyncio.TimeoutError) as exc:
            self.log.error("engine_unavailable", engine=new.name, reason=str(exc) or "start timed out")
            self.hang_up(f"engine unavailable: realtime ({reason}) and chain ({exc})")
            return
        switch_ms = round((time.monotonic() - t0) * 1000)
        record = {"from": old.name, "to": new.name, "reason": reason, "mid_answer": mid_answer,
                  "opening": opening, "switch_ms": switch_ms,
                  "t_ms": round((t0 - self.started_t) * 1000)}
        self.engine_switches.append(record)
        self.transcript_file.write("engine_switch", **record)
        self.log.warning("engine_switch", **record)
        self._engine_connected(new)

    def _engine_connected(self, engine: Engine) -> None:
        """What the caller said while the engine was connecting reaches it now, in order."""
        held, self._held_frames = self._held_frames, []
        if self._held_dropped:
            self.log.warning("caller_audio_lost_while_connecting", frames=self._held_dropped,
                             lost_ms=self._held_dropped * FRAME_MS, fed_ms=len(held) * FRAME_MS)
            self._held_dropped = 0
        for frame in held:
            engine.feed(frame)
        self._engine_ready = True

    # -- barge-in -------------------------------------------------------------------------------
    def _barge_in(self, trigger: str) -> None:
        """Within this one loop turn: carrier clear, local queue dropped, engine told what was heard."""
        t0 = time.perf_counter()
        heard = self.playout.interrupt()
        for item in heard:
            self._cut_turn(item.item_id, item.heard_ms)
        self.engine.interrupt(heard)
        reaction_us = round((time.perf_counter() - t0) * 1e6)
        record = {"trigger": trigger, "t_ms": round((time.monotonic() - self.started_t) * 1000),
                  "heard": [{"item_id": h.item_id, "heard_ms": h.heard_ms, "generated_ms": h.generated_ms}
                            for h in heard], "reaction_us": reaction_us}
        self.barge_ins.append(record)
        self.transcript_file.write("barge_in", **record)
        self.log.info("barge_in", **record)

    def _cut_turn(self, item_id: str, heard_ms: int) -> None:
        """The caller heard only ``heard_ms`` of bot item ``item_id``: its text in the conversation follows."""
        self._interrupted[item_id] = heard_ms
        entry = self._assistant_entries.get(item_id)
        if entry is None or entry.get("interrupted"):
            return      # its transcript has not arrived yet; transcript() cuts it when it does
        full = entry["content"]
        heard = self.engine.heard_text(item_id, heard_ms, full)
        entry["content"] = heard + interrupted_marker(self.persona.language)
        entry["interrupted"] = True
        self.transcript_file.write("turn_cut", item_id=item_id, heard_ms=heard_ms, text=heard, full_text=full)
