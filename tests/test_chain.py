"""The ASR → chat → TTS chain and realtime → chain failover, end to end through the server and emulator."""

from __future__ import annotations

import asyncio
import re

import pytest

from voicebot import latency
from voicebot.audio.playout import Playout
from voicebot.emulator.http_common import http_log
from voicebot.engines.chain import split_sentences
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.transcript import read_transcript

from conftest import AUTH_TOKEN, CHAIN, CHAIN_WS, EN, IMPATIENT, until


def reply_to(transcript: str) -> str:
    """The emulator chat's answer to the emulator ASR's transcript of caller speech."""
    seconds = float(re.fullmatch(r"\(caller speech (\d+\.\d+) s\)", transcript).group(1))
    return f"You said something for {seconds:.1f} seconds."


async def records_of(stack) -> list[dict]:
    await stack.idle(timeout=8)
    files = sorted(stack.transcripts.glob("*/*.jsonl"))
    assert len(files) == 1, files
    return read_transcript(files[0])


def turns(records) -> list[dict]:
    return [r for r in records if r["type"] == "turn"]


def requests(stack, endpoint: str):
    return [r for r in http_log(stack.emulator) if r.endpoint == endpoint]


def test_sentences_split_for_chinese_and_english():
    done, rest = split_sentences("Hello there. How are you? I am")
    assert done == ["Hello there.", "How are you?"] and rest == " I am"
    done, rest = split_sentences("您好！请问有什么可以帮您？我")
    assert done == ["您好！", "请问有什么可以帮您？"] and rest == "我"
    done, rest = split_sentences("Version 2.5 is out")
    assert done == [] and rest == "Version 2.5 is out"


async def test_a_whole_call_on_the_chain_engine(stack, caller_en, caller_interrupt):
    result = await simulate_twilio_call(
        stack.url, to=CHAIN, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="first"),
                Say(caller_interrupt, after_bot_done=True, pause_s=0.4, label="second"),
                Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    assert stack.emulator.sessions == []            # the realtime model was never used
    records = await records_of(stack)
    said = turns(records)
    assert [t["role"] for t in said] == ["assistant", "user", "assistant", "user", "assistant"]
    assert all(t["engine"] == "chain" for t in said)
    assert said[0]["text"] == "Hello, this is the chain line. How can I help?"
    assert said[1]["text"].startswith("(caller speech 3.")                # ASR heard the whole question
    assert said[2]["text"] == reply_to(said[1]["text"])
    # Every bot turn was heard: greeting and two replies, each after the caller finished.
    first, second = result.utterances[0], result.utterances[1]
    assert any(s.start_s > first.end_s and s.end_s < second.start_s and s.played_ms > 300 for s in result.segments)
    assert any(s.start_s > second.end_s and s.played_ms > 300 for s in result.segments)
    # The second chat request carried the whole conversation so far.
    chats = requests(stack, "chat")
    assert len(chats) == 2
    messages = chats[1].body["messages"]
    assert messages[0]["role"] == "system" and "chain engine" in messages[0]["content"]
    assert [m["role"] for m in messages[1:]] == ["assistant", "user", "assistant", "user"]
    # ASR got 16 kHz PCM of the utterance; TTS was asked for 8 kHz PCM in the persona's voice.
    asr = requests(stack, "asr")[0].body["audio"]["input"]
    assert asr["format"] == {"type": "pcm", "codec": "pcm_s16le", "rate": 16000, "bits": 16, "channel": 1}
    assert asr["transcription"]["language"] == "en"
    tts = requests(stack, "tts")[0].body
    assert tts["sample_rate"] == 8000 and tts["response_format"] == "pcm" and tts["voice"] == "lively-girl"
    # The turn timings were measured.
    end = records[-1]
    assert end["engine"] == "chain" and end["user_turns"] == 2


