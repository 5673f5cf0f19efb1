"""``voicebot voices preview · clone · list`` end to end against the emulator, and a cloned voice in real calls."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from voicebot.audio.wav import read_wav, write_wav
from voicebot.cli import build_parser
from voicebot.emulator.app import Emulator, start_emulator
from voicebot.emulator.http_common import http_log
from voicebot.simulator.caller import Hangup
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.voices_cli import check_clip, run

from conftest import AUTH_TOKEN, FIXTURES, start_voice_server

REPO = Path(__file__).resolve().parent.parent
TRANSCRIPT = "Hello, I would like to check the status of my order please. Wait, sorry, I have another question."
VOICE_ID = re.compile(r"^voice-tone-[A-Za-z0-9]+$")
RT_NUMBER, CHAIN_NUMBER = "+15550001001", "+15550001002"


@pytest.fixture
async def emulator():
    runner, emu = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    try:
        yield emu
    finally:
        await runner.cleanup()


@pytest.fixture
def config(tmp_path) -> Path:
    """An empty config.yaml, so the repository's own config does not leak into the tests."""
    path = tmp_path / "config.yaml"
    path.write_text("", encoding="utf-8")
    return path


@pytest.fixture
def sample(tmp_path) -> Path:
    """6.4 s of mono speech (the two English caller fixtures back to back): inside StepFun's 5–10 s."""
    first, rate = read_wav(FIXTURES / "caller_en.wav")
    second, _ = read_wav(FIXTURES / "caller_interrupt.wav")
    path = tmp_path / "sample.wav"
    write_wav(path, np.concatenate([first, second]), rate)
    return path


