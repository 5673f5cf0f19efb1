"""The stereo as-heard recording: the real playout against a model of the carrier's buffer (what it played and
when), the real writer thread, files read back with the ``wave`` module."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest
import structlog

from test_playout import CarrierModel, Clock
from voicebot.audio.playout import Playout
from voicebot.recording import CallRecorder, recording_name, start_recording, wait_written
from voicebot.telephony.base import CallMeta

RATE = 8000
FRAME = 160
TOLERANCE = 160      # ±20 ms


def tone(freq: float, ms: int, amp: int = 8000) -> np.ndarray:
    """A cosine: its first sample is at full amplitude, so its onset is exact."""
    t = np.arange(RATE * ms // 1000) / RATE
    return np.round(amp * np.cos(2 * np.pi * freq * t)).astype(np.int16)


def read_stereo(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, RATE)
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    return data[:, 0], data[:, 1]


def first_sound(x: np.ndarray) -> int:
    nz = np.flatnonzero(x)
    assert len(nz), "the channel is silent"
    return int(nz[0])


def last_sound(x: np.ndarray) -> int:
    return int(np.flatnonzero(x)[-1])


def assert_caller_stream(left: np.ndarray, caller: np.ndarray) -> None:
    """The left channel is the caller's stream, sample for sample, from its first frame (at the start) on."""
    start = first_sound(left)
    assert start <= TOLERANCE and np.array_equal(left[start:], caller[:len(left) - start])


def finish(recorder: CallRecorder) -> Path:
    recorder.close()
    path = recorder._file.done.result(timeout=10)
    assert path is not None, recorder.failed
    return path


class CallRig:
    """A call's bot side (the playout and a carrier that plays what it gets in real time) and its caller
    side (the carrier's 20 ms frames from ``caller_starts`` on, each arriving when it ends plus a delay),
    on one fake clock, with a recorder fed by both."""

    def __init__(self, folder: Path, caller_audio: np.ndarray, *, caller_starts: float = 0.0,
                 delays: np.ndarray | None = None, supports_marks: bool = True, chunk_ms: int = 100) -> None:
        self.clock = Clock()
        self.start = self.clock.t
        self.carrier = CarrierModel(self.clock, supports_marks=supports_marks)
        self.playout = Playout(self.carrier, lead_ms=100, mark_every_ms=100, chunk_ms=chunk_ms, clock=self.clock)
        self.recorder = start_recording(folder, CallMeta(carrier="twilio", call_id="CA0123"), self.playout)
        self.caller_audio = caller_audio
        frames = len(caller_audio) // FRAME
        ends = self.start + caller_starts + FRAME / RATE * np.arange(1, frames + 1)
        arrivals = ends + (delays[:frames] if delays is not None else 0.0)
        self.arrivals = np.maximum.accumulate(arrivals)      # one stream: frames arrive in order
        self.next_frame = 0

    def run(self, until_s: float, step: float = 0.005) -> None:
        while self.clock.t < self.start + until_s:
            while self.next_frame < len(self.arrivals) and self.arrivals[self.next_frame] <= self.clock.t + 1e-9:
                k = self.next_frame
                self.recorder.caller(self.caller_audio[k * FRAME:(k + 1) * FRAME])
                self.next_frame += 1
            self.playout.pump()
            self.carrier.deliver(self.playout)
            self.clock.t = round(self.clock.t + step, 6)

    def say(self, item_id: str, pcm: np.ndarray) -> None:
        self.playout.enqueue(item_id, pcm)
        self.playout.end_item(item_id)

    def played_at(self, index: int) -> int:
        """Where the carrier's ``index``-th played frame starts, in samples from the call's start."""
        return round((self.carrier.frames[index][0] - self.start) * RATE)


def jitter(frames: int, seed: int = 0) -> np.ndarray:
    """0–15 ms of network and event-loop delay per frame, and a 150 ms stall at frame 120."""
    delays = np.random.default_rng(seed).uniform(0.0, 0.015, frames)
    delays[120] = 0.150
    return delays


