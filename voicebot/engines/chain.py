"""The fallback chain: local endpointing → stepaudio-2.5-asr → stepaudio-2.5-chat (streamed) → stepaudio-2.5-tts.

TTS starts on the first complete sentence while the chat still streams. On barge-in the running turn is
cancelled (the chat request and any TTS request or socket are aborted) and only the text the caller heard —
whole sentences played, plus the played share of the sentence cut off — goes into the conversation.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import structlog

from .. import latency, metrics
from ..audio import FRAME_SAMPLES, RATE
from ..audio.playout import HeardItem
from ..audio.resample import Resampler
from ..audio.vad import Endpointer
from ..config import StepFunSettings
from ..dialplan import Persona
from ..stepfun.asr import AsrClient
from ..stepfun.chat import ChatClient
from ..stepfun.errors import StepFunError
from ..stepfun.tts import TtsClient
from ..tools import FunctionSpec
from .base import EngineSink, heard_text

ASR_RATE = 16000
# A sentence ends at 。！？；… or at . ! ? ; followed by a space; a long clause may be cut at a comma.
_SENTENCE_END = re.compile(r"[。！？；…]+[”’」』)）]*|[.!?;]+[\"')\]]*(?=\s)|\n+")
_CLAUSE_END = re.compile(r"[，、,：:]")
LONG_CLAUSE_CHARS = 80
KEEP_SPOKEN_ITEMS = 8      # recent items whose sentence timing is kept for barge-in
MAX_TOOL_ROUNDS = 4        # chat → tools → chat … at most this many times for one caller turn
# Caller turns waiting while one is answered (each holds its utterance: up to chain.max_turn_s of audio, 480 KB
# at 30 s). Turns are answered one at a time, so more than a few waiting means StepFun is far slower than the
# caller speaks; answering stale questions in a row would not help: past this many, a new one is dropped.
MAX_WAITING_TURNS = 4


def split_sentences(buffer: str) -> tuple[list[str], str]:
    """Complete sentences at the front of ``buffer``, and the unfinished rest."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(buffer):
        piece = buffer[start:match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    rest = buffer[start:]
    if len(rest) > LONG_CLAUSE_CHARS:
        cuts = list(_CLAUSE_END.finditer(rest))
        if cuts:
            sentences.append(rest[:cuts[-1].end()].strip())
            rest = rest[cuts[-1].end():]
    return sentences, rest


@dataclass
class _Spoken:
    """Audio delivered for one bot item, sentence by sentence (to know which words the caller heard)."""

    sentences: list[list] = field(default_factory=list)   # [text, ms of audio delivered so far, complete]
    recorded: bool = False      # its transcript has been reported

    def heard(self, heard_ms: int) -> str:
        parts, elapsed = [], 0
        for text, ms, complete in self.sentences:
            if heard_ms >= elapsed + ms:
                parts.append(text)
            else:
                # A sentence cut while its audio still streamed spans more than what was delivered of it.
                span = ms if complete else max(ms, _expected_ms(text))
                parts.append(heard_text(text, heard_ms - elapsed, span))
                break
            elapsed += ms
        return " ".join(p for p in parts if p) if not _cjk(parts) else "".join(parts)

    @property
    def text(self) -> str:
        texts = [t for t, _, _ in self.sentences]
        return "".join(texts) if _cjk(texts) else " ".join(texts)


# Typical speaking time per character, for a sentence whose audio is not all known yet.
_MS_PER_CHAR = {"latin": 65, "cjk": 200}


def _expected_ms(text: str) -> int:
    return len(text) * _MS_PER_CHAR["cjk" if _cjk([text]) else "latin"]


def _cjk(parts: list[str]) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for part in parts for ch in part[:4])


