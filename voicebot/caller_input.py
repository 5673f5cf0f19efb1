"""What the caller does besides talking, turned into what the call acts on: keypresses (DTMF, passed on
digit by digit or collected into one entry) and silences (re-prompt, then hang up).

Both are plain state machines driven by the call (a digit, a clock tick), so they are tested without a call.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dialplan import DtmfSettings, SilenceSettings

_PRESSED = {"zh": "来电者按了电话键盘上的 {digits}。", "en": "The caller pressed {digits} on the phone keypad."}
_ENTERED = {"zh": "来电者在电话键盘上输入了 {digits}。", "en": "The caller entered {digits} on the phone keypad."}


def keypad_text(digits: str, language: str, *, collected: bool) -> str:
    """How keypad input reaches the model: a sentence in the persona's language."""
    template = (_ENTERED if collected else _PRESSED)
    return template.get(language, template["en"]).format(digits=digits)


class Keypad:
    """DTMF digits → model input. ``pass``: each digit at once; ``collect``: one string, complete at the
    terminator (not included), at ``max_digits``, or ``timeout_s`` after the last digit (:meth:`due`)."""

    def __init__(self, settings: DtmfSettings) -> None:
        self.settings = settings
        self._digits = ""
        self._last_t: float | None = None

    @property
    def pending(self) -> str:
        return self._digits

    def press(self, digit: str, now: float) -> str | None:
        """The input complete with this digit, if any."""
        mode = self.settings.mode
        if mode == "off":
            return None
        if mode == "pass":
            return digit
        if digit == self.settings.terminator:
            return self._take()
        self._digits += digit
        self._last_t = now
        if len(self._digits) >= self.settings.max_digits:
            return self._take()
        return None

    def due(self, now: float) -> str | None:
        """Collected digits whose entry timed out (None when nothing is pending or it is not time yet)."""
        if self._digits and self._last_t is not None and now - self._last_t >= self.settings.timeout_s:
            return self._take()
        return None

    def _take(self) -> str | None:
        digits, self._digits, self._last_t = self._digits, "", None
        return digits or None


@dataclass
class SilenceWatch:
    """Counts the caller's silence: time with no caller speech while the bot is not speaking. The bot's own
    re-prompts pause the count instead of resetting it, so ``hang_up_s`` is measured on the caller's silence.
    :meth:`tick` says what to do: ``"reprompt"`` at each multiple of ``reprompt_s`` (below ``hang_up_s``),
    ``"hang_up"`` at ``hang_up_s``."""

    settings: SilenceSettings
    quiet_s: float = 0.0
    reprompts: int = 0
    reprompting: bool = False     # the bot is saying a re-prompt (its speech does not end the silence)
    hung_up: bool = False         # "hang_up" was said (once)
    _last_t: float | None = None  # the previous tick, when it found the line quiet (None: it did not)

    @property
    def enabled(self) -> bool:
        return self.settings.reprompt_s is not None or self.settings.hang_up_s is not None

    def activity(self) -> None:
        """The caller spoke or pressed a key: the silence is over."""
        self.quiet_s = 0.0
        self.reprompts = 0
        self.reprompting = False
        self.hung_up = False

    def tick(self, now: float, *, caller_speaking: bool, bot_busy: bool) -> str | None:
        # Only time between two quiet ticks counts: a silence never starts before the tick that saw it.
        elapsed = 0.0 if self._last_t is None else now - self._last_t
        self._last_t = None if caller_speaking or bot_busy else now
        if caller_speaking:
            self.activity()
            return None
        if bot_busy:
            if not self.reprompting:
                self.quiet_s = 0.0      # the bot is answering: the caller is listening, not silent
                self.reprompts = 0
            return None
        self.reprompting = False
        self.quiet_s += elapsed
        s = self.settings
        if s.hang_up_s is not None and self.quiet_s >= s.hang_up_s:
            if self.hung_up:
                return None
            self.hung_up = True
            return "hang_up"
        if s.reprompt_s is not None and self.quiet_s >= (self.reprompts + 1) * s.reprompt_s:
            self.reprompts += 1
            self.reprompting = True
            return "reprompt"
        return None