async def test_barge_in_on_the_chain_clears_aborts_tts_and_keeps_only_the_heard_text(stack, caller_interrupt):
    """The caller talks over the two-sentence greeting while the second sentence is still being synthesized."""
    stack.emulator.faults.http_delay_s = 2.5

    async def back_to_normal():
        # Once the second sentence's synthesis has begun (slowly), later requests may be quick again.
        await until(lambda: len(requests(stack, "tts")) >= 2, timeout=15, what="the second TTS request")
        stack.emulator.faults.http_delay_s = 0.0

    restore = asyncio.create_task(back_to_normal())
    result = await simulate_twilio_call(
        stack.url, to=CHAIN, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_interrupt, barge_after_bot_ms=800, label="barge"),
                Hangup(after_bot_done=True, pause_s=0.5)])
    await restore
    assert result.protocol_errors == []
    assert len(result.clears) == 1
    records = await records_of(stack)
    cut = [t for t in turns(records) if t.get("interrupted")]
    assert len(cut) == 1
    heard, full = cut[0]["text"], cut[0]["full_text"]
    assert full == "Hello, this is the chain line."          # the second sentence never played
    assert heard and len(heard) < len(full) and full.startswith(heard)
    tts = requests(stack, "tts")
    assert tts[0].done and not tts[1].done       # the second sentence's synthesis was cancelled mid-request
    # The answer to the barge-in saw only what the caller heard, marked as interrupted.
    history = requests(stack, "chat")[-1].body["messages"]
    assert history[1]["role"] == "assistant"
    assert history[1]["content"].startswith(heard) and "interrupted" in history[1]["content"]
    assert full not in history[1]["content"]


class RecordingSink:
    """An engine's sink that keeps what it is told."""

    def __init__(self):
        self.audio, self.turns, self.notes = {}, [], []

    def bot_audio(self, item_id, pcm):
        self.audio.setdefault(item_id, []).append(pcm)

    def bot_audio_done(self, item_id):
        pass

    def caller_speech_started(self):
        pass

    def transcript(self, role, text, item_id):
        self.turns.append((role, text, item_id))

    def note(self, kind, **fields):
        self.notes.append(kind)

    def engine_failed(self, reason):
        raise AssertionError(reason)


