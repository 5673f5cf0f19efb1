"""The Call: joins one carrier stream to one engine — lifecycle, barge-in, failover, the conversation as heard,
tools, transcript, call record and events. What the bot does to the call itself (hang-up, transfer, keypad
tones, timed goodbyes) is carried out by its :class:`~voicebot.control.CallController`; on a call a campaign
placed, waiting for the callee before the greeting and the voicemail by its
:class:`~voicebot.campaigns.outbound.OutboundCall`."""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import structlog

from . import metrics
from .admission import Admission
from .audio import FRAME_MS
from .audio.pacer import PacedJob, Pacer, shared_pacer
from .audio.playout import Playout
from .audio.vad import EnergyVad
from .campaigns.outbound import OutboundCall, OutboundContext
from .config import Settings
from .control import CallController
from .dialplan import Dialplan, Persona
from .engines.base import Engine, EngineSink, EngineUnavailable, interrupted_marker
from .livefeed import LiveFeed
from .telephony.base import CallMeta, CarrierSession
from .tools import ToolBox, ToolResult, offered
from .transcript import TranscriptFile

from .recording import start_recording
from .store.calls import CallRecord

if TYPE_CHECKING:
    from .store import RecordWriter

log = structlog.get_logger("voicebot.call")

ENGINE_START_TIMEOUT_S = 15.0
# Caller audio kept while an engine connects or engines switch, fed to it once it is up: as long as a start may
# take, so that a slow but successful start loses nothing (8 kHz int16: 320 B per frame, 240 KB at most).
SWITCH_BUFFER_FRAMES = int(ENGINE_START_TIMEOUT_S * 1000) // FRAME_MS

# make_engine(persona, sink, log, kind=…, conversation=…, opening=…, tools=…) → Engine.
# kind: "realtime" | "chain"; opening (chain): "greeting" | "reanswer" | "reprompt" | None;
# tools: the FunctionSpecs the call offers.
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
    events: object = None    # the call-event sender (voicebot/webhooks.py), set on app startup
    controls: dict = field(default_factory=dict)   # carrier name -> its call-control API client (telephony/rest)
    campaigns: object = None  # the campaign service (campaigns/outbound.py CampaignHooks), set on app startup
    admission: Admission = field(default_factory=lambda: Admission(max_calls=0))   # the server sets its own
    live: LiveFeed = field(default_factory=LiveFeed)   # the calls' transcript lines, to the console's live pages

    def call_control(self, carrier: str):
        return self.controls.get(carrier)


