"""The interface between a Call and an engine (the StepFun side). Engines know nothing of carriers."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..audio.playout import HeardItem


class EngineUnavailable(Exception):
    """The engine cannot be used (cannot connect, refused, no session): the message says why, fit for a log
    line. Engines turn their vendor's errors into this, so that a call never needs to know the vendor."""


class EngineSink(Protocol):
    """What an engine reports to its call. Every method is synchronous and cheap."""

    def bot_audio(self, item_id: str, pcm: np.ndarray) -> None:
        """Bot speech for ``item_id`` as 8 kHz int16, in order."""

    def bot_audio_done(self, item_id: str) -> None:
        """All audio of ``item_id`` has been delivered."""

    def caller_speech_started(self) -> None:
        """The model heard the caller start speaking (a barge-in trigger while the bot speaks)."""

    def transcript(self, role: str, text: str, item_id: str | None) -> None:
        """Final text of one turn: role is "user" or "assistant"; for the bot, all the engine produced
        for ``item_id`` (the call cuts it to what the caller heard when the caller interrupted)."""

    def note(self, kind: str, **fields) -> None:
        """Something worth a transcript record and a log line (an ASR failure, a TTS failure, …)."""

    def engine_failed(self, reason: str) -> None:
        """The engine cannot go on; ``reason`` says why in words fit for a log line."""


class Engine(Protocol):
    name: str

    async def start(self) -> None:
        """Connect and speak the greeting; raises EngineUnavailable when the engine cannot be used."""

    def feed(self, frame: np.ndarray) -> None:
        """One 20 ms frame of caller audio (8 kHz int16)."""

    def interrupt(self, heard: list[HeardItem]) -> None:
        """Barge-in: stop the bot now; tell the model what the caller heard of each item."""

    def heard_text(self, item_id: str, heard_ms: int, text: str) -> str:
        """The words of ``text`` (item ``item_id``) spoken in its first ``heard_ms`` of audio."""

    async def close(self) -> None: ...


_INTERRUPTED_MARK = {"zh": "……（被来电者打断）", "en": "… (the caller interrupted)"}


def interrupted_marker(language: str) -> str:
    """Appended to a cut-off bot turn in the conversation. Parentheses are stage directions for the
    TTS, so even a model that imitates the mark does not make the bot speak it."""
    return _INTERRUPTED_MARK.get(language, _INTERRUPTED_MARK["en"])


def heard_text(text: str, heard_ms: float, total_ms: float) -> str:
    """The part of ``text`` spoken in the first ``heard_ms`` of its ``total_ms`` of audio.

    Speech time is taken as proportional to characters; a cut inside a word moves back to the word's start
    (CJK text has no spaces and is cut per character).
    """
    if total_ms <= 0 or heard_ms <= 0:
        return ""
    if heard_ms >= total_ms:
        return text
    cut = int(len(text) * heard_ms / total_ms)
    if 0 < cut < len(text) and text[cut].isascii() and text[cut].isalnum():
        space = text.rfind(" ", 0, cut)
        cut = space if space > 0 else cut
    return text[:cut].rstrip()