async def test_barge_in_aborts_a_streaming_chat(stack):
    """Engine level: the chat stream is cancelled and only the played share of the spoken text is kept."""
    from voicebot.audio.playout import HeardItem
    from voicebot.dialplan import load_dialplan
    from voicebot.engines.chain import ChainEngine
    from voicebot.server import SERVICES

    persona = load_dialplan(stack.settings.dialplans_dir).by_number[CHAIN]
    sink = RecordingSink()
    conversation = [{"role": "user", "content": "Say exactly: First sentence here. Then a second sentence "
                                                "that streams slowly. And a third one that never comes."}]
    stack.emulator.faults.chat_token_delay_s = 0.15
    engine = ChainEngine(persona, stack.settings.stepfun, sink, http=stack.app[SERVICES].http,
                         conversation=conversation, opening="reanswer")
    await engine.start()
    def first_sentence_delivered():
        spoken = next(iter(engine._spoken.values()), None)
        return spoken is not None and spoken.sentences[0][2]
    await until(first_sentence_delivered, what="the first sentence's audio")
    item_id = next(iter(sink.audio))
    audio_ms = sum(len(p) for p in sink.audio[item_id]) // 8
    engine.interrupt([HeardItem(item_id, audio_ms // 2, audio_ms)])
    chat = requests(stack, "chat")[0]
    await until(lambda: chat.aborted or chat.done, what="the chat request to end")
    assert chat.aborted and not chat.done
    assert sink.turns == [("assistant", "First sentence here.", item_id)]
    heard = engine.heard_text(item_id, audio_ms // 2, "First sentence here.")
    assert heard in ("First", "First sentence")
    await engine.close()


async def test_barge_in_while_a_sentence_still_streams_keeps_the_part_heard(stack):
    """A sentence cut while its TTS audio is still arriving stays in the history, cut to what was heard."""
    from voicebot.audio.playout import HeardItem
    from voicebot.dialplan import load_dialplan
    from voicebot.engines.chain import ChainEngine
    from voicebot.server import SERVICES

    persona = load_dialplan(stack.settings.dialplans_dir).by_number[CHAIN]
    sink = RecordingSink()
    sentence = "This sentence is long enough to take a few seconds of speech to arrive from the speech service."
    conversation = [{"role": "user", "content": f"Say exactly: {sentence}"}]
    stack.emulator.faults.tts_chunk_delay_s = 0.2
    engine = ChainEngine(persona, stack.settings.stepfun, sink, http=stack.app[SERVICES].http,
                         conversation=conversation, opening="reanswer")
    await engine.start()
    await until(lambda: sum(len(p) for chunks in sink.audio.values() for p in chunks) >= 8 * 600,
                what="600 ms of the sentence's audio")
    item_id = next(iter(sink.audio))
    engine.interrupt([HeardItem(item_id, 300, 600)])
    assert sink.turns == [("assistant", sentence, item_id)]
    heard = engine.heard_text(item_id, 300, sentence)
    # 300 ms of a sentence of about six seconds: its first word or two, not the half of it that was delivered.
    assert heard and sentence.startswith(heard) and len(heard) <= 12, heard
    await engine.close()


async def test_failover_at_connect_answers_on_the_chain(stack, caller_en):
    stack.emulator.faults.refuse_realtime_status = 503
    result = await simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=30,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4), Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    assert result.first_bot_audio_s is not None and result.first_bot_audio_s < 2.0
    records = await records_of(stack)
    switch = [r for r in records if r["type"] == "engine_switch"]
    assert len(switch) == 1 and "503" in switch[0]["reason"] and switch[0]["opening"] == "greeting"
    said = turns(records)
    assert [t["role"] for t in said] == ["assistant", "user", "assistant"]
    assert said[0]["text"] == "Hello, this is the test line of Acme. How can I help you today?"
    assert said[2]["text"].startswith("You said something for ")
    assert records[-1]["engine_switches"] == 1


async def test_failover_mid_response_reanswers_the_last_turn(stack, caller_en):
    stack.emulator.faults.response_delay_s = 1.5     # keeps the reply pending long enough to cut the socket

    async def drop_during_the_reply():
        session = await stack.emulator.next_session(timeout=10)
        await session.wait_sent("response.created", timeout=30, count=2)   # the reply to the caller
        stack.emulator.faults.drop_realtime_after_s = 0.0

    dropper = asyncio.create_task(drop_during_the_reply())
    result = await simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                Hangup(after_bot_done=True, pause_s=0.8)])
    await dropper
    assert result.protocol_errors == []
    records = await records_of(stack)
    switch = [r for r in records if r["type"] == "engine_switch"]
    assert len(switch) == 1
    assert switch[0]["mid_answer"] is True and switch[0]["opening"] == "reanswer"
    # From the moment the failure was seen to the chain's first audio (the emulator answers at once).
    silence = [r for r in records if r["type"] == "engine_switch_audio"]
    assert len(silence) == 1 and silence[0]["silence_ms"] < 1500
    assert "socket" in switch[0]["reason"] or "closed" in switch[0]["reason"] or "lost" in switch[0]["reason"]
    said = turns(records)
    # Complete and ordered: greeting (realtime), the question, the answer (chain).
    assert [(t["role"], t["engine"]) for t in said] == [("assistant", "realtime"), ("user", "realtime"),
                                                        ("assistant", "chain")]
    assert said[2]["text"] == reply_to(said[1]["text"])
    # The caller heard the chain's answer, and not much silence around the switch.
    question = result.utterances[0]
    answer = [s for s in result.segments if s.start_s > question.end_s]
    assert answer and answer[0].played_ms > 300
    gap = answer[0].start_s - question.end_s
    assert gap < 0.5 + 1.5 + 1.5 + 1.0      # end-of-turn silence + the held reply + switch budget + chain


async def test_a_silent_realtime_socket_switches_to_the_chain(stack, caller_en):
    stack.emulator.faults.response_delay_s = 30.0     # the greeting's audio never comes
    result = await simulate_twilio_call(
        stack.url, to=IMPATIENT, auth_token=AUTH_TOKEN, max_duration_s=30,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4), Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    assert result.first_bot_audio_s is not None and result.first_bot_audio_s < 1.0 + 0.5 + 1.5
    records = await records_of(stack)
    switch = [r for r in records if r["type"] == "engine_switch"]
    assert len(switch) == 1 and "no realtime events" in switch[0]["reason"]
    assert switch[0]["opening"] == "greeting" and switch[0]["switch_ms"] < 1500
    said = turns(records)
    assert said[0] == {**said[0], "role": "assistant", "engine": "chain", "text": "Hello from the impatient line."}
    assert said[-1]["text"].startswith("You said something for ")


async def test_realtime_error_event_switches_to_the_chain(stack, caller_en):
    stack.emulator.faults.error_event_after_s = 1.0
    result = await simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=30,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4), Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    records = await records_of(stack)
    switch = [r for r in records if r["type"] == "engine_switch"]
    assert len(switch) == 1 and "server_error" in switch[0]["reason"]
    assert turns(records)[-1]["engine"] == "chain"
    assert turns(records)[-1]["text"].startswith("You said something for ")