class ChainEngine:
    name = "chain"

    def __init__(self, persona: Persona, stepfun: StepFunSettings, sink: EngineSink, log=None, *,
                 http: aiohttp.ClientSession, conversation: list[dict] | None = None,
                 opening: str | None = "greeting", tools: list[FunctionSpec] | None = None) -> None:
        self.persona = persona
        self.settings = persona.chain
        self.sink = sink
        self.log = log or structlog.get_logger("voicebot.engine")
        key = stepfun.api_key or "emulator"
        timeout = stepfun.connect_timeout_s
        self.asr = AsrClient(http, stepfun.base_url, key, model=self.settings.asr_model, connect_timeout=timeout)
        self.chat = ChatClient(http, stepfun.base_url, key, model=self.settings.chat_model, connect_timeout=timeout)
        self.tts = TtsClient(http, stepfun.base_url, key, model=self.settings.tts_model, connect_timeout=timeout)
        self.conversation = conversation if conversation is not None else []
        self.tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                        "parameters": t.parameters}} for t in tools or ()]
        self.opening = opening      # "greeting" | "reanswer" (the caller's last turn) | "reprompt" | None
        self.endpointer = Endpointer(silence_ms=self.settings.silence_ms, min_speech_ms=self.settings.min_speech_ms,
                                     max_turn_s=self.settings.max_turn_s, vad=self.settings.vad)
        self._turns: asyncio.Queue[Callable] = asyncio.Queue()   # caller turns in it: MAX_WAITING_TURNS
        self._worker: asyncio.Task | None = None
        self._current: asyncio.Task | None = None
        self._items = itertools.count(1)
        self._spoken: dict[str, _Spoken] = {}
        self._closed = False
        self.timings: list[dict] = []       # per turn: endpointing, asr, chat first token, tts first audio

    # -- Engine interface ------------------------------------------------------------------------
    async def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="chain-turns")
        if self.opening in ("reanswer", "reprompt") and self.settings.filler:
            # Taking over from the realtime model mid-answer. Turns run one at a time: no interleaved audio.
            filler = self.settings.filler
            self._turns.put_nowait(lambda: self._say(self._new_item(), filler))
        if self.opening == "reanswer":
            self._turns.put_nowait(lambda: self._answer(self._new_item()))
        elif self.opening == "reprompt":
            reprompt = self.settings.reprompt
            self._turns.put_nowait(lambda: self._say(self._new_item(), reprompt))
        elif self.opening == "greeting" and self.persona.greeting:
            greeting = self.persona.greeting
            self._turns.put_nowait(lambda: self._say(self._new_item(), greeting))

    def feed(self, frame: np.ndarray) -> None:
        if self._closed:
            return
        started, utterance = self.endpointer.push(frame)
        if started:
            self.sink.caller_speech_started()
        if utterance is not None and self._turns.qsize() >= MAX_WAITING_TURNS:
            self.log.warning("chain_turn_dropped", waiting=self._turns.qsize(),
                             utterance_ms=len(utterance) * 1000 // RATE,
                             problem="caller turns wait faster than StepFun answers them")
        elif utterance is not None:
            ended_at = asyncio.get_running_loop().time()
            self._turns.put_nowait(lambda: self._turn(utterance, ended_at))
            if latency.ENABLED:
                latency.count("chain_speech_frames", len(utterance) // FRAME_SAMPLES)
        if latency.ENABLED:
            # "in" for the chain: the carrier message reached us (Twilio stamps it), else now → the frame is
            # in the endpointer's buffer. A barge-in the frame confirmed happened inside and counts too.
            start = latency.arrival if latency.arrival_side == "carrier" else latency.clock()
            latency.arrival_side = ""
            latency.count("frames_fed")
            latency.record("in", latency.clock() - start)

    def interrupt(self, heard: list[HeardItem]) -> None:
        current = self._current
        if current is not None and not current.done():
            current.cancel()       # aborts the chat request and the TTS request or socket
        for item in heard:
            spoken = self._spoken.get(item.item_id)
            if spoken is not None and not spoken.recorded:
                spoken.recorded = True
                self.sink.transcript("assistant", spoken.text, item.item_id)

    def heard_text(self, item_id: str, heard_ms: int, text: str) -> str:
        spoken = self._spoken.get(item_id)
        return spoken.heard(heard_ms) if spoken is not None else text

    def say(self, text: str) -> None:
        self._turns.put_nowait(lambda: self._say(self._new_item(), text))

    def user_text(self, text: str) -> None:
        self._turns.put_nowait(lambda: self._answer(self._new_item()))

    @property
    def responding(self) -> bool:
        return self._current is not None or not self._turns.empty()

    async def close(self) -> None:
        self._closed = True
        tasks = [task for task in (self._current, self._worker) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Their ends (cancelled, or an error _work has logged) are not raised here; a cancellation of close()
            # itself is (Call gives an engine a few seconds to close, then moves on).
            await asyncio.wait(tasks)

    # -- turns -------------------------------------------------------------------------------------
    async def _work(self) -> None:
        # Until closed, even when a turn outlived its cancellation (a tool call finishing its work does, and
        # then the cancellation of this task that reached the turn is spent): close() must not wait forever.
        while not self._closed:
            make_turn = await self._turns.get()
            if self._closed:
                return
            self._current = asyncio.create_task(make_turn())
            try:
                await self._current
            except asyncio.CancelledError:
                if self._closed:
                    raise
            except Exception:
                self.log.exception("chain_turn_crashed")
            finally:
                self._current = None


    def _new_item(self) -> str:
        return f"chain_{next(self._items)}"

    async def _turn(self, utterance: np.ndarray, ended_at: float) -> None:
        loop = asyncio.get_running_loop()
        timing = {"endpointing_ms": self.settings.silence_ms, "speech_ms": len(utterance) * 1000 // RATE}
        started = loop.time()
        pcm16k = _to_16k(utterance)
        if latency.ENABLED:
            latency.count("chain_asr_frames", len(utterance) // FRAME_SAMPLES)
        try:
            result = await self.asr.transcribe(pcm16k, self.settings.asr_language)
            text = result.text.strip()
            problem = None if text else "empty transcript"
        except StepFunError as exc:
            metrics.stepfun_error(exc)
            text, problem = "", str(exc)
        timing["asr_ms"] = round((loop.time() - started) * 1000)
        if problem is not None:
            self.log.warning("chain_asr_failed", reason=problem, speech_ms=timing["speech_ms"])
            self.sink.note("asr_failed", reason=problem, speech_ms=timing["speech_ms"])
            await self._say(self._new_item(), self.settings.reprompt)
            return
        self.sink.transcript("user", text, None)
        timing.update(await self._answer(self._new_item(), since=ended_at) or {})
        self.timings.append(timing)

    async def _answer(self, item_id: str, since: float | None = None) -> dict:
        """Chat on the conversation so far; speak each sentence as soon as it is complete. When the model
        calls tools, they run and the model answers again with their results (while they ask it to)."""
        timing: dict = {}
        for _ in range(MAX_TOOL_ROUNDS):
            calls = await self._answer_with_retry(item_id, since, timing)
            if not calls or not await self._run_tools(calls):
                return timing
            item_id, since = self._new_item(), None
        self.log.warning("chain_tool_rounds_exhausted", rounds=MAX_TOOL_ROUNDS)
        return timing

    async def _run_tools(self, calls: list[dict]) -> bool:
        """Run the model's tool calls in order; True when the model should speak again."""
        follow_up = False
        for number, call in enumerate(calls):
            function = call.get("function") or {}
            call_id = call.get("id") or f"call_{self._new_item()}_{number}"
            result = await self.sink.run_tool(call_id, function.get("name") or "", function.get("arguments") or "")
            follow_up = follow_up or result.follow_up
            if self._closed:
                return False
        return follow_up

    async def _answer_with_retry(self, item_id: str, since: float | None, timing: dict) -> list[dict]:
        for attempt in (1, 2):
            try:
                return await self._answer_once(item_id, since, timing)
            except StepFunError as exc:
                metrics.stepfun_error(exc)
                self.log.warning("chain_chat_failed", attempt=attempt, reason=str(exc))
                if item_id in self._spoken:   # part of the answer was spoken: keep that, do not repeat
                    self._record_assistant(item_id)
                    self.sink.bot_audio_done(item_id)
                    return []
                await self._say(self._new_item(), self.settings.apology)
        return []

    async def _answer_once(self, item_id: str, since: float | None, timing: dict) -> list[dict]:
        """One chat request, spoken as it streams; the tool calls it ended with."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        messages = [{"role": "system", "content": self.persona.instructions},
                    *(_chat_message(e) for e in self.conversation)]
        sentences: asyncio.Queue[str | None] = asyncio.Queue()   # one chat reply's sentences: bounded by it
        speaker = asyncio.create_task(self._speak_sentences(item_id, sentences, timing, since))
        text, buffer = "", ""
        try:
            async with self.chat.stream(messages, temperature=self.settings.temperature,
                                        tools=self.tools or None) as stream:
                async for delta in stream:
                    if not text:
                        timing["chat_first_token_ms"] = round((loop.time() - started) * 1000)
                    text += delta
                    buffer += delta
                    done, buffer = split_sentences(buffer)
                    for sentence in done:
                        sentences.put_nowait(sentence)
            if buffer.strip():
                sentences.put_nowait(buffer.strip())
            sentences.put_nowait(None)
            await speaker
        finally:
            if not speaker.done():
                speaker.cancel()
        if item_id in self._spoken:
            self._record_assistant(item_id)
        elif text.strip():
            self.sink.note("reply_not_spoken", text=text.strip())
        self.sink.bot_audio_done(item_id)
        return [call for call in stream.tool_calls if isinstance(call, dict)]

    async def _speak_sentences(self, item_id: str, sentences: asyncio.Queue, timing: dict,
                               since: float | None) -> None:
        loop = asyncio.get_running_loop()
        while (sentence := await sentences.get()) is not None:
            first = "tts_first_audio_ms" not in timing
            tts_started = loop.time()
            delivered = await self._synthesize(item_id, sentence)
            if first and delivered:
                timing["tts_first_audio_ms"] = round((loop.time() - tts_started) * 1000)
                if since is not None:
                    timing["turn_end_to_first_audio_ms"] = round((loop.time() - since) * 1000)

    async def _synthesize(self, item_id: str, sentence: str) -> bool:
        """Speak one sentence into the playout as its audio arrives. HTTP streams it (SSE); a WebSocket
        failure before any audio falls back to HTTP for that sentence."""
        s = self.settings
        options = dict(voice=s.tts_voice, speed=s.tts_speed, volume=s.tts_volume, instruction=s.tts_instruction,
                       sample_rate=RATE)
        if s.tts_transport == "ws":
            delivered = [0]
            try:
                async with await self.tts.open_stream(**options, read_timeout=s.tts_stall_s) as stream:
                    await stream.send_text(sentence)
                    await stream.finish()
                    await self._play(item_id, sentence, stream.audio(), delivered)
                return bool(delivered[0])
            except StepFunError as exc:
                metrics.stepfun_error(exc)
                self.log.warning("chain_tts_ws_failed", reason=str(exc), delivered_samples=delivered[0],
                                 fallback="http" if not delivered[0] else None)
                if delivered[0]:      # the caller heard the start of it: do not say it twice
                    self.sink.note("tts_failed", reason=str(exc), text=sentence)
                    return True
        delivered = [0]
        try:
            async with self.tts.stream_http(sentence, **options, read_timeout=s.tts_stall_s) as stream:
                await self._play(item_id, sentence, stream, delivered)
        except StepFunError as exc:
            metrics.stepfun_error(exc)
            self.log.warning("chain_tts_failed", reason=str(exc), sentence_chars=len(sentence),
                             delivered_samples=delivered[0])
            self.sink.note("tts_failed", reason=str(exc), text=sentence)
        return bool(delivered[0])

    async def _play(self, item_id: str, sentence: str, chunks, delivered: list[int]) -> None:
        """Each chunk to the playout as it arrives; the sentence counts as spoken from its first chunk on, so
        that a barge-in mid-sentence keeps the part the caller heard."""
        entry: list | None = None
        async for pcm in chunks:
            if entry is None:
                entry = self._sentence_started(item_id, sentence)
            delivered[0] += len(pcm)
            entry[1] = delivered[0] * 1000 // RATE
            self.sink.bot_audio(item_id, pcm)
        if entry is not None:
            entry[2] = True

    def _sentence_started(self, item_id: str, sentence: str) -> list:
        spoken = self._spoken.get(item_id)
        if spoken is None:
            spoken = self._spoken[item_id] = _Spoken()
            for old in list(self._spoken)[:-KEEP_SPOKEN_ITEMS]:
                del self._spoken[old]
        entry = [sentence, 0, False]
        spoken.sentences.append(entry)
        return entry

    async def _say(self, item_id: str, text: str) -> None:
        """A fixed line (greeting, re-prompt, apology): TTS only, no chat."""
        for sentence in split_sentences(text + "\n")[0] or [text]:
            await self._synthesize(item_id, sentence)
        self._record_assistant(item_id)
        self.sink.bot_audio_done(item_id)

    def _record_assistant(self, item_id: str) -> None:
        spoken = self._spoken.get(item_id)
        if spoken is not None and not spoken.recorded:
            spoken.recorded = True
            self.sink.transcript("assistant", spoken.text, item_id)


def _chat_message(entry: dict) -> dict:
    """A conversation entry as a chat message: role and content, and a tool call's ids where it has them."""
    message = {"role": entry["role"], "content": entry["content"]}
    for key in ("tool_calls", "tool_call_id"):
        if key in entry:
            message[key] = entry[key]
    return message


def _to_16k(pcm8k: np.ndarray) -> np.ndarray:
    resampler = Resampler(RATE, ASR_RATE)
    padded = np.concatenate((pcm8k, np.zeros(80, dtype=np.int16)))   # push the filter's tail out
    out = resampler.process(padded)
    return out[resampler.delay_samples:resampler.delay_samples + 2 * len(pcm8k)]