async def voices(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``voicebot voices …`` in this process; (exit status, stdout, stderr)."""
    args = build_parser().parse_args(["voices", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = await run(args, out=out, err=err, environ=environ or {})
    return status, out.getvalue(), err.getvalue()


async def voicebot_command(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the real ``voicebot`` entry point in a child process (the emulator keeps serving meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicebot.cli", *argv, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STEP_", "STEPFUN_", "VOICEBOT_", "TWILIO_"))}
    return {**env, **extra}


def records(emu, endpoint: str):
    return [r for r in http_log(emu) if r.endpoint == endpoint]


def rms_dbfs(pcm: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) / 32768 + 1e-12)


# ---------------------------------------------------------------------------------------------- preview

async def test_preview_writes_a_speech_like_wav_and_creates_no_voice(emulator, config, sample, tmp_path):
    out = tmp_path / "preview.wav"
    sample_text = "Hello there, this is my new voice speaking."
    status, stdout, stderr = await voices(
        "preview", "--audio", str(sample), "--text", TRANSCRIPT, "--sample-text", sample_text,
        "--instruction", "warm and slow", "--out", str(out), "--base-url", emulator.base_url,
        "--config", str(config))
    assert status == 0, stderr
    assert stdout.strip() == str(out)
    assert "warning" not in stderr                       # 6.4 s is inside the recommended 5–10 s
    assert "no voice was created" in stderr

    with wave.open(str(out), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    seconds = len(pcm) / rate
    assert 0.5 * len(sample_text) * 0.065 < seconds < 2 * len(sample_text) * 0.065   # about as long as said
    assert rms_dbfs(pcm) > -35                                                     # not silent
    # Syllables, not a steady tone or hiss: the 20 ms level envelope swings by several dB.
    blocks = pcm[: len(pcm) // (rate // 50) * (rate // 50)].reshape(-1, rate // 50).astype(np.float64)
    levels = 20 * np.log10(np.sqrt((blocks ** 2).mean(axis=1)) / 32768 + 1e-12)
    assert np.percentile(levels, 95) - np.percentile(levels, 5) > 6
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    assert spectrum[(freqs > 80) & (freqs < 1000)].sum() > spectrum[freqs > 4000].sum()   # voiced, not noise

    upload, = records(emulator, "files")
    assert upload.body == {"purpose": "storage", "filename": "sample.wav", "bytes": sample.stat().st_size}
    preview, = records(emulator, "voices.preview")
    assert preview.status == 200
    assert preview.body == {"model": "stepaudio-2.5-tts", "file_id": upload.result, "sample_text": sample_text,
                            "response_format": "wav", "text": TRANSCRIPT, "instruction": "warm and slow"}
    assert emulator.voice_registry.voices == {}            # a preview creates no voice


async def test_preview_without_sample_text_says_a_sentence_in_the_clips_language(emulator, config, sample,
                                                                                tmp_path):
    out = tmp_path / "zh.wav"
    status, _, stderr = await voices("preview", "--audio", str(sample), "--text", "你好，我想查询一下我的订单。",
                                     "--out", str(out), "--base-url", emulator.base_url, "--config", str(config))
    assert status == 0, stderr
    said = records(emulator, "voices.preview")[0].body["sample_text"]
    assert re.search("[\u4e00-\u9fff]", said) and len(said) <= 50
    assert "no --sample-text" in stderr and said in stderr            # the user is told what it says
    assert read_wav(out)[0].size > 0

    status, _, stderr = await voices("preview", "--audio", str(sample), "--out", str(out),
                                     "--base-url", emulator.base_url, "--config", str(config))
    assert status == 0, stderr
    assert records(emulator, "voices.preview")[1].body["sample_text"].isascii()   # no transcript: English
    assert "no --text" in stderr and "text" not in records(emulator, "voices.preview")[1].body


# ---------------------------------------------------------------------------------------------- clone

@contextlib.asynccontextmanager
async def voice_server(emu, tmp_path: Path, voice: str):
    """The real server with two personas speaking ``voice``: one on the realtime engine, one on the chain."""

    plans = tmp_path / "dialplans"
    plans.mkdir(exist_ok=True)
    (plans / "cloned.yaml").write_text(f"""\
personas:
  - name: cloned-realtime
    default: true
    numbers: ["{RT_NUMBER}"]
    engine: realtime
    language: en
    voice: {voice}
    instructions: You speak with a cloned voice.
    greeting: Hello, you are hearing my cloned voice.
  - name: cloned-chain
    numbers: ["{CHAIN_NUMBER}"]
    engine: chain
    language: en
    voice: {voice}
    instructions: You speak with a cloned voice on the chain.
    greeting: Hello from the chain, in my cloned voice.
""", encoding="utf-8")
    runner, settings, _ = await start_voice_server(tmp_path, plans, emu)
    try:
        yield settings.public_url
    finally:
        await runner.cleanup()


async def test_clone_prints_a_voice_id_that_list_shows_and_calls_speak_with(emulator, config, sample, tmp_path):
    bare = f"http://127.0.0.1:{emulator.port}"              # as `voicebot emulator --port N` is reached
    status, stdout, stderr = await voices("clone", "--audio", str(sample), "--text", TRANSCRIPT,
                                          "--base-url", bare, "--config", str(config))
    assert status == 0, stderr
    voice = stdout.strip()
    assert VOICE_ID.match(voice), stdout                    # stdout is the id alone
    assert f"voice: {voice}" in stderr
    assert "exists only in the emulator" in stderr
    clone, = records(emulator, "voices.clone")
    assert clone.body == {"model": "stepaudio-2.5-tts", "file_id": records(emulator, "files")[0].result,
                          "text": TRANSCRIPT}

    status, stdout, stderr = await voices("list", "--base-url", bare, "--config", str(config))
    assert status == 0, stderr
    assert [line.split("\t")[0] for line in stdout.splitlines()] == [voice]
    assert stdout.split("\t")[1] == clone.body["file_id"]

    async with voice_server(emulator, tmp_path, voice) as url:
        # Realtime engine: the session takes the cloned id and the greeting is heard.
        result = await simulate_twilio_call(url, to=RT_NUMBER, auth_token=AUTH_TOKEN, max_duration_s=20,
                                            script=[Hangup(after_bot_done=True, pause_s=0.3)])
        assert result.protocol_errors == []
        session = emulator.sessions[0]
        assert session.received_of("session.update")[0]["session"]["voice"] == voice
        assert [e for e in session.sent if e["type"] == "error"] == []
        assert sum(s.played_ms for s in result.segments) > 0.8 * len("Hello, you are hearing my cloned voice.") * 65
        assert rms_dbfs(result.heard[result.heard != 0]) > -30

        # Chain engine: TTS synthesizes with the cloned id.
        result = await simulate_twilio_call(url, to=CHAIN_NUMBER, auth_token=AUTH_TOKEN, max_duration_s=20,
                                            script=[Hangup(after_bot_done=True, pause_s=0.3)])
        assert result.protocol_errors == []
        assert len(emulator.sessions) == 1                  # no realtime session for the chain call
        tts = records(emulator, "tts")
        assert tts and all(r.body["voice"] == voice and r.status == 200 and r.done for r in tts)
        assert sum(s.played_ms for s in result.segments) > 0.8 * len("Hello from the chain, in my cloned voice.") * 65
        assert rms_dbfs(result.heard[result.heard != 0]) > -30


async def test_the_command_without_a_key_runs_an_in_process_emulator_and_says_so(sample, tmp_path):
    status, stdout, stderr = await voicebot_command("voices", "clone", "--audio", str(sample), "--text", TRANSCRIPT,
                                                    "--config", str(tmp_path / "none.yaml"), env=child_env())
    assert status == 2 and "none.yaml" in stderr            # a named config file must exist
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    status, stdout, stderr = await voicebot_command("voices", "clone", "--audio", str(sample), "--text", TRANSCRIPT,
                                                    "--config", str(tmp_path / "empty.yaml"), env=child_env())
    assert status == 0, stderr
    assert VOICE_ID.match(stdout.strip())
    assert "NO STEP_API_KEY SET" in stderr and "EMULATOR" in stderr
    assert "exists only in the in-process emulator" in stderr


async def test_clips_shorter_than_recommended_are_cloned_with_a_warning(emulator, config):
    status, stdout, stderr = await voices("clone", "--audio", str(FIXTURES / "caller_en.wav"),
                                          "--base-url", emulator.base_url, "--config", str(config))
    assert status == 0, stderr
    assert VOICE_ID.match(stdout.strip())
    assert "warning: the clip lasts 3.7 s; StepFun recommends 5–10 s" in stderr


# ---------------------------------------------------------------------------------------------- bad clips

def _write(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    write_wav(path, samples.astype(np.int16), rate)
    return path


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (3000 * np.sin(2 * np.pi * 180 * t)).astype(np.int16)


BAD_CLIPS = {
    "too short": (lambda p: p.write_bytes((FIXTURES / "caller_interrupt.wav").read_bytes()),
                  "2.8 s is too short; StepFun needs at least 3 s"),
    "stereo": (lambda p: _write(p, np.stack([_tone(6), _tone(6)], axis=1)), "2 channels; the clip must be mono"),
    "not audio": (lambda p: p.write_text("this is not a recording\n" * 100), "not a WAV or MP3 file"),
    "silent": (lambda p: _write(p, np.zeros(16000 * 6)), "(nearly) silent"),
    "too long": (lambda p: _write(p, _tone(61, 8000), 8000), "61.0 s is too long"),
    "too large": (lambda p: (p.write_bytes(b"RIFF"), os.truncate(p, 40 * 1024 * 1024)), "is too large"),
    "empty": (lambda p: p.touch(), "the file is empty"),
    "missing": (lambda p: None, "cannot read"),
}


@pytest.mark.parametrize("command", ["clone", "preview"])
@pytest.mark.parametrize("case", sorted(BAD_CLIPS))
async def test_bad_clips_are_refused_before_any_upload(emulator, config, tmp_path, case, command):
    make, expected = BAD_CLIPS[case]
    clip = tmp_path / "clip.wav"
    make(clip)
    extra = ["--out", str(tmp_path / "p.wav")] if command == "preview" else []
    status, stdout, stderr = await voices(command, "--audio", str(clip), *extra, "--base-url", emulator.base_url,
                                          "--config", str(config))
    assert status == 2
    assert stdout == ""
    assert stderr.startswith(f"voicebot voices {command}: {clip}: ") and expected in stderr, stderr
    assert http_log(emulator) == []                        # nothing was sent
    assert not (tmp_path / "p.wav").exists()


def _mp3(seconds: float, mono: bool = True) -> bytes:
    """MPEG-1 Layer III, 128 kbit/s, 44.1 kHz frames (payload zeroed): enough for the header walk."""
    frames = []
    for i in range(round(seconds * 44100 / 1152)):
        padding = 1 if i % 3 else 0                          # 417/418-byte frames average 128 kbit/s
        header = bytes([0xFF, 0xFB, 0x90 | (padding << 1), 0xC4 if mono else 0x44])
        frames.append(header + bytes(144 * 128000 // 44100 + padding - 4))
    return b"ID3\x03\x00\x00\x00\x00\x00\x0a" + bytes(10) + b"".join(frames) + b"TAG" + bytes(125)


def test_mp3_clips_are_measured_from_their_frames(tmp_path):
    path = tmp_path / "ref.mp3"
    path.write_bytes(_mp3(6.0))
    clip = check_clip(path)
    assert (clip.kind, clip.rate, clip.channels, clip.content_type) == ("mp3", 44100, 1, "audio/mpeg")
    assert abs(clip.seconds - 6.0) < 0.05 and clip.warnings == []
    path.write_bytes(_mp3(4.0))
    assert "4.0 s" in check_clip(path).warnings[0]
    path.write_bytes(_mp3(6.0, mono=False))
    with pytest.raises(ValueError, match="2 channels"):
        check_clip(path)
    path.write_bytes(_mp3(2.0))
    with pytest.raises(ValueError, match="too short"):
        check_clip(path)


# ---------------------------------------------------------------------------------------------- StepFun errors

async def test_stepfun_errors_show_status_and_trace_id_and_never_the_key(sample, tmp_path):
    runner, emu = await start_emulator("127.0.0.1", 0, Emulator(api_key="the-right-key"))
    try:
        secret = "sk-secret-4f9a1c-do-not-print"
        (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
        status, stdout, stderr = await voicebot_command(
            "voices", "clone", "--audio", str(sample), "--base-url", emu.base_url,
            "--config", str(tmp_path / "empty.yaml"), env=child_env(STEP_API_KEY=secret))
        assert status == 1 and stdout == ""
        upload, = records(emu, "files")
        assert "upload failed: StepFun answered HTTP 401 (authentication_error)" in stderr
        assert f"X-Trace-Id: {upload.trace_id}" in stderr and upload.trace_id
        assert "check STEP_API_KEY" in stderr
        assert secret not in stderr and secret not in stdout
    finally:
        await runner.cleanup()


async def test_a_clip_the_service_rejects_reports_the_answer(emulator, config, tmp_path):
    # 24-bit PCM passes the local checks; the emulator (like a strict StepFun) takes only 16-bit WAV.
    pcm = _tone(6).astype(np.int32) << 8
    raw = np.frombuffer(pcm.astype("<i4").tobytes(), np.uint8).reshape(-1, 4)[:, :3].tobytes()
    clip = tmp_path / "deep.wav"
    with wave.open(str(clip), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(16000)
        w.writeframes(raw)
    status, stdout, stderr = await voices("clone", "--audio", str(clip), "--base-url", emulator.base_url,
                                          "--config", str(config))
    assert status == 1 and stdout == ""
    clone, = records(emulator, "voices.clone")
    assert "clone failed: StepFun answered HTTP 400 (request_params_invalid)" in stderr
    assert "only 16-bit PCM WAV" in stderr and f"X-Trace-Id: {clone.trace_id}" in stderr


async def test_a_404_on_the_step_plan_files_path_says_what_to_set(emulator, config, sample):
    missing = f"http://127.0.0.1:{emulator.port}/no-files-here/step_plan/v1"
    status, _, stderr = await voices("clone", "--audio", str(sample), "--base-url", missing,
                                     "--config", str(config))
    assert status == 1
    assert "upload failed: StepFun answered HTTP 404" in stderr and "X-Trace-Id: " in stderr
    assert "export STEPFUN_FILES_BASE_URL=https://api.stepfun.com/v1" in stderr
    assert "export STEPFUN_FILES_API_KEY=<an open-platform API key>" in stderr


async def test_files_overrides_send_the_upload_elsewhere_with_its_own_key(sample, tmp_path):
    runner, emu = await start_emulator("127.0.0.1", 0, Emulator(api_key="plan-key"))
    config = tmp_path / "empty.yaml"
    config.write_text("", encoding="utf-8")
    try:
        env = {"STEP_API_KEY": "plan-key", "STEPFUN_FILES_BASE_URL": f"http://127.0.0.1:{emu.port}/v1",
               "STEPFUN_FILES_API_KEY": "open-platform-key"}
        status, _, stderr = await voices("clone", "--audio", str(sample), "--base-url", emu.base_url,
                                         "--config", str(config), environ=env)
        assert status == 1
        assert f"uploading to http://127.0.0.1:{emu.port}/v1/files (STEPFUN_FILES_BASE_URL)" in stderr
        assert "HTTP 401" in stderr and "check STEPFUN_FILES_API_KEY" in stderr
        assert "open-platform-key" not in stderr and "plan-key" not in stderr

        status, stdout, stderr = await voices("clone", "--audio", str(sample), "--base-url", emu.base_url,
                                              "--config", str(config),
                                              environ={**env, "STEPFUN_FILES_API_KEY": "plan-key"})
        assert status == 0, stderr
        assert VOICE_ID.match(stdout.strip())
        assert "bills a clone" in stderr                    # a real key: the cost is mentioned
    finally:
        await runner.cleanup()