async def run_with_fault_on_the_turn(stack, caller_en, to, fault, value):
    """One caller turn on the chain with ``fault`` armed after the greeting has been synthesized."""
    async def arm():
        # After the greeting has been synthesized: the fault is for the caller's turn.
        def greeting_synthesized():
            tts = [r for r in http_log(stack.emulator) if r.endpoint.startswith("tts")]
            return tts and all(r.done for r in tts)
        await until(greeting_synthesized, timeout=10, what="the greeting's synthesis")
        setattr(stack.emulator.faults, fault, value)

    armer = asyncio.create_task(arm())
    result = await simulate_twilio_call(
        stack.url, to=to, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4), Hangup(after_bot_done=True, pause_s=1.0)])
    await armer
    assert result.protocol_errors == []
    return result, await records_of(stack)


async def test_asr_failure_reprompts_and_keeps_a_record(stack, caller_en):
    result, records = await run_with_fault_on_the_turn(stack, caller_en, CHAIN, "asr_fail_once", 503)
    failure = [r for r in records if r["type"] == "asr_failed"]
    assert len(failure) == 1 and "503" in failure[0]["reason"] and failure[0]["speech_ms"] > 3000
    said = turns(records)
    assert said[-1]["role"] == "assistant" and said[-1]["text"] == "Sorry, could you say that again?"


async def test_chat_failure_apologises_and_retries_once(stack, caller_en):
    result, records = await run_with_fault_on_the_turn(stack, caller_en, CHAIN, "chat_fail_once", 500)
    texts = [t["text"] for t in turns(records) if t["role"] == "assistant"]
    assert "Sorry, I had a problem there. One moment please." in texts
    assert texts[-1].startswith("You said something for ")      # the retry answered
    assert len(requests(stack, "chat")) == 2


async def test_tts_websocket_failure_falls_back_to_http_for_that_sentence(stack, caller_en):
    result, records = await run_with_fault_on_the_turn(stack, caller_en, CHAIN_WS, "tts_ws_fail_once", 503)
    said = turns(records)
    assert said[-1]["text"].startswith("You said something for ")
    assert requests(stack, "tts.ws") and requests(stack, "tts")   # the failed sentence went over HTTP
    answer = [s for s in result.segments if s.start_s > result.utterances[0].end_s]
    assert answer and answer[0].played_ms > 300


