"""The README's first command: `voicebot demo` places a call offline and reports it; `voicebot check`."""

import subprocess
import sys
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_prints_the_timeline_and_writes_a_stereo_recording(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}     # no STEP_API_KEY: the embedded emulator
    out = tmp_path / "call.wav"
    proc = subprocess.run([sys.executable, "-m", "voicebot.cli", "demo", "--wav-out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "EMULATOR" in proc.stderr                      # said loudly
    for expected in ("first bot audio heard", "barge-in reaction", "protocol errors                0",
                     "clear_received", "assistant: Hi, thanks for calling Acme.", "keypress: 1",
                     'tool call: transfer({"target": "sales"}) → ok',
                     "<Response><Dial><Number>+15557650150</Number></Dial></Response>  → 200",
                     "outcome transferred → +15557650150", "recording (as the caller heard it): /"):
        assert expected in proc.stdout, expected
    with wave.open(str(out)) as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 8000 and wav.getnframes() > 8000 * 10


def test_check_lists_personas_and_rejects_bad_config(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "voicebot.cli", "check"], cwd=REPO, capture_output=True,
                          text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "acme-hotline-zh" in proc.stdout and "(default)" in proc.stdout
    # The English persona's tools, and where one is not offered (no call-control credentials here).
    assert "  tools: hang_up, transfer" in proc.stdout
    assert "  not offered on twilio: transfer (" in proc.stdout and "TWILIO_ACCOUNT_SID" in proc.stdout
    assert "  not offered on exotel: transfer (exotel has no call-control API" in proc.stdout
    assert "  not offered on telnyx: hang_up (" in proc.stdout
    bad = tmp_path / "config.yaml"
    bad.write_text("server:\n  port: not-a-port\n")
    proc = subprocess.run([sys.executable, "-m", "voicebot.cli", "check", "--config", str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert f"{bad}: server.port: expected an integer" in proc.stderr
