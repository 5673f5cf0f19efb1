"""Keypad tones (DTMF, ITU-T Q.23) as call audio: what the bot plays when it presses keys.

Each key is its two frequencies summed, 100 ms on and 80 ms off (Q.24 receivers need ≥ 40 ms of each);
``w`` is a 500 ms pause. Levels stay well inside μ-law's range (-7 dBFS per tone, -4 dBFS together).
"""

from __future__ import annotations

import numpy as np

from . import RATE

LOW = {"1": 697, "2": 697, "3": 697, "A": 697, "4": 770, "5": 770, "6": 770, "B": 770,
       "7": 852, "8": 852, "9": 852, "C": 852, "*": 941, "0": 941, "#": 941, "D": 941}
HIGH = {"1": 1209, "4": 1209, "7": 1209, "*": 1209, "2": 1336, "5": 1336, "8": 1336, "0": 1336,
        "3": 1477, "6": 1477, "9": 1477, "#": 1477, "A": 1633, "B": 1633, "C": 1633, "D": 1633}
TONE_MS = 100
GAP_MS = 80
PAUSE_MS = 500
AMPLITUDE = 0.45 * 32767 / 2     # per tone


def tones(digits: str) -> np.ndarray:
    """int16 8 kHz audio keying ``digits`` (0-9, *, #, A-D; ``w``/``W`` pauses half a second)."""
    t = np.arange(RATE * TONE_MS // 1000) / RATE
    gap = np.zeros(RATE * GAP_MS // 1000)
    parts: list[np.ndarray] = []
    for key in digits:
        if key in "wW":
            parts.append(np.zeros(RATE * PAUSE_MS // 1000))
            continue
        key = key.upper()
        if key not in LOW:
            raise ValueError(f"not a keypad key: {key!r}")
        parts.append(AMPLITUDE * (np.sin(2 * np.pi * LOW[key] * t) + np.sin(2 * np.pi * HIGH[key] * t)))
        parts.append(gap)
    audio = np.concatenate(parts) if parts else np.zeros(0)
    return np.round(audio).astype(np.int16)