@pytest.mark.parametrize("supports_marks", [True, False])
@pytest.mark.parametrize("chunk_ms", [20, 100])
def test_bot_and_caller_tones_land_in_their_own_channel_where_they_were_heard(tmp_path, supports_marks, chunk_ms):
    caller = np.zeros(4 * RATE, np.int16)
    caller[RATE * 3 // 2:RATE * 5 // 2] = tone(440, 1000)      # 1.5–2.5 s of the caller's stream
    rig = CallRig(tmp_path, caller, caller_starts=0.3, delays=jitter(200), supports_marks=supports_marks,
                  chunk_ms=chunk_ms)
    rig.run(0.1)
    greeting = tone(1000, 600)
    rig.say("greeting", greeting)           # plays before the caller's first frame arrives
    rig.run(1.2)
    answer = tone(1000, 500, amp=6000)
    rig.say("answer", answer)
    rig.run(4.4)
    path = finish(rig.recorder)
    assert path == tmp_path / "twilio-CA0123.wav"
    left, right = read_stereo(path)

    caller_onset = round((0.3 + 1.5) * RATE)
    assert abs(first_sound(left) - caller_onset) <= TOLERANCE
    assert np.array_equal(left[first_sound(left):][:RATE], caller[RATE * 3 // 2:RATE * 5 // 2])
    assert not left[:first_sound(left)].any() and not left[first_sound(left) + RATE:].any()

    greeting_at = rig.played_at(0)
    answer_at = rig.played_at(len(greeting) // FRAME)
    assert abs(first_sound(right) - greeting_at) <= TOLERANCE
    assert np.array_equal(right[first_sound(right):][:len(greeting)], greeting)
    # Silence between the two, and the answer where the carrier played it.
    after_greeting = first_sound(right) + len(greeting)
    answer_found = after_greeting + first_sound(right[after_greeting:])
    assert abs(answer_found - answer_at) <= TOLERANCE
    assert np.array_equal(right[answer_found:answer_found + len(answer)], answer)
    assert not right[answer_found + len(answer):].any()
    # What matters to whoever listens: the two channels against each other.
    assert abs((answer_found - first_sound(left)) - (answer_at - caller_onset)) <= TOLERANCE


@pytest.mark.parametrize("supports_marks", [True, False])
def test_a_barge_in_cut_is_heard_where_it_happened_though_more_had_been_sent(tmp_path, supports_marks):
    caller = tone(440, 3000, amp=1500)
    rig = CallRig(tmp_path, caller, delays=jitter(150, seed=1), supports_marks=supports_marks)
    rig.run(0.2)
    rig.say("answer", tone(1000, 2500))
    rig.run(1.234)
    sent = sum(n for kind, n in rig.carrier.wire if kind == "audio")
    rig.playout.interrupt()
    cut_at = round(1.234 * RATE)
    rig.run(2.5)
    path = finish(rig.recorder)
    left, right = read_stereo(path)
    assert_caller_stream(left, caller)

    played = np.concatenate([f for _, f in rig.carrier.frames])   # the frames the carrier played in full
    assert sent - len(played) >= 600          # ≥ 75 ms more had gone to the carrier than it played
    onset = first_sound(right)
    assert abs(onset - rig.played_at(0)) <= TOLERANCE
    assert np.array_equal(right[onset:onset + len(played)], played)
    assert abs(last_sound(right) - cut_at) <= TOLERANCE
    assert not right[cut_at + TOLERANCE:].any()


@pytest.mark.parametrize("supports_marks", [True, False])
def test_silence_where_the_carrier_ran_dry(tmp_path, supports_marks):
    caller = tone(440, 3000, amp=1500)
    rig = CallRig(tmp_path, caller, delays=jitter(150, seed=2), supports_marks=supports_marks)
    rig.run(0.2)
    first, second = tone(1000, 300), tone(700, 400)
    rig.say("a", first)
    rig.run(1.0)                                  # 300 ms played, then 500 ms with nothing to play
    rig.say("b", second)
    rig.run(2.0)
    left, right = read_stereo(finish(rig.recorder))
    assert_caller_stream(left, caller)
    on1 = first_sound(right)
    assert abs(on1 - rig.played_at(0)) <= TOLERANCE
    assert np.array_equal(right[on1:on1 + len(first)], first)
    gap_end = rig.played_at(len(first) // FRAME)
    assert gap_end - (rig.played_at(0) + len(first)) >= 0.45 * RATE
    on2 = on1 + len(first) + first_sound(right[on1 + len(first):])
    assert abs(on2 - gap_end) <= TOLERANCE
    assert np.array_equal(right[on2:on2 + len(second)], second)


def test_bot_audio_arriving_just_in_time_stays_one_unbroken_stream(tmp_path):
    """Each 100 ms delta arrives as the previous one finishes playing: everything sent has played by the
    time the caller's frames flush a segment, and the next delta carries straight on."""
    answer = tone(1000, 3000)
    rig = CallRig(tmp_path, tone(440, 4000, amp=2000))
    rig.run(0.3)
    for at in range(0, len(answer), 800):
        rig.playout.enqueue("answer", answer[at:at + 800])
        rig.run(0.3 + (at + 800) / RATE)
    rig.playout.end_item("answer")
    rig.run(3.8)
    _, right = read_stereo(finish(rig.recorder))
    onset = first_sound(right)
    assert abs(onset - rig.played_at(0)) <= TOLERANCE
    assert np.array_equal(right[onset:onset + len(answer)], answer)
    assert not right[onset + len(answer):].any()


def test_the_file_is_a_valid_wav_while_the_call_goes_on(tmp_path):
    caller = tone(440, 4000, amp=3000)
    rig = CallRig(tmp_path, caller)
    rig.say("greeting", tone(1000, 3000))
    for until in (1.1, 2.3, 3.4):
        rig.run(until)
        assert wait_written(timeout=10)
        left, right = read_stereo(rig.recorder.path)
        # Everything up to at most one second ago is in the file, sample for sample.
        assert len(left) >= (until - 1.0) * RATE
        assert np.array_equal(left, caller[:len(left)])
        assert right.any()
    left, right = read_stereo(finish(rig.recorder))
    assert abs(len(left) - 3.4 * RATE) <= TOLERANCE


def test_bot_audio_scheduled_after_the_call_ended_is_not_in_the_recording(tmp_path):
    clock = Clock()
    recorder = CallRecorder(tmp_path / "r.wav", clock=clock)
    beep = tone(1000, 20)
    for k in range(50):                           # 1 s of caller frames, and bot frames 200 ms ahead
        clock.t = round(clock.t + 0.02, 6)
        recorder.caller(tone(440, 20, amp=2000))
        recorder.bot(beep, clock.t + 0.2)
    left, right = read_stereo(finish(recorder))
    assert len(left) == RATE
    assert abs(first_sound(right) - round(0.22 * RATE)) <= 1
    assert last_sound(right) == RATE - 1          # heard up to the hang-up, not the 200 ms sent ahead


def test_a_caller_stream_that_pauses_resumes_at_its_time_and_the_bot_is_written_meanwhile(tmp_path):
    clock = Clock()
    recorder = CallRecorder(tmp_path / "r.wav", clock=clock)
    speech = tone(440, 20, amp=3000)
    beep = tone(1000, 20)

    def ticks(n: int, caller_sends: bool) -> None:
        for _ in range(n):
            clock.t = round(clock.t + 0.02, 6)
            if caller_sends:
                recorder.caller(speech)
            recorder.bot(beep, clock.t + 0.1)

    ticks(50, True)                     # 0–1 s: both
    ticks(100, False)                   # 1–3 s: only the bot
    assert wait_written(timeout=10)
    left, right = read_stereo(recorder.path)
    assert len(left) >= 2.0 * RATE      # written though the caller sent nothing: at most a second behind
    assert np.array_equal(right[round(0.12 * RATE):], np.tile(beep, 150)[:len(right) - round(0.12 * RATE)])
    ticks(50, False)                    # 3–4 s: only the bot
    ticks(50, True)                     # 4–5 s: both again
    left, right = read_stereo(finish(recorder))
    assert len(left) == 5 * RATE
    assert np.array_equal(left[:RATE], np.tile(speech, 50))
    assert abs(first_sound(left[RATE:]) + RATE - 4 * RATE) <= TOLERANCE
    assert np.array_equal(left[-RATE:], np.tile(speech, 50))
    assert first_sound(right) == round(0.12 * RATE)
    assert np.array_equal(right[round(0.12 * RATE):], np.tile(beep, 244))     # up to the hang-up at 5 s


@pytest.mark.parametrize("frame_s", [0.020002, 0.019998])     # the carrier's clock 100 ppm slow, or fast
def test_a_carrier_clock_drifting_from_ours_does_not_pull_the_channels_apart(tmp_path, frame_s):
    clock = Clock()
    start = clock.t
    recorder = CallRecorder(tmp_path / "r.wav", clock=clock)
    quiet = np.zeros(FRAME, np.int16)
    beep = tone(1000, 20)
    minutes = 10
    frames = minutes * 60 * 50
    for k in range(frames):
        clock.t = start + (k + 1) * frame_s
        recorder.caller(quiet)
        if k >= frames - 25:                  # the bot's last half second, sent 100 ms ahead
            recorder.bot(beep, clock.t + 0.1)
    left, right = read_stereo(finish(recorder))
    # The bot's first beep played at our time t; the caller heard it at caller-clock sample t / frame_s * 160.
    played = (frames - 25 + 1) * frame_s + 0.1
    expected = round(played / frame_s * FRAME)
    assert abs(first_sound(right) - expected) <= TOLERANCE, (first_sound(right), expected)
    assert len(left) >= frames * FRAME


def test_many_recordings_at_once_each_hold_only_their_own_audio(tmp_path):
    clock = Clock()
    start = clock.t
    calls = 150
    recorders = [CallRecorder(tmp_path / f"call{i}.wav", clock=clock) for i in range(calls)]
    callers = [tone(300 + 7 * i, 3000, amp=2000 + 10 * i) for i in range(calls)]
    bots = [tone(1200 + 5 * i, 2000, amp=5000) for i in range(calls)]
    for k in range(150):                       # 3 s: every call's caller frame, and its bot 0.5–2.5 s
        clock.t = round(clock.t + 0.02, 6)
        for i, recorder in enumerate(recorders):
            recorder.caller(callers[i][k * FRAME:(k + 1) * FRAME])
            j = k - 20                         # sent 80 ms before it plays
            if 0 <= j < 100:
                recorder.bot(bots[i][j * FRAME:(j + 1) * FRAME], start + 0.5 + 0.02 * j)
    for recorder in recorders:
        recorder.close()

    async def all_finished():
        return await asyncio.gather(*(r.finished() for r in recorders))

    paths = asyncio.run(all_finished())
    for i, path in enumerate(paths):
        left, right = read_stereo(path)
        assert np.array_equal(left, callers[i])
        at = first_sound(right)
        assert at == round(0.5 * RATE)
        assert np.array_equal(right[at:at + len(bots[i])], bots[i]) and not right[at + len(bots[i]):].any()


def test_a_name_taken_gets_a_suffix_and_nothing_is_overwritten(tmp_path):
    first, second = CallRecorder(tmp_path / "twilio-CA1.wav"), CallRecorder(tmp_path / "twilio-CA1.wav")
    first.caller(tone(440, 20))
    second.caller(tone(880, 20))
    assert finish(first) == tmp_path / "twilio-CA1.wav"
    assert finish(second) == tmp_path / "twilio-CA1-2.wav"
    assert read_stereo(tmp_path / "twilio-CA1.wav")[0].any() and read_stereo(tmp_path / "twilio-CA1-2.wav")[0].any()


def test_the_file_name_is_the_carrier_and_its_call_id_made_safe():
    assert recording_name("twilio", "CA9f8e") == "twilio-CA9f8e.wav"
    assert recording_name("asterisk", "../../etc/passwd") == "asterisk-.._.._etc_passwd.wav"
    assert recording_name("freeswitch", "a1b2@10.0.0.1:5060") == "freeswitch-a1b2_10.0.0.1_5060.wav"
    assert "/" not in recording_name("x", "/" * 500) and len(recording_name("x", "y" * 500)) <= 204


def test_a_folder_that_cannot_be_written_is_logged_and_the_call_goes_on(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the recordings folder should be")
    clock = Clock()
    with structlog.testing.capture_logs() as logs:
        recorder = CallRecorder(blocker / "twilio-CA1.wav", clock=clock)
        for _ in range(60):
            clock.t = round(clock.t + 0.02, 6)
            recorder.caller(tone(440, 20))
            recorder.bot(tone(1000, 20), clock.t + 0.1)
        recorder.close()
        assert asyncio.run(recorder.finished()) is None
    assert recorder.failed == f"cannot create the recordings folder (File exists): {blocker}"
    failures = [e for e in logs if e["event"] == "recording_failed"]
    assert len(failures) == 1 and failures[0]["path"].endswith("twilio-CA1.wav")
    assert failures[0]["log_level"] == "error"


CRASHING_CALL = textwrap.dedent("""
    import sys, time
    import numpy as np
    from voicebot.recording import CallRecorder

    def saw(k, period, amp):         # a sawtooth whose every sample says where it is
        n = np.arange(k * 160, (k + 1) * 160)
        return (((n % period) - period // 2) * amp // period + 1).astype(np.int16)

    recorder = CallRecorder(sys.argv[1])
    t0 = time.monotonic()
    for k in range(100000):
        wait = t0 + 0.02 * (k + 1) - time.monotonic()
        if wait > 0:
            time.sleep(wait)          # a real-time caller: one frame per 20 ms
        recorder.caller(saw(k, 181, 8000))
        recorder.bot(saw(k, 97, 12000), t0 + 0.02 * (k + 1) + 0.1)
        if k % 5 == 4:
            print((k + 1) * 20, flush=True)
""")


def test_a_killed_process_leaves_a_valid_wav_missing_at_most_its_last_second(tmp_path):
    path = tmp_path / "crash.wav"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_CALL, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        for line in proc.stdout:
            fed_ms = int(line)
            if fed_ms >= 2600:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    left, right = read_stereo(path)
    assert len(left) >= (fed_ms - 1000) * RATE // 1000, (len(left), fed_ms)
    n = np.arange(len(left) * 2)
    caller = ((((n % 181) - 90) * 8000 // 181) + 1).astype(np.int16)
    bot = ((((n % 97) - 48) * 12000 // 97) + 1).astype(np.int16)
    on = first_sound(left)
    assert on <= TOLERANCE + 0.05 * RATE      # the caller's first frame ended ~20 ms after the recorder began
    assert np.array_equal(left[on:], caller[:len(left) - on])
    on = first_sound(right)
    assert np.array_equal(right[on:], bot[:len(right) - on])