class Call(EngineSink):
    def __init__(self, *, meta: CallMeta, persona: Persona, carrier: CarrierSession, services: CallServices,
                 close_carrier: Callable[[], Awaitable] | None = None,
                 outbound: OutboundContext | None = None) -> None:
        """``outbound``: the attempt of a call a campaign placed (``persona`` is then its personalised one)."""
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
        first_kind = "chain" if persona.engine == "chain" else "realtime"
        self.metrics = metrics.CallMetrics(meta.carrier, persona.name, first_kind)
        self.playout = Playout(carrier, lead_ms=lead_ms, mark_every_ms=self.settings.playout.mark_every_ms,
                               chunk_ms=chunk_ms, lateness=self.metrics.frame_latency, log=self.log)
        self.recorder = (start_recording(self.settings.recordings_dir, meta, self.playout, log=self.log)
                         if persona.record else None)
        self.vad = EnergyVad(min_speech_ms=persona.barge_in.min_speech_ms)
        # The conversation as the caller heard it: role/content dicts, shared with the chain engine.
        self.conversation: list[dict] = []
        self._assistant_entries: dict[str, dict] = {}
        self.started_t = time.monotonic()
        self.started_at = datetime.now(timezone.utc)
        self.closing = False      # an ending is under way: no barge-in, nothing new for the model
        self.control = CallController(self)
        # A placed call: not a word, and nothing to the model, until the callee is confirmed (then greet()).
        self.waiting_for_callee = outbound is not None
        self.campaign = OutboundCall(self, outbound, services.campaigns) if outbound is not None else None
        self._greet_when_up = False
        self._engine_up = asyncio.Event()
        self.tool_specs = offered(persona.tools, self.control.abilities,
                                  outbound.outcomes if outbound is not None else None)
        self.toolbox = ToolBox(persona.tools, self.tool_specs, self.control, http=services.http,
                               call_id=self.call_id, persona=persona.name, log=self.log,
                               on_done=self._tool_done)
        self._tool_tasks: set[asyncio.Task] = set()
        self.engines_used = [first_kind]
        self.engine: Engine = services.make_engine(persona, self, self.log, kind=first_kind,
                                                   conversation=self.conversation,
                                                   opening=None if self.waiting_for_callee else "greeting",
                                                   tools=self.tool_specs)
        self.engine_switches: list[dict] = []
        self._switching: asyncio.Task | None = None
        self._switched_t: float | None = None     # when the last failover began, until its first audio
        self._held_frames: list[np.ndarray] = []
        self._held_texts: list[str] = []
        self._held_dropped = 0
        self.transcript_file = TranscriptFile(self.settings.transcripts_dir, self.call_id, log=self.log)
        self.transcript_file.listeners.append(functools.partial(services.live.publish, self.call_id))
        self.ended = False
        self.end_reason: str | None = None
        self.outcome: str | None = None          # set by whoever ends the call; else the caller hung up
        self.transfer_target: str | None = None
        self.recording_path = self.recorder.path if self.recorder is not None else None
        self.ended_at: datetime | None = None
        self.user_turns = 0
        self.bot_turns = 0
        self.barge_ins: list[dict] = []
        self.turns: list[dict] = []              # the transcript for the call record
        self.dtmf_in: list[dict] = []
        self.turn_latencies_ms: list[int] = []
        self._turn_end_t: float | None = None    # the caller stopped speaking here, no bot audio since
        self._interrupted: dict[str, int] = {}   # item id -> ms heard when cut off
        self._turn_records: dict[str, dict] = {}  # bot item id -> its entry in self.turns
        self._ended_event = asyncio.Event()
        self._pacing = PacedJob(self._pace)
        self._pacer: Pacer | None = None
        self._task: asyncio.Task | None = None
        self._engine_ready = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.services.calls.add(self)
        self.metrics.started()
        self.transcript_file.write("call_start", call_id=self.call_id, carrier=self.meta.carrier,
                              call_sid=self.meta.call_id, stream_id=self.meta.stream_id,
                              from_number=self.meta.from_number, to_number=self.meta.to_number,
                              persona=self.persona.name, engine=self.engine.name)
        self.log.info("call_started", from_number=self.meta.from_number, to_number=self.meta.to_number,
                      engine=self.engine.name, tools=[spec.name for spec in self.tool_specs])
        self._save_record()
        self._event("call.started", self.record(summary_only=True))
        self.control.start_timers()
        if self.campaign is not None:
            self.campaign.start()
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
                    self.hang_up(f"engine unavailable: {reason}", "failed")
            try:
                await asyncio.wait_for(self._ended_event.wait(), self.persona.max_call_seconds)
            except asyncio.TimeoutError:
                # The bot finishes its sentence, says goodbye, and hangs up once the goodbye was heard.
                limit = asyncio.create_task(self.control.time_limit(), name=f"time-limit-{self.call_id}")
                await self._ended_event.wait()
                if not limit.done():
                    limit.cancel()
        finally:
            self._pacer.cancel(self._pacing)
            self.control.stop()
            if self.campaign is not None:
                self.campaign.stop()
            if self._switching is not None and not self._switching.done():
                self._switching.cancel()
            for task in list(self._tool_tasks):
                task.cancel()
            await self._finish()

    async def _finish(self) -> None:
        if self.recorder is not None:
            self.recorder.close()    # first: audio sent after the end was not heard
        if self.outcome is None:
            # The carrier ended it: the caller hung up, after the bot had answered (completed) or while it
            # was still talking or a reply was due (abandoned). Judged before the engine closes: a closed
            # engine has no reply in progress any more.
            busy = self.playout.speaking or self.engine.responding
            self.outcome = "caller_hung_up" if busy else "completed"
        try:
            await asyncio.wait_for(self.engine.close(), 3.0)
        except Exception:   # closing a dead socket must not stop the transcript being written
            self.log.warning("engine_close_failed", exc_info=True)
        self.ended_at = datetime.now(timezone.utc)
        first = self.playout.first_audio_sent_t
        summary = {
            "duration_s": round(time.monotonic() - self.started_t, 2),
            "user_turns": self.user_turns,
            "bot_turns": self.bot_turns,
            "barge_ins": len(self.barge_ins),
            "engine": self.engine.name,
            "engine_switches": len(self.engine_switches),
            "first_bot_audio_ms": None if first is None else round((first - self.started_t) * 1000),
            "outcome": self.outcome,
            "end_reason": self.end_reason,
        }
        if self.toolbox.calls:
            summary["tools"] = len(self.toolbox.calls)
        if self.recorder is not None:
            self.recording_path = await self.recorder.finished()
            summary["recording"] = str(self.recording_path) if self.recording_path else None
        self.transcript_file.write("call_end", **summary)
        self.transcript_file.close()
        self.log.info("call_summary", transcript=str(self.transcript_file.path), **summary)
        record = self.record()
        self._save_record(record)
        if self.campaign is not None:
            self.campaign.report()
        self._event("call.ended", record)
        self.services.calls.discard(self)
        self.metrics.ended(self.outcome, None if first is None else first - self.started_t, self.playout.frames_late)
        metrics.frames_dropped(self.meta.carrier, "playout_full", self.playout.frames_overflowed)
        if self._close_carrier is not None:
            try:
                await self._close_carrier()
            except Exception:
                pass

    def hang_up(self, reason: str, outcome: str | None = None) -> None:
        """End the call now. ``outcome`` (record field) when we end it; None when the caller/carrier did."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        if self.outcome is None:
            self.outcome = outcome
        self.log.info("call_ending", reason=reason, outcome=self.outcome)
        self._ended_event.set()

    # -- a call a campaign placed ----------------------------------------------------------------------
    def machine_detected(self, answered_by: str) -> None:
        """The carrier's answering-machine verdict for this call (Twilio AnsweredBy values)."""
        if self.campaign is None:
            self.log.warning("amd_verdict_for_inbound_call", answered_by=answered_by)
            return
        self.campaign.machine_detected(answered_by)

    def greet(self) -> None:
        """The callee is confirmed: from now on they reach the model, and the bot greets them."""
        self.waiting_for_callee = False
        if self._engine_ready:
            self._say_greeting()
        else:
            self._greet_when_up = True    # said as soon as the engine is up

    def _say_greeting(self) -> None:
        if self.persona.greeting and not self.closing:
            self.engine.say(self.persona.greeting)

    async def engine_up(self) -> bool:
        """Until an engine is connected and ready; False when none came up in time."""
        try:
            await asyncio.wait_for(self._engine_up.wait(), 2 * ENGINE_START_TIMEOUT_S)
            return True
        except asyncio.TimeoutError:
            return False

    async def wait_ended(self) -> None:
        await self._ended_event.wait()

    async def finished(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    def transferred(self, name: str, target: str) -> None:
        """The carrier took the call to ``target``: the call's outcome, whatever ends the stream."""
        self.outcome, self.transfer_target = "transferred", target
        self.transcript_file.write("transfer", target_name=name, target=target,
                                   t_ms=round((time.monotonic() - self.started_t) * 1000))
        self.log.info("call_transferred", target_name=name, target=target)
        self._event("call.transferred", {**self.record(summary_only=True), "transfer_target_name": name})
    # -- carrier side ---------------------------------------------------------------------------
    def on_caller_audio(self, frame: np.ndarray) -> None:
        if self.ended:
            return
        if self.recorder is not None:
            self.recorder.caller(frame)
        vad = self.vad
        was_speaking = vad.in_speech
        if vad.process(frame) and self.persona.barge_in.enabled and self.playout.speaking and not self.closing:
            self._barge_in("local_vad")
        if was_speaking and not vad.in_speech:
            # The utterance ended a hangover ago; the reply's latency counts from there.
            self._turn_end_t = time.monotonic() - vad.hangover_frames * FRAME_MS / 1000
        if self.closing:
            return      # the bot is saying goodbye or handing the call on: nothing new for the model
        if self.waiting_for_callee:
            # Nothing the callee says before the greeting reaches the model (it would answer it, or a
            # voicemail greeting, unasked); the end of their first words may be the cue to greet.
            if was_speaking and not vad.in_speech:
                self.campaign.utterance_ended()
            return
        if self._engine_ready:
            self.engine.feed(frame)
        elif len(self._held_frames) < SWITCH_BUFFER_FRAMES:
            self._held_frames.append(frame)   # the engine is (re)connecting: nothing the caller says is lost
        else:
            if not self._held_dropped:
                self.log.warning("caller_audio_dropped_while_connecting", held_ms=SWITCH_BUFFER_FRAMES * FRAME_MS)
            self._held_dropped += 1
            metrics.frames_dropped(self.meta.carrier, "engine_connecting")

    def on_mark(self, name: str) -> None:
        self.playout.on_mark(name)
        self._check_drained()

    def on_dtmf(self, digit: str) -> None:
        t_ms = round((time.monotonic() - self.started_t) * 1000)
        self.log.info("dtmf", digit=digit)
        self.transcript_file.write("dtmf", digit=digit, t_ms=t_ms)
        self.dtmf_in.append({"digit": digit, "t_ms": t_ms})
        if self.ended:
            return
        text = self.control.dtmf(digit)
        if self.persona.dtmf.mode != "off" and self.persona.barge_in.enabled and self.playout.speaking \
                and not self.closing:
            self._barge_in("dtmf")
        if text is not None:
            self.caller_typed(text)

    def caller_typed(self, text: str) -> None:
        """Keypad input complete: it joins the conversation as the caller's turn, and the model answers it."""
        self.transcript("user", text, None)
        if self._engine_ready:
            self.engine.user_text(text)
        else:
            self._held_texts.append(text)

    def _pace(self) -> float | None:
        """Send the bot audio that is due; seconds until the playout needs pacing again, None when idle."""
        delay = self.playout.pump()
        self._check_drained()
        return delay if self.playout.has_work else None

    def _check_drained(self) -> None:
        """After a mark came back or audio went out: wake the controller waiting for the playout to empty."""
        drained = self.control.drained
        if drained is not None and not self.playout.speaking:
            drained.set()

    def send_due_audio(self) -> None:
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
        if self._turn_end_t is not None:
            latency_s = time.monotonic() - self._turn_end_t
            self.turn_latencies_ms.append(round(latency_s * 1000))
            metrics.turn_latency(latency_s)
            self.transcript_file.write("turn_latency", latency_ms=round(latency_s * 1000), item_id=item_id,
                                       t_ms=round((time.monotonic() - self.started_t) * 1000))
            self._turn_end_t = None
        self.control.bot_audio(item_id)
        self.playout.enqueue(item_id, pcm)
        self.send_due_audio()

    def bot_audio_done(self, item_id: str) -> None:
        if item_id not in self._interrupted:
            self.playout.end_item(item_id)
            self.send_due_audio()
        self.control.bot_audio_done(item_id)

    def caller_speech_started(self) -> None:
        if self.persona.barge_in.enabled and self.playout.speaking and not self.closing:
            self._barge_in("model_vad")

    def transcript(self, role: str, text: str, item_id: str | None) -> None:
        t_ms = round((time.monotonic() - self.started_t) * 1000)
        fields = {"role": role, "text": text, "item_id": item_id, "engine": self.engine.name, "t_ms": t_ms}
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
        turn = {k: v for k, v in fields.items() if k != "item_id"}
        self.turns.append(turn)
        if role == "assistant" and item_id:
            self._turn_records[item_id] = turn

    def note(self, kind: str, **fields) -> None:
        self.transcript_file.write(kind, engine=self.engine.name,
                                   t_ms=round((time.monotonic() - self.started_t) * 1000), **fields)
        self.log.info(kind, **fields)

    def engine_failed(self, reason: str) -> None:
        if self.ended or (self._switching is not None and not self._switching.done()):
            return
        if self.closing:
            # Its last words are in the playout already; the ending goes on without it.
            self.log.info("engine_gone_while_closing", engine=self.engine.name, reason=reason)
            return
        if self._can_fail_over():
            self._engine_ready = False
            self._switching = asyncio.create_task(self._fail_over(reason))
        else:
            self.log.error("engine_failed", engine=self.engine.name, reason=reason)
            self.hang_up(f"engine failed: {reason}", "failed")

    async def run_tool(self, call_id: str, name: str, arguments: str) -> ToolResult:
        """The model called a tool: it runs in a task of the call's own (an engine closing does not cut a
        transfer in half), and the exchange joins the conversation the chain would continue from."""
        task = asyncio.create_task(self.toolbox.run(name, arguments), name=f"tool-{name}-{self.call_id}")
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() or self.ended:
                raise
            result = await task
        self.conversation.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]})
        self.conversation.append({"role": "tool", "tool_call_id": call_id, "content": result.text})
        return result

    def _tool_done(self, call) -> None:
        """Written as the tool finishes, in the same step (a hang-up or transfer ends the call right after)."""
        self.transcript_file.write("tool", name=call.name, arguments=call.arguments, ok=call.ok, result=call.result,
                                   engine=self.engine.name, t_ms=call.t_ms, duration_ms=call.duration_ms)

    @property
    def engine_ready(self) -> bool:
        return self._engine_ready

    # -- failover -------------------------------------------------------------------------------
    def _can_fail_over(self) -> bool:
        return self.persona.engine == "auto" and self.engine.name == "realtime" and not self.ended

    async def _fail_over(self, reason: str, *, at_start: bool = False) -> None:
        """Realtime → chain without dropping the call; the conversation so far carries over."""
        t0 = time.monotonic()
        self._switched_t = t0
        self._engine_ready = False
        self._engine_up.clear()
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
            opening = None if self.waiting_for_callee or self._greet_when_up else "greeting"
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
                                        conversation=self.conversation, opening=opening, tools=self.tool_specs)
        self.engine = new
        self.engines_used.append(new.name)
        self.metrics.engine_switched(old.name, new.name)
        try:
            await asyncio.wait_for(new.start(), ENGINE_START_TIMEOUT_S)
        except (EngineUnavailable, asyncio.TimeoutError) as exc:
            self.log.error("engine_unavailable", engine=new.name, reason=str(exc) or "start timed out")
            self.hang_up(f"engine unavailable: realtime ({reason}) and chain ({exc})", "failed")
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
        self._engine_up.set()
        texts, self._held_texts = self._held_texts, []
        for text in texts:
            engine.user_text(text)
        if self._greet_when_up:
            self._greet_when_up = False
            self._say_greeting()

    # -- barge-in -------------------------------------------------------------------------------
    def _barge_in(self, trigger: str) -> None:
        """Within this one loop turn: carrier clear, local queue dropped, engine told what was heard."""
        t0 = time.perf_counter()
        heard = self.cut_bot()
        reaction_s = time.perf_counter() - t0
        reaction_us = round(reaction_s * 1e6)
        metrics.barge_in(reaction_s)
        record = {"trigger": trigger, "t_ms": round((time.monotonic() - self.started_t) * 1000),
                  "heard": [{"item_id": h.item_id, "heard_ms": h.heard_ms, "generated_ms": h.generated_ms}
                            for h in heard], "reaction_us": reaction_us}
        self.barge_ins.append(record)
        self.transcript_file.write("barge_in", **record)
        self.log.info("barge_in", **record)

    def cut_bot(self, why: str | None = None) -> list:
        """Stop the bot now (carrier clear, local queue dropped) and tell the engine what was heard."""
        heard = self.playout.interrupt()
        for item in heard:
            self._cut_turn(item.item_id, item.heard_ms)
        self.engine.interrupt(heard)
        if why is not None:
            self.log.info("bot_cut", reason=why, heard=[(h.item_id, h.heard_ms) for h in heard])
        return heard

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
        turn = self._turn_records.get(item_id)
        if turn is not None:
            turn.update(text=heard, full_text=full, interrupted=True, heard_ms=heard_ms)

    # -- what the call leaves behind ---------------------------------------------------------------
    def record(self, *, summary_only: bool = False) -> dict:
        """The call record (voicebot/store): who, when, how it ended, what was said and done."""
        now = time.monotonic()
        first = self.playout.first_audio_sent_t
        ended_at = self.ended_at
        record = {
            "id": self.call_id, "carrier": self.meta.carrier, "carrier_call_id": self.meta.call_id,
            "persona": self.persona.name, "from_number": self.meta.from_number, "to_number": self.meta.to_number,
            "direction": self.meta.direction, "started_at": self.started_at,
            "answered_at": self.started_at, "ended_at": ended_at,
            "duration_s": round(((ended_at - self.started_at).total_seconds() if ended_at else now - self.started_t), 3),
            "outcome": self.outcome if ended_at else None,
            "outcome_detail": self.end_reason if self.outcome == "failed" else None,
            "transfer_target": self.transfer_target, "end_reason": self.end_reason,
            "engines": list(self.engines_used), "engine_switches": list(self.engine_switches),
            "user_turns": self.user_turns, "bot_turns": self.bot_turns, "barge_ins": len(self.barge_ins),
            "first_audio_ms": None if first is None else round((first - self.started_t) * 1000),
            "turn_latencies_ms": list(self.turn_latencies_ms),
            "recording_path": str(self.recording_path) if self.recording_path else None,
        }
        if self.campaign is not None:
            context = self.campaign.context
            record.update(direction="outbound", campaign_id=context.campaign_id, attempt_id=context.attempt_id)
        if not summary_only:
            record["tools"] = [{"name": c.name, "arguments": c.arguments, "result": c.result, "ok": c.ok,
                                "t_ms": c.t_ms, "duration_ms": c.duration_ms} for c in self.toolbox.calls]
            record["transcript"] = [dict(turn) for turn in self.turns]
            record["dtmf"] = list(self.dtmf_in)
        return record

    def _save_record(self, record: dict | None = None) -> None:
        if self.services.records is None:
            return
        try:
            self.services.records.put(CallRecord(**(record or self.record())))
        except ValueError as exc:     # a bug in what we built: say so, never fail the call for it
            self.log.error("call_record_invalid", problem=str(exc))

    def _event(self, event_type: str, data: dict) -> None:
        hook = self.persona.events_webhook
        if hook is None or self.services.events is None:
            return
        secret = os.environ.get(hook.secret_env) if hook.secret_env else None
        self.services.events.send(hook.url, secret, event_type, self.call_id, data)
