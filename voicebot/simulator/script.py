"""What a simulated caller does, step by step: speak, press keys, hang up, drop the line (see ``caller.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np


def _check_trigger(step: object, at_s: float | None, after_bot_done: bool, barge_after_bot_ms: float | None,
                   pause_s: float) -> None:
    chosen = [name for name, on in (("at_s", at_s is not None), ("after_bot_done", after_bot_done),
                                    ("barge_after_bot_ms", barge_after_bot_ms is not None)) if on]
    if len(chosen) > 1:
        raise ValueError(f"{type(step).__name__}: choose one trigger, not {' and '.join(chosen)}")
    if pause_s < 0 or (at_s is not None and at_s < 0) or (barge_after_bot_ms is not None and barge_after_bot_ms < 0):
        raise ValueError(f"{type(step).__name__}: times must not be negative")


@dataclass(eq=False)
class Say:
    """The caller speaks ``pcm`` (int16, 8 kHz mono). Steps run in order; each waits for its trigger:

    * ``at_s``: at this time since stream start (at once if already past);
    * ``after_bot_done``: once bot audio has been heard since this step became current (the previous
      step ended) and playback has then been idle for ``pause_s``;
    * ``barge_after_bot_ms``: once this much of the bot's current utterance has played, counted from its
      first audible frame (an utterance ends at a clear or after ``SimulatedCall.utterance_gap_s``
      without playback) -- a barge-in;
    * none of them: ``pause_s`` after the previous step ended.
    """

    pcm: np.ndarray
    at_s: float | None = None
    after_bot_done: bool = False
    pause_s: float = 0.0
    barge_after_bot_ms: float | None = None
    label: str = ""

    def __post_init__(self) -> None:
        pcm = np.asarray(self.pcm)
        if pcm.ndim != 1 or pcm.dtype != np.int16:
            raise ValueError(f"Say wants mono int16 samples at 8 kHz, got {pcm.dtype} {pcm.shape}")
        self.pcm = pcm
        _check_trigger(self, self.at_s, self.after_bot_done, self.barge_after_bot_ms, self.pause_s)


DTMF_DIGITS = "0123456789*#ABCD"


@dataclass(eq=False)
class Press:
    """The caller presses keys: each digit of ``digits`` (``0-9 * # A-D``) goes to the server as the carrier's
    DTMF message, the first when the step triggers and the next ones ``gap_s`` apart; the step ends with
    the last. Triggers as for :class:`Say` (``at_s``, ``after_bot_done`` + ``pause_s``,
    ``barge_after_bot_ms``, or ``pause_s`` after the previous step). ``duration_ms``: how long each key is
    held, for the carriers that report it. The caller's audio goes on meanwhile (carriers pass keypresses
    out of band). A script with a Press is refused for a carrier whose stream carries no DTMF."""

    digits: str
    at_s: float | None = None
    after_bot_done: bool = False
    pause_s: float = 0.0
    barge_after_bot_ms: float | None = None
    gap_s: float = 0.25
    duration_ms: int = 100
    label: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.digits, str) or not self.digits:
            raise ValueError(f"Press wants at least one digit, got {self.digits!r}")
        wrong = sorted(set(self.digits) - set(DTMF_DIGITS))
        if wrong:
            raise ValueError(f"Press {self.digits!r}: {', '.join(map(repr, wrong))} not DTMF keys ({DTMF_DIGITS})")
        if self.gap_s < 0 or self.duration_ms <= 0:
            raise ValueError(f"Press {self.digits!r}: gap_s must not be negative and duration_ms must be positive")
        _check_trigger(self, self.at_s, self.after_bot_done, self.barge_after_bot_ms, self.pause_s)


@dataclass
class Hangup:
    """The caller hangs up (the carrier sends its closing messages and closes the socket).
    Triggers as for :class:`Say` (``at_s``, ``after_bot_done`` + ``pause_s``, or ``pause_s`` after the
    previous step)."""

    at_s: float | None = None
    after_bot_done: bool = False
    pause_s: float = 0.0

    def __post_init__(self) -> None:
        _check_trigger(self, self.at_s, self.after_bot_done, None, self.pause_s)


@dataclass
class Drop:
    """The carrier's connection to the server is lost, as in a network failure: no closing messages, no close
    frame, a TCP reset. Triggers as for :class:`Hangup`, or ``after_bot_ms``: once this much of the bot's
    current utterance has played (the connection dropping mid-sentence)."""

    at_s: float | None = None
    after_bot_done: bool = False
    pause_s: float = 0.0
    after_bot_ms: float | None = None

    def __post_init__(self) -> None:
        _check_trigger(self, self.at_s, self.after_bot_done, self.after_bot_ms, self.pause_s)


Step = Union[Say, Press, Hangup, Drop]
