"""The README's first command: `voicebot demo` places a call offline, then runs a small outbound campaign, and
reports both; `voicebot check`."""

import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`voicebot demo` run once: (the process, the recording it wrote)."""
    home = tmp_path_factory.mktemp("demo")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}     # no STEP_API_KEY: the embedded emulator
    out = home / "call.wav"
    proc = subprocess.run([sys.executable, "-m", "voicebot.cli", "demo", "--wav-out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    return proc, out


def test_demo_prints_the_timeline_and_writes_a_stereo_recording(demo):
    proc, out = demo
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "EMULATOR" in proc.stderr                      # said loudly
    for expected in ("first bot audio heard", "barge-in reaction", "protocol errors                0",
                     "clear_received", "assistant: Hi, thanks for calling Acme.", "keypress: 1",
                     'tool call: transfer({"target": "sales"}) → ok',
                     "<Response><Dial><Number>+15557650150</Number></Dial></Response>  → 200",
                     "outcome transferred → +15557650150", "recording (as the caller heard it): /",
                     "voicebot demo --web"):                # where to go next: the console's phone
        assert expected in proc.stdout, expected
    with wave.open(str(out)) as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 8000 and wav.getnframes() > 8000 * 10


def test_demo_runs_the_example_campaign_through_the_faked_twilio_api(demo):
    proc, _ = demo
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # The dial requests as Twilio received them: one each for the person and the voicemail, two for the busy
    # line (the retry at least its 3 s later), none for the do-not-call number.
    dials = re.findall(r"([\d.]+) s  POST /2010-04-01/Accounts/AC\w+/Calls\.json → 201 CA\w+\n\s+To=(\+\d+)  "
                       r"From=(\+\d+)", out)
    assert sorted(to for _, to, _ in dials) == ["+12125550100", "+442079460958", "+81312345678", "+81312345678"]
    assert {from_ for _, _, from_ in dials} == {"+15550002000", "+15550002001"}
    busy = [float(at) for at, to, _ in dials if to == "+81312345678"]
    assert busy[1] - busy[0] >= 3.0 - 0.05
    assert out.count("MachineDetection=DetectMessageEnd  AsyncAmd=true") == 4
    assert out.count("StatusCallbackEvent=initiated,ringing,answered,completed") == 4
    # The callbacks, and our server's answers to them.
    for callback in ("AnsweredBy=human (answering-machine detection)  → 204",
                     "AnsweredBy=machine_end_beep (answering-machine detection)  → 204",
                     "CallStatus=busy SequenceNumber=2 CallDuration=0 SipResponseCode=486  → 204"):
        assert callback in out, callback
    # The person: the greeting with the contact's variables, then the outcome the bot set.
    assert ("assistant: Hi Ann, this is Ava from Acme Dental, calling about your appointment on Tuesday, "
            "December 8 at 10:00. Is now a good time?") in out
    assert 'tool call: set_outcome({"outcome": "confirmed", "note": "will come"}) → ok' in out
    # The voicemail: the bot silent through the greeting, its message recorded after the beep.
    silent = re.search(r"before the beep \(greeting [\d.]+ s\): the bot was silent \(level (\d+) RMS\)", out)
    assert silent and int(silent[1]) < 30
    recorded = re.search(r"after the beep the box recorded the bot from ([\d.]+) s to ([\d.]+) s", out)
    assert recorded and float(recorded[2]) - float(recorded[1]) > 3.0
    assert "assistant: Hi Ben, this is Acme Dental about your appointment on Wednesday, December 9" in out
    # The status and the export: every contact's outcome.
    assert "outcomes: busy 1, confirmed 1, dnc 1, voicemail 1" in out
    for row in ('+12125550100,confirmed,1,will come,', '+442079460958,voicemail,1,,',
                '+81312345678,busy,2,,,Chie,"Thursday, December 10 at 9:15"',
                '+4930901820,dnc,0,,,Dora,"Friday, December 11 at 16:00"'):
        assert row in out, row


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
