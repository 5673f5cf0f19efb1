"""Keypad entries and the silence clock, as state machines (the call drives them with digits and ticks)."""

from __future__ import annotations

import numpy as np

from voicebot.audio.dtmf import HIGH, LOW, tones
from voicebot.caller_input import Keypad, SilenceWatch, keypad_text
from voicebot.dialplan import DtmfSettings, SilenceSettings


def test_pass_mode_hands_on_every_digit():
    keypad = Keypad(DtmfSettings(mode="pass"))
    assert [keypad.press(d, 0.0) for d in "12#"] == ["1", "2", "#"]
    assert keypad_text("5", "en", collected=False) == "The caller pressed 5 on the phone keypad."
    assert keypad_text("1234", "zh", collected=True) == "来电者在电话键盘上输入了 1234。"


def test_collect_mode_ends_at_the_terminator_the_length_or_the_timeout():
    keypad = Keypad(DtmfSettings(mode="collect", max_digits=4, terminator="#", timeout_s=5.0))
    assert [keypad.press(d, 0.0) for d in "12"] == [None, None]
    assert keypad.press("#", 0.1) == "12"                        # terminator, not included
    assert [keypad.press(d, 1.0) for d in "9876"] == [None, None, None, "9876"]   # max_digits
    assert keypad.press("4", 2.0) is None and keypad.pending == "4"
    assert keypad.due(6.9) is None                                # 4.9 s after the last key
    assert keypad.due(7.0) == "4" and keypad.due(8.0) is None     # timed out once
    assert keypad.press("#", 9.0) is None                         # a lone terminator is no entry
    off = Keypad(DtmfSettings(mode="off"))
    assert off.press("1", 0.0) is None


def test_silence_reprompts_then_hangs_up_on_the_callers_silence():
    watch = SilenceWatch(SilenceSettings(reprompt_s=2.0, reprompt="Still there?", hang_up_s=5.0, goodbye="Bye."))
    actions, t = [], 0.0

    def run(until, *, caller=False, bot=False):
        nonlocal t
        while t < until - 1e-9:
            t = round(t + 0.25, 2)
            action = watch.tick(t, caller_speaking=caller, bot_busy=bot)
            if action:
                actions.append((action, t))

    run(1.0, bot=True)                 # the greeting: not silence
    run(3.25)                          # the first quiet tick (1.25) starts it: 2 s later, a re-prompt
    assert actions == [("reprompt", 3.25)]
    run(4.5, bot=True)                 # the re-prompt plays: the clock pauses, it does not restart
    run(8.0)                           # it goes on from 2 s at the next quiet tick (4.75)
    assert actions == [("reprompt", 3.25), ("reprompt", 6.75), ("hang_up", 7.75)]   # 4 s and 5 s of silence
    actions.clear()
    watch.activity()                   # the caller spoke (or pressed a key): a new silence starts from zero
    run(9.25)
    assert actions == []
    run(10.0, caller=True)
    run(11.5)
    assert actions == []


def test_keypad_tones_carry_both_frequencies_of_each_key():
    audio = tones("1#w")
    assert len(audio) == 8000 * (2 * 180 + 500) // 1000 and np.abs(audio).max() < 32767 * 0.5
    for key, start in (("1", 0), ("#", 1440)):
        burst = audio[start:start + 800].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(burst * np.hanning(len(burst))))
        freqs = np.fft.rfftfreq(len(burst), 1 / 8000)
        peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
        assert abs(peaks[0] - LOW[key]) < 15 and abs(peaks[1] - HIGH[key]) < 15
    assert not audio[2 * 1440:].any()     # w: half a second of silence