@pytest.mark.parametrize("to", [CHAIN, CHAIN_WS], ids=["tts-http", "tts-ws"])
async def test_load_test_instrumentation_follows_the_chain(stack, caller_en, monkeypatch, to):
    """With VOICEBOT_LATENCY on, the chain counts the frames it takes, cuts into utterances and sends to ASR,
    times each frame's 'in' span, and starts each bot frame's 'out' span when its TTS audio arrived."""
    monkeypatch.setattr(latency, "ENABLED", True)
    monkeypatch.setattr(latency, "counters", {})
    monkeypatch.setattr(latency, "histograms", {name: latency.Histogram() for name in latency.NAMES})
    stamps = []
    enqueue = Playout.enqueue

    def spy(self, item_id, pcm):
        stamps.append((latency.arrival_side, latency.arrival, latency.clock()))
        enqueue(self, item_id, pcm)

    monkeypatch.setattr(Playout, "enqueue", spy)
    result = await simulate_twilio_call(
        stack.url, to=to, auth_token=AUTH_TOKEN, max_duration_s=30,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4), Hangup(after_bot_done=True, pause_s=0.5)])
    assert result.protocol_errors == []
    await records_of(stack)
    counters = latency.counters
    assert counters["carrier_frames_in"] > 0 and counters["frames_fed"] == counters["carrier_frames_in"]
    assert latency.histograms["in"].n == counters["frames_fed"]
    # One utterance: all of it went to ASR, and ASR took all of it (caller_en is about 3.4 s of speech).
    speech_s = counters["chain_speech_frames"] * 0.020
    assert 3.0 < speech_s < counters["frames_fed"] * 0.020
    assert counters["chain_asr_frames"] == counters["chain_speech_frames"]
    assert stack.emulator.asr_requests == 1 and stack.emulator.asr_audio_ms == round(speech_s * 1000)
    # Every chunk of bot audio (greeting and reply) reached the playout stamped by its TTS stream.
    assert len(stamps) > 10 and all(side == "model" for side, _, _ in stamps)
    assert all(arrived <= now for _, arrived, now in stamps)
    assert len({arrived for _, arrived, _ in stamps}) > len(stamps) // 2   # per chunk, not once per call
    assert latency.histograms["out"].n > 0


def test_emulator_chat_answers_asr_placeholders_as_the_realtime_emulator_answers_the_same_speech():
    from voicebot.emulator.chat import plan_reply

    assert plan_reply([{"role": "user", "content": "(caller speech 3.34 s)"}]) == \
        "You said something for 3.3 seconds."
    assert plan_reply([{"role": "user", "content": "I heard (caller speech 3.34 s) twice"}]) == \
        "You said: I heard (caller speech 3.34 s) twice."


async def test_the_persona_chooses_the_chain_models(tmp_path, caller_en):
    """chain.asr_model, chat_model and tts_model (each a documented StepFun name) are the ones requested."""
    from voicebot.emulator.app import Emulator, start_emulator

    from conftest import start_voice_server

    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "chain.yaml").write_text(f"""name: chain-models
numbers: ["{CHAIN}"]
default: true
engine: chain
language: en
voice: lively-girl
instructions: Test.
greeting: Hello from the other models.
chain: {{asr_model: stepaudio-2-asr-pro, tts_model: step-tts-2, tts_transport: ws, silence_ms: 500}}
""", encoding="utf-8")
    emu_runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    runner, settings, _ = await start_voice_server(tmp_path, plans, emulator)
    try:
        result = await simulate_twilio_call(
            settings.public_url, to=CHAIN, auth_token=AUTH_TOKEN, max_duration_s=30,
            script=[Say(caller_en, after_bot_done=True, pause_s=0.4), Hangup(after_bot_done=True, pause_s=0.5)])
    finally:
        await runner.cleanup()
        await emu_runner.cleanup()
    assert result.protocol_errors == [] and len(result.utterances) == 1
    log = http_log(emulator)
    asr = [r for r in log if r.endpoint == "asr"]
    tts = [r for r in log if r.endpoint == "tts.ws"]
    chat = [r for r in log if r.endpoint == "chat"]
    assert asr and all(r.body["audio"]["input"]["transcription"]["model"] == "stepaudio-2-asr-pro" for r in asr)
    assert chat and all(r.body["model"] == "stepaudio-2.5-chat" for r in chat)
    assert tts and all(r.status == 200 and r.error is None for r in tts)
    assert {r.body.get("model") for r in tts} == {"step-tts-2"}, [r.body for r in tts]
